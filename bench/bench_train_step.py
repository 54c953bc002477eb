"""sslzoo's training step against a plain training loop over the same backbone, loss and batch.

    python bench/bench_train_step.py                          # SimCLR small, fp32 and (where native) bf16
    python bench/bench_train_step.py --recipe rotnet:small --precision fp32

sslzoo's side is the real engine (``training.engine.Trainer.run_epoch``) on the real recipe, its
data loaded as the recipe does (DataLoader over ``SampleView``: per-sample seeding and transform,
collation), with its schedule, logging and checkpoints (the epoch is cut to ``--steps`` steps, as
many as the recipe's ``checkpoint_every`` by default, so that one checkpoint falls in each epoch as
in a full run). The plain side is the loop anyone would write around the same method module: the
images kept as one uint8 tensor, a random batch passed through the same per-sample transform and
stacked, ``method(batch)["loss"]`` (the method's own augmentation, backbone, head and loss) under
the same autocast, ``backward()``, the same optimiser's ``step()`` and ``zero_grad()``; no
schedule, no logging, no checkpoints. Both start from the same weights, run on the same number of
threads, and alternate round by round (ABBA), so a burst of load from other processes hits both
alike; the first round of each is a warm-up and is not counted.

Where sslzoo's step time goes is measured by wrapping what the engine calls (data iterator, the
method's batched views, the forward, ``torch.autograd.backward``, the optimiser, ``after_step``,
the checkpoint and the log); "engine, other" is the rest of the step (learning-rate setting,
metric conversion, the progress bookkeeping). The JSON goes to --out; the CPU's model name and its
avx2 / avx512_bf16 / amx_bf16 flags are printed and stored beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from training.data import limit_dataset, open_dataset  # noqa: E402
from training.engine import Trainer, _build_optimizer, seed_everything  # noqa: E402
from training.methods import get_recipe, method_module  # noqa: E402
from training.precision import NATIVE_BF16_CPU_FLAGS, cpu_flags, cpu_name  # noqa: E402

CLOCKS = ("wall", "cpu")
PHASES = ("data", "augmentation", "forward", "backward", "optimizer", "after_step", "checkpoint", "log")


def now() -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds): on a machine shared with other jobs the CPU time
    is what the step itself costs, the wall time also what the others took from it."""
    return time.perf_counter(), time.process_time()


class Timers:
    """(wall, CPU) seconds spent per phase; ``wrap`` times every call of a function into one phase."""

    def __init__(self):
        self.seconds = {k: [0.0, 0.0] for k in PHASES}

    def add(self, phase, start, end=None):
        end = end or now()
        self.seconds[phase][0] += end[0] - start[0]
        self.seconds[phase][1] += end[1] - start[1]

    def snapshot(self):
        return {k: tuple(v) for k, v in self.seconds.items()}

    def wrap(self, phase, fn, active):
        def timed(*args, **kwargs):
            if active[0] is not self:
                return fn(*args, **kwargs)
            t = now()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(phase, t)
        return timed


class TimedIterator:
    def __init__(self, it, timers):
        self.it, self.timers = it, timers

    def __next__(self):
        t = now()
        try:
            return next(self.it)
        finally:
            self.timers.add("data", t)


def instrument_views(method, timers, active):
    """Time the method's batched augmentation (``self.views(x)`` in its forward), when it has one."""
    views = getattr(method, "views", None)
    if views is not None and callable(views):
        method.views = timers.wrap("augmentation", views, active)


def sslzoo_side(method_cls, recipe, out, timers, active):
    trainer = Trainer(method_cls, recipe, out, progress=False)
    trainer.resume_or_start()
    instrument_views(trainer.method, timers, active)
    model = trainer.model
    trainer.model = timers.wrap("forward", model, active)
    opt = trainer.optimizer
    opt.step = timers.wrap("optimizer", opt.step, active)
    opt.zero_grad = timers.wrap("optimizer", opt.zero_grad, active)
    trainer.method.after_step = timers.wrap("after_step", trainer.method.after_step, active)
    trainer.checkpoint = timers.wrap("checkpoint", trainer.checkpoint, active)
    trainer.log.write = timers.wrap("log", trainer.log.write, active)
    step = trainer.train_step
    trainer.train_step = lambda epoch, batches: step(epoch, batches if isinstance(batches, TimedIterator)
                                                     else TimedIterator(batches, timers))
    # run_epoch makes a new iterator each epoch; wrap it on first use
    return trainer


def plain_side(method_cls, recipe, precision, timers, active):
    """The plain loop's state: the same method module (same initial weights), optimiser and data."""
    seed_everything(recipe.seed)
    dataset = limit_dataset(open_dataset(recipe.data, "train"), recipe.limit, recipe.seed)
    method = method_cls(recipe)
    method.train()
    optimizer = _build_optimizer(method, recipe)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])  # uint8, loaded once
    labels = torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
    transform = method.train_transform()
    instrument_views(method, timers, active)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    micro = recipe.batch_size

    def step():
        t0 = now()
        index = torch.randint(len(images), (micro,))
        items = [transform(images[i]) for i in index.tolist()]
        x = tuple(torch.stack(v) for v in zip(*items)) if isinstance(items[0], tuple) else torch.stack(items)
        batch = {"x": x, "label": labels[index], "index": index}
        t1 = now()
        with autocast:
            loss = method(batch)["loss"].float()
        t2 = now()
        loss.backward()
        t3 = now()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t4 = now()
        timers.add("data", t0, t1)
        timers.add("forward", t1, t2)
        timers.add("backward", t2, t3)
        timers.add("optimizer", t3, t4)
    return step


