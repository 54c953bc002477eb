"""``zoo report MODEL -o DIR``: pictures of a trained model (PNG) and one HTML page that shows them.

MODEL is a training run folder, a checkpoint folder or a registry name. Each picture is one part,
made from what MODEL has; a part that needs what it lacks (a shipped model has no metrics.jsonl)
is skipped with one line that says why, and the page lists it:

* ``training_curves.png``: every logged step metric (loss, accuracies, learning rate) over the
  optimiser steps, with the epoch means as dots (``metrics.jsonl`` of a run).
* ``clustering.png``: for the clustering methods, the NMI of each clustering over the epochs and
  the cluster-size histogram of the first and the last clustering (``metrics.jsonl``).
* ``probe_curves.png``: per-layer scores of each evaluation protocol beside the random-init
  baseline of the same architecture, as recorded by ``zoo eval --record`` for these weights (or
  given with ``--results``, a ``zoo eval --json-out`` file). Nothing is evaluated here.
* ``conv1_filters.png``: the first learned convolution's filters, beside those of a random-init
  network of the same architecture (the figure the papers show).
* ``retrieval_grid.png``: queries of the copy-detection benchmark (``training.retrieval_benchmark``)
  with their top hits under the model's embedding, the true original framed in green.

The figures are drawn with matplotlib's Agg backend (``pip install 'sslzoo[report]'``).
"""

from __future__ import annotations

import html
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import click
import numpy as np
import torch
from torch import nn

from training.clustering import CLUSTER_SIZES_KEY
from zoo.cli import NON_EMPTY, OutputPath, complete_model_or_path
from zoo.errors import UsageError, ZooError
from zoo.fileset import atomic_write, atomic_write_text, read_json

PAGE_NAME = "index.html"
CLUSTERING_METHODS = ("deepcluster", "sela", "deepercluster", "iic")
PARTS = ("curves", "clustering", "probes", "filters", "retrieval")
CARD_PARTS = ("filters", "retrieval", "probes")  # what `--all` draws for the model cards
# (queries, hits per query, inches per tile, PNG colours) of the retrieval grid, per benchmark part:
# photographs (gravel, brick, stars) compress poorly, so fewer, smaller tiles in fewer colours keep
# the pictures beside the cards under 80 KB each.
GRID_SHAPE = {"fmnist": (6, 5, 1.25, 256), "photos": (4, 4, 1.0, 64)}
GRID_DATABASE = 500  # database images the grid's queries search: seconds of features on two cores, not minutes
DPI = 80


# ---------------------------------------------------------------------------------------------
# What the report is about
# ---------------------------------------------------------------------------------------------

@dataclass
class Subject:
    """The model a report describes and what is known about it."""

    spec: str                       # as the user gave it
    name: str                       # registry name
    method: str
    model: nn.Module
    sha256: str | None              # of the weights, when a checkpoint config records it
    run_dir: Path | None            # the training run folder, when there is one (metrics.jsonl)
    results: dict[str, Any] | None  # evaluation results measured on these weights
    results_source: str = ""        # where they come from, for the captions


def find_run_dir(spec: str) -> Path | None:
    """The training run folder ``spec`` names: itself, or the run its ``model/`` folder belongs to."""
    path = Path(spec)
    from training.engine import LOG_NAME, MODEL_DIR

    if (path / LOG_NAME).is_file():
        return path
    if path.name == MODEL_DIR and (path.parent / LOG_NAME).is_file():
        return path.parent
    return None


