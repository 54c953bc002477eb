"""Each loss and update of the instance-discrimination / contrastive methods against a value
worked out by hand on a 2-4 sample case (the arithmetic is written out next to each case)."""

import math

import pytest
import torch
from torch import nn

from training.methods.byol import byol_loss, ema_update, normalized_mse_loss, target_decay
from training.methods.cpc import RowCausalContext, info_nce_loss, patch_grid, spatial_info_nce
from training.methods.multigrain import choose_test_exponent, distance_weighted_sampling, margin_loss
from training.methods.memory_bank import (MemoryBank, instance_softmax_loss, memory_bank_update, nce_loss,
                                          nce_normaliser)
from training.methods.pirl import jigsaw_patches, pirl_loss
from training.methods.proxynca import proxy_nca_loss
from training.methods.simclr import nt_xent_loss

e = math.e


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


# --- SimCLR ---------------------------------------------------------------------------------

def test_nt_xent_orthogonal_pairs():
    # Two images, views identical: each of the 4 anchors has cos 1 with its partner and 0 with
    # the two other views -> every anchor costs -log(e / (e + 2)).
    z = t([1, 0], [0, 1])
    assert nt_xent_loss(z, z, temperature=1.0).item() == pytest.approx(-math.log(e / (e + 2)), abs=1e-6)


def test_nt_xent_asymmetric_case_and_temperature():
    # z1 = [(1,0), (0,1)], z2 = [(0.6,0.8), (1,0)] (already unit norm), T = 0.5.
    # Cosines: a0=(1,0): partner b0 .6, others a1 0, b1 1   -> logits 1.2 | 0, 2
    #          a1=(0,1): partner b1 0,  others a0 0, b0 .8  -> logits 0   | 0, 1.6
    #          b0:       partner a0 .6, others a1 .8, b1 .6 -> logits 1.2 | 1.6, 1.2
    #          b1:       partner a1 0,  others a0 1, b0 .6  -> logits 0   | 2, 1.2
    def ce(pos, *neg):
        return -pos + math.log(math.exp(pos) + sum(math.exp(v) for v in neg))

    expected = (ce(1.2, 0, 2) + ce(0, 0, 1.6) + ce(1.2, 1.6, 1.2) + ce(0, 2, 1.2)) / 4
    z1, z2 = t([1, 0], [0, 1]), t([0.6, 0.8], [1, 0])
    assert nt_xent_loss(z1, z2, temperature=0.5).item() == pytest.approx(expected, abs=1e-5)
    # scale does not matter (cosine similarity)
    assert nt_xent_loss(3 * z1, 0.5 * z2, temperature=0.5).item() == pytest.approx(expected, abs=1e-5)


def test_nt_xent_rejects_mismatched_views():
    with pytest.raises(ValueError):
        nt_xent_loss(torch.ones(2, 3), torch.ones(3, 3))


# --- NPID: memory bank and NCE --------------------------------------------------------------

def test_memory_bank_update_momentum_half():
    bank = t([1, 0], [0, 1], [0.6, 0.8])
    memory_bank_update(bank, torch.tensor([0, 2]), t([0, 1], [0.6, 0.8]), momentum=0.5)
    # row 0: 0.5*(1,0) + 0.5*(0,1) = (.5,.5) -> normalised (1/sqrt2, 1/sqrt2); row 2 unchanged
    # (same vector in and out); row 1 untouched.
    s = 1 / math.sqrt(2)
    assert torch.allclose(bank, t([s, s], [0, 1], [0.6, 0.8]), atol=1e-6)


def test_nce_loss_by_hand():
    # One row, positive similarity 1 and K=2 noise similarities 0; T=1, Z=4, n=4.
    # P = e/4 for the positive, 1/4 for the noise; K/n = 0.5.
    # loss = -log(P+/(P+ + .5)) - 2 log(.5/(.25 + .5))
    p_pos = e / 4
    expected = -math.log(p_pos / (p_pos + 0.5)) - 2 * math.log(0.5 / 0.75)
    sims = t([1.0, 0.0, 0.0])
    assert nce_loss(sims, temperature=1.0, normaliser=4.0, num_data=4).item() == pytest.approx(expected, abs=1e-6)


