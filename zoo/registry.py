"""The one registry: every model sslzoo offers, with what is needed to build, feed and cite it.

The CLI, ``hubconf.py`` and the model cards all read this module; nothing else lists models.
An entry names an architecture from ``zoo.backbones.ARCHITECTURES`` plus its arguments, the input
spec the weights expect, where the weights live and the paper's own numbers.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

from torch import nn

from zoo.backbones import ARCHITECTURES, build_architecture
from zoo.errors import UnknownNameError
from zoo.methods import (BIGAN, BYOL, COLORIZATION, CPC, DEEPCLUSTER, DEEPERCLUSTER, EXEMPLAR, IIC, JIGSAW, MULTIGRAIN,
                          MULTITASK, NPID, PIRL, PROXYNCA, ROTNET, S4L, SELA, SIMCLR, SPLITBRAIN, MethodInfo,
                          Paper, method_info)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COLOUR_SPACES = ("rgb", "bgr", "lab", "grey")


@dataclass(frozen=True)
class InputSpec:
    """How an image must be prepared for the model (see ``zoo.preprocess``).

    The image is resized so its shorter side is ``resize``, centre-cropped to ``size``, converted to
    ``colour_space``, scaled so that white is ``value_range`` (1 for [0, 1], 255 for Caffe models),
    then normalised with ``mean`` and ``std`` (in that scaled range). ``sobel_in_model`` records
    that the network turns RGB into Sobel gradients itself, so the input stays RGB.
    """

    size: int
    resize: int
    colour_space: str = "rgb"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    value_range: float = 1.0
    sobel_in_model: bool = False
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.colour_space not in COLOUR_SPACES:
            raise ValueError(f"colour_space must be one of {COLOUR_SPACES}, got {self.colour_space!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one value per input channel")
        if not all(s > 0 for s in self.std):  # also refuses NaN
            raise ValueError(f"std must be positive, got {list(self.std)}")

    @property
    def channels(self) -> int:
        return 1 if self.colour_space == "grey" else 3


@dataclass(frozen=True)
class PaperResult:
    """A number sslzoo did not measure, labelled with its protocol and where it was read.

    ``source`` names who reported it (the paper, the authors' README, a model zoo that ran its own
    evaluation) and ``url`` is the exact place it was read: a README line pinned to a commit, or
    an arXiv abstract page (the table number then goes in ``protocol``). ``split`` is the split of
    ``dataset`` the number was measured on.
    """

    task: str
    dataset: str
    metric: str
    value: float
    protocol: str
    source: str
    url: str
    split: str = "validation"

    def __post_init__(self):
        if not self.url.startswith("https://"):
            raise ValueError(f"paper result {self.value} ({self.source}) needs the https URL it was read at")


@dataclass(frozen=True)
class Weights:
    """Where the weights live. ``status`` stays "not yet published" until an upload is verified.

    For a converted release, ``origin`` is the authors' repository, ``original_url`` the download
    link they gave and ``original_file`` the file `zoo convert` reads: the download itself when
    the names agree, else the member of the archive it names (``569/best_net.pytorch``: a member
    whose path ends with those components). ``original_size`` (bytes) and ``original_sha256``
    describe the file at ``original_url`` and are recorded only where a public source states
    them; ``zoo fetch`` (``zoo.fetch``) refuses a download that disagrees with either.
    ``release_note`` says what the authors said about the release itself (for instance that it is
    not the model of the paper), with the URL where they said it.
    """

    hub_repo: str
    revision: str = "main"
    status: str = "not yet published"
    origin: str = ""  # the original authors' release (repository or file URL), if any
    original_url: str = ""
    original_file: str = ""
    release_note: str = ""
    original_size: int | None = None
    original_sha256: str | None = None

    def __post_init__(self):
        if self.original_size is not None and (not isinstance(self.original_size, int) or self.original_size <= 0):
            raise ValueError(f"{self.hub_repo}: original_size must be a positive number of bytes")
        if self.original_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.original_sha256):
            raise ValueError(f"{self.hub_repo}: original_sha256 must be 64 lower-case hex digits")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    arch: str
    method: str  # a zoo.methods name
    pretrain_data: str
    input: InputSpec
    weights: Weights
    paper: Paper
    license: str
    description: str
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    embedding_layer: str = ""  # default layer for embeddings; "" means the last feature layer
    recipe: str = ""  # "small" / "paper" for models trained by sslzoo, "" for converted releases
    paper_results: tuple[PaperResult, ...] = ()
    pretext: str = ""  # this model's own training task where it is not the method's usual one (cards)

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"{self.name}: unknown architecture {self.arch!r}")
        method_info(self.method)  # every model's method is described in zoo.methods

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_REGISTRY: dict[str, ModelEntry] = {}

# "random:NAME" asks for the architecture of NAME with random weights, wherever a model is named
# (zoo eval, zoo export, zoo extract); a bare NAME always means its published weights.
RANDOM_PREFIX = "random:"


def register_model(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def list_models(filter: str | Sequence[str] = "", *, pretrained: bool | None = None,
                method: str | None = None) -> list[str]:
    """Registered model names, sorted, as ``timm.list_models`` selects them.

    ``filter``: a shell-style pattern matched against the whole name, case-sensitively
    (``"*resnet50*"``, ``"rotnet_*"``), or a list of patterns of which any may match; ``""`` means
    every model. A name without wildcards matches only itself.

    ``pretrained``: ``None`` keeps every model; ``True`` keeps the models whose weights exist
    somewhere so that ``create_model(name, pretrained=True)`` needs no training -- those whose
    ``zoo list`` weights column (``zoo.hub.weights_origin``) is not ``none``: shipped inside
    sslzoo, in the local hub (``$ZOO_HUB``, so the answer depends on this machine), published on
    the Hugging Face Hub, or an original authors' release (including releases that must be
    downloaded by hand). ``False`` keeps only the models without any weights (random init only).
    Nothing is loaded or downloaded to decide.

    ``method``: only the models of one method (``"rotnet"``); an unknown method gives ``[]``.
    """
    patterns = [filter] if isinstance(filter, str) else list(filter)
    names = sorted(n for n, e in _REGISTRY.items() if method is None or e.method == method)
    if any(patterns):  # [""] and [] both mean no filter, as in timm
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns if p)]
    if pretrained is not None:
        from zoo.hub import weights_origin  # zoo.hub imports this module

        names = [n for n in names if (weights_origin(n) != "none") == pretrained]
    return names


def get_model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError("model", name, _REGISTRY, hint="run `zoo list` for all names") from None


def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build the registry model ``name``; ``kwargs`` override its architecture arguments.

    The returned backbone carries ``model.entry`` (its ``ModelEntry``) and ``model.arch_kwargs``
    (the arguments it was built with), which ``save_pretrained`` and the exporters read.
    ``pretrained=True`` loads the entry's checkpoint (``weights.hub_repo`` at ``weights.revision``)
    the way ``zoo.from_pretrained`` does: local hub first, then the Hugging Face Hub, then (for a
    converted release not yet published) the authors' release, fetched and converted on first
    use; ``kwargs`` may then only repeat the arguments the weights were saved with.

    Both return the model in eval mode, ready for inference, as ``from_pretrained`` and
    huggingface_hub's ``PyTorchModelHubMixin.from_pretrained`` do: the flag picks the weights and
    never also changes how BatchNorm and dropout behave. timm's ``create_model`` and torchvision's
    builders return train mode instead; call ``model.train()`` to train or fine-tune.
    """
    entry = get_model_entry(name)
    if pretrained:
        from zoo.hub import load_entry_weights

        return load_entry_weights(name, **kwargs)
    arch_kwargs = {**entry.arch_kwargs, **kwargs}
    model = build_architecture(entry.arch, **arch_kwargs)
    model.entry = entry
    model.arch_kwargs = arch_kwargs
    return model.eval()


