"""Backbones are exact to the published architectures: shapes, parameter counts, key names."""

import numpy as np
import pytest
import torch
import torchvision
from hubtools import assert_same_features
from scipy import ndimage

from zoo import UnknownNameError, UsageError, build_architecture, create_model, list_models
from zoo.backbones import ARCHITECTURES, Sobel
from zoo.inspect import layer_shapes, parameter_count


def conv_bn(cin, cout, k, bias=True):
    """Parameters of a conv (+bias) followed by BatchNorm (weight and bias)."""
    return cin * cout * k * k + (cout if bias else 0) + 2 * cout


EXPECTED_SHAPES = {
    "rotnet_alexnet": {"conv1": (64, 55, 55), "conv2": (192, 27, 27), "conv3": (384, 13, 13),
                       "conv4": (256, 13, 13), "conv5": (256, 13, 13), "fc6": (4096,), "fc7": (4096,)},
    "deepcluster_alexnet": {"conv1": (96, 55, 55), "conv2": (256, 27, 27), "conv3": (384, 13, 13),
                            "conv4": (384, 13, 13), "conv5": (256, 13, 13), "fc6": (4096,), "fc7": (4096,)},
    "deepcluster_vgg16": {"conv1": (64, 224, 224), "conv2": (128, 112, 112), "conv3": (256, 56, 56),
                          "conv4": (512, 28, 28), "conv5": (512, 14, 14), "fc6": (4096,), "fc7": (4096,)},
    "npid_resnet18": {"stem": (64, 112, 112), "layer1": (64, 56, 56), "layer2": (128, 28, 28),
                      "layer3": (256, 14, 14), "layer4": (512, 7, 7)},
    "sela_resnet50": {"stem": (64, 112, 112), "layer1": (256, 56, 56), "layer2": (512, 28, 28),
                      "layer3": (1024, 14, 14), "layer4": (2048, 7, 7)},
    # the official CIFAR-10 config has no pooling after block 3 (use_avg_on_conv3 = False)
    "rotnet_nin_cifar10": {"block1": (96, 32, 32), "block2": (192, 16, 16), "block3": (192, 8, 8),
                           "block4": (192, 8, 8)},
    "deepercluster_vgg16": {"conv1": (64, 226, 226), "conv2": (128, 113, 113), "conv3": (256, 56, 56),
                            "conv4": (512, 28, 28), "conv5": (512, 14, 14), "fc6": (4096,), "fc7": (4096,)},
    "multigrain_resnet50": {"stem": (64, 112, 112), "layer1": (256, 56, 56), "layer2": (512, 28, 28),
                            "layer3": (1024, 14, 14), "layer4": (2048, 7, 7), "gem": (2048,)},
    "iic_net5g": {"stem": (64, 64, 64), "layer1": (64, 33, 33), "layer2": (128, 17, 17),
                  "layer3": (256, 9, 9), "layer4": (512, 5, 5)},
    "simclr_resnet_small_fmnist": {"stem": (16, 32, 32), "layer1": (16, 32, 32), "layer2": (32, 16, 16),
                                   "layer3": (64, 8, 8), "layer4": (128, 4, 4)},
    # two half-width (8-64) ResNets side by side
    "splitbrain_resnet_small_photos": {"stem": (16, 32, 32), "layer1": (16, 32, 32), "layer2": (32, 16, 16),
                                       "layer3": (64, 8, 8), "layer4": (128, 4, 4)},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES))
def test_layer_shapes_at_nominal_size(name):
    model = create_model(name)
    assert layer_shapes(model, model.entry.input) == EXPECTED_SHAPES[name]
    assert tuple(EXPECTED_SHAPES[name]) == model.feature_layers


def test_every_architecture_is_offered_by_some_registry_model():
    from zoo import get_model_entry

    used = {get_model_entry(n).arch for n in list_models()}
    assert used == set(ARCHITECTURES)


def test_rotnet_alexnet_parameter_count():
    convs = (conv_bn(3, 64, 11) + conv_bn(64, 192, 5) + conv_bn(192, 384, 3) + conv_bn(384, 256, 3)
             + conv_bn(256, 256, 3))
    assert convs == 2_472_000
    fc = 9216 * 4096 + 2 * 4096 + 4096 * 4096 + 2 * 4096  # bias-free linears with BN1d
    model = create_model("rotnet_alexnet")
    conv_part = sum(p.numel() for n, p in model.named_parameters() if n.startswith("conv"))
    assert conv_part == convs
    assert parameter_count(model) == convs + fc == 57_014_336


def test_deepcluster_alexnet_parameter_count_and_heads():
    sobel = (3 * 1 + 1) + (1 * 2 * 9 + 2)
    convs = (conv_bn(2, 96, 11) + conv_bn(96, 256, 5) + conv_bn(256, 384, 3) + conv_bn(384, 384, 3)
             + conv_bn(384, 256, 3))
    fc = (9216 * 4096 + 4096) + (4096 * 4096 + 4096)
    model = build_architecture("alexnet_deepcluster", heads=(10000,))
    assert parameter_count(model) == sobel + convs + fc + 4096 * 10000 + 10000
    # SeLa: the same trunk on RGB, ten heads of 3000
    sela = build_architecture("alexnet_sela", heads=(3000,) * 10)
    assert parameter_count(sela) == convs + 96 * 11 * 11 + fc + 10 * (4096 * 3000 + 3000)
    logits = sela.eval().forward_heads(torch.zeros(2, 3, 224, 224))
    assert len(logits) == 10 and all(t.shape == (2, 3000) for t in logits)