def test_nce_loss_averages_rows_and_is_stable_at_low_temperature():
    sims = t([1.0, 0.0, 0.0], [0.0, 1.0, -1.0])
    row2 = (-math.log((1 / 4) / (1 / 4 + 0.5)) - math.log(0.5 / (e / 4 + 0.5))
            - math.log(0.5 / (math.exp(-1) / 4 + 0.5)))
    row1 = -math.log((e / 4) / (e / 4 + 0.5)) - 2 * math.log(0.5 / 0.75)
    assert nce_loss(sims, 1.0, 4.0, 4).item() == pytest.approx((row1 + row2) / 2, abs=1e-6)
    assert torch.isfinite(nce_loss(sims, 0.001, 1.0, 4))  # exp(1000) would overflow


def test_nce_normaliser_is_mean_exp_times_n():
    sims = t([0.0, math.log(3.0)])
    assert nce_normaliser(sims, temperature=1.0, num_data=10) == pytest.approx((1 + 3) / 2 * 10)


def test_full_softmax_over_the_bank():
    bank = t([1, 0], [0, 1])
    features = t([1, 0])
    # logits (1, 0) / T=0.5 = (2, 0); target 0 -> -log(e^2 / (e^2 + 1))
    loss = instance_softmax_loss(features, bank, torch.tensor([0]), temperature=0.5)
    assert loss.item() == pytest.approx(-math.log(e ** 2 / (e ** 2 + 1)), abs=1e-6)


def test_memory_bank_module_draws_own_entry_first():
    torch.manual_seed(0)
    bank = MemoryBank(size=5, dim=4)
    assert torch.allclose(bank.vectors.norm(dim=1), torch.ones(5))
    feats = nn.functional.normalize(torch.randn(2, 4), dim=1)
    sims = bank.similarities(feats, torch.tensor([3, 1]), num_negatives=6)
    assert sims.shape == (2, 7)
    assert sims[0, 0].item() == pytest.approx(float(bank.vectors[3] @ feats[0]), abs=1e-6)
    assert sims[1, 0].item() == pytest.approx(float(bank.vectors[1] @ feats[1]), abs=1e-6)
    assert "vectors" in bank.state_dict()


# --- PIRL -----------------------------------------------------------------------------------

def test_jigsaw_patches_come_from_their_cells():
    image = torch.arange(2 * 9 * 9, dtype=torch.float32).view(2, 9, 9)
    g = torch.Generator().manual_seed(0)
    patches, order = jigsaw_patches(image, grid=3, patch=2, generator=g)
    assert patches.shape == (9, 2, 2, 2)
    assert sorted(order.tolist()) == list(range(9))
    for k in range(9):
        cell = int(order[k])
        top, left = divmod(int(patches[k, 0, 0, 0].item()), 9)
        assert cell // 3 * 3 <= top <= cell // 3 * 3 + 1  # 3-pixel cells, 2-pixel patches
        assert cell % 3 * 3 <= left <= cell % 3 * 3 + 1
        assert torch.equal(patches[k], image[:, top:top + 2, left:left + 2])


def test_jigsaw_default_patch_follows_pirl_ratio():
    patches, _ = jigsaw_patches(torch.zeros(3, 255, 255))
    assert patches.shape == (9, 3, 64, 64)  # 85-pixel cells -> 64-pixel patches


def test_pirl_loss_mixes_patch_and_image_terms():
    img, pat = t([1.0, 0.0, 0.0]), t([0.0, 0.0, 0.0])
    # image term as in test_nce_loss_by_hand; patch term: P = 1/4 for all three entries
    image_term = -math.log((e / 4) / (e / 4 + 0.5)) - 2 * math.log(0.5 / 0.75)
    patch_term = -math.log(0.25 / 0.75) - 2 * math.log(0.5 / 0.75)
    loss = pirl_loss(img, pat, temperature=1.0, normaliser=4.0, num_data=4, patch_weight=0.5)
    assert loss.item() == pytest.approx(0.5 * image_term + 0.5 * patch_term, abs=1e-6)
    loss = pirl_loss(img, pat, 1.0, 4.0, 4, patch_weight=1.0)
    assert loss.item() == pytest.approx(patch_term, abs=1e-6)


# --- BYOL -----------------------------------------------------------------------------------

