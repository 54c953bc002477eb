"""Colorization: learn features by predicting the colours of a photograph from its lightness.

Zhang, Isola, Efros, "Colorful Image Colorization", ECCV 2016 (https://arxiv.org/abs/1603.08511);
Larsson, Maire, Shakhnarovich (arXiv 1603.06668) is the other colourisation-as-proxy paper. Facts
used, from the paper (Sec. 2):

* the network sees the lightness and predicts the two ab channels of CIE Lab, at a quarter of the
  input resolution (56x56 outputs for 224x224 inputs), as a classification over the ab plane cut
  into bins of size 10, keeping the bins in the sRGB gamut (313 in the paper's file
  ``pts_in_hull.npy``);
* targets are soft: each true ab value is spread over its 5 nearest bins with Gaussian weights of
  sigma 5;
* class rebalancing: a pixel's loss is weighted by ``w(q*)`` of its target's most likely bin ``q*``,
  ``w ∝ ((1 - λ) p̃ + λ / Q)^-1`` with λ = 0.5, where ``p̃`` is the empirical distribution of ab
  bins smoothed with a Gaussian of sigma 5, normalised so that ``E_p̃[w] = 1``;
* ADAM with β = (0.9, 0.99), weight decay 1e-3, learning rate 3e-5 dropped to 1e-5 and 3e-6 at
  200k and 375k iterations, about 450k iterations in all.

What sslzoo does its own way: the in-gamut bins are derived by a pure function (``ab_gamut_bins``:
a dense sRGB cube converted to Lab with ``zoo.preprocess.rgb_to_lab``; 261 bins of size 10, not the
paper's 313, whose gamut computation it does not spell out); the network's input is the model's
input spec, the grey (BT.601 luma) image for the small model rather than Lab's L, so that it reads
Fashion-MNIST in evaluation exactly as every other small model does; the prior ``p̃`` is estimated
from ``prior_images`` training images when a run starts, not from ImageNet; the network is a
ResNet whose deepest layer a small head (1x1 conv, bilinear upsampling, 1x1 conv) turns into the
per-pixel bin logits. Fashion-MNIST is grey, so the small recipe trains on random crops of the
shipped colour photographs (``--data photo-crops``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from training.data import limit_dataset
from training.engine import FitContext
from training.methods.common import BackboneMethod
from training.recipes import Optimizer, Schedule, method_recipes, paper_recipe, small_recipe, tiny_recipe
from training.transforms import random_hflip, random_resized_crop, to_rgb_float
from zoo.inspect import layer_shapes
from zoo.preprocess import convert_and_normalise, resize_and_crop, rgb_to_lab
from zoo.registry import InputSpec


@dataclass(frozen=True)
class ColorizationOptions:
    grid: float = 10.0           # ab bin size (paper: 10)
    neighbours: int = 5          # soft targets: nearest bins of each true ab value (paper: 5)
    sigma: float = 5.0           # their Gaussian weights (paper: 5)
    rebalance: float = 0.5       # λ, the uniform part of the rebalancing mixture (paper: 0.5)
    prior_sigma: float = 5.0     # smoothing of the empirical bin distribution (paper: 5)
    prior_images: int = 2048     # training images whose colours estimate that distribution
    output_stride: int = 4       # predictions at 1/4 of the input resolution (paper: 56 of 224)
    head_width: int = 128
    augment: str = "flip"        # "flip" (the data already crops: photo-crops) or "resized-crop-flip"


# ---------------------------------------------------------------------------------------------
# Quantised ab colours, soft targets, rebalancing, loss: pure functions
# ---------------------------------------------------------------------------------------------

def ab_gamut_bins(grid: float = 10.0, steps: int = 65) -> torch.Tensor:
    """(Q, 2) centres of the ab bins of size ``grid`` that some sRGB colour falls in, sorted by a then b.

    A ``steps``^3 cube of sRGB colours is converted to Lab, each colour's ab is rounded to the nearest
    multiple of ``grid``, and the distinct centres are kept (65 steps find every bin of size 10 that
    129 steps find: 261)."""
    g = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    cube = torch.stack(torch.meshgrid(g, g, g, indexing="ij")).reshape(1, 3, -1, 1)
    ab = rgb_to_lab(cube)[0, 1:, :, 0].T
    return torch.unique(torch.round(ab / grid), dim=0).float() * grid


def soft_encode(ab: torch.Tensor, bins: torch.Tensor, neighbours: int = 5, sigma: float = 5.0) -> torch.Tensor:
    """(N, 2, H, W) ab values -> (N, Q, H, W) soft targets: each value's ``neighbours`` nearest bins
    weighted by a Gaussian of its distance (``sigma``), summing to 1."""
    d2 = (ab.permute(0, 2, 3, 1)[..., None, :] - bins).pow(2).sum(-1)        # (N, H, W, Q)
    near, idx = d2.topk(min(neighbours, len(bins)), dim=-1, largest=False)
    w = torch.softmax(-near / (2 * sigma ** 2), dim=-1)                        # exp(-d²/2σ²), normalised
    return torch.zeros_like(d2).scatter_(-1, idx, w).permute(0, 3, 1, 2)


def nearest_bin(ab: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) ab values -> (N, H, W) index of the nearest bin centre."""
    return (ab.permute(0, 2, 3, 1)[..., None, :] - bins).pow(2).sum(-1).argmin(-1)


