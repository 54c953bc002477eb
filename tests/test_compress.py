"""zoo compress (CURL pruning) and zoo distill (LSH feature mimicking): the pure pieces with numbers
worked by hand, the pruned network against the original with the same channels zeroed, and one
tiny end-to-end run of each command whose checkpoint loads, exports to ONNX and matches it."""

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

import zoo
from zoo.errors import UsageError
from zoo.registry import create_model

from training.compress import (channel_groups, channel_masks, compress_cmd, kl_importance, masks_for,
                               neighbourhood_log_probs, prune_model, pruned_arch_kwargs, select_channels)
from training.distill import distill_cmd, embedding, hyperplane_bias, lsh_loss, mimic_loss, parse_student


def test_lsh_loss_by_hand():
    normals, bias = torch.eye(2), torch.zeros(2)
    teacher = torch.tensor([[1.0, -1.0]])  # sign bits (1, 0)
    # student at the origin: both logits 0, BCE log 2 each; L2 = mean(1, 1) = 1
    assert float(lsh_loss(torch.zeros(1, 2), teacher, normals, bias)) == pytest.approx(math.log(2))
    assert float(mimic_loss(torch.zeros(1, 2), teacher, normals, bias)) == pytest.approx(1 + math.log(2))
    # logits (2, -3) against bits (1, 0): softplus(-2) and softplus(-3), averaged
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-3))) / 2
    assert float(lsh_loss(torch.tensor([[2.0, -3.0]]), teacher, normals, bias)) == pytest.approx(expected)
    assert float(mimic_loss(torch.tensor([[2.0, -3.0]]), teacher, normals, bias, lsh_weight=0.0)) == pytest.approx(
        ((2 - 1) ** 2 + (-3 + 1) ** 2) / 2)


def test_hyperplanes_pass_through_the_centre():
    normals = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    bias = hyperplane_bias(normals, torch.tensor([1.0, 2.0]))
    assert bias.tolist() == [-1.0, 0.0]  # -(1*1 + 2*0), -(1*2 + 2*-1)
    assert (torch.tensor([[1.0, 2.0]]) @ normals + bias).abs().max() == 0


def test_kl_importance_by_hand():
    p = torch.tensor([[0.5, 0.5]]).log()
    q = torch.tensor([[0.25, 0.75]]).log()
    assert kl_importance(p, p) == 0.0
    assert kl_importance(p, q) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75), rel=1e-6)
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    logp = neighbourhood_log_probs(torch.tensor([[2.0, 0.0]]), anchors, temperature=1.0)
    assert logp.exp().tolist()[0] == pytest.approx([math.e / (math.e + 1), 1 / (math.e + 1)])


def test_select_channels_layer_and_global():
    scores = {"a": torch.tensor([3.0, 1.0, 2.0, 0.0]), "b": torch.tensor([5.0, 4.0])}
    assert select_channels(scores, {}, 0.5, "layer") == {"a": [0, 2], "b": [0]}
    assert select_channels(scores, {"a": 3}, 0.5, "layer") == {"a": [0, 1, 2], "b": [0]}
    # global: the 3 lowest scores overall are all in a, which may go down to ceil(4 * 0.1) = 1 channel
    assert select_channels(scores, {}, 0.5, "global") == {"a": [0], "b": [0, 1]}
    assert select_channels(scores, {"a": 2}, 0.5, "global") == {"a": [0, 2], "b": [0]}
    with pytest.raises(UsageError, match="--prune"):
        select_channels(scores, {}, 1.0)


def test_width_bookkeeping():
    kept = {"layer1.residual": [0, 1], "layer2.residual": [3], "layer3.residual": [0, 5, 6],
            **{f"layer{s}.0.inner1": list(range(s)) for s in range(1, 5)}}
    kwargs = pruned_arch_kwargs({"in_channels": 1, "widths": [16, 32, 64, 128]}, "basic", [1, 1, 1, 1],
                                [16, 32, 64, 128], kept)
    assert kwargs == {"in_channels": 1, "widths": [2, 1, 3, 128], "inner_widths": [[[1]], [[2]], [[3]], [[4]]],
                      "blocks": [1, 1, 1, 1]}


