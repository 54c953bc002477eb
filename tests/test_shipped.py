"""The weights that carry the cards' numbers ship inside sslzoo and load offline on a fresh machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_GUARD_S, ROOT, run_zoo
from hubtools import assert_same_features, assert_same_weights, features, random_model

import zoo
from zoo import UsageError
from zoo.cards import RESULTS_DIRNAME, default_cards_dir
from zoo.checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_config, sha256_file
from zoo.hub import SHIPPED_DIR, LocalHub, publish, ship, shipped_hub, weights_origin

RESULTS = sorted((default_cards_dir() / RESULTS_DIRNAME).glob("*.json"))
WITH_RESULTS = [p.stem for p in RESULTS]


def test_every_model_with_numbers_ships_the_weights_they_were_measured_on():
    assert len(WITH_RESULTS) >= 12
    for name in WITH_RESULTS:
        recorded = json.loads((default_cards_dir() / RESULTS_DIRNAME / f"{name}.json").read_text())["weights_sha256"]
        weights = zoo.get_model_entry(name).weights
        folder = shipped_hub().snapshot(weights.hub_repo, weights.revision)
        assert folder is not None, f"{name} has results but no shipped weights"
        assert sha256_file(folder / WEIGHTS_NAME) == recorded == read_config(folder)["weights"]["sha256"], name
        assert weights_origin(name) == "shipped"


def test_only_checkpoint_files_ship_one_version_each():
    for repo_dir in sorted(SHIPPED_DIR.glob("models--*")):
        snapshots = list((repo_dir / "snapshots").iterdir())
        assert len(snapshots) == 1, repo_dir
        assert sorted(p.name for p in snapshots[0].iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
        assert (repo_dir / "refs" / "main").read_text().strip() == snapshots[0].name
        assert "training_state" not in json.dumps(read_config(snapshots[0]))  # weights only, never training state


@pytest.mark.slow
def test_fresh_machine_loads_every_shipped_model_offline(tmp_path):
    """Empty HOME, local hub and Hugging Face cache, HF_HUB_OFFLINE=1: Python and torch.hub both load
    every model that has recorded results, and the bytes are the ones its results were measured on."""
    script = f"""
import hashlib, json, sys, torch, zoo
from zoo.checkpoint import sha256_file
names = {WITH_RESULTS!r}
for name in names:
    model = zoo.create_model(name, pretrained=True)
    hubbed = torch.hub.load({str(ROOT)!r}, name, source="local", pretrained=True, trust_repo=True)
    assert model.checkpoint_source.source == hubbed.checkpoint_source.source == "shipped", model.checkpoint_source
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), hubbed.state_dict().values()))
    recorded = json.load(open({str(default_cards_dir() / RESULTS_DIRNAME)!r} + "/" + name + ".json"))["weights_sha256"]
    assert sha256_file(model.checkpoint_source.path / "model.safetensors") == recorded, name
    assert not model.training