# --------------------------------------------------------------------------------------------
# The entries. Paper numbers are the authors' own, labelled with protocol and source; our own
# numbers never go here: they come from `zoo eval` results and land in the model cards.
# --------------------------------------------------------------------------------------------

_IN1K_224 = InputSpec(size=224, resize=256)
_FMNIST_32 = InputSpec(size=32, resize=32, colour_space="grey", mean=(0.2860,), std=(0.3530,))
_CIFAR_ROTNET = InputSpec(size=32, resize=32, mean=(125.3 / 255, 123.0 / 255, 113.9 / 255),
                          std=(63.0 / 255, 62.1 / 255, 66.7 / 255))

# Where the numbers were read: README lines pinned to the commit that was read, abstract pages.
_VISSL_MODEL_ZOO = ("https://github.com/facebookresearch/vissl/blob/09270ed25a6c2cf71263d955b64cbe076d34ac45/"
                    "MODEL_ZOO.md")
_SELA_README = "https://github.com/yukimasano/self-label/blob/3891e376a82d1e4ac6de6d39505b692b8885c971/README.md"
_NPID_README = ("https://github.com/zhirongw/lemniscate.pytorch/blob/f7cfe298357cb2b169cd59eb540aca24bed1f9b8/"
                "README.md")
# VISSL's ImageNet-1k linear benchmark: one top-1 per model. For AlexNets it trains a BN + linear
# probe on each of conv1..conv5 average-pooled to about 9,000 dims (28 epochs); the table does not
# say which layer its single number comes from.
_VISSL_ALEXNET = ("VISSL's ImageNet-1k linear benchmark run on this released file: linear probes on "
                  "conv1..conv5 pooled to ~9k dims; VISSL's table gives one top-1 and does not name the layer")
_VISSL_RESNET = "VISSL's ImageNet-1k linear benchmark: linear classifier on frozen res5 (pooled) features"


def _in1k(value: float, protocol: str, source: str, url: str, metric: str = "top-1") -> PaperResult:
    """A top-1 on the ImageNet-1k validation set."""
    return PaperResult("image-classification", "ImageNet-1k", metric, value, protocol, source, url)


_DATA_TAGS = {"ImageNet-1k": "in1k", "YFCC100M": "yfcc100m", "CIFAR-10": "cifar10", "Fashion-MNIST": "fmnist",
              "STL-10": "stl10"}


def _hub_repo(name: str, data: str) -> str:
    """``sslzoo/<name>-<data tag>`` with dashes, e.g. sslzoo/rotnet-alexnet-in1k."""
    repo = name.replace("_", "-")
    tag = _DATA_TAGS.get(data, "")
    return f"sslzoo/{repo}" if not tag or repo.endswith(tag) else f"sslzoo/{repo}-{tag}"