def results_for(name: str, sha256: str | None, cards_dir: str | os.PathLike | None,
                results_file: str | os.PathLike | None) -> tuple[dict[str, Any] | None, str]:
    """Evaluation results of these weights and where they come from: ``results_file`` (a ``zoo eval
    --json-out`` file) when given, else the recorded ``CARDS/results/<name>.json`` when it was
    measured on weights with this sha256; (None, why not) otherwise."""
    from zoo.results import load_results, measured_on, results_path

    if results_file is not None:
        data = read_json(Path(results_file), UsageError, "give the JSON file `zoo eval --json-out FILE` wrote")
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise UsageError(f"{results_file} holds no \"results\" list; give a file `zoo eval --json-out` wrote")
        if sha256 is not None and not measured_on(data, sha256):
            raise UsageError(f"{results_file} was measured on other weights than {name}'s here; give the file "
                             "`zoo eval` wrote for these weights")
        return data, str(results_file)
    recorded = load_results(name, cards_dir)
    where = results_path(name, cards_dir)
    if recorded is None:
        return None, f"no results recorded for {name} in {where.parent}"
    if sha256 is None or not measured_on(recorded, sha256):
        return None, f"the results recorded in {where} were measured on other weights"
    return recorded, str(where)


def open_subject(spec: str, cards_dir: str | os.PathLike | None = None,
                 results_file: str | os.PathLike | None = None) -> Subject:
    from training.evaluation import load_model

    loaded = load_model(spec)
    if loaded.source == "random-init":
        raise UsageError(f"{spec} has random weights; report on a run, a checkpoint folder or a registry name")
    config = loaded.config or {}
    sha256 = (config.get("weights") or {}).get("sha256")
    training = config.get("training") or {}
    method = training.get("method") or loaded.model.entry.method
    results, source = results_for(loaded.name, sha256, cards_dir, results_file)
    return Subject(spec, loaded.name, method, loaded.model.eval(), sha256, find_run_dir(spec), results, source)


# ---------------------------------------------------------------------------------------------
# metrics.jsonl
# ---------------------------------------------------------------------------------------------

def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``; a line cut short by a kill is left out."""
    from training.engine import LOG_NAME

    records = []
    for line in (run_dir / LOG_NAME).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def step_series(records: Sequence[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """Each metric of the step records (those without an ``event``): (steps, values), in log order."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for r in records:
        if "event" in r or not _is_number(r.get("step")):
            continue
        for key, value in r.items():
            if key not in ("step", "epoch") and _is_number(value):
                steps, values = series.setdefault(key, ([], []))
                steps.append(int(r["step"]))
                values.append(float(value))
    return series


def epoch_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("event") == "epoch"]


def epoch_series(records: Sequence[dict[str, Any]], keep: Callable[[str], bool]) -> dict[str, tuple[list[int], list[float]]]:
    """Each epoch metric whose name ``keep`` accepts: (epoch numbers from 1, values)."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for r in epoch_records(records):
        for key, value in r.items():
            if keep(key) and _is_number(value):
                epochs, values = series.setdefault(key, ([], []))
                epochs.append(int(r.get("epoch", len(epochs))) + 1)
                values.append(float(value))
    return series


def size_bin_labels(count: int) -> list[str]:
    """Labels of the doubling bins of ``training.clustering.cluster_size_log2_histogram``."""
    labels = ["0"]
    for i in range(1, count):
        lo, hi = 2 ** (i - 1), 2 ** i - 1
        labels.append(str(lo) if lo == hi else f"{lo}-{hi}")
    return labels


# ---------------------------------------------------------------------------------------------
# Filters and retrieval
# ---------------------------------------------------------------------------------------------

def first_learned_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first convolution that learned from the images: fixed front ends (DeepCluster's Sobel
    filters, 1x1 colour mixing) are passed over."""
    for name, module in model.named_modules():
        if (isinstance(module, nn.Conv2d) and max(module.kernel_size) > 1 and "sobel" not in name
                and module.weight.requires_grad):
            return name, module
    raise UsageError(f"{getattr(model.entry, 'name', 'the model')} has no convolution to draw")


