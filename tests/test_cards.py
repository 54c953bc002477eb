"""Model cards: generated from the registry and the results files, committed, never stale."""

import json
import shutil

import pytest
from conftest import ROOT
from huggingface_hub import ModelCard
from hubtools import FIXTURE_VALUE, fixture_results, random_model

import zoo
from zoo import ZooError
from zoo.cards import load_results, render_card, render_index, stale_files, write_cards
from zoo.cli import main as zoo_main

CARDS = ROOT / "MODEL_CARDS"
SECTIONS = ["## Pretext task", "## Pretraining", "## Preprocessing", "## Feature layers", "## Loading",
            "## Exporting", "## Results", "## Limitations"]


def test_committed_cards_match_the_registry_and_results():
    stale = stale_files(CARDS)
    assert stale == [], f"out of date: {stale}; regenerate them with `make cards` (zoo card --all)"
    assert sorted(p.stem for p in CARDS.glob("*.md") if p.name != "README.md") == zoo.list_models()


def test_every_card_is_a_valid_hf_card_with_its_numbers():
    for name in zoo.list_models():
        entry = zoo.get_model_entry(name)
        card = ModelCard((CARDS / f"{name}.md").read_text())
        data = card.data
        assert data.library_name == "sslzoo" and data.pipeline_tag == "image-feature-extraction"
        assert data.license == entry.license and entry.method in data.tags
        assert all(section in card.text for section in SECTIONS), name
        values = sorted(r.metric_value for r in data.eval_results or [])
        ours = [r["value"] for r in (load_results(name) or {}).get("results", [])]  # `zoo eval --record`
        assert values == sorted([p.value for p in entry.paper_results] + ours)
        for p in entry.paper_results:  # each paper number beside its protocol and source
            assert f"| paper | {p.task} | {p.dataset} | {p.metric} | {p.value:g} | {p.protocol} | {p.source} |" in card.text
        if not (CARDS / "results" / f"{name}.json").exists():
            assert "No sslzoo results yet" in card.text
    index = (CARDS / "README.md").read_text()
    assert all(f"[{name}]({name}.md)" in index for name in zoo.list_models())


def test_preprocessing_quirks_are_spelled_out():
    simclr = str(render_card("simclr_resnet50"))
    assert "No mean/std normalisation" in simclr and "Subtract the mean" not in simclr
    assert "Sobel gradients itself" in str(render_card("deepcluster_alexnet"))
    fmnist = str(render_card("rotnet_nin_fmnist"))
    assert "Convert to grey" in fmnist and "centre-crop 32x32" in fmnist and "(0.286)" in fmnist


def test_our_results_sit_beside_the_papers_with_protocol_and_command(tmp_path):
    results = {"model": "npid_resnet50",
               "training": {"recipe": "paper", "command": "torchrun -m training npid", "epochs": 200},
               "results": [{"task": "image-classification", "dataset": "ImageNet-1k", "metric": "top-1", "value": 45.25,
                            "protocol": "weighted kNN k=200", "layer": "layer4", "command": "zoo eval npid_resnet50 --knn",
                            "baseline": {"random-init": 3.5}}]}
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "npid_resnet50.json").write_text(json.dumps(results))
    card = render_card("npid_resnet50", cards_dir=tmp_path)
    text = str(card)
    assert ("| sslzoo | image-classification | ImageNet-1k | top-1 | 45.25 | weighted kNN k=200, layer layer4; "
            "random-init: 3.5 | `zoo eval npid_resnet50 --knn` |") in text
    assert "| paper | image-classification | ImageNet-1k | top-1 | 46.8 |" in text
    index = {r.metric_value: r.metric_name for r in card.data.eval_results}
    assert set(index) == {45.25, 46.8, 54.99}
    assert "sslzoo: zoo eval npid_resnet50 --knn" in index[45.25] and "reported by lemniscate README" in index[46.8]
    assert "45.25" in render_index(tmp_path) and "45.25" in zoo.cards.entrypoint_docstring("npid_resnet50", tmp_path)


def test_checkpoint_card_drops_results_measured_on_other_weights(tmp_path):
    model = random_model("rotnet_nin_fmnist")
    fixture_results(tmp_path, "rotnet_nin_fmnist")
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    results = load_results("rotnet_nin_fmnist", tmp_path)
    mine = render_card("rotnet_nin_fmnist", results={**results, "weights_sha256": config["weights"]["sha256"]},
                       checkpoint_config=config)
    other = render_card("rotnet_nin_fmnist", results={**results, "weights_sha256": "0" * 64}, checkpoint_config=config)
    assert [r.metric_value for r in mine.data.eval_results] == [FIXTURE_VALUE]
    assert other.data.eval_results is None and "not on this checkpoint's" in other.text
    assert config["weights"]["sha256"] in mine.text


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ('{"model": "other", "results": []}', "must be an object with \"model\": 'rotnet_nin_fmnist'"),
    ('{"model": "rotnet_nin_fmnist", "results": [{"task": "t", "dataset": "d", "metric": "m", "protocol": "p", '
     '"command": "c", "value": "84%"}]}', "results[0] needs a finite number \"value\""),
    ('{"model": "rotnet_nin_fmnist", "results": [{"task": "t", "dataset": "d", "metric": "m", "value": 1}]}',
     "results[0] needs a non-empty string 'protocol'"),
])
def test_bad_results_files_are_one_line_errors(tmp_path, content, message):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "rotnet_nin_fmnist.json").write_text(content)
    with pytest.raises(ZooError) as err:
        load_results("rotnet_nin_fmnist", tmp_path)
    assert message in str(err.value) and "rotnet_nin_fmnist.json" in str(err.value) and "\n" not in str(err.value)


def test_card_command_regenerates_and_checks(tmp_path, capsys):
    cards = tmp_path / "MODEL_CARDS"
    shutil.copytree(CARDS, cards)
    assert zoo_main(["card", "--check", "--cards-dir", str(cards)]) == 0
    fixture_results(cards, "rotnet_nin_fmnist")  # a new result makes its card and the index stale
    (cards / "old_model.md").write_text("<!-- Generated by `zoo card old_model` ... -->\n")
    assert zoo_main(["card", "--check", "--cards-dir", str(cards)]) == 2
    err = capsys.readouterr().err
    assert "out of date: rotnet_nin_fmnist.md" in err and "out of date: README.md" in err and "old_model.md" in err
    assert zoo_main(["card", "rotnet_nin_fmnist", "--cards-dir", str(cards)]) == 0
    assert f"{FIXTURE_VALUE:g}" in (cards / "rotnet_nin_fmnist.md").read_text()
    assert stale_files(cards) == ["old_model.md"]
    assert [p.name for p in write_cards(cards_dir=cards)] == ["old_model.md"]  # removed: not in the registry
    assert zoo_main(["card", "--check", "--cards-dir", str(cards)]) == 0
    assert zoo_main(["card", "--cards-dir", str(cards)]) == 2 and "give a model NAME or --all" in capsys.readouterr().err
