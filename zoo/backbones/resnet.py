"""ResNets whose state-dict keys equal torchvision's, and a small ResNet for 32x32 inputs.

``ResNet`` subclasses torchvision's class, so torchvision, NPID, SeLa and MultiGrain weights load
key for key. ``num_classes=None`` drops the ``fc`` layer (a pure feature extractor); otherwise
``fc`` is kept (torchvision's 1000 classes, NPID's 128-d embedding) and is not a feature layer.
Both take ``gather_excite="theta-minus" | "theta"`` and ``ge_extent`` to put a Gather-Excite
operator in every residual block (``zoo.backbones.gather_excite``); off by default.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from zoo.backbones.base import Backbone
from zoo.backbones.gather_excite import GLOBAL_EXTENT, GEBasicBlock, GEBottleneck, check_gather_excite
from zoo.pooling import GeM

_DEPTHS = {
    18: (tv_resnet.BasicBlock, (2, 2, 2, 2)),
    34: (tv_resnet.BasicBlock, (3, 4, 6, 3)),
    50: (tv_resnet.Bottleneck, (3, 4, 6, 3)),
    101: (tv_resnet.Bottleneck, (3, 4, 23, 3)),
}


def with_gather_excite(block: type, gather_excite: str | None, ge_extent: int):
    """``block`` (torchvision's BasicBlock or Bottleneck) itself when ``gather_excite`` is None,
    else its Gather-Excite version with these settings, callable as torchvision calls a block."""
    check_gather_excite(gather_excite, ge_extent)
    if gather_excite is None:
        return block
    ge_block = GEBottleneck if issubclass(block, tv_resnet.Bottleneck) else GEBasicBlock
    make = functools.partial(ge_block, gather_excite=gather_excite, ge_extent=ge_extent)
    make.expansion = ge_block.expansion  # torchvision's ResNet reads it off the block class
    return make


def add_basic_block_stages(module: nn.Module, cin: int, widths: Sequence[int], blocks: Sequence[int],
                           norm=nn.BatchNorm2d, block=tv_resnet.BasicBlock,
                           inner_widths: Sequence[Sequence[int]] | None = None) -> None:
    """``layer1``, ``layer2``, ... of torchvision BasicBlocks on ``module`` (torchvision's keys): stride 2
    from the second stage on, a 1x1 conv + ``norm`` shortcut wherever the shape changes. ``block``
    builds each block (a Gather-Excite BasicBlock from ``with_gather_excite``).

    ``inner_widths[stage][block]`` is the channel count between a block's two convolutions (default:
    the stage width); a pruned network (``zoo compress``) narrows it without changing any key."""
    inner_widths = check_inner_widths(inner_widths, blocks, per_block=1)

    def make(i, j, cin, width, stride, down):
        made = block(cin, width, stride=stride, downsample=down, norm_layer=norm)
        if inner_widths is not None and inner_widths[i][j][0] != width:
            inner = inner_widths[i][j][0]
            made.conv1 = nn.Conv2d(cin, inner, 3, stride=stride, padding=1, bias=False)
            made.bn1 = norm(inner)
            made.conv2 = nn.Conv2d(inner, width, 3, padding=1, bias=False)
        return made

    _add_stages(module, cin, widths, blocks, norm, make)


def add_bottleneck_stages(module: nn.Module, cin: int, widths: Sequence[int], blocks: Sequence[int],
                          inner_widths: Sequence[Sequence[Sequence[int]]]) -> None:
    """``layer1``... of torchvision Bottlenecks (torchvision's keys) whose residual width is ``widths[stage]``
    and whose two inner widths (after ``conv1`` and ``conv2``) are ``inner_widths[stage][block]``: the
    shape of a pruned ResNet-50 (CURL's "wallet": channels pruned inside and outside the residual path).
    The stride sits on ``conv2``, as in torchvision's ResNet v1.5."""
    def make(i, j, cin, width, stride, down):
        a, b = inner_widths[i][j]
        block = tv_resnet.Bottleneck(cin, 1, stride=stride, downsample=down)
        block.conv1, block.bn1 = nn.Conv2d(cin, a, 1, bias=False), nn.BatchNorm2d(a)
        block.conv2 = nn.Conv2d(a, b, 3, stride=stride, padding=1, bias=False)
        block.bn2 = nn.BatchNorm2d(b)
        block.conv3, block.bn3 = nn.Conv2d(b, width, 1, bias=False), nn.BatchNorm2d(width)
        return block

    _add_stages(module, cin, widths, blocks, nn.BatchNorm2d, make)


def _add_stages(module: nn.Module, cin: int, widths: Sequence[int], blocks: Sequence[int], norm, make) -> None:
    """The stage loop both block kinds share: ``layer1``, ``layer2``, ... on ``module``, stride 2 from
    the second stage on (in each stage's first block), a 1x1 conv + ``norm`` shortcut wherever the shape
    changes; ``make(stage, block, cin, width, stride, shortcut)`` builds each block (0-based indices)."""
    for i, (width, n) in enumerate(zip(widths, blocks)):
        stage_stride = 1 if i == 0 else 2
        layer = []
        for j in range(n):
            stride = stage_stride if j == 0 else 1
            down = None
            if j == 0 and (stride != 1 or cin != width):
                down = nn.Sequential(nn.Conv2d(cin, width, 1, stride=stride, bias=False), norm(width))
            layer.append(make(i, j, cin, width, stride, down))
            cin = width
        setattr(module, f"layer{i + 1}", nn.Sequential(*layer))


def check_inner_widths(inner_widths, blocks: Sequence[int], per_block: int) -> list | None:
    """``inner_widths`` as lists ``[stage][block][conv]`` (a saved config.json gives lists), checked
    against ``blocks``; a block holds ``per_block`` widths (BasicBlock 1, Bottleneck 2)."""
    if inner_widths is None:
        return None
    stages = [[[int(w) for w in (b if isinstance(b, (list, tuple)) else [b])] for b in s] for s in inner_widths]
    if [len(s) for s in stages] != list(blocks):
        raise ValueError(f"inner_widths gives {[len(s) for s in stages]} blocks per stage, the network has {list(blocks)}")
    for s in stages:
        for b in s:
            if len(b) != per_block or min(b) < 1:
                raise ValueError(f"inner_widths: each block needs {per_block} positive width(s), got {b}")
    return stages


class _StagedResNet(Backbone):
    """Feature stages shared by the ImageNet and the 32x32 ResNets."""

    feature_layers = ("stem", "layer1", "layer2", "layer3", "layer4")

    def stages(self):
        return [
            ("stem", lambda x: self.relu(self.bn1(self.conv1(x)))),
            ("layer1", lambda x: self.layer1(self.maxpool(x))),
            ("layer2", self.layer2),
            ("layer3", self.layer3),
            ("layer4", self.layer4),
        ]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pool of layer4 followed by ``fc`` (identity when there is none)."""
        return self.fc(torch.flatten(self.avgpool(self.forward(x)), 1))


class ResNet(tv_resnet.ResNet, _StagedResNet):
    """torchvision's ResNet. ``gather_excite`` adds a Gather-Excite operator to every block.
    ``widths`` (the four residual widths), ``inner_widths`` (per block, the widths inside it) and
    ``blocks`` describe a pruned or slimmer Bottleneck ResNet (``zoo compress``, ``zoo distill``) with
    the same keys; left out, the network is torchvision's, byte for byte."""

    def __init__(self, depth: int = 50, num_classes: int | None = 1000, in_channels: int = 3,
                 gather_excite: str | None = None, ge_extent: int = GLOBAL_EXTENT,
                 widths: Sequence[int] | None = None, inner_widths: Sequence | None = None,
                 blocks: Sequence[int] | None = None):
        if depth not in _DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(_DEPTHS)}, got {depth}")
        block, layers = _DEPTHS[depth]
        block = with_gather_excite(block, gather_excite, ge_extent)
        tv_resnet.ResNet.__init__(self, block, list(layers), num_classes=num_classes or 1000)
        self.in_channels = in_channels
        if in_channels != 3:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if widths is not None or inner_widths is not None or blocks is not None:
            if gather_excite is not None:
                raise ValueError("a pruned ResNet-50 (widths, inner_widths, blocks) has no Gather-Excite version yet")
            if block is not tv_resnet.Bottleneck:
                raise ValueError("widths, inner_widths and blocks describe Bottleneck ResNets (depth 50 or 101)")
            blocks = [int(n) for n in (blocks or layers)]
            widths = [int(w) for w in (widths or (256, 512, 1024, 2048))]
            if len(widths) != 4 or len(blocks) != 4 or min(widths) < 1 or min(blocks) < 1:
                raise ValueError(f"widths and blocks need 4 positive values each, got {widths} and {blocks}")
            inner = check_inner_widths(inner_widths, blocks, per_block=2) or [
                [[w // 4, w // 4]] * n for w, n in zip(widths, blocks)]
            add_bottleneck_stages(self, 64, widths, blocks, inner)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            self.fc = nn.Linear(widths[-1], num_classes or 1000)
        if num_classes is None:
            self.fc = nn.Identity()

    forward = _StagedResNet.forward


class GeMResNet(ResNet):
    """MultiGrain's network: a torchvision ResNet whose global pooling is GeM (``pool.p``).

    The pooled vector is the feature layer ``gem`` (MultiGrain's embedding, before its L2
    normalisation); ``fc`` is the ImageNet classifier trained jointly with it.
    """

    feature_layers = ("stem", "layer1", "layer2", "layer3", "layer4", "gem")

    def __init__(self, depth: int = 50, num_classes: int | None = 1000, p: float = 3.0,
                 gather_excite: str | None = None, ge_extent: int = GLOBAL_EXTENT):
        super().__init__(depth=depth, num_classes=num_classes, gather_excite=gather_excite, ge_extent=ge_extent)
        self.pool = GeM(p)

    def stages(self):
        return [*super().stages(), ("gem", self.pool)]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward(x))


class SmallResNet(_StagedResNet):
    """A CIFAR-style ResNet for 32x32 inputs: 3x3 stride-1 stem, no max-pool, BasicBlocks.

    ``widths`` scales the four stages (torchvision key names throughout), so the laptop-scale
    recipes can trade width for speed; ``(64, 128, 256, 512)`` with ``blocks=(2, 2, 2, 2)`` is the
    usual CIFAR ResNet-18. ``gather_excite`` adds a Gather-Excite operator to every block.
    ``inner_widths[stage][block]`` narrows a block's inside (a pruned network).
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), blocks: Sequence[int] = (2, 2, 2, 2),
                 in_channels: int = 3, gather_excite: str | None = None, ge_extent: int = GLOBAL_EXTENT,
                 inner_widths: Sequence | None = None):
        super().__init__()
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        add_basic_block_stages(self, widths[0], widths, blocks,
                               block=with_gather_excite(tv_resnet.BasicBlock, gather_excite, ge_extent),
                               inner_widths=inner_widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
