"""GeM pooling against average pooling at p=1 and max pooling as p grows."""

import math

import pytest
import torch

from zoo.pooling import GeM, gem


def test_gem_p1_is_average_pooling():
    x = torch.rand(2, 3, 5, 7) + 0.01
    assert torch.allclose(gem(x, 1.0), x.mean(dim=(2, 3)), atol=1e-6)


def test_gem_by_hand_p2():
    x = torch.tensor([[[[1.0, 3.0], [3.0, 1.0]]]])  # sqrt((1 + 9 + 9 + 1) / 4) = sqrt(5)
    assert gem(x, 2.0).item() == pytest.approx(math.sqrt(5), abs=1e-6)


def test_gem_tends_to_max_pooling_without_overflow():
    x = torch.rand(2, 4, 7, 7) * 5 + 0.1
    peak = x.amax(dim=(2, 3))
    previous = gem(x, 1.0)
    for p in (3.0, 10.0, 100.0, 1000.0):
        pooled = gem(x, p)
        assert torch.all(pooled >= previous - 1e-5)  # the power mean grows with p
        assert torch.all(pooled <= peak + 1e-5)
        previous = pooled
    # at p=1000 the gap to max is at most a factor (1/49)^(1/1000) ~ 0.4 %
    assert torch.allclose(gem(x, 1000.0), peak, rtol=5e-3)
    assert torch.isfinite(gem(x * 100, 1000.0)).all()  # (500)^1000 would overflow naively


def test_gem_module_learnable_p_gets_gradient_and_is_in_state_dict():
    pool = GeM(p=3.0, learn_p=True)
    assert list(pool.state_dict()) == ["p"]
    out = pool(torch.rand(2, 3, 4, 4) + 0.1)
    assert out.shape == (2, 3)
    out.sum().backward()
    assert pool.p.grad is not None and pool.p.grad.abs().item() > 0


def test_gem_module_fixed_p_is_a_buffer_and_set_p():
    pool = GeM(p=3.0)
    assert list(pool.state_dict()) == ["p"] and not list(pool.parameters())
    x = torch.rand(1, 2, 3, 3) + 0.1
    pool.set_p(1.0)
    assert torch.allclose(pool(x), x.mean(dim=(2, 3)), atol=1e-6)
    with pytest.raises(ValueError):
        pool.set_p(0.5)
    with pytest.raises(ValueError):
        gem(torch.rand(2, 3), 3.0)
