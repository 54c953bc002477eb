"""Batched random augmentations for the multi-view methods (SimCLR, BYOL, NPID, PIRL, MultiGrain).

They work on a whole (B, C, H, W) float batch in [0, 1] at once, with per-image random
parameters, so that making two views of a batch costs a few tensor operations instead of a
Python loop over images (on 2 CPU cores the loop would cost more than the network).
Every function takes a ``torch.Generator`` so that runs are reproducible.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def _coin(n: int, p: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator) < p


def random_resized_crop(images: torch.Tensor, size: int, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop a random area fraction in ``scale`` with aspect ratio in ``ratio`` (log-uniform) from
    each image, resize it to ``size`` x ``size`` (bilinear) and mirror it with probability ``flip_p``.

    Crops that would not fit are shrunk to fit, so every crop lies inside its image.
    """
    b = images.shape[0]
    area = _uniform(b, *scale, generator)
    log_ratio = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), generator)
    aspect = torch.exp(log_ratio)
    # width and height as fractions of the image side (both <= 1)
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * (1 - w) + w / 2) * 2 - 1  # centre in [-1, 1] coords
    cy = (torch.rand(b, generator=generator) * (1 - h) + h / 2) * 2 - 1
    flip = torch.where(_coin(b, flip_p, generator), -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta.to(images), (b, images.shape[1], size, size), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _grey(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images
    weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def colour_jitter(images: torch.Tensor, brightness: float = 0.4, contrast: float = 0.4,
                  saturation: float = 0.4, p: float = 0.8,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """With probability ``p`` per image: scale brightness, contrast (around the image's mean grey)
    and saturation (around its grey version) by factors drawn in [1 - s, 1 + s]. Saturation is
    skipped for one-channel images; hue is not changed (it does not exist for grey images)."""
    b = images.shape[0]
    apply = _coin(b, p, generator).to(images.device).view(b, 1, 1, 1)

    def factor(s: float) -> torch.Tensor:
        return _uniform(b, max(0.0, 1 - s), 1 + s, generator).to(images).view(b, 1, 1, 1)

    out = images * factor(brightness)
    mean = _grey(out).mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * factor(contrast) + mean
    if images.shape[1] == 3:
        grey = _grey(out)
        out = (out - grey) * factor(saturation) + grey
    return torch.where(apply, out.clamp(0, 1), images)


def random_greyscale(images: torch.Tensor, p: float = 0.2,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace an RGB image by its grey version (kept on 3 channels) with probability ``p``."""
    if images.shape[1] == 1:
        return images
    apply = _coin(images.shape[0], p, generator).to(images.device).view(-1, 1, 1, 1)
    return torch.where(apply, _grey(images).expand_as(images), images)


def gaussian_blur(images: torch.Tensor, p: float = 0.5, sigma: tuple[float, float] = (0.1, 2.0),
                  kernel_fraction: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Blur with probability ``p``, sigma uniform in ``sigma`` (in pixels), kernel about
    ``kernel_fraction`` of the image side (SimCLR: 10 %, odd, at least 3)."""
    b, c, h, w = images.shape
    k = max(3, int(kernel_fraction * h) // 2 * 2 + 1)
    s = _uniform(b, *sigma, generator).to(images).view(b, 1)
    x = torch.arange(k, dtype=images.dtype, device=images.device) - k // 2
    kernel = torch.exp(-(x.view(1, -1) ** 2) / (2 * s ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (b, k), separable
    flat = images.reshape(1, b * c, h, w)
    per_channel = kernel.repeat_interleave(c, dim=0)
    flat = F.pad(flat, (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    flat = F.conv2d(flat, per_channel.view(b * c, 1, 1, k), groups=b * c)
    flat = F.conv2d(flat, per_channel.view(b * c, 1, k, 1), groups=b * c)
    blurred = flat.view(b, c, h, w)
    apply = _coin(b, p, generator).to(images.device).view(b, 1, 1, 1)
    return torch.where(apply, blurred, images)


def solarize(images: torch.Tensor, p: float = 0.2, threshold: float = 0.5,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Invert the pixels above ``threshold`` with probability ``p`` (BYOL's second view)."""
    apply = _coin(images.shape[0], p, generator).to(images.device).view(-1, 1, 1, 1)
    return torch.where(apply & (images >= threshold), 1.0 - images, images)


@dataclass(frozen=True)
class ViewRecipe:
    """One view's augmentation: crop scale, colour jitter strength and the blur/solarize odds.

    ``size`` 0 means the model's input size.
    """

    size: int = 0
    crop_scale: tuple[float, float] = (0.08, 1.0)
    jitter: tuple[float, float, float] = (0.4, 0.4, 0.4)  # brightness, contrast, saturation
    jitter_p: float = 0.8
    grey_p: float = 0.2
    blur_p: float = 0.5
    solarize_p: float = 0.0

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = random_resized_crop(images, self.size, self.crop_scale, generator=generator)
        if self.jitter_p > 0:
            x = colour_jitter(x, *self.jitter, p=self.jitter_p, generator=generator)
        if self.grey_p > 0:
            x = random_greyscale(x, self.grey_p, generator=generator)
        if self.blur_p > 0:
            x = gaussian_blur(x, self.blur_p, generator=generator)
        if self.solarize_p > 0:
            x = solarize(x, self.solarize_p, generator=generator)
        return x


def view_transform(spec, view: ViewRecipe) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-sample transform: uint8 (C, H, W) image -> one augmented view, normalised for ``spec``
    (a ``zoo.registry.InputSpec``) exactly as ``zoo.preprocess`` does at inference."""
    from training.transforms import normalise, to_rgb_float

    view = dataclasses.replace(view, size=view.size or spec.size)

    def transform(image: torch.Tensor) -> torch.Tensor:
        if image.shape[0] == 1:  # grey: every colour step is the same on one channel, and cheaper
            return normalise(view(image[None].float().div(255.0))[0].expand(3, -1, -1), spec)
        return normalise(view(to_rgb_float(image)[None])[0], spec)

    return transform


class Views:
    """The augmented views a method trains on, one per recipe (two for SimCLR and BYOL, three
    copies for repeated augmentation), made either per sample or per batch.

    Per sample (``batched=False``): ``transform()`` is the data loader's transform and returns the
    tuple of normalised views; works for images of any size (ImageNet). Per batch
    (``batched=True``): ``transform()`` only scales each image to a square ``spec.resize`` canvas
    in [0, 1], and the method calls ``views(batch["x"])`` in its forward pass, which augments the
    whole batch in a few tensor operations and normalises it. On 2 CPU cores that halves the cost
    of a small-image step; the randomness then comes from torch's global generator, which the
    engine checkpoints, so runs stay reproducible and resumable.
    """

    def __init__(self, spec, recipes, batched: bool = False):
        self.spec, self.batched = spec, batched
        self.recipes = [dataclasses.replace(r, size=r.size or spec.size) for r in recipes]

    def transform(self) -> Callable[[torch.Tensor], Any]:
        if not self.batched:
            transforms = [view_transform(self.spec, r) for r in self.recipes]
            return lambda image: tuple(t(image) for t in transforms)
        from training.transforms import to_rgb_float
        from zoo.preprocess import resize_and_crop

        canvas = dataclasses.replace(self.spec, size=self.spec.resize)
        return lambda image: resize_and_crop(to_rgb_float(image), canvas)

    def __call__(self, x) -> tuple[torch.Tensor, ...]:
        """The batch's views: made here when batched, else already made by the data loader."""
        if not self.batched:
            return tuple(x) if isinstance(x, (tuple, list)) else (x,)
        from zoo.preprocess import convert_and_normalise

        with torch.autocast(x.device.type, enabled=False):
            return tuple(convert_and_normalise(r(x.float()), self.spec) for r in self.recipes)


def copy_pair_transform(spec) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Per-sample transform for training copy detection: uint8 (C, H, W) image -> (the image, a
    strongly distorted copy of it), each preprocessed for ``spec`` as at inference.

    The copy is made by ``zoo.retrieval``'s chain (a geometric change, a photometric one and a
    degradation, after a crop half the time): the distortions the copy-detection benchmarks draw
    from, so the network learns to ignore exactly them. The image itself stays undistorted because
    a copy-detection database holds originals. The random numbers come from torch's global
    generator (one draw seeds numpy's), which ``training.data.SampleView`` seeds per sample.
    """
    import numpy as np

    from training.transforms import eval_transform
    from zoo.retrieval import copy_steps, distort

    preprocess = eval_transform(spec)

    def transform(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        rgb = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
        copy = distort(rgb.permute(1, 2, 0).numpy(), rng, copy_steps(rng))
        return preprocess(image), preprocess(torch.from_numpy(copy).permute(2, 0, 1).contiguous())

    return transform
