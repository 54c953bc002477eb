"""Inference engines behind one small interface: prepared image batch in, embeddings out.

Every engine has ``spec`` (the ``EmbeddingSpec``: what input it takes, what it returns),
``name`` and ``embed(batch) -> (N, dim) float32``, where ``batch`` is what ``prepare_image`` makes
(uint8 NHWC or float NCHW). ``open_engine`` picks one from a registry name, a checkpoint folder
or an exported ONNX file:

=================  ===========================================================================
``torch``          PyTorch eager on the ``EmbeddingModel`` (the reference; CPU or CUDA)
``onnx``           ONNX Runtime with the CPU, CUDA or TensorRT execution provider (``provider``)
``tensorrt``       a TensorRT 11 engine built from the ONNX file and cached (``export.tensorrt``)
``auto``           the fastest of ``auto_candidates`` that keeps fp32's accuracy, measured on
                   first use for the model and machine and cached (``export.autoselect``)
=================  ===========================================================================
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Callable, Protocol

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
    """PyTorch on the ``EmbeddingModel``; ``channels_last`` stores the convolution weights NHWC
    (oneDNN's preferred layout), ``autocast`` ("bf16" or "fp16") runs the network in that precision
    (the output stays float32)."""

    def __init__(self, model, spec: EmbeddingSpec, device: str = "cpu", channels_last: bool = False,
                 autocast: str | None = None):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.autocast = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}[autocast]
        self.spec = spec
        self.name = f"torch-{self.device.type}" + ("-channels-last" if channels_last else "") + \
            (f"-{autocast}" if autocast else "")

    def embed(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast,
                                                    enabled=self.autocast is not None):
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            return self.model(x).float().cpu().numpy()


def is_onnx_file(source: str | Path) -> bool:
    return str(source).endswith(".onnx")


def open_engine(source: str, engine: str = "onnx", provider: str = "cpu", layer: str | None = None,
                pool: str = "avg", input_kind: str = "uint8", workdir: str | Path | None = None,
                threads: int | None = None, profile: tuple[int, int, int] = (1, 32, 128), batch_size: int = 32,
                remeasure: bool = False, rounds: int = 5, log: Callable[[str], None] | None = None):
    """An engine for ``source``: a registry name, a checkpoint folder or an sslzoo ONNX file.

    A name or folder with the ``onnx``/``tensorrt``/``auto`` engine is exported (and parity-checked)
    first, into ``workdir/model.onnx``. An ONNX file with the ``torch`` engine is refused: the file
    has no PyTorch model in it. ``auto`` (see ``open_auto_engine``) takes ``batch_size``,
    ``remeasure``, ``rounds`` and ``log`` (its one-line report; default: standard error).
    """
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "auto":
        return open_auto_engine(source, layer=layer, pool=pool, input_kind=input_kind, workdir=workdir,
                                threads=threads, profile=profile, batch_size=batch_size, remeasure=remeasure,
                                rounds=rounds, log=log)
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


def open_auto_engine(source: str, layer: str | None = None, pool: str = "avg", input_kind: str = "uint8",
                     workdir: str | Path | None = None, threads: int | None = None,
                     profile: tuple[int, int, int] = (1, 32, 128), batch_size: int = 32, remeasure: bool = False,
                     rounds: int = 5, log: Callable[[str], None] | None = None,
                     progress: Callable[[str], None] | None = None):
    """The fastest engine for ``source`` on this machine that keeps fp32's accuracy (``export.autoselect``).

    The choice is cached per model, machine and engine versions; ``remeasure`` measures again. The
    engine carries ``auto_choice`` (every candidate's measurements) and ``auto_report`` (the line
    given to ``log``). A name or folder is exported to ``workdir/model.onnx`` whatever wins, so that
    an extraction keeps a model file for `zoo search`.
    """
    from zoo.fileset import sha256_file

    from export import autoselect
    from export.onnx_export import export_onnx, photo_batch, read_metadata, verify_onnx

    threads = threads or default_threads()
    model = None
    if is_onnx_file(source):
        if layer is not None:
            raise UsageError(f"{source} is already exported (its layer and pooling are fixed); drop --layer")
        onnx_path = Path(source)
        spec = read_metadata(onnx_path)
        identity = {"onnx_sha256": sha256_file(onnx_path)}
    else:
        from export.embedding import build_embedding_model, load_backbone

        if workdir is None:
            raise UsageError("exporting on the fly needs a work folder for the ONNX file")
        backbone, weights = load_backbone(source)
        model, spec = build_embedding_model(backbone, source, weights, layer=layer, pool=pool, input_kind=input_kind)
        onnx_path = Path(workdir) / "model.onnx"
        export_onnx(model, spec, onnx_path)
        verify_onnx(model, spec, onnx_path)
        identity = {"model": spec.model, "state_dict_sha256": spec.state_dict_sha256, "layer": spec.layer,
                    "pool": spec.pool, "input_kind": spec.input_kind, "input_size": spec.input.size}
    import torch

    torch.set_num_threads(threads)  # the PyTorch candidates' threads, as ONNX Runtime's
    timing = photo_batch(spec.input, spec.input_kind, min(batch_size, autoselect.MAX_TIMING_BATCH))
    key = autoselect.cache_key(identity, len(timing), threads, autoselect.engine_versions(),
                               autoselect.machine_description())
    candidates = auto_candidates(model, spec, onnx_path, workdir, threads, profile)
    engine, choice, report = autoselect.select(
        candidates, key, timing, lambda: autoselect.calibration_set(spec.input, spec.input_kind), rounds=rounds,
        remeasure=remeasure, log=progress)
    engine.auto_choice, engine.auto_report = choice, report
    (log or (lambda line: print(line, file=sys.stderr, flush=True)))(report)
    return engine


def auto_candidates(model, spec: EmbeddingSpec, onnx_path: Path, workdir: str | Path | None, threads: int,
                    profile: tuple[int, int, int]) -> dict[str, Callable[[], Engine]]:
    """name -> how to open it, the fp32 reference first (PyTorch eager when there is a PyTorch
    model, else ONNX Runtime on the file). GPU candidates only where PyTorch sees a GPU; one that
    cannot open (no onnxruntime-gpu, no TensorRT) is reported as unavailable, not fatal."""
    import torch

    from export.onnx_export import quantize_int8

    def int8_file() -> Path:
        path = Path(workdir) / "model-int8.onnx"
        if not path.is_file():
            quantize_int8(onnx_path, path, spec)
        return path

    def variant(**options) -> Callable[[], Engine]:  # a copy each: channels-last and .to(device) change the model
        return lambda: TorchEngine(copy.deepcopy(model), spec, **options)

    found: dict[str, Callable[[], Engine]] = {}
    if model is not None:
        found["torch-cpu"] = lambda: TorchEngine(model, spec)
    found["onnxruntime-cpu" + ("" if spec.precision == "fp32" else f"-{spec.precision}")] = \
        lambda: OnnxRuntimeEngine(onnx_path, threads=threads, profile=profile)
    if model is not None:
        found["torch-cpu-channels-last"] = variant(channels_last=True)
        found["torch-cpu-channels-last-bf16"] = variant(channels_last=True, autocast="bf16")
    if spec.precision == "fp32" and workdir is not None:
        found["onnxruntime-cpu-int8"] = lambda: OnnxRuntimeEngine(int8_file(), threads=threads, profile=profile)
    try:
        gpu = torch.cuda.is_available()
    except Exception:  # a broken CUDA install reads as no GPU
        gpu = False
    if gpu:
        from export.tensorrt import TensorRTEngine

        if model is not None:
            found["torch-cuda"] = variant(device="cuda")
            found["torch-cuda-channels-last-fp16"] = variant(device="cuda", channels_last=True, autocast="fp16")
        found["onnxruntime-cuda"] = lambda: OnnxRuntimeEngine(onnx_path, provider="cuda", profile=profile)
        found["onnxruntime-tensorrt"] = lambda: OnnxRuntimeEngine(onnx_path, provider="tensorrt", profile=profile)
        found[f"tensorrt-{spec.precision}"] = lambda: TensorRTEngine(onnx_path, profile=profile)
        if "onnxruntime-cpu-int8" in found:
            found["tensorrt-int8"] = lambda: TensorRTEngine(int8_file(), profile=profile)
    return found
