"""The multi-task method's pieces on hand-worked values: the relative-position grid, gaps and
jitter, the per-image rotations, the summed loss, the exemplar seeds' extra visits."""

from types import SimpleNamespace

import pytest
import torch

from training.methods import get_recipe
from training.methods.multitask import (NEIGHBOURS, MultiTask, grid_origin, multitask_loss, patch_corner,
                                        relative_position_pairs)
from training.transforms import rotate_each


def test_the_grid_is_centred_and_must_fit():
    assert grid_origin(32, 10) == 1 and grid_origin(30, 10) == 0
    with pytest.raises(ValueError, match="does not fit"):
        grid_origin(32, 11)


def test_patches_sit_in_their_cells_with_a_gap_of_two_to_six_pixels():
    # 6-pixel patches in 10-pixel cells from pixel 1: centred 2 pixels into the cell, moved by the shift
    assert patch_corner(1, 1, (0, 0), 32, 10, 6) == (13, 13)
    assert patch_corner(0, 2, (-1, 1), 32, 10, 6) == (2, 24)
    # the closest two neighbours can come: the centre patch moved right, its right neighbour moved left
    left_end = patch_corner(1, 1, (0, 1), 32, 10, 6)[1] + 6
    assert patch_corner(1, 2, (0, -1), 32, 10, 6)[1] - left_end == 2
    left_end = patch_corner(1, 1, (0, -1), 32, 10, 6)[1] + 6
    assert patch_corner(1, 2, (0, 1), 32, 10, 6)[1] - left_end == 6
    with pytest.raises(ValueError, match="out of its"):
        patch_corner(1, 1, (3, 0), 32, 10, 6)


def test_pairs_are_the_centre_patch_and_the_named_neighbour():
    image = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32)  # pixel value = 32 * row + column
    x = image.expand(2, 1, 32, 32)
    targets = torch.tensor([NEIGHBOURS.index((0, 1)), NEIGHBOURS.index((-1, -1))])
    shifts = torch.tensor([[[0, 0], [0, 0]], [[1, -1], [0, 0]]])
    centres, others = relative_position_pairs(x, targets, shifts, cell=10, patch=6)
    assert centres.shape == others.shape == (2, 1, 6, 6)
    assert centres[0, 0, 0, 0] == 13 * 32 + 13 and others[0, 0, 0, 0] == 13 * 32 + 23  # right neighbour
    assert centres[1, 0, 0, 0] == 14 * 32 + 12 and others[1, 0, 0, 0] == 3 * 32 + 3  # top-left neighbour
    assert len(set(NEIGHBOURS)) == 8 and (0, 0) not in NEIGHBOURS


def test_each_image_turns_by_its_own_quarter_turns():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2).repeat(3, 1, 1, 1)
    out = rotate_each(x, torch.tensor([0, 1, 2]))
    assert out[0, 0].tolist() == [[1, 2], [3, 4]]
    assert out[1, 0].tolist() == [[2, 4], [1, 3]]  # anticlockwise
    assert out[2, 0].tolist() == [[4, 3], [2, 1]]


def test_the_loss_is_the_weighted_sum_of_the_tasks_present():
    losses = {"relpos": torch.tensor(2.0), "rotation": torch.tensor(3.0)}
    weights = {"relpos": 1.0, "rotation": 0.5, "exemplar": 9.0}  # no exemplar seed in this batch
    assert float(multitask_loss(losses, weights)) == 3.5


def test_seeds_are_visited_again_and_every_head_logs_its_accuracy():
    recipe = get_recipe("multitask", "tiny")
    o = recipe.options.__class__(exemplar_classes=3, exemplar_repeats=2, hidden_dim=8)
    torch.manual_seed(0)
    method = MultiTask(recipe.replace(options=o))
    assert method.epoch_indices(SimpleNamespace(dataset=range(10))) == list(range(10)) + [0, 1, 2, 0, 1, 2]
    images = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    x = torch.stack([method.train_transform()(image) for image in images])
    out = method({"x": x, "label": torch.zeros(4, dtype=torch.long), "index": torch.tensor([0, 5, 2, 7])})
    assert {"relpos_acc", "rotation_acc", "exemplar_acc"} <= set(out)
    out["loss"].backward()
    assert method.exemplar_head.weight.grad.abs().sum() > 0
    unseeded = method({"x": x, "label": torch.zeros(4, dtype=torch.long), "index": torch.tensor([4, 5, 6, 7])})
    assert "exemplar_acc" not in unseeded and {"relpos_acc", "rotation_acc"} <= set(unseeded)
