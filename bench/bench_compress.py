"""Compressed models beside their originals, measured in one run: parameters, FLOPs, images/s.

    python bench/bench_compress.py original=exemplar_resnet_small_fmnist \\
        pruned-0.3=/work/runs-compress/exemplar-p30 pruned-0.5=/work/runs-compress/exemplar-p50 \\
        distilled=/work/runs-compress/exemplar-student \\
        --eval original=o.json --eval pruned-0.3=p30.json ...   # `zoo eval --json-out` files
    python bench/bench_compress.py --resnet50 --size 64      # + ResNet-50 shapes at 64 px

Each MODEL is LABEL=SOURCE (a registry name, checkpoint folder or random:NAME). For each: parameter
count, GFLOPs of one image (torch.utils.flop_counter), and images/s of PyTorch eager and ONNX
Runtime fp32 on the same uint8 batch of shipped photos with the same threads, in interleaved rounds
(best round kept, as bench/bench_export.py does, so that load from other processes hits every model
alike); the speed-up is each model's images/s over the first model's. ``--eval LABEL=FILE`` adds
the kNN top-1 and copy-detection mAP that ``zoo eval ... --protocol knn,retrieval --json-out FILE``
wrote. ``--resnet50`` adds ResNet-50 (``cpc_resnet50``, random weights: no pretrained ResNet-50 is
available offline) at ``--size`` pixels beside the same network pruned by ``zoo compress``'s
bookkeeping at 0.3 and 0.5 (channels chosen without scores: the shape, not the accuracy, is
measured). The CPU (model name and the avx2/avx512/amx flags) is printed beside the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_export import _cpu_name, log, model_gflops, throughput  # noqa: E402


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "?"
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "none of avx2/avx512/amx"


def embedding_engines(label: str, backbone, source: str, weights: str, size: int | None, work: Path, threads: int):
    """PyTorch eager and ONNX Runtime fp32 engines of one model (``size`` overrides its input size)."""
    from export.embedding import EmbeddingModel, build_embedding_model
    from export.engines import OnnxRuntimeEngine, TorchEngine
    from export.onnx_export import export_onnx, verify_onnx

    model, spec = build_embedding_model(backbone, source, weights)
    if size:
        spec = dataclasses.replace(spec, input=dataclasses.replace(spec.input, size=size, resize=size))
        model = EmbeddingModel(backbone, spec.input, spec.layer, spec.pool, spec.input_kind).eval()
    path = export_onnx(model, spec, work / f"{label}.onnx")
    diff = verify_onnx(model, spec, path)
    log(f"{label}: exported, max |onnx - torch| {diff:.1e}")
    return model, spec, {"eager": TorchEngine(model, spec), "ort": OnnxRuntimeEngine(path, threads=threads)}


def resnet50_models(size_ratios=(0.3, 0.5)):
    """cpc_resnet50 with random weights and the same network pruned at each ratio (shapes only)."""
    import torch

    from training.compress import channel_groups, prune_model, select_channels
    from zoo.registry import create_model

    torch.manual_seed(0)
    original = create_model("cpc_resnet50")
    groups = channel_groups(original)
    models = {"resnet50": original}
    for ratio in size_ratios:
        kept = select_channels({g.name: torch.zeros(g.size) for g in groups}, {g.name: g.floor for g in groups},
                               ratio, "layer")
        models[f"resnet50-pruned-{ratio}"] = prune_model(original, kept)
    return models


def eval_numbers(path: str) -> dict:
    """kNN top-1 and copy-detection mAP from a ``zoo eval --json-out`` file."""
    if not Path(path).is_file():
        log(f"{path} not written (yet): no kNN / mAP for it")
        return {}
    report = json.loads(Path(path).read_text())
    out = {}
    for result in report["results"]:
        if result.get("protocol_id") == "knn":
            out["knn"] = result["value"]
        elif result.get("protocol_id") == "retrieval" and result.get("metric") == "mAP":
            out["mAP"] = result["value"]
    return out


def main() -> None:
    import numpy as np
    import torch

    from export.embedding import load_backbone
    from export.onnx_export import photo_batch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", help="LABEL=SOURCE")
    ap.add_argument("--eval", action="append", default=[], help="LABEL=FILE from zoo eval --json-out")
    ap.add_argument("--resnet50", action="store_true")
    ap.add_argument("--size", type=int, default=64, help="ResNet-50's input size")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=6.0, help="per engine, over all rounds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="JSON results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows, engines, batches = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        groups = [[]]
        for item in args.models:
            label, source = item.split("=", 1)
            backbone, weights = load_backbone(source)
            groups[0].append((label, backbone, source, weights, None))
        if args.resnet50:
            groups.append([(label, m, "cpc_resnet50", "random-init", args.size) for label, m in resnet50_models().items()])
        for group in filter(None, groups):
            for label, backbone, source, weights, size in group:
                model, spec, engs = embedding_engines(label, backbone, source, weights, size, Path(tmp), args.threads)
                batch = photo_batch(spec.input, spec.input_kind, args.batch_size)
                batches[label] = batch
                engines.update({(label, k): e for k, e in engs.items()})
                rows.append({"label": label, "source": source, "input": spec.input.size, "dim": spec.dim,
                             "parameters": sum(p.numel() for p in backbone.parameters()),
                             "gflops": model_gflops(model, torch.from_numpy(batch))})
            # one interleaved measurement per group: every model of the group under the same load
            labels = [g[0] for g in group]
            for kind in ("eager", "ort"):
                rates = throughput({lb: _Fixed(engines[(lb, kind)], batches[lb]) for lb in labels}, np.zeros(args.batch_size),
                                   args.seconds, args.rounds)
                for row in rows:
                    if row["label"] in rates:
                        row[f"{kind}_img_s"] = rates[row["label"]]
            base = next(r for r in rows if r["label"] == labels[0])
            for row in rows:
                if row["label"] in labels:
                    for kind in ("eager", "ort"):
                        row[f"{kind}_speedup"] = row[f"{kind}_img_s"] / base[f"{kind}_img_s"]
    evals = {k: eval_numbers(v) for k, v in (e.split("=", 1) for e in args.eval)}  # read last: evals may still run
    for row in rows:
        row.update(evals.get(row["label"], {}))
    cpu = f"{_cpu_name()} ({cpu_flags()}), {args.threads} threads, batch {args.batch_size}"
    print(f"\nCPU: {cpu}\ncommand: python {' '.join(sys.argv)}\n")
    print("| model | input | params | GFLOPs | eager img/s | ORT fp32 img/s | speed-up (eager / ORT) | kNN top-1 | mAP |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['input']} px | {r['parameters'] / 1e6:.3f} M | {r['gflops']:.3f} | "
              f"{r['eager_img_s']:,.1f} | {r['ort_img_s']:,.1f} | {r['eager_speedup']:.2f}x / {r['ort_speedup']:.2f}x | "
              f"{r.get('knn', '-')} | {r.get('mAP', '-')} |")
    if args.out:
        args.out.write_text(json.dumps({"cpu": cpu, "command": sys.argv, "rows": rows}, indent=2) + "\n")


class _Fixed:
    """An engine that always embeds its own batch (``throughput`` passes one batch to all engines)."""

    def __init__(self, engine, batch):
        self.engine, self.batch = engine, batch

    def embed(self, _):
        self.engine.embed(self.batch)
        return None


if __name__ == "__main__":
    main()
