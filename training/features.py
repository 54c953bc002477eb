"""The representation the methods train on: the backbone's deepest feature layer, pooled.

One helper for every method: the pooled features (heads, pseudo-labels, cluster assignments read
them) and their size (the width of the first layer that reads them).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from zoo.inspect import layer_shapes


def deepest_feature_dim(backbone: nn.Module) -> int:
    """Channels of the backbone's deepest feature layer (the size of its pooled embedding)."""
    return layer_shapes(backbone, backbone.entry.input)[backbone.feature_layers[-1]][0]


def _hits_onednn_1x1_bug(backbone: nn.Module, x: torch.Tensor) -> bool:
    """Whether channels-last input would reach oneDNN's strided 1x1 fp32 weight-gradient bug
    (uxlfoundation/oneDNN#6035, open in the oneDNN 3.12 of torch 2.14): with fewer input channels
    than its channel block (8 with AVX2, 16 with AVX-512) that kernel writes past its workspace,
    and the heap corruption aborts the process (a ResNet of widths 8-64 trained in fp32 did). Under
    bf16 or fp16 autocast the convolutions do not run in fp32, so channels-last stays."""
    if x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
        return False
    return any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1 and m.in_channels < 16
               for m in backbone.modules())


def deepest_features(backbone: nn.Module, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """The backbone's deepest feature layer, globally average-pooled when it is a feature map.

    AlexNet and VGG end in fc7 (after its ReLU, where DeepCluster puts its top layer); conv
    networks end in a feature map, pooled to one vector per image as ResNet classifiers do.
    ``channels_last`` runs CPU convolutions on channels-last input, which is faster (the embedding
    methods use it; the clustering methods do not, and switching would change their float rounding).
    """
    if channels_last and x.dim() == 4 and x.device.type == "cpu" and not _hits_onednn_1x1_bug(backbone, x):
        x = x.contiguous(memory_format=torch.channels_last)
    f = backbone(x)
    return F.adaptive_avg_pool2d(f, 1).flatten(1) if f.dim() == 4 else f
