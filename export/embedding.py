"""The exported computation: images in, L2-normalised embeddings out, all inside one module.

``EmbeddingModel`` wraps a zoo backbone with the model's own input conversion (the same
``zoo.preprocess.convert_and_normalise`` the PyTorch reference uses: scaling, colour space, mean
and std; Sobel is part of the backbone), one feature layer, a pooling and the L2 normalisation, so
that an ONNX file or a TensorRT engine made from it needs nothing but decoded, resized and
centre-cropped pixels.

Two input layouts:

* ``uint8``: (N, H, W, 3) RGB bytes, as image decoders produce them (the default: 4x less data
  to move than floats, and nothing to get wrong about scaling);
* ``float``: (N, 3, H, W) RGB float32 in [0, 1].

Resizing stays outside (``prepare_image``): antialiased resizing of arbitrary-sized photos is a
decoder's job, and a fixed-size input lets fully connected layers (AlexNet/VGG fc6, fc7) export.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo.checkpoint import state_dict_sha256  # noqa: F401  (re-exported)
from zoo.errors import UsageError
from zoo.pooling import gem
from zoo.preprocess import centre_crop, convert_and_normalise, image_to_float_chw, resize_and_crop, resized_size
from zoo.registry import InputSpec

from export.options import INPUT_KINDS, POOLINGS

GEM_P = 3.0  # MultiGrain / cirtorch's usual generalised-mean exponent


def pool_features(x: torch.Tensor, pool: str) -> torch.Tensor:
    """Feature map (N, C, H, W) -> (N, C) with ``pool``; fully connected outputs pass through."""
    if x.dim() == 2:
        return x
    if pool == "avg":
        return x.mean(dim=(2, 3))
    if pool == "max":
        return x.amax(dim=(2, 3))
    if pool == "gem":
        return gem(x, GEM_P)
    raise UsageError(f"unknown pooling {pool!r}; choose one of {', '.join(POOLINGS)}")


def first_non_finite_row(x: np.ndarray, chunk: int = 1 << 16) -> int | None:
    """Index of the first row of ``x`` holding a NaN or an infinity, or None. Read in chunks, so a
    memory-mapped matrix is not loaded whole. A NaN embedding would be indexed and then returned as
    a neighbour (FAISS ranks it anyway), so every producer and reader of embeddings checks."""
    for start in range(0, len(x), chunk):
        block = np.asarray(x[start:start + chunk])
        bad = ~np.isfinite(block).reshape(len(block), -1).all(axis=1)
        if bad.any():
            return start + int(np.argmax(bad))
    return None


def l2_normalise(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows to unit length. Written out rather than ``F.normalize``, which exports with an extra
    Expand of a dynamic shape; this exports as ReduceL2, Clip and Div."""
    return x / x.norm(p=2, dim=1, keepdim=True).clamp_min(eps)


@dataclass(frozen=True)
class EmbeddingSpec:
    """What an exported embedding model computes; it travels as ONNX metadata (see ``export.onnx_export``)."""

    model: str  # registry name
    source: str  # registry name or checkpoint folder it was built from
    weights: str  # "checkpoint" (a folder), "published" (a registry name's weights) or "random-init"
    state_dict_sha256: str  # of the state dict actually exported (zoo.checkpoint.state_dict_sha256)

    layer: str
    pool: str  # avg | gem | max, or "none" for a fully connected layer (already a vector)
    input_kind: str
    input: InputSpec
    dim: int
    precision: str = "fp32"  # fp32 | fp16 | int8
    weights_origin: str = ""  # e.g. "shipped sslzoo/simclr-resnet-small-fmnist@main (...)", "random-init"
    weights_file_sha256: str = ""  # sha256 of model.safetensors, as config.json and the model card record it

    @property
    def weights_sha256(self) -> str:
        """The old name of ``state_dict_sha256`` (not the file's hash: that is ``weights_file_sha256``)."""
        return self.state_dict_sha256

    def input_shape(self, batch: int | str = "N") -> tuple:
        s = self.input.size
        return (batch, s, s, 3) if self.input_kind == "uint8" else (batch, 3, s, s)


