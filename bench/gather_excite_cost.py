"""What Gather-Excite costs the small ResNet: parameters, FLOPs and images/s, beside the plain network.

    python bench/gather_excite_cost.py                  # 2 threads, batch 256 of 32x32 grey images
    python bench/gather_excite_cost.py --threads 1 --rounds 9

Three variants of the small recipes' ResNet (``multigrain_resnet_small_fmnist``'s architecture):
plain, GE-theta-minus (global extent) and GE-theta (extent 8), as the MultiGrain recipes ``small``,
``small-ge`` and ``small-ge-theta`` train them. FLOPs are ``torch.utils.flop_counter``'s (2 x the
multiply-adds of convolutions and matrix products) plus, counted here, GE's element-wise work: one
add per input value for the average pooling and one multiply per value for the excite (the sigmoid
of the small gathered map is left out). Speed: forward passes in eval mode, no gradient, timed in
interleaved rounds so that a burst of load from other processes hits every variant alike; the best
round of each is kept and the ratios to plain come from the same run. The CPU is printed with it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {"plain": {}, "GE-theta-minus (global)": {"gather_excite": "theta-minus", "ge_extent": 0},
            "GE-theta (extent 8)": {"gather_excite": "theta", "ge_extent": 8}}
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_description() -> str:
    name, flags = "unknown CPU", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            name = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    return f"{name}; flags: {', '.join(f for f in CPU_FLAGS if f in flags) or 'none of ' + ', '.join(CPU_FLAGS)}"


def flops(model, x) -> tuple[int, int]:
    """(conv/matmul FLOPs from torch's counter, GE's element-wise FLOPs) of one forward pass."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from zoo.backbones.gather_excite import GatherExcite

    elementwise = []
    hooks = [m.register_forward_hook(lambda m, inp, out: elementwise.append(2 * inp[0].numel()))
             for m in model.modules() if isinstance(m, GatherExcite)]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    for h in hooks:
        h.remove()
    return counter.get_total_flops(), sum(elementwise)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gather_excite_cost.json")
    args = parser.parse_args()

    import torch

    from zoo import create_model

    torch.set_num_threads(args.threads)
    models = {}
    for name, kwargs in VARIANTS.items():
        torch.manual_seed(0)
        models[name] = create_model("multigrain_resnet_small_fmnist", **kwargs).eval()
    x = torch.randn(args.batch, 1, 32, 32)
    best = {name: float("inf") for name in models}
    with torch.no_grad():
        for m in models.values():
            m(x)  # warm-up
        for _ in range(args.rounds):
            for name, m in models.items():
                start = time.perf_counter()
                m(x)
                best[name] = min(best[name], time.perf_counter() - start)
    rows = []
    for name, m in models.items():
        conv, extra = flops(m, x[:1])
        rows.append({"variant": name, "params": sum(p.numel() for p in m.parameters()),
                     "mflops_per_image": (conv + extra) / 1e6, "ge_elementwise_mflops": extra / 1e6,
                     "images_per_s": args.batch / best[name], "speed_vs_plain": best["plain"] / best[name]})
    command = "python bench/gather_excite_cost.py " + " ".join(sys.argv[1:])
    report = {"command": command.strip(), "cpu": cpu_description(), "threads": args.threads, "batch": args.batch,
              "rounds": args.rounds, "torch": torch.__version__, "rows": rows}
    print(f"{report['cpu']}; {args.threads} thread(s), batch {args.batch}, best of {args.rounds} interleaved rounds")
    print(f"{'variant':26} {'params':>8} {'MFLOPs/img':>11} {'img/s':>8} {'vs plain':>9}")
    for r in rows:
        print(f"{r['variant']:26} {r['params']:8,} {r['mflops_per_image']:11.2f} {r['images_per_s']:8.0f} "
              f"{r['speed_vs_plain']:9.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from zoo.checkpoint import atomic_write_text

    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
