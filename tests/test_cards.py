"""Model cards: generated from the registry and the results files, committed, never stale; Hub-form
model-index; multi-seed results; where the weights come from; cards of a user's own checkpoint."""

import json
import shutil

import pytest
import yaml
from conftest import ROOT
from huggingface_hub import ModelCard, ModelCardData
from hubtools import FIXTURE_VALUE, edit_config, fixture_results, random_model

import zoo
from zoo import ZooError
from zoo.cards import (
    BEATS_RULE, HF_DATASETS, MAX_METRIC_NAME, entrypoint_docstring, load_results, render_card, render_index,
    stale_files, weights_availability, write_cards,
)
from zoo.cli import main as zoo_main
from zoo.results import _problem, beats_random_init, normalise

CARDS = ROOT / "MODEL_CARDS"
SECTIONS = ["## Weights", "## Pretext task", "## Pretraining", "## Preprocessing", "## Feature layers",
            "## Loading", "## Exporting", "## Results", "## Limitations"]
HUB_TASKS = {"image-classification", "image-feature-extraction", "object-detection"}
HUB_METRICS = {"accuracy", "recall", "map", "nmi"}


def test_committed_cards_match_the_registry_and_results():
    stale = stale_files(CARDS)
    assert stale == [], f"out of date: {stale}; regenerate them with `make cards` (zoo card --all)"
    assert sorted(p.stem for p in CARDS.glob("*.md") if p.name != "README.md") == zoo.list_models()


def test_every_card_parses_as_a_hub_card_with_its_numbers_in_the_hub_form():
    for name in zoo.list_models():
        entry = zoo.get_model_entry(name)
        text = (CARDS / f"{name}.md").read_text()
        card = ModelCard(text)
        data = card.data
        assert data.library_name == "sslzoo" and data.pipeline_tag == "image-feature-extraction"
        assert data.license == entry.license and entry.method in data.tags
        assert all(section in card.text for section in SECTIONS), name
        metadata = yaml.safe_load(text.split("---\n")[1])
        assert ModelCardData(**metadata).eval_results == data.eval_results  # the metadata alone parses the same

        results = data.eval_results or []
        for r in results:
            assert r.task_type in HUB_TASKS and r.metric_type in HUB_METRICS, (name, r)
            assert r.metric_name and len(r.metric_name) <= MAX_METRIC_NAME, (name, r.metric_name)
            assert r.dataset_split and r.dataset_split not in r.dataset_name.split(), (name, r)
            if r.dataset_name in HF_DATASETS:
                assert r.dataset_type == HF_DATASETS[r.dataset_name]
        paper = [r for r in results if r.source_url]
        # every paper number carries its source, exactly as the registry has it
        assert sorted((r.metric_value, r.source_name, r.source_url) for r in paper) == \
            sorted((p.value, p.source, p.url) for p in entry.paper_results), name
        for p in entry.paper_results:  # and sits in the text beside its protocol and a link to the source
            assert f"| {p.metric} | {p.value:g} | {p.protocol} | [{p.source}]({p.url}) |" in card.text
        # sslzoo's own numbers carry no source; the model-index holds their mean
        ours = [normalise(r).value for r in (load_results(name) or {}).get("results", [])]
        assert sorted(r.metric_value for r in results if not r.source_url) == sorted(ours)
        if not (CARDS / "results" / f"{name}.json").exists():
            assert "No sslzoo results yet" in card.text
    index = (CARDS / "README.md").read_text()
    assert all(f"[{name}]({name}.md)" in index for name in zoo.list_models())


