"""DeepCluster, SeLa, IIC and DeeperCluster through the real engine and CLI, at tiny scale."""

import json
import os

import numpy as np
import torch
from safetensors.torch import load_file

from conftest import run_zoo
from training.clustering import cluster_size_log2_histogram
from training.engine import load_training_state

# One thread per process: identical arithmetic in every run, and no OpenMP stalls on a busy machine.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
# 128 images, 32 per step -> 4 steps per epoch, 2 epochs, a checkpoint after every step.
TINY = ("--recipe", "tiny", "--limit", "128", "--batch-size", "32", "--epochs", "2", "--checkpoint-every", "1",
        "--no-progress")


def _train(method, out, *extra):
    res = run_zoo("train", method, *TINY, "--out", str(out), *extra, env=ONE_THREAD)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _epochs(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("event") == "epoch"]


def _final_state(run):
    return load_training_state(sorted((run / "checkpoints").glob("step-*.pt"))[-1])["method"]


def test_deepcluster_reclusters_each_epoch_and_resumes_mid_epoch_identically(tmp_path):
    whole = tmp_path / "whole"
    _train("deepcluster", whole)
    first, second = _epochs(whole)
    assert 0 <= first["nmi_labels"] <= 1 and "nmi_previous" not in first
    assert 0 <= second["nmi_previous"] <= 1 and "kmeans_loss" in second
    # the spread of the 128 images over the 8 clusters, in doubling bins of size (for `zoo report`)
    assert all(sum(e["cluster_size_log2_hist"]) == 8 for e in (first, second))
    state = _final_state(whole)
    assignments = state["assignments"].numpy()
    assert len(assignments) == 128 and set(np.unique(assignments)) == set(range(8))  # all 8 clusters used
    assert state["previous"].shape == (128,) and (state["previous"] >= 0).all()

    # Lose the last two steps of epoch 2 as a crash would, and resume: the assignments (a buffer
    # sized by the data) come back from the checkpoint, and the weights equal the whole run's.
    cut = tmp_path / "cut"
    _train("deepcluster", cut)
    for name in ("step-00000008.pt", "step-00000007.pt"):
        (cut / "checkpoints" / name).unlink()
    res = run_zoo("train", "deepcluster", *TINY, "--out", str(cut), "--resume", env=ONE_THREAD)
    assert res.returncode == 0 and "(epoch 1, step 6)" in res.stdout, res.stderr[-3000:]
    a, b = load_file(str(whole / "model" / "model.safetensors")), load_file(str(cut / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sela_labels_stay_equipartitioned_and_all_heads_train(tmp_path):
    run = tmp_path / "sela"
    _train("sela", run)
    labels = _final_state(run)["labels"]
    assert labels.shape == (2, 128)  # tiny: 2 heads of 8 clusters
    for head in labels.numpy():
        counts = np.bincount(head, minlength=8)
        assert counts.min() >= 8 and counts.max() <= 32  # within 2x of 128 / 8 = 16 each: never collapsed
    assert all("labels_changed" in e for e in _epochs(run))
    # the last record's cluster sizes are those of head 0's final labels (nothing changes them after it)
    assert _epochs(run)[-1]["cluster_size_log2_hist"] == cluster_size_log2_histogram(labels[0].numpy(), 8)
    config = json.loads((run / "model" / "config.json").read_text())
    assert 0 <= config["training"]["metrics"]["nmi_labels"] <= 1


def test_iic_alternates_heads_and_scores_its_main_head(tmp_path):
    run = tmp_path / "iic"
    _train("iic", run)
    first, second = _epochs(run)  # tiny cycle: over-clustering head, then main head
    assert "mean_overcluster_loss" in first and "mean_main_loss" not in first
    assert "mean_main_loss" in second and "mean_overcluster_loss" not in second
    assert second["mean_main_loss"] < 0  # minus a mutual information
    metrics = json.loads((run / "model" / "config.json").read_text())["training"]["metrics"]
    assert 0 <= metrics["head_nmi"] <= 1 and 0.1 <= metrics["head_acc"] <= 1  # Hungarian: at least chance


def test_deepercluster_builds_rotation_by_cluster_targets(tmp_path):
    run = tmp_path / "deeper"
    _train("deepercluster", run)
    state = _final_state(run)
    top, low = state["super_cluster"].numpy(), state["sub_cluster"].numpy()
    assert set(np.unique(top)) == {0, 1} and low.min() >= 0 and low.max() < 4  # 2 super x 4 sub
    assert state["super_head.weight"].shape[0] == 8  # 2 super-clusters x 4 rotations
    assert state["sub_heads.weight"].shape[0] == 8 * 4  # a 4-way classifier per super-class
    assert [0 <= e["nmi_labels"] <= 1 for e in _epochs(run)] == [True, True]  # tiny re-clusters every epoch
    assert [sum(e["cluster_size_log2_hist"]) for e in _epochs(run)] == [8, 8]  # 2 super x 4 sub-clusters


def test_published_folder_is_the_backbone_alone(tmp_path):
    import zoo

    run = tmp_path / "dc"
    _train("deepcluster", run, "--epochs", "1")
    model = zoo.from_pretrained(run / "model")
    assert model.entry.name == "deepcluster_resnet_small_fmnist"
    assert not any(k.startswith("top_layer") for k in model.state_dict())
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 128, 4, 4)


def test_sela_augment_grey_images_stay_grey_and_vary():
    from training.methods.sela import sela_augment
    from zoo.registry import create_model

    spec = create_model("sela_resnet_small_fmnist").entry.input  # one grey channel, 32x32
    augment = sela_augment(spec, crop_scale=(0.2, 1.0))
    torch.manual_seed(0)
    garment = torch.zeros(1, 28, 28, dtype=torch.uint8)
    garment[:, 4:24, 8:20] = 200
    views = torch.stack([augment(garment) for _ in range(8)])
    assert views.shape == (8, 1, 32, 32)
    assert (views - views[0]).abs().amax() > 0.1  # crops, flips and jitter differ between views
    colour = augment(torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8))  # the full "augs 3" path
    assert colour.shape == (1, 32, 32) and torch.isfinite(colour).all()


def test_training_set_features_see_the_crops_the_epoch_trains_on(tmp_path):
    """Single-image data draws a new crop for item i each epoch: the features that clustering
    methods label in epoch e must come from epoch e's crops, or the pseudo-labels are noise."""
    from training.data import SampleView, SingleImageCrops
    from training.engine import Dist, FitContext
    from training.methods import get_recipe

    photo = torch.randint(0, 256, (3, 48, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    data = SingleImageCrops(photo, length=4, size=16)
    ctx = FitContext(get_recipe("deepcluster", "tiny"), tmp_path, Dist(), data, epoch=2)
    crops, _ = ctx.map(lambda batch: batch["x"].flatten(1).float(), data, None, epoch=ctx.epoch)
    view = SampleView(data, None, ctx.recipe.seed)
    view.epoch = 2
    assert torch.equal(crops, torch.stack([view[i][0].flatten().float() for i in range(4)]))
    first, _ = ctx.map(lambda batch: batch["x"].flatten(1).float(), data, None)  # epoch 0's crops differ
    assert not torch.equal(crops, first)