print("loaded", len(names))
"""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "ZOO_", "XDG_"))}
    env.update(HOME=str(home), ZOO_HUB=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=HANG_GUARD_S)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == f"loaded {len(WITH_RESULTS)}"
    assert not (tmp_path / "hub").exists() and not (tmp_path / "hf").exists()  # nothing downloaded or cached


def test_the_users_local_hub_comes_before_the_shipped_weights(tmp_path):
    name = WITH_RESULTS[0]
    shipped = zoo.create_model(name, pretrained=True)
    assert shipped.checkpoint_source.source == "shipped"
    mine = random_model(name, seed=3)
    from hubtools import publishable_checkpoint

    publish(publishable_checkpoint(mine, tmp_path / "ckpt", tmp_path / "cards"), mine.entry.weights.hub_repo)
    loaded = zoo.create_model(name, pretrained=True)
    assert loaded.checkpoint_source.source == "local hub" and weights_origin(name) == "local hub"
    assert_same_weights(mine, loaded)
    assert_same_features(features(mine), features(loaded))  # two forwards: equal within summation order


def _results_for(cards: Path, folder: Path) -> None:
    config = read_config(folder)
    path = cards / RESULTS_DIRNAME / f"{config['name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": config["name"], "weights_sha256": config["weights"]["sha256"], "results": [
        {"task": "image-classification", "dataset": "Fashion-MNIST", "split": "test", "metric": "top-1",
         "value": 12.5, "protocol_id": "knn", "protocol": "test fixture", "command": "pytest"}]}))


def test_ship_takes_only_weights_with_numbers_and_keeps_one_version(tmp_path, monkeypatch):
    monkeypatch.setattr("zoo.hub.SHIPPED_DIR", tmp_path / "shipped")
    cards = tmp_path / "cards"
    name = "rotnet_nin_fmnist"
    first = random_model(name, seed=1).save_pretrained(tmp_path / "one")
    with pytest.raises(UsageError, match="carries no recorded numbers"):
        ship(first, cards_dir=cards)
    _results_for(cards, first)
    target, snapshot = ship(first, cards_dir=cards)
    assert sorted(p.name for p in target.iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    assert "12.5" in (target / "README.md").read_text()
    assert not (first / "README.md").read_text().count("12.5")  # the source folder is left as it was
    second = random_model(name, seed=2).save_pretrained(tmp_path / "two")
    _results_for(cards, second)
    target2, snapshot2 = ship(second, cards_dir=cards)
    repo_dir = LocalHub(tmp_path / "shipped").repo_dir(zoo.get_model_entry(name).weights.hub_repo)
    assert [p.name for p in (repo_dir / "snapshots").iterdir()] == [snapshot2] != [snapshot]
    assert sha256_file(target2 / WEIGHTS_NAME) == read_config(second)["weights"]["sha256"]


def test_a_registry_name_means_its_published_weights_in_export_and_extract(tmp_path):
    name = WITH_RESULTS[0]
    out = tmp_path / "m.onnx"
    res = run_zoo("export", name, "--onnx", "-o", str(out))
    assert res.returncode == 0, res.stderr
    from export.onnx_export import read_metadata

    spec = read_metadata(out)
    recorded = json.loads((default_cards_dir() / RESULTS_DIRNAME / f"{name}.json").read_text())["weights_sha256"]
    assert spec.weights == "published" and spec.weights_origin.startswith("shipped sslzoo/")
    assert spec.weights_file_sha256 == recorded and recorded[:12] in res.stdout
    random = run_zoo("export", f"random:{name}", "--onnx", "-o", str(tmp_path / "r.onnx"))
    assert random.returncode == 0 and read_metadata(tmp_path / "r.onnx").weights_origin == "random-init"
    from zoo.photos import photo_paths

    photos = list(photo_paths().values())[:3]
    extracted = run_zoo("extract", name, *map(str, photos), "-o", str(tmp_path / "emb"))
    assert extracted.returncode == 0, extracted.stderr
    meta = json.loads((tmp_path / "emb" / "meta.json").read_text())
    assert meta["count"] == 3 and meta["model"]["weights_file_sha256"] == recorded
    assert meta["model"]["weights_origin"].startswith("shipped sslzoo/")
    missing = run_zoo("export", "rotnet_alexnet", "--onnx", "-o", str(tmp_path / "a.onnx"),
                      env={"HF_HUB_OFFLINE": "1", "ZOO_OFFLINE": "1"})
    assert missing.returncode != 0 and len(missing.stderr.strip().splitlines()) == 1
    assert "random:rotnet_alexnet" in missing.stderr and not (tmp_path / "a.onnx").exists()


def test_zoo_list_says_where_weights_come_from():
    res = run_zoo("list")
    assert res.returncode == 0
    rows = {line.split()[0]: line for line in res.stdout.splitlines() if line.strip()}
    for name in WITH_RESULTS:
        assert rows[name].rstrip().endswith("shipped"), rows[name]


@pytest.mark.slow
def test_a_cards_knn_number_is_reproduced_from_the_shipped_weights(tmp_path):
    """Measured afresh from the shipped file, the shipped seed's kNN number is the card's. Another
    CPU or thread count sums in another order, which can flip the vote of an image near a tie: a
    few of the 10,000 test images, hence 0.3 points (30 images) of tolerance."""
    name = "simclr_resnet_small_fmnist"
    recorded = json.loads((default_cards_dir() / RESULTS_DIRNAME / f"{name}.json").read_text())
    entry = next(r for r in recorded["results"] if r["protocol_id"] == "knn")
    seed = entry["seeds"].index(recorded["shipped_seed"])
    out = tmp_path / "knn.json"
    res = run_zoo("eval", name, "--protocol", "knn", "--baseline-seeds", "0", "--json-out", str(out),
                  env={"XDG_CACHE_HOME": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert report["weights_sha256"] == recorded["weights_sha256"]
    measured = report["results"][0]["per_layer"][entry["layer_per_seed"][seed]]
    assert measured == pytest.approx(entry["per_seed"][seed], abs=0.3)


def test_each_shipped_card_is_the_card_its_results_give_now():
    """`zoo card --all` and `zoo ship` must be rerun together: a shipped README that no longer
    matches the current registry and results is a stale card travelling with the weights."""
    from zoo.cards import render_card

    for name in WITH_RESULTS:
        snapshot = shipped_hub().snapshot(zoo.get_model_entry(name).weights.hub_repo)
        config = read_config(snapshot)
        expected = str(render_card(name, checkpoint_config=config, checkpoint_dir=Path(name)))
        assert (snapshot / "README.md").read_text() == expected, f"{name}: re-ship it (zoo ship RUN/model)"


@pytest.mark.slow
def test_the_photo_models_card_recall_is_what_the_cli_finds(tmp_path):
    """bench/photo_retrieval_cli.py writes the held-out photo benchmark as PNG files and runs zoo
    extract -> zoo index build -> zoo search on the shipped photo model: its top hits give the
    recall@1 that the card records for the shipped seed (ONNX Runtime against PyTorch fp32 may
    reorder two tiles whose cosines differ by ~1e-6: one query either way is allowed)."""
    name = "simclr_resnet_small_photos"
    out = tmp_path / "cli.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "photo_retrieval_cli.py"), name, "--keep", str(tmp_path / "b"),
                    "--json-out", str(out)], check=True, capture_output=True, timeout=HANG_GUARD_S)
    cli = json.loads(out.read_text())
    recorded = json.loads((default_cards_dir() / RESULTS_DIRNAME / f"{name}.json").read_text())
    recall = next(r for r in recorded["results"] if r["metric"] == "recall@1")
    seed = recorded["shipped_seed"]
    exported = zoo.get_model_entry(name).embedding_layer or zoo.create_model(name).feature_layers[-1]
    assert recall["layer_per_seed"][seed] == exported  # the card's layer is the one the export embeds with
    assert cli["queries"] == recall["split_size"] == 360
    assert abs(cli["top1_hits"] - recall["per_seed"][seed] * 360 / 100) <= 1
