"""The single-image study (arXiv 1904.13132) at small scale: its tables, read from the ``zoo eval
--json-out`` files in ``MODEL_CARDS/results/single_image_study/`` (one per method and training
data, named ``METHOD-DATA.json``, three training seeds each), for the README
(``python bench/single_image_study.py``) and for the cards of the studied models.

The files are not results of the shipped weights: each row is a recipe trained on other data (one
photo, the training photos, Fashion-MNIST), so the cards show them in a section of their own and
``MODEL_CARDS/results/<name>.json`` is left alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from zoo.errors import UsageError
from zoo.fileset import read_json
from zoo.results import PICTURES_DIRNAME, RESULTS_DIRNAME, default_cards_dir

STUDY_DIRNAME = "single_image_study"
# File-name prefix -> the method as the tables head it (DeepCluster ran twice: 2 and 4 clusterings).
METHODS = {"rotnet": "RotNet", "bigan": "BiGAN", "deepcluster": "DeepCluster, 2 epochs",
           "deepcluster4ep": "DeepCluster, 4 epochs", "simclr-photos": "SimCLR, copy views",
           "simclr-photos900": "SimCLR, copy views, the earlier 900 steps"}
# File-name prefix -> (protocol, metric) of its table; Fashion-MNIST linear probes unless named here.
PROTOCOLS = {"simclr-photos": ("photo-retrieval", "mAP"), "simclr-photos900": ("photo-retrieval", "mAP")}
_SCORES = {"linear": "Linear-probe top-1 (%) on Fashion-MNIST test",
           "photo-retrieval": "Copy-detection mAP (%) on the held-out photos (`--protocol photo-retrieval`)"}
# File-name suffix -> what the row was trained on, in the order the rows appear.
DATA = {"1img": "1 image (rocket)", "8img": "8 images (training photos)", "full": "Fashion-MNIST (full data)"}
README_SECTION = "The single-image study (arXiv 1904.13132) at small scale"


def study_dir(cards_dir: str | os.PathLike | None = None) -> Path:
    return Path(cards_dir or default_cards_dir()) / RESULTS_DIRNAME / STUDY_DIRNAME


def _cell(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _protocol_entry(report: dict[str, Any], path: Path, method: str) -> dict[str, Any]:
    """The result of one ``zoo eval --json-out`` report that ``method``'s table shows."""
    protocol, metric = PROTOCOLS.get(method, ("linear", "top-1"))
    entry = next((r for r in report.get("results", [])
                  if r.get("protocol_id") == protocol and r.get("metric", metric) == metric), None)
    if entry is None:
        raise UsageError(f"{path} has no {protocol} {metric} result; rerun its `zoo eval ... --protocol {protocol} "
                         "--json-out`")
    return entry


Row = tuple[str, str, dict[str, Any], dict[str, Any]]  # file stem, row label, report, the entry its table shows


def _rows_found(folder: Path, method: str) -> list[Row]:
    """Each training data of ``method`` that has a file, read and checked once."""
    found = []
    for data, label in DATA.items():
        path = folder / f"{method}-{data}.json"
        if path.is_file():
            report = read_json(path, UsageError, "rerun the `zoo eval` that wrote it")
            found.append((path.stem, label, report, _protocol_entry(report, path, method)))
    return found


