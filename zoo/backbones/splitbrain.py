"""Split-brain network: two disjoint halves, one on the L channel and one on the ab channels of a
Lab image (Zhang, Isola, Efros, "Split-Brain Autoencoders", CVPR 2017, arXiv 1611.09842).

Each half is a whole backbone of the architecture ``half`` (``resnet_small`` at half the width of
the single network it replaces, as the paper halves AlexNet's channels); the features of a layer
are the two halves' features of that layer concatenated along the channels, L half first. The
input is the 3-channel Lab image of the registry entry's input spec; a grey image (Fashion-MNIST)
has a = b = 0 up to rounding, so the ab half then sees a constant image.
"""

from __future__ import annotations

import torch
from torch import nn

from zoo.backbones.base import Backbone


class SplitBrainNet(Backbone):
    in_channels = 3

    def __init__(self, half: str = "resnet_small", **half_kwargs):
        super().__init__()
        from zoo.backbones import build_architecture  # the package imports this module

        if "in_channels" in half_kwargs:
            raise ValueError("the halves' input channels are fixed: 1 (L) and 2 (ab)")
        self.l_net = build_architecture(half, in_channels=1, **half_kwargs)
        self.ab_net = build_architecture(half, in_channels=2, **half_kwargs)
        self.feature_layers = tuple(self.l_net.feature_layers)

    def stages(self):
        """Each stage runs both halves on the (L features, ab features) pair; the concatenation is
        made by ``forward_features``, so the halves never see each other's channels."""
        pairs = zip(self.l_net.stages(), self.ab_net.stages())
        return [(name, lambda x, f=fl, g=fab: (f(x[0]), g(x[1]))) for (name, fl), (_, fab) in pairs]

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A normalised Lab batch -> (L, ab)."""
        return x[:, :1], x[:, 1:]

    def forward_features(self, x: torch.Tensor, layers=None) -> dict[str, torch.Tensor]:
        self.check_input(x)
        wanted = set(self.resolve_layers(layers))
        out: dict[str, torch.Tensor] = {}
        pair = self.split(x)
        for name, stage in self.stages():
            pair = stage(pair)
            if name in wanted:
                out[name] = torch.cat(pair, dim=1)
                if len(out) == len(wanted):
                    break
        return out

    def halves(self) -> tuple[nn.Module, nn.Module]:
        return self.l_net, self.ab_net
