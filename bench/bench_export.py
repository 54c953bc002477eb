"""Throughput of the deployment path, measured in one run: engines, end-to-end extraction, indexes.

    python bench/bench_export.py                       # ResNet-50 at 224, this machine's CPUs
    python bench/bench_export.py --million             # + IVF-PQ on 1M x 128-d vectors
    python bench/bench_export.py --quick               # a small model and small sizes (smoke run)
    python bench/bench_export.py --auto                # --engine auto: candidates, choice, peak, extract

What it measures (printed as a table, written as JSON to --out):

1. engines: images/s of PyTorch eager, ONNX Runtime fp32 and ONNX Runtime int8 (static QDQ,
   calibrated on real photos) on one batch size, in interleaved rounds so that a burst of load from
   other processes hits every engine alike (the best round of each is kept); TensorRT and the
   CUDA/TensorRT providers of onnxruntime-gpu where a GPU exists. fp32 images/s are also shown as a
   share of the machine's fp32 peak (--peak-gflops; 256 for the 2 Sapphire Rapids cores here).
2. accuracy: max |ONNX - PyTorch| on real photos, and copy-detection mAP / recall@1 (zoo.retrieval)
   of each engine, so that int8's speed is shown next to what it costs.
3. end to end: `zoo extract`'s pipeline (decoding threads + batching + engine) on JPEG files
   written from the copy-detection set at full resolution, against the engine alone on the same
   images already decoded, measured back to back.
4. indexes: recall@10 against exact search and queries/s of flat, IVF-PQ (+ exact re-ranking) and
   HNSW, each tuned by `export.index.build_and_tune` to the recall target, queries timed on one
   thread (FAISS's blocked exact search loses badly to OpenMP barriers on a loaded 2-core machine,
   which would flatter the approximate indexes), on 140,000 real vectors
   (Fashion-MNIST images and shifted/flipped copies, pixels PCA-reduced to 128-d); with --million,
   IVF-PQ on 1,000,000 such vectors.
5. with --auto (only that): `--engine auto` for a ResNet-50 at 224 and a small model: every
   candidate's images/s, accuracy against fp32 and share of the machine's peak (a 2048^3 matrix
   product in fp32, bf16 and int8, timed in the same rounds with the same threads), the choice, and
   `zoo extract`'s embed loop with the default engine against the fastest passing candidate.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# 1-2. engines and accuracy
# ------------------------------------------------------------------------------------------------

def model_gflops(model, example) -> float:
    """GFLOPs (2 x multiply-adds) of one image through the wrapped model."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example[:1])
    return counter.get_total_flops() / 1e9


def throughput(engines: dict, batch: np.ndarray, seconds: float, rounds: int) -> dict[str, float]:
    """Best-of-rounds images/s per engine; the rounds interleave the engines."""
    best = {name: 0.0 for name in engines}
    for name, eng in engines.items():  # warm-up: first-run allocations, ORT's kernel choices
        eng.embed(batch)
    for r in range(rounds):
        for name, eng in engines.items():
            n, start = 0, time.perf_counter()
            while True:
                eng.embed(batch)
                n += len(batch)
                elapsed = time.perf_counter() - start
                if elapsed >= seconds / rounds:
                    break
            best[name] = max(best[name], n / elapsed)
            log(f"  round {r + 1}/{rounds} {name}: {n / elapsed:.1f} images/s")
    return best


