"""The original releases `zoo convert` reads: where each keeps its weights and how its keys map.

One reader per file layout, in the order of the registry. A reader takes the object a checkpoint
file holds (see ``safe_load``) and returns the backbone's tensors under sslzoo's key names, plus
what it left out and why; it raises ``LayoutMismatch`` when the file is not in its layout. The
facts come from the authors' code: what their training scripts passed to ``torch.save``, the
``nn.Module`` attribute names behind their keys, and wrappers (``DataParallel``) that add
``module.``. Architectures themselves live in ``zoo.backbones``; nothing here runs a network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from zoo.convert.safe_load import PickledObject
from zoo.errors import WeightsError


class LayoutMismatch(Exception):
    """The file is not in the layout a reader expects; the message says what was missing."""


@dataclass
class Extracted:
    """A reader's result: the backbone's tensors under sslzoo's names and what was left out."""

    layout: str
    state: dict[str, torch.Tensor]
    dropped_keys: list[str] = field(default_factory=list)  # weight keys of the file not converted
    dropped: dict[str, str] = field(default_factory=dict)  # what was left out -> why / what it is
    arch_kwargs: dict[str, Any] = field(default_factory=dict)  # read from the file, override the entry
    added: list[str] = field(default_factory=list)  # keys the file lacks that are fixed by design
    notes: list[str] = field(default_factory=list)

    def take(self, state: Mapping[str, torch.Tensor], rename: Callable[[str], str | None]) -> None:
        """Add ``state`` under new names; keys renamed to None are recorded as dropped."""
        for key, value in state.items():
            new = rename(key)
            if new is None:
                self.dropped_keys.append(key)
            else:
                self.state[new] = value


@dataclass(frozen=True)
class Release:
    name: str  # the registry model it produces
    family: str  # the SOURCE word that finds it besides its name (the method, or "vissl")
    arch: str  # short architecture word for --arch
    layout: str  # one line: what the authors' file looks like
    read: Callable[[Any, bool], Extracted]


# -- helpers shared by the readers ----------------------------------------------------------------

