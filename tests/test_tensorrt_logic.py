"""The GPU-free parts of the TensorRT path: cache key, profile shapes, provider options, gating."""

import sys
import types

import pytest

import zoo
from zoo.errors import UsageError

from export.embedding import EmbeddingSpec
from export.tensorrt import (GpuUnavailableError, Profile, engine_cache_key, ort_tensorrt_options, profile_shapes,
                             require_tensorrt)


def _spec(input_kind="uint8", precision="fp32"):
    return EmbeddingSpec(model="sela_resnet50", source="sela_resnet50", weights="random-init", state_dict_sha256="ab" * 32,
                         layer="layer4", pool="gem", input_kind=input_kind,
                         input=zoo.get_model_entry("sela_resnet50").input, dim=2048, precision=precision)


def test_profile_shapes_follow_the_input_layout():
    assert profile_shapes(_spec("uint8"), (1, 16, 64)) == Profile((1, 224, 224, 3), (16, 224, 224, 3), (64, 224, 224, 3))
    assert profile_shapes(_spec("float"), (2, 8, 8)).opt == (8, 3, 224, 224)


@pytest.mark.parametrize("bad", [(0, 1, 2), (4, 2, 8), (1, 16, 8)])
def test_profile_rejects_unordered_batches(bad):
    with pytest.raises(UsageError, match="1 <= min <= opt <= max"):
        profile_shapes(_spec(), bad)


def test_cache_key_is_stable_and_covers_every_field():
    p = profile_shapes(_spec(), (1, 32, 128))
    base = dict(onnx_sha256="0" * 64, trt_version="11.4.0", compute_capability=(9, 0), precision="fp16", profile=p)
    key = engine_cache_key(**base)
    assert key == engine_cache_key(**{**base, "compute_capability": "9.0"})  # tuple or string, same key
    assert len(key) == 32 and int(key, 16) >= 0
    changes = dict(onnx_sha256="1" * 64, trt_version="11.5.0", compute_capability=(8, 9), precision="int8",
                   profile=profile_shapes(_spec(), (1, 32, 256)))
    keys = {engine_cache_key(**{**base, field: value}) for field, value in changes.items()}
    assert len(keys) == len(changes) and key not in keys


def test_onnxruntime_tensorrt_provider_options_use_the_same_profile(tmp_path):
    opts = ort_tensorrt_options(_spec(), tmp_path, (1, 8, 32))
    assert opts["trt_profile_min_shapes"] == "images:1x224x224x3"
    assert opts["trt_profile_opt_shapes"] == "images:8x224x224x3"
    assert opts["trt_profile_max_shapes"] == "images:32x224x224x3"
    assert opts["trt_engine_cache_enable"] and opts["trt_engine_cache_path"] == str(tmp_path)


def test_without_tensorrt_the_message_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as it does here
    with pytest.raises(GpuUnavailableError, match="TensorRT is not installed") as err:
        require_tensorrt()
    assert "\n" not in str(err.value) and err.value.exit_code == 3


def test_with_tensorrt_but_no_gpu_the_message_says_so(monkeypatch):
    # TensorRT itself cannot be installed here: a bare module stands in for the import only.
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GpuUnavailableError, match="no NVIDIA GPU found"):
        require_tensorrt()


def test_onnxruntime_gpu_providers_are_gated(tmp_path):
    from export.embedding import build_embedding_model, load_backbone
    from export.engines import OnnxRuntimeEngine
    from export.onnx_export import export_onnx

    backbone, weights = load_backbone("random:rotnet_nin_fmnist")
    model, spec = build_embedding_model(backbone, "rotnet_nin_fmnist", weights, layer="block1")
    path = export_onnx(model, spec, tmp_path / "m.onnx")
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has onnxruntime-gpu; the gate is for CPU-only installs")
    with pytest.raises(GpuUnavailableError, match="no CUDAExecutionProvider"):
        OnnxRuntimeEngine(path, provider="cuda")
