"""Split-brain autoencoder: two disjoint halves, each predicting the channels the other one sees.

Zhang, Isola, Efros, "Split-Brain Autoencoders: Unsupervised Learning by Cross-Channel Prediction",
CVPR 2017 (https://arxiv.org/abs/1611.09842). Facts used, from the paper: the network is split
along its channels into two sub-networks that never exchange information; on Lab images one half
sees L and predicts ab, the other sees ab and predicts L; both predictions are classifications
over quantised values (cross-entropy worked better than regression), ab in the colourisation
paper's bins of size 10 and L in 100 bins; the representation is the two halves' features
concatenated, each half having half the channels of the network it replaces.

What sslzoo does its own way: the halves are whole backbones (``zoo.backbones.splitbrain``: two
``resnet_small`` of half width for the small model, two ResNet-50s for the paper recipe); each
predicts at a quarter of the input resolution through ``colorization.DenseHead``; ab targets are
``colorization``'s soft targets over its derived in-gamut bins (5 nearest, sigma 5) without class
rebalancing, L targets the hard bin of width 1 over [0, 100]. The losses of the two halves are
added with equal weights. The small recipe trains on random crops of the shipped colour
photographs (``--data photo-crops``); in evaluation on grey Fashion-MNIST the ab half sees
a = b = 0, so only the L half's features vary from image to image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from training.methods.colorization import (DenseHead, ab_gamut_bins, colour_loss, deepest_channels, lab_at,
                                           rgb_transform, soft_encode)
from training.methods.common import BackboneMethod
from training.recipes import Optimizer, Schedule, method_recipes, paper_recipe, small_recipe, tiny_recipe
from zoo.preprocess import convert_and_normalise


@dataclass(frozen=True)
class SplitBrainOptions:
    grid: float = 10.0           # ab bin size (the colourisation paper's 10)
    neighbours: int = 5          # ab soft targets: nearest bins and their Gaussian sigma
    sigma: float = 5.0
    lightness_bins: int = 100    # L in [0, 100] cut into this many bins (paper: 100)
    output_stride: int = 4       # predictions at 1/4 of the input resolution
    head_width: int = 64
    augment: str = "flip"        # "flip" (photo-crops already crops) or "resized-crop-flip" (ImageNet)


def lightness_bin(lightness: torch.Tensor, bins: int = 100) -> torch.Tensor:
    """L values in [0, 100] -> the index of their bin among ``bins`` equal bins (100 falls in the last)."""
    return (lightness * (bins / 100.0)).floor().long().clamp_(0, bins - 1)


class SplitBrain(BackboneMethod, options=SplitBrainOptions):
    def build(self, o: SplitBrainOptions) -> None:
        self.register_buffer("bins", ab_gamut_bins(o.grid))
        half = deepest_channels(self.backbone) // 2  # the halves differ only in their input channels
        self.ab_head = DenseHead(half, o.head_width, len(self.bins))          # on the L half: L -> ab
        self.l_head = DenseHead(half, o.head_width, o.lightness_bins)         # on the ab half: ab -> L

    def train_transform(self):
        return rgb_transform(self.backbone.entry.input, self.options.augment)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        o, rgb = self.options, batch["x"]
        lab = lab_at(rgb, o.output_stride)
        size = lab.shape[-2:]
        l_net, ab_net = self.backbone.halves()
        l_in, ab_in = self.backbone.split(convert_and_normalise(rgb, self.backbone.entry.input))
        ab_target = soft_encode(lab[:, 1:], self.bins, o.neighbours, o.sigma)
        ab_logits = self.ab_head(l_net(l_in), size)
        l_target = lightness_bin(lab[:, 0], o.lightness_bins)
        l_logits = self.l_head(ab_net(ab_in), size)
        ab_loss = colour_loss(ab_logits, ab_target)
        l_loss = F.cross_entropy(l_logits.float(), l_target)
        return {"loss": ab_loss + l_loss, "ab_loss": ab_loss.detach(), "l_loss": l_loss.detach(),
                "ab_acc": (ab_logits.argmax(1) == ab_target.argmax(1)).float().mean(),
                "l_acc": (l_logits.argmax(1) == l_target).float().mean()}


METHOD = SplitBrain

RECIPES = method_recipes(__name__, {
    # ImageNet with the colourisation paper's solver (ADAM beta (0.9, 0.99), weight decay 1e-3, lr 3e-5
    # with two drops, about 14 epochs of 40 images): the split-brain paper's own solver settings were not
    # read here, so this recipe is sslzoo's assumption that they follow the colourisation paper.
    "paper": paper_recipe(
        model="splitbrain_resnet50", epochs=14, batch_size=40,
        optimizer=Optimizer("adam", lr=3e-5, weight_decay=1e-3, betas=(0.9, 0.99)),
        schedule=Schedule("step", milestones=(6.25, 11.7), gamma=1 / 3),
        options=SplitBrainOptions(augment="resized-crop-flip"),
        source="Zhang, Isola, Efros 2017 (arXiv 1611.09842): split L/ab, classification losses, 100 L bins; "
               "solver assumed from the colorization paper (arXiv 1603.08511)"),
    # S3L scale: random 32x32 crops of the shipped colour photographs, two half-width small ResNets.
    "small": small_recipe(
        model="splitbrain_resnet_small_photos", data="photo-crops", epochs=2, batch_size=64, limit=12_800,
        precision="fp32",  # its shipped weights were trained in fp32, which `auto` was on every CPU then
        optimizer=Optimizer("adam", lr=2e-3, weight_decay=1e-4, betas=(0.9, 0.99)),
        schedule=Schedule("cosine", warmup_epochs=0.1), checkpoint_every=50, log_every=10,
        options=SplitBrainOptions(),
        source="Zhang, Isola, Efros 2017 (arXiv 1611.09842): losses as the paper; optimiser scaled to 400 steps"),
    # Seconds: for tests.
    "tiny": tiny_recipe(
        model="splitbrain_resnet_small_photos", data="photo-crops", batch_size=32, limit=128,
        model_kwargs={"widths": (4, 8, 16, 32)},
        optimizer=Optimizer("adam", lr=1e-3, betas=(0.9, 0.99)), options=SplitBrainOptions(head_width=16),
    ),
})
