"""The pure pieces of SeLa, IIC and DeeperCluster, each against a hand-computed case."""

import itertools
import math

import numpy as np
import pytest
import torch

from training.evaluation import nmi
from training.methods.deepercluster import hierarchical_kmeans, hierarchical_loss, hierarchical_targets
from training.methods.iic import iic_joint, iic_loss
from training.methods.sela import label_update_steps, sinkhorn_knopp

# Six images, three clusters; every image prefers cluster 0, so argmax labels would put all six
# there. The equipartition (two per cluster) that keeps the most log-probability is unique.
PREFERENCES = torch.tensor([[0.70, 0.20, 0.10],
                            [0.60, 0.30, 0.10],
                            [0.50, 0.10, 0.40],
                            [0.50, 0.40, 0.10],
                            [0.45, 0.10, 0.45],
                            [0.40, 0.30, 0.30]])


def _best_equipartition(log_p: torch.Tensor) -> tuple[int, ...]:
    n, k = log_p.shape
    scored = [(float(sum(log_p[i, a[i]] for i in range(n))), a)
              for a in itertools.product(range(k), repeat=n)
              if np.bincount(a, minlength=k).tolist() == [n // k] * k]
    scored.sort(reverse=True)
    assert scored[0][0] > scored[1][0] + 0.1  # the hand-made case has a clear optimum
    return scored[0][1]


def test_sinkhorn_knopp_returns_the_best_equipartitioned_assignment():
    log_p = PREFERENCES.log()
    assert PREFERENCES.argmax(1).tolist() == [0, 0, 0, 0, 0, 0]
    labels, _ = sinkhorn_knopp(log_p)  # the paper's lambda (25) and stopping rule
    assert np.bincount(labels.numpy(), minlength=3).tolist() == [2, 2, 2]
    assert tuple(labels.tolist()) == _best_equipartition(log_p) == (0, 0, 2, 1, 2, 1)


def test_sinkhorn_knopp_transport_has_equipartitioned_marginals():
    torch.manual_seed(0)
    log_p = torch.log_softmax(torch.randn(40, 4) * 3, dim=1)
    _, transport = sinkhorn_knopp(log_p, tol=1e-10)
    torch.testing.assert_close(transport.sum(1), torch.full((40,), 1 / 40, dtype=torch.float64))
    torch.testing.assert_close(transport.sum(0), torch.full((4,), 1 / 4, dtype=torch.float64))
    # extreme confidences (log-probs of -1000) stay finite thanks to the per-image shift
    labels, transport = sinkhorn_knopp(log_p * 300)
    assert torch.isfinite(transport).all() and np.bincount(labels.numpy(), minlength=4).min() > 0


def test_label_update_steps_are_spread_quadratically():
    assert label_update_steps(10, 5, updates=5) == [0, 4, 14, 31]  # t = 11.01 * (i/4)^2 epochs
    steps = label_update_steps(400, 100, updates=100)
    assert steps[0] == 0 and len(steps) == 99  # the last time (401.01 epochs) is past the end
    gaps = np.diff(steps)
    assert (gaps[1:] >= gaps[:-1]).all()  # denser early in steps, i.e. quadratic in time


def test_iic_loss_is_minus_the_hand_computed_mutual_information():
    p1 = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    p2 = torch.tensor([[0.6, 0.4], [0.1, 0.9]])
    # sum of outer products [[.51, .59], [.19, .71]], symmetrised and normalised:
    joint = torch.tensor([[0.255, 0.195], [0.195, 0.355]])
    torch.testing.assert_close(iic_joint(p1, p2), joint)
    mi = (0.255 * math.log(0.255 / (0.45 * 0.45)) + 2 * 0.195 * math.log(0.195 / (0.45 * 0.55))
          + 0.355 * math.log(0.355 / (0.55 * 0.55)))
    assert float(iic_loss(p1, p2)) == pytest.approx(-mi, rel=1e-5)


def test_iic_loss_is_minus_log_k_for_confident_balanced_agreement_and_has_gradients():
    one_hot = torch.eye(4).repeat(3, 1)
    assert float(iic_loss(one_hot, one_hot)) == pytest.approx(-math.log(4), abs=1e-4)
    collapsed = torch.zeros(12, 4)
    collapsed[:, 0] = 1
    assert float(iic_loss(collapsed, collapsed)) == pytest.approx(0.0, abs=1e-4)
    logits = torch.randn(12, 4, requires_grad=True)
    iic_loss(logits.softmax(1), logits.roll(1, 0).softmax(1)).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_hierarchical_targets_pair_super_cluster_and_rotation():
    super_cluster = torch.tensor([0, 0, 0, 0, 2, 2])
    sub_cluster = torch.tensor([7, 7, 7, 7, 1, 1])
    rotation = torch.tensor([0, 1, 2, 3, 0, 3])
    super_class, sub_class = hierarchical_targets(super_cluster, sub_cluster, rotation)
    assert super_class.tolist() == [0, 1, 2, 3, 8, 11]
    assert sub_class.tolist() == [7, 7, 7, 7, 1, 1]  # rotations share the image's sub-cluster
    with pytest.raises(ValueError):
        hierarchical_targets(super_cluster, sub_cluster, rotation + 1)


def test_hierarchical_loss_scores_the_sub_class_with_its_own_super_class_classifier():
    super_logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    sub_logits = torch.zeros(2, 4, 3)  # batch, super-class, sub-class
    sub_logits[0, 0] = torch.tensor([1.0, 0.0, 0.0])
    sub_logits[1, 3] = torch.tensor([0.0, 0.0, 3.0])
    super_class, sub_class = torch.tensor([0, 3]), torch.tensor([0, 2])
    ce_super = (-math.log(math.e**2 / (math.e**2 + 3)) - math.log(math.e / (math.e + 3))) / 2
    ce_sub = (-math.log(math.e / (math.e + 2)) - math.log(math.e**3 / (math.e**3 + 2))) / 2
    loss = hierarchical_loss(super_logits, sub_logits, super_class, sub_class)
    assert float(loss) == pytest.approx(ce_super + ce_sub, rel=1e-6)


def test_hierarchical_kmeans_finds_groups_then_sub_groups():
    rng = np.random.default_rng(0)
    group_centres = np.array([[100.0, 0.0], [-100.0, 0.0]])
    sub_offsets = np.array([[0.0, 10.0], [0.0, -10.0], [10.0, 0.0]])
    group = np.repeat([0, 1], 60)
    sub = np.tile(np.repeat([0, 1, 2], 20), 2)
    x = (group_centres[group] + sub_offsets[sub] + rng.standard_normal((120, 2))).astype(np.float32)
    top, low = hierarchical_kmeans(x, super_clusters=2, sub_clusters=3)
    assert nmi(top, group) == pytest.approx(1.0)
    assert nmi(top * 3 + low, group * 3 + sub) == pytest.approx(1.0)