def _release(name: str, arch: str, method: MethodInfo, origin: str, license: str,
             description: str, input: InputSpec = _IN1K_224, data: str = "ImageNet-1k", paper: Paper | None = None,
             results: tuple[PaperResult, ...] = (), url: str = "", file: str = "", note: str = "",
             size: int | None = None, sha256: str | None = None,
             embedding_layer: str = "", **arch_kwargs: Any) -> ModelEntry:
    """An original authors' release, converted by `zoo convert` and published as sslzoo/<name>.

    ``paper`` is the method's unless the release comes with another (NPID++ is the PIRL paper's).
    ``url`` is the authors' download link, ``file`` the file in it that `zoo convert` reads,
    ``note`` what the authors say about this release (``Weights.release_note``); ``size`` and
    ``sha256`` those of the download, only where a public source states them.
    """
    return register_model(ModelEntry(
        name=name, arch=arch, method=method.name, pretrain_data=data, input=input,
        weights=Weights(hub_repo=_hub_repo(name, data), origin=origin, original_url=url, original_file=file,
                        release_note=note, original_size=size, original_sha256=sha256),
        paper=paper or method.paper, license=license, description=description, arch_kwargs=arch_kwargs,
        paper_results=results, embedding_layer=embedding_layer,
    ))


# Download links as the authors' READMEs give them (checked against each repository's latest
# README): FeatureLearningRotNet README (GitHub release v1 since 2023-10; mega.nz before),
# deepcluster README / download_model.sh (dl.fbaipublicfiles.com; s3.amazonaws.com before),
# DeeperCluster README, self-label README and scripts/download_models.sh, lemniscate.pytorch
# README (frontiers.blob.core.windows.net since 2020-08; zhirongw.westus2.cloudapp.azure.com
# before), VISSL MODEL_ZOO.md and projects/PIRL/README.md, multigrain README, IIC
# examples/trained_models.txt, simclr README, deepmind-research byol/README.md. No README states
# a file's exact size or checksum, so no entry records original_size or original_sha256 yet.
_VISSL_ZOO = "https://dl.fbaipublicfiles.com/vissl/model_zoo"
_SELA_ASSETS = "http://www.robots.ox.ac.uk/~vgg/research/self-label/asset"
_ROTNET_RELEASES = "https://github.com/gidariss/FeatureLearningRotNet/releases/download/v1"
_NPID_FILES = "https://frontiers.blob.core.windows.net/pretraining/checkpoints/pil_pretrained_models/lemniscate"


_release("rotnet_alexnet", "alexnet_rotnet", ROTNET,
         "https://github.com/gidariss/FeatureLearningRotNet", "mit",
         "AlexNet trained to predict which of 4 rotations was applied to an ImageNet image.",
         url=f"{_ROTNET_RELEASES}/ImageNet_RotNet_AlexNet.tar.gz", file="model_net_epoch50",
         note="The authors' README says this released model is not the one used in the paper and may give "
              "(slightly) different results; on ImageNet and Places205 classification it did better than the "
              "paper's model (https://github.com/gidariss/FeatureLearningRotNet/blob/"
              "edafaba6561003292017d0a44272414356c959ff/README.md#L52).",
         results=(
             PaperResult("object-detection", "PASCAL VOC 2007", "mAP", 54.4,
                         "detection with the paper's RotNet AlexNet as the pretrained backbone (paper abstract); "
                         "the paper's model, not this released one", "RotNet paper, abstract",
                         "https://arxiv.org/abs/1803.07728", split="test"),
             _in1k(39.51, _VISSL_ALEXNET, "VISSL MODEL_ZOO.md", f"{_VISSL_MODEL_ZOO}#L117"),
         ))
_release("rotnet_nin_cifar10", "nin", ROTNET,
         "https://github.com/gidariss/FeatureLearningRotNet", "mit",
         "RotNet's 4-block Network-in-Network trained on CIFAR-10 rotations, the authors' release (their "
         "README notes it is not exactly the model of the paper).",
         input=_CIFAR_ROTNET, data="CIFAR-10", url=f"{_ROTNET_RELEASES}/CIFAR10_RotNet_NIN4blocks.tar.gz",
         file="model_net_epoch200", num_blocks=4, pool_after_block3=False,
         results=(PaperResult("image-classification", "CIFAR-10", "top-1", 89.06,
                              "the paper's 4-block NIN, not exactly this release: a classifier of 3 fully connected "
                              "layers on frozen block-2 features (the paper's Table 1); quoted by a user beside a "
                              "reproduction with the authors' code (88.89); the paper's table was not read here",
                              "RotNet paper, as quoted",
                              "https://github.com/gidariss/FeatureLearningRotNet/issues/6", split="test"),))
_release("deepcluster_alexnet", "alexnet_deepcluster", DEEPCLUSTER,
         "https://github.com/facebookresearch/deepcluster", "cc-by-nc-4.0",
         "AlexNet with a fixed Sobel front end, trained on k-means pseudo-labels of its own features.",
         input=dataclasses.replace(_IN1K_224, sobel_in_model=True),
         url="https://dl.fbaipublicfiles.com/deepcluster/alexnet/checkpoint.pth.tar", file="checkpoint.pth.tar",
         results=(_in1k(37.88, _VISSL_ALEXNET, "VISSL MODEL_ZOO.md", f"{_VISSL_MODEL_ZOO}#L127"),))
