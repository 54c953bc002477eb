"""SeLa: self-labelling via simultaneous clustering and representation learning (Asano et al. 2020).

Asano, Rupprecht, Vedaldi, ICLR 2020 (https://arxiv.org/abs/1911.05371). Pseudo-labels are the
solution of an optimal-transport problem: assign N images to K clusters so that every cluster
receives exactly N/K images (equipartition) while agreeing as much as possible with the network's
own predictions. The entropy-regularised problem is solved by Sinkhorn-Knopp
scaling of ``P ** lambda`` (P the softmax predictions); the paper uses lambda = 25, stops when the
scaling vectors change by less than 0.1 in total (checked every 10 iterations), and re-solves the
labels 100 times over 400 epochs, at times spread quadratically (denser early in training).
Several heads (10 x 3000 clusters on ImageNet) each get their own labels and their own loss,
averaged. The labels start as a random equipartition and are first re-solved before any
training step, from the untrained network's predictions (as the official code does).

The features for a label update are computed from centre crops (the official code reuses the
augmented training loader for them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from training.clustering import CLUSTER_SIZES_KEY, cluster_size_log2_histogram, deepest_feature_dim, deepest_features
from training.engine import FitContext
from training.evaluation import nmi
from training.methods.common import BackboneMethod, crop_flip_augment, training_set_features
from training.recipes import Optimizer, Schedule, method_recipes, paper_recipe, small_recipe, tiny_recipe
from training.transforms import normalise, random_hflip, to_rgb_float

PAPER_LAMBDA = 25.0
PAPER_LABEL_UPDATES = 100


@torch.no_grad()
def sinkhorn_knopp(log_probs: torch.Tensor, lam: float = PAPER_LAMBDA, tol: float = 0.1,
                   check_every: int = 10, max_iter: int = 100_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Equipartitioned pseudo-labels from ``log_probs`` (N, K) of the network's predictions.

    Finds row scalings c (N) and column scalings r (K) such that ``Q = diag(c) P**lam diag(r)``
    has every row summing to 1/N and every column to 1/K, and labels each image with the cluster
    of its largest entry in Q. Runs in float64 on ``P**lam`` computed as
    ``exp(lam * (log P - max_k log P))``: the per-image shift is absorbed by c and keeps every row
    non-zero. The exponent is floored at -300 so that a cluster nobody favours still has a
    non-zero column (otherwise its scaling divides by zero); that floor only matters for
    probability ratios below exp(-300 / lam), which no assignment would choose anyway.
    Returns ``(labels (N,), Q (N, K))``.
    """
    if log_probs.ndim != 2:
        raise ValueError(f"log_probs must be (N, K), got shape {tuple(log_probs.shape)}")
    n, k = log_probs.shape
    scores = log_probs.to(torch.float64)
    q = torch.exp((lam * (scores - scores.max(dim=1, keepdim=True).values)).clamp(min=-300.0))
    c = torch.full((n,), 1.0 / n, dtype=torch.float64, device=q.device)
    for step in range(max_iter):
        r = (1.0 / k) / (q.t() @ c)
        c_new = (1.0 / n) / (q @ r)
        converged = step % check_every == 0 and float((c / c_new - 1).abs().sum()) < tol
        c = c_new
        if converged:
            break
    transport = c[:, None] * q * r[None, :]
    return transport.argmax(dim=1), transport


def label_update_steps(epochs: int, steps_per_epoch: int, updates: int = PAPER_LABEL_UPDATES) -> list[int]:
    """Global optimiser steps at which the labels are re-solved, spread quadratically over training.

    As in the official code, update i of ``updates`` happens after a fraction ``(i/(updates-1))**2``
    of ``epochs + 1.01`` epochs: the first at step 0 (labels of the untrained network), the others
    denser towards the end. Times past the last step are dropped; duplicates are merged.
    """
    if updates < 1:
        return []
    total = epochs * steps_per_epoch
    fractions = np.linspace(0.0, 1.0, updates) ** 2 if updates > 1 else np.zeros(1)
    steps = {math.ceil(f * (epochs + 1.01) * steps_per_epoch) for f in fractions}
    return sorted(s for s in steps if s < total)


# ---------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SeLaOptions:
    heads: int = 10
    clusters: int = 3000            # per head
    lam: float = PAPER_LAMBDA
    label_updates: int = PAPER_LABEL_UPDATES
    augment: str = "sela"           # the official "augs 3", or "crop-flip" (random crop after padding, flip)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area fraction of the random-resized crops
    crop_padding: int = 4


def sela_augment(spec, crop_scale=(0.08, 1.0)):
    """The official training augmentation ("augs 3"): random-resized crop, grey with probability
    0.2, colour jitter 0.4 (brightness, contrast, saturation, hue), horizontal flip."""
    from torchvision.transforms import v2

    crop, grey = v2.RandomResizedCrop(spec.size, scale=crop_scale, antialias=True), v2.RandomGrayscale(0.2)
    jitter = v2.ColorJitter(0.4, 0.4, 0.4, 0.4)
    # Saturation, hue and greyscale leave a grey image as it is; skipping them for one-channel
    # images (Fashion-MNIST) gives the same views at a fraction of the cost.
    grey_jitter = v2.ColorJitter(0.4, 0.4)

    def transform(image: torch.Tensor) -> torch.Tensor:
        rgb = crop(to_rgb_float(image).contiguous())
        rgb = grey_jitter(rgb) if image.shape[0] == 1 else jitter(grey(rgb))
        return normalise(random_hflip(rgb), spec)
    return transform


