"""TensorRT engines built from sslzoo ONNX files, cached, and run on torch CUDA buffers.

TensorRT 11 networks are strongly typed: there are no FP16/INT8 builder flags any more, the
precision comes from the ONNX itself (``zoo export --fp16`` writes float16 layers, ``--int8``
writes explicit Q/DQ nodes). Building goes Builder -> network -> ONNX parser -> builder config with
a workspace limit -> one optimisation profile over the batch axis (min/opt/max) ->
``build_serialized_network``.

An engine only runs on the GPU architecture and TensorRT version it was built with, so the cache
key covers the ONNX file's sha256, the TensorRT version, the GPU's compute capability, the
precision and the profile. Everything here that needs no GPU (the key, the profile shapes, the
provider options, the checks that say what is missing) is plain Python and is tested without one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.checkpoint import atomic_write, atomic_write_text
from zoo.errors import UsageError, ZooError

from export.embedding import EmbeddingSpec
from export.onnx_metadata import INPUT_NAME, OUTPUT_NAME, onnx_sha256, read_metadata

DEFAULT_PROFILE = (1, 32, 128)  # min / opt / max batch
DEFAULT_WORKSPACE = 4 << 30  # bytes of scratch memory TensorRT may use while building


class GpuUnavailableError(ZooError):
    """The GPU path was asked for where there is no NVIDIA GPU or no TensorRT."""

    exit_code = 3


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: the input shape at the smallest, typical and largest batch."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


# What to do instead, for both commands that reach TensorRT (`zoo export` has no --engine option).
NO_GPU_HINT = "on this machine export without --tensorrt (zoo export) or extract with --engine onnx (zoo extract)"

def profile_shapes(spec: EmbeddingSpec, batches: tuple[int, int, int] = DEFAULT_PROFILE) -> Profile:
    """The optimisation profile of the input tensor for a (min, opt, max) batch range."""
    lo, opt, hi = (int(b) for b in batches)
    if not 1 <= lo <= opt <= hi:
        raise UsageError(f"batch profile must satisfy 1 <= min <= opt <= max, got {lo}/{opt}/{hi}")
    return Profile(spec.input_shape(lo), spec.input_shape(opt), spec.input_shape(hi))


def engine_cache_key(onnx_sha256: str, trt_version: str, compute_capability: tuple[int, int] | str,
                     precision: str, profile: Profile) -> str:
    """A stable name for an engine: sha256 over everything an engine is only valid for."""
    if isinstance(compute_capability, tuple):
        compute_capability = f"{compute_capability[0]}.{compute_capability[1]}"
    fields = {"onnx_sha256": onnx_sha256, "tensorrt": str(trt_version), "compute_capability": str(compute_capability),
              "precision": precision, "profile": {k: list(v) for k, v in asdict(profile).items()}}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def shape_string(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def ort_tensorrt_options(spec: EmbeddingSpec, cache_dir: str | Path,
                         batches: tuple[int, int, int] = DEFAULT_PROFILE) -> dict[str, Any]:
    """Options for onnxruntime-gpu's TensorRT execution provider: the same profile, a disk cache."""
    p = profile_shapes(spec, batches)
    return {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_profile_min_shapes": f"{INPUT_NAME}:{shape_string(p.min)}",
        "trt_profile_opt_shapes": f"{INPUT_NAME}:{shape_string(p.opt)}",
        "trt_profile_max_shapes": f"{INPUT_NAME}:{shape_string(p.max)}",
    }


def default_cache_dir() -> Path:
    from export.options import cache_root

    return cache_root() / "tensorrt"


def require_tensorrt():
    """``(tensorrt module, compute capability)``, or one clear line saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError:
        raise GpuUnavailableError(
            "TensorRT is not installed: it needs an NVIDIA GPU (pip install 'sslzoo[gpu]' there); "
            f"{NO_GPU_HINT}") from None
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # a broken CUDA install reads as no GPU
        has_gpu = False
    if not has_gpu:
        raise GpuUnavailableError(f"no NVIDIA GPU found: TensorRT engines need one; {NO_GPU_HINT}")
    return trt, torch.cuda.get_device_capability()


def _make_logger(trt):
    """A TensorRT logger that keeps the error messages, so failures can quote the first one."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity <= trt.ILogger.Severity.ERROR:
                self.errors.append(msg)

    return Logger()


