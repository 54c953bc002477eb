"""Hard kills at exact points, then a rerun: the result is the one an uninterrupted run gives (issue 19).

Each command runs in a real process killed (SIGKILL, through the ``ZOO_TEST_FAULT`` hook of
``zoo.fileset``) at one write, fsync or rename after another. The kills are chained: every killed
run starts from what the previous one left, so each point is reached with the leftovers of an
earlier kill on disk. After each kill what a reader sees is the previous result, whole; after the
final rerun the files are byte for byte those of a run never interrupted, and nothing the kills
left remains. ``killed`` (conftest.py) forks each killed run from a fork server that imported the
commands once. Training is killed in tests/test_training.py (every method, at several points) and
export in tests/test_export_onnx.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from zoo.photos import load_photos


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def zoo_main(capsys):
    """The command in this process (for the uninterrupted runs); torch's thread count restored."""
    import torch

    from zoo.cli import main

    threads = torch.get_num_threads()

    def run(*args):
        code = main(list(args))
        assert code == 0, capsys.readouterr().err
        return capsys.readouterr().out

    yield run
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for name, photo in load_photos().items():
        Image.fromarray(photo).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from export.embedding import build_embedding_model, load_backbone
    from export.onnx_export import export_onnx

    backbone, weights = load_backbone("random:rotnet_nin_fmnist")
    return export_onnx(*build_embedding_model(backbone, "rotnet_nin_fmnist", weights, layer="block1"),
                       tmp_path_factory.mktemp("model") / "m.onnx")


# An extraction of 2-image shards, killed: half-way through its first shard, renaming its second,
# writing the merged embeddings, sealing the manifest and just before the swap into place.
EXTRACT_POINTS = ["write@shard-*:1:kill", "rename@shard-*:2:kill", "rename@embeddings.npy:1:kill",
                  "rename@manifest.json:1:kill", "rename@out:1:kill"]


def test_extract_killed_at_each_point_then_rerun_equals_an_uninterrupted_run(model, photos, tmp_path, killed,
                                                                              zoo_main):
    def args(out):
        return ("extract", str(model), str(photos), "-o", str(out), "--shard-size", "2", "--threads", "1",
                "--workers", "0")

    zoo_main(*args(tmp_path / "ref" / "out"))
    out = tmp_path / "run" / "out"
    for fault in EXTRACT_POINTS:
        killed(args(out), fault)
        assert not (out / "embeddings.npy").exists()  # nothing half-done is ever visible as a result
    assert "wrote" in zoo_main(*args(out))
    reference = _files(tmp_path / "ref" / "out")
    assert len(reference) >= 5 and _files(out) == reference
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no staging folder, lock or temporary file


# An index build over an existing index, killed: writing index.faiss, renaming ids.txt, sealing the
# manifest and just before the swap. After every kill the old index answers with the old ids.
INDEX_POINTS = ["write@index.faiss:1:kill", "rename@ids.txt:1:kill", "rename@manifest.json:1:kill",
                "rename@ix:1:kill"]


def _embeddings(folder, ids, vectors):
    from export.extract import EMBEDDINGS, FAILED, IDS, META, ids_text
    from zoo.fileset import write_manifest

    folder.mkdir(parents=True)
    np.save(folder / EMBEDDINGS, vectors)
    (folder / IDS).write_text(ids_text(ids))
    (folder / FAILED).write_text("")
    (folder / META).write_text(json.dumps({"format": "sslzoo-embeddings/1", "count": len(ids)}))
    write_manifest(folder, content="sslzoo-embeddings/1", count=len(ids), dim=int(vectors.shape[1]))
    return folder


def test_index_build_killed_at_each_point_then_rerun_equals_an_uninterrupted_run(tmp_path, killed, zoo_main):
    from export.index import load_index, search

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    old = _embeddings(tmp_path / "old", [f"old{i}" for i in range(40)], x)
    new = _embeddings(tmp_path / "new", [f"new{i}" for i in range(40)], x[::-1].copy())
    zoo_main("index", "build", str(new), "-o", str(tmp_path / "ref" / "ix"), "--threads", "1")
    ix = tmp_path / "run" / "ix"
    zoo_main("index", "build", str(old), "-o", str(ix), "--threads", "1")
    for fault in INDEX_POINTS:
        killed(("index", "build", str(new), "-o", str(ix), "--threads", "1"), fault)
        index, ids, _ = load_index(ix)  # the previous index, whole: each vector finds its own old id
        _, found = search(index, x, 1)
        assert [ids[j] for j in found[:, 0]] == [f"old{i}" for i in range(40)], fault
    zoo_main("index", "build", str(new), "-o", str(ix), "--threads", "1")
    assert _files(ix) == _files(tmp_path / "ref" / "ix")
    assert sorted(p.name for p in ix.parent.iterdir()) == ["ix"]


# A publish, killed: copying the weights, copying the card, and writing the ref. After every kill
# the hub serves the previous version; the rerun publishes the very snapshot an uninterrupted
# publish makes, and removes what the kills left.
PUBLISH_POINTS = ["write@model.safetensors:1:kill", "write@README.md:1:kill", "rename@main:1:kill"]


def test_publish_killed_at_each_point_then_rerun_equals_an_uninterrupted_run(tmp_path, killed, zoo_main):
    from hubtools import publishable_checkpoint, random_model

    from zoo.hub import LocalHub

    repo = "sslzoo/kills"
    cards = tmp_path / "cards"
    first = publishable_checkpoint(random_model("rotnet_nin_fmnist", seed=1), tmp_path / "a", cards)
    second = publishable_checkpoint(random_model("rotnet_nin_fmnist", seed=2), tmp_path / "b", cards)

    def publish(source, hub):
        return ("publish", str(source), "--repo", repo, "--local-hub", str(hub))

    ref, hub = LocalHub(tmp_path / "ref"), LocalHub(tmp_path / "hub")
    zoo_main(*publish(second, ref.root))
    zoo_main(*publish(first, hub.root))
    before = hub.revisions(repo)
    for fault in PUBLISH_POINTS:
        killed(publish(second, hub.root), fault)
        assert hub.revisions(repo) == before, fault
    zoo_main(*publish(second, hub.root))
    version = ref.revisions(repo)["main"]
    assert hub.revisions(repo) == {"main": version}
    assert _files(hub.snapshot(repo, version)) == _files(ref.snapshot(repo, version))
    repo_dir = hub.repo_dir(repo)
    assert not (repo_dir / ".incoming").exists() and sorted(p.name for p in (repo_dir / "refs").iterdir()) == ["main"]
