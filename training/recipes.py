"""Recipes: small typed configs, one per (method, scale), defined next to the method they train.

A method module holds ``RECIPES = method_recipes(__name__, {"paper": paper_recipe(...), ...})``,
which names each recipe by its key and the method by the module:

* ``paper``: the published hyperparameters (data, epochs, batch, optimiser, schedule,
  augmentation), meant for ``torchrun`` on a GPU cluster;
* ``small``: the S3L idea -- small resolution, small network, small data -- that trains on 2 CPU
  cores in under 10 minutes;
* ``tiny``: seconds-scale settings for tests and ``zoo quickstart --fast``.

``paper_recipe``, ``small_recipe`` and ``tiny_recipe`` fill in what the recipes of one scale share;
everything a run depends on is in its ``Recipe`` and is written into the checkpoint's
``config.json``. Method-specific knobs live in a small frozen dataclass of the
method's own, set as ``Recipe.options``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from zoo.errors import UsageError

OPTIMIZERS = ("sgd", "lars", "adam", "adamw")
SCHEDULES = ("step", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Optimizer:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise UsageError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.name!r}")


@dataclass(frozen=True)
class Schedule:
    """The learning rate as a multiple of ``Optimizer.lr``, a function of the (fractional) epoch.

    ``step``: multiplied by ``gamma`` at each epoch in ``milestones``; ``cosine``: from 1 down to
    ``final_fraction`` over the run; ``constant``. All three start with ``warmup_epochs`` of
    linear warm-up from zero.
    """

    kind: str = "step"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    final_fraction: float = 0.0

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise UsageError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.kind!r}")

    def factor(self, epoch: float, total_epochs: float) -> float:
        warm = min(1.0, epoch / self.warmup_epochs) if self.warmup_epochs > 0 else 1.0
        if self.kind == "step":
            return warm * self.gamma ** sum(epoch >= m for m in self.milestones)
        if self.kind == "cosine":
            t = min(1.0, max(0.0, (epoch - self.warmup_epochs) / max(total_epochs - self.warmup_epochs, 1e-9)))
            return warm * (self.final_fraction + (1 - self.final_fraction) * 0.5 * (1 + math.cos(math.pi * t)))
        return warm


# The data hint of every ImageNet-1k paper recipe (shown when such a recipe runs without --data).
IMAGENET_HINT = ("ImageNet-1k as an ImageFolder tree: --data /path/to/imagenet (holding train/ and val/) "
                 "or --data /path/to/imagenet/train")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """Everything one training run depends on.

    ``batch_size`` counts images per optimiser step over all ranks and accumulation steps, so a
    recipe means the same thing on 1 or 64 processes; each process loads
    ``batch_size / (world_size * accumulate)`` images per forward pass.
    """

    method: str = ""                # set by method_recipes: the method module's name
    name: str = ""                  # set by method_recipes: the recipe's key
    model: str                      # registry name of the backbone
    epochs: int
    batch_size: int
    optimizer: Optimizer
    schedule: Schedule = Schedule("constant")
    data: str | None = None         # a --data string (training.data.open_dataset); None: must be given
    data_hint: str = ""             # what to pass as --data when ``data`` is None
    limit: int | None = None        # a fixed random subset of this many training images
    heldout: str | None = None      # --data string of held-out images for the method's own metrics
    heldout_limit: int | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    accumulate: int = 1
    precision: str = "auto"         # auto: the machine's (training.precision); fp32/bf16/fp16 where fixed
    workers: int = 0
    seed: int = 0
    checkpoint_every: int = 100     # optimiser steps between mid-epoch checkpoints (0: epoch ends only)
    keep_last: int = 3
    log_every: int = 10
    options: Any = None             # the method's own frozen dataclass of knobs
    source: str = ""                # where the hyperparameters come from

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("epochs", "batch_size", "accumulate", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"recipe {self.method}/{self.name}: {name} must be >= 1, got {getattr(self, name)}")

    def replace(self, **changes: Any) -> "Recipe":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model_kwargs"] = dict(self.model_kwargs)
        return d

    def micro_batch(self, world_size: int) -> int:
        per = self.batch_size // (world_size * self.accumulate)
        if per < 1 or per * world_size * self.accumulate != self.batch_size:
            raise UsageError(f"batch size {self.batch_size} does not split evenly over {world_size} process(es) "
                             f"x {self.accumulate} accumulation step(s); pick a multiple of "
                             f"{world_size * self.accumulate}")
        return per


# What the recipes of one scale share; a recipe states only where it differs. ``paper``: the data
# must be given (ImageNet-1k unless the recipe's hint says otherwise), several loader processes,
# rare checkpoints and logs; ``small``: Fashion-MNIST; ``tiny``: one epoch, checkpoints and logs
# every few steps, 256 images, fp32 so that tests give the same numbers on every CPU.
_SCALES: dict[str, dict[str, Any]] = {
    "paper": dict(data=None, data_hint=IMAGENET_HINT, workers=8, checkpoint_every=1000, log_every=50),
    "small": dict(data="fmnist"),
    "tiny": dict(epochs=1, data="fmnist", limit=256, checkpoint_every=4, log_every=1, precision="fp32"),
}
# The embedding methods' small recipes: 10,000 images, a cosine schedule after a short warm-up,
# frequent checkpoints and logs; precision ``auto`` (bf16 on the CPUs with native bf16 that trained
# the shipped weights, fp32 elsewhere).
SMALL_EMBEDDING = dict(limit=10_000, schedule=Schedule("cosine", warmup_epochs=0.1),
                       checkpoint_every=20, log_every=5)

# SimCLR's ImageNet training length and schedule, which BYOL adopts with LARS as well: 1000 epochs
# of 4096 images, 10 warm-up epochs, then cosine decay.
LARS_1000_EPOCHS = dict(epochs=1000, batch_size=4096, schedule=Schedule("cosine", warmup_epochs=10))


def paper_recipe(**fields: Any) -> Recipe:
    return Recipe(**{**_SCALES["paper"], **fields})


def small_recipe(**fields: Any) -> Recipe:
    return Recipe(**{**_SCALES["small"], **fields})


def tiny_recipe(**fields: Any) -> Recipe:
    return Recipe(**{**_SCALES["tiny"], **fields})


def method_recipes(module: str, recipes: Mapping[str, Recipe]) -> dict[str, Recipe]:
    """A method module's ``RECIPES``: each recipe named by its key, and for the method the
    module's own name (``method_recipes(__name__, {...})`` in ``training/methods/rotnet.py``
    gives method "rotnet"), so that the name is written nowhere else."""
    method = module.rpartition(".")[2]
    return {name: dataclasses.replace(recipe, method=method, name=name) for name, recipe in recipes.items()}
