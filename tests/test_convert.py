"""`zoo convert` against files written exactly as the original code saved them.

Each test builds the authors' checkpoint layout by hand (their nesting, prefixes, key names, extra
entries and the PyTorch serialisation of the time), filled with seeded random tensors; converts it;
loads the result with zoo.from_pretrained; and compares every feature layer with a reference
forward computed from the raw tensors with torch.nn.functional, not through sslzoo's modules.
Head sizes (cluster counts) are shrunk where they are not part of the backbone, to keep files small.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo
from zoo import UsageError, WeightsError
from zoo.convert import convert_checkpoint
from zoo.convert.releases import RELEASES, LayoutMismatch
from zoo.convert.safe_load import load_original

from conftest import run_zoo
from test_fileset import tiny_disk  # noqa: F401 (a fixture: a 512 KiB tmpfs)

TOL = 1e-5


@pytest.fixture
def work(tmp_path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)  # the files are hundreds of MB


class Random:
    """Seeded tensors at a scale that keeps activations near 1 through deep random networks."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def normal(self, *shape, scale=1.0):
        return torch.randn(*shape, generator=self.g) * scale

    def conv(self, sd, key, cout, cin, k, bias=True):
        sd[f"{key}.weight"] = self.normal(cout, cin, k, k, scale=(cin * k * k) ** -0.5)
        if bias:
            sd[f"{key}.bias"] = self.normal(cout, scale=0.1)

    def sobel(self, sd, prefix=""):
        """DeepCluster's Sobel front end: grey (1x1, 3 -> 1), then the x and y gradients (3x3, 1 -> 2)."""
        self.conv(sd, f"{prefix}sobel.0", 1, 3, 1)
        self.conv(sd, f"{prefix}sobel.1", 2, 1, 3)

    def linear(self, sd, key, cout, cin, bias=True):
        sd[f"{key}.weight"] = self.normal(cout, cin, scale=cin ** -0.5)
        if bias:
            sd[f"{key}.bias"] = self.normal(cout, scale=0.1)

    def bn(self, sd, key, c, counter=True, running=True):
        sd[f"{key}.weight"] = 1 + self.normal(c, scale=0.1)
        sd[f"{key}.bias"] = self.normal(c, scale=0.1)
        if running:
            sd[f"{key}.running_mean"] = self.normal(c, scale=0.1)
            sd[f"{key}.running_var"] = 0.5 + torch.rand(c, generator=self.g)
            if counter:
                sd[f"{key}.num_batches_tracked"] = torch.tensor(1000)


# -- functional reference pieces --------------------------------------------------------------------

def bn(x, sd, key, batch_stats=False):
    if batch_stats:  # IIC without --batchnorm_track: the batch's own statistics, always
        return F.batch_norm(x, None, None, sd[f"{key}.weight"], sd[f"{key}.bias"], True, 0.0, 1e-5)
    return F.batch_norm(x, sd[f"{key}.running_mean"], sd[f"{key}.running_var"], sd[f"{key}.weight"],
                        sd[f"{key}.bias"], False, 0.0, 1e-5)


def conv_bn_relu(x, sd, conv, norm, stride=1, padding=0):
    return F.relu(bn(F.conv2d(x, sd[f"{conv}.weight"], sd.get(f"{conv}.bias"), stride, padding), sd, norm))


def sobel_ref(x, sd, prefix, padding=1):
    grey = F.conv2d(x, sd[f"{prefix}0.weight"], sd[f"{prefix}0.bias"])
    return F.conv2d(grey, sd[f"{prefix}1.weight"], sd[f"{prefix}1.bias"], padding=padding)


def assert_features_match(model, x, expected):
    model.eval()
    with torch.no_grad():
        got = model.forward_features(x)
    assert list(got) == list(expected)
    for layer, want in expected.items():
        diff = (got[layer] - want).abs().max().item()
        assert got[layer].shape == want.shape and diff <= TOL, f"{layer}: max abs diff {diff}"


def convert_and_load(source, path, out, **kw):
    report = convert_checkpoint(source, path, out, **kw)
    model = zoo.from_pretrained(out)
    assert json.loads((out / "config.json").read_text())["conversion"] == report.conversion
    return report, model


# -- torchvision-keyed ResNets, written key by key ----------------------------------------------------

