"""DeeperCluster: unsupervised pre-training on non-curated data (Caron et al. 2019).

Caron, Bojanowski, Mairal, Joulin, "Unsupervised Pre-Training of Image Features on Non-Curated
Data", ICCV 2019 (https://arxiv.org/abs/1905.01278). DeepCluster and RotNet combined in one
hierarchical classification. The features of the unrotated images are clustered twice: first into m
super-clusters, then each super-cluster into k/m sub-clusters. Every training image is rotated by
one of 4 angles; its *super-class* is the pair (super-cluster, rotation), 4m classes in all, and
its *sub-class* is its sub-cluster, predicted by a classifier of its own super-class. The loss is
the cross-entropy of the super-class plus that of the sub-class. The paper: VGG-16-BN with Sobel on
YFCC100M, 16 super-classes (m = 4 super-clusters x 4 rotations), k = 320,000 clusters in all, PCA
to 4096, re-clustered every 3 epochs.

As in the official code, the clustering uses centre crops of unrotated images; every training
image gets one rotation drawn at random (the official code gives each group of GPUs one rotation);
images are drawn uniformly over the clusters, as in DeepCluster; both prediction layers are
rebuilt after each clustering.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.clustering import (CLUSTER_SIZES_KEY, cluster_size_log2_histogram, deepest_feature_dim, deepest_features,
                                 kmeans, pca_whiten_l2, uniform_cluster_indices)
from training.engine import FitContext
from training.evaluation import nmi
from training.methods.common import BackboneMethod, crop_flip_augment, training_set_features, unassigned
from training.recipes import Optimizer, method_recipes, paper_recipe, small_recipe, tiny_recipe
from training.transforms import rotate_each

ROTATIONS = 4  # 0, 90, 180, 270 degrees


def hierarchical_targets(super_cluster: torch.Tensor, sub_cluster: torch.Tensor,
                         rotation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(super_class, sub_class)`` targets: super-class = super-cluster * 4 + rotation index.

    The sub-class is the image's sub-cluster within its super-cluster, the same for all 4
    rotations; it is scored by the classifier of the (super-cluster, rotation) pair.
    """
    if not (super_cluster.shape == sub_cluster.shape == rotation.shape):
        raise ValueError("super_cluster, sub_cluster and rotation need the same shape")
    if rotation.numel() and (int(rotation.min()) < 0 or int(rotation.max()) >= ROTATIONS):
        raise ValueError(f"rotation indices must lie in [0, {ROTATIONS})")
    return super_cluster * ROTATIONS + rotation, sub_cluster


def sub_class_logits(all_logits: torch.Tensor, super_class: torch.Tensor) -> torch.Tensor:
    """Pick each image's own super-class classifier: (B, S, K_sub) logits -> (B, K_sub)."""
    return all_logits[torch.arange(len(super_class), device=all_logits.device), super_class]


