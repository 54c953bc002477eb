"""``zoo distill TEACHER --student ARCH``: a smaller network that mimics the teacher's embedding.

Feature mimicking with the LSH loss of Wang, Ge and Wu, "Distilling Knowledge by Mimicking Features"
(arXiv 2011.01424, TPAMI 2022). Facts used from the paper: the student mimics the teacher's
penultimate feature (here: the embedding, the registry's embedding layer globally average-pooled,
what ``zoo extract`` and the retrieval index use), so no softmax or labels are needed; an L2 loss
on the features is joined by a locality-sensitive-hashing term: the features are projected on N
random hyperplanes, the signs of the teacher's projections are binary targets, and the student's
projections are trained towards them with binary cross-entropy. The L2 term ties the magnitude; the
LSH term cares only on which side of each hyperplane a feature lies, i.e. its *direction*, which is
what cosine retrieval and kNN read.

Our choices (not the paper's): the hyperplanes are Gaussian, drawn once from ``--seed``, and pass
through the mean teacher embedding of the distillation images (``hyperplane_bias``): embeddings
after ReLU and pooling all lie in the positive orthant, so planes through the origin would cut few
of them apart. The student keeps the teacher's embedding width (no connector layer), so its
checkpoint is a normal one of the teacher's registry model whose ``arch_kwargs`` differ: it loads,
exports and serves with the teacher's preprocessing and embedding layer.

The same loop, ``mimic``, is the recovery step of ``zoo compress`` (training/compress.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click
import torch
from torch import nn
from torch.nn import functional as F

from zoo.cli import NON_EMPTY, OutputPath
from zoo.errors import UsageError

HELD_OUT = 512  # test-split images (at most --images) on which the student's agreement is reported

# ---------------------------------------------------------------------------------------------
# The loss (pure functions)
# ---------------------------------------------------------------------------------------------


def lsh_hyperplanes(dim: int, count: int, seed: int = 0) -> torch.Tensor:
    """``(dim, count)`` Gaussian hyperplane normals, the same for a given seed."""
    return torch.randn(dim, count, generator=torch.Generator().manual_seed(seed))


def hyperplane_bias(normals: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Offsets that make every hyperplane pass through ``centre`` (``(centre @ w + b) = 0``)."""
    return -(centre @ normals)