def resnet_state(rand, depth, prefix="", counter=True, running=True, stem=(3, 7), fc=None):
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}[depth]
    bottleneck = depth >= 50
    sd = OrderedDict()
    norm = dict(counter=counter, running=running)
    rand.conv(sd, f"{prefix}conv1", 64, stem[0], stem[1], bias=False)
    rand.bn(sd, f"{prefix}bn1", 64, **norm)
    cin = 64
    for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        cout = width * (4 if bottleneck else 1)
        for j in range(n):
            p = f"{prefix}layer{i}.{j}."
            if bottleneck:
                rand.conv(sd, p + "conv1", width, cin, 1, bias=False)
                rand.bn(sd, p + "bn1", width, **norm)
                rand.conv(sd, p + "conv2", width, width, 3, bias=False)
                rand.bn(sd, p + "bn2", width, **norm)
                rand.conv(sd, p + "conv3", cout, width, 1, bias=False)
                rand.bn(sd, p + "bn3", cout, **norm)
            else:
                rand.conv(sd, p + "conv1", width, cin, 3, bias=False)
                rand.bn(sd, p + "bn1", width, **norm)
                rand.conv(sd, p + "conv2", width, width, 3, bias=False)
                rand.bn(sd, p + "bn2", width, **norm)
            if j == 0 and (i > 1 or cin != cout):
                rand.conv(sd, p + "downsample.0", cout, cin, 1, bias=False)
                rand.bn(sd, p + "downsample.1", cout, **norm)
            cin = cout
    if fc:
        rand.linear(sd, f"{prefix}fc", fc, cin)
    return sd


def resnet_ref(t, x, depth, stem=(2, 3), pool=(3, 2, 1), batch_stats=False):
    """A torchvision-style ResNet forward from raw tensors ``t`` under torchvision's key names."""
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}[depth]

    def norm(y, key):
        return bn(y, t, key, batch_stats)

    out = {}
    x = F.relu(norm(F.conv2d(x, t["conv1.weight"], None, stem[0], stem[1]), "bn1"))
    out["stem"] = x
    x = F.max_pool2d(x, *pool)
    for i, n in enumerate(blocks, start=1):
        for j in range(n):
            p, s = f"layer{i}.{j}.", (1 if i == 1 or j > 0 else 2)
            if depth >= 50:
                y = F.relu(norm(F.conv2d(x, t[p + "conv1.weight"]), p + "bn1"))
                y = F.relu(norm(F.conv2d(y, t[p + "conv2.weight"], None, s, 1), p + "bn2"))
                y = norm(F.conv2d(y, t[p + "conv3.weight"]), p + "bn3")
            else:
                y = F.relu(norm(F.conv2d(x, t[p + "conv1.weight"], None, s, 1), p + "bn1"))
                y = norm(F.conv2d(y, t[p + "conv2.weight"], None, 1, 1), p + "bn2")
            if p + "downsample.0.weight" in t:
                x = norm(F.conv2d(x, t[p + "downsample.0.weight"], None, s), p + "downsample.1")
            x = F.relu(y + x)
        out[f"layer{i}"] = x
    return out


# -- RotNet ------------------------------------------------------------------------------------------

ROTNET_CONVS = ((0, 3, 64, 11, 4, 2), (2, 64, 192, 5, 1, 2), (4, 192, 384, 3, 1, 1), (5, 384, 256, 3, 1, 1),
                (6, 256, 256, 3, 1, 1))


def rotnet_alexnet_state(rand):
    """AlexNet(opt).state_dict() of FeatureLearningRotNet, PyTorch 0.2: no num_batches_tracked."""
    sd = OrderedDict()
    for block, cin, cout, k, _, _ in ROTNET_CONVS:
        rand.conv(sd, f"_feature_blocks.{block}.0", cout, cin, k)
        rand.bn(sd, f"_feature_blocks.{block}.1", cout, counter=False)
    rand.linear(sd, "_feature_blocks.8.1", 4096, 9216, bias=False)
    rand.bn(sd, "_feature_blocks.8.2", 4096, counter=False)
    rand.linear(sd, "_feature_blocks.8.4", 4096, 4096, bias=False)
    rand.bn(sd, "_feature_blocks.8.5", 4096, counter=False)
    rand.linear(sd, "_feature_blocks.9.0", 4, 4096)
    return sd


def alexnet_convs_ref(sd, x, convs, keys):
    """conv1-conv5 of a reference AlexNet (max-pools before conv2 and conv3); ``keys(block)`` gives
    the conv's and the BN's key prefixes. Returns the features by layer and the flattened pool5."""
    out = {}
    for name, (block, _, _, _, stride, pad) in zip(("conv1", "conv2", "conv3", "conv4", "conv5"), convs):
        if name in ("conv2", "conv3"):
            x = F.max_pool2d(x, 3, 2)
        x = conv_bn_relu(x, sd, *keys(block), stride, pad)
        out[name] = x
    return out, torch.flatten(F.max_pool2d(x, 3, 2), 1)