def test_normalized_mse_by_hand():
    # rows: same direction -> 0; orthogonal -> 2; p=(1,0) vs z=(0.6,0.8)*5 -> 2 - 2*0.6 = 0.8
    p = t([2, 0], [1, 0], [1, 0])
    z = t([5, 0], [0, 3], [3, 4])
    assert normalized_mse_loss(p, z).item() == pytest.approx((0 + 2 + 0.8) / 3, abs=1e-6)


def test_byol_loss_is_symmetric_and_stops_target_gradient():
    p1, p2 = t([1, 0]).requires_grad_(), t([0, 1]).requires_grad_()
    z1, z2 = t([0.6, 0.8]).requires_grad_(), t([1, 0]).requires_grad_()
    loss = byol_loss(p1, p2, z1, z2)
    # p1 vs z2: cos 1 -> 0;  p2 vs z1: cos 0.8 -> 0.4
    assert loss.item() == pytest.approx(0.4, abs=1e-6)
    loss.backward()
    assert z1.grad is None and z2.grad is None and p2.grad is not None


def test_target_decay_cosine_schedule():
    assert target_decay(0, 100) == pytest.approx(0.996)
    assert target_decay(50, 100) == pytest.approx(1 - 0.004 * 0.5)  # cos(pi/2) = 0
    assert target_decay(100, 100) == pytest.approx(1.0)
    assert target_decay(25, 100) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2)


def test_ema_update_by_hand():
    online, target = nn.Linear(1, 1), nn.Linear(1, 1)
    with torch.no_grad():
        online.weight.fill_(1.0), online.bias.fill_(-2.0)
        target.weight.fill_(3.0), target.bias.fill_(0.0)
    ema_update(target, online, decay=0.75)
    # 0.75 * 3 + 0.25 * 1 = 2.5 ; 0.75 * 0 + 0.25 * -2 = -0.5
    assert target.weight.item() == pytest.approx(2.5) and target.bias.item() == pytest.approx(-0.5)
    assert online.weight.item() == 1.0


# --- CPC v2 ---------------------------------------------------------------------------------

def test_patch_grid_positions():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    grid = patch_grid(images, patch=4, stride=2)
    assert grid.shape == (2, 2, 2, 1, 4, 4)
    assert torch.equal(grid[1, 0, 1], images[1, :, 0:4, 2:6])
    assert torch.equal(grid[0, 1, 0], images[0, :, 2:6, 0:4])
    assert patch_grid(torch.zeros(1, 3, 256, 256), 64, 32).shape[1:3] == (7, 7)


def test_info_nce_by_hand():
    preds = t([1, 0], [0, 2])
    cands = t([1, 0], [0, 1], [1, 1])
    # scores: row0 (1, 0, 1) target 0 -> -log(e/(2e+1)); row1 (0, 2, 2) target 1 -> -log(e^2/(1+2e^2))
    expected = (-math.log(e / (2 * e + 1)) - math.log(e ** 2 / (1 + 2 * e ** 2))) / 2
    assert info_nce_loss(preds, cands, torch.tensor([0, 1])).item() == pytest.approx(expected, abs=1e-6)


def test_spatial_info_nce_picks_the_patch_offset_rows_below():
    # One image, a 2x1 grid of 2-d vectors: the prediction at row 0 targets row 1.
    targets = t([1, 0], [0, 1]).t().reshape(1, 2, 2, 1)  # (B=1, D=2, rows=2, cols=1)
    predictions = t([0, 3], [9, 9]).t().reshape(1, 2, 2, 1)  # row 1 predicts nothing
    # scores of pred (0,3) against targets (1,0) and (0,1): (0, 3), positive index 1
    expected = -math.log(e ** 3 / (1 + e ** 3))
    assert spatial_info_nce(predictions, targets, offset=1).item() == pytest.approx(expected, abs=1e-6)


def test_row_causal_context_never_sees_rows_below():
    torch.manual_seed(0)
    net = RowCausalContext(dim=4, hidden=8, blocks=3)
    grid = torch.randn(1, 4, 5, 5)
    changed = grid.clone()
    changed[:, :, 3:] = torch.randn(1, 4, 2, 5)  # rows 3 and 4 differ
    a, b = net(grid), net(changed)
    assert torch.allclose(a[:, :, :3], b[:, :, :3])
    assert not torch.allclose(a[:, :, 3:], b[:, :, 3:])