class EmbeddingModel(nn.Module):
    """Backbone + preprocessing + pooling + L2 normalisation as one traceable module.

    ``half=True`` runs the backbone in float16 (for the GPU fast paths: TensorRT 11 is strongly
    typed and takes its precision from the ONNX); preprocessing, pooling and normalisation stay in
    float32 so that the output is float32 whatever the precision.
    """

    def __init__(self, backbone: nn.Module, spec: InputSpec, layer: str, pool: str = "avg",
                 input_kind: str = "uint8", half: bool = False):
        super().__init__()
        if pool not in POOLINGS:
            raise UsageError(f"unknown pooling {pool!r}; choose one of {', '.join(POOLINGS)}")
        if input_kind not in INPUT_KINDS:
            raise UsageError(f"unknown input kind {input_kind!r}; choose one of {', '.join(INPUT_KINDS)}")
        backbone.resolve_layers([layer])  # one-line error naming the layers if unknown
        self.backbone = backbone.eval()
        self.spec = spec
        self.layer = layer
        self.pool = pool
        self.input_kind = input_kind
        self.half = half
        if half:
            self.backbone.half()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The chosen layer's output for a batch of images, before pooling."""
        if self.input_kind == "uint8":
            rgb = images.permute(0, 3, 1, 2).float() / 255.0
        else:
            rgb = images
        x = convert_and_normalise(rgb, self.spec)
        if self.half:
            x = x.half()
        # The stages are run directly (not through forward_features) to keep the traced graph free
        # of the eager input checks; the stage list is the same one forward_features walks.
        for name, stage in self.backbone.stages():
            x = stage(x)
            if name == self.layer:
                break
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return l2_normalise(pool_features(self.features(images), self.pool).float())

    def example_input(self, batch: int = 2) -> torch.Tensor:
        s = self.spec.size
        gen = torch.Generator().manual_seed(0)
        if self.input_kind == "uint8":
            return torch.randint(0, 256, (batch, s, s, 3), dtype=torch.uint8, generator=gen)
        return torch.rand(batch, 3, s, s, generator=gen)


def default_layer(model: nn.Module) -> str:
    """The registry's embedding layer, or the checkpoint's, or the deepest feature layer."""
    config = getattr(model, "checkpoint_config", None) or {}
    layer = (config.get("embedding") or {}).get("layer")
    entry = getattr(model, "entry", None)
    return layer or (entry.embedding_layer if entry is not None else "") or model.feature_layers[-1]


def load_backbone(name_or_dir: str) -> tuple[nn.Module, str]:
    """A checkpoint folder, a registry name (its published weights) or ``random:NAME``.

    Returns the eval-mode backbone and ``"checkpoint"``, ``"published"`` or ``"random-init"``. A
    registry name whose weights are nowhere to be found is a one-line error, never random weights.
    """
    from pathlib import Path

    import zoo
    from zoo.registry import RANDOM_PREFIX

    if Path(name_or_dir).is_dir():
        return zoo.from_pretrained(name_or_dir).eval(), "checkpoint"
    if name_or_dir.startswith(RANDOM_PREFIX):
        torch.manual_seed(0)  # random-init exports are reproducible
        return zoo.create_model(name_or_dir[len(RANDOM_PREFIX):]).eval(), "random-init"
    try:
        return zoo.create_model(name_or_dir, pretrained=True).eval(), "published"
    except zoo.WeightsNotAvailableError as err:
        raise zoo.WeightsNotAvailableError(f"{err}; `{RANDOM_PREFIX}{name_or_dir}` uses random weights") from None


