"""A copy-detection retrieval benchmark large enough to separate methods, with bootstrap CIs.

Two parts, each searched on its own (a query ranks only the database images of its own part):

* ``fmnist``: originals are Fashion-MNIST images the small training recipes never see (the test
  split for ``split="test"``); each yields one strongly distorted copy, a query whose single
  positive is its original; the database holds the originals and further images of the same
  split as distractors. ``split="val"`` builds the same thing from the train split, for choosing
  a layer without looking at the test set.
* ``photos`` (test only): the shipped colour photos (``zoo.photos``); several strongly distorted
  copies of each are the queries, the originals of all photos the database. It needs no
  Fashion-MNIST, so colour-photo models can be measured on it alone (``benchmark_part``).

Copies come from ``zoo.retrieval.distort``. A Fashion-MNIST copy gets a geometric change (a crop
keeping 75-95 % of the area, a rotation by 4-12 degrees inside the frame, or a flip) and one
photometric change or degradation (contrast 0.6-1.5 and brightness 0.7-1.3, Gaussian blur of
radius 0.5-0.9 px, noise of sigma 20/255, JPEG at quality 10-39, or resolution cut to 50-80 % per
side), then is resized back to 28x28 (``FMNIST_STRENGTHS``). On 28x28 images in a database of
6,000 such ranges are strong: raw pixels find about a third of the copies. Photo copies follow
``zoo.retrieval.copy_detection_set``.

``benchmark_metrics`` ranks the database by the inner product of L2-normalised rows and returns
mAP and recall@1 in % with 95 % percentile-bootstrap intervals over queries (seeded).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from training.data import ImageList, fashion_mnist
from zoo.errors import UsageError
from zoo.retrieval import Strengths, copy_detection_set, copy_steps, distort

SPLITS = ("test", "val")
# Fashion-MNIST originals (= queries) and distractors per split; the database holds both, so val
# and test search databases of the same size and their numbers are on the same scale.
FMNIST_COUNTS = {"test": (2_000, 4_000), "val": (1_000, 5_000)}
PHOTO_COPIES = {"test": 30, "val": 0}
PHOTO_MAX_SIDE = 256
FMNIST_SIDE = 28
# Copy-detection distortions for 28x28 grey images: every copy gets one geometric change and one
# photometric change or degradation, with ranges chosen so that neither raw pixels nor random or
# trained networks saturate or floor (bench/retrieval_benchmark_calibration.py).
FMNIST_STAGES = (("crop", "rotate", "flip"), ("colour", "blur", "noise", "jpeg", "rescale"))
FMNIST_STRENGTHS = Strengths(crop_area=(0.75, 0.95), min_crop=8, rotate_degrees=(4, 12), rotate_expand=False,
                             saturation=(1.0, 1.0), contrast=(0.6, 1.5), brightness=(0.7, 1.3),
                             blur_radius=(0.5, 0.9), noise_sigma=20.0, jpeg_quality=(10, 40), rescale=(0.5, 0.8))


@dataclass
class RetrievalBenchmark:
    name: str                     # e.g. "copydetect-test"
    description: str              # one line for cards: what the queries and database are, counts
    database: ImageList           # database images; label = database index
    queries: ImageList            # query images; label = database index of its (first) positive
    positives: list[np.ndarray]   # per query, the database indices that are correct answers
    part: np.ndarray              # per query, "fmnist" or "photos"
    database_part: np.ndarray | None = None  # per database image its part; None: one database for all


# ---------------------------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------------------------

def fmnist_copy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A strongly distorted copy of one (28, 28, 3) Fashion-MNIST image, resized back to 28x28."""
    from PIL import Image

    copy = distort(image, rng, copy_steps(rng, FMNIST_STAGES, extra_crop=0.0), FMNIST_STRENGTHS)
    if copy.shape[:2] != (FMNIST_SIDE, FMNIST_SIDE):
        copy = np.asarray(Image.fromarray(copy).resize((FMNIST_SIDE, FMNIST_SIDE), Image.BILINEAR))
    return copy


