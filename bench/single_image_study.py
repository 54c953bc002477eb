"""The table of the single-image study (README, "The single-image study (arXiv 1904.13132) at small
scale"): per-layer linear-probe top-1 on Fashion-MNIST test, mean ± sample std over the training
seeds, of each `zoo eval ... --json-out` file in bench/results/single_image_study/ (named
METHOD-DATA.json), with the random-init networks of each architecture below.

    python bench/single_image_study.py [FOLDER]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FOLDER = Path(__file__).parent / "results" / "single_image_study"
METHODS = {"rotnet": "RotNet", "bigan": "BiGAN", "deepcluster": "DeepCluster, 2 epochs",
           "deepcluster4ep": "DeepCluster, 4 epochs"}
DATA = {"1img": "1 image (rocket)", "8img": "8 images (training photos)", "full": "Fashion-MNIST (full data)"}


def cell(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def linear_entry(path: Path) -> dict:
    """The `linear` protocol's result of one `zoo eval --json-out` file."""
    report = json.loads(path.read_text(encoding="utf-8"))
    return next(r for r in report["results"] if r["protocol_id"] == "linear")


def method_table(folder: Path, method: str) -> list[str]:
    """Markdown rows of one method: a header of its layers, one row per training data found, random init."""
    found = [(label, linear_entry(folder / f"{method}-{data}.json")) for data, label in DATA.items()
             if (folder / f"{method}-{data}.json").is_file()]
    if not found:
        return []
    layers = list(found[0][1]["per_layer"])
    lines = [f"| {METHODS[method]}: trained on | seeds | " + " | ".join(layers) + " |",
             "|---|---|" + "---|" * len(layers)]
    for label, r in found:
        std = r.get("per_layer_std") or {}
        lines.append(f"| {label} | {len(r['seeds'])} | "
                     + " | ".join(cell(r["per_layer"][n], std.get(n)) for n in layers) + " |")
    base = found[0][1]
    if "baseline_per_layer" in base:
        mean, std = base["baseline_per_layer"]["random-init"], (base.get("baseline_per_layer_std") or {}).get(
            "random-init", {})
        lines.append(f"| random init | {len(base['baseline_per_seed']['random-init'])} | "
                     + " | ".join(cell(mean[n], std.get(n)) for n in layers) + " |")
    return lines


def table(folder: Path = FOLDER) -> str:
    return "\n\n".join("\n".join(rows) for rows in (method_table(folder, m) for m in METHODS) if rows)


if __name__ == "__main__":
    print(table(Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER))