def test_torchvision_resnet_keys_and_counts():
    for depth, count in ((18, 11_689_512), (50, 25_557_032)):
        ours = build_architecture(f"resnet{depth}")
        ref = getattr(torchvision.models, f"resnet{depth}")()
        assert parameter_count(ours) == count
        ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
        assert list(ours_sd) == list(ref_sd)
        assert all(ours_sd[k].shape == ref_sd[k].shape for k in ref_sd)
        ours.load_state_dict(ref_sd, strict=True)
        x = torch.randn(2, 3, 64, 64)
        ref.eval(), ours.eval()
        with torch.no_grad():  # two networks, two forwards: equal within summation order
            assert_same_features({"head": ours.forward_head(x)}, {"head": ref(x)})


def test_resnet_without_fc_has_no_fc_keys():
    model = build_architecture("resnet50", num_classes=None)
    assert not any(k.startswith("fc.") for k in model.state_dict())
    assert parameter_count(model) == 25_557_032 - (2048 * 1000 + 1000)


def test_vgg16_bn_keys_match_torchvision_without_last_classifier():
    ours = build_architecture("vgg16_bn")
    ref = torchvision.models.vgg16_bn().state_dict()
    expected = {k: v.shape for k, v in ref.items() if not k.startswith("classifier.6")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == expected
    assert parameter_count(ours) == 138_365_992 - (4096 * 1000 + 1000)


def test_nin_parameter_count():
    block1 = conv_bn(3, 192, 5, False) + conv_bn(192, 160, 1, False) + conv_bn(160, 96, 1, False)
    block2 = conv_bn(96, 192, 5, False) + 2 * conv_bn(192, 192, 1, False)
    block34 = 2 * (conv_bn(192, 192, 3, False) + 2 * conv_bn(192, 192, 1, False))
    assert parameter_count(build_architecture("nin", num_blocks=4)) == block1 + block2 + block34


def test_sobel_is_frozen_and_equals_grey_gradients():
    sobel = Sobel()
    assert all(not p.requires_grad for p in sobel.parameters())
    rng = np.random.default_rng(0)
    img = rng.random((3, 20, 24)).astype(np.float32)
    with torch.no_grad():
        out = sobel(torch.from_numpy(img)[None])[0].numpy()
    grey = img.mean(0)
    kx = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float32)
    gx = ndimage.correlate(grey, kx, mode="constant", cval=0.0)
    gy = ndimage.correlate(grey, kx.T, mode="constant", cval=0.0)
    np.testing.assert_allclose(out[0], gx, atol=1e-5)
    np.testing.assert_allclose(out[1], gy, atol=1e-5)
    # a training step does not move it
    model = build_architecture("alexnet_deepcluster")
    before = model.sobel[1].weight.clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    model(torch.randn(2, 3, 224, 224)).sum().backward()
    opt.step()
    assert torch.equal(model.sobel[1].weight, before)


def test_forward_features_returns_only_asked_layers_in_order():
    model = build_architecture("nin", num_blocks=4).eval()
    x = torch.randn(2, 3, 32, 32)
    all_feats = model.forward_features(x)
    assert list(all_feats) == ["block1", "block2", "block3", "block4"]
    some = model.forward_features(x, ["block3", "block1"])
    assert list(some) == ["block1", "block3"]
    assert_same_features({"block3": some["block3"], "block4": model(x)},  # separate forwards
                         {"block3": all_feats["block3"], "block4": all_feats["block4"]})


def test_features_are_taken_after_relu_before_pooling():
    model = build_architecture("alexnet_rotnet").eval()
    feats = model.forward_features(torch.randn(1, 3, 224, 224), ["conv1", "conv5"])
    assert feats["conv1"].min() >= 0 and feats["conv1"].shape[-1] == 55  # unpooled


def test_bad_layer_and_bad_input_are_one_line_errors():
    model = build_architecture("nin")
    with pytest.raises(UnknownNameError, match=r"unknown layer 'block9'.*block4"):
        model.forward_features(torch.zeros(1, 3, 32, 32), ["block9"])
    with pytest.raises(UsageError, match=r"expects 3 input channel"):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(UsageError, match=r"\(N, C, H, W\)"):
        model(torch.zeros(3, 32, 32))


def test_first_differing_layer_allows_summation_order_and_nothing_more():
    from zoo.inspect import FEATURE_RTOL, first_differing_layer

    a = {"conv1": torch.tensor([4.0, -2.0, 0.5]), "fc6": torch.zeros(2)}
    within = {"conv1": a["conv1"] + 4.0 * FEATURE_RTOL * 0.9, "fc6": torch.zeros(2)}
    beyond = {"conv1": a["conv1"] + torch.tensor([0.0, 0.0, 4.0 * FEATURE_RTOL * 1.1]), "fc6": torch.zeros(2)}
    assert first_differing_layer(a, within) is None  # relative to the layer's largest |value|, 4.0
    assert first_differing_layer(a, beyond) == "conv1"
    assert first_differing_layer(a, {**a, "fc6": torch.full((2,), 1e-9)}) is None  # an all-zero layer: absolute
    assert first_differing_layer(a, {**a, "fc6": torch.zeros(3)}) == "fc6"
    assert first_differing_layer(a, {"conv1": a["conv1"]}) == "fc6"
    assert first_differing_layer(a, {**a, "conv1": torch.tensor([float("nan"), -2.0, 0.5])}) == "conv1"
