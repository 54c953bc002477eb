"""How often the quickstart's search finds the right photo, over many query distortions.

    OMP_NUM_THREADS=1 python bench/quickstart_search_hits.py [MODEL] [--queries 20] [--json-out FILE]

The quickstart (``export/quickstart.py``) indexes ``zoo.retrieval.copy_detection_set()`` (every
shipped photo and 7 strong copies of each, at most 256 px) and queries one distorted copy (crop,
colour, JPEG; seed 123) of a held-out photo. One query is one draw; this asks the same question
of ``--queries`` distortions (seeds 123, 124, ...) of each held-out photo (``zoo.photos.HELDOUT_PHOTOS``)
and counts how often the top hit is an image of the queried photo. MODEL (default: the
quickstart's) is embedded by the PyTorch embedding model that ``zoo export`` writes to ONNX.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from export.embedding import build_embedding_model, load_backbone, prepare_image
from zoo.photos import HELDOUT_PHOTOS, load_photo
from zoo.quickstart import QUICKSTART_MODEL
from zoo.retrieval import copy_detection_set, distort


def top_hit_counts(model_name: str, queries: int) -> dict[str, int]:
    """Per held-out photo, how many of ``queries`` distorted copies find that photo first."""
    backbone, weights = load_backbone(model_name)
    model, spec = build_embedding_model(backbone, model_name, weights)

    def embed(images):
        batch = torch.from_numpy(np.stack([prepare_image(im, spec.input, spec.input_kind) for im in images]))
        with torch.no_grad():
            return torch.nn.functional.normalize(model(batch), dim=1).numpy()

    index = copy_detection_set()
    database = embed(index.images)
    photo_of = [name.split("/")[0] for name in index.names]
    counts = {}
    for name in HELDOUT_PHOTOS:
        copies = [distort(load_photo(name), np.random.default_rng(123 + q), ["crop", "colour", "jpeg"])
                  for q in range(queries)]
        top = (embed(copies) @ database.T).argmax(axis=1)
        counts[name] = int(sum(photo_of[i] == name for i in top))
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=QUICKSTART_MODEL)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    counts = top_hit_counts(args.model, args.queries)
    for name, hits in counts.items():
        print(f"{name}: {hits}/{args.queries} top hits are {name}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"model": args.model, "queries": args.queries, "top_hits": counts},
                                            indent=2) + "\n")


if __name__ == "__main__":
    main()