def rotnet_alexnet_ref(sd, x):
    out, x = alexnet_convs_ref(sd, x, ROTNET_CONVS, lambda b: (f"_feature_blocks.{b}.0", f"_feature_blocks.{b}.1"))
    x = F.relu(bn(F.linear(x, sd["_feature_blocks.8.1.weight"]), sd, "_feature_blocks.8.2"))
    out["fc6"] = x
    out["fc7"] = F.relu(bn(F.linear(x, sd["_feature_blocks.8.4.weight"]), sd, "_feature_blocks.8.5"))
    return out


@pytest.mark.parametrize("wrapper", ["network", "model_state_dict"])
def test_rotnet_alexnet(work, wrapper):
    sd = rotnet_alexnet_state(Random(0))
    path = work / "model_net_epoch50"
    if wrapper == "network":  # Algorithm.save_network, legacy serialisation of PyTorch 0.2
        torch.save({"epoch": 50, "network": sd}, path, _use_new_zipfile_serialization=False)
    else:  # VISSL's mirror of the same file
        torch.save({"model_state_dict": sd}, path)
    report, model = convert_and_load("rotnet", path, work / "out", keep_heads=True)
    x = Random(1).normal(1, 3, 224, 224)
    assert_features_match(model, x, rotnet_alexnet_ref(sd, x))
    assert torch.equal(model.heads[0].weight, sd["_feature_blocks.9.0.weight"])  # the rotation head
    assert report.name == "rotnet_alexnet" and report.conversion["loader"] == "restricted unpickler"
    assert any("num_batches_tracked" in a for a in report.conversion["added"])


def nin_state(rand, blocks=4):
    sd = OrderedDict()
    specs = [((3, 192, 5), (192, 160, 1), (160, 96, 1)), ((96, 192, 5), (192, 192, 1), (192, 192, 1))]
    specs += [((192, 192, 3), (192, 192, 1), (192, 192, 1))] * (blocks - 2)
    for b, spec in enumerate(specs):
        for j, (cin, cout, k) in enumerate(spec, start=1):
            p = f"_feature_blocks.{b}.Block{b + 1}_ConvB{j}.layers"
            rand.conv(sd, f"{p}.Conv", cout, cin, k, bias=False)
            rand.bn(sd, f"{p}.BatchNorm", cout)
    rand.linear(sd, f"_feature_blocks.{blocks}.Classifier", 4, 192)
    return sd