def filter_tiles(weight: torch.Tensor) -> np.ndarray:
    """(filters, H, W, 3) images of conv filters in [0, 1]: RGB for three input channels, else the
    input channels side by side in grey; each filter scaled by its own largest |weight|, so that
    mid-grey is zero."""
    w = weight.detach().float().cpu()
    w = w / w.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    w = (w + 1) / 2
    if w.shape[1] == 3:
        return w.permute(0, 2, 3, 1).numpy()
    side_by_side = torch.cat(list(w.unbind(1)), dim=2)  # (filters, H, W * channels)
    return side_by_side.unsqueeze(-1).expand(-1, -1, -1, 3).numpy()


def benchmark_part_for(model: nn.Module) -> str:
    """The part of the copy-detection benchmark a model is measured on: photos for the models trained
    on the shipped photos, Fashion-MNIST for the others."""
    return "photos" if "photo" in model.entry.pretrain_data.lower() else "fmnist"


def top_hits(query_x: np.ndarray, database_x: np.ndarray, hits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query row, the ``hits`` database rows of highest cosine similarity, best first, and those
    similarities."""
    from training.retrieval_benchmark import l2_normalise

    sims = l2_normalise(query_x) @ l2_normalise(database_x).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :hits]
    return order, np.take_along_axis(sims, order, axis=1)


def grid_database(originals: Sequence[int], total: int, size: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``size`` of the ``total`` database images: the ``originals`` of the grid's
    queries and a seeded random draw of the others (all of them when ``total <= size``)."""
    if total <= size:
        return np.arange(total)
    originals = np.unique(np.asarray(originals, dtype=np.int64))
    others = np.setdiff1d(np.arange(total), originals)
    drawn = np.random.default_rng(seed).choice(others, size - len(originals), replace=False)
    return np.sort(np.concatenate([originals, drawn]))


def spread_indices(total: int, count: int) -> np.ndarray:
    """``count`` indices spread evenly over ``range(total)`` (queries from every photo, not one)."""
    return np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))


# ---------------------------------------------------------------------------------------------
# The parts: each draws one picture, or says why it cannot
# ---------------------------------------------------------------------------------------------

class Skip(Exception):
    """A part that cannot be drawn for this model; the message says why, in a few words."""


@dataclass
class Picture:
    file: str
    title: str
    caption: str


def _figure(rows: int, cols: int, width: float, height: float):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
    return fig, axes


def png_bytes(fig, colours: int = 256) -> bytes:
    """The figure as a PNG of at most ``colours`` colours (half the bytes of full colour or less, for
    pictures committed beside the model cards), with no version stamp: the same figure gives the
    same bytes."""
    from PIL import Image

    drawn = io.BytesIO()
    fig.savefig(drawn, format="png", dpi=DPI)
    drawn.seek(0)
    image = Image.open(drawn).convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    packed = io.BytesIO()
    image.save(packed, format="png", optimize=True)
    return packed.getvalue()


def _save(fig, path: Path, colours: int = 256) -> None:
    import matplotlib.pyplot as plt

    try:
        data = png_bytes(fig, colours)
    finally:
        plt.close(fig)
    atomic_write(path, lambda p: p.write_bytes(data))


def draw_training_curves(subject: Subject, out: Path) -> Picture:
    if subject.run_dir is None:
        raise Skip("no metrics.jsonl: give a training run folder")
    records = read_metrics(subject.run_dir)
    series = step_series(records)
    if not series:
        raise Skip(f"{subject.run_dir / 'metrics.jsonl'} holds no step metrics")
    means = epoch_records(records)
    cols = min(3, len(series))
    rows = math.ceil(len(series) / cols)
    fig, axes = _figure(rows, cols, 4.0 * cols, 2.6 * rows)
    for ax, (key, (steps, values)) in zip(axes.flat, sorted(series.items(), key=lambda kv: (kv[0] == "lr", kv[0]))):
        ax.plot(steps, values, lw=0.8, color="tab:blue", alpha=0.6, label="logged steps")
        dots = [(r["step"], r[f"mean_{key}"]) for r in means if _is_number(r.get(f"mean_{key}"))]
        if dots:
            ax.plot(*zip(*dots), "o", ms=4, color="tab:red", label="epoch mean")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if key == "lr":
            ax.set_ylim(bottom=0)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{subject.method}: training curves", fontsize=11)
    fig.tight_layout()
    _save(fig, out / "training_curves.png")
    return Picture("training_curves.png", "Training curves",
                   f"Every metric logged every {_log_every(series)} steps in {subject.run_dir / 'metrics.jsonl'}, "
                   "over the optimiser steps; red dots: the mean over each epoch.")


