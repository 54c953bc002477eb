"""ONNX Runtime sessions on sslzoo ONNX files, and how many threads an engine uses.

Below ``export.onnx_export`` (whose parity check runs a session) and ``export.engines`` (which
picks an engine), so that neither needs the other.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from zoo.errors import UsageError

from export.onnx_metadata import INPUT_NAME, read_metadata
from export.options import MAX_THREADS, PROVIDERS
from export.tensorrt import GpuUnavailableError, ort_tensorrt_options


def default_threads() -> int:
    """Intra-op threads: ``ZOO_THREADS`` if set, else the CPUs this process may use, shared
    between the processes torchrun started on this machine (``LOCAL_WORLD_SIZE``)."""
    if os.environ.get("ZOO_THREADS"):
        text = os.environ["ZOO_THREADS"]
        if not text.strip().isdigit() or not 1 <= int(text) <= MAX_THREADS:
            raise UsageError(f"ZOO_THREADS={text!r}: give a number of threads from 1 to {MAX_THREADS}")
        return int(text)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))


class OnnxRuntimeEngine:
    """An ONNX Runtime session on an sslzoo ONNX file (its metadata gives the spec)."""

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int | None = None,
                 trt_cache_dir: str | Path | None = None, profile: tuple[int, int, int] = (1, 32, 128)):
        import onnxruntime as ort

        if provider not in PROVIDERS:
            raise UsageError(f"unknown ONNX Runtime provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
        self.path = Path(path)
        self.spec = read_metadata(self.path)
        available = ort.get_available_providers()
        wanted = PROVIDERS[provider]
        if wanted not in available:
            raise GpuUnavailableError(
                f"ONNX Runtime here has no {wanted} (available: {', '.join(available)}); install "
                "onnxruntime-gpu on a machine with an NVIDIA GPU, or use --provider cpu")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers: list = [wanted]
        if provider == "tensorrt":
            providers = [(wanted, ort_tensorrt_options(self.spec, trt_cache_dir or self.path.parent, profile)),
                         PROVIDERS["cuda"]]
        if provider != "cpu":
            providers.append(PROVIDERS["cpu"])
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        self.input_name = INPUT_NAME
        self.name = f"onnxruntime-{provider}" + ("-int8" if self.spec.precision == "int8" else
                                                 "-fp16" if self.spec.precision == "fp16" else "")

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch)})[0]