def nin_ref(sd, x, blocks=4):
    out = {}
    for b in range(blocks):
        if b == 1:
            x = F.max_pool2d(x, 3, 2, 1)
        if b == 2:
            x = F.avg_pool2d(x, 3, 2, 1)  # the CIFAR config: use_avg_on_conv3 = False, so none before block 4
        for j in range(1, 4):
            p = f"_feature_blocks.{b}.Block{b + 1}_ConvB{j}.layers"
            k = sd[f"{p}.Conv.weight"].shape[-1]
            x = conv_bn_relu(x, sd, f"{p}.Conv", f"{p}.BatchNorm", 1, (k - 1) // 2)
        out[f"block{b + 1}"] = x
    return out


def cifar_rotnet_file(work, extra=None):
    sd = nin_state(Random(2))
    path = work / "model_net_epoch200"
    torch.save({"epoch": 200, "network": sd, **(extra or {})}, path)
    return sd, path


def test_rotnet_nin_cifar(work):
    sd, path = cifar_rotnet_file(work)
    report, model = convert_and_load("rotnet", path, work / "out")
    assert report.name == "rotnet_nin_cifar10"
    x = Random(3).normal(2, 3, 32, 32)
    assert_features_match(model, x, nin_ref(sd, x))
    assert "rotation classifier" in report.conversion["dropped"]
    assert report.conversion["dropped_keys"] == ["_feature_blocks.4.Classifier.bias", "_feature_blocks.4.Classifier.weight"]


# -- DeepCluster, DeeperCluster, SeLa: DeepCluster's AlexNet and VGG-16 -------------------------------

DC_CONVS = ((0, 2, 96, 11, 4, 2), (4, 96, 256, 5, 1, 2), (8, 256, 384, 3, 1, 1), (11, 384, 384, 3, 1, 1),
            (14, 384, 256, 3, 1, 1))


def dc_alexnet_state(rand, prefix="features.module.", in_channels=2, counter=False):
    sd = OrderedDict()
    if in_channels == 2:
        rand.sobel(sd)
    for i, cin, cout, k, _, _ in DC_CONVS:
        rand.conv(sd, f"{prefix}{i}", cout, in_channels if i == 0 else cin, k)
        rand.bn(sd, f"{prefix}{i + 1}", cout, counter=counter)
    rand.linear(sd, "classifier.1", 4096, 9216)
    rand.linear(sd, "classifier.4", 4096, 4096)
    return sd


def dc_alexnet_ref(sd, x, prefix="features.module.", sobel=True):
    if sobel:
        x = sobel_ref(x, sd, "sobel.")
    out, x = alexnet_convs_ref(sd, x, DC_CONVS, lambda i: (f"{prefix}{i}", f"{prefix}{i + 1}"))
    out["fc6"] = x = F.relu(F.linear(x, sd["classifier.1.weight"], sd["classifier.1.bias"]))
    out["fc7"] = F.relu(F.linear(x, sd["classifier.4.weight"], sd["classifier.4.bias"]))
    return out


def sgd_state():
    return {"state": {}, "param_groups": [{"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-5, "params": list(range(20))}]}


def test_deepcluster_alexnet(work):
    rand = Random(4)
    sd = dc_alexnet_state(rand)
    rand.linear(sd, "top_layer", 10, 4096)  # 10000 clusters in the release
    path = work / "checkpoint.pth.tar"  # main.py, Python 2 / PyTorch 0.3: legacy serialisation
    torch.save({"epoch": 500, "arch": "alexnet", "state_dict": sd, "optimizer": sgd_state()}, path,
               _use_new_zipfile_serialization=False)
    report, model = convert_and_load("deepcluster", path, work / "out")
    assert report.name == "deepcluster_alexnet"
    x = Random(5).normal(1, 3, 224, 224)
    assert_features_match(model, x, dc_alexnet_ref(sd, x))
    assert torch.equal(model.sobel[1].weight, sd["sobel.1.weight"])  # the file's own Sobel, not re-made
    assert report.conversion["dropped"]["optimizer"] == "optimiser state"
    assert report.conversion["dropped_keys"] == ["top_layer.bias", "top_layer.weight"]


VGG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg_state(rand, prefix, counter):
    sd, i, cin = OrderedDict(), 0, 2
    for v in VGG:
        if v == "M":
            i += 1
            continue
        rand.conv(sd, f"{prefix}features.{i}", v, cin, 3)
        rand.bn(sd, f"{prefix}features.{i + 1}", v, counter=counter)
        i, cin = i + 3, v
    rand.linear(sd, f"{prefix}classifier.0", 4096, 25088)
    rand.linear(sd, f"{prefix}classifier.3", 4096, 4096)
    return sd


def vgg_ref(sd, x, prefix):
    out, i, stage = {}, 0, 1
    for v in VGG:
        if v == "M":
            out[f"conv{stage}"] = x
            x, i, stage = F.max_pool2d(x, 2, 2), i + 1, stage + 1
            continue
        x = conv_bn_relu(x, sd, f"{prefix}features.{i}", f"{prefix}features.{i + 1}", 1, 1)
        i += 3
    x = torch.flatten(x, 1)
    out["fc6"] = x = F.relu(F.linear(x, sd[f"{prefix}classifier.0.weight"], sd[f"{prefix}classifier.0.bias"]))
    out["fc7"] = F.relu(F.linear(x, sd[f"{prefix}classifier.3.weight"], sd[f"{prefix}classifier.3.bias"]))
    return out


@pytest.mark.slow
def test_deepcluster_vgg16(work):
    rand = Random(6)
    sd = OrderedDict()
    rand.sobel(sd)
    state = vgg_state(rand, "", counter=False)
    sd.update({k.replace("features.", "features.module."): v for k, v in state.items()})
    rand.linear(sd, "top_layer", 10, 4096)
    path = work / "checkpoint.pth.tar"
    torch.save({"epoch": 100, "arch": "vgg16", "state_dict": sd, "optimizer": sgd_state()}, path,
               _use_new_zipfile_serialization=False)
    report, model = convert_and_load("deepcluster", path, work / "out", arch="vgg16")
    assert report.name == "deepcluster_vgg16"
    x = Random(7).normal(1, 3, 224, 224)
    assert_features_match(model, x, vgg_ref(state, sobel_ref(x, sd, "sobel."), ""))


@pytest.mark.slow
def test_deepercluster_vgg16(work):
    rand = Random(8)
    sd = OrderedDict()
    rand.sobel(sd, "module.")
    sd.update(vgg_state(rand, "module.body.", counter=True))
    pred = OrderedDict()
    rand.linear(pred, "module", 16, 4096)
    path = work / "ours.pth"  # trainer.save_checkpoint, PyTorch 1.0 with DistributedDataParallel
    torch.save({"epoch": 100, "start_iter": 0, "state_dict": sd, "optimizer": sgd_state(),
                "pred_layer_state_dict": pred, "optimizer_pred_layer": sgd_state()}, path)
    report, model = convert_and_load("deepercluster", path, work / "out")
    x = Random(9).normal(1, 3, 224, 224)
    # Net.forward: ConstantPad2d(2), then Sobel whose 3x3 conv has padding 0, then the VGG body
    grads = sobel_ref(F.pad(x, (2, 2, 2, 2)), sd, "module.sobel.", padding=0)
    expected = vgg_ref(sd, grads, "module.body.")
    assert expected["conv1"].shape[-1] == 226
    assert_features_match(model, x, expected)
    assert set(report.conversion["dropped"]) == {"epoch", "start_iter", "optimizer", "pred_layer_state_dict",
                                                 "optimizer_pred_layer"}


class SelaAlexNet(nn.Module):
    """What self-label's main.py pickles whole with torch.save(model): attribute names as theirs."""

    def __init__(self, heads):
        super().__init__()
        layers, cin = [], 3
        for i, (_, _, cout, k, stride, pad) in enumerate(DC_CONVS):
            layers += [nn.Conv2d(cin, cout, k, stride, pad), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            if i in (0, 1, 4):
                layers.append(nn.MaxPool2d(3, 2))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(9216, 4096), nn.ReLU(inplace=True),
                                        nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True))
        for a, k in enumerate(heads):
            setattr(self, f"top_layer{a}", nn.Linear(4096, k))
        self.top_layer = None
        self.headcount = len(heads)


@pytest.mark.parametrize("saved", ["state_dict", "whole_model"])
def test_sela_alexnet(work, saved):
    rand = Random(10)
    sd = dc_alexnet_state(rand, prefix="features.", in_channels=3, counter=True)
    for h in range(10):  # ten heads of 3000 in the release
        rand.linear(sd, f"top_layer{h}", 8, 4096)
    path = work / "alexnet-10x3k-wRot.pth"
    if saved == "state_dict":
        torch.save(sd, path)
    else:
        model = SelaAlexNet([8] * 10)
        model.load_state_dict(sd)
        torch.save(model, path)
    report, model = convert_and_load("sela", path, work / "out", keep_heads=True)
    assert report.name == "sela_alexnet"
    x = Random(11).normal(1, 3, 224, 224)
    expected = dc_alexnet_ref(sd, x, prefix="features.", sobel=False)
    assert_features_match(model, x, expected)
    with torch.no_grad():
        logits = model.forward_heads(x)
    want = [F.linear(expected["fc7"], sd[f"top_layer{h}.weight"], sd[f"top_layer{h}.bias"]) for h in range(10)]
    assert len(logits) == 10 and all((a - b).abs().max() <= TOL for a, b in zip(logits, want))
    if saved == "whole_model":
        assert report.conversion["loader"] == "restricted unpickler"
        assert f"{__name__}.SelaAlexNet" in report.conversion["pickled_classes_never_run"]


# -- SeLa, NPID, VISSL, MultiGrain: ResNets --------------------------------------------------------

SELA_OLD = {"conv1": "features.0", "bn1": "features.1", "layer1": "features.4", "layer2": "features.5",
            "layer3": "features.6", "layer4": "features.7"}


def test_sela_resnet50_old_layout(work):
    rand = Random(12)
    tv = resnet_state(rand, 50)
    sd = OrderedDict((SELA_OLD[k.split(".")[0]] + k[len(k.split(".")[0]):], v) for k, v in tv.items())
    for h in range(10):
        rand.linear(sd, f"top_layer{h}", 8, 2048)
    path = work / "resnet-10x3k.pth"
    torch.save(sd, path)
    report, model = convert_and_load("sela", path, work / "out", arch="resnet50")
    assert report.name == "sela_resnet50"
    x = Random(13).normal(1, 3, 64, 64)
    assert_features_match(model, x, resnet_ref(tv, x, 50))
    assert len(report.conversion["dropped_keys"]) == 20


def test_sela_resnet50_torchvision_layout_is_told_apart_by_file_name(work):
    rand = Random(14)
    sd = resnet_state(rand, 50, fc=30)
    path = work / "resnet50-10x3k_pp.pth"
    torch.save({"state_dict": sd, "L": torch.randint(0, 30, (10, 50), generator=rand.g)}, path)
    report, model = convert_and_load("sela", path, work / "out")
    assert report.name == "sela_resnet50_augpp"
    x = Random(15).normal(1, 3, 64, 64)
    assert_features_match(model, x, resnet_ref(sd, x, 50))
    assert report.conversion["dropped"]["L"] == "tensor 10x50"
    renamed = work / "renamed.pth"
    path.rename(renamed)
    with pytest.raises(UsageError, match="fits sela_resnet50, sela_resnet50_augpp; name the one"):
        convert_checkpoint("sela", renamed, work / "out2")


class NCEAverage(nn.Module):
    """lemniscate.pytorch's memory bank, pickled whole into NPID's checkpoints."""

    def __init__(self, dim, n):
        super().__init__()
        self.nLem, self.K = n, 4096
        self.unigrams = torch.ones(n)
        self.multinomial = AliasMethod(n)
        self.register_buffer("params", torch.tensor([4096, 0.07, -1, 0.5]))
        self.register_buffer("memory", torch.rand(n, dim))


class AliasMethod:
    def __init__(self, n):
        self.prob = torch.ones(n)
        self.alias = torch.zeros(n, dtype=torch.long)


def test_npid_resnet18(work):
    rand = Random(16)
    tv = resnet_state(rand, 18, counter=False, fc=128)  # PyTorch 0.4.0 wrote no num_batches_tracked
    path = work / "lemniscate_resnet18.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": OrderedDict(("module." + k, v) for k, v in tv.items()),
                "lemniscate": NCEAverage(128, 100), "best_prec1": 41.0, "optimizer": sgd_state()},
               path, _use_new_zipfile_serialization=False)
    report, model = convert_and_load("npid", path, work / "out")
    assert report.name == "npid_resnet18"
    x = Random(17).normal(2, 3, 64, 64)
    expected = resnet_ref(tv, x, 18)
    assert_features_match(model, x, expected)
    with torch.no_grad():
        embedding = model.forward_head(x)
    want = F.linear(expected["layer4"].mean((2, 3)), tv["fc.weight"], tv["fc.bias"])
    assert (embedding - want).abs().max() <= TOL
    c = report.conversion
    assert c["loader"] == "restricted unpickler"
    assert f"{__name__}.NCEAverage" in c["pickled_classes_never_run"]
    assert "memory 100x128" in c["dropped"]["lemniscate"] and "never run" in c["dropped"]["lemniscate"]
    with pytest.raises(LayoutMismatch, match="'resnet18', not 'resnet50'"):
        RELEASES["npid_resnet50"].read(load_original(path).obj, False)


@pytest.mark.parametrize("nesting", ["classy_state_dict", "model_state_dict"])
def test_vissl_pirl_resnet50(work, nesting):
    rand = Random(18)
    tv = resnet_state(rand, 50)
    trunk = OrderedDict(("_feature_blocks." + k, v) for k, v in tv.items())
    path = work / "model_final_checkpoint_phase199.torch"
    if nesting == "classy_state_dict":  # VISSL's checkpoint writer
        heads = OrderedDict()
        rand.linear(heads, "0.clf.0", 128, 2048)
        torch.save({"phase_idx": 399, "iteration": 250000, "train_phase_idx": 199, "iteration_num": 250000,
                    "loss": {"memory_bank": rand.normal(50, 128)},
                    "classy_state_dict": {"train": True, "base_model": {"model": {"trunk": trunk, "heads": heads},
                                                                          "meta": {}},
                                          "optimizer": sgd_state(), "loss": {"memory_bank": rand.normal(50, 128)},
                                          "num_updates": 1000}}, path)
    else:  # VISSL's converted files
        torch.save({"model_state_dict": trunk}, path)
    report, model = convert_and_load("pirl_resnet50", path, work / "out")
    x = Random(19).normal(1, 3, 64, 64)
    assert_features_match(model, x, resnet_ref(tv, x, 50))
    if nesting == "classy_state_dict":
        assert "heads" in report.conversion["dropped"] and "classy_state_dict.loss" in report.conversion["dropped"]


class MultiOptim:
    """MultiGrain's optimiser holder; CheckpointHandler pickles its *bound method* state_dict."""

    def __init__(self, params):
        self.optimizers = OrderedDict(backbone=torch.optim.SGD(params, lr=0.2, momentum=0.9))

    def state_dict(self):
        return {k: v.state_dict() for k, v in self.optimizers.items()}


def test_multigrain_resnet50(work):
    rand = Random(20)
    tv = resnet_state(rand, 50, fc=1000)
    sd = OrderedDict(("classifier." + k[3:] if k.startswith("fc.") else "features." + k, v) for k, v in tv.items())
    sd["pool.p"] = torch.tensor(3.0)
    beta = nn.Parameter(torch.tensor(1.2))
    path = work / "joint_3B_0.5.pth"
    torch.save({"model_state": sd, "optimizer_state": MultiOptim([beta]).state_dict, "extra": {"beta": beta}}, path)
    report, model = convert_and_load("multigrain", path, work / "out")
    x = Random(21).normal(2, 3, 64, 64)
    expected = resnet_ref(tv, x, 50)
    p = 3.0
    expected["gem"] = expected["layer4"].clamp(min=1e-6).pow(p).mean((2, 3)).pow(1 / p)  # functional.gem
    assert_features_match(model, x, expected)
    with torch.no_grad():
        logits = model.forward_head(x)
    assert (logits - F.linear(expected["gem"], tv["fc.weight"], tv["fc.bias"])).abs().max() <= TOL
    c = report.conversion
    assert "builtins.getattr" in c["pickled_classes_never_run"]  # the pickled bound method
    assert "pickled call builtins.getattr" in c["dropped"]["optimizer_state"]
    assert c["dropped"]["extra"].startswith("margin-loss beta")
    assert zoo.get_model_entry("multigrain_resnet50").embedding_layer == "gem"


# -- IIC ---------------------------------------------------------------------------------------------

def iic_sobel_ref(x, include_rgb):
    """IIC's sobel_process on the grey image (PIL's BT.601 luma), dx then dy, no bias."""
    grey = F.conv2d(x, torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1))
    kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
    grads = torch.cat([F.conv2d(grey, kx.view(1, 1, 3, 3), padding=1), F.conv2d(grey, kx.t().reshape(1, 1, 3, 3), padding=1)], 1)
    return torch.cat([x, grads], 1) if include_rgb else grads


