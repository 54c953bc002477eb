"""``zoo compress NAME --prune R``: CURL filter pruning of a ResNet that keeps its embedding.

After Luo and Wu, "Neural Network Pruning with Residual-Connections and Limited-Data" (CURL, arXiv
1911.08114, CVPR 2020). Facts used from the paper: channels are pruned both *inside* residual
blocks and *on the residual path itself* (all blocks of a stage share those channels, so one is
removed from every block of the stage at once, giving the "wallet" shape rather than an
hourglass); a filter's importance is the KL divergence between the network's output distribution
with and without it (a criterion on the output, comparable across layers); the pruned network is
recovered by distillation from the original on a small unlabelled image set, which CURL expands by
mixing images.

Our adaptation to embedding models, which have no softmax output: the "output distribution" of an
image is the softmax over its cosine similarities to the scoring images' embeddings (the unpruned
network's, at temperature 0.1), i.e. its neighbourhood, which is what retrieval and kNN read.
Removing a channel is simulated by zeroing its output (``channel_masks``), which is exactly what the
pruned network computes (tests/test_compress.py checks the equality). The last stage's residual
channels are never pruned, so the embedding keeps its width and the pruned network can mimic the
original embedding directly (training/distill.py's ``mimic``, L2 + LSH loss, with cutmix).

``--scope layer`` removes the same share of every group (predictable FLOPs); ``--scope global``
ranks every channel of every group together, as CURL does, keeping ``MIN_KEEP`` of each group.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import click
import torch
from torch import nn
from torch.nn import functional as F

from zoo.cli import NON_EMPTY, OutputPath
from zoo.errors import UsageError

MIN_KEEP = 0.1          # --scope global keeps at least this share of every group
TEMPERATURE = 0.1       # of the neighbourhood distribution whose KL scores a channel


@dataclass(frozen=True)
class ChannelGroup:
    """Channels removed together. ``zero_at``: modules whose outputs carry them (zeroing them there
    simulates their removal); ``stage``: the first feature stage to recompute; ``floor``: the fewest
    channels that may remain."""

    name: str
    size: int
    zero_at: tuple[str, ...]
    stage: str
    floor: int = 1


def network_kind(model: nn.Module) -> str:
    """"basic" (``SmallResNet``) or "bottleneck" (torchvision's Bottleneck ``ResNet``); else one line."""
    from zoo.backbones import ResNet, SmallResNet
    from torchvision.models.resnet import BasicBlock, Bottleneck

    if type(model) is SmallResNet and isinstance(model.layer1[0], BasicBlock):
        return "basic"
    if type(model) is ResNet and isinstance(model.layer1[0], Bottleneck):
        return "bottleneck"
    raise UsageError(f"{model.entry.name} is a {type(model).__name__}: zoo compress prunes the small ResNets "
                     "(resnet_small) and Bottleneck ResNets (resnet50); choose one of those models")


def stage_blocks(model: nn.Module) -> list[int]:
    return [len(getattr(model, f"layer{s}")) for s in range(1, 5)]


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """Every prunable group of a ResNet: the residual channels of stages 1-3 (in the small ResNet,
    stage 1's include the stem's, which feeds it without a shortcut conv) and the inside of every
    block (one group per inner convolution). Stage 4's residual channels are the embedding: kept."""
    kind, groups = network_kind(model), []
    for s, n in enumerate(stage_blocks(model), start=1):
        layer = getattr(model, f"layer{s}")
        if s < 4:
            blocks = tuple(f"layer{s}.{j}" for j in range(n))
            if kind == "basic":
                zero_at, stage = (("bn1",) if s == 1 else ()) + blocks, "stem" if s == 1 else f"layer{s}"
                floor = 1
            else:  # a width equal to the stem's would drop layer1's shortcut conv, and with it its keys
                zero_at, stage = blocks, f"layer{s}"
                floor = model.bn1.num_features + 1 if s == 1 else 1
            width = layer[0].bn2.num_features if kind == "basic" else layer[0].bn3.num_features
            groups.append(ChannelGroup(f"layer{s}.residual", width, zero_at, stage, floor))
        for j in range(n):
            inner = ("bn1",) if kind == "basic" else ("bn1", "bn2")
            for k, bn in enumerate(inner, start=1):
                size = getattr(layer[j], bn).num_features
                groups.append(ChannelGroup(f"layer{s}.{j}.inner{k}", size, (f"layer{s}.{j}.{bn}",), f"layer{s}"))
    return groups


# ---------------------------------------------------------------------------------------------
# Importance: KL divergence of the output distribution with a channel removed
# ---------------------------------------------------------------------------------------------


def neighbourhood_log_probs(emb: torch.Tensor, anchors: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """log softmax over cosine similarities of each row of ``emb`` to ``anchors`` / temperature."""
    return F.log_softmax(F.normalize(emb, dim=1) @ F.normalize(anchors, dim=1).T / temperature, dim=1)


def kl_importance(reference: torch.Tensor, changed: torch.Tensor) -> float:
    """Mean over rows of KL(p_reference || p_changed), both given as log-probabilities."""
    return float((reference.exp() * (reference - changed)).sum(1).mean())


@contextmanager
def channel_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> Iterator[None]:
    """Zero the channels ``masks[module_name]`` (an index tensor) of those modules' outputs."""
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(lambda m, i, out, idx=idx: out.index_fill(1, idx, 0.0))
               for name, idx in masks.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _pooled(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1) if x.dim() == 4 else x


@torch.no_grad()
def importance_scores(model: nn.Module, images: torch.Tensor, groups: Sequence[ChannelGroup],
                      log=lambda s: None) -> dict[str, torch.Tensor]:
    """For every channel of every group, ``kl_importance`` of the embedding's neighbourhood
    distribution with that channel removed. Each masked pass starts from the cached input of the
    group's first stage, so only the stages it changes are recomputed."""
    model.eval()
    model.check_input(images)
    stages = [(n, f) for n, f in model.stages() if n in model.feature_layers[:model.feature_layers.index(
        model.entry.embedding_layer or model.feature_layers[-1]) + 1]]
    inputs, x = {}, images
    for name, fn in stages:
        inputs[name] = x
        x = fn(x)
    reference_emb = _pooled(x)
    reference = neighbourhood_log_probs(reference_emb, reference_emb)
    start = {name: i for i, (name, _) in enumerate(stages)}
    scores: dict[str, torch.Tensor] = {}
    for group in groups:
        values = torch.empty(group.size)
        for c in range(group.size):
            idx = torch.tensor([c])
            with channel_masks(model, {name: idx for name in group.zero_at}):
                y = inputs[group.stage]
                for _, fn in stages[start[group.stage]:]:
                    y = fn(y)
            values[c] = kl_importance(reference, neighbourhood_log_probs(_pooled(y), reference_emb))
        scores[group.name] = values
        log(f"scored {group.name} ({group.size} channels): KL {float(values.min()):.2e} .. {float(values.max()):.2e}")
    return scores


# ---------------------------------------------------------------------------------------------
# Selection and the pruned network's description
# ---------------------------------------------------------------------------------------------


def select_channels(scores: dict[str, torch.Tensor], floors: dict[str, int], ratio: float,
                    scope: str = "layer", min_keep: float = MIN_KEEP) -> dict[str, list[int]]:
    """The channels kept in each group (sorted indices), removing the least important.

    ``layer``: ``round(size * ratio)`` from every group. ``global``: ``round(total * ratio)`` over all
    groups together, lowest score first, each group keeping ``max(floor, ceil(size * min_keep))``.
    A group never drops below its floor (nor below one channel)."""
    if not 0.0 <= ratio < 1.0:
        raise UsageError(f"--prune {ratio} must be in [0, 1): the share of channels to remove")
    if scope not in ("layer", "global"):
        raise UsageError(f"--scope {scope!r}: choose layer or global")
    removed: dict[str, set[int]] = {name: set() for name in scores}
    if scope == "layer":
        for name, values in scores.items():
            n = min(round(len(values) * ratio), len(values) - max(1, floors.get(name, 1)))
            removed[name] = set(torch.argsort(values, stable=True)[:max(0, n)].tolist())
    else:
        budget = round(sum(len(v) for v in scores.values()) * ratio)
        order = sorted(((float(v), name, c) for name, values in scores.items() for c, v in enumerate(values)))
        for _, name, c in order:
            if budget == 0:
                break
            size = len(scores[name])
            keep_at_least = max(1, floors.get(name, 1), math.ceil(size * min_keep))
            if size - len(removed[name]) > keep_at_least:
                removed[name].add(c)
                budget -= 1
    return {name: [c for c in range(len(values)) if c not in removed[name]] for name, values in scores.items()}


def pruned_arch_kwargs(arch_kwargs: dict[str, Any], kind: str, blocks: Sequence[int], widths: Sequence[int],
                       kept: dict[str, Sequence[int]]) -> dict[str, Any]:
    """The architecture arguments of the pruned network: residual ``widths`` of stages 1-3 from the
    kept residual channels (stage 4 unchanged), ``inner_widths`` per block, ``blocks`` unchanged."""
    new_widths = [len(kept[f"layer{s}.residual"]) if f"layer{s}.residual" in kept else widths[s - 1]
                  for s in range(1, 5)]
    per_block = 1 if kind == "basic" else 2
    inner = [[[len(kept[f"layer{s}.{j}.inner{k}"]) for k in range(1, per_block + 1)] for j in range(n)]
             for s, n in enumerate(blocks, start=1)]
    return {**arch_kwargs, "widths": new_widths, "inner_widths": inner, "blocks": list(blocks)}


def slicing_plan(kind: str, blocks: Sequence[int], kept: dict[str, Sequence[int]]) -> dict[str, tuple]:
    """For each module whose weights shrink: ``(kept output channels, kept input channels)``, each an
    index tensor or None (all)."""
    def idx(name):
        return torch.tensor(kept[name]) if name in kept else None

    res = {s: idx(f"layer{s}.residual") for s in range(1, 5)}
    stem = res[1] if kind == "basic" else None
    plan: dict[str, tuple] = {}
    if kind == "basic":
        plan["conv1"], plan["bn1"] = (stem, None), (stem, None)
    for s, n in enumerate(blocks, start=1):
        for j in range(n):
            p = f"layer{s}.{j}"
            block_in = res[s] if j else (res[s - 1] if s > 1 else stem)
            inner = [idx(f"{p}.inner{k}") for k in (1, 2)]
            if kind == "basic":
                plan.update({f"{p}.conv1": (inner[0], block_in), f"{p}.bn1": (inner[0], None),
                             f"{p}.conv2": (res[s], inner[0]), f"{p}.bn2": (res[s], None)})
            else:
                plan.update({f"{p}.conv1": (inner[0], block_in), f"{p}.bn1": (inner[0], None),
                             f"{p}.conv2": (inner[1], inner[0]), f"{p}.bn2": (inner[1], None),
                             f"{p}.conv3": (res[s], inner[1]), f"{p}.bn3": (res[s], None)})
            plan.update({f"{p}.downsample.0": (res[s], block_in), f"{p}.downsample.1": (res[s], None)})
    return plan


def slice_state(state: dict[str, torch.Tensor], plan: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """``state`` with each planned module's tensors cut to the kept output (dim 0) and input (dim 1)
    channels; BatchNorm's ``num_batches_tracked`` and unplanned modules are copied unchanged."""
    out = {}
    for key, t in state.items():
        module, _, leaf = key.rpartition(".")
        if module in plan and leaf != "num_batches_tracked":
            rows, cols = plan[module]
            if rows is not None:
                t = t.index_select(0, rows)
            if cols is not None and t.dim() >= 2:
                t = t.index_select(1, cols)
        out[key] = t.clone()
    return out


def prune_model(model: nn.Module, kept: dict[str, Sequence[int]]) -> nn.Module:
    """The pruned network: built from its arch_kwargs as the registry model, weights sliced in, loaded strictly."""
    from zoo.checkpoint import load_state_dict_strict
    from zoo.registry import create_model

    kind, blocks = network_kind(model), stage_blocks(model)
    widths = [channel_width(model, s) for s in range(1, 5)]
    arch_kwargs = pruned_arch_kwargs(dict(model.arch_kwargs), kind, blocks, widths, kept)
    pruned = create_model(model.entry.name, **arch_kwargs)
    load_state_dict_strict(pruned, slice_state(model.state_dict(), slicing_plan(kind, blocks, kept)), "pruned weights")
    return pruned.eval()


def channel_width(model: nn.Module, stage: int) -> int:
    """The residual width of ``stage`` (its blocks' output channels)."""
    block = getattr(model, f"layer{stage}")[0]
    return (block.bn3 if hasattr(block, "bn3") else block.bn2).num_features


def masks_for(groups: Sequence[ChannelGroup], kept: dict[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """The zeroing masks that simulate a pruning on the unpruned network (for checks and tests)."""
    masks: dict[str, torch.Tensor] = {}
    for g in groups:
        gone = [c for c in range(g.size) if c not in set(kept[g.name])]
        if gone:
            for name in g.zero_at:
                masks[name] = torch.tensor(gone)
    return masks


@click.command("compress")
@click.argument("name", type=NON_EMPTY)
@click.option("--prune", "ratio", type=click.FloatRange(0.0, 0.95), required=True,
              help="Share of the prunable channels to remove (e.g. 0.3, 0.5).")
@click.option("-o", "--out", type=OutputPath(file_okay=False, path_type=Path), required=True,
              help="New checkpoint folder (must not exist or be empty).")
@click.option("--data", type=NON_EMPTY, default=None, help="Unlabelled images (a --data string as for zoo train); "
              "default Fashion-MNIST train.")
@click.option("--images", type=click.IntRange(2, 1 << 20), default=512, show_default=True,
              help="The few unlabelled images that score channels and recover the network.")
@click.option("--score-images", type=click.IntRange(2, 1 << 16), default=128, show_default=True,
              help="How many of them score the channels (a forward pass per channel).")
@click.option("--scope", type=click.Choice(["layer", "global"]), default="layer", show_default=True,
              help="layer: the same share from every group; global: CURL's ranking over all channels.")
@click.option("--steps", type=click.IntRange(0, 1 << 24), default=600, show_default=True,
              help="Recovery steps (feature mimicking of the original; 0: none).")
@click.option("--batch-size", type=click.IntRange(2, 1 << 16), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(1e-7, 10.0), default=1e-3, show_default=True)
@click.option("--lsh-weight", type=click.FloatRange(0.0, 1000.0), default=1.0, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
def compress_cmd(name, ratio, out, data, images, score_images, scope, steps, batch_size, lr, lsh_weight, seed):
    """Prune NAME's channels by CURL's KL criterion, then recover by mimicking the original's embedding.

    NAME: a checkpoint folder, run folder, registry name or random:NAME. Writes a normal checkpoint
    of the same registry model with narrower arch_kwargs (widths, inner_widths), which
    zoo.from_pretrained, zoo export --onnx and zoo extract load like any other.
    """
    from training.cli import _command_line
    from training.distill import (HELD_OUT, MimicSettings, embedding_agreement, image_tensor, load_teacher, mimic,
                                  new_output_folder, parameter_count, save_checkpoint)

    log = lambda s: click.echo(s, err=True)  # noqa: E731
    new_output_folder(out)
    teacher = load_teacher(name, data, seed, min(images, HELD_OUT))
    groups = channel_groups(teacher)
    x = image_tensor(data, images, teacher.entry.input, seed=seed)
    scores = importance_scores(teacher, x[:score_images], groups, log)
    kept = select_channels(scores, {g.name: g.floor for g in groups}, ratio, scope)
    student = prune_model(teacher, kept)
    held_out = image_tensor(data, min(images, HELD_OUT), teacher.entry.input, seed=seed + 1, split="test")
    before = embedding_agreement(student, teacher, held_out)
    log(f"pruned {parameter_count(teacher):,} -> {parameter_count(student):,} parameters; widths "
        f"{student.arch_kwargs['widths']}; mean cosine to the original before recovery {before:.4f}")
    settings = MimicSettings(steps=steps, batch_size=batch_size, lr=lr, lsh_weight=lsh_weight, seed=seed)
    history = mimic(student, teacher, x, settings, log) if steps else {"steps": 0}
    after = embedding_agreement(student, teacher, held_out)
    log(f"mean cosine(pruned, original) on {len(held_out)} held-out images after recovery: {after:.4f}")
    save_checkpoint(student, out, compression={
        "method": "CURL pruning (KL importance, residual channels per stage, arXiv 1911.08114) + recovery by "
                  "feature mimicking (L2 + LSH)", "original": str(name), "prune": ratio, "scope": scope,
        "original_parameters": parameter_count(teacher), "parameters": parameter_count(student),
        "images": len(x), "score_images": min(score_images, len(x)), "data": data or "fmnist",
        "settings": settings.__dict__, **history, "cosine_to_original_before_recovery": round(before, 4),
        "cosine_to_original": round(after, 4), "command": _command_line()})
    click.echo(f"wrote {out}")
