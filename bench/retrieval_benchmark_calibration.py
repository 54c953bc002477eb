"""Calibrate the copy-detection benchmark (training.retrieval_benchmark): how hard is it?

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/retrieval_benchmark_calibration.py \
        [--seeds 0,1,2] [--checkpoints 'runs/*-small-seed0/model'] [--json-out bench/results/retrieval_benchmark.json]

Measures, on the test and val benchmarks, mAP and recall@1 (with 95 % bootstrap intervals) of
raw pixels (each image resized to 32x32 grey, flattened), of random-init ``resnet_small`` networks
as ``simclr_resnet_small_fmnist`` builds them (BN statistics re-estimated on 2,000 Fashion-MNIST
training images, one network per seed), and of any trained checkpoints given; every feature layer
globally average-pooled. Prints a table per split and part (random init: mean +- sample std over
seeds, and the mean half-width of the intervals), then each model's layer chosen on val
(Fashion-MNIST mAP) with its test numbers.
"""

from __future__ import annotations

import argparse
import glob
import json
import time
from pathlib import Path

import numpy as np
import torch

import zoo
from training.data import fashion_mnist
from training.evaluation import calibrate_batchnorm, extract_features, global_pool, random_init
from training.retrieval_benchmark import benchmark_metrics, retrieval_benchmark
from zoo.preprocess import preprocess
from zoo.registry import InputSpec

ARCH = "simclr_resnet_small_fmnist"
PIXELS = InputSpec(size=32, resize=32, colour_space="grey", mean=(0.0,), std=(1.0,))


def pixel_features(images) -> np.ndarray:
    """Each image resized (shorter side) and centre-cropped to 32x32, grey in [0, 1], flattened."""
    return np.concatenate([preprocess(images[i:i + 1024], PIXELS).flatten(1).numpy()
                           for i in range(0, len(images), 1024)])


def measure(query_x, database_x, bench) -> dict:
    return benchmark_metrics(query_x, database_x, bench.positives, bench.part, database_parts=bench.database_part)


def model_results(model, bench) -> dict[str, dict]:
    layers = model.resolve_layers(None)
    pools = {name: global_pool() for name in layers}
    q, _ = extract_features(model, bench.queries, layers, pools)
    d, _ = extract_features(model, bench.database, layers, pools)
    return {name: measure(q[name].numpy(), d[name].numpy(), bench) for name in layers}


def fmt(r: dict) -> str:
    return (f"{r['map']:5.1f} [{r['map_ci'][0]:4.1f}, {r['map_ci'][1]:4.1f}]   "
            f"{r['r1']:5.1f} [{r['r1_ci'][0]:4.1f}, {r['r1_ci'][1]:4.1f}]")


def fmt_seeds(rs: list[dict]) -> str:
    cells = []
    for key in ("map", "r1"):
        values = [r[key] for r in rs]
        half = np.mean([(r[f"{key}_ci"][1] - r[f"{key}_ci"][0]) / 2 for r in rs])
        std = np.std(values, ddof=1) if len(values) > 1 else 0.0
        cells.append(f"{np.mean(values):5.1f} +- {std:3.1f} (CI +-{half:3.1f})")
    return "   ".join(cells)


def cell(r: dict | list[dict], part: str) -> str:
    """One table cell: a model's numbers on a part, or random init's over seeds."""
    return fmt_seeds([x["parts"][part] for x in r]) if isinstance(r, list) else fmt(r["parts"][part])


def measure_split(split: str, seeds: list[int], checkpoints: list[str], train) -> dict:
    start = time.perf_counter()
    bench = retrieval_benchmark(split)
    print(f"{bench.name}: built in {time.perf_counter() - start:.1f} s; {bench.description}", flush=True)
    res: dict = {"pixels": {"32x32 grey": measure(pixel_features(bench.queries.images),
                                                  pixel_features(bench.database.images), bench)}}
    res["random-init"] = {}
    for seed in seeds:
        model = calibrate_batchnorm(random_init(ARCH, {}, seed), train)
        for layer, r in model_results(model, bench).items():
            res["random-init"].setdefault(layer, []).append(r)
    for folder in checkpoints:
        res[folder] = model_results(zoo.from_pretrained(folder), bench)
    return res


def print_tables(name: str, res: dict) -> None:
    parts = res["pixels"]["32x32 grey"]["parts"]
    for part in parts:
        print(f"\n{name}, part {part} ({parts[part]['queries']} queries): mAP [95% CI]   recall@1 [95% CI]")
        for model_name, layers in res.items():
            for layer, r in layers.items():
                print(f"  {model_name[-40:]:<40} {layer:<10} {cell(r, part)}")


def print_chosen(rows: dict) -> None:
    print("\nlayer chosen on val (Fashion-MNIST mAP), its test numbers: fmnist | photos")
    for model_name, layers in rows["val"].items():
        def fm_map(r):
            return np.mean([x["parts"]["fmnist"]["map"] for x in (r if isinstance(r, list) else [r])])
        best = max(layers, key=lambda layer: fm_map(layers[layer]))
        test = rows["test"][model_name][best]
        print(f"  {model_name[-40:]:<40} {best:<10} {cell(test, 'fmnist')} | {cell(test, 'photos')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--checkpoints", default="", help="glob of checkpoint folders")
    parser.add_argument("--json-out", default="", help="write the rows as JSON to this file (the zoo CLI's spelling)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train = fashion_mnist(split="train")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    checkpoints = sorted(glob.glob(args.checkpoints)) if args.checkpoints else []
    rows = {split: measure_split(split, seeds, checkpoints, train) for split in ("val", "test")}
    for split in ("test", "val"):
        print_tables(f"copydetect-{split}", rows[split])
    print_chosen(rows)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