def hierarchical_loss(super_logits: torch.Tensor, all_sub_logits: torch.Tensor,
                      super_class: torch.Tensor, sub_class: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the super-class plus cross-entropy of the sub-class under its classifier."""
    f = torch.nn.functional
    return (f.cross_entropy(super_logits, super_class)
            + f.cross_entropy(sub_class_logits(all_sub_logits, super_class), sub_class))


def hierarchical_kmeans(x, super_clusters: int, sub_clusters: int, niter: int = 10, seed: int = 0):
    """Two-level k-means: ``super_clusters`` groups, then ``sub_clusters`` within each group.

    Returns ``(super_assignment, sub_assignment)`` as int64 arrays. A group with fewer points
    than ``sub_clusters`` gets one sub-cluster per point (its remaining sub-classes stay unused).
    """
    top = kmeans(x, super_clusters, niter=niter, seed=seed).assignments
    sub = np.zeros(len(x), dtype=np.int64)
    for group in range(super_clusters):
        members = np.flatnonzero(top == group)
        k = min(sub_clusters, len(members))
        sub[members] = kmeans(x[members], k, niter=niter, seed=seed + 1 + group).assignments
    return top, sub


# ---------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeeperClusterOptions:
    clusters: int = 320_000         # k: sub-clusters in all, k / super_clusters in each super-cluster
    super_clusters: int = 4         # m; the super-classes are m x 4 rotations
    pca_dim: int = 4096
    kmeans_iters: int = 10
    reassign_every: int = 3         # epochs between two clusterings
    augment: str = "resized-crop-flip"  # or "crop-flip" (random crop after padding, flip)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area fraction of the random-resized crops
    crop_padding: int = 4


class DeeperCluster(BackboneMethod, options=DeeperClusterOptions):
    data_sized_buffers = ("super_cluster", "sub_cluster")

    def build(self, o: DeeperClusterOptions) -> None:
        if o.clusters % o.super_clusters:
            raise ValueError(f"clusters ({o.clusters}) must be a multiple of super_clusters ({o.super_clusters})")
        dim = deepest_feature_dim(self.backbone)
        self.super_classes = o.super_clusters * ROTATIONS
        self.sub_classes = o.clusters // o.super_clusters
        self.super_head = nn.Linear(dim, self.super_classes)
        self.sub_heads = nn.Linear(dim, self.super_classes * self.sub_classes)  # one classifier per super-class
        self.register_buffer("super_cluster", torch.empty(0, dtype=torch.long))
        self.register_buffer("sub_cluster", torch.empty(0, dtype=torch.long))
        self.epoch_metrics: dict[str, float | list[int]] = {}    # logged at this epoch's end
        self.cluster_metrics: dict[str, float] = {}  # of the last clustering

    def train_transform(self):
        o = self.options
        return crop_flip_augment(self.backbone.entry.input, o.augment, o.crop_scale, o.crop_padding)

    def on_fit_start(self, ctx: FitContext) -> None:
        self.super_cluster, self.sub_cluster = unassigned(ctx), unassigned(ctx)

    def on_epoch_start(self, ctx: FitContext) -> None:
        self.epoch_metrics = {}
        if ctx.epoch % self.options.reassign_every:
            return
        features, labels, index = training_set_features(self, ctx)
        found = None
        if ctx.is_main:
            x = pca_whiten_l2(features.numpy(), self.options.pca_dim)
            found = hierarchical_kmeans(x, self.options.super_clusters, self.sub_classes,
                                        niter=self.options.kmeans_iters, seed=self.recipe.seed + ctx.epoch)
        top, low = (torch.as_tensor(a, device=self.super_cluster.device) for a in ctx.broadcast(found))
        self.super_cluster.fill_(-1)
        self.sub_cluster.fill_(-1)
        self.super_cluster[index.to(top.device)] = top
        self.sub_cluster[index.to(top.device)] = low
        flat = (top * self.sub_classes + low).cpu().numpy()
        if len(labels) and int(labels.min()) >= 0:
            self.epoch_metrics = {"nmi_labels": nmi(flat, labels.numpy()),
                                  "nmi_super_labels": nmi(top.cpu().numpy(), labels.numpy())}
            self.cluster_metrics = dict(self.epoch_metrics)
        self.epoch_metrics[CLUSTER_SIZES_KEY] = cluster_size_log2_histogram(flat, self.options.clusters)
        # nn.Linear's default initialisation, seeded by (seed, epoch) so that every DDP rank agrees.
        generator = torch.Generator().manual_seed(self.recipe.seed * 100_003 + ctx.epoch)
        with torch.no_grad():
            for layer in (self.super_head, self.sub_heads):
                bound = layer.in_features ** -0.5
                for p in (layer.weight, layer.bias):
                    p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=generator))

    def epoch_indices(self, ctx: FitContext):
        flat = (self.super_cluster * self.sub_classes + self.sub_cluster).cpu().numpy()
        readable = np.flatnonzero(self.super_cluster.cpu().numpy() >= 0)
        return readable[uniform_cluster_indices(flat[readable], len(readable), seed=(self.recipe.seed, ctx.epoch))]

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        x, index = batch["x"], batch["index"]
        rotation = torch.randint(ROTATIONS, (len(x),), device=x.device)
        rotated = rotate_each(x, rotation)
        super_class, sub_class = hierarchical_targets(self.super_cluster[index], self.sub_cluster[index], rotation)
        features = deepest_features(self.backbone, rotated)
        super_logits = self.super_head(features)
        sub_logits = self.sub_heads(features).view(len(x), self.super_classes, self.sub_classes)
        loss = hierarchical_loss(super_logits, sub_logits, super_class, sub_class)
        return {"loss": loss, "super_class_acc": (super_logits.argmax(1) == super_class).float().mean()}

    def on_epoch_end(self, ctx: FitContext) -> dict[str, float]:
        return self.epoch_metrics

    def evaluate(self, ctx: FitContext) -> dict[str, float]:
        """The last clustering's NMI against the true training labels (sub- and super-clusters)."""
        return dict(self.cluster_metrics)


METHOD = DeeperCluster

RECIPES = method_recipes(__name__, {
    # facebookresearch/DeeperCluster README and main.py: VGG-16-BN with Sobel on YFCC100M (96M images),
    # 64 GPUs x 48 images per step, SGD lr 0.1 with momentum 0.9 and weight decay 1e-5, 100 epochs,
    # 16 super-classes (4 super-clusters x 4 rotations), k = 320,000, PCA 4096, 10 k-means
    # iterations, re-clustering every 3 epochs; random-resized 224 crops and flips.
    "paper": paper_recipe(
        model="deepercluster_vgg16", epochs=100, batch_size=64 * 48, optimizer=Optimizer(lr=0.1, weight_decay=1e-5),
        data_hint="YFCC100M (or any large image collection) as an ImageFolder tree: --data /path/to/images",
        workers=10, options=DeeperClusterOptions(),
        source="facebookresearch/DeeperCluster README.md and main.py (arXiv 1905.01278)"),
    # S3L scale: Fashion-MNIST 32x32 grey, the clustering recipes' small ResNet, 15,000 images,
    # 2 super-clusters x 4 rotations = 8 super-classes, 100 sub-clusters in all, PCA to 32 of the
    # 128 features, random crops after 4-pixel padding and flips, re-clustered every 2 epochs,
    # 8 epochs, batch 64.
    "small": small_recipe(
        model="deepercluster_resnet_small_fmnist", epochs=8, batch_size=64,
        precision="fp32",  # its shipped weights were trained in fp32, which `auto` was on every CPU then
        optimizer=Optimizer(lr=0.05, weight_decay=1e-5), limit=15_000, checkpoint_every=100, log_every=10,
        options=DeeperClusterOptions(clusters=100, super_clusters=2, pca_dim=32, reassign_every=2,
                                     augment="crop-flip"),
        source="the paper recipe scaled down (S3L: small images, network and data)"),
    # Seconds: for tests.
    "tiny": tiny_recipe(
        model="deepercluster_resnet_small_fmnist", epochs=2, batch_size=32,
        optimizer=Optimizer(lr=0.05, weight_decay=1e-5),
        options=DeeperClusterOptions(clusters=8, super_clusters=2, pca_dim=16, reassign_every=1, augment="crop-flip"),
    ),
})
