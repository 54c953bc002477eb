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
                           norm=nn.BatchNorm2d, block=tv_resnet.BasicBlock) -> None:
    """``layer1``, ``layer2``, ... of torchvision BasicBlocks on ``module`` (torchvision's keys): stride 2
    from the second stage on, a 1x1 conv + ``norm`` shortcut wherever the shape changes. ``block``
    builds each block (a Gather-Excite BasicBlock from ``with_gather_excite``)."""
    for i, (width, n) in enumerate(zip(widths, blocks), start=1):
        stride = 1 if i == 1 else 2
        layer = []
        for j in range(n):
            down = None
            if j == 0 and (stride != 1 or cin != width):
                down = nn.Sequential(nn.Conv2d(cin, width, 1, stride=stride, bias=False), norm(width))
            layer.append(block(cin, width, stride=stride if j == 0 else 1, downsample=down, norm_layer=norm))
            cin = width
        setattr(module, f"layer{i}", nn.Sequential(*layer))


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
    def __init__(self, depth: int = 50, num_classes: int | None = 1000, in_channels: int = 3,
                 gather_excite: str | None = None, ge_extent: int = GLOBAL_EXTENT):
        if depth not in _DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(_DEPTHS)}, got {depth}")
        block, layers = _DEPTHS[depth]
        block = with_gather_excite(block, gather_excite, ge_extent)
        tv_resnet.ResNet.__init__(self, block, list(layers), num_classes=num_classes or 1000)
        self.in_channels = in_channels
        if in_channels != 3:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
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
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), blocks: Sequence[int] = (2, 2, 2, 2),
                 in_channels: int = 3, gather_excite: str | None = None, ge_extent: int = GLOBAL_EXTENT):
        super().__init__()
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        add_basic_block_stages(self, widths[0], widths, blocks,
                               block=with_gather_excite(tv_resnet.BasicBlock, gather_excite, ge_extent))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