def measure(method_name, recipe_name, precision, steps, rounds, log):
    module = method_module(method_name)
    base = get_recipe(method_name, recipe_name)
    steps = steps or base.checkpoint_every or 20
    if base.accumulate != 1:
        raise SystemExit("recipes with gradient accumulation are not supported by this benchmark")
    recipe = base.replace(precision=precision, limit=steps * base.batch_size, epochs=rounds + 1, workers=0)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        active = [None]
        ours, plain = Timers(), Timers()
        trainer = sslzoo_side(module.METHOD, recipe, Path(tmp) / "run", ours, active)
        plain_step = plain_side(module.METHOD, recipe, precision, plain, active)
        real_backward = torch.autograd.backward
        times = {"sslzoo": [], "plain": []}

        def run(side, epoch):
            timers = ours if side == "sslzoo" else plain
            before = timers.snapshot()
            active[0] = timers
            if side == "sslzoo":
                torch.autograd.backward = ours.wrap("backward", real_backward, active)
            t = now()
            if side == "sslzoo":
                trainer.run_epoch(epoch)
            else:
                for _ in range(steps):
                    plain_step()
            end = now()
            torch.autograd.backward = real_backward
            active[0] = None
            return ((end[0] - t[0], end[1] - t[1]),
                    {k: (timers.seconds[k][0] - before[k][0], timers.seconds[k][1] - before[k][1]) for k in PHASES})

        breakdown = {side: {k: [0.0, 0.0] for k in PHASES} for side in ("sslzoo", "plain")}
        for r in range(rounds + 1):
            for side in ("sslzoo", "plain") if r % 2 == 0 else ("plain", "sslzoo"):
                elapsed, phases = run(side, r)
                log(f"  {precision} round {r}{' (warm-up)' if r == 0 else ''}: {side} "
                    f"{steps * recipe.batch_size / elapsed[0]:.1f} img/s wall, "
                    f"{steps * recipe.batch_size / elapsed[1]:.1f} img/CPU-s")
                if r == 0:
                    continue
                times[side].append(elapsed)
                for k in PHASES:
                    breakdown[side][k][0] += phases[k][0]
                    breakdown[side][k][1] += phases[k][1]
        images = steps * recipe.batch_size
        for side in ("sslzoo", "plain"):
            results[side] = {}
            for c, clock in enumerate(CLOCKS):
                seconds = [t[c] for t in times[side]]
                per_step = {k: 1000 * v[c] / (steps * rounds) for k, v in breakdown[side].items()}
                per_step["forward"] -= per_step["augmentation"]  # the views run inside the forward
                per_step["engine, other"] = 1000 * sum(seconds) / (steps * rounds) - sum(per_step.values())
                results[side][clock] = {
                    "images_per_second_per_round": [round(images / t, 2) for t in seconds],
                    "images_per_second_median": round(images / statistics.median(seconds), 2),
                    "ms_per_step": {k: round(v, 2) for k, v in per_step.items()},
                }
        for c, clock in enumerate(CLOCKS):
            per_round = [p[c] / s[c] for s, p in zip(times["sslzoo"], times["plain"])]
            results[f"ratio_{clock}"] = {"median_of_rounds": round(statistics.median(per_round), 3),
                                         "per_round": [round(x, 3) for x in per_round]}
    return {"recipe": f"{method_name}:{recipe_name}", "model": recipe.model, "batch_size": recipe.batch_size,
            "steps_per_round": steps, "rounds": rounds, "precision": precision, **results}


def print_report(result):
    cpu = result["cpu"]
    print(f"CPU: {cpu['model_name']} (flags: {', '.join(cpu['flags']) or 'none of avx2/avx512_bf16/amx_bf16'}); "
          f"{result['threads']} threads; torch {result['torch']}")
    for r in result["runs"]:
        print(f"\n{r['recipe']} ({r['model']}), batch {r['batch_size']}, {r['precision']}, "
              f"{r['rounds']} rounds of {r['steps_per_round']} steps")
        for clock in CLOCKS:
            unit = "images/s" if clock == "wall" else "images per CPU-second"
            print(f"  {unit} (median of rounds): sslzoo {r['sslzoo'][clock]['images_per_second_median']}, "
                  f"plain {r['plain'][clock]['images_per_second_median']}; sslzoo / plain "
                  f"{r[f'ratio_{clock}']['median_of_rounds']} (per round: {r[f'ratio_{clock}']['per_round']})")
        print(f"  {'ms per step':<16}" + "".join(f"{f'{s} {c}':>14}" for s in ("sslzoo", "plain") for c in CLOCKS))
        for k in r["sslzoo"]["wall"]["ms_per_step"]:
            print(f"  {k:<16}" + "".join(f"{r[s][c]['ms_per_step'][k]:>14.1f}" for s in ("sslzoo", "plain")
                                         for c in CLOCKS))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="simclr:small", help="METHOD:RECIPE (default simclr:small)")
    ap.add_argument("--precision", default=None,
                    help="comma-separated; default fp32, plus bf16 where the CPU computes in bf16")
    ap.add_argument("--steps", type=int, default=None, help="steps per round (default: the recipe's checkpoint_every)")
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds per side, after one warm-up round")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_step_cpu.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    flags = cpu_flags()
    native = bool(flags & set(NATIVE_BF16_CPU_FLAGS))
    precisions = args.precision.split(",") if args.precision else ["fp32"] + (["bf16"] if native else [])
    method_name, _, recipe_name = args.recipe.partition(":")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    runs = [measure(method_name, recipe_name or "small", p, args.steps, args.rounds, log) for p in precisions]
    result = {
        "command": "python bench/bench_train_step.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "cpu": {"model_name": cpu_name(), "flags": sorted(flags & {"avx2", "avx512_bf16", "amx_bf16"})},
        "threads": torch.get_num_threads(), "torch": torch.__version__, "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_report(result)


if __name__ == "__main__":
    main()
