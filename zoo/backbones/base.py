"""The one feature API shared by every backbone.

A backbone is a sequence of named stages. ``feature_layers`` lists the names in order and
``forward_features`` runs the stages up to the deepest one asked for, returning each asked
layer's output. Every conv stage ends after its BatchNorm and ReLU; the pooling that follows a
stage belongs to the start of the next one, so a feature is always taken *before* pooling.
Probes, exporters and extraction all go through this API.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from zoo.errors import UnknownNameError, UsageError


class Backbone(nn.Module):
    feature_layers: tuple[str, ...] = ()
    in_channels: int = 3

    def stages(self) -> Sequence[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        """``(name, fn)`` pairs in ``feature_layers`` order; fn maps the previous output onward."""
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> None:
        """Reject inputs of the wrong rank or channel count with a one-line message."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise UsageError(f"{type(self).__name__} expects a batch of images (N, C, H, W), got {shape}")
        expected = self.in_channels
        if x.shape[1] != expected:
            raise UsageError(
                f"{type(self).__name__} expects {expected} input channel(s), got tensor of shape "
                f"{tuple(x.shape)}; preprocess with zoo.preprocess for this model's input spec"
            )

    def resolve_layers(self, layers: str | Iterable[str] | None) -> list[str]:
        if layers is None:
            return list(self.feature_layers)
        if isinstance(layers, str):
            layers = [layers]
        layers = list(layers)
        for name in layers:
            if name not in self.feature_layers:
                raise UnknownNameError(
                    "layer", name, self.feature_layers,
                    hint=f"{type(self).__name__} has layers {', '.join(self.feature_layers)}",
                )
        if not layers:
            raise UsageError("asked for no layers; pass layer names or None for all")
        return layers

    def forward_features(
        self, x: torch.Tensor, layers: str | Iterable[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Outputs of the asked layers (all by default), in ``feature_layers`` order."""
        self.check_input(x)
        wanted = set(self.resolve_layers(layers))
        out: dict[str, torch.Tensor] = {}
        for name, stage in self.stages():
            x = stage(x)
            if name in wanted:
                out[name] = x
                if len(out) == len(wanted):
                    break
        return out

    def save_pretrained(self, directory, **extra_config):
        """Write this model as a checkpoint folder (see ``zoo.checkpoint.save_pretrained``)."""
        from zoo.checkpoint import save_pretrained

        return save_pretrained(self, directory, **extra_config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The deepest feature layer's output."""
        last = self.feature_layers[-1]
        return self.forward_features(x, [last])[last]


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, padding: int | None = None,
                 bias: bool = True) -> nn.Sequential:
    """Conv -> BatchNorm -> ReLU; keys ``0.*`` (conv) and ``1.*`` (bn)."""
    if padding is None:
        padding = (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=bias),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


# ITU-R BT.601 luma weights, as PIL's "L" mode uses them.
LUMA_BT601 = (0.299, 0.587, 0.114)


class Sobel(nn.Sequential):
    """DeepCluster's fixed front end: grey = mean of RGB (1x1 conv), then Sobel x and y (3x3 conv).

    The parameters are frozen (``requires_grad=False``) but kept as parameters so that the keys
    ``sobel.0.*`` and ``sobel.1.*`` of the released checkpoints load as they are. ``padding`` is
    the gradient convolution's (DeeperCluster pads the input instead and uses 0);
    ``grey_weights`` mixes R, G, B into grey (IIC uses PIL's BT.601 luma, ``LUMA_BT601``).
    """

    def __init__(self, padding: int = 1, grey_weights: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)):
        grey = nn.Conv2d(3, 1, kernel_size=1)
        grad = nn.Conv2d(1, 2, kernel_size=3, padding=padding)
        super().__init__(grey, grad)
        self.grey_weights = tuple(grey_weights)
        self.reset_parameters()
        for p in self.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        grey, grad = self[0], self[1]
        grey.weight.copy_(torch.tensor(self.grey_weights).view(1, 3, 1, 1))
        grey.bias.zero_()
        # Cross-correlation kernels (PyTorch convs do not flip): x responds to left-minus-right.
        grad.weight[0, 0] = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        grad.weight[1, 0] = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])
        grad.bias.zero_()
