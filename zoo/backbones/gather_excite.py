"""Gather-Excite (Hu, Shen, Albanie, Sun, Vedaldi, NeurIPS 2018, arXiv 1810.12348) for the ResNets.

Facts used here, as the paper describes its operators (its full text was not re-read for this
module, so no section number is cited; the abstract is in the project's seeds):

* a gather operator aggregates each channel over a spatial *extent* -- an ``e x e`` neighbourhood
  sampled every ``e`` pixels (extent ratio ``e``), or the whole map (global extent) -- and an
  excite operator resizes the gathered map back to the input's size, passes it through a sigmoid
  and multiplies the input by it, channel by channel and position by position;
* GE-theta-minus is parameter-free: the gather is average pooling, the resize nearest-neighbour
  interpolation (the "parameter-free" pairing); with a global extent the gate is one number
  per channel, ``sigmoid(mean of the channel)``;
* GE-theta gathers with strided depth-wise convolutions instead (the "parameterised
  pairing"); an extent of ``e = 2^k`` is ``k`` depth-wise 3x3 convolutions of stride 2. Each is
  followed by BatchNorm, with a ReLU between consecutive ones (our reading; the paper's global
  GE-theta uses one depth-wise conv as large as the map, which ties the network to one input
  size, so only power-of-two extents are offered here);
* in a ResNet the operator sits on the residual branch, after its last BatchNorm and before the
  sum with the identity, as Squeeze-and-Excitation does.

Built with ``gather_excite=None`` (the default) a ResNet is the plain one, key for key; GE-theta-minus
adds no parameter or key, GE-theta adds ``layerN.M.ge.*`` keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv_resnet

GE_MODES = ("theta-minus", "theta")
GLOBAL_EXTENT = 0


def check_gather_excite(mode: str | None, extent: int) -> None:
    """Refuse an unknown mode, or an extent GE-theta cannot build, with a one-line ValueError."""
    if mode is None:
        return
    if mode not in GE_MODES:
        raise ValueError(f"gather_excite must be one of {', '.join(GE_MODES)} (or None), got {mode!r}")
    if extent < 0 or extent == 1:
        raise ValueError(f"ge_extent must be 0 (global) or at least 2, got {extent}")
    if mode == "theta" and (extent == GLOBAL_EXTENT or extent & (extent - 1)):
        raise ValueError(f"GE-theta gathers with stride-2 convolutions: ge_extent must be a power of two >= 2, "
                         f"got {extent}")


def gather_average(x: torch.Tensor, extent: int) -> torch.Tensor:
    """GE-theta-minus's gather: the mean of each ``extent x extent`` cell (the last cells of a map
    whose side does not divide by ``extent`` are partial), or of the whole map for extent 0."""
    if extent == GLOBAL_EXTENT:
        return x.mean(dim=(2, 3), keepdim=True)
    return F.avg_pool2d(x, extent, stride=extent, ceil_mode=True)


def excite(x: torch.Tensor, gathered: torch.Tensor) -> torch.Tensor:
    """``x`` times the sigmoid of ``gathered`` resized to ``x``'s size by nearest neighbours."""
    if gathered.shape[-2:] != x.shape[-2:]:
        gathered = F.interpolate(gathered, size=x.shape[-2:], mode="nearest")
    return x * torch.sigmoid(gathered)


class GatherExcite(nn.Module):
    """One gather-excite operator on ``channels`` channels: ``mode`` "theta-minus" (no parameters)
    or "theta" (strided depth-wise convolutions); ``extent`` 0 is global."""

    def __init__(self, channels: int, mode: str = "theta-minus", extent: int = GLOBAL_EXTENT):
        super().__init__()
        check_gather_excite(mode, extent)
        self.mode, self.extent = mode, extent
        if mode == "theta":
            steps = []
            for i in range(int(math.log2(extent))):
                if i:
                    steps.append(nn.ReLU(inplace=True))
                steps += [nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels, bias=False),
                          nn.BatchNorm2d(channels)]
            self.gather = nn.Sequential(*steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gathered = self.gather(x) if self.mode == "theta" else gather_average(x, self.extent)
        return excite(x, gathered)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, extent={'global' if self.extent == GLOBAL_EXTENT else self.extent}"


class GEBasicBlock(tv_resnet.BasicBlock):
    """torchvision's BasicBlock (same keys) with gather-excite on the residual branch before the sum."""

    def __init__(self, *args, gather_excite: str = "theta-minus", ge_extent: int = GLOBAL_EXTENT, **kwargs):
        super().__init__(*args, **kwargs)
        self.ge = GatherExcite(self.bn2.num_features, gather_excite, ge_extent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.ge(self.bn2(self.conv2(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class GEBottleneck(tv_resnet.Bottleneck):
    """torchvision's Bottleneck (same keys) with gather-excite on the residual branch before the sum."""

    def __init__(self, *args, gather_excite: str = "theta-minus", ge_extent: int = GLOBAL_EXTENT, **kwargs):
        super().__init__(*args, **kwargs)
        self.ge = GatherExcite(self.bn3.num_features, gather_excite, ge_extent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.ge(self.bn3(self.conv3(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)