_release("deepcluster_vgg16", "vgg16_bn", DEEPCLUSTER,
         "https://github.com/facebookresearch/deepcluster", "cc-by-nc-4.0",
         "VGG-16-BN with a fixed Sobel front end, trained with DeepCluster.",
         input=dataclasses.replace(_IN1K_224, sobel_in_model=True),
         url="https://dl.fbaipublicfiles.com/deepcluster/vgg16/checkpoint.pth.tar", file="checkpoint.pth.tar", sobel=True)
_release("deepercluster_vgg16", "vgg16_bn", DEEPERCLUSTER,
         "https://github.com/facebookresearch/DeeperCluster", "cc-by-nc-4.0",
         "VGG-16-BN with Sobel, trained on rotation x cluster targets of non-curated images.",
         input=dataclasses.replace(_IN1K_224, sobel_in_model=True), data="YFCC100M",
         url="https://dl.fbaipublicfiles.com/deepcluster/ours/ours.pth", file="ours.pth",
         results=(_in1k(74.9, "not a linear probe: a VGG-16 initialised with these weights and then trained with "
                              "ImageNet labels (the paper's Table 2; +0.8 over the same network from scratch)",
                        "DeeperCluster paper, abstract", "https://arxiv.org/abs/1905.01278"),),
         sobel=True, input_padding=2, sobel_padding=0)
_release("sela_alexnet", "alexnet_sela", SELA,
         "https://github.com/yukimasano/self-label", "mit",
         "AlexNet trained on Sinkhorn-Knopp equipartitioned pseudo-labels (10 heads).",
         url=f"{_SELA_ASSETS}/pretrained.zip", file="alexnet-10x3k-wRot.pth",
         note="This file is the AlexNet with 10 heads of 3,000 clusters retrained with rotation prediction; "
              "the authors' README gives no number for it.",
         results=(_in1k(43.8, "linear probe ('LP Acc') of the README's 'AlexNet 10k' row, which names no rotation "
                              "retraining: not a number for this 10x3k-with-rotation file", "self-label README",
                        f"{_SELA_README}#L31"),))
_release("sela_resnet50", "resnet50", SELA,
         "https://github.com/yukimasano/self-label", "mit",
         "ResNet-50 trained with SeLa (10 heads of 3,000 clusters).",
         url=f"{_SELA_ASSETS}/pretrained.zip", file="resnet-10x3k.pth",
         results=(_in1k(61.5, "linear probe ('LP Acc') of the README's 'R50 10x3k' model", "self-label README",
                        f"{_SELA_README}#L32"),), num_classes=None)
_release("sela_resnet50_augpp", "resnet50", SELA,
         "https://github.com/yukimasano/self-label", "mit",
         "ResNet-50 trained with SeLa (10x3k heads) and SimCLR-style augmentations, 280 epochs (Aug++).",
         url=f"{_SELA_ASSETS}/new_models/resnet50-10x3k_pp.pth", file="resnet50-10x3k_pp.pth",
         results=(_in1k(68.8, "linear probe ('LP Acc', single crop) of this file, the README's 'Aug++ R50 10x3k'",
                        "self-label README", f"{_SELA_README}#L40"),),
         num_classes=None)
_release("npid_resnet50", "resnet50", NPID,
         "https://github.com/zhirongw/lemniscate.pytorch", "unknown",
         "ResNet-50 with a 128-d L2-normalised embedding trained by instance discrimination.",
         url=f"{_NPID_FILES}/lemniscate_resnet50.pth", file="lemniscate_resnet50.pth",
         results=(_in1k(46.8, "top-1 nearest-neighbour accuracy on the 128-d embedding of the original ResNet 50 "
                              "release (4,096 negatives, NCE); the code's test mode is a weighted kNN, k=200",
                        "lemniscate README", f"{_NPID_README}#L18"),
                  _in1k(54.99, f"{_VISSL_RESNET}, on VISSL's conversion of the original ResNet 50 release "
                               "('RN50 official oldies')", "VISSL MODEL_ZOO.md", f"{_VISSL_MODEL_ZOO}#L143")),
         num_classes=128)
_release("npid_resnet18", "resnet18", NPID,
         "https://github.com/zhirongw/lemniscate.pytorch", "unknown",
         "ResNet-18 with a 128-d L2-normalised embedding trained by instance discrimination.",
         url=f"{_NPID_FILES}/lemniscate_resnet18.pth", file="lemniscate_resnet18.pth",
         results=(_in1k(41.0, "top-1 nearest-neighbour accuracy on the 128-d embedding of the original ResNet 18 "
                              "release; the code's test mode is a weighted kNN, k=200", "lemniscate README",
                        f"{_NPID_README}#L17"),),
         num_classes=128)
_release("pirl_resnet50", "resnet50", PIRL,
         "https://github.com/facebookresearch/vissl", "mit",
         "ResNet-50 trained with PIRL (jigsaw invariance, memory bank), VISSL's release.",
         url=f"{_VISSL_ZOO}/pirl/r50_200ep/model_final_checkpoint_phase199.torch",
         file="model_final_checkpoint_phase199.torch",
         results=(_in1k(62.9, "single-crop linear evaluation of this checkpoint (ResNet-50, 200 epochs, linear head)",
                        "VISSL projects/PIRL/README.md",
                        "https://github.com/facebookresearch/vissl/blob/09270ed25a6c2cf71263d955b64cbe076d34ac45/"
                        "projects/PIRL/README.md#L37"),), num_classes=None)