def test_paper_numbers_are_the_corrected_ones_with_what_they_measured():
    numbers = {n: [(p.value, p.protocol) for p in zoo.get_model_entry(n).paper_results] for n in zoo.list_models()}
    # 58.5 is lemniscate_resnet50_update.pth's linear probe, not the converted file's
    assert [v for v, _ in numbers["npid_resnet50"]] == [46.8, 54.99]
    # 79.3 is the abstract's headline, not joint_3B_0.5.pth
    assert [v for v, _ in numbers["multigrain_resnet50"]] == [77.4, 78.6] and "p*=4" in numbers["multigrain_resnet50"][1][1]
    (value, protocol), = numbers["sela_alexnet"]
    assert value == 43.8 and "not a number for this 10x3k-with-rotation file" in protocol
    assert "not this released one" in numbers["rotnet_alexnet"][0][1]
    rotnet = str(render_card("rotnet_alexnet"))
    assert "paper's recipe" not in rotnet and "not the one used in the paper" in rotnet
    for name in ("cpc_resnet50", "iic_net5g", "proxynca_resnet50", "deepercluster_vgg16"):
        assert numbers[name], name


def test_multi_seed_results_render_mean_std_per_seed_and_the_beats_rule(tmp_path):
    results = multi_seed_results()
    card = render_card("simclr_resnet_small_fmnist", results=results)
    text = str(card)
    assert ("| image-classification | Fashion-MNIST (test, 10,000 images) | top-1 | 73.41 ± 0.35 (3 seeds) | "
            "66.1 ± 0.5 | yes |") in text
    assert "| 87.5 ± 0.4 (3 seeds) | 86.9 ± 0.6 | no |" in text  # 0.6 above random init, within 2 std
    assert text.count(BEATS_RULE) == 1
    assert "seeds 0, 1, 2: 73.77, 73.2, 73.26 at layers layer4, layer4, layer3, each chosen on validation: 5,000" in text
    assert "random init per seed: 66.5, 65.6, 66.2" in text and "mean per layer: stem 60.1" in text
    assert "Random init is strong here: on linear probe top-1 87.5 vs 86.9 (pretrained vs random init)" in text
    assert "| 55.2 ± 0.8 (3 seeds) | 37.4 ± 1 | yes |" in text
    assert "photos: 40.1 ± 2 (3 seeds)" in text and "95% interval [53.1, 57.3]" in text
    assert "with 3 training seeds (0, 1, 2); the shipped weights are seed 0's" in text
    assert "seed 1: 205.0 s" in text and "precision: bf16" in text
    index = {(r.metric_type, r.metric_value) for r in card.data.eval_results}
    assert index == {("accuracy", 73.41), ("accuracy", 87.5), ("map", 55.2)}  # the means
    names = [r.metric_name for r in card.data.eval_results]
    assert "kNN top-1 (sslzoo, mean of 3 seeds)" in names
    retrieval = next(r for r in card.data.eval_results if r.metric_type == "map")
    assert retrieval.task_type == "image-feature-extraction" and retrieval.dataset_name == "Fashion-MNIST copy detection"
    assert retrieval.dataset_split == "test" and retrieval.source_url is None


def test_the_beats_rule():
    assert beats_random_init(73.41, 0.35, 66.1, 0.5) is True
    assert beats_random_init(67.0, 0.2, 66.1, 0.5) is False  # 0.9 < 2 x 0.5
    assert beats_random_init(73.41, None, 66.1, None) is None  # a single run is not tested
    assert beats_random_init(73.41, 0.3, None, None) is None


def single_run_results() -> dict:
    """A results file in the single-run form (one training run, layer picked on the test split) that
    results recorded before multi-seed evaluation still have."""
    knn = {"task": "image-classification", "dataset": "Fashion-MNIST test (10,000)", "metric": "top-1",
           "value": 73.77, "layer": "layer4", "protocol_id": "knn",
           "protocol": "weighted kNN on globally average-pooled layer4 features (cosine, k=200)",
           "per_layer": {"stem": 55.74, "layer1": 62.34, "layer2": 65.15, "layer3": 70.76, "layer4": 73.77},
           "command": "zoo eval runs/simclr-small --protocol knn --record",
           "baseline": {"random-init": 66.54}, "baseline_layer": {"random-init": "layer4"}}
    return {"model": "simclr_resnet_small_fmnist", "weights_sha256": "b" * 64, "results": [knn]}