def split_originals(total: int, originals: int, distractors: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random index sets (originals, distractors) of ``range(total)``, each sorted."""
    if originals + distractors > total:
        raise UsageError(f"{originals} originals + {distractors} distractors exceed the {total} images available")
    picked = rng.permutation(total)[:originals + distractors]
    return np.sort(picked[:originals]), np.sort(picked[originals:])


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def _fmnist_part(split: str, seed: int):
    """(database images, query images, positive index per query) of the Fashion-MNIST part."""
    source = fashion_mnist(split="test" if split == "test" else "train").images[:, 0].numpy()
    n_orig, n_distr = FMNIST_COUNTS[split]
    rng = np.random.default_rng([seed, SPLITS.index(split), 0])
    originals, distractors = split_originals(len(source), n_orig, n_distr, rng)
    in_database = np.sort(np.concatenate([originals, distractors]))
    database = [_rgb(source[i]) for i in in_database]
    positive = np.searchsorted(in_database, originals)
    queries = [fmnist_copy(database[p], rng) for p in positive]
    return database, queries, positive


def _photos_part(split: str, seed: int):
    """(database images, query images, positive index per query, photo names) of the photos part:
    ``zoo.retrieval``'s copy-detection set, its originals as the database and its copies as queries."""
    if PHOTO_COPIES[split] == 0:
        return [], [], np.zeros(0, dtype=np.int64), []
    cds = copy_detection_set(copies=PHOTO_COPIES[split], seed=seed, max_side=PHOTO_MAX_SIDE)
    is_original = np.array(["/" not in name for name in cds.names])
    database = [im for im, keep in zip(cds.images, is_original) if keep]
    queries = [im for im, keep in zip(cds.images, is_original) if not keep]
    return database, queries, cds.groups[~is_original], [n for n, keep in zip(cds.names, is_original) if keep]


@functools.lru_cache(maxsize=4)
def retrieval_benchmark(split: str = "test", seed: int = 0) -> RetrievalBenchmark:
    """The benchmark for ``split`` ("test" to report, "val" to choose a layer); deterministic per
    seed and cached in memory (treat the returned object as read-only)."""
    if split not in SPLITS:
        raise UsageError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    f_db, f_q, f_pos = _fmnist_part(split, seed)
    p_db, p_q, p_pos, names = _photos_part(split, seed)
    database = f_db + p_db
    positive = np.concatenate([f_pos, p_pos + len(f_db)])
    part = np.array(["fmnist"] * len(f_q) + ["photos"] * len(p_q))
    database_part = np.array(["fmnist"] * len(f_db) + ["photos"] * len(p_db))
    source = "test" if split == "test" else "train"
    text = (f"copy detection, each part searched alone: {len(f_q):,} strongly distorted copies of Fashion-MNIST "
            f"{source} images, each to be found among its original + {len(f_db) - len(f_q):,} other {source} images")
    if p_q:
        text += (f"; {len(p_q)} strongly distorted copies ({PHOTO_COPIES[split]} each) of {len(names)} shipped "
                 f"photos, each to be found among the {len(names)} originals")
    return RetrievalBenchmark(
        name=f"copydetect-{split}", description=text,
        database=ImageList(database, range(len(database)), f"copydetect-{split} database"),
        queries=ImageList(f_q + p_q, positive, f"copydetect-{split} queries"),
        positives=[np.array([p]) for p in positive], part=part, database_part=database_part)


def single_part_benchmark(part: str, split: str = "test", seed: int = 0) -> RetrievalBenchmark:
    """The queries and database of one part, built without the other part's images (the photos part
    alone takes seconds to distort); the same images as ``benchmark_part(retrieval_benchmark(split,
    seed), part)``."""
    builders = {"fmnist": _fmnist_part, "photos": _photos_part}
    if split not in SPLITS or part not in builders:
        raise UsageError(f"no part {part!r} of split {split!r}; parts: fmnist, photos; splits: {', '.join(SPLITS)}")
    database, queries, positive = builders[part](split, seed)[:3]
    if not queries:
        raise UsageError(f"the {split} split has no {part} queries")
    return RetrievalBenchmark(
        name=f"copydetect-{split}-{part}", description=f"copy detection, part {part} of the {split} split",
        database=ImageList(database, range(len(database)), f"copydetect-{split}-{part} database"),
        queries=ImageList(queries, positive, f"copydetect-{split}-{part} queries"),
        positives=[np.array([p]) for p in positive], part=np.array([part] * len(queries)))

# The held-out photo benchmark of the colour-photo models (``heldout_photo_benchmark``): each photo,
# shrunk to at most HELDOUT_SIDE pixels, is cut into TILES x TILES tiles, and every tile is an
# original with its own distorted copies, so that a copy must be told from the other parts of its
# own photo as well as from other photos; with four held-out photos whole, chance would be 25 %.
HELDOUT_SIDE = 384
TILES = 3
TILE_COPIES = {"test": 10, "val": 4}


def photo_tiles(photos: dict[str, np.ndarray], tiles: int = TILES, max_side: int = HELDOUT_SIDE) -> dict[str, np.ndarray]:
    """Each photo shrunk to at most ``max_side`` pixels and cut into a ``tiles`` x ``tiles`` grid of
    equal tiles (the remainder pixels at the right and bottom dropped), named "photo@row,col"."""
    from zoo.retrieval import shrink

    out = {}
    for name, photo in photos.items():
        small = shrink(photo, max_side)
        th, tw = small.shape[0] // tiles, small.shape[1] // tiles
        for r in range(tiles):
            for c in range(tiles):
                out[f"{name}@{r},{c}"] = np.ascontiguousarray(small[r * th:(r + 1) * th, c * tw:(c + 1) * tw])
    return out


@functools.lru_cache(maxsize=4)
def heldout_photo_benchmark(split: str = "test", seed: int = 0) -> RetrievalBenchmark:
    """Copy detection on photos a colour-photo model never trained on: "test" is built from the
    held-out photos (``zoo.photos.HELDOUT_PHOTOS``) alone, "val" (for choosing a layer) from the
    training photos. Queries are ``zoo.retrieval``'s strongly distorted copies of each tile of
    ``photo_tiles``, the database is the tiles; one part, "photos-heldout" (or "photos-training")."""
    from zoo.photos import heldout_photos, training_photos

    if split not in SPLITS:
        raise UsageError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    photos = heldout_photos() if split == "test" else training_photos()
    cds = copy_detection_set(copies=TILE_COPIES[split], seed=seed, max_side=HELDOUT_SIDE, photos=photo_tiles(photos))
    is_original = np.array(["/" not in name for name in cds.names])
    database = [im for im, keep in zip(cds.images, is_original) if keep]
    queries = [im for im, keep in zip(cds.images, is_original) if not keep]
    positive = cds.groups[~is_original]
    part = "photos-heldout" if split == "test" else "photos-training"
    which = "held-out" if split == "test" else "training"
    text = (f"copy detection on {which} photos only ({', '.join(photos)}): {len(queries)} strongly distorted copies "
            f"({TILE_COPIES[split]} each) of the {len(database)} tiles ({TILES}x{TILES} per photo, photo at most "
            f"{HELDOUT_SIDE} px), each to be found among the {len(database)} tiles")
    return RetrievalBenchmark(
        name=f"copydetect-{part}", description=text,
        database=ImageList(database, range(len(database)), f"copydetect-{part} database"),
        queries=ImageList(queries, positive, f"copydetect-{part} queries"),
        positives=[np.array([p]) for p in positive], part=np.array([part] * len(queries)),
        database_part=np.array([part] * len(database)))


def raw_pixels(images: Sequence[np.ndarray], side: int = 16) -> np.ndarray:
    """The no-network baseline: each image resized to ``side`` x ``side`` RGB (bilinear,
    antialiased) and flattened (``benchmark_metrics`` L2-normalises the rows)."""
    from PIL import Image

    rows = [np.asarray(Image.fromarray(np.asarray(im, dtype=np.uint8)).resize((side, side), Image.BILINEAR),
                       dtype=np.float32).ravel() for im in images]
    return np.stack(rows)


def benchmark_part(bench: RetrievalBenchmark, part: str) -> RetrievalBenchmark:
    """The benchmark restricted to one part's queries and database (e.g. "photos" for colour models);
    its metrics equal that part's numbers in ``benchmark_metrics`` of the whole benchmark."""
    if part not in set(bench.part):
        raise UsageError(f"{bench.name} has no part {part!r}; parts: {', '.join(dict.fromkeys(bench.part))}")
    keep_q = np.flatnonzero(bench.part == part)
    keep_db = (np.flatnonzero(bench.database_part == part) if bench.database_part is not None
               else np.arange(len(bench.database)))
    new_index = np.full(len(bench.database), -1)
    new_index[keep_db] = np.arange(len(keep_db))
    positives = [new_index[bench.positives[q]] for q in keep_q]
    database = ImageList([bench.database.images[i] for i in keep_db], range(len(keep_db)),
                         f"{bench.name}-{part} database")
    queries = ImageList([bench.queries.images[q] for q in keep_q], [int(p[0]) for p in positives],
                        f"{bench.name}-{part} queries")
    return replace(bench, name=f"{bench.name}-{part}", database=database, queries=queries, positives=positives,
                   part=bench.part[keep_q],
                   database_part=None if bench.database_part is None else bench.database_part[keep_db],
                   description=f"{bench.description} (part {part} only)")


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)