_release("npid_pp_resnet50", "resnet50", NPID,
         "https://github.com/facebookresearch/vissl", "mit",
         "ResNet-50 trained with NPID++ (PIRL paper's NPID: 32k negatives, 800 epochs), VISSL's release.",
         paper=PIRL.paper, url=f"{_VISSL_ZOO}/npid_pp/4node_800ep_32kneg_cosine_resnet_23_07_20.75432662/"
             "model_final_checkpoint_phase799.torch",
         file="model_final_checkpoint_phase799.torch",
         results=(_in1k(56.68, f"{_VISSL_RESNET}, this checkpoint", "VISSL MODEL_ZOO.md",
                        f"{_VISSL_MODEL_ZOO}#L152"),), num_classes=None)
_release("jigsaw_resnet50", "resnet50", JIGSAW,
         "https://github.com/facebookresearch/vissl", "mit",
         "ResNet-50 trained to solve jigsaw puzzles (100 permutations, 105 epochs), VISSL's release.",
         url=f"{_VISSL_ZOO}/jigsaw_rn50_in1k_ep105_perm2k_jigsaw_8gpu_resnet_17_07_20.db174a43/"
             "model_final_checkpoint_phase104.torch",
         file="model_final_checkpoint_phase104.torch",
         results=(_in1k(48.57, f"{_VISSL_RESNET}, this checkpoint", "VISSL MODEL_ZOO.md",
                        f"{_VISSL_MODEL_ZOO}#L87"),), num_classes=None)
_release("simclr_resnet50", "resnet50", SIMCLR,
         "https://github.com/google-research/simclr", "apache-2.0",
         "ResNet-50 (1x) trained with SimCLR; takes [0, 1] RGB with no mean/std normalisation.",
         input=InputSpec(size=224, resize=256, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
         url="https://storage.cloud.google.com/simclr-gcs/checkpoints/ResNet50_1x.zip", file="ResNet50_1x.zip",
         results=(_in1k(69.1, "ImageNet top-1 of this checkpoint's linear classifier on the frozen ResNet-50 (1x)",
                        "SimCLR README",
                        "https://github.com/google-research/simclr/blob/383d4143fd8cf7879ae10f1046a9baeb753ff438/"
                        "README.md#L54"),), num_classes=None)
_release("byol_resnet50", "resnet50", BYOL,
         "https://github.com/deepmind/deepmind-research/tree/master/byol", "apache-2.0",
         "ResNet-50 trained with BYOL (online/target networks, no negatives).",
         url="https://storage.googleapis.com/deepmind-byol/checkpoints/pretrain_res50x1.pkl",
         file="pretrain_res50x1.pkl",
         results=(_in1k(74.3, "linear evaluation of the paper's ResNet-50", "BYOL paper, abstract",
                        "https://arxiv.org/abs/2006.07733"),
                  _in1k(74.4, "linear evaluation of this checkpoint: the README says it 'should evaluate to ~74.4%'",
                        "BYOL README",
                        "https://github.com/google-deepmind/deepmind-research/blob/"
                        "2314aa74d53e1d75d1507a1496fede4a284bbb5b/byol/README.md#pretraining")),
         num_classes=None)
_release("multigrain_resnet50", "resnet50_gem", MULTIGRAIN,
         "https://github.com/facebookresearch/multigrain", "cc-by-nc-4.0",
         "ResNet-50 with GeM pooling (p=3) trained for classification and instance retrieval jointly "
         "(lambda=0.5, repeated augmentations); the embedding is the GeM-pooled vector, layer gem.",
         url="https://dl.fbaipublicfiles.com/multigrain/multigrain_models/joint_3B_0.5.pth", file="joint_3B_0.5.pth",
         embedding_layer="gem",
         results=(_in1k(77.4, "supervised classification by this checkpoint's own classifier at 224 px (GeM p=3)",
                        "MultiGrain README",
                        "https://github.com/facebookresearch/multigrain/blob/172bb2a2ef8a7f69f02fd6a4eb20c9c3d5d7a909/"
                        "README.md#L45"),
                  _in1k(78.6, "supervised classification by this checkpoint at 500 px with GeM exponent p*=4 (the "
                              "paper's Table 2, which the README says this file reproduces)", "MultiGrain README",
                        "https://github.com/facebookresearch/multigrain/blob/172bb2a2ef8a7f69f02fd6a4eb20c9c3d5d7a909/"
                        "README.md#L89")))
_release("iic_net5g", "iic_net5g", IIC,
         "https://github.com/xu-ji/IIC", "mit",
         "IIC's ClusterNet5g (ResNet-34 trunk) trained on STL-10 by invariant information clustering "
         "(model 569: two heads, 70 and 10 clusters, 5 sub-heads each); Sobel gradients inside the model.",
         input=InputSpec(size=64, resize=96, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), sobel_in_model=True),
         data="STL-10", url="https://www.robots.ox.ac.uk/~xuji/models/models.tar.gz", file="569/best_net.pytorch",
         results=(PaperResult("image-classification", "STL-10", "accuracy (Hungarian)", 59.6,
                              "unsupervised clustering: the 10-cluster head's lowest-loss sub-head, clusters matched "
                              "to classes by the Hungarian method, on the 13,000 labelled images (the paper's Table 1, "
                              "shown as an image in the README; model 569 is Table 1's STL10 model)",
                              "IIC README (paper's Table 1)",
                              "https://github.com/xu-ji/IIC/blob/b7602b743552c28a4af3de238bf2539a3af0338e/README.md#L9",
                              split="train+test"),))