def _log_every(series: dict[str, tuple[list[int], list[float]]]) -> str:
    steps = next(iter(series.values()))[0]
    gaps = sorted({b - a for a, b in zip(steps, steps[1:]) if b > a})
    return str(gaps[0]) if gaps else "few"


def draw_clustering(subject: Subject, out: Path) -> Picture:
    from matplotlib.ticker import MaxNLocator

    if subject.method not in CLUSTERING_METHODS:
        raise Skip(f"{subject.method} is not a clustering method ({', '.join(CLUSTERING_METHODS)})")
    if subject.run_dir is None:
        raise Skip("no metrics.jsonl: give a training run folder")
    records = read_metrics(subject.run_dir)
    nmis = epoch_series(records, lambda k: k.startswith("nmi"))
    sizes = [(int(r.get("epoch", 0)) + 1, r[CLUSTER_SIZES_KEY]) for r in epoch_records(records)
             if isinstance(r.get(CLUSTER_SIZES_KEY), list)]
    if not nmis and not sizes:
        raise Skip(f"{subject.method} logs no clustering per epoch in this run (IIC scores its head only at the "
                   "end; runs before the cluster sizes were logged have none)")
    fig, axes = _figure(1, 2, 9.0, 3.2)
    ax = axes[0, 0]
    for key, (epochs, values) in sorted(nmis.items()):
        ax.plot(epochs, values, "o-", ms=4, label=key)
    ax.set_title("NMI of each clustering", fontsize=10)
    ax.set_xlabel("epoch", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, 1)
    if nmis:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no NMI logged", ha="center", va="center", transform=ax.transAxes)
    ax = axes[0, 1]
    if sizes:
        shown = [sizes[0]] if len(sizes) == 1 else [sizes[0], sizes[-1]]
        width = max(len(h) for _, h in shown)
        x = np.arange(width)
        for i, (epoch, hist) in enumerate(shown):
            counts = np.zeros(width)
            counts[:len(hist)] = hist
            ax.bar(x + (i - (len(shown) - 1) / 2) * 0.4, counts, width=0.4, label=f"epoch {epoch}")
        ax.set_xticks(x, size_bin_labels(width), rotation=45, fontsize=7)
        ax.set_xlabel("images in the cluster", fontsize=8)
        ax.set_ylabel("clusters", fontsize=8)
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "cluster sizes not logged in this run", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("cluster sizes", fontsize=10)
    fig.suptitle(f"{subject.method}: clustering over training", fontsize=11)
    fig.tight_layout()
    _save(fig, out / "clustering.png")
    return Picture("clustering.png", "Clustering",
                   "Left: the NMI of each clustering against the true labels (nmi_labels) and against the clustering "
                   "before (nmi_previous), as metrics.jsonl logs them. Right: how many clusters hold how many images, "
                   "in doubling bins, at the first and the last clustering.")


