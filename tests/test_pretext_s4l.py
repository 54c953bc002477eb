"""S4L-Rotation's pieces on hand-worked values, and one tiny run that reports the semi-supervised accuracy."""

import json
import math

import torch

from training.engine import fit
from training.methods import get_recipe
from training.methods.s4l import S4L, balanced_subset, epoch_draw, s4l_loss


def test_balanced_subset_takes_the_same_number_of_each_class_and_skips_unlabelled():
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 2, 2, -1, 2])
    chosen = balanced_subset(labels, fraction=2 / 3, num_classes=3, seed=0)  # round(2/3 * 9 / 3) = 2 a class
    assert torch.bincount(labels[chosen], minlength=3).tolist() == [2, 2, 2]
    assert 8 not in chosen.tolist() and chosen.tolist() == sorted(chosen.tolist())
    assert torch.equal(chosen, balanced_subset(labels, 2 / 3, 3, seed=0))  # the seed alone decides
    picks = {tuple(balanced_subset(labels, 2 / 3, 3, seed=s).tolist()) for s in range(20)}
    assert len(picks) > 1  # and it does decide


def test_balanced_subset_takes_all_of_a_class_with_too_few_images():
    labels = torch.tensor([0, 0, 0, 1])
    chosen = balanced_subset(labels, fraction=1.0, num_classes=2, seed=3)  # round(4 / 2) = 2 a class
    assert torch.bincount(labels[chosen]).tolist() == [2, 1] and 3 in chosen.tolist()


def test_epoch_draw_is_half_labelled_images_then_half_drawn_from_all():
    labelled = torch.tensor([2, 5, 7])
    drawn = epoch_draw(labelled, n=10, seed=1)
    assert len(drawn) == 10
    counts = torch.bincount(drawn[:5], minlength=10)  # 5 labelled slots over 3 images: 2, 2 and 1
    assert sorted(counts[[2, 5, 7]].tolist()) == [1, 2, 2] and int(counts.sum()) == 5
    assert len(set(drawn[5:].tolist())) == 5 and all(0 <= i < 10 for i in drawn[5:].tolist())
    assert torch.equal(drawn, epoch_draw(labelled, 10, seed=1))


def test_s4l_loss_is_class_plus_weighted_rotation_cross_entropy():
    class_logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # p(class 1) = 3/4, then 1/2
    labels = torch.tensor([1, 0])
    rotation_logits = torch.zeros(3, 4)  # uniform: log 4 each
    loss, rot = s4l_loss(class_logits, labels, rotation_logits, torch.tensor([0, 1, 3]), weight=0.5)
    expected_class = (math.log(4 / 3) + math.log(2)) / 2
    assert math.isclose(float(rot), math.log(4), rel_tol=1e-6)
    assert math.isclose(float(loss), expected_class + 0.5 * math.log(4), rel_tol=1e-6)
    baseline, zero = s4l_loss(class_logits, labels, None, None, 0.0)
    assert math.isclose(float(baseline), expected_class, rel_tol=1e-6) and float(zero) == 0.0


def test_class_loss_reads_only_the_labelled_images_in_all_four_rotations():
    recipe = get_recipe("s4l", "tiny")
    torch.manual_seed(0)
    method = S4L(recipe)
    method.is_labelled = torch.tensor([True, False, False, True])
    batch = {"x": torch.randn(2, 1, 32, 32), "label": torch.tensor([4, 9]), "index": torch.tensor([3, 1])}
    out = method(batch)
    assert set(out) >= {"class_acc", "rotation_acc", "rotation_loss"}
    # the classifier sees image 0 (index 3, labelled) four times and image 1 never: its gradient
    # comes from class 4's target alone, so no other class row is pushed up
    out["loss"].backward()
    grad_bias = method.classifier.bias.grad
    assert grad_bias[4] < 0 and bool((grad_bias[torch.arange(10) != 4] >= 0).all())
    baseline = S4L(recipe.replace(options=recipe.options.__class__(rotation_weight=0.0)))
    baseline.is_labelled = torch.tensor([False, True, False, False])
    none_labelled = baseline({**batch, "index": torch.tensor([0, 2])})
    assert float(none_labelled["loss"]) == 0.0 and none_labelled["loss"].requires_grad


def test_tiny_run_reports_its_classifiers_test_accuracy_beside_the_labels_it_used(tmp_path):
    recipe = get_recipe("s4l", "tiny")  # 128 images, half the labels: round(0.5 * 128 / 10) = 6 a class
    result = fit(S4L, recipe, tmp_path / "s4l", progress=False)
    metrics = json.loads((result.model_dir / "config.json").read_text())["training"]["metrics"]
    assert metrics["labelled_images"] == 60
    assert 0.0 <= metrics["semi_supervised_top1"] <= 1.0 and 0.0 <= metrics["rotation_acc"] <= 1.0
    assert result.steps == 128 // recipe.batch_size  # an epoch is the data's size: 64 labelled + 64 drawn