def module_state(obj: PickledObject, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a whole pickled ``nn.Module`` (rebuilt inertly), from its ``__dict__``."""
    state = obj.state if isinstance(obj.state, Mapping) else {}
    skip = state.get("_non_persistent_buffers_set") or set()
    out = {}
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if isinstance(value, torch.Tensor) and name not in skip:
                out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, PickledObject):
            out.update(module_state(child, f"{prefix}{name}."))
    return out


def _is_module(obj: Any) -> bool:
    return isinstance(obj, PickledObject) and isinstance(obj.state, Mapping) and "_modules" in obj.state


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _tensor_summary(obj: Any, depth: int = 4) -> list[tuple[int, str]]:
    """(numel, "name AxB") of the tensors inside a pickled object or container, largest first."""
    found: list[tuple[int, str]] = []

    def walk(value: Any, name: str, level: int) -> None:
        if isinstance(value, torch.Tensor):
            found.append((value.numel(), f"{name} {'x'.join(map(str, value.shape)) or 'scalar'}"))
        elif level < depth and isinstance(value, PickledObject):
            walk(value.state, name, level + 1)
        elif level < depth and isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, str(k), level + 1)
        elif level < depth and isinstance(value, (list, tuple)):
            for i, v in enumerate(value[:50]):
                walk(v, f"{name}[{i}]", level + 1)

    walk(obj, "", 0)
    return sorted(found, key=lambda t: -t[0])


def describe(value: Any) -> str:
    """A short description of a checkpoint entry that conversion leaves out."""
    if isinstance(value, torch.Tensor):
        return f"tensor {'x'.join(map(str, value.shape)) or 'scalar'}"
    if isinstance(value, PickledObject):
        if _is_module(value):
            text = f"pickled {value.pickled_class} module, never run"
        elif value.args and value.state is None:
            text = f"pickled call {value.pickled_class}{str(value.args)[:60]}, never run"
        else:
            text = f"pickled {value.pickled_class} object, never run"
        tensors = ", ".join(t.strip() for _, t in _tensor_summary(value)[:2])
        return text + (f" (holds {tensors})" if tensors else "")
    if isinstance(value, Mapping):
        if "state" in value and "param_groups" in value:
            return "optimiser state"
        names = ", ".join(map(str, list(value)[:4])) + (", ..." if len(value) > 4 else "")
        return f"{len(value)} {'tensors' if _is_state_dict(value) else 'entries'} ({names})"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    return repr(value)[:60]


def found_keys(obj: Any) -> str:
    """What a file holds at its top level, for the one-line 'unknown layout' message."""
    if _is_module(obj):
        return f"a whole pickled model of class {obj.pickled_class}"
    if _is_state_dict(obj):
        keys = list(obj)
        return f"a bare state dict of {len(keys)} tensors ({', '.join(keys[:4])}, ...)"
    if isinstance(obj, Mapping):
        return "top-level keys " + ", ".join(map(str, list(obj)[:12])) + (", ..." if len(obj) > 12 else "")
    return f"a {type(obj).__name__}" if not isinstance(obj, PickledObject) else f"a pickled {obj.pickled_class}"


def unwrap(obj: Any, keys: tuple[str, ...], bare: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    """The state dict under the first of ``keys`` (or the object itself if ``bare``), the other
    top-level entries described for the report, and which key held the weights."""
    if _is_module(obj):
        return module_state(obj), {}, f"whole pickled {obj.pickled_class}"
    if isinstance(obj, Mapping):
        for key in keys:
            if key in obj and _is_module(obj[key]):
                return module_state(obj[key]), _others(obj, key), f"{key!r} (a whole pickled model)"
            if key in obj and _is_state_dict(obj[key]):
                return dict(obj[key]), _others(obj, key), repr(key)
        if bare and _is_state_dict(obj):
            return dict(obj), {}, "bare state dict"
    raise LayoutMismatch(f"no state dict under {' or '.join(map(repr, keys))}" + (" nor a bare one" if bare else ""))


def _others(obj: Mapping, used: str) -> dict[str, str]:
    return {str(k): describe(v) for k, v in obj.items() if k != used}


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop ``prefix`` (e.g. DataParallel's ``module.``) where every key has it."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def require(state: Mapping[str, Any], key: str, layout: str) -> torch.Tensor:
    if key not in state:
        raise LayoutMismatch(f"no {key!r} ({layout})")
    return state[key]


def heads_from(state: dict[str, torch.Tensor], pattern: str, keep: bool, what: str,
               extracted: Extracted) -> None:
    """Move the linear heads matching ``pattern`` (group 1: index or '', group 2: weight/bias) to
    ``heads.<i>`` when ``keep``, else report them dropped; record their sizes in arch_kwargs."""
    sizes: dict[int, int] = {}
    for key in sorted(state):
        m = re.fullmatch(pattern, key)
        if not m:
            continue
        index = int(m[1] or 0)
        value = state.pop(key)
        if m[2] == "weight":
            sizes[index] = value.shape[0]
        if keep:
            extracted.state[f"heads.{index}.{m[2]}"] = value
        else:
            extracted.dropped_keys.append(key)
    if not sizes:
        return
    listing = f"{len(sizes)} x {sorted(set(sizes.values()))[0]}" if len(set(sizes.values())) == 1 else str(sizes)
    if keep:
        extracted.arch_kwargs["heads"] = [sizes[i] for i in sorted(sizes)]
        extracted.notes.append(f"kept {what} ({listing} outputs) as heads.<i>")
    else:
        extracted.dropped[what] = f"{listing} outputs; keep with --keep-heads"


def resnet_depth(state: Mapping[str, Any], prefix: str = "") -> int:
    """18/34/50/101/152 from the blocks a torchvision-keyed ResNet state dict holds."""
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"{prefix}layer{i}.")}) for i in range(1, 5))
    bottleneck = f"{prefix}layer1.0.conv3.weight" in state
    known = {((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), False): 34, ((3, 4, 6, 3), True): 50,
             ((3, 4, 23, 3), True): 101, ((3, 8, 36, 3), True): 152}
    if (blocks, bottleneck) not in known:
        raise LayoutMismatch(f"not a torchvision-keyed ResNet (blocks per stage {blocks})")
    return known[(blocks, bottleneck)]


def _expect_resnet(state: Mapping[str, Any], depth: int, layout: str) -> None:
    found = resnet_depth(state)
    if found != depth:
        raise LayoutMismatch(f"a ResNet-{found}, not a ResNet-{depth} ({layout})")
    width = require(state, "conv1.weight", layout).shape[0]
    if width != 64:
        raise LayoutMismatch(f"a ResNet-{depth} of width x{width // 64} (only width x1 is supported)")


# -- RotNet (gidariss/FeatureLearningRotNet) ------------------------------------------------------
# Algorithm.save_network: {'epoch', 'network': net.state_dict()}. AlexNet._feature_blocks =
# [conv1, pool1, conv2, pool2, conv3, conv4, conv5, pool5, fc_block, classifier]; each conv block is
# Sequential(Conv2d, BatchNorm2d, ReLU); fc_block = Sequential(Flatten, Linear, BN1d, ReLU, Linear,
# BN1d, ReLU); classifier = Sequential(Linear(4096, 4)). VISSL mirrors the file with the state dict
# under 'model_state_dict', and its own AlexNet trunks use the same conv block indices.

_ROTNET_CONVS = {"0": "conv1", "2": "conv2", "4": "conv3", "5": "conv4", "6": "conv5"}
_ROTNET_FC = {"1": "fc6.0", "2": "fc6.1", "4": "fc7.0", "5": "fc7.1"}
ROTNET_ALEXNET_LAYOUT = ("{'epoch', 'network'} with _feature_blocks.<i>.<j>.* keys "
                         "(or VISSL's copy under 'model_state_dict')")


def vissl_state(obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    """A VISSL file's trunk (``classy_state_dict.base_model.model.trunk``, or ``model_state_dict``
    in converted files) without a feature extractor's ``base_model.``, and the rest described."""
    try:
        model = obj["classy_state_dict"]["base_model"]["model"]
        trunk = model["trunk"]
    except (KeyError, TypeError):
        state, others, where = unwrap(obj, ("model_state_dict",))
        return strip_prefix(state, "base_model."), others, where
    if not _is_state_dict(trunk):
        raise LayoutMismatch("classy_state_dict.base_model.model.trunk is not a state dict")
    others = {k: describe(v) for k, v in obj.items() if k != "classy_state_dict"}
    others.update({f"classy_state_dict.{k}": describe(v) for k, v in obj["classy_state_dict"].items()
                   if k != "base_model"})
    if model.get("heads"):
        others["heads"] = f"{len(model['heads'])} tensors of VISSL's heads (projection or memory-bank heads)"
    return strip_prefix(dict(trunk), "base_model."), others, "classy_state_dict.base_model.model.trunk"