def query_ap_and_hit(scores: np.ndarray, positives: np.ndarray,
                     candidates: np.ndarray | None = None) -> tuple[float, bool]:
    """Average precision and recall@1 of one query from its scores over the database.

    ``candidates`` (a boolean mask) limits the ranked database. Ties count against the query: a
    negative scoring the same as a positive is ranked above it, so constant features score low.
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_pos = np.zeros(len(scores), dtype=bool)
    is_pos[np.asarray(positives, dtype=np.int64)] = True
    negatives = scores[~is_pos if candidates is None else (~is_pos & candidates)]
    pos_scores = np.sort(scores[is_pos])[::-1]
    if len(pos_scores) == 0:
        raise UsageError("every query needs at least one positive")
    above = (negatives[None, :] >= pos_scores[:, None]).sum(axis=1)  # negatives ranked above each positive
    ranks = np.arange(1, len(pos_scores) + 1) + above
    return float(np.mean(np.arange(1, len(pos_scores) + 1) / ranks)), bool(above[0] == 0)


def bootstrap_ci(values: np.ndarray, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling them with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0 or resamples < 1:
        raise UsageError(f"a bootstrap needs values and resamples, got {len(values)} values, {resamples} resamples")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def summarise(ap: np.ndarray, hit: np.ndarray, bootstrap: int = 1000, seed: int = 0) -> dict:
    """mAP and recall@1 in % with bootstrap intervals, from per-query AP and top-1 hits."""
    map_ci, r1_ci = bootstrap_ci(ap, bootstrap, seed), bootstrap_ci(hit, bootstrap, seed)
    return {"map": 100 * float(np.mean(ap)), "map_ci": [100 * map_ci[0], 100 * map_ci[1]],
            "r1": 100 * float(np.mean(hit)), "r1_ci": [100 * r1_ci[0], 100 * r1_ci[1]], "queries": len(ap)}


def benchmark_metrics(query_x: np.ndarray, database_x: np.ndarray, positives: Sequence[np.ndarray],
                      parts: Sequence[str] | None = None, bootstrap: int = 1000, seed: int = 0,
                      database_parts: Sequence[str] | None = None) -> dict:
    """mAP and recall@1 (%, with bootstrap CIs) of ranking the database rows by inner product with
    each L2-normalised query row; ``parts`` adds the same numbers per part under "parts". With
    ``database_parts`` as well, each query ranks only the database images of its own part.
    """
    query_x, database_x = l2_normalise(query_x), l2_normalise(database_x)
    if query_x.ndim != 2 or database_x.ndim != 2 or query_x.shape[1] != database_x.shape[1]:
        raise UsageError(f"features must be (queries, D) and (database, D), got {query_x.shape} and {database_x.shape}")
    if len(positives) != len(query_x):
        raise UsageError(f"{len(query_x)} queries but {len(positives)} positive lists")
    parts = None if parts is None else np.asarray(parts)
    database_parts = None if database_parts is None else np.asarray(database_parts)
    if database_parts is not None and parts is None:
        raise UsageError("database_parts needs parts (the part of each query)")
    ap, hit = np.zeros(len(query_x)), np.zeros(len(query_x))
    for start in range(0, len(query_x), 512):
        sims = query_x[start:start + 512] @ database_x.T
        for row, q in zip(sims, range(start, start + len(sims))):
            candidates = None if database_parts is None else database_parts == parts[q]
            ap[q], hit[q] = query_ap_and_hit(row, positives[q], candidates)
    out = summarise(ap, hit, bootstrap, seed)
    if parts is not None:
        out["parts"] = {p: summarise(ap[parts == p], hit[parts == p], bootstrap, seed) for p in dict.fromkeys(parts)}
    return out