def test_single_run_results_still_render(tmp_path):
    card = str(render_card("simclr_resnet_small_fmnist", results=single_run_results()))
    assert "| 73.77 (1 run) | 66.54 | not tested (1 run) |" in card
    assert "one run at layer layer4, the best on the test split itself" in card and BEATS_RULE not in card


def test_index_and_docstrings_give_the_mean_and_its_spread(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "simclr_resnet_small_fmnist.json").write_text(json.dumps(multi_seed_results()))
    assert "kNN top-1 73.41 ± 0.35 (random init 66.1)" in render_index(tmp_path)
    doc = entrypoint_docstring("simclr_resnet_small_fmnist", tmp_path)
    assert "kNN top-1 73.41 ± 0.35 (random init 66.1)" in doc and "shipped with sslzoo (seed 0)" in doc


def test_weights_part_says_where_the_weights_come_from(tmp_path):
    shipped = str(render_card("simclr_resnet_small_fmnist", results=multi_seed_results()))
    assert f"Shipped with sslzoo (seed 0), sha256 `{'a' * 64}`" in shipped
    download = str(render_card("npid_resnet50"))
    assert "Downloaded from the authors' URL and converted on first use (`zoo fetch npid_resnet50`)" in download
    by_hand = str(render_card("simclr_resnet50"))
    assert "Not fetched automatically: sslzoo has no converter for the original release " \
           "https://storage.cloud.google.com/" in by_hand and "asks for a Google login" in by_hand
    assert "No weights yet: sslzoo's `paper` recipe has not been run" in str(render_card("cpc_resnet50"))
    untrained = render_card("simclr_resnet_small_fmnist", results=None)
    assert "No weights yet: sslzoo's `small` recipe has not been run" in str(untrained)
    assert "Trained by" not in str(untrained)
    kinds = {weights_availability(zoo.get_model_entry(n), None).kind for n in ("npid_resnet50", "simclr_resnet50",
                                                                               "cpc_resnet50")}
    assert kinds == {"download", "by hand", "none"}


def test_user_checkpoint_card_names_its_own_repo_and_no_recipe(tmp_path):
    model = random_model("rotnet_nin_fmnist")
    ckpt = tmp_path / "mine"
    model.save_pretrained(ckpt)  # no `training` in config.json: these weights went through no recipe
    assert zoo_main(["card", "--checkpoint", str(ckpt), "--repo", "alice/my-rotnet"]) == 0
    text = (ckpt / "README.md").read_text()
    assert "Its Hub repo is `alice/my-rotnet`" in text and 'zoo.from_pretrained("alice/my-rotnet")' in text
    assert "sslzoo/rotnet-nin-fmnist" not in text and "torch.hub.load" not in text
    assert "These are not the registry's weights of `rotnet_nin_fmnist`" in text
    assert "records neither a training run nor a conversion" in text
    assert "| Pretraining data | not recorded in config.json |" in text and "by sslzoo's small recipe" not in text
    assert "Trained by" not in text and "recipe" not in text.split("## Pretraining")[1].split("## Preprocessing")[0]
    assert "Regenerate with `zoo card rotnet_nin_fmnist --checkpoint mine --repo alice/my-rotnet`" in text

    assert zoo_main(["card", "--checkpoint", str(ckpt)]) == 0  # no repo: says how to name one
    text = (ckpt / "README.md").read_text()
    assert "No Hub repo is named for it yet" in text and 'zoo.from_pretrained("mine")   # the checkpoint folder' in text

    edit_config(ckpt, training={"recipe": "small", "command": "zoo train rotnet --recipe small", "epochs": 3})
    assert zoo_main(["card", "rotnet_nin_fmnist", "--checkpoint", str(ckpt), "--repo", "alice/my-rotnet"]) == 0
    assert "These weights were trained by sslzoo's `small` recipe" in (ckpt / "README.md").read_text()
    assert zoo_main(["card", "simclr_resnet_small_fmnist", "--checkpoint", str(ckpt)]) != 0  # not that model's
    assert zoo_main(["card", "rotnet_nin_fmnist", "--repo", "alice/x"]) == 2