def method_table(method: str, found: list[Row], *, per_seed: bool = False) -> list[str]:
    """Markdown rows of one method from its ``_rows_found``: a header of its layers, one row per
    training data found, random init.

    ``per_seed`` (the cards' form) adds the training steps of each row (its seed 0's, as the run
    recorded them) and each seed's chosen layer (chosen by ``zoo eval``) with its score."""
    if not found:
        return []
    layers = list(found[0][3]["per_layer"])
    head = ["seeds", "steps", *layers, "chosen layer, per seed"] if per_seed else ["seeds", *layers]
    lines = [f"| {METHODS[method]}: trained on | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for _, label, report, r in found:
        std = r.get("per_layer_std") or {}
        cells = [str(len(r["seeds"]))] + [_cell(r["per_layer"][n], std.get(n)) for n in layers]
        if per_seed:
            chosen = r.get("layer_per_seed") or [r["layer"]] * len(r["per_seed"])
            steps = (report.get("training") or {}).get("steps")
            cells[1:1] = [f"{steps:,}" if steps else "-"]
            cells.append(", ".join(f"{layer} {value:.2f}" for layer, value in zip(chosen, r["per_seed"])))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    base = found[0][3]
    if "baseline_per_layer" in base:
        mean = base["baseline_per_layer"]["random-init"]
        std = (base.get("baseline_per_layer_std") or {}).get("random-init", {})
        cells = [str(len(base["baseline_per_seed"]["random-init"]))] + [_cell(mean[n], std.get(n)) for n in layers]
        if per_seed:
            cells[1:1] = ["0"]
            cells.append(", ".join(f"{v:.2f}" for v in base["baseline_per_seed"]["random-init"]) + " (layers not recorded)")
        lines.append("| random init | " + " | ".join(cells) + " |")
    return lines


def table(folder: Path) -> str:
    """The linear-probe tables of every method, as the README's study section shows them."""
    tables = (method_table(m, _rows_found(folder, m)) for m in METHODS if m not in PROTOCOLS)
    return "\n\n".join("\n".join(rows) for rows in tables if rows)


def _other_baselines(found: list[Row]) -> str:
    """The no-network baselines (raw pixels) of a method's first file, as a paragraph ("" for none)."""
    if not found:
        return ""
    others = {k: v for k, v in (found[0][3].get("baseline") or {}).items() if k != "random-init"}
    return "".join(f"\n\n{k.replace('-', ' ').capitalize()} (no network, the same benchmark): {v:.2f}."
                   for k, v in others.items())


def card_section(name: str, cards_dir: str | os.PathLike | None = None) -> str | None:
    """The card section of registry model ``name``: its recipe's rows of the study and their
    first-layer filters, or None where the study did not train this model."""
    folder = study_dir(cards_dir)
    every = {m: _rows_found(folder, m) for m in METHODS}
    rows = {m: found for m, found in every.items() if any(report.get("model") == name for _, _, report, _ in found)}
    if not rows:
        return None
    methods = list(rows)
    protocol = PROTOCOLS.get(methods[0], ("linear",))[0]
    trained_on = sorted({row[1] for found in rows.values() for row in found}, key=list(DATA.values()).index)
    tables = "\n\n".join("\n".join(method_table(m, found, per_seed=True)) + _other_baselines(found)
                         for m, found in rows.items())
    chosen_on = "the training photos" if protocol == "photo-retrieval" else "validation"
    paper = "; the paper's own per-layer numbers (ImageNet, AlexNet) are not quoted" if protocol == "linear" else ""
    text = (f"## The single-image study (arXiv 1904.13132)\n\n"
            f"Runs of this model's recipe on {', '.join(trained_on[:-1])} and on {trained_on[-1]}, three seeds each, "
            f"for the steps in the table (the repository README, \"{README_SECTION}\", has the commands and what "
            f"the numbers show); the results above are the shipped weights' own. {_SCORES[protocol]} at each layer, "
            f"mean ± std over the training "
            f"seeds, beside random init of this architecture; the last column gives each seed's layer chosen on "
            f"{chosen_on} and its score. Each row was written by `zoo eval RUN-seed0 RUN-seed1 RUN-seed2 --protocol "
            f"{protocol} --json-out MODEL_CARDS/{RESULTS_DIRNAME}/{STUDY_DIRNAME}/METHOD-DATA.json`{paper}.\n\n"
            f"{tables}")
    return text + _filters(name, rows, cards_dir)


def _filters(name: str, rows: dict[str, list[Row]], cards_dir: str | os.PathLike | None) -> str:
    """A one-row table of the seed-0 first-layer filters drawn for the methods' rows, if any."""
    pictures_root = Path(cards_dir or default_cards_dir()) / PICTURES_DIRNAME / STUDY_DIRNAME
    shown = [(f"{METHODS[m]}, {label}" if len(rows) > 1 else label,
              f"{PICTURES_DIRNAME}/{STUDY_DIRNAME}/{stem}/conv1_filters.png") for m, found in rows.items()
             for stem, label, _, _ in found if (pictures_root / stem / "conv1_filters.png").is_file()]
    if not shown:
        return ""
    heads = " | ".join(label for label, _ in shown)
    cells = " | ".join(f"![{name}, first-layer filters, {label}]({path})" for label, path in shown)
    return (f"\n\nFirst-layer filters of seed 0 of each row (`zoo report RUN -o MODEL_CARDS/{PICTURES_DIRNAME}/{STUDY_DIRNAME}/"
            f"METHOD-DATA --parts filters`):\n\n| {heads} |\n|" + "---|" * len(shown) + f"\n| {cells} |")