@pytest.mark.parametrize("include_rgb,track", [(False, True), (True, False)])
def test_iic_net5g(work, include_rgb, track):
    rand = Random(22)
    cin = 5 if include_rgb else 2
    trunk = resnet_state(rand, 34, prefix="trunk.", counter=track, running=track, stem=(cin, 3))
    sd = OrderedDict(trunk)
    for head, k in (("head_A", 70), ("head_B", 10)):
        for i in range(5):
            rand.linear(sd, f"{head}.heads.{i}.0", k, 512)
    path = work / "best_net.pytorch"
    torch.save(sd, path)
    report, model = convert_and_load("iic", path, work / "out")
    x = torch.rand(2, 3, 32, 32, generator=rand.g)
    tv = {k[len("trunk."):]: v for k, v in trunk.items()}
    expected = resnet_ref(tv, iic_sobel_ref(x, include_rgb), 34, stem=(1, 1), pool=(2, 2, 1), batch_stats=not track)
    assert_features_match(model, x, expected)
    assert "head_A (70 clusters)" in report.conversion["dropped"]["clustering heads"]
    assert report.conversion["added"][:1] == ["sobel.0.weight"]


# -- safety: pickled payloads never run --------------------------------------------------------------

class RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


class WritesFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


EVIL_MODULE = "sslzoo_test_evil_module"


