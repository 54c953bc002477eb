"""The held-out photo copy-detection benchmark through the commands a user runs.

    OMP_NUM_THREADS=1 python bench/photo_retrieval_cli.py [MODEL] [--keep DIR] [--json-out FILE]

Writes ``heldout_photo_benchmark("test")`` (the 36 tiles of the held-out photos and their 360
distorted copies; ``zoo eval --protocol photo-retrieval`` scores the same images) as PNG files, then
runs ``zoo extract MODEL db -o emb --engine onnx``, ``zoo index build emb -o ix`` and ``zoo search ix
q/*.png -k 1 --json``, and counts the queries whose top hit is the tile they were copied from. For a
model's own weights that count is ``zoo eval``'s recall@1 of the layer the model exports (PNG is
lossless, the engine is ONNX Runtime fp32), so the card's number is what a user gets from the CLI.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from training.retrieval_benchmark import heldout_photo_benchmark
from zoo.quickstart import QUICKSTART_MODEL


def write_benchmark(folder: Path) -> dict[str, str]:
    """The benchmark's database as ``db/tileNN.png`` and queries as ``q/qNNN-tileNN.png``; returns
    query file -> the database file it was copied from."""
    bench = heldout_photo_benchmark("test")
    (folder / "db").mkdir(parents=True)
    (folder / "q").mkdir()
    for i, image in enumerate(bench.database.images):
        Image.fromarray(image).save(folder / "db" / f"tile{i:02d}.png")
    truth = {}
    for i, (image, tile) in enumerate(zip(bench.queries.images, bench.queries.labels)):
        name = f"q/q{i:03d}-tile{int(tile):02d}.png"
        Image.fromarray(image).save(folder / name)
        truth[name] = f"db/tile{int(tile):02d}.png"
    return truth


def zoo(*args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "zoo", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"zoo {' '.join(args[:2])} failed: {done.stderr.strip().splitlines()[-1]}")
    return done.stdout


def top1_hits(model: str, folder: Path) -> tuple[int, int]:
    truth = write_benchmark(folder)
    zoo("extract", model, "db", "-o", "emb", "--engine", "onnx", "--no-progress", cwd=folder)
    zoo("index", "build", "emb", "-o", "ix", cwd=folder)
    answers = json.loads(zoo("search", "ix", *sorted(truth), "-k", "1", "--json", cwd=folder))
    hits = sum(a["results"][0]["id"] == truth[a["query"]] for a in answers)
    return hits, len(answers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=QUICKSTART_MODEL)
    ap.add_argument("--keep", type=Path, help="write the images, embeddings and index here (a new folder)")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        hits, queries = top1_hits(args.model, args.keep or Path(scratch))
    print(f"{args.model}: {hits}/{queries} queries find their tile first (recall@1 {100 * hits / queries:.2f} %) "
          "through zoo extract -> zoo index build -> zoo search")
    if args.json_out:
        args.json_out.write_text(json.dumps({"model": args.model, "queries": queries, "top1_hits": hits,
                                             "recall_at_1": round(100 * hits / queries, 2)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
