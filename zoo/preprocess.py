"""Turn decoded images into exactly the tensor a model's weights expect (its ``InputSpec``).

This is the reference implementation: the ONNX export puts the same steps inside its graph and is
checked against this function. Every step is plain tensor arithmetic so that it can be traced.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from zoo.backbones.base import LUMA_BT601 as _LUMA
from zoo.errors import UsageError
from zoo.registry import InputSpec

# sRGB (D65) -> XYZ, and the D65 white point; the CIE Lab definition.
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_D65_WHITE = (0.95047, 1.0, 1.08883)


def rgb_to_grey(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    w = torch.tensor(_LUMA, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb * w).sum(1, keepdim=True)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) sRGB in [0, 1] -> CIE Lab (L in [0, 100], a and b roughly [-128, 127])."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = torch.tensor(_RGB_TO_XYZ, dtype=rgb.dtype, device=rgb.device)
    xyz = torch.einsum("ij,njhw->nihw", m, linear)
    xyz = xyz / torch.tensor(_D65_WHITE, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    eps = (6.0 / 29.0) ** 3
    f = torch.where(xyz > eps, xyz.clamp_min(eps) ** (1.0 / 3.0), xyz / (3 * (6.0 / 29.0) ** 2) + 4.0 / 29.0)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def convert_and_normalise(rgb: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> the colour space, scale and normalisation of ``spec``."""
    if spec.colour_space == "grey":
        x = rgb_to_grey(rgb)
    elif spec.colour_space == "bgr":
        x = rgb.flip(1)
    elif spec.colour_space == "lab":
        x = rgb_to_lab(rgb)
    else:
        x = rgb
    if spec.colour_space != "lab":
        x = x * spec.value_range
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def shorter_side_size(h: int, w: int, shorter: int, at_least: int) -> tuple[int, int]:
    """(height, width) after scaling the shorter side of an ``h`` x ``w`` image to ``shorter``, each
    side at least ``at_least`` (the one resize arithmetic of preprocessing, export and training)."""
    scale = shorter / min(h, w)
    return max(at_least, round(h * scale)), max(at_least, round(w * scale))


def centre_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` of the last two dimensions (the top-left one of two middles)."""
    h, w = image.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return image[..., top:top + size, left:left + size]


def resized_size(h: int, w: int, spec: InputSpec) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to ``spec.resize`` (at least ``spec.size``);
    a one-line error for images too large or elongated (see ``zoo.photos.check_image_size``)."""
    from zoo.photos import check_image_size

    check_image_size(h, w)
    return shorter_side_size(h, w, spec.resize, spec.size)


def resize_and_crop(rgb: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """(3, H, W) float -> (3, size, size): shorter side to ``spec.resize``, then centre crop."""
    _, h, w = rgb.shape
    nh, nw = resized_size(h, w, spec)
    if (nh, nw) != (h, w):
        rgb = F.interpolate(rgb[None], size=(nh, nw), mode=spec.interpolation, antialias=True,
                            align_corners=False)[0]
    return centre_crop(rgb, spec.size)


def hwc_uint8_to_float_chw(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """An (H, W, 3) or (H, W) uint8 array -> (3, H, W) float32 in [0, 1]."""
    if isinstance(image, np.ndarray) and not image.flags.writeable:
        image = image.copy()  # torch refuses to wrap read-only memory without a warning
    arr = torch.as_tensor(image)
    if arr.dim() == 2:
        arr = arr[..., None].expand(-1, -1, 3)
    if arr.dim() != 3 or arr.shape[-1] not in (3, 4):
        raise UsageError(f"expected an (H, W, 3) RGB image, got shape {tuple(arr.shape)}")
    if arr.dtype != torch.uint8:
        raise UsageError(f"expected a uint8 image, got {arr.dtype}")
    return arr[..., :3].permute(2, 0, 1).float() / 255.0


def preprocess(images: np.ndarray | Sequence[np.ndarray], spec: InputSpec) -> torch.Tensor:
    """Decoded uint8 RGB images (one or a list) -> an (N, C, size, size) float32 batch for the model."""
    if isinstance(images, (np.ndarray, torch.Tensor)) and np.asarray(images).ndim in (2, 3):
        images = [images]
    if len(images) == 0:
        raise UsageError("no images to preprocess")
    batch = torch.stack([resize_and_crop(hwc_uint8_to_float_chw(img), spec) for img in images])
    return convert_and_normalise(batch, spec)
