"""VGG-16 with BatchNorm, keyed exactly like torchvision's ``vgg16_bn`` (``features.N``,
``classifier.0`` and ``classifier.3``), with DeepCluster's optional Sobel front end (``sobel.*``)
and optional linear heads on fc7 (DeeperCluster and DeepCluster train such heads).

DeeperCluster's network differs only in its front end: it zero-pads the input by 2 pixels and runs
the Sobel gradients unpadded (``input_padding=2, sobel_padding=0``), so its conv1 maps are 2 pixels
larger than DeepCluster's (226 at a 224 input) while pool5 is still 7x7.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from zoo.backbones.base import Backbone, Sobel

_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG16BN(Backbone):
    feature_layers = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")

    def __init__(self, sobel: bool = False, heads: Sequence[int] = (), fc_dim: int = 4096,
                 input_padding: int = 0, sobel_padding: int = 1):
        super().__init__()
        self.sobel = Sobel(padding=sobel_padding) if sobel else None
        self.input_padding = input_padding
        self.in_channels = 3
        layers: list[nn.Module] = []
        self._bounds: list[int] = []  # index in `features` just after each stage's last ReLU
        cin = 2 if sobel else 3
        for widths in _STAGES:
            for cout in widths:
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
            self._bounds.append(len(layers))
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, fc_dim), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(fc_dim, fc_dim), nn.ReLU(inplace=True),
        )
        self.heads = nn.ModuleList(nn.Linear(fc_dim, n) for n in heads)

    def stages(self):
        starts = [0] + self._bounds[:-1]
        result = []
        for i, (start, end) in enumerate(zip(starts, self._bounds), start=1):
            block = self.features[start:end]  # begins with the previous stage's max-pool
            if i == 1 and self.sobel is not None:
                block = nn.Sequential(self.sobel, block)
            if i == 1 and self.input_padding:
                block = nn.Sequential(nn.ZeroPad2d(self.input_padding), block)
            result.append((f"conv{i}", block))
        pool5 = self.features[self._bounds[-1]]
        result.append(("fc6", lambda x: self.classifier[0:2](torch.flatten(pool5(x), 1))))
        result.append(("fc7", self.classifier[2:5]))
        return result

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        fc7 = self.forward(x)
        return [head(fc7) for head in self.heads]
