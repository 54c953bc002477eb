"""``zoo quickstart``: the main job, end to end on embedded data, in minutes on 2 CPU cores.

It runs a list of stages in order. Each stage is a function ``stage(ctx) -> list[SummaryRow]``:
first zoo's own, then the groups that the packages above zoo declare as entry points
(``sslzoo.quickstart``, see ``zoo.plugins``), loaded only when the quickstart runs. A stage reads
what earlier stages left in ``ctx`` and adds its own results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click

# OutputPath: an empty --out would silently mean the current folder
from zoo.cli import OutputPath, no_progress_option, progress_wanted
from zoo.errors import ZooError

# zoo's stages run first; the plug-in groups follow: first what a user of published weights does
# (export, extract, index, search: seconds), then what a researcher does (train, evaluate, publish).

# The shipped model the loading, export and search stages use (weights inside sslzoo: no network):
# the colour-photo model trained for copy detection, which is what the search stage does; it never
# trained on the held-out photo the search queries (see its card for held-out numbers).
QUICKSTART_MODEL = "simclr_resnet_small_photos"


@dataclass
class SummaryRow:
    stage: str
    result: str
    seconds: float = 0.0


@dataclass
class Context:
    out: Path
    fast: bool = False
    progress: bool = True  # bars are drawn only on a terminal (zoo.cli.progress_wanted) and without --no-progress
    data: dict[str, Any] = field(default_factory=dict)


Stage = Callable[[Context], list[SummaryRow]]


def backbones_stage(ctx: Context) -> list[SummaryRow]:
    """Build every registry model, run real photos through it, print layer shapes and timings."""
    import torch

    from zoo.cli import print_table
    from zoo.inspect import parameter_count, time_forward
    from zoo.photos import load_photos
    from zoo.preprocess import preprocess
    from zoo.registry import create_model, get_model_entry, list_models

    torch.manual_seed(0)
    photos = load_photos(limit=4)
    click.echo(f"[backbones] {len(photos)} shipped photos: {', '.join(photos)}")
    rows, start = [], time.perf_counter()
    names = list_models()
    if ctx.fast:  # tests: one 32x32 model per architecture; the ImageNet-size ones take seconds each
        by_arch = {}
        for n in names:
            entry = get_model_entry(n)
            if entry.input.size <= 64:
                by_arch.setdefault(entry.arch, n)
        names = sorted(by_arch.values())
    for name in names:
        entry = get_model_entry(name)
        model = create_model(name).eval()
        batch = preprocess(list(photos.values()), entry.input)
        if entry.input.sobel_in_model:  # the model computes Sobel from RGB itself
            assert batch.shape[1] == 3
        with torch.no_grad():
            feats = model.forward_features(batch)
        seconds = time_forward(model, batch)
        shapes = " ".join(f"{k}:{'x'.join(map(str, v.shape[1:]))}" for k, v in feats.items())
        rows.append((name, entry.arch, f"{entry.input.size}px {entry.input.colour_space}",
                     f"{parameter_count(model) / 1e6:.2f}M", f"{seconds * 1000:.1f}", shapes))
    print_table(("model", "architecture", "input", "params", "ms/img", "feature layers (C x H x W)"), rows)
    ctx.data["photos"] = photos
    return [SummaryRow("backbones", f"{len(rows)} registry models ran on {len(photos)} real photos",
                       time.perf_counter() - start)]


def pretrained_stage(ctx: Context) -> list[SummaryRow]:
    """Load a shipped model by name, from Python and through torch.hub, and embed the photos."""
    import torch

    from zoo.checkpoint import sha256_file, state_dict_sha256
    from zoo.inspect import first_differing_layer
    from zoo.photos import load_photos
    from zoo.preprocess import preprocess
    from zoo.registry import create_model

    start = time.perf_counter()
    model = create_model(QUICKSTART_MODEL, pretrained=True)
    where = model.checkpoint_source
    repo_root = Path(__file__).resolve().parents[1]
    hubbed = torch.hub.load(str(repo_root), QUICKSTART_MODEL, source="local", pretrained=True, trust_repo=True)
    photos = ctx.data.get("photos") or load_photos(limit=4)
    batch = preprocess(list(photos.values()), model.entry.input)
    with torch.no_grad():
        ours, theirs = model.forward_features(batch), hubbed.forward_features(batch)
    # Weights bit for bit; features of two forwards to within summation order (zoo.inspect)
    if state_dict_sha256(model) != state_dict_sha256(hubbed) or first_differing_layer(ours, theirs) is not None:
        raise ZooError(f"{QUICKSTART_MODEL} from torch.hub differs from zoo.create_model; please report it")
    sha = sha256_file(where.path / "model.safetensors")
    click.echo(f"[pretrained] zoo.create_model({QUICKSTART_MODEL!r}, pretrained=True) and torch.hub.load(..., "
               f"source='local', pretrained=True): {where.source} weights {where.repo}@{where.revision}, sha256 "
               f"{sha[:12]}..., bit-identical weights and the same features of {len(photos)} photos")
    return [SummaryRow("pretrained", f"{QUICKSTART_MODEL}: {where.source} weights (sha256 {sha[:12]}) loaded by name "
                       "and through torch.hub, offline", time.perf_counter() - start)]


STAGES: list[Stage] = [backbones_stage, pretrained_stage]


def all_stages() -> list[Stage]:
    """zoo's stages, then each plug-in group's in the order of the groups' names."""
    from zoo.plugins import QUICKSTART_GROUP, plugin_entry_points

    return [*STAGES, *(stage for ep in plugin_entry_points(QUICKSTART_GROUP).values() for stage in ep.load())]


def run_stages(ctx: Context, stages: list[Stage] | None = None) -> list[SummaryRow]:
    summary: list[SummaryRow] = []
    for stage in stages or all_stages():
        summary.extend(stage(ctx))
    return summary


@click.command()
@click.option("-o", "--out", type=OutputPath(file_okay=False, path_type=Path), default=Path("runs/quickstart"),
              show_default=True, help="Folder for everything the quickstart writes.")
@click.option("--fast", is_flag=True, help="Smallest settings, for tests (seconds instead of minutes).")
@no_progress_option
def quickstart(out: Path, fast: bool, no_progress: bool):
    """Run the main job on embedded data and print a summary table."""
    from zoo.cli import print_table

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summary = run_stages(Context(out=out, fast=fast, progress=progress_wanted(no_progress)))
    click.echo("\nsummary")
    print_table(("stage", "result", "seconds"), [(r.stage, r.result, f"{r.seconds:.1f}") for r in summary])
    click.echo(f"quickstart finished in {time.perf_counter() - start:.1f} s; outputs in {out}")
