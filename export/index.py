"""FAISS indexes over L2-normalised embeddings, with their ids and search parameters.

Index folder (``zoo index build EMB -o INDEX``)::

    INDEX/index.faiss   the FAISS index (whitening, when asked, is inside it as a pre-transform)
    INDEX/ids.txt       one id per row of the index, in index order
    INDEX/meta.json     type, build and search parameters, measured recall/QPS, the embeddings' model
    INDEX/manifest.json size and sha256 of each file, the count, dim and the sha256 of the model's state dict

The folder is written into a staging folder and swapped in by one atomic rename
(``zoo.fileset.commit_folder``), and ``load_index`` refuses files that do not match the manifest,
so a killed build leaves the previous index whole and vectors are never paired with other ids.

Types (all inner product, which is cosine similarity on normalised vectors):

* ``flat``: exact search, the default; right up to a few hundred thousand vectors.
* ``ivfpq``: inverted lists over product-quantised codes, then exact re-ranking of the best
  ``k_factor * k`` candidates with the full vectors (``IndexRefineFlat``): PQ's speed with exact
  final scores. Search parameters ``nprobe`` and ``k_factor``.
* ``hnsw``: a navigable small-world graph over the full vectors; search parameter ``efSearch``.

``--whiten N`` learns PCA whitening on the database (MultiGrain and cirtorch practice): project to
N dimensions, scale each by 1/sqrt(eigenvalue), and L2-normalise again.

With ``--recall R`` the search parameters are tuned: database vectors serve as queries
(leave-one-out: each query's own row is ignored), exact search gives the true top k, and the
fastest setting whose recall@k reaches R is kept. ``--type auto`` does this for every type and
keeps the fastest index that reaches R.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from zoo.checkpoint import atomic_write, atomic_write_text
from zoo.errors import UsageError
from zoo.fileset import (
    MANIFEST, check_output_folder, commit_folder, is_temporary, new_staging, verify_manifest,
)

from export.embedding import first_non_finite_row, model_state_dict_sha256

INDEX_TYPES = ("flat", "ivfpq", "hnsw")
INDEX_FILE, IDS, META = "index.faiss", "ids.txt", "meta.json"
FORMAT = "sslzoo-index/1"


def _faiss():
    import faiss

    return faiss


def default_nlist(n: int) -> int:
    """About 4 sqrt(n) lists, with at least 39 training points per list (FAISS's minimum)."""
    return int(max(1, min(4 * np.sqrt(n), n // 39)))


def default_pq_m(d: int) -> int:
    """PQ sub-quantisers: 8+ dimensions each (FAISS trains 4-d sub-quantisers ~25x slower, and
    the exact re-ranking makes up for coarser codes), at most 64 bytes per code, dividing d."""
    target = min(64, max(1, d // 8))
    return max(m for m in range(1, target + 1) if d % m == 0)


@dataclass
class BuildParams:
    type: str = "flat"
    whiten: int | None = None
    nlist: int | None = None
    pq_m: int | None = None
    pq_bits: int = 8
    hnsw_m: int = 32
    ef_construction: int = 80
    train_size: int | None = None  # default: ~64 points per IVF list, 10k..300k
    seed: int = 0


@dataclass
class SearchParams:
    values: dict = field(default_factory=dict)  # e.g. {"nprobe": 16, "k_factor": 4} or {"efSearch": 64}


def _as_float32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def build_index(vectors: np.ndarray, params: BuildParams):
    """Train (if needed) and fill a FAISS index of ``params.type`` with ``vectors``."""
    faiss = _faiss()
    x = _as_float32(vectors)
    n, d = x.shape
    if n == 0:
        raise UsageError("no embeddings to index (every image was unreadable? see the extraction's failed.tsv)")
    if (bad := first_non_finite_row(x)) is not None:
        raise UsageError(f"embedding row {bad} is NaN or infinite: nothing to index it by; re-extract with a model "
                         "that gives finite embeddings")
    if params.type not in INDEX_TYPES:
        raise UsageError(f"unknown index type {params.type!r}; choose one of {', '.join(INDEX_TYPES)} or auto")
    rng = np.random.default_rng(params.seed)
    nlist = params.nlist or default_nlist(n)
    train_size = params.train_size or min(300_000, max(10_000, 64 * nlist))
    sample = x if n <= train_size else x[np.sort(rng.choice(n, train_size, replace=False))]
    transforms = []
    dim = d
    if params.whiten:
        if not 1 <= params.whiten <= d:
            raise UsageError(f"--whiten {params.whiten}: must be between 1 and the embedding dimension {d}")
        if params.whiten > n:
            raise UsageError(f"--whiten {params.whiten} needs at least as many vectors ({n} given)")
        pca = faiss.PCAMatrix(d, params.whiten, -0.5)  # eigen_power -0.5: whitening
        pca.train(sample)
        transforms += [pca, faiss.NormalizationTransform(params.whiten, 2.0)]
        dim = params.whiten
    metric = faiss.METRIC_INNER_PRODUCT
    if params.type == "flat":
        core = faiss.IndexFlatIP(dim)
    elif params.type == "hnsw":
        core = faiss.IndexHNSWFlat(dim, params.hnsw_m, metric)
        core.hnsw.efConstruction = params.ef_construction
    else:
        m = params.pq_m or default_pq_m(dim)
        if dim % m:
            raise UsageError(f"--pq-m {m} must divide the dimension {dim}")
        if n < 39 * nlist or n < (1 << params.pq_bits) * 4:
            raise UsageError(f"ivfpq needs more vectors than {n} for {nlist} lists; use --type flat")
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFPQ(quantizer, dim, nlist, m, params.pq_bits, metric)
        ivf.cp.seed = params.seed
        ivf.cp.niter = 10  # coarse k-means: 10 iterations hold recall and halve the build time
        core = faiss.IndexRefineFlat(ivf)  # faiss's wrappers keep quantizer/ivf alive with it
    index = core
    if transforms:
        index = faiss.IndexPreTransform(core)
        for t in reversed(transforms):  # prepend_transform: the last prepended runs first
            index.prepend_transform(t)
    if not index.is_trained:
        index.train(sample)
    index.add(x)
    return index


def set_search_params(index, params: SearchParams) -> None:
    """Set ``nprobe``, ``k_factor`` (exact re-ranking depth) and ``efSearch`` where they apply."""
    faiss = _faiss()
    values = dict(params.values)
    node = faiss.downcast_index(index)
    while node is not None:
        if isinstance(node, faiss.IndexPreTransform):
            node = faiss.downcast_index(node.index)
            continue
        if isinstance(node, faiss.IndexRefine):
            if "k_factor" in values:
                node.k_factor = float(values.pop("k_factor"))
            node = faiss.downcast_index(node.base_index)
            continue
        if isinstance(node, faiss.IndexIVF) and "nprobe" in values:
            node.nprobe = int(values.pop("nprobe"))
        if isinstance(node, faiss.IndexHNSW) and "efSearch" in values:
            node.hnsw.efSearch = int(values.pop("efSearch"))
        break
    if values:
        raise UsageError(f"search parameters {', '.join(values)} do not apply to this index")


def default_search_params(index_type: str) -> SearchParams:
    if index_type == "ivfpq":
        return SearchParams({"nprobe": 16, "k_factor": 4})
    if index_type == "hnsw":
        return SearchParams({"efSearch": 64})
    return SearchParams()


def search(index, queries: np.ndarray, k: int, params: SearchParams | None = None,
           names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``index`` for each query; ``names`` (the query images) name a
    non-finite query in the error."""
    if params is not None:
        set_search_params(index, params)
    k = min(k, index.ntotal)
    queries = _as_float32(queries)
    if (bad := first_non_finite_row(queries)) is not None:  # FAISS would still return "neighbours"
        what = f"the query {names[bad]}" if names is not None else f"query row {bad}"
        raise UsageError(f"{what} embeds to NaN or infinite numbers: the model gives non-finite embeddings; fix "
                         "or re-export it")
    return index.search(queries, k)


def leave_one_out_topk(result_ids: np.ndarray, query_rows: np.ndarray, k: int) -> np.ndarray:
    """Drop each query's own row from its result list and keep the first ``k`` of the rest."""
    out = np.full((len(result_ids), k), -1, dtype=np.int64)
    for i, (row, q) in enumerate(zip(result_ids, query_rows)):
        kept = row[(row != q) & (row >= 0)][:k]
        out[i, :len(kept)] = kept
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k present in the found top-k (both (nq, k), -1 = empty)."""
    hits = 0
    total = 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        hits += len(np.intersect1d(f[f >= 0], t))
        total += len(t)
    return hits / max(total, 1)


@dataclass
class Trial:
    params: dict
    recall: float
    qps: float


def measure(index, queries: np.ndarray, query_rows: np.ndarray, truth: np.ndarray, k: int,
            params: SearchParams, repeats: int = 1) -> Trial:
    set_search_params(index, params)
    index.search(queries[: min(len(queries), 16)], k + 1)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        _, ids = index.search(queries, k + 1)
        best = min(best, time.perf_counter() - t)
    found = leave_one_out_topk(ids, query_rows, k)
    return Trial(dict(params.values), recall_at_k(found, truth), len(queries) / best)


def ground_truth(index_or_vectors, queries: np.ndarray, query_rows: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Exact top-k (leave-one-out) and the exact search's QPS."""
    faiss = _faiss()
    index = index_or_vectors
    if isinstance(index_or_vectors, np.ndarray):
        index = faiss.IndexFlatIP(index_or_vectors.shape[1])
        index.add(_as_float32(index_or_vectors))
    index.search(queries[: min(len(queries), 16)], k + 1)  # warm-up, as for the approximate indexes
    t = time.perf_counter()
    _, ids = index.search(queries, k + 1)
    qps = len(queries) / (time.perf_counter() - t)
    return leave_one_out_topk(ids, query_rows, k), qps


def candidate_settings(index_type: str, nlist: int | None = None) -> list[list[SearchParams]]:
    """Sweeps of increasing cost (recall grows along each inner list)."""
    if index_type == "ivfpq":
        probes = [p for p in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512) if nlist is None or p <= nlist]
        return [[SearchParams({"nprobe": p, "k_factor": kf}) for p in probes] for kf in (1, 2, 4, 8, 16, 32, 64, 128)]
    if index_type == "hnsw":
        return [[SearchParams({"efSearch": ef}) for ef in (16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024)]]
    return [[SearchParams()]]


def tune(index, index_type: str, queries: np.ndarray, query_rows: np.ndarray, truth: np.ndarray, k: int,
         target: float, nlist: int | None = None) -> tuple[Trial | None, list[Trial]]:
    """The fastest setting reaching ``target`` recall@k (None if none does), and every trial."""
    trials, best = [], None
    for sweep in candidate_settings(index_type, nlist):
        for params in sweep:
            trial = measure(index, queries, query_rows, truth, k, params)
            trials.append(trial)
            if trial.recall >= target:
                if best is None or trial.qps > best.qps:
                    best = trial
                break  # more probes/ef only cost time on this sweep
    return best, trials


def sample_queries(n: int, count: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, min(count, n), replace=False))


def transformed(index, vectors: np.ndarray) -> np.ndarray:
    """Vectors as the index compares them (after whitening, if any)."""
    faiss = _faiss()
    x = _as_float32(vectors)
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            x = index.chain.at(i).apply(x)
    return x


def _core_nlist(index) -> int | None:
    faiss = _faiss()
    ivf = faiss.try_extract_index_ivf(index)
    return None if ivf is None else int(ivf.nlist)


# ------------------------------------------------------------------------------------------------
# Index folders
# ------------------------------------------------------------------------------------------------

def save_index(directory: str | Path, index, ids: Sequence[str], meta: dict) -> Path:
    """Write the index folder as a whole (staged, sealed with its manifest, swapped in)."""
    from export.extract import ids_text

    faiss = _faiss()
    directory = check_index_output(directory)
    if index.ntotal != len(ids):
        raise UsageError(f"index has {index.ntotal} vectors but {len(ids)} ids")
    staging = new_staging(directory)
    try:
        atomic_write(staging / INDEX_FILE, lambda p: faiss.write_index(index, str(p)))
        atomic_write_text(staging / IDS, ids_text(ids))
        atomic_write_text(staging / META, json.dumps({"format": FORMAT, **meta}, indent=2, sort_keys=True) + "\n")
        commit_folder(staging, directory, content=FORMAT, count=len(ids), dim=int(index.d),
                      state_dict_sha256=model_state_dict_sha256(meta.get("model") or {}))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def check_index_output(directory: str | Path) -> Path:
    """The resolved index folder to write: a new or empty folder, or an older index."""
    directory = check_output_folder(directory)
    foreign = sorted(p.name for p in directory.iterdir() if p.name not in (INDEX_FILE, IDS, META, MANIFEST)
                     and not is_temporary(p.name)) if directory.is_dir() else []
    if foreign:
        raise UsageError(f"{directory} holds {foreign[0]}, so it is not an index folder; an index goes into a new "
                         "folder or replaces an older index (choose another -o)")
    return directory


def load_index(directory: str | Path):
    """(faiss index with its tuned search parameters set, ids, meta)."""
    from export.extract import parse_ids

    faiss = _faiss()
    directory = Path(directory)
    if not (directory / META).is_file() or not (directory / INDEX_FILE).is_file():
        raise UsageError(f"{directory} is not an index folder; build one with `zoo index build EMB -o {directory}`")
    verify_manifest(directory, (INDEX_FILE, IDS, META), fix=f"rebuild it with `zoo index build EMB -o {directory}`")
    meta = json.loads((directory / META).read_text())
    if meta.get("format") != FORMAT:
        raise UsageError(f"{directory / META} is not an sslzoo index (format {meta.get('format')!r})")
    index = faiss.read_index(str(directory / INDEX_FILE))
    ids = parse_ids((directory / IDS).read_text(encoding="utf-8"))
    if len(ids) != index.ntotal or index.ntotal == 0:
        raise UsageError(f"{directory}: {len(ids)} ids for {index.ntotal} vectors; rebuild the index")
    set_search_params(index, SearchParams(meta.get("search_params") or {}))
    return index, ids, meta


def build_and_tune(vectors: np.ndarray, params: BuildParams, recall_target: float | None = None, k: int = 10,
                   num_queries: int = 1000, log=print, strict: bool = True,
                   search_threads: int | None = None) -> tuple[object, dict]:
    """Build the index of ``params.type`` (or every type for ``"auto"``) and pick search parameters.

    Returns the index and the meta entries describing it (type, parameters, measured recall/QPS).
    If no setting reaches the target, ``strict`` raises a one-line error; otherwise the setting with
    the best recall is kept and ``meta["tuning"]["reached"]`` is False. ``search_threads`` sets the
    FAISS threads of the timed searches (exact and approximate alike; building uses all).
    """
    x = _as_float32(vectors)
    n = len(x)
    types = list(INDEX_TYPES) if params.type == "auto" else [params.type]
    if recall_target is None:
        if params.type == "auto":
            raise UsageError("--type auto picks the fastest index for a recall target: pass --recall (e.g. 0.95)")
        index = build_index(x, params)
        search = default_search_params(params.type)
        set_search_params(index, search)
        return index, {"type": params.type, "search_params": search.values, "build_params": _build_meta(params, index)}
    if not 0 < recall_target <= 1:
        raise UsageError(f"--recall must be in (0, 1], got {recall_target}")
    rows = sample_queries(n, num_queries)
    results = []
    truth_cache: dict = {}
    for t in types:
        if t == "ivfpq" and n < 39 * 4:
            log(f"  ivfpq: skipped ({n} vectors is too few)")
            continue
        p = BuildParams(**{**params.__dict__, "type": t})
        start = time.perf_counter()
        index = build_index(x, p)
        build_s = time.perf_counter() - start
        space = transformed(index, x) if p.whiten else x
        queries = space[rows]
        key = p.whiten
        with _omp_threads(search_threads):
            if key not in truth_cache:
                truth_cache[key] = ground_truth(space, queries, rows, k)
            truth, exact_qps = truth_cache[key]
            core = _faiss().downcast_index(index.index) if p.whiten else index
            best, trials = tune(core, t, queries, rows, truth, k, recall_target, _core_nlist(index))
        summary = ("no setting reached the target" if best is None else
                   f"{best.params or 'exact'}: recall@{k} {best.recall:.3f}, {best.qps:,.0f} QPS "
                   f"({best.qps / exact_qps:.1f}x exact)")
        log(f"  {t}: built in {build_s:.1f} s; {summary}")
        results.append((t, p, index, best, trials, exact_qps, build_s))
    reached = [r for r in results if r[3] is not None]
    if reached:
        t, p, index, best, trials, exact_qps, build_s = max(reached, key=lambda r: r[3].qps)
    else:
        best_recall = max((tr.recall for r in results for tr in r[4]), default=0.0)
        if strict or not results:
            raise UsageError(f"no index reached recall@{k} >= {recall_target} (best {best_recall:.3f}); "
                             "lower --recall or use --type flat (exact)")
        t, p, index, _, trials, exact_qps, build_s = max(results, key=lambda r: max(tr.recall for tr in r[4]))
        best = max(trials, key=lambda tr: (tr.recall, tr.qps))
    set_search_params(index, SearchParams(best.params))
    meta = {"type": t, "search_params": best.params, "build_params": _build_meta(p, index),
            "tuning": {"recall_target": recall_target, "reached": bool(reached), "k": k, "queries": len(rows), "recall": best.recall,
                       "qps": best.qps, "exact_qps": exact_qps, "speedup": best.qps / exact_qps,
                       "build_seconds": build_s, "leave_one_out": True,
                       "search_threads": search_threads or _faiss().omp_get_max_threads(),
                       "trials": [{"params": tr.params, "recall": tr.recall, "qps": tr.qps} for tr in trials]}}
    return index, meta


class _omp_threads:
    """Temporarily set FAISS's OpenMP threads (no-op for None)."""

    def __init__(self, threads: int | None):
        self.threads = threads

    def __enter__(self):
        if self.threads:
            self.before = _faiss().omp_get_max_threads()
            _faiss().omp_set_num_threads(self.threads)

    def __exit__(self, *exc):
        if self.threads:
            _faiss().omp_set_num_threads(self.before)


def _build_meta(p: BuildParams, index) -> dict:
    relevant = {"flat": (), "hnsw": ("hnsw_m", "ef_construction"), "ivfpq": ("pq_bits", "train_size", "seed")}
    d = {k: getattr(p, k) for k in ("type", "whiten", *relevant[p.type]) if getattr(p, k) is not None}
    nlist = _core_nlist(index)
    if nlist is not None:
        d["nlist"] = nlist
        ivf = _faiss().try_extract_index_ivf(index)
        d["pq_m"] = int(ivf.pq.M) if hasattr(ivf, "pq") else None
    return d
