"""IIC's ClusterNet5g trunk (Ji, Henriques, Vedaldi 2019): a ResNet-34 for 32-96 px images.

BasicBlocks (3, 4, 6, 3) of 64-128-256-512 channels after a 3x3 stride-1 stem and a 2x2 stride-2
max-pool with padding 1; the keys are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ...).
IIC feeds the trunk the Sobel gradients of the grey image (2 channels), optionally after the RGB
channels (5 channels, ``include_rgb``). IIC computes them in its data loader; here the fixed front
end ``sobel`` computes them inside the model from RGB in [0, 1], with PIL's BT.601 grey.

Models trained without ``--batchnorm_track`` normalise with each batch's own statistics, even at
test time (``track_running_stats=False``): their files hold no running statistics, and their
features depend on the whole batch. The clustering heads (softmax over k clusters) are
pretraining heads, not part of the backbone.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from zoo.backbones.base import LUMA_BT601, Sobel
from zoo.backbones.resnet import _StagedResNet, add_basic_block_stages

_BLOCKS = (3, 4, 6, 3)
_WIDTHS = (64, 128, 256, 512)


class IICNet5g(_StagedResNet):
    def __init__(self, include_rgb: bool = False, track_running_stats: bool = True):
        super().__init__()
        norm = functools.partial(nn.BatchNorm2d, track_running_stats=track_running_stats)
        self.sobel = Sobel(grey_weights=LUMA_BT601)
        self.include_rgb = include_rgb
        self.in_channels = 3
        self.conv1 = nn.Conv2d(5 if include_rgb else 2, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2, padding=1)
        add_basic_block_stages(self, 64, _WIDTHS, _BLOCKS, norm)

    def front_end(self, rgb: torch.Tensor) -> torch.Tensor:
        gradients = self.sobel(rgb)
        return torch.cat([rgb, gradients], dim=1) if self.include_rgb else gradients

    def stages(self):
        stem = super().stages()[0][1]
        return [("stem", lambda x: stem(self.front_end(x))), *super().stages()[1:]]