class SeLa(BackboneMethod, options=SeLaOptions):
    data_sized_buffers = ("labels",)

    def build(self, o: SeLaOptions) -> None:
        dim = deepest_feature_dim(self.backbone)
        self.heads = nn.ModuleList(nn.Linear(dim, o.clusters) for _ in range(o.heads))
        self.register_buffer("labels", torch.empty(o.heads, 0, dtype=torch.long))  # (heads, images)
        self.update_metrics: dict[str, float | list[int]] = {}
        self._update_steps: set[int] | None = None

    def train_transform(self):
        o, spec = self.options, self.backbone.entry.input
        return sela_augment(spec, o.crop_scale) if o.augment == "sela" else crop_flip_augment(
            spec, o.augment, o.crop_scale, o.crop_padding)

    def on_fit_start(self, ctx: FitContext) -> None:
        # A random equipartition first (images the update cannot read keep it), then the labels
        # of the untrained network: the schedule's update at step 0.
        n, k = len(ctx.dataset), self.options.clusters
        start = torch.stack([torch.randperm(n) % k for _ in range(self.options.heads)])
        self.labels = start.to(ctx.device)
        self.update_labels(ctx)

    def after_step(self, ctx: FitContext) -> None:
        if self._update_steps is None:
            self._update_steps = set(label_update_steps(self.recipe.epochs, ctx.steps_per_epoch,
                                                        self.options.label_updates))
        if ctx.step in self._update_steps:
            self.update_labels(ctx)
            self.train()

    @torch.no_grad()
    def update_labels(self, ctx: FitContext) -> None:
        """Features of the whole training set, then one Sinkhorn-Knopp solution per head."""
        features, true_labels, index = training_set_features(self, ctx)
        solved = None
        if ctx.is_main:
            logits = [F.linear(features, head.weight.cpu(), head.bias.cpu()) for head in self.heads]
            solved = torch.stack([sinkhorn_knopp(F.log_softmax(z, dim=1), self.options.lam)[0] for z in logits])
        solved = ctx.broadcast(solved).to(self.labels.device)
        changed = float((self.labels[:, index] != solved).float().mean())
        self.labels[:, index] = solved
        self.update_metrics = {"labels_changed": changed,
                               CLUSTER_SIZES_KEY: cluster_size_log2_histogram(solved[0].cpu().numpy(),
                                                                              self.options.clusters)}
        if len(true_labels) and int(true_labels.min()) >= 0:
            self.update_metrics["nmi_labels"] = nmi(solved[0].cpu().numpy(), true_labels.numpy())

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        features = deepest_features(self.backbone, batch["x"])
        targets = self.labels[:, batch["index"]]
        losses = [F.cross_entropy(head(features), target) for head, target in zip(self.heads, targets)]
        return {"loss": torch.stack(losses).mean()}

    def on_epoch_end(self, ctx: FitContext) -> dict[str, float]:
        return self.update_metrics

    def evaluate(self, ctx: FitContext) -> dict[str, float]:
        """NMI of the last labels of head 0 against the true training labels."""
        return {k: v for k, v in self.update_metrics.items() if k == "nmi_labels"}


METHOD = SeLa

# yukimasano/self-label main.py and scripts/alexnet.sh / resnet.sh: 10 heads of 3,000 clusters,
# 400 epochs, batch 256, 100 label optimisations spread quadratically, lambda 25, SGD lr 0.05 with
# momentum 0.9 and weight decay 1e-5, lr x0.1 at epochs 150 and 300 and 1e-3 x lr from 350 on,
# "augs 3" augmentation.
_PAPER = dict(
    epochs=400, batch_size=256, optimizer=Optimizer(lr=0.05, weight_decay=1e-5),
    schedule=Schedule("step", milestones=(150, 300, 350)), workers=24, seed=42, checkpoint_every=5000,
    options=SeLaOptions(), source="yukimasano/self-label main.py, scripts/alexnet.sh and scripts/resnet.sh",
)

RECIPES = method_recipes(__name__, {
    "paper": paper_recipe(model="sela_alexnet", **_PAPER),
    "paper-resnet50": paper_recipe(model="sela_resnet50", **_PAPER),
    # S3L scale: Fashion-MNIST 32x32 grey, the small ResNet of the clustering recipes, 15,000
    # images, 10 heads of 100 clusters (10x the classes), 10 label updates over 8 epochs, batch 64,
    # the rate divided by 10 for the last two epochs. Lambda 10, weight decay 5e-4 and the "augs 3"
    # augmentation with crops of 20-100% of the area are the authors' small-image (CIFAR) settings
    # (self-label cifar.py / scripts/cifar.sh). Why not DeepCluster's crop-flip: SeLa's labels come
    # from the network's own predictions, so only the invariance to the augmentation pulls them
    # towards content; with crop-flip, lambda 25 and wd 1e-5 the small run's kNN stayed at the
    # random-init level (65.7 vs 66.5).
    "small": small_recipe(
        model="sela_resnet_small_fmnist", epochs=8, batch_size=64, optimizer=Optimizer(lr=0.05, weight_decay=5e-4),
        precision="fp32",  # its shipped weights were trained in fp32, which `auto` was on every CPU then
        schedule=Schedule("step", milestones=(6,)), limit=15_000, checkpoint_every=100, log_every=10,
        options=SeLaOptions(heads=10, clusters=100, lam=10.0, label_updates=10, augment="sela",
                            crop_scale=(0.2, 1.0)),
        source="the paper recipe scaled down (S3L: small images, network and data), with the official CIFAR settings"),
    # Seconds: for tests.
    "tiny": tiny_recipe(
        model="sela_resnet_small_fmnist", epochs=2, batch_size=32, optimizer=Optimizer(lr=0.05, weight_decay=1e-5),
        options=SeLaOptions(heads=2, clusters=8, label_updates=4, augment="crop-flip"),
    ),
})
