"""RotNet's Network-in-Network for 32x32 images (Gidaris et al. 2018, CIFAR experiments).

Each block is a kxk conv then two 1x1 convs, every conv bias-free and followed by BN and ReLU:
block1 192-160-96 (5x5), block2 192-192-192 (5x5), block3 and later 192-192-192 (3x3). ``width`` scales those numbers for the laptop-scale recipes
(``width=64`` gives 64-53-32, 64-64-64, ...; the key names never change). Block 1 is
followed by max-pool(3, 2, 1), blocks 2 and 3 by avg-pool(3, 2, 1) (block 3's only when there are
more than three blocks and ``pool_after_block3``: the official CIFAR-10 RotNet config trains its
4-block NIN without it, ``use_avg_on_conv3 = False``). The rotation classifier of the paper is a
pretraining head, not part of the backbone.
"""

from __future__ import annotations

from torch import nn

from zoo.backbones.base import Backbone, conv_bn_relu


class NIN(Backbone):
    def __init__(self, num_blocks: int = 4, in_channels: int = 3, width: int = 192, pool_after_block3: bool = True):
        super().__init__()
        if num_blocks < 3:
            raise ValueError(f"NIN needs at least 3 blocks, got {num_blocks}")
        if width < 2:
            raise ValueError(f"NIN width must be at least 2, got {width}")
        self.in_channels = in_channels
        self.feature_layers = tuple(f"block{i}" for i in range(1, num_blocks + 1))
        w, mid, narrow = width, round(width * 160 / 192), width // 2  # 192, 160, 96 in the paper
        specs = [((in_channels, w, 5), (w, mid, 1), (mid, narrow, 1)), ((narrow, w, 5), (w, w, 1), (w, w, 1))]
        specs += [((w, w, 3), (w, w, 1), (w, w, 1))] * (num_blocks - 2)
        for i, spec in enumerate(specs, start=1):
            setattr(self, f"block{i}", nn.Sequential(*(conv_bn_relu(a, b, k, bias=False) for a, b, k in spec)))
        # pool before block i+1
        self.pools = nn.ModuleList(
            [nn.MaxPool2d(3, stride=2, padding=1), nn.AvgPool2d(3, stride=2, padding=1)]
            + [nn.AvgPool2d(3, stride=2, padding=1) if pool_after_block3 else nn.Identity()] * (num_blocks > 3)
            + [nn.Identity()] * max(0, num_blocks - 4)
        )

    def stages(self):
        result = [("block1", self.block1)]
        for i in range(2, len(self.feature_layers) + 1):
            pool, block = self.pools[i - 2], getattr(self, f"block{i}")
            result.append((f"block{i}", lambda x, p=pool, b=block: b(p(x))))
        return result