def rebalancing_weights(prior: torch.Tensor, bins: torch.Tensor, rebalance: float = 0.5,
                        sigma: float = 5.0) -> torch.Tensor:
    """(Q,) class weights ``w ∝ ((1 - λ) p̃ + λ / Q)^-1`` with ``E_p̃[w] = 1``, where ``p̃`` is ``prior``
    (a distribution over the bins) smoothed by a Gaussian of ``sigma`` over the bin centres."""
    kernel = torch.exp(-torch.cdist(bins.double(), bins.double()).pow(2) / (2 * sigma ** 2))
    smoothed = kernel @ prior.double()
    smoothed = smoothed / smoothed.sum()
    w = 1.0 / ((1 - rebalance) * smoothed + rebalance / len(bins))
    return (w / (smoothed * w).sum()).float()


def colour_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over pixels of the cross-entropy between soft ``target`` and ``logits`` (both (N, Q, H, W)),
    each pixel weighted by ``class_weights`` of its target's most likely bin (None: unweighted)."""
    ce = -(target * F.log_softmax(logits.float(), dim=1)).sum(1)
    if class_weights is None:
        return ce.mean()
    return (class_weights[target.argmax(1)] * ce).mean()


def lab_at(rgb: torch.Tensor, stride: int) -> torch.Tensor:
    """(N, 3, H, W) sRGB in [0, 1] -> its Lab averaged over ``stride`` x ``stride`` cells: the targets
    at the prediction resolution."""
    return F.avg_pool2d(rgb_to_lab(rgb.float()), stride) if stride > 1 else rgb_to_lab(rgb.float())


# ---------------------------------------------------------------------------------------------
# The head and the training input
# ---------------------------------------------------------------------------------------------