def original_or_vissl(obj: Any, keys: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    try:
        return unwrap(obj, keys)
    except LayoutMismatch:
        return vissl_state(obj)


def _rotnet_alexnet_key(key: str) -> str | None:
    parts = key.split(".")
    if len(parts) == 4 and parts[0] == "_feature_blocks":
        _, block, index, param = parts
        if block in _ROTNET_CONVS and index in ("0", "1"):
            return f"{_ROTNET_CONVS[block]}.{index}.{param}"
        if block == "8" and index in _ROTNET_FC:
            return f"{_ROTNET_FC[index]}.{param}"
    return None


def read_rotnet_alexnet(obj: Any, keep_heads: bool) -> Extracted:
    state, others, where = original_or_vissl(obj, ("network",))
    conv1 = require(state, "_feature_blocks.0.0.weight", ROTNET_ALEXNET_LAYOUT)
    if conv1.dim() != 4 or conv1.shape[1] != 3:
        raise LayoutMismatch(f"_feature_blocks.0.0.weight has shape {tuple(conv1.shape)}, not an RGB AlexNet conv1")
    ex = Extracted(f"RotNet AlexNet, weights under {where}", {}, dropped=others)
    heads_from(state, r"_feature_blocks\.9\.()0\.(weight|bias)", keep_heads, "rotation classifier", ex)
    ex.take(state, _rotnet_alexnet_key)
    return ex


# NetworkInNetwork: _feature_blocks[b] = Sequential(Block<b+1>_ConvB<j> = BasicBlock whose `layers`
# is Sequential(Conv, BatchNorm, ReLU), ..., pooling); the last block holds GlobalAveragePooling and
# the rotation Classifier.
ROTNET_NIN_LAYOUT = "{'epoch', 'network'} with _feature_blocks.<b>.Block<n>_ConvB<j>.layers.{Conv,BatchNorm}.* keys"
_NIN_KEY = re.compile(r"_feature_blocks\.\d+\.Block(\d+)_ConvB(\d)\.layers\.(Conv|BatchNorm)\.(\w+)")


def read_rotnet_nin(obj: Any, keep_heads: bool) -> Extracted:
    state, others, where = unwrap(obj, ("network", "model_state_dict"))
    conv1 = require(state, "_feature_blocks.0.Block1_ConvB1.layers.Conv.weight", ROTNET_NIN_LAYOUT)
    ex = Extracted(f"RotNet Network-in-Network, weights under {where}", {}, dropped=others)
    blocks = set()

    def rename(key: str) -> str | None:
        m = _NIN_KEY.fullmatch(key)
        if not m:
            return None
        blocks.add(int(m[1]))
        return f"block{m[1]}.{int(m[2]) - 1}.{0 if m[3] == 'Conv' else 1}.{m[4]}"

    ex.take(state, rename)
    classifier = [k for k in ex.dropped_keys if ".Classifier." in k]
    if classifier:
        ex.dropped["rotation classifier"] = f"{', '.join(classifier)} (a pretraining head)"
    ex.arch_kwargs = {"num_blocks": max(blocks), "in_channels": conv1.shape[1]}
    ex.notes.append("pooling after block 3 follows the registry entry (the official CIFAR config has none); "
                    "the file cannot tell")
    return ex


# -- DeepCluster (facebookresearch/deepcluster) ---------------------------------------------------
# main.py: torch.save({'epoch', 'arch', 'state_dict', 'optimizer'}) with model.features wrapped in
# DataParallel (keys features.module.<i>); features = [conv, bn, relu] per conv and MaxPool between;
# classifier = [Dropout, Linear, ReLU, Dropout, Linear, ReLU]; sobel = [grey 1x1, sobel 3x3];
# top_layer = Linear(4096, k clusters).

_DC_CONVS = {0: "conv1", 4: "conv2", 8: "conv3", 11: "conv4", 14: "conv5"}
DEEPCLUSTER_LAYOUT = "{'epoch', 'arch', 'state_dict', 'optimizer'} with features.module.<i>.*, sobel.*, top_layer.* keys"


def _deepcluster_alexnet_key(key: str) -> str | None:
    if key.startswith("sobel."):
        return key
    m = re.fullmatch(r"features\.(\d+)\.(\w+)", key)
    if m:
        i = int(m[1])
        if i in _DC_CONVS:
            return f"{_DC_CONVS[i]}.0.{m[2]}"
        if i - 1 in _DC_CONVS:
            return f"{_DC_CONVS[i - 1]}.1.{m[2]}"
    m = re.fullmatch(r"classifier\.([14])\.(\w+)", key)
    if m:
        return f"{'fc6' if m[1] == '1' else 'fc7'}.1.{m[2]}"
    return None


def _deepcluster_state(obj: Any, arch: str) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    if isinstance(obj, Mapping) and "arch" in obj and obj["arch"] != arch:
        raise LayoutMismatch(f"the file's 'arch' is {obj['arch']!r}, not {arch!r}")
    state, others, where = unwrap(obj, ("state_dict",))
    state = {k.replace("features.module.", "features."): v for k, v in state.items()}
    if "sobel.0.weight" not in state:
        raise LayoutMismatch("no sobel.* keys (DeepCluster's released models all compute Sobel inside)")
    return state, others, where


def read_deepcluster_alexnet(obj: Any, keep_heads: bool) -> Extracted:
    if isinstance(obj, Mapping) and ("classy_state_dict" in obj or "model_state_dict" in obj):
        # VISSL's alexnet_deepcluster trunk: sobel.* and conv blocks keyed like RotNet's
        state, others, where = vissl_state(obj)
        require(state, "_feature_blocks.0.0.weight", "VISSL's AlexNet trunk")
        ex = Extracted(f"VISSL AlexNet-DeepCluster trunk under {where}", {}, dropped=others)
        ex.take(state, lambda k: k if k.startswith("sobel.") else _rotnet_alexnet_key(k))
        return ex
    state, others, where = _deepcluster_state(obj, "alexnet")
    if require(state, "features.0.weight", DEEPCLUSTER_LAYOUT).shape[1] != 2:
        raise LayoutMismatch("conv1 does not take the 2 Sobel channels")
    ex = Extracted(f"DeepCluster AlexNet, weights under {where}", {}, dropped=others)
    heads_from(state, r"top_layer()\.(weight|bias)", keep_heads, "top layer (cluster classifier)", ex)
    ex.take(state, _deepcluster_alexnet_key)
    return ex


def _vgg_key(key: str) -> str | None:
    return key if re.fullmatch(r"(sobel\.[01]|features\.\d+|classifier\.[03])\.\w+", key) else None


def read_deepcluster_vgg16(obj: Any, keep_heads: bool) -> Extracted:
    state, others, where = _deepcluster_state(obj, "vgg16")
    require(state, "features.40.weight", DEEPCLUSTER_LAYOUT + " (VGG-16: features up to 41)")
    ex = Extracted(f"DeepCluster VGG-16, weights under {where}", {}, dropped=others)
    heads_from(state, r"top_layer()\.(weight|bias)", keep_heads, "top layer (cluster classifier)", ex)
    ex.take(state, _vgg_key)
    return ex


# -- DeeperCluster (facebookresearch/DeeperCluster) -----------------------------------------------
# trainer.save_checkpoint: {'epoch', 'start_iter', 'state_dict', 'optimizer', 'pred_layer_state_dict',
# 'optimizer_pred_layer'}; the model is Net(padding, sobel, body=VGG16, pred_layer=None) wrapped in
# DistributedDataParallel, so keys are module.sobel.*, module.body.features.<i>.*,
# module.body.classifier.{0,3}.*. Net pads the input by 2 and its Sobel conv has padding 0.
DEEPERCLUSTER_LAYOUT = ("{'epoch', 'start_iter', 'state_dict', 'optimizer', 'pred_layer_state_dict', ...} "
                        "with module.body.features.<i>.*, module.sobel.* keys")


def read_deepercluster_vgg16(obj: Any, keep_heads: bool) -> Extracted:
    state, others, where = unwrap(obj, ("state_dict",))
    state = strip_prefix(state, "module.")
    require(state, "body.features.0.weight", DEEPERCLUSTER_LAYOUT)
    if "sobel.0.weight" not in state:
        raise LayoutMismatch("no sobel.* keys: a DeeperCluster-format model without Sobel (e.g. its RotNet), "
                             "which no registry entry describes")
    ex = Extracted(f"DeeperCluster VGG-16, weights under {where}", {}, dropped=others)
    ex.take(state, lambda k: _vgg_key(k.removeprefix("body.")))
    return ex


# -- SeLa (yukimasano/self-label) -----------------------------------------------------------------
# Released AlexNet: a bare state dict of DeepCluster's AlexNet without Sobel (features.<i>,
# classifier.{1,4}) and heads top_layer0..9 (top_layer with one head). Training checkpoints
# (files.save_checkpoint_all) are {'epoch', 'arch', 'state_dict', 'optimizer', 'L'}; main.py also
# saves the whole model with torch.save(model). The old ResNet-50 (models/resnetv1.py) keeps
# torchvision's modules in a Sequential `features` = [conv1, bn1, relu, maxpool, layer1..4, avgpool];
# the 2020 "Aug++" files are {'state_dict': torchvision keys with fc (3000), 'L': pseudo-labels}.
SELA_ALEXNET_LAYOUT = "a bare state dict with features.<i>.*, classifier.{1,4}.*, top_layer<h>.* keys (or {'state_dict', 'L', ...})"
SELA_RESNET_LAYOUT = ("a bare state dict with features.{0,1,4..7}.* and top_layer<h>.* keys (models/resnetv1.py), "
                      "or {'state_dict': torchvision keys, 'L'}")
_SELA_OLD_RESNET = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def read_sela_alexnet(obj: Any, keep_heads: bool) -> Extracted:
    state, others, where = unwrap(obj, ("state_dict",), bare=True)
    state = {k.replace("features.module.", "features."): v for k, v in strip_prefix(state, "module.").items()}
    conv1 = require(state, "features.0.weight", SELA_ALEXNET_LAYOUT)
    require(state, "classifier.1.weight", SELA_ALEXNET_LAYOUT)
    if conv1.dim() != 4 or conv1.shape[1] != 3:
        raise LayoutMismatch(f"features.0.weight has shape {tuple(conv1.shape)}, not an RGB AlexNet conv1")
    ex = Extracted(f"SeLa AlexNet, weights under {where}", {}, dropped=others)
    heads_from(state, r"top_layer(\d*)\.(weight|bias)", keep_heads, "self-labelling heads", ex)
    ex.take(state, _deepcluster_alexnet_key)
    return ex


def read_sela_resnet50(obj: Any, keep_heads: bool) -> Extracted:
    state, others, where = unwrap(obj, ("state_dict",), bare=True)
    state = strip_prefix(state, "module.")
    if "features.4.0.conv1.weight" in state:  # models/resnetv1.py
        state = {k.replace("features.module.", "features."): v for k, v in state.items()}

        def rename(key: str) -> str | None:
            parts = key.split(".", 2)
            return f"{_SELA_OLD_RESNET[parts[1]]}.{parts[2]}" if parts[0] == "features" and parts[1] in _SELA_OLD_RESNET else None

        ex = Extracted(f"SeLa ResNet (old features.<i> keys), weights under {where}", {}, dropped=others)
        ex.take(state, rename)
    elif "layer1.0.conv1.weight" in state:
        ex = Extracted(f"SeLa ResNet (torchvision keys), weights under {where}", {}, dropped=others)
        ex.take(state, lambda k: None if k.startswith("fc.") else k)
    else:
        raise LayoutMismatch(f"neither features.4.0.conv1.weight nor layer1.0.conv1.weight ({SELA_RESNET_LAYOUT})")
    _expect_resnet(ex.state, 50, SELA_RESNET_LAYOUT)
    heads = sorted({k.rsplit(".", 1)[0] for k in ex.dropped_keys if k.startswith(("top_layer", "fc."))})
    if heads:
        ex.dropped["self-labelling heads"] = f"{', '.join(heads)} (the backbone has no classifier)"
    return ex


def read_sela_resnet50_torchvision(obj: Any, keep_heads: bool) -> Extracted:
    ex = read_sela_resnet50(obj, keep_heads)
    if "torchvision keys" not in ex.layout:
        raise LayoutMismatch("old features.<i> keys; the Aug++ release uses torchvision keys")
    return ex


# -- NPID (zhirongw/lemniscate.pytorch) -----------------------------------------------------------
# main.py: save_checkpoint({'epoch', 'arch', 'state_dict', 'lemniscate', 'best_prec1', 'optimizer'})
# with the ResNet in DataParallel (module.<torchvision keys>, fc = Linear(., 128)); 'lemniscate' is
# the pickled NCEAverage module holding the memory bank of every training image's embedding.
NPID_LAYOUT = "{'epoch', 'arch', 'state_dict' (module.<torchvision keys>), 'lemniscate', 'best_prec1', 'optimizer'}"


def _read_npid(obj: Any, depth: int) -> Extracted:
    if isinstance(obj, Mapping) and "arch" in obj and obj["arch"] != f"resnet{depth}":
        raise LayoutMismatch(f"the file's 'arch' is {obj['arch']!r}, not 'resnet{depth}'")
    state, others, where = unwrap(obj, ("state_dict",))
    state = strip_prefix(state, "module.")
    require(state, "fc.weight", NPID_LAYOUT)
    _expect_resnet(state, depth, NPID_LAYOUT)
    if "lemniscate" in others:
        others["lemniscate"] = "memory bank: " + others["lemniscate"]
    ex = Extracted(f"NPID ResNet-{depth}, weights under {where}", state, dropped=others)
    ex.notes.append(f"fc is NPID's {state['fc.weight'].shape[0]}-d embedding (L2-normalise it as NPID did)")
    return ex


def read_npid_resnet18(obj: Any, keep_heads: bool) -> Extracted:
    return _read_npid(obj, 18)


def read_npid_resnet50(obj: Any, keep_heads: bool) -> Extracted:
    return _read_npid(obj, 50)


# -- VISSL (facebookresearch/vissl): PIRL, NPID++, Jigsaw and the rest of its ResNet zoo ----------
# Checkpoints hold classy_state_dict.base_model.model.{trunk, heads}; the ResNe(X)t trunk keeps
# torchvision's modules in a ModuleDict `_feature_blocks` (keys _feature_blocks.conv1.weight, ...),
# with 'base_model.' in front for feature-extractor trunks. Converted files use 'model_state_dict'.
VISSL_LAYOUT = ("{'classy_state_dict': {'base_model': {'model': {'trunk', 'heads'}}}, 'phase_idx', ...} "
                "or {'model_state_dict'}, with _feature_blocks.<torchvision keys>")


def read_vissl_resnet50(obj: Any, keep_heads: bool) -> Extracted:
    state, others, where = vissl_state(obj)
    state = strip_prefix(state, "_feature_blocks.")
    require(state, "layer1.0.conv1.weight", VISSL_LAYOUT)
    _expect_resnet(state, 50, VISSL_LAYOUT)
    ex = Extracted(f"VISSL ResNet-50 trunk under {where}", {}, dropped=others)
    ex.take(state, lambda k: None if k.startswith("fc.") else k)
    return ex


# -- MultiGrain (facebookresearch/multigrain) ----------------------------------------------------
# CheckpointHandler.save: dict(model_state=module.state_dict(), optimizer_state=optimizer.state_dict
# (the bound method itself, pickled with its optimiser), extra={'beta': margin-loss beta}). The model
# is BackBone(features = torchvision ResNet children but pool and fc, pool = Layer('gem', p),
# classifier = fc); p is a buffer, pool.p.
MULTIGRAIN_LAYOUT = "{'model_state' with features.<torchvision keys>, pool.p, classifier.*; 'optimizer_state', 'extra'}"


def read_multigrain_resnet50(obj: Any, keep_heads: bool) -> Extracted:
    state, others, where = unwrap(obj, ("model_state",))
    require(state, "pool.p", MULTIGRAIN_LAYOUT)
    if any(k.startswith("whitening.") for k in state):
        raise WeightsError("this MultiGrain file carries a PCA whitening folded into its classifier "
                           "(whitening.pca.*), which sslzoo's architecture does not model; convert the "
                           "released joint_*.pth weights instead")

    def rename(key: str) -> str | None:
        if key.startswith("features."):
            return key.removeprefix("features.")
        if key.startswith("classifier."):
            return "fc." + key.removeprefix("classifier.")
        return "pool.p" if key == "pool.p" else None

    ex = Extracted(f"MultiGrain ResNet-50 (GeM), weights under {where}", {}, dropped=others)
    ex.take(state, rename)
    _expect_resnet(ex.state, 50, MULTIGRAIN_LAYOUT)
    p = ex.state["pool.p"] = ex.state["pool.p"].reshape(())
    if "extra" in others:
        others["extra"] = "margin-loss beta: " + others["extra"]
    ex.notes.append(f"GeM exponent p = {float(p):g} (MultiGrain raises it at test time, e.g. p*=4 at 500 px)")
    return ex


# -- IIC (xu-ji/IIC) -----------------------------------------------------------------------------
# The cluster scripts save net.module.state_dict() as best_net.pytorch / latest_net.pytorch:
# trunk.<torchvision-style ResNet-34 keys> and heads head.heads.<i>.0.* (ClusterNet5g) or
# head_A.heads.<i>.0.*, head_B.heads.<i>.0.* (ClusterNet5gTwoHead). The Sobel gradients are computed
# in the data loader (grey -> dx, dy; with --include_rgb after the RGB channels), so the file has none.
IIC_LAYOUT = "a bare state dict (net.module.state_dict()) with trunk.conv1.*, trunk.layer<i>.* and head*.heads.* keys"


def read_iic_net5g(obj: Any, keep_heads: bool) -> Extracted:
    state, others, where = unwrap(obj, (), bare=True)
    if "trunk.features.0.weight" in state:
        raise LayoutMismatch("a ClusterNet6c/VGG-style IIC trunk (only ClusterNet5g is supported)")
    conv1 = require(state, "trunk.conv1.weight", IIC_LAYOUT)
    if conv1.shape[1] not in (2, 5):
        raise LayoutMismatch(f"conv1 takes {conv1.shape[1]} channels; IIC's Sobel inputs have 2 (or 5 with RGB)")
    ex = Extracted(f"IIC ClusterNet5g, {where}", {}, dropped=others)
    ex.take(state, lambda k: k.removeprefix("trunk.") if k.startswith("trunk.") else None)
    if resnet_depth(ex.state) != 34:
        raise LayoutMismatch("the trunk is not ClusterNet5g's ResNet-34")
    heads = sorted({k.split(".heads.")[0] + f" ({state[k].shape[0]} clusters)"
                    for k in ex.dropped_keys if k.endswith(".0.weight")})
    if heads:
        ex.dropped["clustering heads"] = ", ".join(heads)
    track = "bn1.running_mean" in ex.state
    ex.arch_kwargs = {"include_rgb": conv1.shape[1] == 5, "track_running_stats": track}
    if not track:
        ex.notes.append("trained without --batchnorm_track: BatchNorm uses each batch's statistics, "
                        "so features depend on the batch")
    sobel = _fixed_iic_sobel()
    ex.state.update(sobel)
    ex.added += list(sobel)
    return ex


def _fixed_iic_sobel() -> dict[str, torch.Tensor]:
    from zoo.backbones.base import LUMA_BT601, Sobel

    return {f"sobel.{k}": v for k, v in Sobel(grey_weights=LUMA_BT601).state_dict().items()}


# -- the table ------------------------------------------------------------------------------------

RELEASES: dict[str, Release] = {r.name: r for r in (
    Release("rotnet_alexnet", "rotnet", "alexnet", ROTNET_ALEXNET_LAYOUT, read_rotnet_alexnet),
    Release("rotnet_nin_cifar10", "rotnet", "nin", ROTNET_NIN_LAYOUT, read_rotnet_nin),
    Release("deepcluster_alexnet", "deepcluster", "alexnet", DEEPCLUSTER_LAYOUT, read_deepcluster_alexnet),
    Release("deepcluster_vgg16", "deepcluster", "vgg16", DEEPCLUSTER_LAYOUT, read_deepcluster_vgg16),
    Release("deepercluster_vgg16", "deepercluster", "vgg16", DEEPERCLUSTER_LAYOUT, read_deepercluster_vgg16),
    Release("sela_alexnet", "sela", "alexnet", SELA_ALEXNET_LAYOUT, read_sela_alexnet),
    Release("sela_resnet50", "sela", "resnet50", SELA_RESNET_LAYOUT, read_sela_resnet50),
    Release("sela_resnet50_augpp", "sela", "resnet50", "{'state_dict': torchvision keys, 'L'}",
            read_sela_resnet50_torchvision),
    Release("npid_resnet18", "npid", "resnet18", NPID_LAYOUT, read_npid_resnet18),
    Release("npid_resnet50", "npid", "resnet50", NPID_LAYOUT, read_npid_resnet50),
    Release("pirl_resnet50", "vissl", "resnet50", VISSL_LAYOUT, read_vissl_resnet50),
    Release("npid_pp_resnet50", "vissl", "resnet50", VISSL_LAYOUT, read_vissl_resnet50),
    Release("jigsaw_resnet50", "vissl", "resnet50", VISSL_LAYOUT, read_vissl_resnet50),
    Release("multigrain_resnet50", "multigrain", "resnet50", MULTIGRAIN_LAYOUT, read_multigrain_resnet50),
    Release("iic_net5g", "iic", "net5g", IIC_LAYOUT, read_iic_net5g),
)}