def _ours(name: str, arch: str, method: MethodInfo, description: str,
          input: InputSpec = _FMNIST_32, data: str = "Fashion-MNIST", recipe: str = "small",
          results: tuple[PaperResult, ...] = (), pretext: str = "", **arch_kwargs: Any) -> ModelEntry:
    """A model trained by sslzoo's own recipe: ``small`` (S3L: small resolution, network and data),
    or ``paper`` where the authors released no weights (``results`` are then the paper's numbers
    for its own model)."""
    return register_model(ModelEntry(
        name=name, arch=arch, method=method.name, pretrain_data=data, input=input,
        weights=Weights(hub_repo=_hub_repo(name, data)),
        paper=method.paper, license="apache-2.0", description=description, arch_kwargs=arch_kwargs,
        recipe=recipe, paper_results=results, pretext=pretext,
    ))


_ours("rotnet_nin_fmnist", "nin", ROTNET,
      "RotNet's 4-block NIN (width 32) trained on Fashion-MNIST rotations by sslzoo's small recipe.",
      num_blocks=4, in_channels=1, width=32)
# The small recipes share one laptop-scale ResNet: 4 stages of 16-128 channels, one block each.
_SMALL_RESNET = dict(in_channels=1, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1))
_ours("simclr_resnet_small_fmnist", "resnet_small", SIMCLR,
      "A small 32x32 ResNet trained on Fashion-MNIST with SimCLR by sslzoo's small recipe.", **_SMALL_RESNET)
_ours("npid_resnet_small_fmnist", "resnet_small", NPID,
      "A small 32x32 ResNet trained on Fashion-MNIST by instance discrimination (NPID, sslzoo's small recipe).",
      **_SMALL_RESNET)
_ours("byol_resnet_small_fmnist", "resnet_small", BYOL,
      "A small 32x32 ResNet trained on Fashion-MNIST with BYOL by sslzoo's small recipe.", **_SMALL_RESNET)
_ours("multigrain_resnet_small_fmnist", "resnet_small", MULTIGRAIN,
      "A small 32x32 ResNet trained on Fashion-MNIST classes and instances with MultiGrain's joint loss "
      "(sslzoo's small recipe); use it with GeM pooling.", **_SMALL_RESNET)
_ours("pirl_resnet_small_fmnist", "resnet_small", PIRL,
      "A small 32x32 ResNet trained on Fashion-MNIST with PIRL (jigsaw invariance, memory bank) by sslzoo's "
      "small recipe.", **_SMALL_RESNET)
_ours("proxynca_resnet_small_fmnist", "resnet_small", PROXYNCA,
      "A small 32x32 ResNet trained on Fashion-MNIST classes with Proxy-NCA (one learned proxy per class) by "
      "sslzoo's small recipe.", **_SMALL_RESNET)
_ours("proxynca_resnet50", "resnet50", PROXYNCA,
      "ResNet-50 trained for zero-shot retrieval on CUB-200-2011 with Proxy-NCA by sslzoo's paper recipe "
      "(the authors released no weights).", input=_IN1K_224, data="CUB-200-2011", recipe="paper", num_classes=None,
      results=tuple(
          PaperResult("image-retrieval", "CUB-200-2011", metric, value,
                      "zero-shot retrieval on CUB-200-2011's held-out classes with the paper's Inception-BN, not a "
                      "ResNet-50; quoted beside a reimplementation in the dichotomies/proxy-nca README ('Google's "
                      "Implementation' column); the paper's own table was not read", "Proxy-NCA paper, as quoted",
                      f"https://github.com/dichotomies/proxy-nca/blob/ad9880a497a40cf588f30206f560676694694530/"
                      f"README.md#L{line}", split="test")
          for metric, value, line in (("recall@1", 49.21, 86), ("NMI", 59.53, 90))))
_ours("cpc_resnet_small_fmnist", "resnet_small", CPC,
      "A small ResNet trained as CPC v2's patch encoder on 8-pixel patches of Fashion-MNIST by sslzoo's small "
      "recipe.", **_SMALL_RESNET)
_ours("cpc_resnet50", "resnet50", CPC,
      "ResNet-50 trained as CPC v2's patch encoder on ImageNet by sslzoo's paper recipe (the authors' "
      "ResNet-161 release is not converted).", input=_IN1K_224, data="ImageNet-1k", recipe="paper", num_classes=None,
      results=(_in1k(63.8, "linear classification on CPC v2's ResNet-50 features, as transcribed from the paper by "
                           "Papers with Code (the paper's table was not read here)", "CPC v2 paper, via Papers with Code",
                     "https://paperswithcode.com/paper/data-efficient-image-recognition-with"),))
_ours("deepcluster_resnet_small_fmnist", "resnet_small", DEEPCLUSTER,
      "A small 32x32 ResNet trained on Fashion-MNIST with DeepCluster by sslzoo's small recipe.", **_SMALL_RESNET)
_ours("sela_resnet_small_fmnist", "resnet_small", SELA,
      "A small 32x32 ResNet trained on Fashion-MNIST with SeLa by sslzoo's small recipe.", **_SMALL_RESNET)
