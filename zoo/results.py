"""sslzoo's own results files, ``MODEL_CARDS/results/<name>.json``: read, checked, put in one form.

``zoo eval ... --record`` writes them. Two forms exist. A single run records one value per
result, its layer picked as the best on the evaluated split itself. The multi-seed form records
the mean over several training seeds with its std, the per-seed values and the layer each seed
picked on a validation split, beside the same for a random-init network; ``weights_sha256`` and
``shipped_seed`` then name the seed whose weights ship with sslzoo. ``load_results`` checks either
form field by field; ``normalise`` turns one result of either form into a ``Result``, a single run
being one seed with no spread.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.errors import ZooError
from zoo.fileset import read_json

CARDS_DIRNAME = "MODEL_CARDS"
RESULTS_DIRNAME = "results"
PICTURES_DIRNAME = "pictures"  # CARDS/pictures/<name>/: what `zoo report` draws for the cards
RANDOM_INIT = "random-init"
BEATS_RULE = ("a mean beats random init when it exceeds the random-init mean by more than two standard deviations "
              "over the seeds: value - random init > 2 x max(std, random-init std)")


def source_cards_dir() -> Path | None:
    """``MODEL_CARDS`` of the source tree this ``zoo`` comes from; None for an installed package."""
    root = Path(__file__).resolve().parents[1]
    return root / CARDS_DIRNAME if (root / "pyproject.toml").is_file() else None


def default_cards_dir() -> Path:
    """What the card and results commands read by default: ``source_cards_dir()``, else the
    working directory's ``MODEL_CARDS`` (saving a checkpoint never falls back to it)."""
    return source_cards_dir() or Path.cwd() / CARDS_DIRNAME


def results_path(name: str, cards_dir: str | os.PathLike | None = None) -> Path:
    return Path(cards_dir or default_cards_dir()) / RESULTS_DIRNAME / f"{name}.json"


