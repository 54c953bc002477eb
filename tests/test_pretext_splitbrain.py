"""Split-brain: L bins on hand-worked values, the two halves kept apart, grey input seen as a = b = 0."""

import numpy as np
import torch

from training.methods.splitbrain import RECIPES, SplitBrain, lightness_bin
from zoo import create_model
from zoo.preprocess import preprocess


def test_lightness_bins_are_unit_wide_and_100_falls_in_the_last():
    lightness = torch.tensor([0.0, 0.99, 1.0, 50.2, 99.5, 100.0, -0.1])
    assert lightness_bin(lightness).tolist() == [0, 0, 1, 50, 99, 99, 0]
    assert lightness_bin(lightness, bins=4).tolist() == [0, 0, 0, 2, 3, 3, 0]  # bins of 25


def test_features_are_the_two_halves_side_by_side_and_never_mix():
    model = create_model("splitbrain_resnet_small_photos").eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    l_half, ab_half = model.halves()
    with torch.no_grad():
        for name, f in feats.items():
            expected = torch.cat([l_half.forward_features(x[:, :1], [name])[name],
                                  ab_half.forward_features(x[:, 1:], [name])[name]], dim=1)
            assert torch.equal(f, expected), name
        other = x.clone()
        other[:, 1:] = torch.randn(2, 2, 32, 32)  # new colours, the same lightness
        f2 = model(other)
    half = f2.shape[1] // 2
    assert torch.equal(f2[:, :half], feats["layer4"][:, :half])  # the L half does not see ab
    assert not torch.allclose(f2[:, half:], feats["layer4"][:, half:])


def test_a_grey_image_reaches_the_ab_half_as_zero_colour():
    spec = create_model("splitbrain_resnet_small_photos").entry.input
    grey = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)  # like a Fashion-MNIST image
    x = preprocess(grey, spec)
    assert x.shape == (1, 3, 32, 32)
    assert x[:, 1:].abs().max() < 0.01 / 50  # a, b within 0.01 of 0 before scaling by 50
    assert x[:, 0].std() > 0.1  # the lightness varies


def test_each_head_learns_from_its_own_half_only():
    method = SplitBrain(RECIPES["tiny"])
    out = method({"x": torch.rand(4, 3, 32, 32)})
    l_half, ab_half = method.backbone.halves()
    out["loss"].backward()
    assert all(p.grad is not None for p in l_half.parameters())
    assert all(p.grad is not None for p in ab_half.parameters())
    method.zero_grad()
    # the ab loss alone: gradients reach the L half (L -> ab), none reach the ab half
    rgb = torch.rand(4, 3, 32, 32)
    ab_logits = method.ab_head(l_half(method.backbone.split(rgb)[0]), (8, 8))
    ab_logits.sum().backward()
    assert all(p.grad is None for p in ab_half.parameters())
    assert {k for k in out} >= {"ab_loss", "l_loss", "ab_acc", "l_acc"}