_ours("iic_resnet_small_fmnist", "resnet_small", IIC,
      "A small 32x32 ResNet trained on Fashion-MNIST with IIC by sslzoo's small recipe.", **_SMALL_RESNET)
_ours("deepercluster_resnet_small_fmnist", "resnet_small", DEEPERCLUSTER,
      "A small 32x32 ResNet trained on Fashion-MNIST with DeeperCluster by sslzoo's small recipe.", **_SMALL_RESNET)
_ours("multitask_resnet_small_fmnist", "resnet_small", MULTITASK,
      "A small 32x32 ResNet trained on Fashion-MNIST with three pretext tasks at once (relative position, "
      "rotation, exemplar; Doersch & Zisserman's multi-task setting) by sslzoo's small recipe.", **_SMALL_RESNET)
_ours("s4l_resnet_small_fmnist", "resnet_small", S4L,
      "A small 32x32 ResNet trained on Fashion-MNIST with S4L-Rotation (10 % of the labels plus rotation "
      "prediction on every image) by sslzoo's small recipe.", **_SMALL_RESNET)
_ours("jigsaw_resnet_small_fmnist", "resnet_small", JIGSAW,
      "A small 32x32 ResNet trained on Fashion-MNIST to solve 3x3 jigsaw puzzles of 9-pixel tiles (64 "
      "permutations) by sslzoo's small recipe.", **_SMALL_RESNET)
_ours("exemplar_resnet_small_fmnist", "resnet_small", EXEMPLAR,
      "A small 32x32 ResNet trained on Fashion-MNIST as an Exemplar-CNN (one surrogate class per seed image) "
      "by sslzoo's small recipe.", **_SMALL_RESNET)
_ours("bigan_resnet_small_fmnist", "resnet_small", BIGAN,
      "A small 32x32 ResNet trained on Fashion-MNIST as BiGAN's encoder (against a generator and a joint "
      "discriminator) by sslzoo's small recipe.", **_SMALL_RESNET)
# Colour prediction cannot be learned from grey Fashion-MNIST: these small models train on random
# 32x32 crops of the colour photographs shipped in installed packages (--data photo-crops) and are
# evaluated, like the others, on Fashion-MNIST. Colorization's network sees the grey (luma) image;
# split-brain's sees Lab, scaled by 50 per channel (L to [-1, 1]), so a grey image reaches its ab half
# as a = b = 0.
_LAB_32 = InputSpec(size=32, resize=32, colour_space="lab", mean=(50.0, 0.0, 0.0), std=(50.0, 50.0, 50.0))
_ours("colorization_resnet_small_photos", "resnet_small", COLORIZATION,
      "A small 32x32 ResNet on grey input trained to predict the colours of crops of the shipped colour "
      "photographs (Colorization, sslzoo's small recipe).", data="shipped photos (random 32x32 crops)",
      **_SMALL_RESNET)
_ours("splitbrain_resnet_small_photos", "splitbrain", SPLITBRAIN,
      "Two small 32x32 ResNets of half width, L -> ab and ab -> L, trained on crops of the shipped colour "
      "photographs (Split-brain, sslzoo's small recipe); features concatenated.", input=_LAB_32,
      data="shipped photos (random 32x32 crops)", half="resnet_small", widths=(8, 16, 32, 64), blocks=(1, 1, 1, 1))
# sslzoo's colour-photo model, for copy detection and retrieval of real photos: the small ResNet with
# RGB input at 64 px, trained by SimCLR to match crops of the training photos only
# (zoo.photos.TRAINING_PHOTOS; the held-out ones are what it is measured on) to copies of themselves
# distorted by the copy-detection chain, after Asano et al.'s finding that a few images train early
# layers well (arXiv 1904.13132).
_PHOTOS_64 = InputSpec(size=64, resize=64)
_ours("simclr_resnet_small_photos", "resnet_small", SIMCLR,
      "A small 64x64 RGB ResNet trained with SimCLR for copy detection: crops of the shipped training photos "
      "(never the held-out ones) against strongly distorted copies of themselves (sslzoo's photos recipe).",
      input=_PHOTOS_64, data="shipped training photos (single-image-paper crops at 64 px and their distorted copies)",
      recipe="photos", in_channels=3, widths=(8, 16, 32, 64), blocks=(1, 1, 1, 1),
      pretext="SimCLR's NT-Xent loss, with copy detection's views: each crop of a training photo is paired with a "
              "copy of itself made by the copy-detection chain of `zoo.retrieval` (a crop, rotation or flip; a colour "
              "change or greyscale; blur, noise or heavy JPEG), never with a second crop, so that parts of one photo "
              "stay apart. The crop must pick its own copy out of the batch's other crops and copies. The "
              "held-out benchmark's queries come from the same chain, on photos the model never saw: its numbers "
              "measure these distortions, not others.")
_ours("colorization_resnet50", "resnet50", COLORIZATION,
      "ResNet-50 on grey input trained to colourise ImageNet by sslzoo's paper recipe (the authors released "
      "Caffe VGG/AlexNet models, which are not converted).",
      input=InputSpec(size=224, resize=256, colour_space="grey", mean=(0.449,), std=(0.226,)),
      data="ImageNet-1k", recipe="paper", num_classes=None, in_channels=1)
