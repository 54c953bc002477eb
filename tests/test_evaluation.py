import json
import math

import pytest
import torch

from conftest import run_zoo
from training.evaluation import (hungarian_accuracy, knn_accuracy, knn_scores, linear_probe, nmi, probe_pool,
                                 record_results)


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
    entry = {"task": "image-classification", "dataset": "Fashion-MNIST test (10,000)", "metric": "top-1",
             "value": 80.0, "protocol": "p", "protocol_id": "knn", "layer": "block2", "command": "c",
             "baseline": {"random-init": 70.0}}
    report = {"model": "rotnet_nin_fmnist", "source": "ckpt", "results": [entry],
              "training": {"recipe": "small", "command": "zoo train rotnet", "epochs": 4, "seconds": 1.0,
                           "data": "d", "metrics": {"rotation_acc": 0.9}, "hyperparameters": {"x": 1}}}
    path = record_results(report, tmp_path)
    record_results({**report, "results": [{**entry, "value": 81.0}, {**entry, "protocol_id": "linear"}]}, tmp_path)
    doc = json.loads(path.read_text())
    assert doc["model"] == "rotnet_nin_fmnist" and doc["training"]["metrics"] == {"rotation_acc": 0.9}
    assert "hyperparameters" not in doc["training"]
    assert sorted((r["protocol_id"], r["value"]) for r in doc["results"]) == [("knn", 81.0), ("linear", 80.0)]
    res = run_zoo("eval", "random:rotnet_nin_fmnist", "--protocol", "cluster", "--record", "--cards", str(tmp_path))
    assert res.returncode == 2 and "nothing to record" in res.stderr and res.stderr.count("\n") == 1
