"""ONNX export of an ``EmbeddingModel``: one file, dynamic batch, metadata, parity-checked.

The dynamo exporter (the default of ``torch.onnx.export`` since torch 2.9) traces the wrapped
model with ``torch.export``; the batch axis is a ``torch.export.Dim`` and the example batch has two
images, so that the exporter cannot specialise the batch to 1. The weights go inside the file
(``external_data=False``) so that one file is the whole model.

What the model is travels with it as ONNX metadata (``metadata_props``): the key
``sslzoo.embedding`` holds the JSON of ``EmbeddingSpec`` plus the sslzoo version and opset, and a
few flat keys repeat the essentials for tools that show metadata as a table (Netron, ONNX Runtime's
``custom_metadata_map``); the keys and their readers are ``export.onnx_metadata``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from zoo.checkpoint import atomic_write
from zoo.errors import UsageError, ZooError
from zoo.registry import InputSpec

from export.embedding import EmbeddingModel, EmbeddingSpec, prepare_image, reference_embeddings
from export.onnx_metadata import (  # noqa: F401  (the file's names and metadata, re-exported)
    INPUT_NAME, METADATA_KEY, OUTPUT_NAME, metadata_dict, onnx_sha256, read_metadata, spec_from_metadata,
    write_metadata,
)
from export.options import MAX_BATCH, OPSETS
from export.runtime import OnnxRuntimeEngine

# Largest |ONNX Runtime - PyTorch| accepted on L2-normalised embeddings, per precision. fp16 and
# int8 are checked against the fp32 PyTorch model, so their bounds measure the precision loss.
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-3, "int8": 0.1}


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress lines and warnings; the CLI reports its own one-line result."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model: EmbeddingModel, spec: EmbeddingSpec, path: str | Path, opset: int | None = None) -> Path:
    """Export ``model`` to ``path`` (written atomically) with ``spec`` as metadata."""
    import onnx

    path = Path(path)
    if opset is not None and not OPSETS[0] <= opset <= OPSETS[1]:
        raise UsageError(f"--opset {opset}: the exporter writes opsets {OPSETS[0]} to {OPSETS[1]}")
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)  # the largest batch the file accepts
    example = model.example_input(2)
    kwargs = {} if opset is None else {"opset_version": opset}

    def write(tmp: Path) -> None:
        with _quiet():
            try:
                torch.onnx.export(model, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_shapes={"images": {0: batch}}, external_data=False, dynamo=True,
                                  verbose=False, **kwargs)
            except Exception as err:  # the exporter's errors are pages long: keep the first line
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ZooError(f"ONNX export of {spec.model} failed: {first[:300]}") from err
        proto = onnx.load(str(tmp))
        write_metadata(proto, spec)
        onnx.save(proto, str(tmp))

    atomic_write(path, write)
    return path


# ------------------------------------------------------------------------------------------------
# Real photos, prepared for a model: the parity check and the int8 calibration run on them.
# ------------------------------------------------------------------------------------------------

def photo_batch(spec: InputSpec, input_kind: str, count: int, offset: int = 0) -> np.ndarray:
    """``count`` shipped photos (cycling through them from ``offset``), prepared as one batch."""
    from zoo.photos import load_photos

    photos = list(load_photos().values())
    if not photos:
        raise ZooError("no shipped photos found (scikit-image is missing?); reinstall sslzoo")
    rows = [prepare_image(photos[(offset + i) % len(photos)], spec, input_kind) for i in range(count)]
    return np.stack(rows)


def calibration_batches(spec: InputSpec, input_kind: str, count: int = 32, batch: int = 8,
                        seed: int = 0) -> list[np.ndarray]:
    """Random crops (scale 0.35-1, any aspect 3/4-4/3) and flips of the shipped photos.

    Calibration sees real image statistics but not the exact centre crops that the parity check
    and the copy-detection evaluation use.
    """
    from zoo.photos import load_photos

    rng = np.random.default_rng(seed)
    photos = list(load_photos().values())
    rows = []
    for i in range(count):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        area = h * w * rng.uniform(0.35, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = int(min(h, max(8, round(np.sqrt(area / aspect)))))
        cw = int(min(w, max(8, round(np.sqrt(area * aspect)))))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = img[top:top + ch, left:left + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        rows.append(prepare_image(np.ascontiguousarray(crop), spec, input_kind))
    return [np.stack(rows[i:i + batch]) for i in range(0, len(rows), batch)]


def verify_onnx(model: EmbeddingModel, spec: EmbeddingSpec, path: str | Path,
                batch_sizes: Sequence[int] = (1, 3, 8), provider: str = "cpu") -> float:
    """Max |ONNX Runtime - PyTorch fp32| over real photos at each batch size; raises if too large.

    ``model`` is the fp32 PyTorch model, also for fp16 and int8 files: the check then measures
    what the reduced precision costs.
    """
    engine = OnnxRuntimeEngine(path, provider=provider)
    worst = 0.0
    for i, n in enumerate(batch_sizes):
        batch = photo_batch(spec.input, spec.input_kind, n, offset=i)
        ref = reference_embeddings(model, batch)
        out = engine.embed(batch)
        if out.shape != ref.shape:
            raise ZooError(f"{path}: ONNX Runtime returned shape {out.shape}, PyTorch {ref.shape}")
        worst = max(worst, float(np.abs(out - ref).max()))
    tol = TOLERANCE[spec.precision]
    if not np.isfinite(worst) or worst > tol:
        raise ZooError(f"{path}: ONNX Runtime differs from PyTorch by {worst:.3g} on real photos "
                       f"(allowed {tol:g} for {spec.precision}); the export is wrong, please report it")
    return worst


def quantize_int8(fp32_path: str | Path, out_path: str | Path, spec: EmbeddingSpec,
                  batches: Iterable[np.ndarray] | None = None) -> Path:
    """Static QDQ int8 quantisation with ONNX Runtime, calibrated on real photos.

    Weights are int8 per output channel, activations uint8 with ranges from the calibration batches
    (min/max): ONNX Runtime's CPU provider fuses every QuantizeLinear/DequantizeLinear pair around a
    Conv or Gemm into an integer kernel (VNNI/AMX where the CPU has them), and TensorRT 11 reads the
    same Q/DQ nodes as explicit quantisation. Only the network's convolutions, matrix products and
    residual additions are quantised: the preprocessing and the final L2 normalisation stay float.
    """
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = list(batches) if batches is not None else calibration_batches(spec.input, spec.input_kind)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            batch = next(self._it, None)
            return None if batch is None else {INPUT_NAME: batch}

    int8_spec = _replace(spec, precision="int8")

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory() as work, _quiet():
            pre = Path(work) / "pre.onnx"
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)  # ORT's symbolic pass trips on dynamo graphs
            quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            op_types_to_quantize=["Conv", "Gemm", "MatMul", "Add", "Relu", "MaxPool", "AveragePool"],
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        import onnx

        proto = onnx.load(str(tmp))
        write_metadata(proto, int8_spec)
        onnx.save(proto, str(tmp))

    atomic_write(out_path, write)
    return Path(out_path)


def _replace(spec: EmbeddingSpec, **changes) -> EmbeddingSpec:
    import dataclasses

    return dataclasses.replace(spec, **changes)