class NamesEvilModule:
    """Pickles as a call to sslzoo_test_evil_module.boom: unpickling would import that module."""

    def __reduce__(self):
        return (_evil_boom, ())


def _evil_boom():
    return None


def _payload_extras(work):
    module = types.ModuleType(EVIL_MODULE)
    module.boom = _evil_boom
    _evil_boom.__module__, _evil_boom.__qualname__ = EVIL_MODULE, "boom"
    sys.modules[EVIL_MODULE] = module  # only so that pickle can name it while saving
    # the real module, importable from `work`, announces any import by writing a file
    (work / f"{EVIL_MODULE}.py").write_text(
        f"open({str(work / 'imported')!r}, 'w').close()\ndef boom():\n    open({str(work / 'boom')!r}, 'w').close()\n")
    return {"log": RunsCommand(work / "command_ran"), "cache": WritesFile(work / "file_written"),
            "hook": NamesEvilModule()}


def test_pickled_payloads_are_converted_without_running(work, monkeypatch):
    extras = _payload_extras(work)
    try:
        sd, path = cifar_rotnet_file(work, extras)
    finally:
        del sys.modules[EVIL_MODULE]
    monkeypatch.syspath_prepend(str(work))
    report, model = convert_and_load("rotnet_nin_cifar10", path, work / "out")
    markers = ("command_ran", "file_written", "imported", "boom")
    assert not any((work / m).exists() for m in markers) and EVIL_MODULE not in sys.modules
    c = report.conversion
    assert {"posix.system", "io.open", f"{EVIL_MODULE}.boom"} <= set(c["pickled_classes_never_run"])
    assert "pickled call posix.system" in c["dropped"]["log"] and "touch" in c["dropped"]["log"]
    x = Random(3).normal(2, 3, 32, 32)
    assert_features_match(model, x, nin_ref(sd, x))
    # the control: an ordinary torch.load of the same file does run all three payloads
    code = f"import sys, torch; sys.path.insert(0, {str(work)!r}); torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=work)
    assert all((work / m).exists() for m in markers)