def build_engine(onnx_path: str | Path, spec: EmbeddingSpec, batches: tuple[int, int, int] = DEFAULT_PROFILE,
                 cache_dir: str | Path | None = None, workspace: int = DEFAULT_WORKSPACE,
                 output: str | Path | None = None) -> Path:
    """Build (or take from the cache) the serialized engine of ``onnx_path``; returns its path."""
    trt, capability = require_tensorrt()
    profile = profile_shapes(spec, batches)
    key = engine_cache_key(onnx_sha256(onnx_path), trt.__version__, capability, spec.precision, profile)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / f"{key}.engine"
    if not cached.is_file():
        logger = _make_logger(trt)
        builder = trt.Builder(logger)
        if builder is None:
            raise GpuUnavailableError(f"TensorRT could not create a builder (no usable GPU); {NO_GPU_HINT}")
        # TensorRT 10 needs the STRONGLY_TYPED flag; in 11 strong typing is the only mode.
        strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise ZooError(f"TensorRT cannot parse {onnx_path}: {errors[0] if errors else 'unknown error'}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
        trt_profile = builder.create_optimization_profile()
        trt_profile.set_shape(INPUT_NAME, profile.min, profile.opt, profile.max)
        config.add_optimization_profile(trt_profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ZooError(f"TensorRT failed to build an engine for {onnx_path}: "
                           f"{logger.errors[0] if logger.errors else 'see the TensorRT log'}")
        atomic_write(cached, lambda p: p.write_bytes(bytes(serialized)))
        atomic_write_text(cached.with_suffix(".json"), json.dumps({
            "onnx": str(onnx_path), "tensorrt": trt.__version__, "compute_capability": list(capability),
            "precision": spec.precision, "profile": asdict(profile), "spec_model": spec.model}, indent=2))
    if output is not None:
        atomic_write(output, lambda p: p.write_bytes(cached.read_bytes()))
        return Path(output)
    return cached


class TensorRTEngine:
    """Runs a cached TensorRT engine on torch CUDA tensors (no pycuda needed)."""

    def __init__(self, onnx_path: str | Path, profile: tuple[int, int, int] = DEFAULT_PROFILE,
                 cache_dir: str | Path | None = None):
        trt, _ = require_tensorrt()
        import torch

        self.torch = torch
        self.spec = read_metadata(onnx_path)
        self.max_batch = profile_shapes(self.spec, profile).max[0]
        path = build_engine(onnx_path, self.spec, profile, cache_dir)
        self.logger = _make_logger(trt)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ZooError(f"TensorRT could not load the cached engine {path}; delete it to rebuild")
        self.context = self.engine.create_execution_context()
        self.input_name, self.output_name = INPUT_NAME, OUTPUT_NAME
        self.device = torch.device("cuda")
        self.name = f"tensorrt-{self.spec.precision}"

    def embed(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        outs = []
        for start in range(0, len(batch), self.max_batch):
            chunk = torch.from_numpy(np.ascontiguousarray(batch[start:start + self.max_batch])).to(self.device)
            out = torch.empty((chunk.shape[0], self.spec.dim), dtype=torch.float32, device=self.device)
            self.context.set_input_shape(self.input_name, tuple(chunk.shape))
            self.context.set_tensor_address(self.input_name, chunk.data_ptr())
            self.context.set_tensor_address(self.output_name, out.data_ptr())
            stream = torch.cuda.current_stream()
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise ZooError("TensorRT execution failed: " + (self.logger.errors[-1] if self.logger.errors else ""))
            stream.synchronize()
            outs.append(out.cpu().numpy())
        return np.concatenate(outs)
