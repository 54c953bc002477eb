"""Extraction from JPEG files (resume, sharding, unreadable files) and FAISS indexes."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import HANG_GUARD_S, ROOT, run_zoo

from zoo.errors import UsageError
from zoo.photos import load_photos

from export.embedding import build_embedding_model, load_backbone, prepare_image
from export.engines import OnnxRuntimeEngine
from export.extract import collect_images, extract, load_embeddings
from export.index import (BuildParams, build_and_tune, build_index, leave_one_out_topk, load_index, recall_at_k,
                          save_index, search)
from export.onnx_export import export_onnx


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    backbone, weights = load_backbone("random:rotnet_nin_fmnist")
    model, spec = build_embedding_model(backbone, "rotnet_nin_fmnist", weights, layer="block2")
    return export_onnx(model, spec, tmp_path_factory.mktemp("m") / "nin.onnx")


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """The shipped photos as JPEG files (plus flipped copies), one unreadable file and a text file."""
    folder = tmp_path_factory.mktemp("jpegs")
    for name, photo in load_photos().items():
        Image.fromarray(photo).save(folder / f"{name}.jpg", quality=90)
        Image.fromarray(photo[:, ::-1]).save(folder / "sub" / f"{name}-flip.png") if (folder / "sub").mkdir(
            exist_ok=True) is None else None
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


class CountingEngine:
    """The real ONNX Runtime engine, counting images; optionally interrupted after some batches."""

    def __init__(self, engine, fail_after=None):
        self.engine, self.spec, self.name = engine, engine.spec, engine.name
        self.images, self.calls, self.fail_after = 0, 0, fail_after

    def embed(self, batch):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.images += len(batch)
        return self.engine.embed(batch)


def test_collect_images_expands_folders_and_keeps_missing_files(jpegs):
    files = collect_images([jpegs, jpegs / "astronaut.jpg", jpegs / "missing.jpg"])
    assert str(jpegs / "notes.txt") not in files and str(jpegs / "sub" / "chelsea-flip.png") in files
    assert files.count(str(jpegs / "astronaut.jpg")) == 1 and files[-1] == str(jpegs / "missing.jpg")


def test_extract_writes_embeddings_ids_and_lists_unreadable_files(onnx_model, jpegs, tmp_path):
    engine = OnnxRuntimeEngine(onnx_model)
    summary = extract(engine, [jpegs, jpegs / "missing.jpg"], tmp_path / "out", batch_size=5, workers=2,
                      shard_size=7, progress=False)
    emb, ids, meta = load_embeddings(tmp_path / "out")
    n_photos = len(load_photos())
    assert summary["done"] and len(ids) == 2 * n_photos == emb.shape[0] and meta["failed"] == 2
    failed = (tmp_path / "out" / "failed.tsv").read_text().splitlines()
    assert {line.split("\t")[0] for line in failed} == {str(jpegs / "broken.jpg"), str(jpegs / "missing.jpg")}
    assert not (tmp_path / "out" / "shards").exists()
    # each row is the engine's embedding of that very file
    i = ids.index(str(jpegs / "chelsea.jpg"))
    image = np.asarray(Image.open(jpegs / "chelsea.jpg").convert("RGB"))
    direct = engine.embed(prepare_image(image, engine.spec.input, engine.spec.input_kind)[None])[0]
    assert np.abs(emb[i] - direct).max() < 1e-6
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_extract_resumes_after_an_interruption(onnx_model, jpegs, tmp_path):
    base = OnnxRuntimeEngine(onnx_model)
    interrupted = CountingEngine(base, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        extract(interrupted, [jpegs], tmp_path / "out", batch_size=2, shard_size=4, workers=1, progress=False)
    finished_shards = sorted((tmp_path / "out" / "shards").glob("shard-*.npz"))
    assert len(finished_shards) == 1  # 3 batches of 2 = one shard of 4 written, the second cut short
    resumed = CountingEngine(base)
    summary = extract(resumed, [jpegs], tmp_path / "out", batch_size=2, shard_size=4, workers=1, progress=False)
    files = collect_images([jpegs])
    unreadable_later = sum(f.endswith("broken.jpg") for f in files[4:])
    assert summary["skipped"] == 4 and resumed.images == len(files) - 4 - unreadable_later
    fresh = extract(base, [jpegs], tmp_path / "fresh", batch_size=8, shard_size=100, workers=0, progress=False)
    a, ids_a, _ = load_embeddings(tmp_path / "out")
    b, ids_b, _ = load_embeddings(tmp_path / "fresh")
    assert ids_a == ids_b and fresh["count"] == len(ids_a) and np.abs(a - b).max() < 1e-5
    again = CountingEngine(base)
    assert extract(again, [jpegs], tmp_path / "out", batch_size=2, shard_size=4, progress=False)["already"]
    assert again.images == 0


def test_extract_refuses_to_mix_jobs_in_one_folder(onnx_model, jpegs, tmp_path):
    engine = OnnxRuntimeEngine(onnx_model)
    extract(engine, [jpegs / "astronaut.jpg"], tmp_path / "out", progress=False)
    with pytest.raises(UsageError, match="other images or another model"):
        extract(engine, [jpegs / "chelsea.jpg"], tmp_path / "out", progress=False)
    assert extract(engine, [jpegs / "chelsea.jpg"], tmp_path / "out", progress=False, overwrite=True)["count"] == 1


def test_ranks_take_every_other_shard_and_the_last_one_merges(onnx_model, jpegs, tmp_path):
    engine = OnnxRuntimeEngine(onnx_model)
    shards = -(-len(collect_images([jpegs])) // 5)  # how many photos ship depends on the installed packages
    assert shards >= 3
    r1 = extract(engine, [jpegs], tmp_path / "out", shard_size=5, rank=1, world_size=2, progress=False)
    assert not r1["done"] and sorted(p.name for p in (tmp_path / "out" / "shards").glob("*.npz")) == [
        f"shard-{i:05d}.npz" for i in range(1, shards, 2)]
    r0 = extract(engine, [jpegs], tmp_path / "out", shard_size=5, rank=0, world_size=2, progress=False)
    assert r0["done"] and r0["count"] == len(collect_images([jpegs])) - 1
    _, ids, _ = load_embeddings(tmp_path / "out")
    assert ids == [f for f in collect_images([jpegs]) if not f.endswith("broken.jpg")]


def test_engine_threads_are_shared_between_local_ranks(monkeypatch):
    from export.engines import default_threads

    monkeypatch.delenv("ZOO_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    alone = default_threads()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_threads() == max(1, alone // 2)
    monkeypatch.setenv("ZOO_THREADS", "3")
    assert default_threads() == 3


def test_torchrun_extracts_with_two_ranks(onnx_model, jpegs, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "zoo", "extract", str(onnx_model), str(jpegs), "-o", str(tmp_path / "out"), "--shard-size", "6",
           "--threads", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=HANG_GUARD_S,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    emb, ids, meta = load_embeddings(tmp_path / "out")
    assert len(ids) == len(collect_images([jpegs])) - 1 and meta["failed"] == 1
    assert "wrote" in res.stdout and "the last rank to finish merges" in res.stdout


# ------------------------------------------------------------------------------------------------
# Indexes
# ------------------------------------------------------------------------------------------------

def clustered_vectors(n=6000, d=64, seed=0):
    """Points around 60 centres in a 16-d subspace plus noise, normalised: a structured collection."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(60, 16))
    z = centres[rng.integers(0, 60, n)] + 0.8 * rng.normal(size=(n, 16))
    x = z @ rng.normal(size=(16, d)) + 0.5 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_recall_helpers():
    rows = np.array([0, 1])
    found = leave_one_out_topk(np.array([[0, 5, 6, 7], [2, 1, 3, -1]]), rows, 2)
    assert found.tolist() == [[5, 6], [2, 3]]
    assert recall_at_k(found, np.array([[5, 9], [3, 2]])) == 0.75