def _randomise_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("name,kwargs,size", [
    ("simclr_resnet_small_fmnist", {"blocks": (2, 1, 1, 1)}, 32),
    ("cpc_resnet50", {"widths": (32, 48, 64, 40), "blocks": (2, 1, 1, 1),
                      "inner_widths": [[[8, 8], [8, 6]], [[12, 12]], [[16, 16]], [[10, 10]]]}, 64),
])
def test_pruned_network_computes_the_masked_original(name, kwargs, size):
    torch.manual_seed(0)
    model = _randomise_bn(create_model(name, **kwargs))
    groups = channel_groups(model)
    g = torch.Generator().manual_seed(1)
    kept = {gr.name: sorted(torch.randperm(gr.size, generator=g)[:max(gr.floor, gr.size // 2)].tolist())
            for gr in groups}
    pruned = prune_model(model, kept)
    x = torch.randn(3, model.in_channels, size, size)
    with torch.no_grad(), channel_masks(model, masks_for(groups, kept)):
        reference = embedding(model, x)
    with torch.no_grad():
        out = embedding(pruned, x)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    assert out.shape == reference.shape
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-4)


def test_parse_student():
    assert parse_student("resnet_small:widths=8,16,32,128;blocks=1,1,1,1", "resnet_small") == {
        "widths": [8, 16, 32, 128], "blocks": [1, 1, 1, 1]}
    with pytest.raises(UsageError, match="teacher's architecture"):
        parse_student("resnet50", "resnet_small")
    with pytest.raises(UsageError, match="key=INT"):
        parse_student("resnet_small:widths=a", "resnet_small")


def _onnx_parity(folder):
    from export.embedding import build_embedding_model, load_backbone
    from export.onnx_export import export_onnx, photo_batch

    backbone, weights = load_backbone(str(folder))
    model, spec = build_embedding_model(backbone, str(folder), weights)
    path = export_onnx(model, spec, folder.parent / f"{folder.name}.onnx")
    batch = photo_batch(spec.input, spec.input_kind, 4)
    with torch.no_grad():
        ref = model(torch.from_numpy(batch)).numpy()
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": batch})[0]
    assert np.abs(out - ref).max() <= 1e-4


def test_compress_and_distill_end_to_end(tmp_path):
    runner = CliRunner()
    torch.manual_seed(0)  # a narrow teacher keeps the per-channel scoring to 64 small passes
    teacher = str(_randomise_bn(create_model("simclr_resnet_small_fmnist", widths=(4, 8, 16, 32))).save_pretrained(
        tmp_path / "teacher"))
    small = ["--images", "32", "--steps", "2", "--batch-size", "16"]
    result = runner.invoke(compress_cmd, [teacher, "--prune", "0.5", "--score-images", "8", "-o",
                                          str(tmp_path / "pruned"), *small])
    assert result.exit_code == 0, result.output
    pruned = zoo.from_pretrained(tmp_path / "pruned")
    assert pruned.arch_kwargs["widths"] == [2, 4, 8, 32]
    assert pruned.checkpoint_config["compression"]["prune"] == 0.5
    _onnx_parity(tmp_path / "pruned")

    result = runner.invoke(distill_cmd, [teacher, "--student", "resnet_small:widths=2,4,8,32;blocks=1,1,1,1",
                                         "-o", str(tmp_path / "student"), *small])
    assert result.exit_code == 0, result.output
    student = zoo.from_pretrained(tmp_path / "student")
    assert student.arch_kwargs["widths"] == [2, 4, 8, 32]  # the same kind of folder as the pruned one: no second export

    again = runner.invoke(distill_cmd, [teacher, "--student", "resnet_small", "-o", str(tmp_path / "student"), *small])
    assert again.exit_code != 0 and "not empty" in str(again.exception or again.output)
    narrow = runner.invoke(distill_cmd, [teacher, "--student", "resnet_small:widths=2,4,8,16",
                                         "-o", str(tmp_path / "narrow"), *small])
    assert narrow.exit_code != 0 and "embedding" in str(narrow.exception or narrow.output)