def test_a_file_that_is_only_a_payload_is_refused_without_running(work):
    path = work / "model_net_epoch50"
    torch.save({"network": RunsCommand(work / "command_ran")}, path)
    with pytest.raises(UsageError, match="not in a layout `zoo convert rotnet` knows.*top-level keys network"):
        convert_checkpoint("rotnet", path, work / "out")
    assert not (work / "command_ran").exists() and not (work / "out").exists()


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archives_are_refused(work):
    path = work / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), path)
    with pytest.raises(WeightsError, match="TorchScript archive"):
        convert_checkpoint("rotnet", path, work / "out")


# -- refusals and the command line -------------------------------------------------------------------

def test_missing_backbone_weights_are_refused_and_nothing_is_written(work):
    sd = nin_state(Random(2))
    del sd["_feature_blocks.3.Block4_ConvB3.layers.BatchNorm.running_var"]
    path = work / "model_net_epoch200"
    torch.save({"epoch": 200, "network": sd}, path)
    with pytest.raises(WeightsError, match="lacks 1 backbone weight.*'block4.2.1.running_var'; nothing was written"):
        convert_checkpoint("rotnet", path, work / "out")
    assert not (work / "out").exists()


def test_existing_output_and_unknown_sources_are_usage_errors(work):
    _, path = cifar_rotnet_file(work)
    (work / "out").mkdir()
    (work / "out" / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="already holds a checkpoint; pass --overwrite"):
        convert_checkpoint("rotnet", path, work / "out")
    with pytest.raises(UsageError, match="unknown conversion source 'simclr'"):
        convert_checkpoint("simclr", path, work / "o2")
    with pytest.raises(UsageError, match="deepcluster has no release with architecture 'resnet50'; choose from alexnet, vgg16"):
        convert_checkpoint("deepcluster", path, work / "o3", arch="resnet50")


