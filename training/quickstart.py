"""Quickstart stages: train a small RotNet on Fashion-MNIST, then evaluate it beside random init.

``zoo quickstart`` runs these after the stages that use shipped weights (see ``zoo/quickstart.py``). The trained
checkpoint folder is left in ``ctx.data["checkpoint"]`` for the publish stage.
Budget on 2 CPU cores: about 4-5 minutes for both stages; ``--fast`` takes seconds.
"""

from __future__ import annotations

import shutil
import time

import click

# The quickstart's run: the small recipe's network and optimiser on fewer images and epochs.
QUICK = dict(limit=6_400, heldout_limit=1_000)
QUICK_EVAL = dict(train_limit=3_000, val_size=1_000, test_limit=2_000, probe_epochs=20)
FAST_EVAL = dict(train_limit=300, val_size=200, test_limit=200, probe_epochs=3)


def train_stage(ctx):
    from training.engine import fit
    from training.methods.rotnet import RECIPES, RotNet
    from zoo.quickstart import SummaryRow

    if ctx.fast:
        recipe = RECIPES["tiny"].replace(limit=256, heldout_limit=200, checkpoint_every=0)
    else:
        recipe = RECIPES["small"].replace(**QUICK)
    out = ctx.out / "rotnet"
    shutil.rmtree(out, ignore_errors=True)  # the quickstart's own folder: every run starts fresh
    click.echo(f"[train] RotNet, recipe {recipe.name}: {recipe.epochs} epoch(s) on {recipe.limit:,} Fashion-MNIST "
               f"images, batch {recipe.batch_size} x 4 rotations")
    start = time.perf_counter()
    result = fit(RotNet, recipe, out, command=f"zoo quickstart{' --fast' if ctx.fast else ''}", progress=ctx.progress)
    ctx.data["checkpoint"] = result.model_dir
    acc = result.metrics.get("rotation_acc", float("nan"))
    return [SummaryRow("train", f"RotNet {result.steps} steps; held-out rotation accuracy {acc:.1%}; "
                       f"checkpoint {result.model_dir}", time.perf_counter() - start)]


def eval_stage(ctx):
    from training.evaluation import EvalSettings, evaluate, print_report
    from zoo.quickstart import SummaryRow

    settings = EvalSettings(**(FAST_EVAL if ctx.fast else QUICK_EVAL))
    rows, reports = [], {}
    for protocol in ("linear", "knn"):
        start = time.perf_counter()
        report = evaluate([ctx.data["checkpoint"]], [protocol], settings=settings, baseline_seeds=1,
                          command=f"zoo quickstart{' --fast' if ctx.fast else ''}", progress=ctx.progress)
        print_report(report)
        reports[protocol] = report
        entry = report["results"][0]
        rows.append(SummaryRow(f"eval {protocol}", f"{entry['layer']} (chosen on validation) {entry['value']:.1f}% vs "
                               f"random-init {entry['baseline']['random-init']:.1f}% ({entry['dataset']} "
                               f"{entry['split']}, {entry['split_size']:,})", time.perf_counter() - start))
    ctx.data["eval"] = reports
    return rows


def publish_stage(ctx):
    """Record the evaluation in a card, publish the checkpoint to a local hub inside the quickstart's
    folder, then load it back by repo id (zoo.from_pretrained) and through torch.hub, and check
    both give the trained model's features bit for bit."""
    import os
    from pathlib import Path

    import torch

    import zoo
    from training.evaluation import record_results
    from zoo.cards import write_checkpoint_card
    from zoo.hub import publish
    from zoo.photos import load_photos
    from zoo.checkpoint import state_dict_sha256
    from zoo.inspect import first_differing_layer
    from zoo.quickstart import SummaryRow

    start = time.perf_counter()
    checkpoint = Path(ctx.data["checkpoint"])
    cards_dir, hub_dir = ctx.out / "cards", ctx.out / "hub"
    shutil.rmtree(hub_dir, ignore_errors=True)
    for report in ctx.data["eval"].values():  # the quickstart's numbers, never the repository's cards
        record_results(report, cards_dir=cards_dir)
    write_checkpoint_card(checkpoint, cards_dir=cards_dir)
    trained = zoo.from_pretrained(checkpoint)
    repo = trained.entry.weights.hub_repo
    published = publish(checkpoint, repo, local_hub=hub_dir)
    click.echo(f"[publish] {repo} -> local hub {hub_dir} (snapshot {published.version[:12]})")

    batch = zoo.preprocess(list(load_photos(limit=2).values()), trained.entry.input)
    with torch.no_grad():
        want = trained.forward_features(batch)
    previous = os.environ.get("ZOO_HUB")
    os.environ["ZOO_HUB"] = str(hub_dir)
    try:
        by_id = zoo.from_pretrained(repo)
        repo_root = Path(zoo.__file__).resolve().parents[1]
        via_hub = torch.hub.load(str(repo_root), trained.entry.name, source="local", pretrained=True,
                                 trust_repo=True, **dict(trained.arch_kwargs)).eval()
    finally:
        if previous is None:
            os.environ.pop("ZOO_HUB", None)
        else:
            os.environ["ZOO_HUB"] = previous
    with torch.no_grad():  # weights bit for bit; features of two forwards to within summation order
        same = all(state_dict_sha256(m) == state_dict_sha256(trained)
                   and first_differing_layer(want, m.forward_features(batch)) is None for m in (by_id, via_hub))
    if not same:
        raise zoo.ZooError(f"{repo} loaded back from the local hub gives different weights or features; please "
                           "report it")
    click.echo(f"[load] zoo.from_pretrained({repo!r}) and torch.hub.load(..., {trained.entry.name!r}, "
               "pretrained=True): bit-identical weights, the same features")
    return [SummaryRow("publish+load", f"{repo} published to {hub_dir}; from_pretrained and torch.hub.load "
                       "give bit-identical weights", time.perf_counter() - start)]


# The stages `zoo quickstart` runs, in order (declared in pyproject.toml's sslzoo.quickstart entry points).
STAGES = [train_stage, eval_stage, publish_stage]
