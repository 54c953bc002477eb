"""The one training engine. A method says what to learn; the engine does everything else.

What a method supplies (a subclass of ``Method`` in ``training/methods/<name>.py``, read top to
bottom in that one file, plus its ``RECIPES``):

``__init__(recipe)``
    Build ``self.backbone`` with ``zoo.create_model(recipe.model, **recipe.model_kwargs)`` and
    whatever the method trains besides it: heads, projectors, predictors, target networks,
    memory banks, pseudo-labels. Everything that must survive a resume is a parameter or a
    buffer (``register_buffer``), because the training checkpoint is the module's state_dict.
``train_transform()``
    The per-sample augmentation: uint8 (C, H, W) image -> tensor, or a tuple of tensors for
    multi-view methods (SimCLR, BYOL: two views; the batch then holds ``x = (view1, view2)``).
    Randomness must come from torch's global generator (seeded per sample by the engine).
``forward(batch) -> dict``
    One micro-batch to a dict with ``"loss"`` (a scalar tensor) and any other scalar tensors to
    log. ``batch`` holds ``x`` (tensor or tuple of views), ``label`` (true labels, -1 if none;
    for monitoring only) and ``index`` (the dataset index of each image: memory banks and
    pseudo-labels are looked up with it). The engine wraps the method in DDP and calls it, so
    gradients are synchronised.

Optional hooks, all no-ops by default; ``ctx`` is the ``FitContext`` (recipe, device, rank,
world size, epoch, step, the raw training set, ``ctx.map`` to run a function over a whole
dataset sharded over ranks, ``ctx.broadcast`` to share rank 0's decision):

``parameter_groups()``
    Optimiser parameter groups (default: every trainable parameter). A group may carry
    ``lr_scale`` and its own ``weight_decay`` (e.g. no decay on biases and BN for LARS methods).
``on_fit_start(ctx)``
    Once, before the first step of a fresh run (not on resume): e.g. fill a memory bank.
``on_epoch_start(ctx)``
    Before the first step of each epoch; not called again when a run resumes in the middle of
    that epoch (its effects are in the checkpointed buffers). Clustering methods compute
    features of the whole training set here (``ctx.map``), cluster them (on rank 0, then
    ``ctx.broadcast``), store the assignments in a buffer and reset their head.
``epoch_indices(ctx) -> sequence | None``
    The dataset indices this epoch visits (DeepCluster: uniform over clusters); None means a
    shuffled pass over the whole dataset. The engine shuffles and shards them over ranks with a
    ``DistributedSampler`` and stores them in the checkpoint.
``after_step(ctx)``
    After each optimiser step: EMA target updates (BYOL), momentum or temperature schedules.
``on_epoch_end(ctx) -> dict``
    Metrics to log for the epoch (e.g. the NMI between consecutive assignments).
``evaluate(ctx) -> dict``
    The method's own end-of-training metrics on held-out data (RotNet: rotation accuracy);
    they go into config.json's ``training.metrics`` and the model card.
``pretrained_model()``
    What ``save_pretrained`` writes (default ``self.backbone``).

``data_sized_buffers`` (a class attribute, default empty)
    Names of buffers whose shape depends on the training data and is unknown in ``__init__``
    (pseudo-labels, one per image; memory banks): register them empty in ``__init__`` and size
    them in ``on_fit_start``; on ``--resume`` each takes its shape from the checkpoint.

What the engine does: the loop; the optimiser and learning-rate schedule from the recipe;
mixed precision (``training.precision``: a recipe's ``auto`` is bf16 where the CPU or GPU computes
in bf16, fp32 on other CPUs, fp16 with a gradient scaler on CUDA devices without bf16; the run's
config.json records the precision that ran, why, the thread count and the CPU);
gradient accumulation (with DDP's ``no_sync``); DDP under ``torchrun`` (gloo on CPU, nccl on
GPU) with a ``DistributedSampler`` and BN running statistics averaged over ranks at every epoch
end and checkpoint; deterministic seeding (per-sample augmentation seeds depend only on seed,
epoch and index); a tqdm progress bar; metrics to ``metrics.jsonl``; atomic training
checkpoints (``checkpoints/step-XXXXXXXX.pt``, temp file + rename) every
``recipe.checkpoint_every`` steps and at epoch ends, keeping the last ``recipe.keep_last``;
``resume=True`` continues from the newest complete checkpoint after a crash or SIGKILL at any
moment, losing only the unfinished steps and giving the same weights as an uninterrupted run.
Checkpoints hold only tensors and plain Python values and are read with
``torch.load(weights_only=True)``: no pickled code ever runs. At the end the backbone is written
with ``zoo.save_pretrained`` to ``OUT/model``, which ``zoo.from_pretrained`` loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import click
import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from training.data import SampleView, SkipCounter, collate_skipping, describe, iterate_batches, limit_dataset, open_dataset
from training.precision import cpu_name, machine_precision
from training.recipes import Recipe
from zoo.cli import progress_wanted
from zoo.checkpoint import atomic_write, atomic_write_text, state_dict_sha256
from zoo.errors import UsageError, ZooError

STATE_FORMAT = "sslzoo-train-state/1"
CHECKPOINT_DIR = "checkpoints"
MODEL_DIR = "model"
LOG_NAME = "metrics.jsonl"
_CKPT_RE = re.compile(r"^step-(\d{8,})\.pt$")


def take_saved_shapes(module: nn.Module, names: Sequence[str], state_dict: dict[str, torch.Tensor],
                      prefix: str) -> None:
    """Re-allocate each buffer of ``module`` in ``names`` with its shape in ``state_dict`` (on the
    buffer's device), so that loading copies into it: for buffers sized by the training data
    (pseudo-labels, memory banks), registered empty before the data is known. Call it from
    ``_load_from_state_dict`` before the default loading."""
    for name in names:
        saved = state_dict.get(prefix + name)
        if saved is not None:
            setattr(module, name, torch.empty_like(saved, device=getattr(module, name).device))


class Method(nn.Module):
    """Base class of every method; see the module docstring for the contract."""

    find_unused_parameters: bool = False  # DDP: set when some heads are not used every step
    data_sized_buffers: tuple[str, ...] = ()  # buffers shaped by the data; see the module docstring

    def __init__(self, recipe: Recipe):
        super().__init__()
        self.recipe = recipe

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        take_saved_shapes(self, self.data_sized_buffers, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def train_transform(self) -> Callable[[torch.Tensor], Any]:
        raise NotImplementedError

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def on_fit_start(self, ctx: "FitContext") -> None:
        pass

    def on_epoch_start(self, ctx: "FitContext") -> None:
        pass

    def epoch_indices(self, ctx: "FitContext") -> Sequence[int] | None:
        return None

    def after_step(self, ctx: "FitContext") -> None:
        pass

    def on_epoch_end(self, ctx: "FitContext") -> dict[str, float]:
        return {}

    def evaluate(self, ctx: "FitContext") -> dict[str, float]:
        return {}

    def pretrained_model(self) -> nn.Module:
        return self.backbone


# ---------------------------------------------------------------------------------------------
# Distributed set-up
# ---------------------------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(rank, world, local, device)


def _broadcast(obj: Any, d: Dist) -> Any:
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_gather(obj: Any, d: Dist) -> list[Any]:
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def sync_batchnorm_stats(model: nn.Module, d: Dist) -> None:
    """Average BN running statistics over ranks (each rank updated them with its own batches)."""
    if not d.enabled:
        return
    for m in model.modules():
        if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf.div_(d.world_size)
            dist.broadcast(m.num_batches_tracked, src=0)


state_digest = state_dict_sha256  # the old name: sha256 of every parameter and buffer (equal <=> identical weights)


def nested_sha256(obj: Any) -> str:
    """sha256 over a nest of dicts, lists, tensors and plain values: names, dtypes, shapes, bytes
    (a training checkpoint's ``checksum``)."""
    h = hashlib.sha256()

    def feed(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(o, dict):
            h.update(f"D{len(o)}|".encode())
            for key, value in o.items():
                h.update(f"{key!r}|".encode())
                feed(value)
        elif isinstance(o, (list, tuple)):
            h.update(f"L{len(o)}|".encode())
            for value in o:
                feed(value)
        else:
            h.update(f"V{o!r}|".encode())

    feed(obj)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# What hooks see
# ---------------------------------------------------------------------------------------------

@dataclass
class FitContext:
    recipe: Recipe
    out: Path
    dist: Dist
    dataset: Dataset                 # the raw training set (uint8 images, labels)
    data: str | None = None          # the --data string it came from (None: Fashion-MNIST)
    epoch: int = 0
    step: int = 0                    # optimiser steps done
    steps_per_epoch: int = 0
    skipped: SkipCounter = field(default_factory=SkipCounter)

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (e.g. cluster assignments computed once)."""
        return _broadcast(obj, self.dist)

    @torch.no_grad()
    def map(self, fn: Callable[[dict[str, Any]], torch.Tensor], dataset: Dataset,
            transform: Callable[[torch.Tensor], Any] | None, batch_size: int = 256,
            with_index: bool = False, epoch: int = 0) -> tuple[torch.Tensor, ...]:
        """``fn(batch)`` over the whole ``dataset`` (each rank a contiguous shard, gathered in
        dataset order); returns (outputs on CPU, true labels), plus the dataset index of each row
        with ``with_index`` (unreadable images are left out, so rows and indices can differ).
        ``epoch`` seeds the samples as the training view does in that epoch: a dataset whose items
        are random (``SingleImageCrops``) then gives the same image ``i`` as the steps see."""
        n, d = len(dataset), self.dist
        lo, hi = n * d.rank // d.world_size, n * (d.rank + 1) // d.world_size
        view = SampleView(dataset, transform, self.recipe.seed)
        view.epoch = epoch
        outs, labels, indices = [], [], []
        for batch in iterate_batches(view, batch_size, order=range(lo, hi), counter=self.skipped):
            batch = _to_device(batch, self.device)
            outs.append(fn(batch).float().cpu())
            labels.append(batch["label"].cpu())
            indices.append(batch["index"].cpu())
        empty = torch.empty(0, dtype=torch.long)
        local = (torch.cat(outs) if outs else torch.empty(0), torch.cat(labels) if labels else empty,
                 torch.cat(indices) if indices else empty)
        parts = _all_gather(local, d)
        result = (torch.cat([p[0] for p in parts if len(p[0])]), torch.cat([p[1] for p in parts]))
        return (*result, torch.cat([p[2] for p in parts])) if with_index else result


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    def move(v):
        if isinstance(v, torch.Tensor):
            return v.to(device, non_blocking=True)
        if isinstance(v, tuple):
            return tuple(move(t) for t in v)
        return v
    return {k: move(v) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------
# Checkpoints, seeds, logs
# ---------------------------------------------------------------------------------------------

def checkpoint_paths(out: Path) -> list[Path]:
    """Complete training checkpoints in ``out``, newest first (temp files of a killed write are not)."""
    folder = Path(out) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def load_training_state(path: Path) -> dict[str, Any]:
    """A training checkpoint, read with ``weights_only=True`` (tensors and plain values only), whose
    contents match the checksum it was written with (a damaged disk flips bytes that load fine)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file: one line, the caller tries an older one
        raise ZooError(f"cannot read training checkpoint {path}: {type(err).__name__}: "
                       f"{' '.join(str(err).split())[:200]}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ZooError(f"{path} is not an sslzoo training checkpoint")
    expected = state.pop("checksum", None)  # None: written before checkpoints carried one
    if expected is not None and nested_sha256(state) != expected:
        raise ZooError(f"training checkpoint {path} is damaged: its contents do not match its checksum")
    return state


def _save_checkpoint(out: Path, state: dict[str, Any], keep_last: int) -> Path:
    path = Path(out) / CHECKPOINT_DIR / f"step-{state['step']:08d}.pt"
    state = {**state, "checksum": nested_sha256(state)}  # verified by load_training_state
    atomic_write(path, lambda p: torch.save(state, p))
    for old in checkpoint_paths(out)[keep_last:]:
        old.unlink(missing_ok=True)
    for stale in path.parent.glob(".step-*.tmp"):  # left by a write that was killed
        stale.unlink(missing_ok=True)
    return path


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class JsonlLog:
    """Append-only metrics log; on resume, records past the restored step are dropped."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if rec.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def write(self, **record: Any) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")


def _build_optimizer(method: Method, recipe: Recipe) -> torch.optim.Optimizer:
    o = recipe.optimizer
    groups = []
    for g in method.parameter_groups():
        g = dict(g)
        g.setdefault("lr_scale", 1.0)
        g.setdefault("weight_decay", o.weight_decay)
        g["lr"] = o.lr * g["lr_scale"]
        groups.append(g)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)
    if o.name == "lars":  # SimCLR, BYOL: groups flagged lars=False take plain momentum steps
        from training.optim import LARS

        return LARS(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

@dataclass
class FitResult:
    out: Path
    model_dir: Path
    steps: int
    epochs: int
    seconds: float
    skipped: int
    metrics: dict[str, float]
    resumed_from: int | None


class Trainer:
    """One run of ``fit``, in steps: set up (``__init__``), ``resume_or_start``, ``run_epoch`` for each
    epoch (``train_step`` for each optimiser step, ``checkpoint`` every ``recipe.checkpoint_every``
    steps and at its end) and ``finish`` (evaluate, write ``OUT/model``)."""

    def __init__(self, method_cls: type[Method], recipe: Recipe, out: str | Path, data: str | None = None,
                 resume: bool = False, command: str = "", progress: bool = True):
        self.out, self.recipe, self.resume, self.command, self.progress = Path(out), recipe, resume, command, progress
        self.dist = d = init_distributed()
        data = data if data is not None else recipe.data
        if data is None:
            raise UsageError(f"recipe {recipe.method}/{recipe.name} needs training data: pass --data PATH "
                             f"({recipe.data_hint or 'see the recipe'})")
        self.existing = checkpoint_paths(self.out)
        if self.existing and not resume:
            raise UsageError(f"{self.out} already holds training checkpoints; pass --resume to continue that run "
                             "or choose another --out")
        self.micro = recipe.micro_batch(d.world_size)

        # Seed before building the model so that every rank starts from the same weights.
        seed_everything(recipe.seed)
        self.dataset = limit_dataset(open_dataset(data, "train"), recipe.limit, recipe.seed)
        self.method = method = method_cls(recipe).to(d.device)
        self.optimizer = _build_optimizer(method, recipe)
        self.precision, self.precision_reason = precision, reason = machine_precision(recipe.precision, d.device)
        if d.is_main and "emulated" in reason:
            click.echo(f"warning: precision bf16 {reason}; --precision auto would pick fp32", err=True)
        self.scaler = torch.amp.GradScaler(d.device.type, enabled=precision == "fp16")
        self.model: nn.Module = method
        if d.enabled:
            self.model = nn.parallel.DistributedDataParallel(
                method, device_ids=[d.device.index] if d.device.type == "cuda" else None,
                broadcast_buffers=False, find_unused_parameters=method.find_unused_parameters)
        self.autocast = (torch.autocast(d.device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
                         if precision in ("bf16", "fp16") else contextlib.nullcontext())
        self.ctx = FitContext(recipe, self.out, d, self.dataset, data)
        self.view = SampleView(self.dataset, method.train_transform(), recipe.seed)
        self.log = JsonlLog(self.out / LOG_NAME, d.is_main)
        if d.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.start_epoch, self.step_in_epoch, self.seconds_before = 0, 0, 0.0
        self.resumed_from: int | None = None
        self.epoch_indices: torch.Tensor | None = None
        self.last: dict[str, float] = {}  # the metrics of the last step
        self.t0 = time.perf_counter()

    def resume_or_start(self) -> None:
        """Resume from the newest checkpoint that loads (a broken one, which atomic writes make unlikely
        but disks can cause, is reported and the next older one is used), or start afresh."""
        for path in self.existing if self.resume else []:
            try:
                state = load_training_state(path)
            except ZooError as err:
                if self.dist.is_main:
                    click.echo(f"warning: {err}; trying an older checkpoint", err=True)
                continue
            self._restore(path, state)
            break
        else:
            if self.resume and self.dist.is_main:
                click.echo(f"no complete checkpoint in {self.out / CHECKPOINT_DIR}; starting from scratch")
            torch.manual_seed(self.recipe.seed + 1000 * self.dist.rank)  # per-rank streams (dropout, random heads)
            self.method.on_fit_start(self.ctx)
        self.log.truncate_after(self.ctx.step)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.t0 = time.perf_counter()

    def _restore(self, path: Path, state: dict[str, Any]) -> None:
        recipe, d, ctx = self.recipe, self.dist, self.ctx
        saved = json.loads(state["recipe"])  # checked on every rank, so that all of them stop together
        if saved.get("name") != recipe.name or saved.get("method") != recipe.method:
            raise UsageError(f"{path} was written by recipe {saved.get('method')}/{saved.get('name')}, "
                             f"not {recipe.method}/{recipe.name}; resume with that recipe or choose another --out")
        now = json.loads(json.dumps(recipe.to_dict(), default=str))
        changed = sorted(k for k in now if k != "epochs" and saved.get(k) != now[k])
        if changed and d.is_main:
            click.echo(f"warning: resuming with changed settings ({', '.join(changed)}); the result will differ "
                       "from an uninterrupted run", err=True)
        if state.get("precision", self.precision) != self.precision and d.is_main:
            click.echo(f"warning: the checkpoint's steps ran in {state['precision']}, these run in {self.precision} "
                       f"({self.precision_reason}); pass --precision {state['precision']} for the same weights as "
                       "an uninterrupted run", err=True)
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        ctx.step, self.start_epoch, self.step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
        self.seconds_before, ctx.skipped.skipped = state["seconds"], state["skipped"]
        self.epoch_indices = state.get("epoch_indices")
        rng = state["rng"]
        if len(rng) == d.world_size:
            torch.set_rng_state(rng[d.rank])
        else:
            click.echo(f"warning: resuming on {d.world_size} process(es), the checkpoint has {len(rng)}; "
                       "random streams are re-seeded, so the run will not be bit-identical", err=True)
            torch.manual_seed(recipe.seed + 1000 * d.rank + ctx.step)
        self.resumed_from = ctx.step
        if d.is_main:
            click.echo(f"resuming from {path} (epoch {self.start_epoch}, step {ctx.step})")

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t0

    def checkpoint(self, epoch: int, in_epoch: int) -> None:
        """Write a training checkpoint (on rank 0) from which ``resume_or_start`` continues at
        ``epoch``, ``in_epoch`` steps into it."""
        d = self.dist
        sync_batchnorm_stats(self.method, d)
        rngs = _all_gather(torch.get_rng_state(), d)
        if d.is_main:
            state = {
                "format": STATE_FORMAT, "step": self.ctx.step, "epoch": epoch, "step_in_epoch": in_epoch,
                "method": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "rng": rngs, "seconds": self.seconds(), "skipped": self.ctx.skipped.skipped,
                "recipe": json.dumps(self.recipe.to_dict(), default=str), "world_size": d.world_size,
                "precision": self.precision,
            }
            if self.epoch_indices is not None:
                state["epoch_indices"] = self.epoch_indices
            _save_checkpoint(self.out, state, self.recipe.keep_last)
        if d.enabled:
            dist.barrier()

    def _epoch_order(self, epoch: int) -> list[int]:
        """The dataset indices this rank visits in what is left of ``epoch``, in order."""
        recipe, d, ctx = self.recipe, self.dist, self.ctx
        if self.step_in_epoch == 0:
            self.method.on_epoch_start(ctx)
            chosen = self.method.epoch_indices(ctx)
            self.epoch_indices = None if chosen is None else torch.as_tensor(list(chosen), dtype=torch.long)
        pool = range(len(self.dataset)) if self.epoch_indices is None else range(len(self.epoch_indices))
        sampler = DistributedSampler(pool, num_replicas=d.world_size, rank=d.rank, shuffle=True,
                                     seed=recipe.seed, drop_last=True)
        sampler.set_epoch(epoch)
        order = list(sampler)
        if self.epoch_indices is not None:
            order = self.epoch_indices[order].tolist()
        per_step = self.micro * recipe.accumulate
        ctx.steps_per_epoch = len(order) // per_step
        if ctx.steps_per_epoch == 0:
            raise UsageError(f"{describe(self.dataset)} is too small for batch size {recipe.batch_size}: no full "
                             "batch per epoch; lower --batch-size or use more data")
        return order[self.step_in_epoch * per_step:ctx.steps_per_epoch * per_step]

    def run_epoch(self, epoch: int) -> None:
        """What is left of ``epoch``: its steps, its metrics, and the checkpoint at its end."""
        recipe, ctx = self.recipe, self.ctx
        ctx.epoch = epoch
        order = self._epoch_order(epoch)
        self.view.epoch = epoch
        bar = None
        if self.dist.is_main and self.progress and progress_wanted():  # a bar on a terminal only
            from tqdm import tqdm

            bar = tqdm(total=ctx.steps_per_epoch, initial=self.step_in_epoch,
                       desc=f"{recipe.method} epoch {epoch + 1}/{recipe.epochs}", unit="step", dynamic_ncols=True,
                       mininterval=1.0)
        self.method.train()
        loader = torch.utils.data.DataLoader(self.view, batch_size=self.micro, sampler=order,
                                             collate_fn=collate_skipping, num_workers=recipe.workers,
                                             persistent_workers=False)
        # Starting a loader draws a seed from torch's global generator. An uninterrupted run draws it
        # at the epoch's start, before the steps; a run resumed in the middle of the epoch restored
        # the generator as it was after the checkpointed step, so drawing again would shift every
        # later random number (NPID's noise draws, batched views): it draws from a fork instead.
        with torch.random.fork_rng(devices=[]) if self.step_in_epoch else contextlib.nullcontext():
            batches = iter(loader)
        sums: dict[str, float] = {}
        steps_run = 0
        for _ in range(self.step_in_epoch, ctx.steps_per_epoch):
            step_metrics = self.train_step(epoch, batches)
            for k, v in step_metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            steps_run += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in step_metrics.items()}, refresh=False)
            if ctx.step % recipe.log_every == 0:
                self.log.write(step=ctx.step, epoch=epoch, lr=self.optimizer.param_groups[0]["lr"], **step_metrics)
            if (recipe.checkpoint_every and ctx.step % recipe.checkpoint_every == 0
                    and self.step_in_epoch < ctx.steps_per_epoch):
                self.checkpoint(epoch, self.step_in_epoch)
        if bar is not None:
            bar.close()
        sync_batchnorm_stats(self.method, self.dist)
        epoch_metrics = self.method.on_epoch_end(ctx)
        self.log.write(event="epoch", step=ctx.step, epoch=epoch,
                       **{f"mean_{k}": v / max(steps_run, 1) for k, v in sums.items()}, **epoch_metrics)
        self.step_in_epoch = 0
        self.checkpoint(epoch + 1, 0)

    def train_step(self, epoch: int, batches) -> dict[str, float]:
        """One optimiser step over ``recipe.accumulate`` micro-batches; returns its metrics."""
        recipe, ctx, d = self.recipe, self.ctx, self.dist
        lr_factor = recipe.schedule.factor(epoch + self.step_in_epoch / ctx.steps_per_epoch, recipe.epochs)
        for g in self.optimizer.param_groups:
            g["lr"] = recipe.optimizer.lr * g["lr_scale"] * lr_factor
        step_metrics: dict[str, float] = {}
        for a in range(recipe.accumulate):
            batch = next(batches)
            ctx.skipped.skipped += batch.pop("skipped")
            sync = (self.model.no_sync() if d.enabled and a < recipe.accumulate - 1 else contextlib.nullcontext())
            with sync:
                if "x" in batch:
                    with self.autocast:
                        result = self.model(_to_device(batch, d.device))
                    loss = result["loss"].float()
                else:  # every image of this micro-batch was unreadable: contribute zero gradients
                    result, loss = {}, sum(p.sum() * 0.0 for p in self.params)
                if not torch.isfinite(loss):
                    raise ZooError(f"the loss became {loss.item()} at step {ctx.step + 1}; lower the learning "
                                   f"rate, or resume from an earlier checkpoint in {self.out / CHECKPOINT_DIR}")
                self.scaler.scale(loss / recipe.accumulate).backward()
            for k, v in result.items():
                step_metrics[k] = step_metrics.get(k, 0.0) + float(v.detach()) / recipe.accumulate
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        ctx.step += 1
        self.step_in_epoch += 1
        self.method.after_step(ctx)
        self.last = step_metrics
        return step_metrics

    def finish(self) -> FitResult:
        """Evaluate the trained method and write ``OUT/model`` (rank 0); every rank returns the result."""
        recipe, ctx, d, method = self.recipe, self.ctx, self.dist, self.method
        seconds = self.seconds()
        ctx.epoch = recipe.epochs
        method.eval()
        metrics = method.evaluate(ctx)
        total_skipped = sum(_all_gather(ctx.skipped.skipped, d)) if d.enabled else ctx.skipped.skipped
        digests = _all_gather(state_dict_sha256(method), d)
        model_dir = self.out / MODEL_DIR
        if d.is_main:
            training = {
                "method": recipe.method, "recipe": recipe.name, "command": self.command, "epochs": recipe.epochs,
                "steps": ctx.step, "seconds": round(seconds, 1), "data": describe(self.dataset),
                "metrics": {k: round(float(v), 4) for k, v in metrics.items()},
                "final": {k: round(v, 4) for k, v in self.last.items()}, "world_size": d.world_size,
                "seed": recipe.seed, "batch_size": recipe.batch_size, "skipped_images": total_skipped,
                "precision": self.precision, "precision_reason": self.precision_reason,
                "threads": torch.get_num_threads(), "cpu": cpu_name(),
                "hyperparameters": recipe.to_dict(),
            }
            method.pretrained_model().save_pretrained(model_dir, training=training)
            self.log.write(event="end", step=ctx.step, seconds=round(seconds, 1), skipped_images=total_skipped,
                           precision=self.precision, precision_reason=self.precision_reason,
                           threads=torch.get_num_threads(),
                           rank_digests=digests, **{f"eval_{k}": v for k, v in metrics.items()})
            click.echo(f"trained {recipe.method} ({recipe.name}) for {ctx.step} steps in {seconds:.0f} s; "
                       + (", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + "; " if metrics else "")
                       + f"skipped {total_skipped} unreadable image(s); checkpoint folder: {model_dir}")
        if d.enabled:
            dist.barrier()
        return FitResult(self.out, model_dir, ctx.step, recipe.epochs, seconds, total_skipped, metrics,
                         self.resumed_from)


def fit(method_cls: type[Method], recipe: Recipe, out: str | Path, data: str | None = None, resume: bool = False,
        command: str = "", progress: bool = True) -> FitResult:
    """Train ``method_cls`` with ``recipe``; write checkpoints, ``metrics.jsonl`` and ``OUT/model``.

    ``data`` overrides ``recipe.data`` (a ``--data`` string). Runs on one process, or on every
    process of a ``torchrun`` launch.
    """
    trainer = Trainer(method_cls, recipe, out, data=data, resume=resume, command=command, progress=progress)
    trainer.resume_or_start()
    for epoch in range(trainer.start_epoch, recipe.epochs):
        trainer.run_epoch(epoch)
    return trainer.finish()
