"""Jigsaw's pieces on hand-worked values: the permutation set, per-tile normalisation, the shuffle,
and the puzzle a training sample becomes."""

import pytest
import torch

from training.methods import get_recipe
from training.methods.jigsaw import (Jigsaw, hamming_permutations, min_hamming_distance, normalise_tiles,
                                     shuffle_tiles)


def _is_latin(perms: torch.Tensor) -> bool:
    """Every row and every column holds each symbol once."""
    n = perms.shape[1]
    return all(sorted(col.tolist()) == list(range(n)) for col in perms.T) and \
        all(sorted(row.tolist()) == list(range(n)) for row in perms)


@pytest.mark.parametrize("seed", range(4))
def test_three_of_three_tiles_form_a_latin_square(seed):
    # From any first permutation of 3, the two at distance 3 are its cyclic shifts, 3 apart from each other.
    perms = hamming_permutations(3, tiles=3, seed=seed)
    assert _is_latin(perms) and min_hamming_distance(perms) == 3


def test_nine_of_nine_tiles_differ_everywhere_and_the_choice_is_a_pure_function_of_the_seed():
    perms = hamming_permutations(9)
    assert _is_latin(perms) and min_hamming_distance(perms) == 9  # a Latin rectangle always extends
    assert torch.equal(perms, hamming_permutations(9, seed=0))
    assert not torch.equal(perms[0], hamming_permutations(9, seed=1)[0])


def test_the_small_recipes_64_permutations_are_distinct_and_at_least_4_apart():
    perms = hamming_permutations(64)
    assert perms.shape == (64, 9) and len({tuple(p) for p in perms.tolist()}) == 64
    # summed-distance greedy alone leaves pairs one swap (2) apart; the nearest-distance tie-break does not
    assert min_hamming_distance(perms) == 4


def test_count_outside_one_to_n_factorial_is_refused():
    with pytest.raises(ValueError, match="between 1 and 3! = 6"):
        hamming_permutations(7, tiles=3)


def test_min_hamming_distance_by_hand():
    assert min_hamming_distance(torch.tensor([[0, 1, 2], [1, 0, 2], [2, 0, 1]])) == 2  # rows 0 and 1: one swap


def test_each_tile_is_normalised_on_its_own():
    tiles = torch.tensor([[[[0.0, 2.0], [0.0, 2.0]]], [[[5.0, 5.0], [5.0, 5.0]]]])  # (2 tiles, 1, 2, 2)
    out = normalise_tiles(tiles)
    assert torch.allclose(out[0], torch.tensor([[[-1.0, 1.0], [-1.0, 1.0]]]), atol=1e-4)  # mean 1, std 1
    assert torch.equal(out[1], torch.zeros(1, 2, 2))  # flat: no division blow-up


def test_position_k_shows_the_tile_of_cell_permutation_k():
    cells = torch.arange(9.0).view(9, 1, 1, 1)
    perm = torch.tensor([2, 0, 1, 5, 3, 4, 8, 6, 7])
    assert shuffle_tiles(cells, perm).flatten().tolist() == [2, 0, 1, 5, 3, 4, 8, 6, 7]


def test_a_training_sample_is_nine_normalised_tiles_and_a_permutation_index():
    recipe = get_recipe("jigsaw", "tiny")
    torch.manual_seed(0)
    method = Jigsaw(recipe)
    image = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    tiles, label = method.train_transform()(image)
    assert tiles.shape == (9, 1, 9, 9) and 0 <= int(label) < recipe.options.permutations
    assert torch.allclose(tiles.mean(dim=(1, 2, 3)), torch.zeros(9), atol=1e-4)
    assert method.logits(tiles[None].repeat(2, 1, 1, 1, 1)).shape == (2, recipe.options.permutations)
