"""``zoo train`` and ``zoo eval`` (entry points in pyproject.toml's ``sslzoo.commands``, loaded on use)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
from pathlib import Path

import click

from zoo.cli import NON_EMPTY, OutputPath, complete_model_or_path, no_progress_option, progress_wanted
from zoo.errors import UsageError


# Bounds of the numeric options: beyond them a value is a typo, and taken as given it would spawn a
# process per worker until memory runs out, or overflow the seed generators (numpy's take < 2**32).
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 20
MAX_ACCUMULATE = 1 << 16
MAX_IMAGES = 1 << 31
MAX_WORKERS = max(64, 4 * (os.cpu_count() or 1))
MAX_SEED = 2**32 - 1


def _command_line() -> str:
    """The command as a user would type it (``zoo ...``), for config.json and the model card."""
    return "zoo " + shlex.join(sys.argv[1:])


def _complete_method(ctx, param, incomplete: str):
    """Shell completion of the trainable methods (`zoo train rot<TAB>`)."""
    from click.shell_completion import CompletionItem

    from training.methods import method_names

    return [CompletionItem(n) for n in method_names() if n.startswith(incomplete)]


@click.command()
@click.argument("method", shell_complete=_complete_method)
@click.option("--recipe", type=NON_EMPTY, default="small", show_default=True,
              help="paper (published hyperparameters, for torchrun on GPUs), small (2 CPU cores, minutes) "
                   "or tiny (seconds, for tests).")
@click.option("--data", type=NON_EMPTY, default=None, help="Training data: a Fashion-MNIST IDX folder, CIFAR python folder, "
              "ImageFolder tree or one image file; or fmnist, photos, photo-crops[:SIZE], photo:NAME, image:PATH, "
              "training-photos (crops of the shipped photos that are not held out). "
              "Default: the recipe's.")
@click.option("-o", "--out", type=OutputPath(file_okay=False, path_type=Path), default=None,
              help="Run folder (checkpoints, metrics.jsonl, model/). Default: runs/METHOD-RECIPE.")
@click.option("--resume", is_flag=True, help="Continue from the newest complete checkpoint in --out.")
@click.option("--epochs", type=click.IntRange(1, MAX_EPOCHS), default=None, help="Override the recipe's epochs.")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=None, help="Images per optimiser step (all ranks).")
@click.option("--limit", type=click.IntRange(1, MAX_IMAGES), default=None, help="Train on a fixed random subset of N images.")
@click.option("--accumulate", type=click.IntRange(1, MAX_ACCUMULATE), default=None, help="Gradient accumulation steps.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default=None,
              help="Override the recipe's precision. auto: bf16 autocast where the CPU (avx512_bf16, amx_bf16) or "
                   "CUDA device computes in bf16, fp32 on other CPUs, fp16 with a gradient scaler on CUDA without bf16; "
                   "config.json records what ran and why.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=None, help="Override the recipe's seed.")
@click.option("--workers", type=click.IntRange(0, MAX_WORKERS), default=None, help="Data-loading processes per rank.")
@click.option("--checkpoint-every", type=click.IntRange(0, MAX_IMAGES), default=None,
              help="Optimiser steps between mid-epoch checkpoints (0: only at epoch ends).")
@no_progress_option
def train(method, recipe, data, out, resume, epochs, batch_size, limit, accumulate, precision, seed, workers,
          checkpoint_every, no_progress):
    """Train METHOD with a recipe and write a checkpoint folder (OUT/model) that zoo.from_pretrained loads.

    Multi-process: torchrun --nproc-per-node N --no-python zoo train METHOD --recipe paper --data PATH
    """
    from training.engine import fit
    from training.methods import get_recipe, method_module

    module = method_module(method)
    chosen = get_recipe(method, recipe).replace(
        epochs=epochs, batch_size=batch_size, limit=limit, accumulate=accumulate, precision=precision, seed=seed,
        workers=workers, checkpoint_every=checkpoint_every)
    out = out or Path("runs") / f"{method}-{recipe}"
    created = [p for p in (out, *out.parents) if not os.path.lexists(p)]  # innermost first
    try:
        fit(module.METHOD, chosen, out, data=data, resume=resume, command=_command_line(),
            progress=progress_wanted(no_progress))
    except BaseException:
        # A run refused before its first checkpoint (data too small for the batch, unreadable data)
        # must not leave empty run folders behind; rmdir removes only the empty ones it made.
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@click.command("eval")
@click.argument("models", metavar="MODEL...", nargs=-1, required=True, shell_complete=complete_model_or_path)
@click.option("--protocol", type=NON_EMPTY, default="linear", show_default=True,
              help="linear, linear-pool, knn, cluster, retrieval, a comma-separated list of them, or all; "
                   "photo-retrieval (colour-photo models: copies of held-out photos, beside raw pixels) by name only.")
@click.option("--data", type=NON_EMPTY, default=None, help="Labelled data with a train and a test split (default: Fashion-MNIST); "
              "retrieval and photo-retrieval always use their own copy-detection benchmarks.")
@click.option("--layers", type=NON_EMPTY, default=None, help="Comma-separated feature layers (default: all).")
@click.option("--train-limit", type=click.IntRange(1, MAX_IMAGES), default=10_000, show_default=True,
              help="Fixed random subset of the train split (probe training / kNN memory).")
@click.option("--val-size", type=click.IntRange(1, MAX_IMAGES), default=5_000, show_default=True,
              help="Other train-split images on which the layer and probe settings are chosen.")
@click.option("--test-limit", type=click.IntRange(1, MAX_IMAGES), default=10_000, show_default=True,
              help="Fixed random subset of the test split (reported only).")
@click.option("--baseline-seeds", type=click.IntRange(min=0, max=20), default=3, show_default=True,
              help="Random-init copies of the architecture evaluated beside the model (0: none).")
@click.option("--no-baseline", is_flag=True, help="Same as --baseline-seeds 0.")
@click.option("-k", "--k", type=click.IntRange(min=1, max=100_000), default=200, show_default=True,
              help="kNN neighbours (NPID: 200).")
@click.option("--temperature", type=click.FloatRange(min=1e-4, max=100.0), default=0.07, show_default=True,
              help="kNN vote temperature (NPID: 0.07).")
@click.option("--epochs", type=click.IntRange(min=1, max=1000), default=None, help="Linear-probe epochs (default 36).")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True, help="Data subsets, probe initialisation, k-means.")
@click.option("--mixup", type=click.Choice(["none", "mwh"]), default="none", show_default=True,
              help="linear protocol: train each probe with mixup without hesitation (mwh) on its pooled features.")
@click.option("--json", "as_json", is_flag=True, help="Print the results JSON on stdout instead of the tables.")
@click.option("--json-out", type=OutputPath(dir_okay=False, path_type=Path), default=None,
              help="Also write the results JSON to this file.")
@click.option("--record", is_flag=True, help="Merge the results into CARDS/results/<model>.json.")
@click.option("--cards-dir", type=OutputPath(file_okay=False, path_type=Path), default=None,
              help="Model-card folder --record writes into (default: $ZOO_CARDS, else ~/.cache/sslzoo/cards; "
                   "the repository's MODEL_CARDS only when named here).")
# The older spelling, kept working: every published card's results name the command that made them.
@click.option("--cards", "cards_alias", type=OutputPath(file_okay=False, path_type=Path), default=None, hidden=True)
@no_progress_option
def eval_cmd(models, protocol, data, layers, train_limit, val_size, test_limit, baseline_seeds, no_baseline, k,
             temperature, epochs, seed, mixup, as_json, json_out, record, cards_dir, cards_alias, no_progress):
    """Evaluate MODEL's frozen features, beside random-init models of the same architecture.

    MODEL: a checkpoint folder, a training run folder (its model/), a registry name or Hub repo id
    (published weights), or random:NAME (random weights). Several MODELs are the training seeds of
    one model: the results are their mean and standard deviation. Layers and probe settings are
    chosen on a validation split of the training images; the test split is only reported.
    """
    from training import evaluation

    _refuse_old_json_file(models, as_json)
    if record and any(m.startswith(evaluation.RANDOM_PREFIX) for m in models):
        raise UsageError(f"nothing to record: {models[0]} has random weights; its numbers are recorded as the "
                         "baseline beside a trained model's (record a checkpoint folder)")
    layer_list = [s.strip() for s in layers.split(",") if s.strip()] if layers else None
    settings = evaluation.EvalSettings(train_limit=train_limit, val_size=val_size, test_limit=test_limit, k=k,
                                       temperature=temperature, probe_epochs=epochs or 36, seed=seed,
                                       probe_mixup=None if mixup == "none" else mixup)
    protocols = [p.strip() for p in protocol.split(",") if p.strip()]
    if settings.probe_mixup and not {"linear", "all"} & set(protocols):
        raise UsageError(f"--mixup {mixup} trains the per-layer linear probe; add linear to --protocol "
                         f"(got {protocol!r})")
    # "," would otherwise evaluate nothing and exit 0, or mean every layer
    if not protocols:
        raise UsageError(f"--protocol {protocol!r} names no protocol; choose from linear, linear-pool, knn, "
                         "cluster, retrieval, photo-retrieval or all")
    if layers and not layer_list:
        raise UsageError(f"--layers {layers!r} names no layer; leave it out for all layers")
    report = evaluation.evaluate(models, protocols, data=data, layers=layer_list, settings=settings,
                                 baseline_seeds=0 if no_baseline else baseline_seeds, command=_command_line(),
                                 progress=progress_wanted(no_progress))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        evaluation.print_report(report)
    if json_out is not None:
        from zoo.checkpoint import atomic_write_text

        atomic_write_text(json_out, json.dumps(report, indent=2) + "\n")
    if record:
        path = evaluation.record_results(report, cards_dir or cards_alias)
        click.echo(f"recorded in {path}", err=as_json)  # stdout holds only the JSON


def _refuse_old_json_file(models, as_json: bool) -> None:
    """``--json FILE`` took a file before ``--json`` became a flag: such a command line now reads
    FILE as one more MODEL. Said in one line, before any model is opened."""
    stray = [m for m in models if m.endswith(".json") and not os.path.isdir(m)]
    if as_json and stray:
        raise UsageError(f"--json prints the results on stdout and takes no file; write {stray[0]} with "
                         "--json-out FILE")
