"""Colorization's pure pieces on hand-worked values, and the photo-crops data it trains on."""

import math

import pytest
import torch

from training.data import DataError, PhotoCrops, SampleView, is_colour, open_dataset
from training.methods.colorization import (ab_gamut_bins, colour_loss, lab_at, nearest_bin, rebalancing_weights,
                                           soft_encode)
from zoo import UsageError

BINS = ab_gamut_bins()


def test_gamut_bins_are_the_grid_points_some_srgb_colour_rounds_to():
    assert BINS.shape == (261, 2)
    assert torch.equal(BINS, torch.round(BINS / 10) * 10)  # centres on the grid of size 10
    assert BINS.abs().max() <= 110
    as_set = {tuple(v) for v in BINS.tolist()}
    # grey is (0, 0); sRGB red is Lab (53.2, 80.1, 67.2), blue (32.3, 79.2, -107.9), green (87.7, -86.2, 83.2)
    assert {(0.0, 0.0), (80.0, 70.0), (80.0, -110.0), (-90.0, 80.0)} <= as_set
    assert (-110.0, -110.0) not in as_set and (100.0, 100.0) not in as_set


def test_soft_encoding_spreads_a_value_over_its_five_nearest_bins():
    bins = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0], [20.0, 0.0], [50.0, 50.0]])
    ab = torch.zeros(1, 2, 1, 1)  # exactly on bin 0: squared distances 0, 100, 100, 200, 400 (and 5000, left out)
    raw = torch.tensor([1.0, math.exp(-2), math.exp(-2), math.exp(-4), math.exp(-8), 0.0])  # exp(-d²/(2·5²))
    target = soft_encode(ab, bins, neighbours=5, sigma=5.0)
    assert target.shape == (1, 6, 1, 1)
    torch.testing.assert_close(target[0, :, 0, 0], raw / raw.sum())
    one = soft_encode(torch.tensor([[[[12.0]], [[9.0]]]]), bins, neighbours=1)
    assert one[0, :, 0, 0].tolist() == [0, 0, 0, 1, 0, 0]  # one neighbour: the nearest bin, (10, 10)
    assert nearest_bin(torch.tensor([[[[12.0]], [[9.0]]]]), bins).item() == 3


def test_rebalancing_weights_without_and_with_smoothing():
    far = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0]])  # too far apart to smooth
    # mixture 0.5 p + 0.5 / 4 = (0.375, 0.25, 0.25, 0.125); inverses (8/3, 4, 4, 8) have E_p = 10/3
    w = rebalancing_weights(torch.tensor([0.5, 0.25, 0.25, 0.0]), far, rebalance=0.5, sigma=5.0)
    torch.testing.assert_close(w, torch.tensor([0.8, 1.2, 1.2, 2.4]))
    near = torch.tensor([[0.0, 0.0], [10.0, 0.0]])  # 10 apart, sigma 5: the kernel gives exp(-2) to the other
    e = math.exp(-2)
    p = torch.tensor([1 / (1 + e), e / (1 + e)], dtype=torch.float64)
    inv = 1 / (0.5 * p + 0.25)
    expected = (inv / (p * inv).sum()).float()
    torch.testing.assert_close(rebalancing_weights(torch.tensor([1.0, 0.0]), near, 0.5, 5.0), expected)
    # λ = 1: uniform mixture, every weight 1
    torch.testing.assert_close(rebalancing_weights(torch.tensor([0.9, 0.1]), near, 1.0, 5.0), torch.ones(2))


def test_colour_loss_is_the_weighted_soft_cross_entropy():
    logits = torch.zeros(2, 2, 3, 3)  # uniform prediction over 2 bins: -log(1/2) per pixel
    target = torch.zeros(2, 2, 3, 3)
    target[:, 0] = 1.0
    torch.testing.assert_close(colour_loss(logits, target), torch.tensor(math.log(2)))
    torch.testing.assert_close(colour_loss(logits, target, torch.tensor([2.0, 1.0])), torch.tensor(2 * math.log(2)))
    logits[:, 0] = 100.0  # certain and right: no loss
    assert colour_loss(logits, target).item() < 1e-6


def test_lab_targets_are_pooled_to_the_prediction_resolution():
    rgb = torch.ones(1, 3, 8, 8)
    rgb[..., :4, :] = 0.0  # top half black (L 0), bottom half white (L 100)
    lab = lab_at(rgb, 4)
    assert lab.shape == (1, 3, 2, 2)
    torch.testing.assert_close(lab[0, 0], torch.tensor([[0.0, 0.0], [100.0, 100.0]]), atol=1e-3, rtol=0)
    assert lab[0, 1:].abs().max() < 0.01  # grey has no colour, up to the conversion's rounding


def test_is_colour_tells_grey_photos_from_colour_ones():
    grey = torch.full((3, 4, 4), 100, dtype=torch.uint8)
    assert not is_colour(grey) and not is_colour(grey[:1])
    grey[0, 0, 0] = 102  # within the tolerance of 2 grey levels
    assert not is_colour(grey)
    grey[0, 0, 0] = 103
    assert is_colour(grey)


def test_photo_crops_use_every_colour_photo_and_are_seeded_per_sample():
    data = PhotoCrops(length=40, size=16)
    assert len(data) == 40 and data.images and not {"brick", "grass", "gravel"} & set(data.classes)
    n = len(data.images)
    view = SampleView(data, None, seed=3)
    x, label, index = view[n + 1]
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8 and label == 1 and index == n + 1
    assert torch.equal(view[n + 1][0], x)  # the same crop for the same (seed, epoch, index)
    view.epoch = 1
    assert not torch.equal(view[n + 1][0], x)  # a new crop next epoch
    assert len(open_dataset("photo-crops")) == 50_000 and open_dataset("photo-crops")[0][0].shape == (3, 32, 32)
    assert open_dataset("photo-crops:16")[0][0].shape == (3, 16, 16)
    with pytest.raises(UsageError, match="photo-crops:SIZE"):
        open_dataset("photo-crops:big")
    with pytest.raises(DataError, match="no held-out split"):
        open_dataset("photo-crops", "test")
