import json
import math

import pytest
import torch

from conftest import run_zoo
from training.data import disjoint_subsets, limit_dataset
from training.evaluation import (hungarian_accuracy, knn_accuracy, knn_scores, linear_probe,
                                 logistic_regression, nmi, pooled_linear_probe, probe_pool, record_results, select_layer, summarise_seeds)


def test_weighted_knn_votes_exp_sim_over_t_by_hand():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[2.0, 0.0]])  # normalised to (1, 0): similarities 1, 0, 0.8
    scores = knn_scores(train, labels, query, num_classes=2, k=2, temperature=0.5)
    assert torch.allclose(scores, torch.tensor([[math.exp(1 / 0.5), math.exp(0.8 / 0.5)]]))
    scores = knn_scores(train, labels, query, num_classes=2, k=3, temperature=0.5)
    assert torch.allclose(scores, torch.tensor([[math.exp(2.0), math.exp(1.6) + math.exp(0.0)]]))
    # A plain majority of the 3 neighbours says class 1; the exp(sim/T) weighting says class 0.
    assert knn_scores(train, labels, query, 2, k=3, temperature=0.1).argmax().item() == 0
    assert knn_accuracy(train, labels, query, torch.tensor([0]), 2, k=3, temperature=0.1) == 1.0


def test_linear_probe_separates_what_is_linear_and_only_that():
    x = torch.tensor([[-2.0], [-1.0], [-1.5], [1.0], [2.0], [1.5]]).repeat(8, 1)
    y = torch.tensor([0, 0, 0, 1, 1, 1]).repeat(8)
    res = linear_probe(x, y, torch.tensor([[-3.0], [3.0]]), torch.tensor([0, 1]), num_classes=2, epochs=30,
                       milestones=(), lr=0.1, batch_size=8)
    assert res.top1 == 1.0 and res.train_top1 == 1.0
    # XOR: no linear classifier gets more than 3 of the 4 points right.
    xor = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]]).repeat(16, 1)
    xor_y = torch.tensor([0, 0, 1, 1]).repeat(16)
    res = linear_probe(xor, xor_y, xor[:4], xor_y[:4], num_classes=2, epochs=30, milestones=(), lr=0.1, batch_size=8)
    assert res.train_top1 <= 0.75


def test_probe_pooling_keeps_about_9k_dims():
    from zoo import create_model

    alexnet = create_model("deepcluster_alexnet")
    assert isinstance(probe_pool(alexnet, "conv1", (96, 55, 55)), torch.nn.MaxPool2d)
    dims = {name: probe_pool(alexnet, name, s)(torch.zeros(1, *s)).numel()
            for name, s in {"conv1": (96, 55, 55), "conv2": (256, 27, 27), "conv5": (256, 13, 13)}.items()}
    assert dims == {"conv1": 9600, "conv2": 9216, "conv5": 9216}
    resnet = create_model("npid_resnet50")
    sizes = [probe_pool(resnet, "x", (c, h, h))(torch.zeros(1, c, h, h)).numel()
             for c, h in ((64, 112), (256, 56), (512, 28), (1024, 14), (2048, 7))]
    assert sizes == [9216, 9216, 8192, 9216, 8192]


def test_hungarian_accuracy_and_nmi_on_permuted_and_hand_cases():
    labels = [0, 0, 1, 1, 2, 2, 2]
    permuted = [2, 2, 0, 0, 1, 1, 1]
    assert hungarian_accuracy(permuted, labels) == 1.0
    assert nmi(permuted, labels) == pytest.approx(1.0)
    # pred {0,0,0,1,1,1} vs labels {0,0,1,1,1,1}: best map 0->0, 1->1 gets 2 + 3 of 6 right.
    pred, truth = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]
    assert hungarian_accuracy(pred, truth) == pytest.approx(5 / 6)
    mi = (1 / 3) * math.log(2) + (1 / 6) * math.log(0.5) + 0.5 * math.log(1.5)
    h_pred, h_truth = math.log(2), -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    assert nmi(pred, truth) == pytest.approx(mi / ((h_pred + h_truth) / 2))
    assert nmi([0, 1, 0, 1], [0, 0, 1, 1]) == pytest.approx(0.0, abs=1e-12)