def draw_probe_curves(subject: Subject, out: Path) -> Picture:
    if subject.results is None:
        raise Skip(f"{subject.results_source}; evaluate with `zoo eval {subject.spec} --protocol all --json-out FILE` "
                   "and pass --results FILE")
    order = list(subject.model.feature_layers)
    curves = [r for r in subject.results["results"] if isinstance(r, dict) and len(r.get("per_layer") or {}) > 1]
    if not curves:
        raise Skip(f"{subject.results_source} holds no per-layer scores")
    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = _figure(rows, cols, 3.6 * cols, 2.7 * rows)
    for ax, r in zip(axes.flat, curves):
        layers = [n for n in order if n in r["per_layer"]] or list(r["per_layer"])
        x = np.arange(len(layers))
        ax.plot(x, [r["per_layer"][n] for n in layers], "o-", color="tab:blue", label=subject.name.split("_")[0])
        base = (r.get("baseline_per_layer") or {}).get("random-init") or {}
        if base:
            ax.plot(x, [base.get(n, np.nan) for n in layers], "s--", color="tab:gray", label="random init")
        ax.set_xticks(x, layers, fontsize=7)
        ax.set_title(f"{r.get('protocol_id') or r['task']}: {r['metric']} (%)", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.suptitle(f"{subject.name}: per-layer scores ({_seeds_text(curves[0])})", fontsize=10)
    fig.tight_layout()
    _save(fig, out / "probe_curves.png")
    return Picture("probe_curves.png", "Per-layer evaluation",
                   f"Each protocol's test score at each feature layer ({_seeds_text(curves[0])}), beside random-init "
                   f"networks of the same architecture; from {subject.results_source}, made by "
                   f"`{curves[0].get('command', 'zoo eval')}`.")


def _seeds_text(r: dict[str, Any]) -> str:
    seeds = r.get("seeds") or []
    return f"mean over training seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else "one training run"


def draw_conv1_filters(subject: Subject, out: Path) -> Picture:
    from training.evaluation import random_init

    layer, conv = first_learned_conv(subject.model)
    baseline = random_init(subject.name, dict(getattr(subject.model, "arch_kwargs", {})), seed=0)
    base_conv = dict(baseline.named_modules())[layer]
    panels = [(subject.name, filter_tiles(conv.weight)), ("random init (seed 0)", filter_tiles(base_conv.weight))]
    count = len(panels[0][1])
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    tile_w = panels[0][1].shape[2] / panels[0][1].shape[1]
    fig, axes = _figure(rows, 2 * cols + 1, 0.55 * (2 * cols + 1) * tile_w, 0.55 * rows + 0.6)
    for panel, (label, tiles) in enumerate(panels):
        for i in range(rows * cols):
            ax = axes[i // cols, panel * (cols + 1) + i % cols]
            ax.axis("off")
            if i < count:
                ax.imshow(tiles[i], interpolation="nearest", vmin=0, vmax=1)
        axes[0, panel * (cols + 1) + cols // 2].set_title(label, fontsize=8)
    for r in range(rows):
        axes[r, cols].axis("off")
    k = "x".join(map(str, conv.kernel_size))
    fig.suptitle(f"{layer}: {count} filters {conv.in_channels}x{k}", fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.45 / (0.55 * rows + 0.6), wspace=0.08,
                        hspace=0.08)
    _save(fig, out / "conv1_filters.png")
    channels = ("in RGB" if conv.in_channels == 3
                else "one grey tile per input channel" if conv.in_channels > 1 else "in grey")
    return Picture("conv1_filters.png", "First-layer filters",
                   f"The {count} filters of `{layer}` ({conv.in_channels} input channel(s), {k}), {channels}, each "
                   "scaled by its largest |weight| (mid-grey is zero); right: the same layer of a random-init "
                   "network (seed 0).")


def draw_retrieval_grid(subject: Subject, out: Path) -> Picture:
    from training.data import ImageList
    from training.evaluation import embedding_layer, extract_features, global_pool
    from training.retrieval_benchmark import single_part_benchmark

    model = subject.model
    part = benchmark_part_for(model)
    bench = single_part_benchmark(part, "test", seed=0)
    queries_shown, hits, tile, colours = GRID_SHAPE[part]
    chosen = spread_indices(len(bench.queries), queries_shown)
    originals = [int(bench.positives[q][0]) for q in chosen]
    searched = grid_database(originals, len(bench.database), GRID_DATABASE)
    layer = embedding_layer(model, model.feature_layers)
    pool = {layer: global_pool() if len(_shape(model, layer)) == 3 else nn.Identity()}

    def features(images: list[np.ndarray]) -> np.ndarray:
        return extract_features(model, ImageList(images, range(len(images)), "report"), [layer], pool)[0][layer].numpy()

    query_x = features([bench.queries.images[q] for q in chosen])
    database_x = features([bench.database.images[i] for i in searched])
    order, sims = top_hits(query_x, database_x, hits)
    fig, axes = _figure(len(chosen), hits + 1, tile * (hits + 1), (tile + 0.15) * len(chosen) + 0.3)
    for row, q in enumerate(chosen):
        _show(axes[row, 0], bench.queries.images[q], "query" if row == 0 else "", None)
        for col in range(hits):
            hit = int(searched[order[row, col]])
            _show(axes[row, col + 1], bench.database.images[hit], f"{sims[row, col]:.2f}",
                  "tab:green" if hit == originals[row] else "tab:red")
    fig.suptitle(f"{subject.name}: copy detection, top {hits} ({layer})", fontsize=9)
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - 0.3 / ((tile + 0.15) * len(chosen) + 0.3)))
    _save(fig, out / "retrieval_grid.png", colours)
    source = ("Fashion-MNIST test images" if part == "fmnist" else "the shipped photos")
    searched_text = (f"all {len(searched):,} database images" if len(searched) == len(bench.database) else
                     f"{len(searched):,} of the benchmark's {len(bench.database):,} database images (the queries' "
                     "originals and a random draw of the others; the benchmark's mAP searches them all)")
    return Picture("retrieval_grid.png", "Retrieval",
                   f"{len(chosen)} of the {len(bench.queries):,} queries of the copy-detection benchmark's {part} part "
                   f"(strongly distorted copies of {source}), left, and their top {hits} hits by cosine similarity "
                   f"(printed above each) of globally pooled `{layer}` features among {searched_text}; the true "
                   "original is framed in green, other images in red.")


def _shape(model: nn.Module, layer: str) -> tuple[int, ...]:
    from zoo.inspect import layer_shapes

    return layer_shapes(model, model.entry.input)[layer]


def _show(ax, image: np.ndarray, title: str, frame: str | None) -> None:
    ax.imshow(image, interpolation="antialiased")  # nearest when enlarging 3x or more, smoothed when shrinking photos
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7, pad=2)
    for spine in ax.spines.values():
        spine.set_visible(frame is not None)
        if frame:
            spine.set_color(frame)
            spine.set_linewidth(3)