def load_results(name: str, cards_dir: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """``MODEL_CARDS/results/<name>.json`` checked field by field, or None when there is none."""
    path = results_path(name, cards_dir)
    if not path.is_file():
        return None
    data = read_json(path, ZooError, "fix it or re-record it with `zoo eval ... --record`")
    if not isinstance(data, dict) or data.get("model") != name:
        raise ZooError(f"{path} must be an object with \"model\": {name!r}")
    problem = _problem(data)
    if problem:
        raise ZooError(f"{path}: {problem}")
    return data


def _problem(data: dict) -> str:
    """What is wrong with a results document, in a few words, or ""."""
    results = data.get("results", [])
    if not isinstance(results, list):
        return "\"results\" must be a list"
    training = data.get("training")
    if training is not None and not isinstance(training, dict):
        return "\"training\" must be an object"
    seeds = data.get("seeds")
    if seeds is not None:
        if not isinstance(seeds, dict) or not all(isinstance(v, dict) for v in seeds.values()):
            return "\"seeds\" must map each training seed to an object (weights_sha256, training_seconds)"
        if str(data.get("shipped_seed")) not in seeds:
            return f"\"shipped_seed\" {data.get('shipped_seed')!r} must be one of the seeds {sorted(seeds)}"
    for i, r in enumerate(results):
        for key in ("task", "dataset", "metric", "protocol", "command"):
            if not isinstance(r, dict) or not isinstance(r.get(key), str) or not r.get(key):
                return f"results[{i}] needs a non-empty string {key!r}"
        if not _is_number(r.get("value")):
            return f"results[{i}] needs a finite number \"value\", got {r.get('value')!r}"
        for key in ("baseline", "baseline_std"):
            if not isinstance(r.get(key, {}), dict) or not all(_is_number(v) for v in r.get(key, {}).values()):
                return f"results[{i}].{key} must map names to numbers"
        if "std" in r and not (_is_number(r["std"]) and r["std"] >= 0):
            return f"results[{i}].std must be a number >= 0"
        per_seed, run_seeds = r.get("per_seed"), r.get("seeds")
        if per_seed is not None or run_seeds is not None:
            if not (isinstance(per_seed, list) and isinstance(run_seeds, list) and len(per_seed) == len(run_seeds)
                    and per_seed and all(_is_number(v) for v in per_seed)):
                return f"results[{i}]: \"seeds\" and \"per_seed\" must be lists of the same length, one number a seed"
            if "std" not in r and len(per_seed) > 1:
                return f"results[{i}] has values of several seeds but no \"std\""
        if "beats_baseline" in r and not isinstance(r["beats_baseline"], bool):
            return f"results[{i}].beats_baseline must be true or false"
        baseline = r.get("baseline", {}).get(RANDOM_INIT)
        if r.get("beats_baseline") and baseline is not None and r["value"] <= baseline:
            return f"results[{i}] says it beats random init, but its value {r['value']} is not above {baseline}"
    return ""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ----------------------------------------------------------------------------------------------
# One result, in one form
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Result:
    """One sslzoo number: the mean over ``seeds`` (a single run is one seed with ``std`` None)."""

    task: str
    dataset: str            # the dataset's name, without the split
    split: str
    metric: str
    protocol: str
    command: str
    value: float
    protocol_id: str = ""
    split_size: int | None = None
    std: float | None = None
    seeds: tuple = ()
    per_seed: tuple = ()
    layer: str = ""
    layer_per_seed: tuple = ()
    layer_selected_on: str = ""  # "" for a single run: its layer is the best on the evaluated split
    per_layer: dict = field(default_factory=dict)
    baseline: float | None = None  # random init, same protocol
    baseline_std: float | None = None
    baseline_per_seed: tuple = ()
    baseline_layer: str = ""
    beats_baseline: bool | None = None  # None: not tested (a single run has no spread)
    ci95: tuple | None = None
    parts: dict = field(default_factory=dict)
    other_baselines: dict = field(default_factory=dict)  # e.g. {"raw-pixels": 32.3}: no-network baselines

    @property
    def runs(self) -> int:
        return len(self.per_seed) or 1

    @property
    def multi_seed(self) -> bool:
        return self.std is not None


# "Fashion-MNIST test (10,000)": a single-run dataset names its split and size in one string.
_OLD_DATASET = re.compile(r"^(?P<name>.+?)(?: (?P<split>train|test|validation))?(?: \((?P<size>[\d,]+)\))?$")


def normalise(r: dict[str, Any]) -> Result:
    """A result of either form as a ``Result``."""
    if "split" in r:
        name, split, size = r["dataset"], r["split"], r.get("split_size")
    else:
        m = _OLD_DATASET.match(r["dataset"])
        name, split = m["name"], m["split"] or "test"  # the copy-detection set is evaluation-only
        size = int(m["size"].replace(",", "")) if m["size"] else None
    baseline = r.get("baseline", {}).get(RANDOM_INIT)
    std, baseline_std = r.get("std"), r.get("baseline_std", {}).get(RANDOM_INIT)
    beats = r.get("beats_baseline")
    if beats is None:
        beats = beats_random_init(r["value"], std, baseline, baseline_std)
    return Result(
        task=r["task"], dataset=name, split=split, split_size=size, metric=r["metric"], protocol=r["protocol"],
        command=r["command"], value=r["value"], protocol_id=r.get("protocol_id", ""), std=std,
        seeds=tuple(r.get("seeds") or ()), per_seed=tuple(r.get("per_seed") or ()), layer=r.get("layer", ""),
        layer_per_seed=tuple(r.get("layer_per_seed") or ()), layer_selected_on=r.get("layer_selected_on", ""),
        per_layer=dict(r.get("per_layer") or {}), baseline=baseline, baseline_std=baseline_std,
        baseline_per_seed=tuple(r.get("baseline_per_seed", {}).get(RANDOM_INIT) or ()),
        baseline_layer=r.get("baseline_layer", {}).get(RANDOM_INIT, ""), beats_baseline=beats,
        ci95=tuple(r["ci95"]) if r.get("ci95") else None, parts=dict(r.get("parts") or {}),
        other_baselines={k: v for k, v in (r.get("baseline") or {}).items() if k != RANDOM_INIT},
    )


def beats_random_init(value: float, std: float | None, baseline: float | None,
                      baseline_std: float | None) -> bool | None:
    """``BEATS_RULE``; None when there is no baseline or no spread to test against (a single run)."""
    if baseline is None or std is None or baseline_std is None:
        return None
    return value - baseline > 2 * max(std, baseline_std)


def measured_on(results: dict[str, Any], sha256: str) -> bool:
    """Whether weights with this sha256 are among those the results were measured on."""
    shas = {results.get("weights_sha256")}
    shas |= {s.get("weights_sha256") for s in (results.get("seeds") or {}).values()}
    return sha256 in shas


def shipped_seed(results: dict[str, Any]) -> int | None:
    """The training seed of the weights that ship with sslzoo: ``shipped_seed``, or a single run's seed."""
    seed = results.get("shipped_seed", (results.get("training") or {}).get("seed"))
    return int(seed) if seed is not None else None
