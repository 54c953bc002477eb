"""Pieces the embedding methods share: the pooled backbone feature, MLP heads, DDP gathering."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from training.features import deepest_feature_dim as feature_dim  # noqa: F401  (the heads' input size)
from training.features import deepest_features


def pooled_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The representation h the heads read: ``deepest_features`` on channels-last input."""
    return deepest_features(backbone, x, channels_last=True)


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