@pytest.mark.slow
def test_cli_converts_and_reports(work):
    _, path = cifar_rotnet_file(work)
    out = work / "out"
    r = run_zoo("convert", "rotnet", str(path), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "converted model_net_epoch200 -> rotnet_nin_cifar10" in r.stdout
    assert "dropped   rotation classifier" in r.stdout and "dropped   epoch: 200" in r.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["name"] == "rotnet_nin_cifar10" and config["arch_kwargs"]["pool_after_block3"] is False
    assert len(config["conversion"]["original_sha256"]) == 64
    unknown = work / "unknown.pth"
    torch.save({"weights": {"conv.weight": torch.zeros(1)}, "step": 3}, unknown)
    bad = run_zoo("convert", "deepcluster", str(unknown), "-o", str(work / "o2"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "top-level keys weights, step" in bad.stderr and "Supported: deepcluster_alexnet" in bad.stderr


def test_a_folder_holding_the_release_file_converts_and_a_folder_without_one_says_what_to_pass(work, capsys):
    from zoo.cli import main

    (work / "download").mkdir()
    _, path = cifar_rotnet_file(work / "download")
    report, _ = convert_and_load("rotnet", work / "download", work / "out")
    assert report.name == "rotnet_nin_cifar10" and report.conversion["original_file"] == path.name
    (work / "empty").mkdir()
    assert main(["convert", "rotnet", str(work / "empty"), "-o", str(work / "out2")]) == 2
    err = capsys.readouterr().err
    assert "is a folder; pass the release file itself (for rotnet: model_net_epoch200, model_net_epoch50)" in err
    assert err.count("\n") == 1 and not (work / "out2").exists()


@pytest.mark.parametrize("disk", ["fault hook", "512 KiB tmpfs"])
def test_a_full_disk_while_converting_is_one_line_naming_the_output_and_leaves_nothing(work, monkeypatch, capsys,
                                                                                     request, disk):
    """Issue 19: a full disk during `zoo convert` printed an internal error (safetensors' own message)."""
    from zoo.cli import main

    _, path = cifar_rotnet_file(work)
    if disk == "fault hook":
        out = work / "out"
        monkeypatch.setenv("ZOO_TEST_FAULT", "write@model.safetensors:1:enospc")
    else:  # a real one: the weights (MBs) do not fit
        out = request.getfixturevalue("tiny_disk") / "out"
    assert main(["convert", "rotnet", str(path), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: disk full while writing ") and str(out) in err, err
    assert err.count("\n") == 1 and "internal error" not in err
    assert [p for p in out.parent.rglob("*") if p.is_file() and p != path] == []  # nothing half-written
    if disk == "fault hook":
        monkeypatch.delenv("ZOO_TEST_FAULT")
        assert main(["convert", "rotnet", str(path), "-o", str(out)]) == 0  # the rerun is not blocked
        assert zoo.from_pretrained(out).entry.name == "rotnet_nin_cifar10"