class DenseHead(nn.Module):
    """Feature map -> per-pixel logits at ``size``: 1x1 conv, BN, ReLU, bilinear upsampling, 1x1 conv."""

    def __init__(self, in_channels: int, width: int, classes: int):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.classify = nn.Conv2d(width, classes, 1)

    def forward(self, f: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h = F.interpolate(self.reduce(f), size=size, mode="bilinear", align_corners=False)
        return self.classify(h)


def rgb_transform(spec: InputSpec, augment: str):
    """uint8 image -> float sRGB (3, size, size) in [0, 1]: the method converts it to the model's input
    and to the colour targets itself. ``"flip"``: resize and centre-crop, then flip;
    ``"resized-crop-flip"``: a random-resized crop, then flip (ImageNet)."""
    if augment not in ("flip", "resized-crop-flip"):
        raise ValueError(f"augment must be 'flip' or 'resized-crop-flip', got {augment!r}")

    def transform(image: torch.Tensor) -> torch.Tensor:
        rgb = to_rgb_float(image)
        rgb = random_resized_crop(rgb, spec.size) if augment == "resized-crop-flip" else resize_and_crop(rgb, spec)
        return random_hflip(rgb).contiguous()
    return transform


def deepest_channels(backbone: nn.Module) -> int:
    """Channels of the backbone's deepest feature layer."""
    return layer_shapes(backbone, backbone.entry.input)[backbone.feature_layers[-1]][0]


# ---------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------

class Colorization(BackboneMethod, options=ColorizationOptions):
    def build(self, o: ColorizationOptions) -> None:
        self.register_buffer("bins", ab_gamut_bins(o.grid))
        self.register_buffer("class_weights", torch.ones(len(self.bins)))  # set from the data in on_fit_start
        self.head = DenseHead(deepest_channels(self.backbone), o.head_width, len(self.bins))

    def train_transform(self):
        return rgb_transform(self.backbone.entry.input, self.options.augment)

    @torch.no_grad()
    def bin_counts(self, batch: dict) -> torch.Tensor:
        """(N, Q) how many target pixels of each image fall in each bin."""
        idx = nearest_bin(lab_at(batch["x"], self.options.output_stride)[:, 1:], self.bins)
        return F.one_hot(idx.flatten(1), len(self.bins)).sum(1)

    def on_fit_start(self, ctx: FitContext) -> None:
        """The class weights, from the colours of ``prior_images`` training images."""
        o = self.options
        sample = limit_dataset(ctx.dataset, o.prior_images, self.recipe.seed)
        counts, _ = ctx.map(self.bin_counts, sample, self.train_transform())
        prior = counts.sum(0).double()
        self.class_weights.copy_(rebalancing_weights(prior / prior.sum(), self.bins.cpu(), o.rebalance,
                                                     o.prior_sigma).to(self.class_weights.device))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        o, rgb = self.options, batch["x"]
        ab = lab_at(rgb, o.output_stride)[:, 1:]
        target = soft_encode(ab, self.bins, o.neighbours, o.sigma)
        logits = self.head(self.backbone(convert_and_normalise(rgb, self.backbone.entry.input)), ab.shape[-2:])
        loss = colour_loss(logits, target, self.class_weights)
        return {"loss": loss, "bin_acc": (logits.argmax(1) == target.argmax(1)).float().mean()}


METHOD = Colorization

RECIPES = method_recipes(__name__, {
    # The paper's solver (its training section): ADAM beta (0.9, 0.99), weight decay 1e-3, lr 3e-5 dropped
    # to 1e-5 at 200k and 3e-6 at 375k iterations, about 450k iterations; 40 images a batch is the official
    # training prototxt's as remembered, not re-read here (then about 14 ImageNet epochs; x1/3 steps give
    # 3.3e-6 for the paper's 3e-6). On a grey-input ResNet-50 (the paper's network is a VGG-style net).
    "paper": paper_recipe(
        model="colorization_resnet50", epochs=14, batch_size=40,
        optimizer=Optimizer("adam", lr=3e-5, weight_decay=1e-3, betas=(0.9, 0.99)),
        schedule=Schedule("step", milestones=(6.25, 11.7), gamma=1 / 3),
        options=ColorizationOptions(augment="resized-crop-flip"),
        source="Zhang, Isola, Efros 2016 (arXiv 1603.08511) Sec. 2-3: 313 bins, soft encoding 5/5, lambda 0.5, "
               "ADAM 3e-5, 450k iterations"),
    # S3L scale: random 32x32 crops of the shipped colour photographs (Fashion-MNIST has no colour),
    # the shared small ResNet on grey input, predictions at 8x8; Adam at a laptop learning rate. 800 steps
    # (185 s of one core): Fashion-MNIST kNN 67.1 against 64.8 after 400 steps (random init 65.5).
    "small": small_recipe(
        model="colorization_resnet_small_photos", data="photo-crops", epochs=2, batch_size=64, limit=25_600,
        precision="fp32",  # its shipped weights were trained in fp32, which `auto` was on every CPU then
        optimizer=Optimizer("adam", lr=2e-3, weight_decay=1e-4, betas=(0.9, 0.99)),
        schedule=Schedule("cosine", warmup_epochs=0.1), checkpoint_every=50, log_every=10,
        options=ColorizationOptions(prior_images=1024),
        source="Zhang, Isola, Efros 2016 (arXiv 1603.08511): targets and rebalancing as the paper; optimiser scaled "
               "to 800 steps"),
    # Seconds: for tests.
    "tiny": tiny_recipe(
        model="colorization_resnet_small_photos", data="photo-crops", batch_size=32, limit=128,
        model_kwargs={"widths": (8, 16, 32, 64)},
        optimizer=Optimizer("adam", lr=1e-3, betas=(0.9, 0.99)), options=ColorizationOptions(prior_images=64,
                                                                                            head_width=32),
    ),
})