def weights_description(backbone: nn.Module, weights: str) -> tuple[str, str]:
    """Where the weights came from (one phrase) and the sha256 of their file, for metadata."""
    config = getattr(backbone, "checkpoint_config", None) or {}
    file_sha = (config.get("weights") or {}).get("sha256", "")
    resolved = getattr(backbone, "checkpoint_source", None)
    if weights == "random-init" or resolved is None:
        return "random-init", file_sha
    if resolved.source == "local folder":
        return f"checkpoint folder {resolved.path}", file_sha
    return f"{resolved.source} {resolved.repo}@{resolved.revision} ({resolved.path})", file_sha


def build_embedding_model(backbone: nn.Module, source: str, weights: str, layer: str | None = None,
                          pool: str = "avg", input_kind: str = "uint8",
                          half: bool = False) -> tuple[EmbeddingModel, EmbeddingSpec]:
    entry = backbone.entry
    layer = layer or default_layer(backbone)
    sha = state_dict_sha256(backbone)  # before any half() conversion: the weights as shipped
    model = EmbeddingModel(backbone, entry.input, layer, pool, input_kind, half=half).eval()
    with torch.no_grad():
        feats = model.features(model.example_input(2))
    pooled = feats.dim() == 4  # fully connected layers (fc6, fc7) are vectors already
    dim = feats.shape[1]
    origin, file_sha = weights_description(backbone, weights)
    spec = EmbeddingSpec(model=entry.name, source=str(source), weights=weights, state_dict_sha256=sha,
                         layer=layer, pool=pool if pooled else "none", input_kind=input_kind, input=entry.input,
                         dim=int(dim), precision="fp16" if half else "fp32", weights_origin=origin,
                         weights_file_sha256=file_sha)
    return model, spec


def prepare_image(image: np.ndarray, spec: InputSpec, input_kind: str) -> np.ndarray:
    """A decoded (H, W, 3) uint8 photo -> one input row of an embedding model.

    ``float``: exactly ``zoo.preprocess.resize_and_crop`` (the reference). ``uint8``: the same
    resize (shorter side to ``spec.resize``, antialiased bilinear, then the centre crop) done by
    torch's uint8 kernel, about ten times faster than resizing floats; it differs from the rounded
    float reference by at most one grey level (a test checks this on the shipped photos).
    """
    if input_kind == "float":
        return resize_and_crop(image_to_float_chw(image), spec).numpy()
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or spec.interpolation != "bilinear":
        # the reference path: its one-line errors for bad inputs, and other filters than bilinear
        crop = resize_and_crop(image_to_float_chw(arr), spec)
        return (crop.permute(1, 2, 0) * 255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:  # grey, as the reference repeats it
        arr = np.repeat(arr, 3, axis=2)
    if arr.shape[-1] not in (3, 4):
        image_to_float_chw(arr)  # raises the reference's one-line error
    x = torch.from_numpy(np.require(arr[..., :3], requirements=["C", "W"])).permute(2, 0, 1)[None]
    h, w = arr.shape[:2]
    nh, nw = resized_size(h, w, spec)
    if (nh, nw) != (h, w):
        x = torch.nn.functional.interpolate(x.contiguous(memory_format=torch.channels_last), size=(nh, nw),
                                            mode=spec.interpolation, antialias=True, align_corners=False)
    return np.ascontiguousarray(centre_crop(x[0], spec.size).permute(1, 2, 0).numpy())


def reference_embeddings(model: EmbeddingModel, batch: np.ndarray) -> np.ndarray:
    """PyTorch output of the wrapped model on a prepared batch (the parity reference)."""
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(batch))).numpy()


def model_state_dict_sha256(model_meta: dict[str, Any]) -> str | None:
    """The state dict's sha256 in an extraction's or index's ``model`` metadata; older folders
    recorded it as ``weights_sha256``."""
    return model_meta.get("state_dict_sha256") or model_meta.get("weights_sha256")


def spec_to_metadata(spec: EmbeddingSpec) -> dict[str, Any]:
    import dataclasses

    d = dataclasses.asdict(spec)
    d["input"] = dataclasses.asdict(spec.input)
    return d
