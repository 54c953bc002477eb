"""Exemplar-CNN's pieces on hand-worked values: the geometric and photometric transformations, the
surrogate classes, and a short run that learns them."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from training.methods import get_recipe
from training.methods.heads import pooled_features
from training.methods.exemplar import Exemplar, affine_matrices, pca_contrast, power_contrast
from zoo.errors import UsageError


def _warp(image: torch.Tensor, degrees: float, scale: float, shift: tuple[float, float]) -> torch.Tensor:
    theta = affine_matrices(torch.tensor([degrees]), torch.tensor([scale]), torch.tensor([shift]))
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    return F.grid_sample(image, grid, mode="nearest", align_corners=False)


def test_affine_matrices_by_hand():
    assert torch.allclose(affine_matrices(torch.zeros(1), torch.ones(1), torch.zeros(1, 2)),
                          torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]]))
    theta = affine_matrices(torch.tensor([90.0]), torch.tensor([2.0]), torch.tensor([[0.1, 0.0]]))
    assert torch.allclose(theta, torch.tensor([[[0.0, 0.5, -0.2], [-0.5, 0.0, 0.0]]]), atol=1e-6)


def test_a_shift_of_a_quarter_side_moves_a_pixel_two_of_eight_columns_right():
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, 2, 3] = 1.0
    moved = _warp(image, 0.0, 1.0, (0.25, 0.0))
    assert moved[0, 0].nonzero().tolist() == [[2, 5]]


def test_scale_two_magnifies_the_centre_and_ninety_degrees_is_a_quarter_turn():
    image = torch.arange(16.0).view(1, 1, 4, 4)
    # output pixel centres at +-0.375, +-0.125 of the input: rows and columns 1, 1, 2, 2
    assert torch.equal(_warp(image, 0.0, 2.0, (0.0, 0.0))[0, 0], image[0, 0][[1, 1, 2, 2]][:, [1, 1, 2, 2]])
    turned = _warp(image, 90.0, 1.0, (0.0, 0.0))
    assert torch.equal(turned, torch.rot90(image, 1, (2, 3))) or torch.equal(turned, torch.rot90(image, -1, (2, 3)))


def test_pca_contrast_scales_each_projection_around_the_mean():
    grey = torch.tensor([0.2, 0.6]).view(1, 1, 1, 2)
    out = pca_contrast(grey, torch.tensor([[2.0]]), torch.tensor([0.4]), torch.eye(1))
    assert torch.allclose(out.flatten(), torch.tensor([0.0, 0.8]))
    two = torch.tensor([0.3, 0.1]).view(1, 2, 1, 1)  # projection on (1, 1)/sqrt 2 kept, on (1, -1)/sqrt 2 dropped
    basis = torch.tensor([[1.0, 1.0], [1.0, -1.0]]) / 2 ** 0.5
    out = pca_contrast(two, torch.tensor([[1.0, 0.0]]), torch.zeros(2), basis)
    assert torch.allclose(out.flatten(), torch.tensor([0.2, 0.2]))


def test_power_contrast_by_hand_and_clipped():
    v = torch.tensor([[0.25], [1.0]])
    out = power_contrast(v, torch.tensor([0.5, 1.0]), torch.tensor([1.2, 1.4]), torch.tensor([-0.1, 0.0]))
    assert torch.allclose(out.flatten(), torch.tensor([0.5, 1.0]))  # 0.25^0.5 * 1.2 - 0.1; 1.4 clipped to 1


def test_the_surrogate_classes_are_the_recipes_limit_and_it_must_be_given():
    recipe = get_recipe("exemplar", "tiny")
    assert Exemplar(recipe).head.out_features == recipe.limit
    with pytest.raises(UsageError, match="needs --limit"):
        Exemplar(dataclasses.replace(recipe, limit=None))


def test_the_class_of_a_transformed_seed_is_its_index_in_the_training_set():
    torch.manual_seed(0)
    method = Exemplar(get_recipe("exemplar", "tiny")).eval()
    image = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    x = torch.stack([method.train_transform()(image) for _ in range(3)])
    assert x.shape == (3, 1, 32, 32)
    index = torch.tensor([5, 7, 63])
    out = method({"x": x, "index": index})
    logits = method.head(pooled_features(method.backbone, x))
    assert torch.allclose(out["loss"], F.cross_entropy(logits, index), atol=1e-5)
