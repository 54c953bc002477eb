"""Inference engines behind one small interface: prepared image batch in, embeddings out.

Every engine has ``spec`` (the ``EmbeddingSpec``: what input it takes, what it returns),
``name`` and ``embed(batch) -> (N, dim) float32``, where ``batch`` is what ``prepare_image`` makes
(uint8 NHWC or float NCHW). ``open_engine`` picks one from a registry name, a checkpoint folder
or an exported ONNX file:

=================  ===========================================================================
``torch``          PyTorch eager on the ``EmbeddingModel`` (the reference; CPU or CUDA)
``onnx``           ONNX Runtime with the CPU, CUDA or TensorRT execution provider (``provider``)
``tensorrt``       a TensorRT 11 engine built from the ONNX file and cached (``export.tensorrt``)
=================  ===========================================================================
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from zoo.errors import UsageError

from export.embedding import EmbeddingSpec
from export.options import ENGINES, MAX_THREADS, PROVIDERS



class Engine(Protocol):
    name: str
    spec: EmbeddingSpec

    def embed(self, batch: np.ndarray) -> np.ndarray: ...


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


class TorchEngine:
    def __init__(self, model, spec: EmbeddingSpec, device: str = "cpu"):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.spec = spec
        self.name = f"torch-{self.device.type}"

    def embed(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            return self.model(x).float().cpu().numpy()


class OnnxRuntimeEngine:
    """An ONNX Runtime session on an sslzoo ONNX file (its metadata gives the spec)."""

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int | None = None,
                 trt_cache_dir: str | Path | None = None, profile: tuple[int, int, int] = (1, 32, 128)):
        import onnxruntime as ort

        from export.onnx_export import INPUT_NAME, read_metadata

        if provider not in PROVIDERS:
            raise UsageError(f"unknown ONNX Runtime provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
        self.path = Path(path)
        self.spec = read_metadata(self.path)
        available = ort.get_available_providers()
        wanted = PROVIDERS[provider]
        if wanted not in available:
            from export.tensorrt import GpuUnavailableError

            raise GpuUnavailableError(
                f"ONNX Runtime here has no {wanted} (available: {', '.join(available)}); install "
                "onnxruntime-gpu on a machine with an NVIDIA GPU, or use --provider cpu")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers: list = [wanted]
        if provider == "tensorrt":
            from export.tensorrt import ort_tensorrt_options

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


def is_onnx_file(source: str | Path) -> bool:
    return str(source).endswith(".onnx")


def open_engine(source: str, engine: str = "onnx", provider: str = "cpu", layer: str | None = None,
                pool: str = "avg", input_kind: str = "uint8", workdir: str | Path | None = None,
                threads: int | None = None, profile: tuple[int, int, int] = (1, 32, 128)):
    """An engine for ``source``: a registry name, a checkpoint folder or an sslzoo ONNX file.

    A name or folder with the ``onnx``/``tensorrt`` engine is exported (and parity-checked) first,
    into ``workdir/model.onnx``. An ONNX file with the ``torch`` engine is refused: the file has no
    PyTorch model in it.
    """
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if is_onnx_file(source):
        if engine == "torch":
            raise UsageError(f"{source} is an ONNX file: the torch engine needs a registry name or a checkpoint "
                             "folder; use --engine onnx or tensorrt")
        if layer is not None:
            raise UsageError(f"{source} is already exported (its layer and pooling are fixed); drop --layer")
        onnx_path = Path(source)
    else:
        from export.embedding import build_embedding_model, load_backbone

        backbone, weights = load_backbone(source)
        model, spec = build_embedding_model(backbone, source, weights, layer=layer, pool=pool,
                                            input_kind=input_kind)
        if engine == "torch":
            if threads:
                import torch

                torch.set_num_threads(threads)
            return TorchEngine(model, spec)
        from export.onnx_export import export_onnx, verify_onnx

        if workdir is None:
            raise UsageError("exporting on the fly needs a work folder for the ONNX file")
        onnx_path = Path(workdir) / "model.onnx"
        export_onnx(model, spec, onnx_path)
        verify_onnx(model, spec, onnx_path)
    if engine == "onnx":
        return OnnxRuntimeEngine(onnx_path, provider=provider, threads=threads, profile=profile)
    from export.tensorrt import TensorRTEngine

    return TensorRTEngine(onnx_path, profile=profile)