def gpu_engines(onnx_fp32, onnx_int8, work: Path) -> tuple[dict, list[str]]:
    """TensorRT / CUDA engines where a GPU exists; otherwise the one-line reasons."""
    from zoo.errors import ZooError

    from export.engines import OnnxRuntimeEngine
    from export.tensorrt import TensorRTEngine

    engines, notes = {}, []
    for label, make in (
        ("tensorrt fp32", lambda: TensorRTEngine(onnx_fp32, cache_dir=work / "trt")),
        ("tensorrt int8", lambda: TensorRTEngine(onnx_int8, cache_dir=work / "trt")),
        ("onnxruntime cuda", lambda: OnnxRuntimeEngine(onnx_fp32, provider="cuda")),
        ("onnxruntime tensorrt", lambda: OnnxRuntimeEngine(onnx_fp32, provider="tensorrt", trt_cache_dir=work / "trt")),
    ):
        try:
            engines[label] = make()
        except ZooError as err:
            notes.append(f"{label}: {err}")
    return engines, notes


def bench_engines(args, work: Path) -> dict:
    import torch

    from zoo.retrieval import copy_detection_set, retrieval_metrics

    from export.embedding import build_embedding_model, load_backbone, prepare_image
    from export.engines import OnnxRuntimeEngine, TorchEngine
    from export.onnx_export import export_onnx, photo_batch, quantize_int8, read_metadata, verify_onnx

    torch.set_num_threads(args.threads)
    backbone, weights = load_backbone(args.model)
    model, spec = build_embedding_model(backbone, args.model, weights, pool=args.pool)
    t = time.perf_counter()
    fp32 = export_onnx(model, spec, work / "fp32.onnx")
    export_s = time.perf_counter() - t
    diff32 = verify_onnx(model, spec, fp32)
    t = time.perf_counter()
    int8 = quantize_int8(fp32, work / "int8.onnx", spec)
    quant_s = time.perf_counter() - t
    diff8 = verify_onnx(model, read_metadata(int8), int8)
    log(f"exported {spec.model} ({weights}) in {export_s:.0f} s, int8 in {quant_s:.0f} s; "
        f"max diff fp32 {diff32:.1e}, int8 {diff8:.1e}")
    engines = {
        "pytorch eager": TorchEngine(model, spec),
        "onnxruntime fp32": OnnxRuntimeEngine(fp32, threads=args.threads),
        "onnxruntime int8": OnnxRuntimeEngine(int8, threads=args.threads),
    }
    gpu, gpu_notes = gpu_engines(fp32, int8, work)
    batch = photo_batch(spec.input, spec.input_kind, args.batch_size)
    rates = throughput({**engines, **gpu}, batch, args.seconds, args.rounds)

    cds = copy_detection_set(copies=7)
    cds_batch = np.stack([prepare_image(im, spec.input, spec.input_kind) for im in cds.images])
    accuracy = {}
    for name, eng in {**engines, **gpu}.items():
        emb = np.concatenate([eng.embed(cds_batch[i:i + 32]) for i in range(0, len(cds_batch), 32)])
        accuracy[name] = retrieval_metrics(emb, cds.groups)
    gflops = model_gflops(model, torch.from_numpy(batch))
    return {"model": spec.model, "weights": weights, "layer": spec.layer, "pool": spec.pool, "dim": spec.dim,
            "input": f"{spec.input_kind} {spec.input.size}x{spec.input.size}", "batch_size": args.batch_size,
            "threads": args.threads, "gflops_per_image": gflops, "export_seconds": export_s,
            "int8_seconds": quant_s, "max_abs_diff": {"onnxruntime fp32": diff32, "onnxruntime int8": diff8},
            "images_per_second": rates, "copy_detection": accuracy, "gpu_notes": gpu_notes,
            "copy_detection_images": len(cds.images), "onnx": {"fp32": str(fp32), "int8": str(int8)},
            "_engines": {**engines, **gpu}}


# ------------------------------------------------------------------------------------------------
# 3. end to end from JPEG files
# ------------------------------------------------------------------------------------------------