def test_checkpoint_of_the_registry_weights_defaults_to_the_registry_repo(tmp_path):
    model = random_model("rotnet_nin_fmnist")
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    results = {**load_results("rotnet_nin_fmnist"), "weights_sha256": config["weights"]["sha256"]}
    text = str(render_card("rotnet_nin_fmnist", results=results, checkpoint_config=config, checkpoint_dir="ckpt"))
    assert "Its Hub repo is `sslzoo/rotnet-nin-fmnist`" in text and "These are the registry's weights" in text
    assert 'torch.hub.load("sslzoo/sslzoo", "rotnet_nin_fmnist"' in text


def test_checkpoint_card_drops_results_measured_on_other_weights(tmp_path):
    model = random_model("rotnet_nin_fmnist")
    fixture_results(tmp_path, "rotnet_nin_fmnist")
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    results = load_results("rotnet_nin_fmnist", tmp_path)
    mine = render_card("rotnet_nin_fmnist", results={**results, "weights_sha256": config["weights"]["sha256"]},
                       checkpoint_config=config)
    other = render_card("rotnet_nin_fmnist", results={**results, "weights_sha256": "0" * 64}, checkpoint_config=config)
    seed_1 = render_card("rotnet_nin_fmnist", checkpoint_config=config, results={
        **results, "weights_sha256": "0" * 64, "shipped_seed": 0,
        "seeds": {"0": {"weights_sha256": "0" * 64}, "1": {"weights_sha256": config["weights"]["sha256"]}}})
    assert [r.metric_value for r in mine.data.eval_results] == [FIXTURE_VALUE]
    assert other.data.eval_results is None and "not on this checkpoint's" in other.text
    assert [r.metric_value for r in seed_1.data.eval_results] == [FIXTURE_VALUE]  # one of the seeds averaged
    assert config["weights"]["sha256"] in mine.text


def test_preprocessing_quirks_are_spelled_out():
    simclr = str(render_card("simclr_resnet50"))
    assert "No mean/std normalisation" in simclr and "Subtract the mean" not in simclr
    assert "Sobel gradients itself" in str(render_card("deepcluster_alexnet"))
    fmnist = str(render_card("rotnet_nin_fmnist"))
    assert "Convert to grey" in fmnist and "centre-crop 32x32" in fmnist and "(0.286)" in fmnist