def lsh_loss(student: torch.Tensor, teacher: torch.Tensor, normals: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the student's hyperplane projections against the teacher's sign bits.

    ``student`` and ``teacher`` are ``(N, D)``; a bit is 1 where the teacher lies on the positive
    side of a hyperplane (projection > 0). Averaged over images and hyperplanes."""
    bits = (teacher @ normals + bias > 0).to(student.dtype)
    return F.binary_cross_entropy_with_logits(student @ normals + bias, bits)


def mimic_loss(student: torch.Tensor, teacher: torch.Tensor, normals: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, lsh_weight: float = 1.0) -> torch.Tensor:
    """L2 feature mimicking (mean squared error) plus ``lsh_weight`` x ``lsh_loss`` (none when
    ``normals`` is None or the weight is 0)."""
    loss = F.mse_loss(student, teacher)
    if normals is not None and lsh_weight:
        loss = loss + lsh_weight * lsh_loss(student, teacher, normals, bias)
    return loss


def cutmix(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image with a random box pasted from another image of the batch (box side sqrt(1 - lam)
    of the image, lam ~ U(0, 1)): new, label-free inputs for mimicking, as CURL expands its small
    image set by mixing images. The teacher sees the same mixed image, so no label is mixed."""
    n, _, h, w = x.shape
    lam = float(torch.rand((), generator=generator))
    bh, bw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    if bh == 0 or bw == 0 or n < 2:
        return x
    top = int(torch.randint(0, h - bh + 1, (), generator=generator))
    left = int(torch.randint(0, w - bw + 1, (), generator=generator))
    other = torch.randperm(n, generator=generator)
    out = x.clone()
    out[:, :, top:top + bh, left:left + bw] = x[other, :, top:top + bh, left:left + bw]
    return out


# ---------------------------------------------------------------------------------------------
# Embeddings, images and the student's description
# ---------------------------------------------------------------------------------------------


def embedding(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's embedding as ``zoo extract`` computes it before L2 normalisation: the entry's
    embedding layer (the deepest by default), globally average-pooled when spatial."""
    layer = getattr(model.entry, "embedding_layer", "") or model.feature_layers[-1]
    out = model.forward_features(x, [layer])[layer]
    return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1) if out.dim() == 4 else out


def image_tensor(data: str | None, images: int, spec, seed: int = 0, split: str = "train") -> torch.Tensor:
    """``images`` images of ``data`` (a ``--data`` string; default Fashion-MNIST), a fixed random
    subset of ``split`` (the train split where the data has no other), preprocessed for ``spec``."""
    from training.data import DataError, SampleView, iterate_batches, limit_dataset, open_dataset
    from training.transforms import eval_transform

    try:
        dataset = open_dataset(data or "fmnist", split, single_image_length=images)
    except DataError:
        dataset = open_dataset(data or "fmnist", "train", single_image_length=images)
    view = SampleView(limit_dataset(dataset, images, seed=seed), eval_transform(spec), seed=seed)
    return torch.cat([b["x"] for b in iterate_batches(view, 256)])


def parse_student(spec: str, teacher_arch: str) -> dict[str, Any]:
    """``ARCH[:key=v[,v...][;key=...]]`` -> the architecture arguments that override the teacher's.

    ARCH must be the teacher's architecture: the student is saved as a checkpoint of the teacher's
    registry model (its preprocessing and embedding layer), which fixes the architecture family.
    Values are integers or comma-separated integer lists, e.g.
    ``resnet_small:widths=8,16,32,128;blocks=1,1,1,1``."""
    arch, _, rest = spec.partition(":")
    if arch.strip() != teacher_arch:
        raise UsageError(f"--student {spec!r}: the student must be a {teacher_arch!r} (the teacher's architecture) "
                         f"with other arguments, e.g. {teacher_arch}:widths=8,16,32,128")
    kwargs: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(";"))):
        key, eq, value = item.partition("=")
        try:
            numbers = [int(v) for v in value.split(",")]
        except ValueError:
            numbers = []
        if not eq or not key.strip() or not numbers:
            raise UsageError(f"--student {spec!r}: {item!r} is not key=INT[,INT...]; e.g. widths=8,16,32,128")
        kwargs[key.strip()] = numbers if "," in value else numbers[0]
    return kwargs


# ---------------------------------------------------------------------------------------------
# The mimicking loop, shared with zoo compress
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MimicSettings:
    steps: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    lsh_weight: float = 1.0
    lsh_planes: int = 0           # 0: four per embedding dimension
    cutmix: float = 0.5           # share of batches that are mixed
    seed: int = 0


def mimic(student: nn.Module, teacher: nn.Module, images: torch.Tensor, settings: MimicSettings,
          log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Train ``student`` so that its embedding matches ``teacher``'s on ``images`` (and cutmixes of
    them): AdamW with a cosine learning rate, random flips, ``mimic_loss``. Returns the history."""
    generator = torch.Generator().manual_seed(settings.seed)
    teacher.eval()
    with torch.no_grad():
        centre = torch.cat([embedding(teacher, images[i:i + 256]) for i in range(0, len(images), 256)]).mean(0)
    planes = settings.lsh_planes or 4 * centre.numel()
    normals = lsh_hyperplanes(centre.numel(), planes, settings.seed) if settings.lsh_weight else None
    bias = hyperplane_bias(normals, centre) if normals is not None else None
    opt = torch.optim.AdamW(student.parameters(), lr=settings.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / settings.steps)))
    student.train()
    losses, start = [], time.perf_counter()
    for step in range(settings.steps):
        idx = torch.randint(0, len(images), (min(settings.batch_size, len(images)),), generator=generator)
        x = images[idx]
        flip = torch.rand(len(x), generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if float(torch.rand((), generator=generator)) < settings.cutmix:
            x = cutmix(x, generator)
        with torch.no_grad():
            target = embedding(teacher, x)
        loss = mimic_loss(embedding(student, x), target, normals, bias, settings.lsh_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, settings.steps // 10) == 0 or step + 1 == settings.steps:
            log(f"step {step + 1}/{settings.steps}: loss {sum(losses[-20:]) / len(losses[-20:]):.4f}")
    student.eval()
    return {"steps": settings.steps, "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
            "lsh_planes": planes if normals is not None else 0, "seconds": round(time.perf_counter() - start, 1)}


@torch.no_grad()
def embedding_agreement(student: nn.Module, teacher: nn.Module, images: torch.Tensor) -> float:
    """Mean cosine similarity between the student's and the teacher's embeddings of ``images``."""
    student.eval()
    teacher.eval()
    s = torch.cat([embedding(student, images[i:i + 256]) for i in range(0, len(images), 256)])
    t = torch.cat([embedding(teacher, images[i:i + 256]) for i in range(0, len(images), 256)])
    return float(F.cosine_similarity(s, t, dim=1).mean())


def load_teacher(name_or_dir: str, data: str | None, seed: int = 0, images: int = 512) -> nn.Module:
    """A checkpoint folder, run folder, registry name / Hub id (published weights) or ``random:NAME``
    (random weights, BatchNorm statistics measured on ``images`` of ``data``: for speed measurements)."""
    from training.data import open_dataset
    from training.evaluation import calibrate_batchnorm, load_model

    loaded = load_model(name_or_dir, seed=seed)
    model = loaded.model
    if loaded.source == "random-init":
        model = calibrate_batchnorm(model, open_dataset(data or "fmnist", "train", single_image_length=images),
                                    images=images)
    return model.eval()


def new_output_folder(out: Path) -> Path:
    """``out`` resolved, refused in one line if it holds anything: nothing already written is replaced.
    Checked before any work, and again before writing."""
    from zoo.fileset import check_output_folder

    out = check_output_folder(out, "--out")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} already exists and is not empty; name a new folder")
    return out


def save_checkpoint(model: nn.Module, out: Path, **extra: Any) -> Path:
    """Write ``model`` as a checkpoint folder at ``out`` (``new_output_folder``: nothing is replaced).
    ``save_pretrained`` writes the weights first and config.json last, each atomically, so a folder
    with a config is complete; the card names the folder itself."""
    out = new_output_folder(out)
    model.save_pretrained(out, **extra)
    return out


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@click.command("distill")
@click.argument("teacher", type=NON_EMPTY)
@click.option("--student", "student_spec", type=NON_EMPTY, required=True,
              help="ARCH[:key=v,v;key=v]: the teacher's architecture with other arguments, keeping the embedding "
                   "width, e.g. resnet_small:widths=8,16,32,128;blocks=1,1,1,1.")
@click.option("-o", "--out", type=OutputPath(file_okay=False, path_type=Path), required=True,
              help="New checkpoint folder (must not exist or be empty).")
@click.option("--data", type=NON_EMPTY, default=None, help="Unlabelled images (a --data string as for zoo train); "
              "default Fashion-MNIST train.")
@click.option("--images", type=click.IntRange(2, 1 << 24), default=5000, show_default=True,
              help="Fixed random subset of --data to mimic on.")
@click.option("--steps", type=click.IntRange(1, 1 << 24), default=2000, show_default=True)
@click.option("--batch-size", type=click.IntRange(2, 1 << 16), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(1e-7, 10.0), default=2e-3, show_default=True)
@click.option("--lsh-weight", type=click.FloatRange(0.0, 1000.0), default=1.0, show_default=True,
              help="Weight of the LSH term beside the L2 term (0: plain L2 mimicking).")
@click.option("--lsh-planes", type=click.IntRange(0, 1 << 16), default=0,
              help="Random hyperplanes (default: 4 per embedding dimension).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
def distill_cmd(teacher, student_spec, out, data, images, steps, batch_size, lr, lsh_weight, lsh_planes, seed):
    """Train a smaller STUDENT to mimic TEACHER's embedding (L2 + LSH loss, arXiv 2011.01424).

    TEACHER: a checkpoint folder, run folder, registry name or random:NAME. The student is written
    as a checkpoint of the teacher's registry model with its own arch_kwargs: zoo.from_pretrained,
    zoo export --onnx and zoo extract load it like any other.
    """
    from zoo.registry import create_model

    log = lambda s: click.echo(s, err=True)  # noqa: E731
    new_output_folder(out)
    teacher_model = load_teacher(teacher, data, seed, min(images, HELD_OUT))
    overrides = parse_student(student_spec, teacher_model.entry.arch)
    arch_kwargs = {**dict(teacher_model.arch_kwargs), **overrides}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = create_model(teacher_model.entry.name, **arch_kwargs)
    x = image_tensor(data, images, teacher_model.entry.input, seed=seed)
    dims = embedding(teacher_model, x[:2]).shape[1], embedding(student.eval(), x[:2]).shape[1]
    if dims[0] != dims[1]:
        raise UsageError(f"--student {student_spec!r} has a {dims[1]}-d embedding, the teacher {dims[0]}-d; keep the "
                         "last stage's width so that the student's embedding replaces the teacher's")
    settings = MimicSettings(steps=steps, batch_size=batch_size, lr=lr, lsh_weight=lsh_weight,
                             lsh_planes=lsh_planes, seed=seed)
    log(f"distilling {teacher} ({parameter_count(teacher_model):,} parameters) into {student_spec} "
        f"({parameter_count(student):,}) on {len(x)} images")
    history = mimic(student, teacher_model, x, settings, log)
    held_out = image_tensor(data, min(images, HELD_OUT), teacher_model.entry.input, seed=seed + 1, split="test")
    agreement = embedding_agreement(student, teacher_model, held_out)
    log(f"mean cosine(student, teacher) on {len(held_out)} held-out images: {agreement:.4f}")
    from training.cli import _command_line

    save_checkpoint(student, out, compression={
        "method": "distill (feature mimicking, L2 + LSH, arXiv 2011.01424)", "teacher": str(teacher),
        "teacher_parameters": parameter_count(teacher_model), "parameters": parameter_count(student),
        "images": len(x), "data": data or "fmnist", "settings": settings.__dict__, **history,
        "cosine_to_teacher": round(agreement, 4), "command": _command_line()})
    click.echo(f"wrote {out}")
