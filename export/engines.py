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

from pathlib import Path
from typing import Protocol

import numpy as np

from zoo.errors import UsageError

from export.embedding import EmbeddingSpec
from export.options import ENGINES
from export.runtime import OnnxRuntimeEngine, default_threads  # noqa: F401  (re-exported)


class Engine(Protocol):
    name: str
    spec: EmbeddingSpec

    def embed(self, batch: np.ndarray) -> np.ndarray: ...


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