def test_our_results_sit_beside_the_papers_each_with_its_own_source(tmp_path):
    results = {"model": "npid_resnet50", "weights_sha256": "b" * 64,
               "results": [{"task": "image-classification", "dataset": "ImageNet-1k", "split": "validation",
                            "metric": "top-1", "value": 45.25, "protocol": "weighted kNN k=200", "layer": "layer4",
                            "protocol_id": "knn", "command": "zoo eval npid_resnet50 --knn",
                            "baseline": {"random-init": 3.5}}]}
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "npid_resnet50.json").write_text(json.dumps(results))
    card = render_card("npid_resnet50", cards_dir=tmp_path)
    text = str(card)
    assert ("| image-classification | ImageNet-1k (validation) | top-1 | 45.25 (1 run) | 3.5 | not tested (1 run) | "
            "weighted kNN k=200, layer layer4 | `zoo eval npid_resnet50 --knn` |") in text
    assert "| image-classification | ImageNet-1k (validation) | top-1 | 46.8 |" in text
    sources = {r.metric_value: (r.source_name, r.metric_name) for r in card.data.eval_results}
    assert set(sources) == {45.25, 46.8, 54.99}
    assert sources[45.25] == (None, "kNN top-1 (sslzoo, 1 run)")  # same dataset and split, no borrowed source
    assert sources[46.8][0] == "lemniscate README" and sources[54.99][0] == "VISSL MODEL_ZOO.md"
    assert "45.25" in render_index(tmp_path) and "45.25" in entrypoint_docstring("npid_resnet50", tmp_path)


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ('{"model": "other", "results": []}', "must be an object with \"model\": 'rotnet_nin_fmnist'"),
    ('{"model": "rotnet_nin_fmnist", "results": [{"task": "t", "dataset": "d", "metric": "m", "protocol": "p", '
     '"command": "c", "value": "84%"}]}', "results[0] needs a finite number \"value\""),
    ('{"model": "rotnet_nin_fmnist", "results": [{"task": "t", "dataset": "d", "metric": "m", "value": 1}]}',
     "results[0] needs a non-empty string 'protocol'"),
    ('{"model": "rotnet_nin_fmnist", "results": [{"task": "t", "dataset": "d", "metric": "m", "protocol": "p", '
     '"command": "c", "value": 1, "std": 0.1, "seeds": [0, 1], "per_seed": [1]}]}',
     "\"seeds\" and \"per_seed\" must be lists of the same length"),
    ('{"model": "rotnet_nin_fmnist", "shipped_seed": 3, "seeds": {"0": {}}, "results": []}',
     "\"shipped_seed\" 3 must be one of the seeds"),
    ('{"model": "rotnet_nin_fmnist", "results": [{"task": "t", "dataset": "d", "metric": "m", "protocol": "p", '
     '"command": "c", "value": 60, "std": 0.1, "seeds": [0], "per_seed": [60], "beats_baseline": true, '
     '"baseline": {"random-init": 61}}]}', "says it beats random init, but its value 60 is not above 61"),
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
    out, err = capsys.readouterr()  # the report on stdout, the verdict as one error line
    assert "out of date: rotnet_nin_fmnist.md" in out and "out of date: README.md" in out and "old_model.md" in out
    assert err.startswith("error: 3 generated card file(s) are out of date") and err.count("\n") == 1
    assert zoo_main(["card", "rotnet_nin_fmnist", "--cards-dir", str(cards)]) == 0
    assert f"{FIXTURE_VALUE:g}" in (cards / "rotnet_nin_fmnist.md").read_text()
    assert stale_files(cards) == ["old_model.md"]
    assert [p.name for p in write_cards(cards_dir=cards)] == ["old_model.md"]  # removed: not in the registry
    assert zoo_main(["card", "--check", "--cards-dir", str(cards)]) == 0
    assert zoo_main(["card", "--cards-dir", str(cards)]) == 2 and "give a model NAME or --all" in capsys.readouterr().err


