"""Gather-Excite on hand-made maps, and as a ResNet option that changes nothing when off."""

import math

import pytest
import torch

from zoo import UsageError, build_architecture
from zoo.backbones.gather_excite import GatherExcite

_SMALL = dict(in_channels=1, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1))


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_theta_minus_gates_each_cell_by_the_sigmoid_of_its_mean():
    x = torch.tensor([[[[1.0, 3.0, 0.0, 0.0], [-1.0, 1.0, 0.0, 4.0]]]])  # cells of 2x2: means 1 and 1
    x[0, 0, 1, 3] = 0.0  # right cell all zeros: mean 0, gate 1/2
    out = GatherExcite(1, "theta-minus", extent=2)(x)
    expected = torch.tensor([[[[_sigmoid(1) * 1, _sigmoid(1) * 3, 0.0, 0.0], [-_sigmoid(1), _sigmoid(1), 0.0, 0.0]]]])
    assert torch.allclose(out, expected)
    # global extent: one gate per channel, sigmoid of the mean of the map (4 / 8 = 0.5)
    assert torch.allclose(GatherExcite(1, "theta-minus", extent=0)(x), x * _sigmoid(0.5))


def test_a_partial_last_cell_is_averaged_over_what_it_holds():
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 2, 2] = 2.0  # the bottom-right cell of extent 2 holds this one pixel: mean 2
    out = GatherExcite(1, "theta-minus", extent=2)(x)
    assert out.shape == x.shape and out[0, 0, 2, 2].item() == pytest.approx(2 * _sigmoid(2.0))


def test_theta_minus_adds_no_parameter_and_keeps_every_key_and_the_initialisation():
    for arch, kwargs in (("resnet_small", _SMALL), ("resnet18", {})):
        torch.manual_seed(0)
        plain = build_architecture(arch, **kwargs).state_dict()
        torch.manual_seed(0)
        ge = build_architecture(arch, **kwargs, gather_excite="theta-minus").state_dict()
        assert ge.keys() == plain.keys() and all(torch.equal(ge[k], plain[k]) for k in plain)


def test_theta_adds_a_depthwise_conv_and_batchnorm_per_halving():
    plain = sum(p.numel() for p in build_architecture("resnet_small", **_SMALL).parameters())
    channels = 16 + 32 + 64 + 128  # one block per stage
    for extent, steps in ((2, 1), (8, 3)):
        model = build_architecture("resnet_small", **_SMALL, gather_excite="theta", ge_extent=extent)
        added = sum(p.numel() for p in model.parameters()) - plain
        assert added == steps * (9 + 2) * channels  # 3x3 depth-wise weights + BN weight and bias
        assert "layer2.0.ge.gather.0.weight" in model.state_dict()
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 128, 4, 4)
        assert model.eval()(torch.randn(1, 1, 48, 48)).shape == (1, 128, 6, 6)  # any input size


def test_bad_gather_excite_settings_are_one_line_usage_errors():
    for kwargs in ({"gather_excite": "theta+"}, {"gather_excite": "theta", "ge_extent": 0},
                   {"gather_excite": "theta", "ge_extent": 6}, {"gather_excite": "theta-minus", "ge_extent": 1}):
        with pytest.raises(UsageError, match="gather_excite|ge_extent"):
            build_architecture("resnet_small", **kwargs)
