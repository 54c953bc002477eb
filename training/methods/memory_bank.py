"""NPID's memory bank and its losses, which PIRL uses too: one unit vector per training image,
noise-contrastive estimation (NCE) against its entries, or the full softmax over all of them."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from training.engine import FitContext
from training.transforms import eval_transform


@torch.no_grad()
def memory_bank_update(bank: torch.Tensor, indices: torch.Tensor, features: torch.Tensor,
                       momentum: float = 0.5) -> None:
    """``bank[i] <- normalise(momentum * bank[i] + (1 - momentum) * feature)`` for each index."""
    mixed = momentum * bank[indices] + (1.0 - momentum) * features.detach().to(bank.dtype)
    bank[indices] = F.normalize(mixed, dim=1)


def nce_normaliser(similarities: torch.Tensor, temperature: float, num_data: int) -> float:
    """NPID's estimate of the partition function Z: mean of exp(s / T) over a batch, times n.

    The original code computes it once, on the first batch, and keeps it fixed afterwards.
    """
    return float(torch.exp(similarities.detach() / temperature).mean() * num_data)


def nce_loss(similarities: torch.Tensor, temperature: float, normaliser: float,
             num_data: int) -> torch.Tensor:
    """NCE loss of (B, 1 + K) cosine similarities: column 0 the positive, the rest K noise draws.

    With P(i|v) = exp(s / T) / Z and noise probability 1/n, a sample is "from the data" with
    h = P / (P + K/n). The loss is -log h for the positive plus -log(1 - h) for each noise draw,
    summed per row and averaged over the batch. Computed in log space so that it cannot overflow.
    """
    k = similarities.shape[1] - 1
    if k < 1:
        raise ValueError("nce_loss needs at least one noise sample per row")
    log_p = similarities / temperature - math.log(normaliser)
    log_noise = math.log(k / num_data)
    log_h_pos = -F.softplus(log_noise - log_p[:, 0])  # log(P / (P + K/n))
    log_not_h = -F.softplus(log_p[:, 1:] - log_noise)  # log((K/n) / (P + K/n))
    return -(log_h_pos + log_not_h.sum(dim=1)).mean()


def instance_softmax_loss(features: torch.Tensor, bank: torch.Tensor, indices: torch.Tensor,
                          temperature: float) -> torch.Tensor:
    """The full (non-parametric) softmax: cross entropy of features . bank^T / T against the index."""
    return F.cross_entropy(features @ bank.t() / temperature, indices)


class MemoryBank(nn.Module):
    """One unit vector per training image, kept as a buffer so checkpoints carry it.

    Initialised like NPID (uniform in +-1/sqrt(dim/3), which has unit norm on average), then
    normalised so every entry is a unit vector from the start. The size of the training set is
    known only when training starts, so a bank may be built empty (``size=0``) and filled with
    ``reset(size)``; loading a checkpoint gives it the checkpoint's size.
    """

    def __init__(self, size: int, dim: int = 128, momentum: float = 0.5):
        super().__init__()
        self.dim, self.momentum = dim, momentum
        self.register_buffer("vectors", torch.empty(0, dim))
        self.register_buffer("normaliser", torch.tensor(-1.0))  # NCE's Z; < 0 until estimated
        if size:
            self.reset(size)

    def reset(self, size: int) -> None:
        bound = 1.0 / math.sqrt(self.dim / 3)
        fresh = torch.rand(size, self.dim, device=self.vectors.device) * 2 * bound - bound
        self.vectors = F.normalize(fresh, dim=1)
        self.normaliser.fill_(-1.0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        stored = state_dict.get(prefix + "vectors")
        if stored is not None and stored.shape != self.vectors.shape:
            self.vectors = torch.empty_like(stored, device=self.vectors.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def update(self, indices: torch.Tensor, features: torch.Tensor) -> None:
        memory_bank_update(self.vectors, indices, features, self.momentum)

    def similarities(self, features: torch.Tensor, indices: torch.Tensor, num_negatives: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 1 + K): each feature against its own entry, then K entries drawn uniformly."""
        noise = torch.randint(0, len(self), (features.shape[0], num_negatives), generator=generator,
                              device=self.vectors.device)
        candidates = torch.cat([indices.view(-1, 1), noise], dim=1)
        return torch.einsum("bkd,bd->bk", self.vectors[candidates], features)

    def fixed_normaliser(self, similarities: torch.Tensor, temperature: float) -> float:
        """NCE's Z as NPID fixes it: estimated from the first batch's similarities (averaged over
        ranks), then kept for the rest of training (a buffer, so a resumed run keeps it too)."""
        if self.normaliser < 0:
            z = torch.tensor(nce_normaliser(similarities, temperature, len(self)), device=similarities.device)
            self.normaliser.fill_(float(gather_from_ranks(z.view(1)).mean()))
        return float(self.normaliser)

    def update_from_all_ranks(self, indices: torch.Tensor, features: torch.Tensor) -> None:
        """``update`` with every rank's batch, so that the banks of all ranks stay identical."""
        self.update(gather_from_ranks(indices), gather_from_ranks(features.detach()))


@torch.no_grad()
def gather_from_ranks(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank concatenated (no gradient): every rank's memory bank then receives the
    same updates and the banks stay identical."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def fill_memory_bank(memory: MemoryBank, embed, backbone: nn.Module, ctx: FitContext, how: str) -> None:
    """Size the bank for the training set; with ``how="features"`` fill it with ``embed`` of every
    training image under the model's reference preprocessing (in eval mode)."""
    if how not in ("random", "features"):
        raise ValueError(f"bank_init must be 'random' or 'features', got {how!r}")
    memory.reset(len(ctx.dataset))
    if how == "features":
        was_training = backbone.training
        backbone.eval()
        features, _ = ctx.map(lambda batch: embed(batch["x"]), ctx.dataset, eval_transform(backbone.entry.input))
        backbone.train(was_training)
        memory.vectors.copy_(F.normalize(features, dim=1).to(memory.vectors.device))