def test_flat_index_is_exact_and_ids_round_trip(tmp_path):
    x = clustered_vectors(500)
    index, meta = build_and_tune(x, BuildParams(type="flat"))
    ids = [f"img{i}" for i in range(len(x))]
    save_index(tmp_path / "ix", index, ids, meta)
    loaded, loaded_ids, loaded_meta = load_index(tmp_path / "ix")
    scores, found = search(loaded, x[:20], 5)
    exact = np.argsort(-(x[:20] @ x.T), axis=1)[:, :5]
    assert (found == exact).all() and loaded_ids == ids and loaded_meta["type"] == "flat"
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


@pytest.mark.parametrize("index_type", ["ivfpq", "hnsw"])
def test_approximate_indexes_are_tuned_to_the_recall_target(index_type):
    x = clustered_vectors()
    index, meta = build_and_tune(x, BuildParams(type=index_type), recall_target=0.95, num_queries=300,
                                 log=lambda m: None)
    tuning = meta["tuning"]
    assert meta["type"] == index_type and tuning["recall"] >= 0.95 and meta["search_params"]
    # the stored parameters reproduce the measured recall on fresh queries
    rows = np.arange(3000, 3300)
    truth = leave_one_out_topk(np.argsort(-(x[rows] @ x.T), axis=1)[:, :11], rows, 10)
    _, found = search(index, x[rows], 11)
    assert recall_at_k(leave_one_out_topk(found, rows, 10), truth) >= 0.9
    if index_type == "ivfpq":
        assert set(meta["search_params"]) == {"nprobe", "k_factor"} and meta["build_params"]["nlist"] >= 1