DRAWERS: dict[str, tuple[str, Callable[[Subject, Path], Picture]]] = {
    "curves": ("Training curves", draw_training_curves),
    "clustering": ("Clustering", draw_clustering),
    "probes": ("Per-layer evaluation", draw_probe_curves),
    "filters": ("First-layer filters", draw_conv1_filters),
    "retrieval": ("Retrieval", draw_retrieval_grid),
}


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------

@dataclass
class Report:
    subject: str
    pictures: list[Picture] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (part title, why)


def render_page(report: Report, command: str) -> str:
    """One self-contained HTML page: each picture with its caption, then the parts not drawn."""
    e = html.escape
    body = [f"<h1>{e(report.subject)}</h1>", f"<p>Made by <code>{e(command)}</code>.</p>"]
    for p in report.pictures:
        body.append(f'<h2>{e(p.title)}</h2>\n<img src="{e(p.file)}" alt="{e(p.title)}">\n<p>{e(p.caption)}</p>')
    if report.skipped:
        body.append("<h2>Not drawn</h2>\n<ul>\n" + "\n".join(f"<li>{e(t)}: {e(why)}</li>" for t, why in report.skipped)
                    + "\n</ul>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{e(report.subject)}: sslzoo report</title>\n"
            "<style>body{font-family:sans-serif;max-width:60em;margin:auto;padding:1em}img{max-width:100%}"
            "</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def make_report(subject: Subject, out: Path, parts: Sequence[str], command: str,
                say: Callable[[str], None] = click.echo) -> Report:
    """Draw ``parts`` of ``subject`` into ``out`` and write the page; returns what was drawn."""
    report = Report(subject.spec)
    for part in parts:
        title, draw = DRAWERS[part]
        try:
            picture = draw(subject, out)
        except (Skip, ZooError) as why:
            report.skipped.append((title, str(why)))
            say(f"skipped {title.lower()}: {why}")
            continue
        report.pictures.append(picture)
        say(f"wrote {out / picture.file}")
    atomic_write_text(out / PAGE_NAME, render_page(report, command))
    say(f"wrote {out / PAGE_NAME}")
    return report


