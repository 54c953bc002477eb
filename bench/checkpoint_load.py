"""Time checkpoint save / publish / load per model, and what building on the meta device saves.

    PYTHONPATH=. python bench/checkpoint_load.py [--models rotnet_alexnet,sela_resnet50] [--repeats 3]

"eager build" is the straightforward way (build with random init, then copy the weights in);
"from_pretrained" builds on the meta device and assigns the file's tensors. Reports medians;
on shared machines compare the ratio within one run, not absolute seconds across runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import zoo
from zoo.checkpoint import load_state_dict_strict, read_config, read_weights
from zoo.hub import LocalHub


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _eager_load(folder: Path) -> torch.nn.Module:
    config = read_config(folder)
    state = read_weights(folder / "model.safetensors", config["weights"]["sha256"])
    model = zoo.create_model(config["name"], **config["arch_kwargs"])
    load_state_dict_strict(model, state, str(folder))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="rotnet_nin_fmnist,npid_resnet18,sela_resnet50,rotnet_alexnet,deepcluster_vgg16")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="sslzoo-bench-"))
    os.environ["ZOO_HUB"] = str(work / "hub")
    print(f"{'model':<22} {'MB':>6} {'save s':>7} {'publish s':>9} {'eager build s':>13} {'from_pretrained s':>17} {'ratio':>6}")
    for name in args.models.split(","):
        model = zoo.create_model(name).eval()
        folder = work / name
        save = _median_seconds(lambda: model.save_pretrained(folder), 1)
        repo = zoo.get_model_entry(name).weights.hub_repo
        # The local hub's copy step alone (publish proper also needs a card with results).
        pub = _median_seconds(lambda: LocalHub().publish(folder, repo), 1)
        eager = _median_seconds(lambda: _eager_load(folder), args.repeats)
        meta = _median_seconds(lambda: zoo.from_pretrained(repo), args.repeats)
        size = (folder / "model.safetensors").stat().st_size / 1e6
        print(f"{name:<22} {size:>6.0f} {save:>7.2f} {pub:>9.2f} {eager:>13.2f} {meta:>17.2f} {eager / meta:>6.1f}")


if __name__ == "__main__":
    main()