def test_auto_picks_the_fastest_type_that_reaches_the_target():
    x = clustered_vectors(3000)
    logs = []
    index, meta = build_and_tune(x, BuildParams(type="auto"), recall_target=0.9, num_queries=200, log=logs.append)
    assert meta["type"] in ("flat", "ivfpq", "hnsw") and meta["tuning"]["recall"] >= 0.9
    assert len(logs) == 3 and all("QPS" in line for line in logs)


def test_whitening_is_learned_on_the_database_and_applied_to_queries():
    x = clustered_vectors(2000)
    index = build_index(x, BuildParams(type="flat", whiten=32))
    import faiss

    assert isinstance(index, faiss.IndexPreTransform) and index.d == 64
    from export.index import transformed

    w = transformed(index, x)
    assert w.shape == (2000, 32)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, atol=1e-4)
    _, found = search(index, x[:10], 1)
    assert (found[:, 0] == np.arange(10)).all()
    with pytest.raises(UsageError, match="--whiten 100"):
        build_index(x, BuildParams(type="flat", whiten=100))


def test_cli_extract_index_search_end_to_end(onnx_model, jpegs, tmp_path):
    res = run_zoo("extract", str(onnx_model), str(jpegs), "-o", str(tmp_path / "emb"), "--batch-size", "4")
    assert res.returncode == 0, res.stderr
    assert "1 unreadable files listed" in res.stdout and res.stderr == ""  # a pipe: no progress bar
    res = run_zoo("index", "build", str(tmp_path / "emb"), "-o", str(tmp_path / "ix"), "--whiten", "8")
    assert res.returncode == 0, res.stderr
    res = run_zoo("search", str(tmp_path / "ix"), str(jpegs / "coffee.jpg"), str(jpegs / "broken.jpg"),
                  "-k", "3", "--json")
    assert res.returncode == 0, res.stderr
    hits = json.loads(res.stdout)
    assert len(hits) == 1 and hits[0]["results"][0]["id"] == str(jpegs / "coffee.jpg")
    assert hits[0]["results"][0]["score"] == pytest.approx(1.0, abs=1e-4) and "skipped query" in res.stderr
    res = run_zoo("index", "build", str(tmp_path / "emb"), "-o", str(tmp_path / "ix2"), "--type", "auto")
    assert res.returncode == 2 and "pass --recall" in res.stderr and not (tmp_path / "ix2").exists()
    res = run_zoo("search", str(tmp_path / "nothing"), str(jpegs / "coffee.jpg"))
    assert res.returncode == 2 and "is not an index folder" in res.stderr and res.stderr.count("\n") == 1


# ------------------------------------------------------------------------------------------------
# Kills and hostile folders
# ------------------------------------------------------------------------------------------------

