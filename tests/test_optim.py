"""LARS against a step worked out by hand."""

import pytest
import torch

from training.optim import LARS


def test_lars_step_by_hand():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # |w| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w]}, {"params": [b], "lars": False, "weight_decay": 0.0}], lr=1.0, momentum=0.9,
               weight_decay=0.0)
    w.grad, b.grad = torch.tensor([0.6, 0.8]), torch.tensor([0.5])  # |g| = 1
    opt.step()
    # trust = 0.001 * 5 / 1 -> step 0.005 * g; the excluded bias takes a plain step lr * g
    assert torch.allclose(w.detach(), torch.tensor([3.0 - 0.003, 4.0 - 0.004]))
    assert b.item() == pytest.approx(0.5)
    opt.step()  # momentum: 0.9 * the previous update + the new one, whose trust uses |w| = 4.995
    update = 0.9 * torch.tensor([0.003, 0.004]) + 0.001 * 4.995 * torch.tensor([0.6, 0.8])
    assert torch.allclose(w.detach(), torch.tensor([2.997, 3.996]) - update, rtol=0, atol=1e-7)


def test_lars_weight_decay_enters_the_trust_ratio():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = LARS([w], lr=1.0, momentum=0.0, weight_decay=0.1)
    w.grad = torch.tensor([0.0, 0.0])
    opt.step()
    # g = 0.1 * w = (0.3, 0.4), |g| = 0.5 -> trust 0.001 * 5 / 0.5 = 0.01 -> w -= (0.003, 0.004)
    assert torch.allclose(w.detach(), torch.tensor([2.997, 3.996]))
