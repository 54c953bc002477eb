"""Mixup without hesitation (mWh; Yu, Wang, Wu, arXiv 2101.04342) for the recipes that use labels.

mixup (Zhang et al. 2018) trains on ``lam * x_i + (1 - lam) * x_j`` with the loss
``lam * L(y_i) + (1 - lam) * L(y_j)``, ``lam ~ Beta(alpha, alpha)``, the partner ``j`` a random
permutation of the batch. mWh switches mixup on and off during training, so that mixup explores
early and plain training exploits late ("gradually replacing mixup with basic data augmentation",
the abstract). The schedule below is the one of the authors' ``easy_mwh.py`` (yuhao318/mwh;
CIFAR-100, 100 epochs, ``--alpha 0.5``), written as fractions of the run:

* before ``p = 0.6`` of the run, every batch is mixed;
* from ``p`` to ``q = 0.9``, mixup and plain training alternate: mixed in even periods (epochs,
  there), plain in odd ones;
* from ``q`` to the end, a batch is mixed with probability ``(T - t) / (T - qT)`` for the period
  ``t`` it is in, falling from 1 at ``qT`` towards 0 at the end (0.1 in the last of the official
  100 epochs): the last stage turns into plain training gradually.

A period is one epoch in the authors' script. The small recipes run 1-6 epochs, so they set ``period`` to a
fraction of an epoch: the schedule reads the run's fractional epoch, ``steps done / steps per
epoch``, which the method keeps in a buffer (``MixupState``) so a resumed run carries on where it
stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from training.engine import FitContext


@dataclass(frozen=True)
class MixupWithoutHesitation:
    """mWh's schedule: ``alpha`` of the Beta distribution, the stage boundaries ``p`` and ``q``
    as fractions of the run, and the on/off ``period`` in epochs."""

    alpha: float = 0.5
    p: float = 0.6
    q: float = 0.9
    period: float = 1.0

    def __post_init__(self):
        if not (self.alpha > 0 and 0 <= self.p <= self.q < 1 and self.period > 0):
            raise ValueError(f"mixup needs alpha > 0, 0 <= p <= q < 1 and period > 0, got alpha={self.alpha}, "
                             f"p={self.p}, q={self.q}, period={self.period}")

    def probability(self, epoch: float, total_epochs: float) -> float:
        """The chance that a batch at fractional ``epoch`` of ``total_epochs`` is mixed."""
        t = self.period * math.floor(epoch / self.period + 1e-9)  # start of the period ``epoch`` is in
        if t < self.p * total_epochs:
            return 1.0
        if t < self.q * total_epochs:
            return 1.0 if round(t / self.period) % 2 == 0 else 0.0
        return max(0.0, (total_epochs - t) / (total_epochs - self.q * total_epochs))


def mix(x: torch.Tensor, partner: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam * x + (1 - lam) * x[partner]``: each row mixed with the row ``partner`` names."""
    return lam * x + (1.0 - lam) * x[partner]


def mixed_loss(loss: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor, partner: torch.Tensor,
               lam: float) -> torch.Tensor:
    """mixup's loss: ``lam * loss(labels) + (1 - lam) * loss(labels[partner])``; ``loss`` maps a
    label tensor to a scalar. With ``lam = 1`` it is ``loss(labels)`` exactly."""
    if lam == 1.0:
        return loss(labels)
    return lam * loss(labels) + (1.0 - lam) * loss(labels[partner])


class MixupState(nn.Module):
    """A method's mWh: the schedule and the fractional epoch reached (a buffer, saved in checkpoints).

    ``draw(n)`` gives the next batch's ``(partner, lam)``: ``lam = 1`` and the identity when the
    schedule leaves this batch plain. Draws use the global torch generator, which the engine seeds.
    """

    def __init__(self, schedule: MixupWithoutHesitation, total_epochs: int):
        super().__init__()
        self.schedule, self.total_epochs = schedule, total_epochs
        self.register_buffer("epoch", torch.zeros((), dtype=torch.float64))

    def after_step(self, ctx: FitContext) -> None:
        self.epoch.fill_(ctx.step / max(ctx.steps_per_epoch, 1))

    def draw(self, n: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, float]:
        partner, lam = draw_mixup(self.schedule, float(self.epoch), self.total_epochs, n)
        return partner.to(device), lam


def draw_mixup(schedule: MixupWithoutHesitation, epoch: float, total_epochs: float,
               n: int) -> tuple[torch.Tensor, float]:
    """One batch of ``n`` rows at fractional ``epoch``: ``(partner, lam)`` -- a random permutation and
    ``lam ~ Beta(alpha, alpha)`` with the schedule's probability, else the identity and 1 (also for
    fewer than two rows). Uses the global torch generator."""
    on = float(torch.rand(())) < schedule.probability(epoch, total_epochs)
    if not on or n < 2:
        return torch.arange(n), 1.0
    alpha = torch.tensor(schedule.alpha)
    return torch.randperm(n), float(torch.distributions.Beta(alpha, alpha).sample())