def test_record_merges_results_and_refuses_random_init(tmp_path):
    entry = {"task": "image-classification", "dataset": "Fashion-MNIST", "split": "test", "metric": "top-1",
             "value": 80.0, "std": 0.5, "protocol": "p", "protocol_id": "knn", "layer": "block2", "command": "c",
             "baseline": {"random-init": 70.0}}
    report = {"model": "rotnet_nin_fmnist", "source": "ckpt", "results": [entry], "weights_sha256": "a" * 64,
              "seeds": {"0": {"weights_sha256": "a" * 64}, "1": {"weights_sha256": "b" * 64}}, "shipped_seed": 0,
              "training": {"recipe": "small", "command": "zoo train rotnet", "epochs": 4, "seconds": 1.0,
                           "data": "d", "metrics": {"rotation_acc": 0.9}, "hyperparameters": {"x": 1}}}
    path = record_results(report, tmp_path)
    record_results({**report, "results": [{**entry, "value": 81.0}, {**entry, "protocol_id": "linear"}]}, tmp_path)
    doc = json.loads(path.read_text())
    assert doc["model"] == "rotnet_nin_fmnist" and doc["training"]["metrics"] == {"rotation_acc": 0.9}
    assert "hyperparameters" not in doc["training"] and doc["shipped_seed"] == 0 and set(doc["seeds"]) == {"0", "1"}
    assert sorted((r["protocol_id"], r["value"]) for r in doc["results"]) == [("knn", 81.0), ("linear", 80.0)]
    # other seeds: the file starts afresh, never mixing numbers of different checkpoints
    record_results({**report, "seeds": {"0": {}, "2": {}}, "results": [{**entry, "value": 79.0}]}, tmp_path)
    assert [(r["protocol_id"], r["value"]) for r in json.loads(path.read_text())["results"]] == [("knn", 79.0)]
    res = run_zoo("eval", "random:rotnet_nin_fmnist", "--protocol", "cluster", "--record", "--cards-dir", str(tmp_path))
    assert res.returncode == 2 and "nothing to record" in res.stderr and res.stderr.count("\n") == 1


def test_record_defaults_to_the_users_cards_folder(tmp_path, monkeypatch):
    from training.evaluation import user_cards_dir

    monkeypatch.setenv("ZOO_CARDS", str(tmp_path / "mine"))
    report = {"model": "rotnet_nin_fmnist", "source": "ckpt", "results": [], "weights_sha256": "c" * 64}
    assert record_results(report) == tmp_path / "mine" / "results" / "rotnet_nin_fmnist.json"
    monkeypatch.delenv("ZOO_CARDS")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert user_cards_dir() == tmp_path / "cache" / "sslzoo" / "cards"


def test_validation_and_probe_subsets_are_disjoint_and_the_first_is_the_limited_one():
    data = list(range(1000))
    train, val = disjoint_subsets(data, (300, 200), seed=4)
    assert len(train) == 300 and len(val) == 200 and not set(train.indices) & set(val.indices)
    assert train.indices == limit_dataset(data, 300, seed=4).indices
    with pytest.raises(Exception, match="cannot take disjoint subsets"):
        disjoint_subsets(data, (900, 200))


def test_layers_are_chosen_on_validation_never_on_test():
    per_seed = [
        {"a": {"val": 70.0, "test": 90.0}, "b": {"val": 80.0, "test": 60.0}},   # test would pick a; val picks b
        {"a": {"val": 81.0, "test": 91.0}, "b": {"val": 80.0, "test": 62.0}},
        {"a": {"val": 60.0, "test": 95.0}, "b": {"val": 75.0, "test": 64.0}},
    ]
    assert select_layer(per_seed[0]) == "b"
    summary = summarise_seeds(per_seed)
    assert summary["layer_per_seed"] == ["b", "a", "b"] and summary["layer"] == "b"
    assert summary["per_seed"] == [60.0, 91.0, 64.0]
    assert summary["value"] == pytest.approx(215 / 3)
    assert summary["std"] == pytest.approx(math.sqrt(((60 - 215 / 3) ** 2 + (91 - 215 / 3) ** 2 + (64 - 215 / 3) ** 2) / 2))
    assert summary["per_layer"] == {"a": pytest.approx(92.0), "b": pytest.approx(62.0)}
    assert summary["per_layer_std"] == {"a": pytest.approx(math.sqrt((4 + 1 + 9) / 2)), "b": pytest.approx(2.0)}
    assert summarise_seeds(per_seed[:1])["std"] is None and summarise_seeds(per_seed[:1])["per_layer_std"] is None


