"""ONNX export of every backbone family, checked against PyTorch on the shipped photos."""

import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import run_zoo

import zoo
from zoo.errors import UsageError
from zoo.photos import load_photos
from zoo.preprocess import preprocess

from export.embedding import build_embedding_model, l2_normalise, load_backbone, pool_features, prepare_image
from export.engines import OnnxRuntimeEngine, TorchEngine, open_engine
from export.onnx_export import (export_onnx, metadata_dict, photo_batch, quantize_int8, read_metadata,
                                verify_onnx)

# One model per backbone family, each with a different layer / pooling / input layout so that the
# whole option space is exercised without exporting more than once per family.
FAMILIES = {
    "rotnet_alexnet": dict(layer=None, pool="avg", input_kind="uint8"),          # AlexNet fc7 (BN1d fc)
    "deepcluster_alexnet": dict(layer="conv5", pool="gem", input_kind="uint8"),  # Sobel inside
    "npid_resnet18": dict(layer="layer4", pool="max", input_kind="float"),       # ResNet
    "deepcluster_vgg16": dict(layer="conv5", pool="avg", input_kind="uint8"),    # VGG-16-BN with Sobel
    "rotnet_nin_fmnist": dict(layer="block2", pool="gem", input_kind="uint8"),   # NIN, grey input
    "simclr_resnet_small_fmnist": dict(layer=None, pool="avg", input_kind="float"),  # small ResNet, grey
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def exported(request, tmp_path_factory):
    name = request.param
    backbone, weights = load_backbone(f"random:{name}")
    model, spec = build_embedding_model(backbone, name, weights, **FAMILIES[name])
    path = export_onnx(model, spec, tmp_path_factory.mktemp("onnx") / f"{name}.onnx")
    return name, model, spec, path


def test_onnx_runtime_matches_pytorch_on_real_photos(exported):
    name, model, spec, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch axis
    for offset, n in enumerate((1, 3, 8)):
        batch = photo_batch(spec.input, spec.input_kind, n, offset=offset)
        with torch.no_grad():
            ref = model(torch.from_numpy(batch)).numpy()
        out = session.run(None, {"images": batch})[0]
        assert out.shape == (n, spec.dim)
        assert np.abs(out - ref).max() <= 1e-4, (name, n, np.abs(out - ref).max())
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_metadata_round_trips(exported):
    name, model, spec, path = exported
    assert read_metadata(path) == spec
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert meta["registry_name"] == name and meta["embedding_dim"] == str(spec.dim)
    assert meta["layer"] == spec.layer and meta["pooling"] == spec.pool
    assert meta["sslzoo_version"] == zoo.__version__ and meta["state_dict_sha256"] == spec.state_dict_sha256
    assert meta["input"].startswith(spec.input_kind)
    assert (spec.pool == "none") == spec.layer.startswith("fc")  # fc layers are not pooled


def test_graph_embeds_the_reference_preprocessing():
    """ONNX on raw float crops == backbone on zoo.preprocess output, pooled and normalised by hand."""
    for name in ("rotnet_nin_fmnist", "deepcluster_alexnet"):  # grey conversion; Sobel from RGB
        backbone, weights = load_backbone(f"random:{name}")
        model, spec = build_embedding_model(backbone, name, weights, layer="block3" if "nin" in name else "conv3",
                                            input_kind="float")
        photos = list(load_photos(limit=3).values())
        with torch.no_grad():
            feats = backbone.forward_features(preprocess(photos, backbone.entry.input), [spec.layer])[spec.layer]
            expected = l2_normalise(pool_features(feats, "avg")).numpy()
        batch = np.stack([prepare_image(p, spec.input, "float") for p in photos])
        got = TorchEngine(model, spec).embed(batch)
        assert np.abs(got - expected).max() < 1e-5


def test_uint8_decoding_is_within_one_grey_level_of_the_reference():
    from zoo.preprocess import image_to_float_chw, resize_and_crop

    spec = zoo.get_model_entry("sela_resnet50").input
    for photo in load_photos().values():
        ref = (resize_and_crop(image_to_float_chw(photo), spec).permute(1, 2, 0) * 255).round().numpy()
        fast = prepare_image(photo, spec, "uint8")
        assert fast.shape == (224, 224, 3) and fast.dtype == np.uint8
        assert np.abs(fast.astype(float) - ref).max() <= 1


@pytest.fixture(scope="module")
def nin_fp32(tmp_path_factory):
    backbone, weights = load_backbone("random:rotnet_nin_cifar10")
    model, spec = build_embedding_model(backbone, "rotnet_nin_cifar10", weights)
    return model, spec, export_onnx(model, spec, tmp_path_factory.mktemp("nin") / "nin.onnx")


def test_int8_is_quantised_close_and_keeps_copy_detection_map(nin_fp32, tmp_path):
    from zoo.retrieval import copy_detection_set, retrieval_metrics

    model, spec, fp32 = nin_fp32
    int8 = quantize_int8(fp32, tmp_path / "nin-int8.onnx", spec)
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert read_metadata(int8) == dataclasses.replace(spec, precision="int8")
    assert verify_onnx(model, read_metadata(int8), int8) <= 0.1
    cds = copy_detection_set(copies=3)
    batch = np.stack([prepare_image(im, spec.input, spec.input_kind) for im in cds.images])
    # One thread: the same sums in the same order whatever else the machine runs (calibration is
    # min/max, exact in any order), so the int8 file and its embeddings are the same run after run.
    e8 = OnnxRuntimeEngine(int8, threads=1).embed(batch)
    assert np.array_equal(e8, OnnxRuntimeEngine(int8, threads=1).embed(batch))
    m32 = retrieval_metrics(OnnxRuntimeEngine(fp32, threads=1).embed(batch), cds.groups)["mAP"]
    m8 = retrieval_metrics(e8, cds.groups)["mAP"]
    # Sized to the sample: mAP is the mean AP of Q queries (48 here), so int8 may cost at most what
    # two queries' whole AP would (2/Q), a few swapped neighbours. Integer kernels differ between
    # CPUs (VNNI/AMX or AVX2), hence not one fixed number. A broken quantisation costs tens of
    # queries: a random order scores about 3/47 = 0.06 against fp32's 0.45.
    queries = len(cds.groups)
    assert abs(m32 - m8) <= 2 / queries, (m32, m8, queries)


def test_fp16_export_has_half_weights_and_float32_output(tmp_path):
    backbone, weights = load_backbone("random:simclr_resnet_small_fmnist")
    ref_model, _ = build_embedding_model(backbone, "simclr_resnet_small_fmnist", weights)
    backbone16, _ = load_backbone("random:simclr_resnet_small_fmnist")
    model16, spec16 = build_embedding_model(backbone16, "simclr_resnet_small_fmnist", weights, half=True)
    path = export_onnx(model16, spec16, tmp_path / "half.onnx")
    proto = onnx.load(str(path))
    dtypes = {init.data_type for init in proto.graph.initializer if init.name.startswith("backbone.")}
    assert dtypes == {onnx.TensorProto.FLOAT16}  # the preprocessing constants stay float32
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert 1e-7 < verify_onnx(ref_model, spec16, path) <= 5e-3  # really reduced precision, still close


def test_open_engine_refuses_torch_on_an_onnx_file(nin_fp32):
    _, _, path = nin_fp32
    with pytest.raises(UsageError, match="torch engine needs a registry name"):
        open_engine(str(path), engine="torch")


def test_cli_export_reports_the_difference_and_writes_metadata(tmp_path):
    out = tmp_path / "nin.onnx"
    res = run_zoo("export", "random:rotnet_nin_fmnist", "--onnx", "-o", str(out), "--pool", "max", "--layer", "block3",
                  "--opset", "18")
    assert res.returncode == 0, res.stderr
    assert "random-init" in res.stdout and "max |ONNX Runtime - PyTorch fp32|" in res.stdout
    diff = float(res.stdout.split("batch 1/3/8: ")[1].split()[0])
    assert 0 <= diff <= 1e-4
    meta = metadata_dict(out)
    assert meta["layer"] == "block3" and meta["pooling"] == "max" and meta["weights"] == "random-init"
    assert [o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx")] == [18]


def test_cli_export_from_a_checkpoint_folder(tmp_path):
    torch.manual_seed(1)
    model = zoo.create_model("rotnet_nin_fmnist")
    model.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "ckpt.onnx"
    res = run_zoo("export", str(tmp_path / "ckpt"), "--onnx", "-o", str(out))
    assert res.returncode == 0, res.stderr
    spec = read_metadata(out)
    assert spec.weights == "checkpoint" and spec.source == str(tmp_path / "ckpt")
    assert spec.weights_origin == f"checkpoint folder {tmp_path / 'ckpt'}"
    assert spec.weights_file_sha256 == json.loads((tmp_path / "ckpt" / "config.json").read_text())["weights"]["sha256"]
    from export.embedding import state_dict_sha256

    assert spec.weights_sha256 == state_dict_sha256(model)


@pytest.mark.parametrize("args, code, needle", [
    (("rotnet_nin_fmnist",), 2, "--onnx"),
    (("rotnet_nin_fmnist", "--onnx", "--fp16", "--int8"), 2, "pick one"),
    (("rotnet_nin_fmnst", "--onnx"), 2, "did you mean 'rotnet_nin_fmnist'"),
    (("random:rotnet_nin_fmnist", "--onnx", "--layer", "conv9"), 2, "unknown layer 'conv9'"),
    (("rotnet_nin_fmnist", "--onnx", "--tensorrt"), 3, "export without --tensorrt (zoo export)"),
])
def test_cli_export_errors_are_one_line(args, code, needle, tmp_path):
    res = run_zoo("export", *args, "-o", str(tmp_path / "x.onnx"))
    assert res.returncode == code, (res.stdout, res.stderr)
    assert needle in res.stderr and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_a_killed_export_keeps_the_previous_file_and_the_next_one_cleans_up(tmp_path):
    out, ref = tmp_path / "out.onnx", tmp_path / "ref.onnx"
    assert run_zoo("export", "random:rotnet_nin_fmnist", "--onnx", "-o", str(ref)).returncode == 0
    assert run_zoo("export", "random:rotnet_nin_fmnist", "--onnx", "--layer", "block2", "-o", str(out)).returncode == 0
    previous = out.read_bytes()
    for point in ("write", "rename"):  # killed with the new file half written; killed just before the rename
        killed = run_zoo("export", "random:rotnet_nin_fmnist", "--onnx", "-o", str(out),
                         env={"ZOO_TEST_FAULT": f"{point}@out.onnx:1:kill"})
        assert killed.returncode == -9 and out.read_bytes() == previous  # the old file, whole
    assert run_zoo("export", "random:rotnet_nin_fmnist", "--onnx", "-o", str(out)).returncode == 0
    assert out.read_bytes() == ref.read_bytes()  # as if never interrupted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "ref.onnx"]  # nothing the kills left


def test_an_opset_in_range_is_the_opset_written(tmp_path):
    """--opset is honoured (the exporter builds 18 and converts upwards), not only accepted; one
    outside the range is a one-line error before anything is written (test_cli)."""
    backbone, weights = load_backbone("random:rotnet_nin_fmnist")
    model, spec = build_embedding_model(backbone, "rotnet_nin_fmnist", weights)
    path = export_onnx(model, spec, tmp_path / "nin20.onnx", opset=20)
    assert [o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")] == [20]
    assert verify_onnx(model, spec, path) <= 1e-4
    with pytest.raises(UsageError, match="--opset 17: the exporter writes opsets 18 to 23"):
        export_onnx(model, spec, tmp_path / "nin17.onnx", opset=17)
    assert not (tmp_path / "nin17.onnx").exists()
