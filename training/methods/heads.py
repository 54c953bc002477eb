"""Pieces the embedding methods share: the pooled backbone feature, MLP heads, DDP gathering."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from zoo.inspect import layer_shapes


def feature_dim(backbone: nn.Module) -> int:
    """Channels of the backbone's deepest feature layer (the size of its pooled embedding)."""
    return layer_shapes(backbone, backbone.entry.input)[backbone.feature_layers[-1]][0]


def pooled_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Global average pool of the deepest feature layer: the representation h the heads read."""
    if x.dim() == 4 and x.device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)  # faster CPU convolutions, same numbers
    f = backbone(x)
    return F.adaptive_avg_pool2d(f, 1).flatten(1) if f.dim() == 4 else f


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2) -> nn.Sequential:
    """``layers`` linear layers with BatchNorm and ReLU after each but the last (the projection and
    prediction heads of SimCLR and BYOL). A linear layer followed by BatchNorm needs no bias."""
    dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
    blocks: list[nn.Module] = []
    for a, b in zip(dims[:-2], dims[1:-1]):
        blocks += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
    blocks.append(nn.Linear(dims[-2], dims[-1]))
    return nn.Sequential(*blocks)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping gradients to the local part.

    Without a process group this is ``x``. Every rank then computes the same loss over the whole
    global batch (SimCLR's negatives come from all devices).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x))
