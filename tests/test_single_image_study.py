"""zoo/single_image_study.py: the single-image study's tables, from zoo eval JSON files, in the README
(bench/single_image_study.py) and in the cards of the studied models."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from zoo.cards import render_card
from zoo.checkpoint import read_config
from zoo.errors import UsageError
from zoo.hub import shipped_hub
from zoo.registry import get_model_entry
from zoo.single_image_study import card_section, study_dir, table

REPO = Path(__file__).resolve().parents[1]


def _report(per_layer, std, base, base_std=None, model="rotnet_nin_fmnist"):
    entry = {"protocol_id": "linear", "seeds": [0, 1, 2], "per_layer": per_layer, "per_layer_std": std,
             "per_seed": [87.25, 86.5, 87.0], "layer": "block1", "layer_per_seed": ["block1", "block2", "block1"],
             "baseline_per_layer": {"random-init": base}, "baseline_per_seed": {"random-init": [1.0, 2.0, 3.0]}}
    if base_std:
        entry["baseline_per_layer_std"] = {"random-init": base_std}
    return {"model": model, "training": {"steps": 400}, "results": [{"protocol_id": "knn"}, entry]}


def _two_rows(folder: Path) -> None:
    (folder / "rotnet-1img.json").write_text(json.dumps(
        _report({"block1": 87.5, "block2": 86.0}, {"block1": 0.25, "block2": 1.0}, {"block1": 87.0, "block2": 86.7},
                {"block1": 0.5, "block2": 0.1})))
    (folder / "rotnet-full.json").write_text(json.dumps(
        _report({"block1": 88.0, "block2": 89.0}, None, {"block1": 99.0, "block2": 99.0})))


def test_rows_per_training_data_with_random_init_from_the_first_file(tmp_path):
    _two_rows(tmp_path)
    lines = table(tmp_path).splitlines()
    assert lines[0] == "| RotNet: trained on | seeds | block1 | block2 |"
    assert lines[2] == "| 1 image (rocket) | 3 | 87.50 ± 0.25 | 86.00 ± 1.00 |"
    assert lines[3] == "| Fashion-MNIST (full data) | 3 | 88.00 | 89.00 |"  # no per-layer spread recorded
    assert lines[4] == "| random init | 3 | 87.00 ± 0.50 | 86.70 ± 0.10 |"
    assert len(lines) == 5  # no BiGAN or DeepCluster file: no table for them


def test_a_card_shows_its_recipes_rows_with_seeds_and_the_filters_that_exist(tmp_path):
    folder = study_dir(tmp_path)
    folder.mkdir(parents=True)
    _two_rows(folder)
    filters = tmp_path / "pictures" / "single_image_study" / "rotnet-full" / "conv1_filters.png"
    filters.parent.mkdir(parents=True)
    filters.write_bytes(b"\x89PNG")
    text = card_section("rotnet_nin_fmnist", tmp_path)
    assert text.startswith("## The single-image study (arXiv 1904.13132)")
    assert "| 1 image (rocket) | 3 | 400 | 87.50 ± 0.25 | 86.00 ± 1.00 | block1 87.25, block2 86.50, block1 87.00 |" in text
    assert "| random init | 3 | 0 | 87.00 ± 0.50 | 86.70 ± 0.10 | 1.00, 2.00, 3.00 (layers not recorded) |" in text
    assert "](pictures/single_image_study/rotnet-full/conv1_filters.png)" in text
    assert "rotnet-1img/conv1_filters.png" not in text  # no picture drawn for that row: none linked
    assert card_section("bigan_resnet_small_fmnist", tmp_path) is None  # the study did not train it here


def test_a_broken_study_file_is_a_one_line_error(tmp_path):
    folder = study_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "rotnet-8img.json").write_text('{"model": "rotnet_nin_fmnist", "resu')
    with pytest.raises(UsageError, match=r"rotnet-8img\.json is not valid JSON .*rerun the `zoo eval`"):
        card_section("rotnet_nin_fmnist", tmp_path)
    (folder / "rotnet-8img.json").write_text(json.dumps({"model": "rotnet_nin_fmnist", "results": []}))
    with pytest.raises(UsageError, match="has no linear top-1 result; rerun its `zoo eval ... --protocol linear"):
        card_section("rotnet_nin_fmnist", tmp_path)


def test_the_photo_model_compares_one_photo_with_eight_on_its_own_benchmark(tmp_path):
    folder = study_dir(tmp_path)
    folder.mkdir(parents=True)
    for data, value in (("1img", 39.0), ("8img", 64.0)):
        report = _report({"stem": value - 30, "layer4": value}, None, {"stem": 25.0, "layer4": 26.0},
                         model="simclr_resnet_small_photos")
        report["training"]["steps"] = 1800
        report["results"][1].update(protocol_id="photo-retrieval", metric="mAP",
                                    baseline={"random-init": 25.5, "raw-pixels": 32.28})
        # recall@1 before mAP, as a report may list them: the table picks mAP by its metric
        report["results"].insert(1, {**report["results"][1], "metric": "recall@1", "per_layer": {"stem": 1, "layer4": 2}})
        (folder / f"simclr-photos-{data}.json").write_text(json.dumps(report))
    text = card_section("simclr_resnet_small_photos", tmp_path)
    assert "Runs of this model's recipe on 1 image (rocket) and on 8 images (training photos), three seeds" in text
    assert "Copy-detection mAP (%) on the held-out photos" in text and "chosen on the training photos" in text
    assert "| SimCLR, copy views: trained on | seeds | steps | stem | layer4 | chosen layer, per seed |" in text
    assert "| 8 images (training photos) | 3 | 1,800 | 34.00 | 64.00 | block1 87.25, block2 86.50, block1 87.00 |" in text
    assert "Raw pixels (no network, the same benchmark): 32.28." in text
    assert "--protocol photo-retrieval --json-out" in text and "AlexNet" not in text
    assert table(folder) == ""  # the README's linear-probe tables leave it out


@pytest.mark.parametrize("name, rows, pictures", [
    ("rotnet_nin_fmnist", 4, 3), ("bigan_resnet_small_fmnist", 4, 3), ("deepcluster_resnet_small_fmnist", 8, 3),
    ("simclr_resnet_small_photos", 6, 4)])
def test_the_studied_models_cards_carry_the_study_and_their_shipped_cards_do_not(name, rows, pictures):
    """The committed files: each studied model's registry card has its rows (each training data and
    random init per table) and the seed-0 filter pictures, which exist; the card of the shipped
    weights describes those weights only."""
    text = str(render_card(name))
    section = text.split("## The single-image study", 1)[1].split("\n## ", 1)[0]
    assert sum(bool(re.match(r"\| (1 image|8 images|Fashion-MNIST|random init)[^|]*\| 3 \| ", line))
               for line in section.splitlines()) == rows
    linked = [part.split(")")[0] for part in section.split("](")[1:]]
    assert len(linked) == pictures and all((REPO / "MODEL_CARDS" / p).is_file() for p in linked)
    snapshot = shipped_hub().snapshot(get_model_entry(name).weights.hub_repo)
    shipped = str(render_card(name, checkpoint_config=read_config(snapshot), checkpoint_dir=Path(name)))
    assert "## The single-image study" not in shipped


def test_the_bench_script_prints_the_readme_tables():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "single_image_study.py")], capture_output=True,
                         text=True, check=True).stdout
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert out.strip() and out.strip() in readme