_ours("splitbrain_resnet50", "splitbrain", SPLITBRAIN,
      "Two ResNet-50s, L -> ab and ab -> L, trained on ImageNet by sslzoo's split-brain paper recipe (the "
      "authors released Caffe AlexNets, which are not converted).",
      input=InputSpec(size=224, resize=256, colour_space="lab", mean=(50.0, 0.0, 0.0), std=(50.0, 50.0, 50.0)),
      data="ImageNet-1k", recipe="paper", half="resnet50", num_classes=None)


# --------------------------------------------------------------------------------------------
# One reported ImageNet-1k linear-probe top-1 per trainable method, for ranking the methods side by
# side (README). ResNet-50 wherever a ResNet-50 number was found; each protocol names the
# architecture. Where there is no such number the result is None and the reason says why.
# --------------------------------------------------------------------------------------------

class LinearReference(NamedTuple):
    result: PaperResult | None
    reason: str = ""  # why there is no result


def _reference(entry_name: str, value: float, protocol: str) -> LinearReference:
    """Registry entry ``entry_name``'s paper result ``value`` (one number, written in one place),
    with the protocol worded for the comparison across methods."""
    result = next(r for r in get_model_entry(entry_name).paper_results if r.value == value)
    return LinearReference(dataclasses.replace(result, protocol=protocol))


IMAGENET_LINEAR_REFERENCE: dict[str, LinearReference] = {
    "rotnet": LinearReference(_in1k(
        48.2, "ResNet-50 trained with RotNet by VISSL (105 epochs), linear classifier on frozen res5 features; the "
              "authors' own ImageNet models are AlexNets", "VISSL MODEL_ZOO.md", f"{_VISSL_MODEL_ZOO}#L118")),
    "deepcluster": _reference("deepcluster_alexnet", 37.88, "AlexNet, the authors' release (they release AlexNet and "
                                                            f"VGG-16, no ResNet-50): {_VISSL_ALEXNET}"),
    "sela": _reference("sela_resnet50", 61.5, "ResNet-50, 10 heads of 3,000 clusters, linear probe ('LP Acc')"),
    "iic": LinearReference(None, "IIC reports clustering accuracy on STL-10, CIFAR and MNIST, no ImageNet linear "
                                 "probe."),
    "deepercluster": LinearReference(None, "DeeperCluster's ImageNet linear probes (a VGG-16 trained on YFCC100M) are "
                                           "in the paper's tables, which were not read here; the abstract's 74.9 is "
                                           "supervised fine-tuning."),
    "simclr": _reference("simclr_resnet50", 69.1, "ResNet-50 (1x), linear classifier on the frozen network "
                                                  "(released checkpoint)"),
    "npid": _reference("npid_resnet50", 54.99, f"ResNet-50, original release (4,096 negatives, NCE): {_VISSL_RESNET}"),
    "byol": _reference("byol_resnet50", 74.3, "ResNet-50, linear evaluation"),
    "multigrain": LinearReference(None, "MultiGrain is trained with ImageNet labels: its 77.4 is supervised accuracy, "
                                        "not a linear probe of self-supervised features."),
    "pirl": _reference("pirl_resnet50", 62.9, "ResNet-50, 200 epochs, single-crop linear evaluation (released "
                                              "checkpoint)"),
    "proxynca": LinearReference(None, "Proxy-NCA is supervised metric learning evaluated by retrieval on CUB, Cars "
                                      "and SOP, with no ImageNet linear probe."),
    "cpc": _reference("cpc_resnet50", 63.8, "ResNet-50, linear classification, as transcribed from the paper by Papers "
                                            "with Code (the paper's table was not read here)"),
    "multitask": LinearReference(None, "Doersch & Zisserman's ImageNet numbers are for a ResNet-101 v2 in tables "
                                       "that were not read here; no ResNet-50 or AlexNet linear probe to cite."),
    "s4l": LinearReference(None, "S4L is semi-supervised: it reports its own classifier's accuracy with 10 % and "
                                 "1 % of ImageNet's labels, not a linear probe of frozen features."),
    "jigsaw": _reference("jigsaw_resnet50", 48.57, "ResNet-50 trained by VISSL on jigsaw puzzles (the paper's "
                                                   "CFN is an AlexNet), linear probe on frozen features"),
    "exemplar": LinearReference(None, "Exemplar-CNN reports classification on STL-10, CIFAR-10 and Caltech-101 with "
                                      "its own small networks, no ImageNet linear probe."),
    "bigan": LinearReference(None, "BiGAN's ImageNet probes are of an AlexNet, layer by layer, in the paper's tables, "
                                   "which were not read here; no ResNet-50 number."),
    # The split-brain paper's table of linear classifiers on each frozen AlexNet conv layer (Zhang protocol),
    # which lists colorization beside split-brain; transcribed in sslzoo's design notes, best layer taken.
    "colorization": LinearReference(_in1k(
        32.6, "AlexNet (the authors' model), linear classifier on frozen conv4 (best of conv1-conv5), as listed in "
              "the split-brain paper's ImageNet linear-classification table; transcribed, not re-read here",
        "Split-Brain Autoencoders paper (Zhang et al. 2017)", "https://arxiv.org/abs/1611.09842")),
    "splitbrain": LinearReference(_in1k(
        35.4, "AlexNet (the authors' model), linear classifier on frozen conv3 (best of conv1-conv5), the paper's "
              "ImageNet linear-classification table; transcribed, not re-read here",
        "Split-Brain Autoencoders paper (Zhang et al. 2017)", "https://arxiv.org/abs/1611.09842")),
}
