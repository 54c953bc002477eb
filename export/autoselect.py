"""``--engine auto``: the fastest engine that keeps fp32's accuracy, measured once per model and machine.

The same graph runs at very different speeds on different machines (ResNet-50: ONNX Runtime fp32
is 2.0x PyTorch eager on an AVX-512/AMX Xeon and 1.7x on an AVX2-only EPYC; int8 is 2.8x fp32 on
the Xeon; bf16 autocast is emulated, hence 25x slower, on the EPYC), so nothing is assumed:

1. every candidate (``export.engines.auto_candidates``: PyTorch eager, channels-last, bf16
   autocast, ONNX Runtime fp32 and int8, and the CUDA/TensorRT paths where a GPU exists) embeds
   the copy-detection calibration set (the shipped photos and strong distortions of each,
   ``zoo.retrieval.copy_detection_set``); a candidate whose embeddings stray from the fp32
   reference's (cosine below ``MIN_COSINE`` for any image) or whose copy-detection mAP drops by
   more than ``MAP_SLACK_QUERIES`` queries' worth is excluded, and so is one that takes over
   ``TOO_SLOW`` times the fastest on that set (emulated bf16 would otherwise cost minutes);
2. the others embed the same batch of real photos in interleaved rounds (warmed up by step 1);
   the median round of each is its speed;
3. the fastest passing candidate wins (``choose``), and the choice is cached as JSON under
   ``$ZOO_CACHE/engine-choice`` (default ``~/.cache/sslzoo``) keyed by ``cache_key``: the model
   (state dict sha256, layer, pooling, input; or the ONNX file's sha256), the batch and thread
   count, the torch / ONNX Runtime / TensorRT versions, the CPU model and a digest of its flags
   and the GPU names. Another machine, a new onnxruntime or other weights measure again.

The one-line report (``describe``) says what was chosen and why. Everything except the
measuring itself is a pure function of the measurements, tested with made-up numbers.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from zoo.errors import ZooError
from zoo.fileset import atomic_write_text

from export.options import cache_root

FORMAT = "sslzoo-engine-choice/1"
# Lowest cosine, over every calibration image, between a candidate's embedding and the fp32
# reference's. int8 ResNet-50 stays above 0.999; a broken kernel or an fp16 overflow falls far below.
MIN_COSINE = 0.99
# Copy-detection mAP is the mean AP of Q queries: a candidate may lose at most what two queries'
# whole AP would (2/Q), a few swapped neighbours (the bound tests/test_export_onnx.py holds int8 to).
MAP_SLACK_QUERIES = 2
# A candidate over this many times slower than the fastest on the calibration set is not timed.
TOO_SLOW = 4.0
CALIBRATION_COPIES = 3  # 12 photos x (1 + 3 distortions) = 48 images, 12 groups
MAX_TIMING_BATCH = 64


@dataclass
class Measurement:
    """What was measured of one candidate; ``images_per_second`` is None when it was not timed."""

    name: str
    images_per_second: float | None = None
    cosine_min: float | None = None
    map_drop: float | None = None  # fp32 reference's mAP minus this candidate's (positive: worse)
    passed: bool = False  # the accuracy bound
    note: str = ""  # why it was excluded, when it was


@dataclass
class Choice:
    chosen: str
    reference: str  # the fp32 reference candidate (accuracy is measured against it)
    measurements: list[Measurement]
    key: dict = field(default_factory=dict)
    measured_at: str = ""


# ------------------------------------------------------------------------------------------------
# Pure parts: accuracy bound, choice, report, cache key
# ------------------------------------------------------------------------------------------------

def accuracy_against(reference: np.ndarray, candidate: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """(lowest per-image cosine, mAP drop) of ``candidate`` embeddings against ``reference``'s,
    on a copy-detection set whose image i belongs to group ``groups[i]``."""
    from zoo.retrieval import retrieval_metrics

    def unit(x):
        x = np.asarray(x, np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    cosine = float(np.min(np.sum(unit(reference) * unit(candidate), axis=1)))
    drop = retrieval_metrics(reference, groups)["mAP"] - retrieval_metrics(candidate, groups)["mAP"]
    return cosine, float(drop)


def accuracy_passes(cosine_min: float, map_drop: float, queries: int) -> bool:
    return bool(np.isfinite(cosine_min) and cosine_min >= MIN_COSINE and map_drop <= MAP_SLACK_QUERIES / queries)


def choose(measurements: Sequence[Measurement]) -> Measurement:
    """The fastest candidate that passed the accuracy bound and was timed (the earlier on a tie)."""
    timed = [m for m in measurements if m.passed and m.images_per_second]
    if not timed:
        raise ZooError("engine auto: no engine passed the accuracy check ("
                       + "; ".join(f"{m.name}: {m.note}" for m in measurements) + "); choose one with --engine")
    return max(timed, key=lambda m: m.images_per_second)  # max keeps the first of equals


def describe(choice: Choice, cached: str) -> str:
    """One line: what was chosen, how much faster than the reference and the runner-up, at what accuracy."""
    by_name = {m.name: m for m in choice.measurements}
    best, ref = by_name[choice.chosen], by_name.get(choice.reference)
    speed = best.images_per_second or 0.0
    parts = [f"{speed:.1f} images/s"]
    if ref and ref.images_per_second and ref.name != best.name:
        parts.append(f"{speed / ref.images_per_second:.2f}x {ref.name}")
    others = sorted((m for m in choice.measurements if m.passed and m.images_per_second and m.name != best.name),
                    key=lambda m: -m.images_per_second)
    if others:
        parts.append(f"{speed / others[0].images_per_second:.2f}x runner-up {others[0].name}")
    if best.name != choice.reference:
        parts.append(f"vs fp32: cosine >= {best.cosine_min:.4f}, copy-detection mAP {_signed(-best.map_drop)}")
    excluded = [f"{m.name} ({m.note})" for m in choice.measurements if m.note]
    return (f"engine auto: chose {best.name} (" + ", ".join(parts) + ")"
            + (f"; excluded {', '.join(excluded)}" if excluded else "") + f" [{cached}]")


def _signed(x: float) -> str:
    return f"{round(x, 3) + 0.0:+.3f}"  # + 0.0: no "-0.000"


def cache_key(model: Mapping, batch: int, threads: int, versions: Mapping, machine: Mapping) -> dict:
    """Everything the choice depends on; a change in any of it means measuring again."""
    return {"format": FORMAT, "model": dict(model), "batch": int(batch), "threads": int(threads),
            "versions": dict(versions), "machine": dict(machine)}


def key_digest(key: Mapping) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def cpu_description(cpuinfo: str, fallback: str = "") -> dict:
    """CPU model name and a digest of its flags (``/proc/cpuinfo``'s text): the same model name
    can come with other instruction sets (a VM that hides AVX-512 or AMX)."""
    name = flags = ""
    for line in cpuinfo.splitlines():
        label, _, value = line.partition(":")
        if label.strip() == "model name" and not name:
            name = value.strip()
        elif label.strip() in ("flags", "Features") and not flags:
            flags = " ".join(sorted(value.split()))
    return {"cpu": name or fallback, "cpu_flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16]}


# ------------------------------------------------------------------------------------------------
# This machine and its engine versions
# ------------------------------------------------------------------------------------------------

def machine_description() -> dict:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    described = cpu_description(cpuinfo, fallback=platform.processor() or platform.machine())
    described["gpus"] = _gpu_names()
    return described


def _gpu_names() -> list[str]:
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken CUDA install reads as no GPU (as in export.tensorrt)
        return []


def engine_versions() -> dict:
    from importlib import metadata

    versions = {}
    for dist in ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "sslzoo"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


# ------------------------------------------------------------------------------------------------
# The cache
# ------------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    return cache_root() / "engine-choice"


def cache_file(key: Mapping) -> Path:
    return cache_dir() / f"{key_digest(key)[:32]}.json"


def read_cached(key: Mapping) -> Choice | None:
    """The cached choice for ``key``; None when there is none, or it is unreadable or for another key
    (measuring again loses nothing)."""
    try:
        data = json.loads(cache_file(key).read_text(encoding="utf-8"))
        if data.get("key") != json.loads(json.dumps(key)):
            return None
        return Choice(chosen=data["chosen"], reference=data["reference"], key=data["key"],
                      measurements=[Measurement(**m) for m in data["measurements"]],
                      measured_at=data.get("measured_at", ""))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_cached(choice: Choice) -> str:
    """Cache ``choice``; returns where, or why it could not (a read-only home does not stop extraction)."""
    path = cache_file(choice.key)
    record = {"chosen": choice.chosen, "reference": choice.reference, "key": choice.key,
              "measured_at": choice.measured_at, "measurements": [asdict(m) for m in choice.measurements]}
    try:
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    except (OSError, ZooError) as err:
        return f"measured now; not cached: {err}"
    return f"measured now; cached in {path}"


# ------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------

def calibration_set(spec, input_kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(prepared images, copy groups): the shipped photos and strong distortions of each."""
    from zoo.retrieval import copy_detection_set

    from export.embedding import prepare_image

    cds = copy_detection_set(copies=CALIBRATION_COPIES)
    return np.stack([prepare_image(im, spec, input_kind) for im in cds.images]), np.asarray(cds.groups)


def _embed_timed(engine, images: np.ndarray, chunk: int, budget: float | None) -> tuple[np.ndarray | None, float]:
    """(embeddings, seconds); (None, seconds) once ``budget`` seconds are spent before the end."""
    rows, start = [], time.perf_counter()
    for i in range(0, len(images), chunk):
        rows.append(engine.embed(images[i:i + chunk]))
        if budget is not None and time.perf_counter() - start > budget and i + chunk < len(images):
            return None, time.perf_counter() - start
    return np.concatenate(rows), time.perf_counter() - start


def measure(candidates: Mapping[str, Callable[[], object]], timing_batch: np.ndarray, images: np.ndarray,
            groups: np.ndarray, rounds: int = 5, log: Callable[[str], None] | None = None) -> tuple[list[Measurement], dict]:
    """Open, check and time every candidate; the first is the fp32 reference.

    Returns the measurements and the engines that were opened and passed (name -> engine), so that
    the winner need not be opened again.
    """
    log = log or (lambda m: None)
    results: list[Measurement] = []
    engines: dict[str, object] = {}
    reference = None
    fastest_pass = None  # seconds of the fastest accurate candidate on the calibration set so far
    queries = len(groups)
    chunk = max(1, min(len(timing_batch), 16))
    for name, make in candidates.items():
        m = Measurement(name)
        results.append(m)
        try:
            engine = make()
        except ZooError as err:
            m.note = f"unavailable: {str(err).splitlines()[0][:160]}"
            log(f"  {name}: {m.note}")
            continue
        budget = None if fastest_pass is None or reference is None else TOO_SLOW * fastest_pass
        emb, seconds = _embed_timed(engine, images, chunk, budget)
        if emb is None:
            m.note = f"too slow: over {TOO_SLOW:g}x the fastest on the calibration set"
            log(f"  {name}: {m.note}")
            continue
        if reference is None:
            if not np.all(np.isfinite(emb)):
                raise ZooError(f"engine auto: the fp32 reference {name} gives non-finite embeddings on the shipped "
                               "photos; the model is broken")
            reference = emb
        m.cosine_min, m.map_drop = accuracy_against(reference, emb, groups)
        m.passed = accuracy_passes(m.cosine_min, m.map_drop, queries)
        if not m.passed:
            m.note = f"accuracy vs fp32: cosine {m.cosine_min:.4f}, mAP {_signed(-m.map_drop)}"
            log(f"  {name}: {m.note}")
            continue
        fastest_pass = seconds if fastest_pass is None else min(fastest_pass, seconds)  # a wrong engine sets no bar
        engines[name] = engine
    speeds = time_rounds(engines, timing_batch, rounds)
    for m in results:
        if m.name in speeds:
            m.images_per_second = speeds[m.name]
            log(f"  {m.name}: {m.images_per_second:.1f} images/s, cosine >= {m.cosine_min:.4f}, "
                f"mAP {_signed(-m.map_drop)} vs fp32")
    return results, engines


def time_rounds(engines: Mapping[str, object], batch: np.ndarray, rounds: int) -> dict[str, float]:
    """Median images/s of each engine over ``rounds`` rounds; each round runs every engine once, so
    a burst of load from other processes hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(max(1, rounds)):
        for name, engine in engines.items():
            start = time.perf_counter()
            engine.embed(batch)
            times[name].append(time.perf_counter() - start)
    return {name: len(batch) / statistics.median(t) for name, t in times.items()}


def select(candidates: Mapping[str, Callable[[], object]], key: dict, timing_batch: np.ndarray,
           calibration: Callable[[], tuple[np.ndarray, np.ndarray]], rounds: int = 5, remeasure: bool = False,
           log: Callable[[str], None] | None = None) -> tuple[object, Choice, str]:
    """(engine, choice, one-line report): the cached choice for ``key`` (only the winner is opened),
    else every candidate measured on ``calibration()`` (images, copy groups) and ``timing_batch``,
    and the choice cached."""
    cached = None if remeasure else read_cached(key)
    if cached is not None and cached.chosen in candidates:
        try:
            engine = candidates[cached.chosen]()
            return engine, cached, describe(cached, f"cached {cached.measured_at} in {cache_file(key)}; "
                                                    "--remeasure to measure again")
        except ZooError:
            pass  # it cannot be opened any more: measure again
    measurements, engines = measure(candidates, timing_batch, *calibration(), rounds=rounds, log=log)
    best = choose(measurements)
    choice = Choice(chosen=best.name, reference=next(iter(candidates)), measurements=measurements, key=key,
                    measured_at=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    where = write_cached(choice)
    return engines[best.name], choice, describe(choice, where)
