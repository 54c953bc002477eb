"""The methods through the real engine, a few steps each on Fashion-MNIST: every method publishes
only its backbone, and what the embedding methods keep besides it (memory bank, EMA target)
behaves as the paper says."""

import json
import math

import pytest
import torch

import zoo
from training.engine import fit, load_training_state
from training.methods import get_recipe, method_module, method_names


def _tiny(method, **changes):
    settings = {"limit": 64, "batch_size": 16, "epochs": 1, "checkpoint_every": 0, **changes}
    recipe = get_recipe(method, "tiny").replace(**settings)
    return method_module(method).METHOD, recipe


@pytest.mark.parametrize("method", method_names())
def test_tiny_run_publishes_only_the_backbone(method, tmp_path):
    cls, recipe = _tiny(method)
    batch = min(16, get_recipe(method, "tiny").batch_size)  # multigrain: 12 images x 3 copies; cpc: 8
    result = fit(cls, recipe.replace(batch_size=batch, limit=4 * batch), tmp_path / method, progress=False)
    assert result.steps == 4
    records = [json.loads(r) for r in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if "loss" in r)
    model = zoo.from_pretrained(result.model_dir)
    assert model.entry.name == recipe.model and model.entry.method == method
    saved = set(model.state_dict())
    assert saved == set(zoo.create_model(recipe.model).state_dict())  # no heads, banks or targets


def test_npid_memory_bank_rows_move_and_stay_unit_norm(tmp_path):
    cls, recipe = _tiny("npid")
    fit(cls, recipe, tmp_path / "npid", progress=False)
    state = load_training_state(tmp_path / "npid" / "checkpoints" / "step-00000004.pt")["method"]
    bank = state["memory.vectors"]
    assert bank.shape == (64, recipe.options.embedding_dim)
    assert torch.allclose(bank.norm(dim=1), torch.ones(64), atol=1e-5)
    assert float(state["memory.normaliser"]) > 0  # NCE's Z was estimated on the first batch
    # a fresh method loads the checkpoint's bank although it starts with an empty one
    method = cls(recipe)
    method.load_state_dict(state)
    assert torch.equal(method.memory.vectors, bank)


def test_byol_target_is_the_moving_average_of_the_online_network(tmp_path):
    cls, recipe = _tiny("byol", limit=32, checkpoint_every=1)  # two steps of 16
    torch.manual_seed(recipe.seed)
    start = cls(recipe).state_dict()  # fit builds the method from the same seed
    key = "backbone.conv1.weight"
    assert torch.equal(start["target_" + key], start[key])
    fit(cls, recipe, tmp_path / "byol", progress=False)
    after_one = load_training_state(tmp_path / "byol" / "checkpoints" / "step-00000001.pt")["method"]
    assert not torch.equal(after_one[key], start[key])  # the online network was trained
    decay = 1 - (1 - recipe.options.base_decay) * (math.cos(math.pi * 1 / 2) + 1) / 2  # step 1 of 2
    expected = decay * start["target_" + key] + (1 - decay) * after_one[key]
    assert torch.allclose(after_one["target_" + key], expected, atol=1e-6)


def test_multigrain_sees_three_augmented_copies_and_picks_p_star(tmp_path):
    cls, recipe = _tiny("multigrain", batch_size=12, limit=48)
    method = cls(recipe)
    copies = method.train_transform()(torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8))
    assert len(copies) == 3 and not torch.equal(copies[0], copies[1])
    result = fit(cls, recipe, tmp_path / "mg", progress=False)
    assert result.metrics["p_star"] in recipe.options.p_candidates
    config = json.loads((result.model_dir / "config.json").read_text())
    assert config["training"]["metrics"]["p_star"] == result.metrics["p_star"]


def test_pirl_transform_gives_an_image_and_nine_shuffled_patches():
    cls, recipe = _tiny("pirl")
    image, patches = cls(recipe).train_transform()(torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8))
    assert image.shape == (1, 32, 32) and patches.shape == (9, 1, 8, 8)


def test_cpc_transform_cuts_a_seven_by_seven_grid_of_patches():
    cls, recipe = _tiny("cpc")
    patches = cls(recipe).train_transform()(torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8))
    assert patches.shape == (49, 1, 8, 8)


def test_narrow_resnet_trains_in_fp32_without_onednn_1x1_heap_corruption(tmp_path):
    """oneDNN#6035: a strided 1x1 fp32 convolution on channels-last input of fewer than 16 channels
    corrupts the heap in its weight gradient (the photos ResNet, widths 8-64, aborted at its first
    backward pass). deepest_features keeps such networks contiguous in fp32; run in a child process
    because a regression kills the process rather than failing an assertion."""
    import subprocess
    import sys

    from conftest import HANG_GUARD_S
    from training.features import _hits_onednn_1x1_bug

    narrow = zoo.create_model("simclr_resnet_small_photos")  # widths 8-64: shortcut 1x1 conv 8 -> 16, stride 2
    x = torch.zeros(2, 3, 64, 64)
    assert _hits_onednn_1x1_bug(narrow, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _hits_onednn_1x1_bug(narrow, x)  # bf16 convolutions: channels-last is safe and faster
    assert not _hits_onednn_1x1_bug(zoo.create_model("simclr_resnet_small_fmnist"), torch.zeros(2, 3, 32, 32))
    code = ("import torch, zoo\nfrom training.methods.heads import pooled_features\n"
            "torch.manual_seed(0)\nm = zoo.create_model('simclr_resnet_small_photos').train()\n"
            "for _ in range(3):\n    pooled_features(m, torch.randn(8, 3, 64, 64)).sum().backward()\nprint('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-500:]


def test_photos_recipe_pairs_training_photo_crops_with_their_copies(tmp_path):
    """The colour-photo recipe through the real engine: its loader makes (crop, distorted copy)
    pairs of the training photos, and two steps give a finite loss and a published backbone."""
    recipe = get_recipe("simclr", "photos").replace(limit=16, batch_size=8, epochs=1, checkpoint_every=0, log_every=1,
                                                     workers=0, precision="fp32")
    assert recipe.options.copy_views and recipe.data == "training-photos"
    result = fit(method_module("simclr").METHOD, recipe, tmp_path / "run", progress=False)
    records = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r and "event" not in r]
    assert result.steps == 2 and losses and all(math.isfinite(v) for v in losses)
    assert zoo.from_pretrained(result.model_dir).entry.name == "simclr_resnet_small_photos"