def test_beating_random_init_needs_more_than_two_standard_deviations():
    from zoo.results import beats_random_init as beats_baseline

    assert beats_baseline(73.0, 0.3, 70.0, 0.5) is True       # 3.0 > 2 * 0.5
    assert beats_baseline(71.0, 0.3, 70.0, 0.5) is False      # 1.0 < 1.0 is not more
    assert beats_baseline(75.0, 2.6, 70.0, 0.1) is False      # the larger std counts
    assert beats_baseline(75.0, None, 70.0, 0.1) is None      # one seed: no spread to judge by


def test_pooled_probe_picks_its_l2_weight_on_validation():
    # 40 training images, one informative feature among 60: the L2 weight changes what generalises
    g = torch.Generator().manual_seed(0)

    def sample(n):
        y = torch.arange(2).repeat(n // 2)
        x = torch.randn(n, 60, generator=g)
        x[:, 0] += 1.5 * (2 * y - 1)
        return x, y

    (x, y), (vx, vy), (tx, ty) = sample(40), sample(400), sample(400)
    grid = (10.0, 1.0, 1e-1, 1e-2, 1e-4)
    res = pooled_linear_probe(x, y, vx, vy, tx, ty, num_classes=2, weight_decays=grid)
    scaled = lambda t: (t - x.mean(0)) / x.std(0)  # noqa: E731
    val_by_wd = {}
    for wd in grid:
        linear = logistic_regression(scaled(x), y, 2, wd)
        val_by_wd[wd] = int((linear(scaled(vx)).argmax(1) == vy).sum()) / len(vy)
    assert len(set(val_by_wd.values())) > 2  # the choice matters here
    assert res.val_top1 == max(val_by_wd.values()) == val_by_wd[res.weight_decay]
    # the test labels never influence the choice: with them scrambled the same weight is chosen
    flipped = pooled_linear_probe(x, y, vx, vy, tx, 1 - ty, num_classes=2, weight_decays=grid)
    assert flipped.weight_decay == res.weight_decay and flipped.test_top1 == pytest.approx(1 - res.test_top1)


@pytest.mark.slow
def test_eval_of_two_seeds_reports_mean_std_and_validation_choices(tmp_path):
    import zoo
    from training.evaluation import random_init

    folders = []
    for seed in (0, 1):
        model = random_init("rotnet_nin_fmnist", {}, seed=10 + seed)
        folders.append(zoo.save_pretrained(model, tmp_path / f"seed{seed}", training={"seed": seed, "seconds": 1.0}))
    out = tmp_path / "report.json"
    res = run_zoo("eval", str(folders[0]), str(folders[1]), "--protocol", "knn", "--train-limit", "300",
                  "--val-size", "200", "--test-limit", "200", "--layers", "block1,block2", "--baseline-seeds", "2",
                  "--json-out", str(out),
                  "--record", "--cards-dir", str(tmp_path / "cards"), env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    entry = report["results"][0]
    assert entry["seeds"] == [0, 1] and len(entry["per_seed"]) == 2 and entry["split"] == "test"
    assert entry["value"] == pytest.approx(sum(entry["per_seed"]) / 2, abs=0.01)
    assert entry["std"] == pytest.approx(abs(entry["per_seed"][0] - entry["per_seed"][1]) / math.sqrt(2), abs=0.01)
    assert entry["layer_selected_on"].startswith("validation: Fashion-MNIST train, another random 200")
    assert len(entry["baseline_per_seed"]["random-init"]) == 2 and entry["beats_baseline"] in (True, False)
    assert (tmp_path / "cards" / "results" / "rotnet_nin_fmnist.json").is_file()
    assert len(list((tmp_path / "cache" / "sslzoo" / "eval-scores").glob("*.json"))) == 4  # 2 models + 2 baselines
    # the same evaluation again reads every score from the cache and gives the same numbers
    again = run_zoo("eval", str(folders[0]), str(folders[1]), "--protocol", "knn", "--train-limit", "300",
                    "--val-size", "200", "--test-limit", "200", "--layers", "block1,block2", "--baseline-seeds", "2",
                    "--json-out", str(out),
                    env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    second = json.loads(out.read_text())["results"][0]
    assert again.returncode == 0 and second["per_seed"] == entry["per_seed"] and second["baseline"] == entry["baseline"]