def parse_parts(text: str | None, default: Sequence[str]) -> list[str]:
    if text is None:
        return list(default)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise UsageError(f"--parts {text!r}: choose from {', '.join(PARTS)} (comma-separated)")
    return list(dict.fromkeys(parts))


def shipped_models() -> list[str]:
    from zoo.hub import weights_origin
    from zoo.registry import list_models

    return [n for n in list_models() if weights_origin(n) == "shipped"]


def _need_matplotlib() -> None:
    try:
        import matplotlib
    except ImportError:
        raise UsageError("zoo report draws with matplotlib, which is not installed: pip install 'sslzoo[report]' "
                         "(or pip install matplotlib)") from None
    matplotlib.use("Agg")


@click.command("report")
@click.argument("model", required=False, shell_complete=complete_model_or_path)
@click.option("-o", "--out", type=OutputPath(file_okay=False, path_type=Path), default=None,
              help="Folder for the pictures and index.html (created; other files in it are kept).")
@click.option("--parts", type=NON_EMPTY, default=None,
              help=f"Comma-separated parts to draw: {', '.join(PARTS)} [default: all].")
@click.option("--results", "results_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Per-layer scores from this `zoo eval --json-out` file instead of the recorded results.")
@click.option("--all", "all_shipped", is_flag=True,
              help=f"Draw {', '.join(CARD_PARTS)} of every shipped model into CARDS/pictures/NAME (the model cards "
                   "show them; then run `zoo card --all`).")
@click.option("--cards-dir", type=OutputPath(file_okay=False, path_type=Path), default=None,
              help="Model-card folder whose results/ is read, and --all writes into [default: the repository's "
                   "MODEL_CARDS].")
def report_cmd(model, out, parts, results_file, all_shipped, cards_dir):
    """Pictures of MODEL (PNG) and one HTML page showing them, in OUT.

    MODEL: a training run folder (training curves, clustering over the epochs), a checkpoint folder
    or a registry name. Parts: curves (metrics.jsonl), clustering (NMI and cluster sizes of the
    clustering methods), probes (per-layer scores beside random init, as recorded by `zoo eval
    --record` for these weights; nothing is evaluated here), filters (the first convolution's
    filters beside random init) and retrieval (copy-detection queries and their top hits). A part
    MODEL lacks what it needs for is skipped with one line saying why.
    """
    from training.cli import _command_line
    from zoo.results import PICTURES_DIRNAME, default_cards_dir

    if all_shipped == bool(model):
        raise UsageError("give a MODEL (with -o DIR) or --all")
    if all_shipped and out is not None:
        raise UsageError("--all writes into CARDS/pictures/NAME; leave out -o (choose the folder with --cards-dir)")
    if all_shipped and results_file is not None:
        raise UsageError("--results belongs to one MODEL; --all reads each shipped model's recorded results")
    if model and out is None:
        raise UsageError("-o DIR is required: the folder the pictures and index.html go into")
    chosen = parse_parts(parts, CARD_PARTS if all_shipped else PARTS)
    _need_matplotlib()
    command = _command_line()
    if all_shipped:
        cards = Path(cards_dir or default_cards_dir())
        for name in shipped_models():
            make_report(open_subject(name, cards, results_file), cards / PICTURES_DIRNAME / name, chosen, command)
        return
    make_report(open_subject(model, cards_dir, results_file), out, chosen, command)