def write_jpegs(folder: Path, count: int) -> list[Path]:
    """Copy-detection images (originals + strong distortions) at full photo resolution, as JPEG."""
    from PIL import Image

    from zoo.photos import load_photos
    from zoo.retrieval import copy_detection_set

    photos = load_photos()
    copies = max(0, -(-count // len(photos)) - 1)
    cds = copy_detection_set(copies=copies, max_side=1024)
    paths = []
    for i, image in enumerate(cds.images[:count]):
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(image).save(path, quality=90)
        paths.append(path)
    return paths


def bench_end_to_end(args, engines: dict, work: Path) -> dict:
    from export.extract import decode, extract

    folder = work / "jpegs"
    folder.mkdir()
    paths = write_jpegs(folder, args.jpegs)
    sizes = [p.stat().st_size for p in paths]
    log(f"wrote {len(paths)} JPEG files ({np.mean(sizes) / 1e3:.0f} kB on average)")
    results = {}
    for name in ("onnxruntime fp32", "onnxruntime int8"):
        eng = engines[name]
        decoded = np.stack([decode(str(p), eng.spec.input, eng.spec.input_kind)[0] for p in paths])
        best_e2e = best_engine = 0.0
        for r in range(args.rounds):
            t = time.perf_counter()
            for i in range(0, len(decoded), args.batch_size):
                eng.embed(decoded[i:i + args.batch_size])
            best_engine = max(best_engine, len(decoded) / (time.perf_counter() - t))
            summary = extract(eng, [folder], work / f"extract-{name.split()[-1]}-{r}", batch_size=args.batch_size,
                              workers=args.workers, progress=False)
            best_e2e = max(best_e2e, summary["images_per_second"])
            log(f"  round {r + 1}/{args.rounds} {name}: extract {summary['images_per_second']:.1f} images/s, "
                f"engine alone (best so far) {best_engine:.1f}")
        results[name] = {"extract_images_per_second": best_e2e, "engine_images_per_second": best_engine,
                         "ratio": best_e2e / best_engine}
    return {"jpegs": len(paths), "mean_jpeg_kb": float(np.mean(sizes) / 1e3), "workers": args.workers,
            "engines": results}


# ------------------------------------------------------------------------------------------------
# 4. indexes
# ------------------------------------------------------------------------------------------------

def read_idx_images(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    n, h, w = (int(v) for v in np.frombuffer(data[4:16], ">u4"))
    return np.frombuffer(data[16:], np.uint8).reshape(n, h, w)


def fmnist_vectors(n: int, dim: int = 128, seed: int = 0) -> np.ndarray:
    """n real vectors: the 70,000 Fashion-MNIST images, then copies shifted by 0-4 pixels (and
    every other block mirrored), each block of 70,000 with one shift; pixels PCA-reduced to ``dim``
    (PCA learned on the originals) and L2-normalised."""
    import faiss

    base = np.concatenate([read_idx_images(FMNIST / f"{s}-images-idx3-ubyte.gz") for s in ("train", "t10k")])
    rng = np.random.default_rng(seed)
    padded = np.pad(base, ((0, 0), (2, 2), (2, 2)))
    originals = base.reshape(len(base), -1).astype(np.float32) / 255.0
    mean = originals.mean(0)
    pca = faiss.PCAMatrix(784, dim)
    pca.train(originals - mean)
    out = np.empty((n, dim), np.float32)
    for block, start in enumerate(range(0, n, len(base))):
        count = min(len(base), n - start)
        if block == 0:
            imgs = base[:count]
        else:
            dy, dx = rng.integers(0, 5, 2)
            imgs = padded[:count, dy:dy + 28, dx:dx + 28]
            if block % 2:
                imgs = imgs[:, :, ::-1]
        out[start:start + count] = pca.apply(np.ascontiguousarray(imgs.reshape(count, -1), np.float32) / 255.0 - mean)
    out /= np.linalg.norm(out, axis=1, keepdims=True) + 1e-12
    return out


def bench_indexes(vectors: np.ndarray, types, target: float, label: str) -> list[dict]:
    from export.index import BuildParams, build_and_tune

    rows = []
    for index_type in types:
        t = time.perf_counter()
        _, meta = build_and_tune(vectors, BuildParams(type=index_type), recall_target=target, num_queries=1000,
                                 log=log, strict=False, search_threads=1)
        tuning = meta["tuning"]
        rows.append({"vectors": label, "n": len(vectors), "dim": vectors.shape[1], "type": index_type,
                     "search_params": meta["search_params"], "recall@10": tuning["recall"], "qps": tuning["qps"],
                     "exact_qps": tuning["exact_qps"], "speedup": tuning["speedup"],
                     "build_seconds": tuning["build_seconds"], "total_seconds": time.perf_counter() - t,
                     "reached_target": tuning["reached"], "trials": tuning["trials"]})
    return rows


# ------------------------------------------------------------------------------------------------
# 5. --engine auto (--auto): every candidate, the choice, the share of the measured peak, and
#    `zoo extract`'s default engine against the fastest engine found here
# ------------------------------------------------------------------------------------------------

PEAK_SIZE = 2048


def matmul_peaks(threads: int, seconds: float = 0.5) -> dict[str, float]:
    """G(FL)OP/s of a 2048^3 matrix product on ``threads`` threads in fp32, bf16 and int8 (torch's
    oneDNN kernels: AVX-512/AMX where the CPU has them, emulation where it does not): the
    machine's dense peak, measured rather than computed from a data sheet."""
    import torch

    torch.set_num_threads(threads)
    peaks = {}
    for label, make, mm in (
        ("fp32", lambda: torch.randn(PEAK_SIZE, PEAK_SIZE), torch.mm),
        ("bf16", lambda: torch.randn(PEAK_SIZE, PEAK_SIZE, dtype=torch.bfloat16), torch.mm),
        ("int8", lambda: torch.randint(-128, 128, (PEAK_SIZE, PEAK_SIZE), dtype=torch.int8), torch._int_mm),
    ):
        a, b = make(), make()
        try:
            mm(a, b)
        except RuntimeError as err:  # no kernel for this precision here
            log(f"  peak {label}: not measured ({str(err).splitlines()[0]})")
            continue
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds or n == 0:
            mm(a, b)
            n += 1
        peaks[label] = 2 * PEAK_SIZE ** 3 * n / elapsed / 1e9
    return peaks


def precision_of(engine_name: str) -> str:
    return next((p for p in ("int8", "bf16", "fp16") if p in engine_name), "fp32")


def images_per_second(engine, batch: np.ndarray, seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or n == 0:
        engine.embed(batch)
        n += len(batch)
    return n / elapsed


def bench_auto(name: str, args, work: Path) -> dict:
    """Selection as `zoo extract NAME` does it on first use (a fresh cache), then, in interleaved
    rounds: the matrix-product peaks, every candidate on its own, and `zoo extract`'s embed loop with
    the engine the selection chose (read back from the cache, as a second extraction would)."""
    from zoo.errors import ZooError

    from export.embedding import build_embedding_model, load_backbone
    from export.engines import auto_candidates, open_auto_engine
    from export.extract import extract
    from export.onnx_export import photo_batch

    folder = work / name
    folder.mkdir()
    os.environ["ZOO_CACHE"] = str(folder / "cache")  # nothing cached: the selection is measured
    lines: list[str] = []
    start = time.perf_counter()
    chosen = open_auto_engine(name, workdir=folder, threads=args.threads, batch_size=args.batch_size,
                              rounds=args.selection_rounds, log=lines.append, progress=log)
    selection_s = time.perf_counter() - start
    log(lines[-1])
    choice = chosen.auto_choice
    del chosen
    backbone, weights = load_backbone(name)
    model, spec = build_embedding_model(backbone, name, weights)
    engines, notes = {}, {}
    for label, make in auto_candidates(model, spec, folder / "model.onnx", folder, args.threads, (1, 32, 128)).items():
        try:
            engines[label] = make()
        except ZooError as err:
            notes[label] = str(err).splitlines()[0]
    batch = photo_batch(spec.input, spec.input_kind, args.batch_size)
    gflops = model_gflops(model, __import__("torch").from_numpy(batch))
    jpegs = folder / "jpegs"
    jpegs.mkdir()
    write_jpegs(jpegs, args.jpegs)
    default = open_auto_engine(name, workdir=folder, threads=args.threads, batch_size=args.batch_size,
                               log=lines.append)  # what a second `zoo extract NAME` opens: the cached choice
    log(lines[-1])
    for eng in engines.values():  # warm-up
        eng.embed(batch)
    rates = {label: 0.0 for label in engines}
    peaks: dict[str, float] = {}
    extract_rate = 0.0
    for r in range(args.rounds):
        for label, value in matmul_peaks(args.threads).items():
            peaks[label] = max(peaks.get(label, 0.0), value)
        for label, eng in engines.items():
            rates[label] = max(rates[label], images_per_second(eng, batch, args.seconds / args.rounds / len(engines)))
        summary = extract(default, [jpegs], folder / f"extract-{r}", batch_size=args.batch_size, workers=0,
                          progress=False)
        extract_rate = max(extract_rate, summary["processed"] / summary["engine_seconds"])
        log(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items())
            + f"; zoo extract ({default.name}) {extract_rate:.1f} images/s; peaks "
            + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
    measured = {m.name: m for m in choice.measurements}
    passing = {k: v for k, v in rates.items() if measured.get(k) and measured[k].passed}
    fastest = max(passing, key=passing.get)
    candidates = []
    for label in measured:
        m, rate = measured[label], rates.get(label)
        precision = precision_of(label)
        candidates.append({
            "engine": label, "precision": precision, "images_per_second": rate,
            "selection_images_per_second": m.images_per_second, "cosine_min": m.cosine_min, "map_drop": m.map_drop,
            "passed": m.passed, "note": m.note or notes.get(label, ""),
            "peak_fraction": rate * gflops / peaks[precision] if rate and precision in peaks else None,
            "fp32_peak_fraction": rate * gflops / peaks["fp32"] if rate else None})
    return {"model": spec.model, "weights": weights, "input": f"{spec.input_kind} {spec.input.size}x{spec.input.size}",
            "dim": spec.dim, "batch_size": args.batch_size, "threads": args.threads, "gflops_per_image": gflops,
            "peaks_gflops": peaks, "selection_seconds": selection_s, "selection_line": lines[0],
            "second_open_line": lines[-1], "chosen": choice.chosen, "fastest": fastest, "candidates": candidates,
            "extract": {"engine": default.name, "images": args.jpegs, "embed_images_per_second": extract_rate,
                        "vs_fastest": extract_rate / rates[fastest]}}


def report_auto(result: dict) -> None:
    for e in result["auto"]:
        rows = []
        for c in e["candidates"]:
            rate = c["images_per_second"]
            rows.append((c["engine"] + (" (chosen)" if c["engine"] == e["chosen"] else ""),
                         f"{rate:.1f}" if rate else "-", f"{c['selection_images_per_second']:.1f}"
                         if c["selection_images_per_second"] else "-",
                         f"{c['cosine_min']:.4f}" if c["cosine_min"] is not None else "-",
                         f"{-c['map_drop']:+.3f}" if c["map_drop"] is not None else "-",
                         "yes" if c["passed"] else "no",
                         f"{100 * c['peak_fraction']:.0f}% of {c['precision']}" if c["peak_fraction"] else "-",
                         c["note"][:60]))
        print_table(f"{e['model']} ({e['weights']}), {e['input']}, batch {e['batch_size']}, {e['threads']} threads, "
                    f"{e['gflops_per_image']:.2f} GFLOP/image; peaks (GFLOP/s, GOP/s) "
                    + ", ".join(f"{k} {v:.0f}" for k, v in e["peaks_gflops"].items()),
                    ("engine", "images/s", "at selection", "cosine min", "mAP vs fp32", "passes", "of peak", "note"),
                    rows)
        x = e["extract"]
        print(f"{e['selection_line']}\nzoo extract {e['model']} (default --engine auto -> {x['engine']}): "
              f"{x['embed_images_per_second']:.1f} images/s in its embed loop = {100 * x['vs_fastest']:.0f}% of the "
              f"fastest passing engine here ({e['fastest']}); selection took {e['selection_seconds']:.0f} s")


def main_auto(args) -> None:
    result = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
              "machine": {"cpu": _cpu_name(), "cpu_flags": _cpu_flags(), "cpus": args.threads,
                          "python": platform.python_version(), "loadavg_start": os.getloadavg()[0]}, "auto": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.auto_models.split(","):
            log(f"== --engine auto: {name}")
            result["auto"].append(bench_auto(name, args, Path(tmp)))
            result["machine"]["loadavg_end"] = os.getloadavg()[0]
            result["seconds"] = time.perf_counter() - started
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    report_auto(result)
    print(f"\nwrote {args.out} in {result['seconds'] / 60:.1f} min; command: {result['command']}; CPU: "
          f"{result['machine']['cpu']} ({', '.join(result['machine']['cpu_flags']) or 'no AVX-512/AMX/AVX2'}), "
          f"load average {result['machine']['loadavg_start']:.1f} -> {result['machine']['loadavg_end']:.1f}")


# ------------------------------------------------------------------------------------------------

def print_table(title: str, header, rows) -> None:
    print(f"\n{title}")
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sela_resnet50", help="registry model (random-init) [sela_resnet50: ResNet-50 at 224]")
    parser.add_argument("--pool", default="avg")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--workers", type=int, default=2, help="decoding threads of the extraction")
    parser.add_argument("--seconds", type=float, default=45.0, help="measuring time per engine (all rounds)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jpegs", type=int, default=192)
    parser.add_argument("--index-size", type=int, default=140_000)
    parser.add_argument("--million", action="store_true", help="also IVF-PQ on 1,000,000 x 128-d vectors")
    parser.add_argument("--recall", type=float, default=0.95)
    parser.add_argument("--peak-gflops", type=float, default=256.0, help="fp32 peak of the CPUs used (GFLOP/s)")
    parser.add_argument("--quick", action="store_true", help="small model and sizes: a smoke run in a minute")
    parser.add_argument("--auto", action="store_true",
                        help="only --engine auto: every candidate, the choice, the share of the measured peak and "
                             "`zoo extract`'s default engine against the fastest (writes engine_auto_cpu.json)")
    parser.add_argument("--auto-models", default="random:sela_resnet50,pirl_resnet_small_fmnist",
                        help="with --auto: registry models, comma-separated")
    parser.add_argument("--selection-rounds", type=int, default=5, help="with --auto: timed batches per candidate "
                        "in the selection (as `zoo extract --measure-rounds`)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON [bench/results/export_cpu.json; with --auto, engine_auto_cpu.json]")
    args = parser.parse_args()
    args.out = args.out or ROOT / "bench" / "results" / ("engine_auto_cpu.json" if args.auto else "export_cpu.json")
    if args.auto:
        if args.batch_size == 16 and "--batch-size" not in sys.argv:
            args.batch_size = 32  # `zoo extract`'s default
        if "--jpegs" not in sys.argv:
            args.jpegs = 96
        main_auto(args)
        return
    if args.quick:
        args.model, args.seconds, args.rounds, args.jpegs, args.index_size = "rotnet_nin_fmnist", 3, 1, 24, 20_000
    import faiss

    faiss.omp_set_num_threads(args.threads)
    started = time.perf_counter()
    result = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
              "machine": {"cpu": _cpu_name(), "cpus": args.threads, "python": platform.python_version(),
                          "peak_gflops_fp32": args.peak_gflops, "loadavg_start": os.getloadavg()[0]}}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save():  # after every section, so a late failure keeps what was measured
        result["machine"]["loadavg_end"] = os.getloadavg()[0]
        result["seconds"] = time.perf_counter() - started
        args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        log("== engines")
        eng = bench_engines(args, work)
        engines = eng.pop("_engines")
        result["engines"] = eng
        save()
        log("== end to end")
        result["end_to_end"] = bench_end_to_end(args, engines, work)
        save()
        del engines
    log("== indexes")
    vectors = fmnist_vectors(args.index_size)
    result["indexes"] = bench_indexes(vectors, ("flat", "ivfpq", "hnsw"), args.recall,
                                      f"Fashion-MNIST + shifted copies, PCA-128 ({args.index_size:,})")
    save()
    if args.million:
        del vectors
        vectors = fmnist_vectors(1_000_000)
        result["indexes"] += bench_indexes(vectors, ("ivfpq",), args.recall,
                                           "Fashion-MNIST + shifted copies, PCA-128 (1,000,000)")
        save()
    report(result)
    print(f"\nwrote {args.out} in {result['seconds'] / 60:.1f} min; command: {result['command']}")


def report(result: dict) -> None:
    e = result["engines"]
    rates = e["images_per_second"]
    eager = rates["pytorch eager"]
    peak = result["machine"]["peak_gflops_fp32"]
    rows = []
    for name, rate in rates.items():
        acc = e["copy_detection"][name]
        share = f"{100 * rate * e['gflops_per_image'] / peak:.0f}%" if "int8" not in name else "-"
        rows.append((name, f"{rate:.1f}", f"{rate / eager:.2f}x", share, f"{e['max_abs_diff'].get(name, 0):.1e}",
                     f"{100 * acc['mAP']:.1f}", f"{100 * acc['recall@1']:.1f}"))
    print_table(f"{e['model']} ({e['weights']}), {e['input']}, batch {e['batch_size']}, {e['threads']} threads, "
                f"{e['gflops_per_image']:.1f} GFLOP/image",
                ("engine", "images/s", "vs eager", "of fp32 peak", "max |diff|", "copy-det. mAP", "recall@1"), rows)
    if "onnxruntime int8" in rates:
        print(f"ONNX Runtime fp32 / eager: {rates['onnxruntime fp32'] / eager:.2f}x; "
              f"int8 / fp32: {rates['onnxruntime int8'] / rates['onnxruntime fp32']:.2f}x")
    for note in e["gpu_notes"]:
        print(f"  (not measured) {note}")
    x = result["end_to_end"]
    print_table(f"end to end from {x['jpegs']} JPEG files ({x['mean_jpeg_kb']:.0f} kB avg), {x['workers']} decoding threads",
                ("engine", "zoo extract images/s", "engine alone images/s", "extract / engine"),
                [(n, f"{r['extract_images_per_second']:.1f}", f"{r['engine_images_per_second']:.1f}",
                  f"{100 * r['ratio']:.0f}%") for n, r in x["engines"].items()])
    print_table("indexes (recall@10 against exact search; 1,000 leave-one-out queries in one batch, one search thread)",
                ("vectors", "type", "search parameters", "recall@10", "QPS", "vs exact", "build s"),
                [(r["vectors"], r["type"], ", ".join(f"{k}={v}" for k, v in r["search_params"].items()) or "exact",
                  f"{r['recall@10']:.3f}" + ("" if r["reached_target"] else " (target not reached)"), f"{r['qps']:,.0f}", f"{r['speedup']:.1f}x", f"{r['build_seconds']:.0f}")
                 for r in result["indexes"]])


def _cpu_flags() -> list[str]:
    """The instruction-set flags that decide which engine wins (/proc/cpuinfo)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                                                        "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile"))
    except OSError:
        pass
    return []


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