def multi_seed_results() -> dict:
    """A results file in the multi-seed form `zoo eval` writes for several training seeds."""
    knn = {"task": "image-classification", "dataset": "Fashion-MNIST", "split": "test", "split_size": 10000,
           "metric": "top-1", "protocol_id": "knn", "value": 73.41, "std": 0.35, "seeds": [0, 1, 2],
           "per_seed": [73.77, 73.2, 73.26], "layer": "layer4", "layer_per_seed": ["layer4", "layer4", "layer3"],
           "layer_selected_on": "validation: 5,000 Fashion-MNIST train images outside the 10,000 the probe trains on",
           "per_layer": {"stem": 60.1, "layer1": 66.2, "layer2": 70.5, "layer3": 72.9, "layer4": 73.4},
           "protocol": "weighted kNN on globally average-pooled features (cosine, k=200, votes exp(sim/0.07)); "
                       "layer chosen on the validation split",
           "command": "zoo eval runs/s0 runs/s1 runs/s2 --protocol knn --record",
           "baseline": {"random-init": 66.1}, "baseline_std": {"random-init": 0.5},
           "baseline_per_seed": {"random-init": [66.5, 65.6, 66.2]}, "baseline_layer": {"random-init": "layer3"},
           "beats_baseline": True}
    linear = {**knn, "protocol_id": "linear", "value": 87.5, "std": 0.4, "per_seed": [87.1, 87.5, 87.9],
              "protocol": "per-layer BN + linear probe on ~9,000-dim pooled features",
              "baseline": {"random-init": 86.9}, "baseline_std": {"random-init": 0.6}}
    del linear["beats_baseline"]  # computed by the rule when the file does not say
    retrieval = {**linear, "task": "image-retrieval", "protocol_id": "retrieval", "metric": "mAP", "value": 55.2,
                 "std": 0.8, "ci95": [53.1, 57.3], "parts": {"photos": {"value": 40.1, "std": 2.0}},
                 "dataset": "Fashion-MNIST copy detection", "split_size": 1000, "per_seed": [54.4, 55.2, 56.0],
                 "protocol": "copy detection by cosine similarity of pooled features, leave-one-out",
                 "baseline": {"random-init": 37.4}, "baseline_std": {"random-init": 1.0},
                 "baseline_per_seed": {"random-init": [36.4, 37.4, 38.4]}}
    return {"model": "simclr_resnet_small_fmnist", "weights_sha256": "a" * 64, "shipped_seed": 0,
            "seeds": {"0": {"weights_sha256": "a" * 64, "training_seconds": 210.4},
                      "1": {"weights_sha256": "c" * 64, "training_seconds": 205.0},
                      "2": {"weights_sha256": "d" * 64, "training_seconds": 212.9}},
            "training": {"recipe": "small", "command": "zoo train simclr --recipe small --seed 0", "epochs": 8,
                         "seconds": 210.4, "data": "Fashion-MNIST train, random 10,000 of 60,000", "steps": 312,
                         "method": "simclr", "seed": 0, "batch_size": 256, "threads": 1, "precision": "bf16",
                         "cpu": "AMD EPYC"},
            "results": [knn, linear, retrieval]}


def test_one_training_seed_records_without_a_spread_and_says_its_layer_came_from_validation():
    one_seed = multi_seed_results()
    for r in one_seed["results"]:
        r.update(seeds=[0], per_seed=r["per_seed"][:1], layer_per_seed=r["layer_per_seed"][:1])
        r.pop("std"), r.pop("baseline_std"), r.pop("beats_baseline", None)
        r["baseline_per_seed"] = {"random-init": r["baseline_per_seed"]["random-init"][:1]}
    assert _problem(one_seed) == ""  # one seed needs no "std"
    card = str(render_card("simclr_resnet_small_fmnist", results=one_seed))
    assert "| 73.41 (1 run) | 66.1 | not tested (1 run) |" in card
    assert "one run at layer layer4, chosen on validation" in card and "the best on the test split itself" not in card
    two_seeds = multi_seed_results()
    two_seeds["results"][0].pop("std")
    assert "several seeds but no \"std\"" in _problem(two_seeds)


def test_a_card_shows_the_pictures_zoo_report_drew_for_it_and_only_those(tmp_path):
    name = "rotnet_nin_fmnist"
    assert "## Pictures" not in str(render_card(name, results=None, cards_dir=tmp_path))
    folder = tmp_path / "pictures" / name
    folder.mkdir(parents=True)
    (folder / "conv1_filters.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    card = str(render_card(name, results=None, cards_dir=tmp_path))
    assert f"(pictures/{name}/conv1_filters.png)" in card and "retrieval_grid.png" not in card
    assert f"`zoo report {name} -o MODEL_CARDS/pictures/{name}`" in card
    # a checkpoint's own card is published without the repository's pictures folder: no links there
    ckpt = tmp_path / "mine"
    random_model(name).save_pretrained(ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    assert "## Pictures" not in str(render_card(name, results=None, cards_dir=tmp_path, checkpoint_config=config,
                                                checkpoint_dir=ckpt))
