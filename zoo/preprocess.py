"""Turn images into exactly the tensor a model's weights expect (its ``InputSpec``).

This is the reference implementation: the ONNX export puts the same steps inside its graph and is
checked against this function. Every step is plain tensor arithmetic so that it can be traced.
Resize and centre crop round as torchvision's ``Resize(int)`` and ``CenterCrop`` do, the
pipelines the original authors evaluated with, so features match theirs on any aspect ratio.

``preprocess`` takes what users of timm and torchvision hold: PIL images, (H, W, C) numpy arrays
(uint8, or float in [0, 1]), (C, H, W) tensors (uint8, or float in [0, 1]) and lists of them.
``transforms_for(name)`` is the same preprocessing as a picklable torchvision-style transform.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    side at least ``at_least`` (the one resize arithmetic of preprocessing, export and training).

    The longer side is ``int(shorter * long / short)``, truncated, as torchvision's ``resize`` with
    an int size computes it (``_compute_resized_output_size``): 300x451 to 256 gives 256x384, not 385."""
    short, long = min(h, w), max(h, w)
    new_long = int(shorter * long / short)
    nh, nw = (new_long, shorter) if h > w else (shorter, new_long)
    return max(at_least, nh), max(at_least, nw)


def centre_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` of the last two dimensions, placed as torchvision's
    ``center_crop`` places it: offset ``int(round((side - size) / 2))`` (Python's round, half to even)."""
    h, w = image.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
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


# Float images hold values in [0, 1]; resampling filters overshoot a little (bicubic by a few
# per cent), so up to 1/32 beyond is taken (and clamped). 0-255 floats or mean/std-normalised
# tensors (black is about -2) are refused rather than normalised a second time.
_FLOAT_SLACK = 1 / 32


def _is_pil(image: Any) -> bool:
    return type(image).__module__.startswith("PIL.") and hasattr(image, "getexif")


def _unit_float(x: torch.Tensor) -> torch.Tensor:
    """(C, H, W) uint8 or float values -> float32 in [0, 1]; a one-line error for other dtypes and ranges."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise UsageError(f"expected a uint8 image or a float one in [0, 1], got {str(x.dtype).removeprefix('torch.')}")
    x = x.float()
    if x.numel():
        low, high = float(x.min()), float(x.max())
        if not (low >= -_FLOAT_SLACK and high <= 1 + _FLOAT_SLACK):  # also catches NaN
            raise UsageError(f"a float image must hold values in [0, 1], got {low:.4g}..{high:.4g}; divide 0-255 "
                             "values by 255, and pass images before mean/std normalisation")
    return x.clamp(0.0, 1.0)


def image_to_float_chw(image: Any) -> torch.Tensor:
    """One image -> (3, H, W) float32 RGB in [0, 1].

    ``image``: a PIL image (decoded as ``zoo.photos.read_image`` decodes files: EXIF orientation,
    CMYK, palette, 16-bit, alpha dropped); an (H, W) or (H, W, C) numpy array; or a (C, H, W)
    tensor, torchvision's layout. Arrays and tensors are uint8, or float in [0, 1]; C is 1 (grey,
    repeated), 3 (RGB) or 4 (RGBA, alpha dropped). Anything else is a one-line ``UsageError``."""
    if _is_pil(image):
        from zoo.photos import pil_to_rgb8

        image = pil_to_rgb8(image)
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3):
            raise UsageError(f"expected an (H, W) or (H, W, C) image array, got shape {image.shape}")
        arr = image[..., None] if image.ndim == 2 else image
        x = torch.from_numpy(np.array(arr, copy=True) if not arr.flags.writeable else arr).permute(2, 0, 1)
        layout = "(H, W, C) array"
    elif isinstance(image, torch.Tensor):
        x = image.detach().cpu()
        x = x[None] if x.dim() == 2 else x
        if x.dim() != 3:
            raise UsageError(f"expected a (C, H, W) image tensor, got shape {tuple(image.shape)}")
        layout = "(C, H, W) tensor"
    else:
        raise UsageError(f"expected a PIL image, an (H, W, C) numpy array or a (C, H, W) tensor, got "
                         f"{type(image).__name__}")
    if x.shape[0] not in (1, 3, 4):
        raise UsageError(f"expected a {layout} with 1, 3 or 4 channels, got shape {tuple(image.shape)}")
    x = _unit_float(x)
    return x.expand(3, -1, -1) if x.shape[0] == 1 else x[:3]


def _as_images(images: Any) -> list:
    """One image or several: a list/tuple, a 4-D array (N, H, W, C) or a 4-D tensor (N, C, H, W)."""
    if _is_pil(images):
        return [images]
    if isinstance(images, np.ndarray):
        return [images] if images.ndim in (2, 3) else list(images)
    if isinstance(images, torch.Tensor):
        return [images] if images.dim() in (2, 3) else list(images)
    if isinstance(images, (list, tuple)):
        return list(images)
    raise UsageError(f"expected an image or a list of images, got {type(images).__name__}")


def _one(image: Any, spec: InputSpec) -> torch.Tensor:
    """One image -> (C, size, size), resized, cropped, converted and normalised for ``spec``."""
    return convert_and_normalise(resize_and_crop(image_to_float_chw(image), spec)[None], spec)[0]


def preprocess(images: Any, spec: InputSpec) -> torch.Tensor:
    """Images (one or a list; see ``image_to_float_chw`` for the kinds) -> an (N, C, size, size)
    float32 batch for the model whose input is ``spec``."""
    images = _as_images(images)
    if len(images) == 0:
        raise UsageError("no images to preprocess")
    return torch.stack([_one(image, spec) for image in images])


@dataclass(frozen=True)
class ImageTransform:
    """A model's preprocessing as a torchvision-style transform: called on one image (PIL image,
    (H, W, C) array or (C, H, W) tensor), it returns the (C, size, size) float32 tensor the model
    expects. Plain data, so it pickles: DataLoader workers started with spawn receive it."""

    input: InputSpec

    def __call__(self, image: Any) -> torch.Tensor:
        return _one(image, self.input)

    def __repr__(self) -> str:
        i = self.input
        return (f"ImageTransform(resize={i.resize}, centre_crop={i.size}, interpolation={i.interpolation!r}, "
                f"colour_space={i.colour_space!r}, value_range={i.value_range}, mean={i.mean}, std={i.std})")


def transforms_for(model: Any) -> ImageTransform:
    """The eval preprocessing of ``model`` -- a registry name, a model from ``create_model`` or
    ``from_pretrained`` (its ``entry``), or an ``InputSpec`` -- as a picklable transform."""
    from zoo.registry import get_model_entry

    if isinstance(model, InputSpec):
        return ImageTransform(model)
    if isinstance(model, str):
        return ImageTransform(get_model_entry(model).input)
    entry = getattr(model, "entry", None)
    if entry is None:
        raise UsageError(f"transforms_for takes a registry name, an sslzoo model or an InputSpec, got "
                         f"{type(model).__name__}")
    return ImageTransform(entry.input)
