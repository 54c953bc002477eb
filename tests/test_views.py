"""Batched view augmentations: identities at neutral settings, hand-checked effects otherwise."""

import torch

from training.methods.views import (ViewRecipe, colour_jitter, gaussian_blur, random_greyscale,
                                    random_resized_crop, solarize)


def g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_full_crop_is_identity_and_flip_mirrors():
    x = torch.rand(3, 1, 8, 8)
    same = random_resized_crop(x, 8, scale=(1, 1), ratio=(1, 1), flip_p=0.0, generator=g())
    assert torch.allclose(same, x, atol=1e-6)
    mirrored = random_resized_crop(x, 8, scale=(1, 1), ratio=(1, 1), flip_p=1.0, generator=g())
    assert torch.allclose(mirrored, x.flip(-1), atol=1e-6)


def test_quarter_crop_of_a_constant_quadrant_image():
    # left half 0, right half 1: a crop of 1/4 of the area (half the side) lies in one half,
    # straddles it, or not; every output pixel stays within [0, 1] and the size is the asked one
    x = torch.zeros(16, 1, 8, 8)
    x[..., 4:] = 1
    out = random_resized_crop(x, 4, scale=(0.25, 0.25), ratio=(1, 1), generator=g())
    assert out.shape == (16, 1, 4, 4) and out.min() >= 0 and out.max() <= 1
    assert len({tuple(o.flatten().round(decimals=3).tolist()) for o in out}) > 1  # crops differ


def test_colour_jitter_neutral_and_brightness_only():
    x = torch.rand(4, 3, 5, 5) * 0.5
    assert torch.equal(colour_jitter(x, p=0.0, generator=g()), x)
    y = colour_jitter(x, brightness=0.5, contrast=0.0, saturation=0.0, p=1.0, generator=g())
    ratio = y / x
    assert torch.allclose(ratio, ratio[:, :1, :1, :1].expand_as(ratio), atol=1e-5)  # one factor per image
    assert ratio.min() >= 0.5 - 1e-5 and ratio.max() <= 1.5 + 1e-5


def test_greyscale_and_solarize_by_hand():
    x = torch.tensor([[[[1.0]], [[0.0]], [[0.0]]]])  # pure red
    assert torch.allclose(random_greyscale(x, p=1.0), torch.full((1, 3, 1, 1), 0.299))
    grey = torch.tensor([[[[0.2, 0.7]]]])
    assert torch.allclose(solarize(grey, p=1.0), torch.tensor([[[[0.2, 0.3]]]]))
    assert torch.equal(solarize(grey, p=0.0), grey)


def test_blur_keeps_constants_and_smooths_an_impulse():
    flat = torch.full((2, 1, 10, 10), 0.3)
    assert torch.allclose(gaussian_blur(flat, p=1.0, generator=g()), flat, atol=1e-6)
    impulse = torch.zeros(1, 1, 11, 11)
    impulse[..., 5, 5] = 1.0
    out = gaussian_blur(impulse, p=1.0, sigma=(1.0, 1.0), kernel_fraction=0.5, generator=g())
    assert out[0, 0, 5, 5] < 1.0 and out[0, 0, 5, 6] > 0 and abs(out.sum().item() - 1.0) < 1e-5


def test_view_recipe_is_reproducible():
    x = torch.rand(4, 1, 28, 28)
    recipe = ViewRecipe(size=32, crop_scale=(0.2, 1.0), solarize_p=0.2)
    a, b = recipe(x, g(1)), recipe(x, g(1))
    assert a.shape == (4, 1, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, recipe(x, g(2)))


def test_batched_views_match_the_model_input_and_differ():
    from training.methods.views import Views
    from zoo.registry import get_model_entry

    spec = get_model_entry("simclr_resnet_small_fmnist").input  # 32x32 grey
    views = Views(spec, [ViewRecipe(crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.0), grey_p=0.0, blur_p=0.0)] * 2,
                  batched=True)
    image = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    canvas = views.transform()(image)
    assert canvas.shape == (3, 32, 32) and 0 <= canvas.min() and canvas.max() <= 1
    torch.manual_seed(0)
    a, b = views(torch.stack([canvas, canvas]))
    assert a.shape == b.shape == (2, 1, 32, 32)
    assert not torch.equal(a, b) and not torch.equal(a[0], a[1])
    # per-sample mode hands the loader's views through unchanged
    per_sample = Views(spec, views.recipes, batched=False)
    made = per_sample.transform()(image)
    assert len(made) == 2 and made[0].shape == (1, 32, 32) and per_sample(made) == made


def test_copy_pair_is_the_image_and_its_distorted_copy_reproducibly():
    from training.methods.views import copy_pair_transform
    from training.transforms import eval_transform
    from zoo.photos import load_photo
    from zoo.registry import get_model_entry
    from zoo.retrieval import shrink

    spec = get_model_entry("simclr_resnet_small_photos").input  # 64x64 RGB
    image = torch.from_numpy(shrink(load_photo("rocket"), 128)).permute(2, 0, 1)  # non-contiguous, as crops are
    pair = copy_pair_transform(spec)
    torch.manual_seed(3)
    original, copy = pair(image)
    assert original.shape == copy.shape == (3, 64, 64)
    assert torch.equal(original, eval_transform(spec)(image))  # the database side: the image itself
    assert (copy - original).abs().mean() > 0.05  # a strong copy, not the image
    torch.manual_seed(3)
    assert torch.equal(pair(image)[1], copy)  # the per-sample seed decides the copy
    torch.manual_seed(4)
    assert not torch.equal(pair(image)[1], copy)
    grey = pair(image[:1])  # one-channel images are repeated into RGB, as at inference
    assert grey[0].shape == grey[1].shape == (3, 64, 64)
