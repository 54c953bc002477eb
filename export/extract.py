"""``zoo extract``: embeddings of many image files, decoded in parallel while the engine runs.

Output folder (``-o OUT``)::

    OUT/embeddings.npy   (N, D) float32, L2-normalised rows; row i belongs to line i of ids.txt
    OUT/ids.txt          N file ids (the paths as given, or DIR/relative path for folders), UTF-8,
                         one per line: backslashes, control characters, line separators and bytes
                         that are not UTF-8 are backslash escapes (``escape_id``; ``unescape_id``
                         gives the path back), so any file name is one line
    OUT/failed.tsv       files that could not be read: "id<TAB>reason" per line (may be empty)
    OUT/meta.json        model (EmbeddingSpec), source, engine, count, dim, timing
    OUT/model.onnx       the model, when MODEL was a registry name or checkpoint folder (onnx engine)
    OUT/manifest.json    size and sha256 of each of these files, the count, dim and the state dict's sha256
    OUT/shards/          work in progress: plan.json, shard-NNNNN.npz (and model.onnx), gone after the merge

The image list is cut into shards of ``shard_size`` files in list order. Each finished shard is
written atomically, so an interrupted run resumes where it stopped (a rerun skips finished
shards). Under ``torchrun`` (or with ``--rank/--world-size``) rank r takes shards r, r+W, r+2W, ...;
whichever rank writes the last missing shard merges them all, so no process group is needed and
the same works for job arrays. Unreadable files never stop the run: they are listed in failed.tsv.

The merge writes the final files into a staging folder beside OUT, seals it with the manifest and
swaps it in by one atomic rename (``zoo.fileset.commit_folder``): a reader sees the previous
result or the new one, never a mix, and ``load_embeddings`` refuses files that do not match the
manifest. A result being replaced (``--overwrite``) stays readable until the new one is complete.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import shutil
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from zoo.checkpoint import atomic_write, atomic_write_text
from zoo.errors import UsageError, WeightsError, ZooError
from zoo.fileset import (
    MANIFEST, check_output_folder, commit_folder, describe_owner, is_temporary, new_staging, release_lock, try_lock,
    verify_manifest,
)
from zoo.photos import IMAGE_SUFFIXES

from export.embedding import first_non_finite_row, prepare_image, spec_to_metadata

EMBEDDINGS, IDS, FAILED, META, SHARDS = "embeddings.npy", "ids.txt", "failed.tsv", "meta.json", "shards"
RESULT_FILES = (EMBEDDINGS, IDS, FAILED, META)
MERGE_LOCK = "merge.lock"
MODEL = "model.onnx"  # the ONNX export, when extraction exported a registry model or checkpoint on the fly
FORMAT = "sslzoo-embeddings/1"


def collect_images(inputs: Sequence[str | Path]) -> list[str]:
    """Files given as they are; folders expanded to their image files (recursively, sorted).

    A path that does not exist is kept: it will be listed in failed.tsv like an unreadable file.
    """
    found: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            found.extend(str(p) for p in files)
        else:
            found.append(str(item))
    seen, unique = set(), []
    for f in found:  # the same file twice would be two rows with one id
        if f not in seen:
            seen.add(f)
            unique.append(f)
    return unique


_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_ESCAPED = re.compile(r"\\(\\|n|t|r|x[0-9a-f]{2}|u[0-9a-f]{4})")


def escape_id(path: str) -> str:
    """A file path as one line of UTF-8 text: a backslash, a control character (``\\n``,
    ``\\u0085``), a line or paragraph separator (``\\u2028``) becomes a backslash escape, and a
    byte that is not UTF-8 (which Python keeps as a lone surrogate) ``\\xNN``. Other paths are
    their own ids."""
    if path.isprintable() and "\\" not in path:
        return path
    out = []
    for c in path:
        code = ord(c)
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogateescape of an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs"):
            out.append(f"\\u{code:04x}")
        else:
            out.append(c)
    return "".join(out)


def unescape_id(text: str) -> str:
    """The path of an id (``os.fsencode`` of it gives the file name's bytes back)."""
    def one(m: re.Match) -> str:
        e = m.group(1)
        return {"\\": "\\", "n": "\n", "t": "\t", "r": "\r"}.get(e) or \
            chr(0xDC00 + int(e[1:], 16) if e[0] == "x" else int(e[1:], 16))
    return _ESCAPED.sub(one, text)


def ids_text(ids: Sequence[str]) -> str:
    return "".join(f"{i}\n" for i in ids)


def parse_ids(text: str) -> list[str]:
    """ids.txt's lines: split at \\n only (str.splitlines would also split at \\r, \\f, U+0085, U+2028)."""
    return text.split("\n")[:-1] if text else []


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment, (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@dataclass
class Plan:
    """What an output folder is for; a rerun must match it to resume."""

    ids_sha256: str
    count: int
    shard_size: int
    model: dict

    @property
    def num_shards(self) -> int:
        return max(1, -(-self.count // self.shard_size))

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True, indent=2)


def make_plan(ids: Sequence[str], shard_size: int, engine) -> Plan:
    ids_hash = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    spec = spec_to_metadata(engine.spec)
    model = {k: spec[k] for k in ("model", "state_dict_sha256", "layer", "pool", "dim", "input_kind")}
    return Plan(ids_hash, len(ids), shard_size, model)


def shard_path(out: Path, index: int) -> Path:
    return out / SHARDS / f"shard-{index:05d}.npz"


def decode(path, spec, input_kind: str, name: str | None = None) -> tuple[np.ndarray | None, str]:
    """(prepared image, "") or (None, reason): a bad file is a row in failed.tsv, not a crash.
    ``path`` may be a binary file object (an upload), which the reason calls ``name``."""
    from zoo.photos import read_image

    try:
        return prepare_image(read_image(path, name), spec, input_kind), ""
    except ZooError as err:
        return None, str(err)
    except Exception as err:  # a decoder bug on a hostile file must not stop a million-image run
        return None, f"{type(err).__name__}: {err}"


def ordered_map(fn: Callable, items: Sequence, workers: int, window: int) -> Iterator:
    """``map(fn, items)`` in order, computed up to ``window`` items ahead by ``workers`` threads.

    Threads suffice: PIL's decoders and torch's resize release the GIL, so decoding runs in
    parallel with the engine (which releases it too).
    """
    if workers <= 0:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending: collections.deque = collections.deque()
        it = iter(items)
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield result


def extract(engine, images: Sequence[str | Path], out: str | Path, batch_size: int = 32, workers: int = 2,
            shard_size: int = 1024, rank: int | None = None, world_size: int | None = None,
            source: str = "", progress: bool = True, overwrite: bool = False,
            model_file: str | Path | None = None) -> dict:
    """Embed ``images`` with ``engine`` into the folder ``out``; returns a summary dict.

    ``rank``/``world_size`` default to torchrun's environment. Returns ``{"done": False}`` on a
    rank that finished its shards while others are still running. ``model_file`` (the ONNX file
    the engine runs, when it was exported on the fly) is kept as ``OUT/model.onnx`` for `zoo search`.
    """
    from tqdm import tqdm

    if batch_size < 1 or shard_size < 1:
        raise UsageError("--batch-size and --shard-size must be at least 1")
    out = check_output_folder(out)
    rank, world_size = _rank_and_world(rank, world_size)
    files = collect_images(images)
    if not files:
        raise UsageError("no images found in " + ", ".join(map(str, images)))
    ids = [escape_id(f) for f in files]
    plan = make_plan(ids, shard_size, engine)
    already = _claim_output(out, plan, overwrite)
    if model_file is not None and not already:  # this job's model, once the folder is known to be ours
        atomic_write(out / SHARDS / MODEL, lambda p: p.write_bytes(Path(model_file).read_bytes()))
    if already:
        meta = _read_meta(out)
        return {"done": True, "already": True, "count": meta["count"], "failed": meta["failed"], "out": str(out),
                "processed": 0, "skipped": meta["count"] + meta["failed"], "rank": rank, "world_size": world_size}
    mine = [s for s in range(plan.num_shards) if s % world_size == rank]
    todo = [s for s in mine if not shard_path(out, s).is_file()]
    done_count = sum(len(_shard_ids(ids, s, shard_size)) for s in mine if s not in todo)
    todo_ids = [i for s in todo for i in _shard_ids(ids, s, shard_size)]
    todo_files = [f for s in todo for f in _shard_ids(files, s, shard_size)]
    bar = tqdm(total=done_count + len(todo_ids), initial=done_count, unit="img", disable=not progress,
               desc=f"extract{f' rank {rank}/{world_size}' if world_size > 1 else ''}", dynamic_ncols=True)
    start = time.perf_counter()
    decoded = ordered_map(lambda p: decode(p, engine.spec.input, engine.spec.input_kind), todo_files, workers,
                          window=max(2 * batch_size, 4 * max(workers, 1)))
    engine_seconds = 0.0
    for s in todo:
        emb, kept, failed, seconds = _embed_shard(engine, _shard_ids(ids, s, shard_size), decoded, batch_size, bar)
        engine_seconds += seconds
        atomic_write(shard_path(out, s), lambda p, e=emb, k=kept, f=failed: _save_shard(p, e, k, f))
    bar.close()
    seconds = time.perf_counter() - start
    summary = {"done": False, "rank": rank, "world_size": world_size, "processed": len(todo_ids),
               "skipped": done_count, "seconds": seconds, "engine_seconds": engine_seconds,
               "images_per_second": len(todo_ids) / seconds if seconds > 0 and todo_ids else None}
    if all(shard_path(out, s).is_file() for s in range(plan.num_shards)):
        merged = merge_shards(out, plan, engine, source)
        summary.update(merged, done="merging" not in merged)
    return summary


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    env_rank, env_world = distributed_rank()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is outside 0..{world_size - 1}")
    return rank, world_size


def _embed_shard(engine, shard_ids: Sequence[str], decoded: Iterator, batch_size: int,
                 bar) -> tuple[np.ndarray, list[str], list[tuple[str, str]], float]:
    """One shard's images, taken in order from ``decoded``, embedded in batches of ``batch_size``:
    (embeddings, the ids they belong to, (id, reason) of each image that failed, engine seconds)."""
    rows, kept, failed = [], [], []
    batch, batch_ids = [], []
    engine_seconds = 0.0

    def flush():
        nonlocal engine_seconds
        if batch:
            t = time.perf_counter()
            rows.append(_finite(engine.embed(np.stack(batch)), batch_ids, engine))
            engine_seconds += time.perf_counter() - t
            kept.extend(batch_ids)
            bar.update(len(batch))
            batch.clear()
            batch_ids.clear()

    for file_id in shard_ids:
        image, reason = next(decoded)
        if image is None:
            failed.append((file_id, escape_id(" ".join(reason.split()))))
            bar.update(1)
            continue
        batch.append(image)
        batch_ids.append(file_id)
        if len(batch) == batch_size:
            flush()
    flush()
    emb = np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, engine.spec.dim), np.float32)
    return emb, kept, failed, engine_seconds


def _finite(emb: np.ndarray, batch_ids: Sequence[str], engine) -> np.ndarray:
    """``emb``, unless a row is NaN or infinite: then a one-line error naming its image, before the
    shard is written (the extraction stays unfinished, and readable nowhere)."""
    bad = first_non_finite_row(emb)
    if bad is not None:
        raise WeightsError(f"{engine.spec.model} ({engine.name}) gives a NaN or infinite embedding for "
                           f"{batch_ids[bad]}: its weights or ONNX file produce non-finite numbers (an fp16 "
                           "overflow?); nothing was written, fix or re-export the model")
    return emb


def _shard_ids(ids: Sequence[str], index: int, shard_size: int) -> list[str]:
    return list(ids[index * shard_size:(index + 1) * shard_size])


def _save_shard(path: Path, emb: np.ndarray, kept: list[str], failed: list[tuple[str, str]]) -> None:
    with open(path, "wb") as f:  # np.savez would append .npz to a temporary name
        np.savez(f, embeddings=emb, ids=np.array(kept, dtype=str),
                 failed=np.array([p for p, _ in failed], dtype=str),
                 reasons=np.array([r for _, r in failed], dtype=str))


def _claim_output(out: Path, plan: Plan, overwrite: bool) -> bool:
    """Create OUT/shards/plan.json, or check that an existing one describes the same job.

    True when ``out`` already holds the finished result of this very job.
    """
    plan_file = out / SHARDS / "plan.json"
    ours = {*RESULT_FILES, MODEL, MANIFEST, SHARDS}
    foreign = sorted(p.name for p in out.iterdir() if p.name not in ours and not is_temporary(p.name)) \
        if out.is_dir() else []
    if foreign or (out / META).is_file() and _read_meta(out).get("format") != FORMAT:
        what = f"holds {foreign[0]}" if foreign else f"has a {META} that is not an extraction's"
        raise UsageError(f"{out} exists and is not an sslzoo extraction folder (it {what}); choose a new -o folder"
                         + ("; --overwrite replaces only extraction folders" if overwrite else ""))
    if overwrite:  # only the work in progress goes; a finished result stays until the new one replaces it
        shutil.rmtree(out / SHARDS, ignore_errors=True)
    elif (out / META).is_file() and not plan_file.is_file():
        if _read_meta(out).get("plan") == json.loads(plan.to_json()):
            verify_manifest(out, RESULT_FILES, fix="pass --overwrite to extract again")
            return True
        raise UsageError(f"{out} already holds embeddings of other images or another model; "
                         "choose a new -o folder or pass --overwrite")
    if plan_file.is_file():
        old = json.loads(plan_file.read_text())
        if old != json.loads(plan.to_json()):
            raise UsageError(f"{out} holds a partial extraction of other images or another model; "
                             "choose a new -o folder or pass --overwrite")
        return False
    atomic_write_text(plan_file, plan.to_json())
    return False


def _read_meta(out: Path) -> dict:
    try:
        meta = json.loads((out / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def merge_shards(out: Path, plan: Plan, engine, source: str) -> dict:
    """Concatenate the shards into the final files (once: a lock naming its owner guards it; the
    lock of a process that is gone is taken over). ``{"merging": who}`` if another process holds it."""
    lock = out / SHARDS / MERGE_LOCK
    try:
        owner = try_lock(lock)
    except FileNotFoundError:  # the shards folder went with the result another rank has just swapped in
        return {"merging": "another process has merged the shards"}
    if owner is not None:  # another rank is merging (a lock whose owner is gone was taken over)
        return {"merging": f"{describe_owner(owner)} is merging the shards (if it is gone, delete {lock})"}
    staging = None
    try:
        embs, ids, failed = [], [], []
        for s in range(plan.num_shards):
            with np.load(shard_path(out, s)) as z:
                embs.append(z["embeddings"])
                ids.extend(z["ids"].tolist())
                failed.extend(zip(z["failed"].tolist(), z["reasons"].tolist()))
        emb = np.concatenate(embs) if embs else np.zeros((0, plan.model["dim"]), np.float32)
        staging = new_staging(out)
        atomic_write(staging / EMBEDDINGS, lambda p: _save_npy(p, emb))
        atomic_write_text(staging / IDS, ids_text(ids))
        atomic_write_text(staging / FAILED, "".join(f"{p}\t{r}\n" for p, r in failed))
        meta = {"format": FORMAT, "count": len(ids), "failed": len(failed), "dim": int(emb.shape[1]),
                "source": source, "engine": engine.name, "model": spec_to_metadata(engine.spec),
                "plan": json.loads(plan.to_json())}
        atomic_write_text(staging / META, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if (out / SHARDS / MODEL).is_file():
            os.replace(out / SHARDS / MODEL, staging / MODEL)
        # the old folder (shards, lock and any previous result) goes with the swap
        commit_folder(staging, out, content=FORMAT, count=len(ids), dim=int(emb.shape[1]),
                      state_dict_sha256=engine.spec.state_dict_sha256)
        return {"count": len(ids), "failed": len(failed), "out": str(out)}
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        release_lock(lock)
        raise


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def load_embeddings(path: str | Path) -> tuple[np.ndarray, list[str], dict]:
    """(embeddings, ids, meta) of an extraction folder whose files match its manifest; one-line
    errors for anything else."""
    path = Path(path)
    if not (path / META).is_file() or not (path / EMBEDDINGS).is_file():
        if (path / SHARDS).is_dir():
            raise UsageError(f"{path} is an unfinished extraction; rerun the same `zoo extract` to complete it")
        raise UsageError(f"{path} is not an extraction folder (no {META}/{EMBEDDINGS}); run `zoo extract` first")
    verify_manifest(path, RESULT_FILES, fix="run `zoo extract ... --overwrite` again")
    meta = json.loads((path / META).read_text())
    emb = np.load(path / EMBEDDINGS, mmap_mode="r")
    ids = parse_ids((path / IDS).read_text(encoding="utf-8"))
    if emb.ndim != 2 or len(ids) != emb.shape[0]:
        raise UsageError(f"{path}: {EMBEDDINGS} has {emb.shape[0]} rows but {IDS} {len(ids)} ids; re-extract")
    bad = first_non_finite_row(emb)
    if bad is not None:
        raise UsageError(f"{path / EMBEDDINGS}: row {bad} ({ids[bad]}) is NaN or infinite; re-extract with a model "
                         "that gives finite embeddings")
    return emb, ids, meta
