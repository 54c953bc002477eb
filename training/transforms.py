"""Per-sample transforms: uint8 (C, H, W) image -> the model's input tensor.

The last step of every transform is ``zoo.preprocess``'s own colour conversion and normalisation
for the model's ``InputSpec``, so training, evaluation and deployment feed a model the same way.
Random steps use torch's global generator, which ``training.data.SampleView`` seeds per sample.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.nn import functional as F

from zoo.preprocess import convert_and_normalise, resize_and_crop, shorter_side_size
from zoo.registry import InputSpec

Transform = Callable[[torch.Tensor], torch.Tensor]


def to_rgb_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 (1 or 3, H, W) tensor -> float (3, H, W) in [0, 1]; grey is repeated into three channels,
    as ``zoo.preprocess.image_to_float_chw`` does for 2-D arrays (the inference side, which takes
    (H, W, 3) arrays), so grey models see exactly what they see at inference."""
    x = image.float().div_(255.0)
    return x.expand(3, -1, -1) if x.shape[0] == 1 else x[:3]


def normalise(rgb: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """float RGB (3, H, W) in [0, 1] -> the model's colour space, scale and normalisation."""
    return convert_and_normalise(rgb[None], spec)[0]


def eval_transform(spec: InputSpec) -> Transform:
    """The reference preprocessing (resize the shorter side, centre crop, normalise)."""
    return lambda image: normalise(resize_and_crop(to_rgb_float(image), spec), spec)


def resize_shorter(rgb: torch.Tensor, size: int) -> torch.Tensor:
    h, w = rgb.shape[-2:]
    if min(h, w) == size:
        return rgb
    return F.interpolate(rgb[None], size=shorter_side_size(h, w, size, size), mode="bilinear", antialias=True,
                         align_corners=False)[0]


def random_crop(rgb: torch.Tensor, size: int, padding: int = 0) -> torch.Tensor:
    """A random ``size`` x ``size`` crop after zero padding (the CIFAR recipe: 32 with padding 4)."""
    if padding:
        rgb = F.pad(rgb, (padding,) * 4)
    h, w = rgb.shape[-2:]
    top = int(torch.randint(0, h - size + 1, ()))
    left = int(torch.randint(0, w - size + 1, ()))
    return rgb[:, top:top + size, left:left + size]


def random_hflip(rgb: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    return rgb.flip(-1) if float(torch.rand(())) < p else rgb


def random_resized_crop(rgb: torch.Tensor, size: int, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Inception-style crop: area fraction in ``scale``, log-uniform aspect ratio, resized to size.

    One image at a time with torchvision's sampling (up to ten tries, then a centre crop), for the
    per-sample recipes. ``training.methods.views.random_resized_crop`` is the batched version (one
    draw per image, crops shrunk to fit, grid sampling); they draw different random numbers and
    give different pixels, so each stays with the recipes whose weights were trained with it.
    """
    from torchvision.transforms.v2 import functional as TF
    from torchvision.transforms.v2 import RandomResizedCrop

    top, left, h, w = RandomResizedCrop.get_params(rgb, list(scale), list(ratio))
    return TF.resized_crop(rgb, top, left, h, w, [size, size], antialias=True)


def small_crop_flip(spec: InputSpec, padding: int = 4) -> Transform:
    """Resize to the model's size, random crop with ``padding``, horizontal flip, normalise."""
    def transform(image: torch.Tensor) -> torch.Tensor:
        rgb = resize_shorter(to_rgb_float(image), spec.resize)
        rgb = random_hflip(random_crop(rgb, spec.size, padding))
        return normalise(rgb, spec)
    return transform


def resized_crop_flip(spec: InputSpec, scale: tuple[float, float] = (0.08, 1.0)) -> Transform:
    """ImageNet training augmentation: random-resized crop to the model's size, flip, normalise."""
    def transform(image: torch.Tensor) -> torch.Tensor:
        rgb = random_hflip(random_resized_crop(to_rgb_float(image), spec.size, scale))
        return normalise(rgb, spec)
    return transform


def rotate_batch(x: torch.Tensor, quarter_turns: Sequence[int] = (0, 1, 2, 3)) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of (N, C, H, W) rotated by each of ``quarter_turns`` x 90 degrees anticlockwise.

    Returns the (len(quarter_turns) * N, C, H, W) batch, grouped by rotation, and the label of each
    row: the position of its rotation in ``quarter_turns``.
    """
    rotated = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in quarter_turns])
    labels = torch.arange(len(quarter_turns), device=x.device).repeat_interleave(x.shape[0])
    return rotated, labels


def rotate_each(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Image i of (B, C, H, W) turned by ``turns[i]`` quarter turns anticlockwise (square images)."""
    out = x.clone()
    for k in range(1, 4):
        chosen = turns == k
        if bool(chosen.any()):
            out[chosen] = torch.rot90(x[chosen], k, dims=(-2, -1))
    return out