# --- MultiGrain -----------------------------------------------------------------------------

def test_margin_loss_by_hand():
    anchors = t([0, 0], [0, 0])
    positives = t([1.5, 0], [0.5, 0])  # d_ap = 1.5 -> 1.5 - 1.2 + .2 = .5 ; 0.5 -> 0
    negatives = t([0, 1], [0, 3])  # d_an = 1 -> 1.2 - 1 + .2 = .4 ; 3 -> 0
    # 2 active terms out of 4: (0.5 + 0.4) / 2
    loss = margin_loss(anchors, positives, negatives, beta=torch.tensor(1.2), margin=0.2)
    assert loss.item() == pytest.approx(0.45, abs=1e-5)


def test_margin_loss_trains_beta():
    beta = nn.Parameter(torch.tensor(1.2))
    margin_loss(t([0, 0]), t([1.5, 0]), t([0, 1]), beta).backward()
    assert beta.grad.item() == pytest.approx(0.0)  # -1 from the positive, +1 from the negative
    beta.grad = None
    margin_loss(t([0, 0]), t([1.5, 0]), t([0, 3]), beta).backward()
    assert beta.grad.item() == pytest.approx(-1.0)


def test_distance_weighted_sampling_pairs_and_negatives():
    # instances: 0,0,1,1 ; all four on the unit circle
    emb = nn.functional.normalize(t([1, 0], [0.9, 0.1], [0.3, 1], [-1, 0.2]), dim=1)
    a, p, n = distance_weighted_sampling(emb, torch.tensor([0, 0, 1, 1]), generator=torch.Generator().manual_seed(0))
    assert sorted(zip(a.tolist(), p.tolist())) == [(0, 1), (1, 0), (2, 3), (3, 2)]
    inst = torch.tensor([0, 0, 1, 1])
    assert torch.all(inst[a] != inst[n])
    # row 3 is farther than 1.4 from rows 0 and 1, so anchors 0 and 1 can only draw row 2
    assert n[a == 0].tolist() == [2] and n[a == 1].tolist() == [2]


def test_distance_weighted_sampling_falls_back_to_uniform_negatives():
    # the two instances are antipodal (distance 2 > 1.4): negatives are drawn uniformly instead
    emb = t([1, 0], [1, 0], [-1, 0], [-1, 0])
    inst = torch.tensor([0, 0, 1, 1])
    seen = set()
    for seed in range(20):
        a, p, n = distance_weighted_sampling(emb, inst, generator=torch.Generator().manual_seed(seed))
        assert torch.all(inst[a] != inst[n])
        seen.update(n[a == 0].tolist())
    assert seen == {2, 3}


def test_choose_test_exponent_takes_best_score_smallest_on_ties():
    scores = {1.0: 0.5, 2.0: 0.7, 3.0: 0.9, 4.0: 0.9, 5.0: 0.6}
    assert choose_test_exponent(scores.__getitem__, [5.0, 1.0, 4.0, 3.0, 2.0]) == 3.0
    with pytest.raises(ValueError):
        choose_test_exponent(scores.__getitem__, [])


# --- Proxy-NCA ------------------------------------------------------------------------------

def test_proxy_nca_by_hand():
    proxies = t([1, 0], [0, 1], [-1, 0])
    x = t([1, 0], [0, 2])  # normalised: (1,0) and (0,1)
    # row 0 (label 0): d = (0, 2, 4) -> 0 + log(e^-2 + e^-4)
    # row 1 (label 2): d = (2, 0, 2) -> 2 + log(e^-2 + e^0)
    expected = (math.log(e ** -2 + e ** -4) + 2 + math.log(e ** -2 + 1)) / 2
    loss = proxy_nca_loss(x, torch.tensor([0, 2]), proxies)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    # scale 3: distances times 9
    expected3 = (math.log(math.exp(-18) + math.exp(-36)) + 18 + math.log(math.exp(-18) + 1)) / 2
    assert proxy_nca_loss(x, torch.tensor([0, 2]), proxies, scale=3.0).item() == pytest.approx(expected3, abs=1e-4)