def test_a_kill_during_the_merge_leaves_a_stale_lock_that_the_rerun_takes_over(onnx_model, jpegs, tmp_path):
    out = tmp_path / "out"
    args = ("extract", str(onnx_model), str(jpegs), "-o", str(out), "--shard-size", "8", "--threads", "1")
    res = run_zoo(*args, env={"ZOO_TEST_FAULT": "rename@embeddings.npy:1:kill", "OMP_NUM_THREADS": "1"})
    assert res.returncode == -9 and not (out / "embeddings.npy").exists()
    assert (out / "shards" / "merge.lock").is_file()  # the killed process held it
    res = run_zoo(*args, env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert "wrote" in res.stdout and "0 images done" not in res.stdout
    _, ids, _ = load_embeddings(out)
    assert len(ids) == len(collect_images([jpegs])) - 1
    leftovers = [p.name for p in out.parent.rglob("*") if p.name.startswith(".") or p.name.endswith(".lock")]
    assert leftovers == [] and not (out / "shards").exists()


def test_merge_locks_name_their_owner_and_stale_ones_are_taken_over(tmp_path):
    import json as _json
    import time

    from zoo.fileset import _host_tag, release_lock, try_lock

    lock = tmp_path / "merge.lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(_json.dumps({"pid": sleeper.pid, "host": _host_tag(), "hostname": "here"}))
        assert try_lock(lock)["pid"] == sleeper.pid  # a live owner keeps it
    finally:
        sleeper.kill()
        sleeper.wait()
    assert try_lock(lock) is None and _json.loads(lock.read_text())["pid"] == os.getpid()  # its owner is gone
    release_lock(lock)
    assert not lock.exists()
    lock.write_text(_json.dumps({"pid": 1, "host": "another", "hostname": "elsewhere"}))
    assert try_lock(lock, max_age=3600)["hostname"] == "elsewhere"  # another host's: only age tells
    os.utime(lock, (time.time() - 7200, time.time() - 7200))
    assert try_lock(lock, max_age=3600) is None


def _folder_state(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_refused_outputs_are_left_as_they_were(onnx_model, jpegs, tmp_path):
    engine = OnnxRuntimeEngine(onnx_model)
    extract(engine, [jpegs / "astronaut.jpg", jpegs / "chelsea.jpg"], tmp_path / "emb", progress=False)
    emb, ids, meta = load_embeddings(tmp_path / "emb")
    index, index_meta = build_and_tune(np.asarray(emb), BuildParams(type="flat"))
    save_index(tmp_path / "ix", index, ids, {**index_meta, "model": meta["model"], "source": str(onnx_model)})
    before_ix, before_emb = _folder_state(tmp_path / "ix"), _folder_state(tmp_path / "emb")
    # an index folder is not an extraction folder, --overwrite or not
    with pytest.raises(UsageError, match="not an sslzoo extraction folder"):
        extract(engine, [jpegs / "coffee.jpg"], tmp_path / "ix", progress=False, overwrite=True)
    # and an extraction folder is not an index folder
    res = run_zoo("index", "build", str(tmp_path / "emb"), "-o", str(tmp_path / "emb"))
    assert res.returncode == 2 and "not an index folder" in res.stderr and res.stderr.count("\n") == 1
    assert _folder_state(tmp_path / "ix") == before_ix and _folder_state(tmp_path / "emb") == before_emb
    # a folder of someone else's files gets no model.onnx when the extraction is refused
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    res = run_zoo("extract", "random:rotnet_nin_fmnist", str(jpegs / "coffee.jpg"), "-o", str(tmp_path / "mine"),
                  "--layer", "block1", env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 2 and "not an sslzoo extraction folder" in res.stderr
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_overwrite_with_another_pooling_keeps_the_model_that_made_the_embeddings(jpegs, tmp_path):
    from export.onnx_export import read_metadata
    from zoo.photos import read_image

    out = tmp_path / "emb"
    args = ("extract", "random:rotnet_nin_fmnist", str(jpegs / "coffee.jpg"), str(jpegs / "chelsea.jpg"), "-o",
            str(out), "--layer", "block1", "--threads", "1")
    assert run_zoo(*args, env={"OMP_NUM_THREADS": "1"}).returncode == 0
    res = run_zoo(*args, "--pool", "max", "--overwrite", env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert read_metadata(out / "model.onnx").pool == "max"
    emb, ids, _ = load_embeddings(out)
    engine = OnnxRuntimeEngine(out / "model.onnx")
    query = engine.embed(prepare_image(read_image(jpegs / "coffee.jpg"), engine.spec.input, "uint8")[None])[0]
    assert float(query @ emb[ids.index(str(jpegs / "coffee.jpg"))]) == pytest.approx(1.0, abs=1e-5)


def test_a_kill_between_index_files_leaves_the_previous_index_whole(onnx_model, jpegs, tmp_path):
    import shutil

    engine = OnnxRuntimeEngine(onnx_model)
    photos = [jpegs / f"{n}.jpg" for n in ("astronaut", "chelsea", "coffee", "rocket")]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    for i, photo in enumerate(photos):  # the same photos under other names, in the other order
        shutil.copy(photo, tmp_path / "a" / f"{i}.jpg")
        shutil.copy(photo, tmp_path / "b" / f"{len(photos) - 1 - i}.jpg")
    for name in ("a", "b"):
        extract(engine, [tmp_path / name], tmp_path / f"emb-{name}", source=str(onnx_model), progress=False)
    emb, ids, meta = load_embeddings(tmp_path / "emb-a")
    index, index_meta = build_and_tune(np.asarray(emb), BuildParams(type="flat"))
    save_index(tmp_path / "ix", index, ids, {**index_meta, "model": meta["model"], "source": str(onnx_model)})
    res = run_zoo("index", "build", str(tmp_path / "emb-b"), "-o", str(tmp_path / "ix"),
                  env={"ZOO_TEST_FAULT": "rename@ids.txt:1:kill"})
    assert res.returncode == -9
    loaded, loaded_ids, _ = load_index(tmp_path / "ix")
    _, found = search(loaded, np.asarray(emb), 1)
    assert [loaded_ids[j] for j in found[:, 0]] == ids  # every photo still finds its own name
    save_index(tmp_path / "ix", index, ids, index_meta)  # the next build removes the killed one's leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "emb-a", "emb-b", "ix"]


def test_readers_refuse_files_that_do_not_match_their_manifest(onnx_model, jpegs, tmp_path):
    from zoo.fileset import IntegrityError

    engine = OnnxRuntimeEngine(onnx_model)
    extract(engine, [jpegs / "astronaut.jpg", jpegs / "chelsea.jpg"], tmp_path / "emb", progress=False)
    emb, ids, meta = load_embeddings(tmp_path / "emb")
    index, index_meta = build_and_tune(np.asarray(emb), BuildParams(type="flat"))
    save_index(tmp_path / "ix", index, ids, index_meta)
    (tmp_path / "ix" / "ids.txt").write_text("".join(f"{i}\n" for i in reversed(ids)))  # same count, wrong order
    with pytest.raises(IntegrityError, match=r"ids\.txt does not match manifest\.json"):
        load_index(tmp_path / "ix")
    data = bytearray((tmp_path / "emb" / "embeddings.npy").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "emb" / "embeddings.npy").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"embeddings\.npy does not match"):
        load_embeddings(tmp_path / "emb")
    res = run_zoo("search", str(tmp_path / "ix"), str(jpegs / "coffee.jpg"))
    assert res.returncode == 1 and "does not match manifest.json" in res.stderr and res.stderr.count("\n") == 1


def test_search_refuses_an_index_whose_model_file_was_replaced(onnx_model, jpegs, tmp_path):
    import shutil

    model = tmp_path / "model.onnx"
    shutil.copy(onnx_model, model)
    extract(OnnxRuntimeEngine(model), [jpegs / "astronaut.jpg", jpegs / "chelsea.jpg"], tmp_path / "emb",
            source=str(model), progress=False)
    assert run_zoo("index", "build", str(tmp_path / "emb"), "-o", str(tmp_path / "ix")).returncode == 0
    backbone, weights = load_backbone("random:rotnet_nin_fmnist")  # the same weights, another layer
    export_onnx(*build_embedding_model(backbone, "rotnet_nin_fmnist", weights, layer="block1", pool="max"), model)
    res = run_zoo("search", str(tmp_path / "ix"), str(jpegs / "coffee.jpg"))
    assert res.returncode == 2 and "was replaced" in res.stderr and res.stderr.count("\n") == 1


def test_a_full_disk_during_an_index_build_names_the_index_and_keeps_the_old_one(tmp_path, monkeypatch, capsys):
    from zoo.cli import main

    x = clustered_vectors(300)
    index, meta = build_and_tune(x, BuildParams(type="flat"))
    save_index(tmp_path / "ix", index, [f"img{i}" for i in range(len(x))], meta)
    before = _folder_state(tmp_path / "ix")
    (tmp_path / "emb").mkdir()
    np.save(tmp_path / "emb" / "embeddings.npy", x[:100])
    (tmp_path / "emb" / "ids.txt").write_text("".join(f"new{i}\n" for i in range(100)))
    (tmp_path / "emb" / "failed.tsv").write_text("")
    (tmp_path / "emb" / "meta.json").write_text(json.dumps({"format": "sslzoo-embeddings/1", "count": 100}))
    from zoo.fileset import write_manifest

    write_manifest(tmp_path / "emb")
    monkeypatch.setenv("ZOO_TEST_FAULT", "write@index.faiss:1:enospc")
    assert main(["index", "build", str(tmp_path / "emb"), "-o", str(tmp_path / "ix")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: disk full while writing {tmp_path / 'ix' / 'index.faiss'} (") and \
        err.count("\n") == 1, err
    assert _folder_state(tmp_path / "ix") == before and sorted(p.name for p in tmp_path.iterdir()) == ["emb", "ix"]


def test_a_rank_that_finds_the_shards_merged_already_says_so(tmp_path):
    from export.extract import merge_shards

    (tmp_path / "out").mkdir()  # what a rank sees once another has swapped the merged result in
    assert merge_shards(tmp_path / "out", None, None, "") == {"merging": "another process has merged the shards"}


def _nan_onnx(path, out):
    """``path`` with one weight of its first convolution set to NaN (metadata kept): an ONNX file
    whose model gives NaN embeddings, as a broken export or an fp16 overflow would."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    init = next(i for i in proto.graph.initializer if i.name == conv.input[1])
    weights = numpy_helper.to_array(init).copy()
    weights.flat[0] = np.nan
    init.CopyFrom(numpy_helper.from_array(weights, init.name))
    onnx.save(proto, str(out))
    return out


def test_non_finite_embeddings_are_refused_at_extraction_indexing_and_search(onnx_model, jpegs, tmp_path):
    from export.extract import FORMAT
    from zoo.fileset import write_manifest

    images = tmp_path / "images"
    images.mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        (images / f"{name}.jpg").write_bytes((jpegs / f"{name}.jpg").read_bytes())
    # Extraction: one line naming the first image, exit 1, no result anyone can read
    res = run_zoo("extract", str(_nan_onnx(onnx_model, tmp_path / "nan.onnx")), str(images), "-o", str(tmp_path / "e"))
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    line, = re.findall(r"error: [^\r\n]*", res.stderr)  # beside a progress bar's carriage returns
    assert "NaN or infinite embedding for " + str(images / "astronaut.jpg") in line, line
    assert not (tmp_path / "e" / "embeddings.npy").exists() and not (tmp_path / "e" / "manifest.json").exists()
    with pytest.raises(UsageError, match="unfinished extraction"):
        load_embeddings(tmp_path / "e")
    # Indexing: an extraction folder with a NaN row (made by hand, or by an older sslzoo) is refused,
    # naming the row and its image; no index folder appears
    good = tmp_path / "good"
    extract(OnnxRuntimeEngine(onnx_model), [images], good, progress=False)
    emb = np.load(good / "embeddings.npy")
    emb[1, 3] = np.inf
    np.save(good / "embeddings.npy", emb)
    write_manifest(good, content=FORMAT)
    res = run_zoo("index", "build", str(good), "-o", str(tmp_path / "idx"))
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    line, = res.stderr.strip().splitlines()
    assert "row 1 (" + str(images / "chelsea.jpg") + ") is NaN or infinite" in line, line
    assert not (tmp_path / "idx").exists()
    # The library functions refuse them too, naming the row
    with pytest.raises(UsageError, match="embedding row 1 is NaN or infinite"):
        build_index(emb, BuildParams(type="flat"))
    index = build_index(np.eye(4, dtype=np.float32), BuildParams(type="flat"))
    with pytest.raises(UsageError, match="query row 0 embeds to NaN or infinite"):
        search(index, np.full((1, 4), np.nan, np.float32), 2)


def test_search_names_the_query_image_whose_embedding_is_not_finite(onnx_model, jpegs, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from export.cli import search_cmd

    images = tmp_path / "images"
    images.mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        (images / f"{name}.jpg").write_bytes((jpegs / f"{name}.jpg").read_bytes())
    assert run_zoo("extract", str(onnx_model), str(images), "-o", str(tmp_path / "e")).returncode == 0
    assert run_zoo("index", "build", str(tmp_path / "e"), "-o", str(tmp_path / "idx")).returncode == 0
    real_embed = OnnxRuntimeEngine.embed

    def second_row_overflows(self, batch):  # the one thing faked: a model that overflows on one image
        emb = real_embed(self, batch)
        emb[1, 0] = np.inf
        return emb

    monkeypatch.setattr(OnnxRuntimeEngine, "embed", second_row_overflows)
    res = CliRunner().invoke(search_cmd, [str(tmp_path / "idx"), str(images / "astronaut.jpg"),
                                          str(images / "chelsea.jpg")])
    assert isinstance(res.exception, UsageError), res.output
    assert f"the query {images / 'chelsea.jpg'} embeds to NaN or infinite numbers" in str(res.exception)
