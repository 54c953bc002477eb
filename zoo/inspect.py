"""Facts about a built model: layer output shapes, parameter counts, timings."""

from __future__ import annotations

import time

import torch
from torch import nn

from zoo.backbones import Backbone
from zoo.registry import InputSpec


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def nominal_input(spec: InputSpec, batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, 3 if spec.sobel_in_model else spec.channels, spec.size, spec.size)


@torch.no_grad()
def layer_shapes(model: Backbone, spec: InputSpec) -> dict[str, tuple[int, ...]]:
    """Output shape (without the batch axis) of every feature layer at the nominal input size."""
    was_training = model.training
    model.eval()
    try:
        feats = model.forward_features(nominal_input(spec))
    finally:
        model.train(was_training)
    return {name: tuple(t.shape[1:]) for name, t in feats.items()}


@torch.no_grad()
def time_forward(model: Backbone, batch: torch.Tensor, repeats: int = 1) -> float:
    """Mean seconds per image of ``forward_features`` over all layers (after one warm-up)."""
    model.eval()
    model.forward_features(batch)
    start = time.perf_counter()
    for _ in range(repeats):
        model.forward_features(batch)
    return (time.perf_counter() - start) / (repeats * batch.shape[0])


# Two forwards of the same weights on the same input may sum in another order (threaded BLAS picks
# its blocking at run time, by load and memory alignment): each K-term dot product is exact to
# about K * 2**-24 of the sum of its |terms| in float32, so for the largest layers here (K = 25,088
# in VGG's fc6) outputs may differ in the 4th significant digit of the layer's largest value.
FEATURE_RTOL = 2e-4


def first_differing_layer(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                          rtol: float = FEATURE_RTOL) -> str | None:
    """The first layer whose features differ between ``a`` and ``b`` by more than ``rtol`` of the
    layer's largest |value| (or whose names or shapes differ), else None. Weights are compared bit
    for bit (``zoo.checkpoint.state_dict_sha256``); features of two forwards only this closely."""
    if list(a) != list(b):
        return next((k for k in [*a, *b] if k not in a or k not in b), "layer order")
    for layer in a:
        x, y = a[layer], b[layer]
        scale = float(x.abs().max()) if x.numel() else 0.0
        if x.shape != y.shape or not bool(((x - y).abs() <= rtol * (scale or 1.0)).all()):
            return layer
    return None

