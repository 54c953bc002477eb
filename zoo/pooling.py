"""Generalised-mean (GeM) pooling: average pooling at p=1, max pooling as p grows.

GeM pools each channel of a feature map as ``(mean_hw x^p)^(1/p)``. MultiGrain trains with a
fixed or learnable ``p`` and raises it at test time for inputs larger than the training ones;
retrieval exporters pool with it too. It lives in ``zoo`` because models, the exporters and the
training methods all need the same module (released MultiGrain weights carry it as ``pool.p``).

The mean is taken of ``(x / m)^p`` with ``m`` the per-channel maximum, then scaled back by ``m``:
the same value, but it never overflows for large p. The spatial mean uses
``adaptive_avg_pool2d(..., 1)`` because ``avg_pool2d`` with the map's size as the kernel breaks
ONNX export with dynamic input sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gem(x: torch.Tensor, p: float | torch.Tensor = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """GeM pooling of a (N, C, H, W) map to (N, C). Values below ``eps`` are clamped to it."""
    if x.dim() != 4:
        raise ValueError(f"gem expects a (N, C, H, W) feature map, got shape {tuple(x.shape)}")
    x = x.clamp(min=eps)
    peak = x.amax(dim=(2, 3), keepdim=True)
    pooled = F.adaptive_avg_pool2d((x / peak).pow(p), 1).pow(1.0 / p)
    return (pooled * peak).flatten(1)


class GeM(nn.Module):
    """GeM pooling with exponent ``p``; ``learn_p=True`` makes it a trained parameter.

    ``p`` is kept as a 0-dim tensor under the name ``p`` either way (a parameter or a buffer), so
    the state-dict entry is ``<prefix>.p`` of shape () like MultiGrain's releases. The clamp at
    ``eps`` always runs (MultiGrain skips it at p = 1; no data-dependent branch keeps export
    traceable), which moves an average by at most ``eps``.
    """

    def __init__(self, p: float = 3.0, learn_p: bool = False, eps: float = 1e-6):
        super().__init__()
        if p < 1:
            raise ValueError(f"GeM exponent p must be >= 1, got {p}")
        value = torch.tensor(float(p))
        if learn_p:
            self.p = nn.Parameter(value)
        else:
            self.register_buffer("p", value)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(x, self.p, self.eps)

    @torch.no_grad()
    def set_p(self, p: float) -> None:
        """Change the exponent in place (MultiGrain's test-time p*)."""
        if p < 1:
            raise ValueError(f"GeM exponent p must be >= 1, got {p}")
        self.p.fill_(float(p))

    def extra_repr(self) -> str:
        return f"p={float(self.p):.3g}, learn_p={isinstance(self.p, nn.Parameter)}"
