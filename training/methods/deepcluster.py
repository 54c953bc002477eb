"""DeepCluster: learn features by classifying images into the k-means clusters of their own features.

Caron, Bojanowski, Joulin, Douze, "Deep Clustering for Unsupervised Learning of Visual Features",
ECCV 2018 (https://arxiv.org/abs/1807.05520). Every epoch:

1. features of the whole training set (centre crops, network in eval mode) from the deepest
   feature layer -- fc7 for AlexNet/VGG, the pooled last stage for conv nets;
2. PCA to 256 dimensions with whitening, L2 normalisation, k-means with FAISS (k = 10,000 on
   ImageNet); an empty cluster is re-seeded by splitting a non-empty one
   (``training.clustering``);
3. the NMI of the new assignment against the previous one (how much the clusters still move) and
   against the true labels when the data has them, logged as in the paper;
4. the top layer (a linear classifier over the k clusters) re-initialised, N(0, 0.01) weights and
   zero bias, and trained without momentum as the official code's separate top-layer optimiser;
5. one epoch of cross-entropy on the cluster ids, visiting images so that every cluster is drawn
   equally often (a few huge clusters would otherwise dominate the loss).

AlexNet and VGG get a fixed Sobel front end from their registry entries (``sobel=True``); the
small Fashion-MNIST recipe has none: its images are grey already, so there is no colour for the
network to latch onto, which is what Sobel removes. One difference from the official code: the
features for clustering are taken after fc7's ReLU (the official code removes that ReLU while
clustering and puts it back for training).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from training.clustering import (CLUSTER_SIZES_KEY, cluster_size_log2_histogram, deepest_feature_dim, deepest_features,
                                 kmeans, pca_whiten_l2, uniform_cluster_indices)
from training.engine import FitContext
from training.evaluation import nmi
from training.methods.common import BackboneMethod, crop_flip_augment, training_set_features, unassigned
from training.recipes import Optimizer, method_recipes, paper_recipe, small_recipe, tiny_recipe


@dataclass(frozen=True)
class DeepClusterOptions:
    clusters: int = 10_000          # k of k-means: the number of pseudo-classes
    pca_dim: int = 256              # PCA-whitened dimensions before k-means (capped at the feature size)
    kmeans_iters: int = 20
    reassign: float = 1.0           # epochs' worth of images between two clusterings (the engine's epoch)
    top_layer_std: float = 0.01
    augment: str = "resized-crop-flip"  # or "crop-flip" (32x32 images: random crop after padding, flip)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area fraction of the random-resized crops
    crop_padding: int = 4


class DeepCluster(BackboneMethod, options=DeepClusterOptions):
    data_sized_buffers = ("assignments", "previous")

    def build(self, o: DeepClusterOptions) -> None:
        self.top_layer = nn.Linear(deepest_feature_dim(self.backbone), o.clusters)
        self.register_buffer("assignments", torch.empty(0, dtype=torch.long))  # cluster id per image
        self.register_buffer("previous", torch.empty(0, dtype=torch.long))     # the epoch before's
        self.epoch_metrics: dict[str, float | list[int]] = {}

    def train_transform(self):
        o = self.options
        return crop_flip_augment(self.backbone.entry.input, o.augment, o.crop_scale, o.crop_padding)

    def parameter_groups(self):
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]  # the Sobel filters stay fixed
        return [{"params": backbone}, {"params": list(self.top_layer.parameters()), "momentum": 0.0}]

    def on_fit_start(self, ctx: FitContext) -> None:
        self.assignments, self.previous = unassigned(ctx), unassigned(ctx)

    def on_epoch_start(self, ctx: FitContext) -> None:
        features, labels, index = training_set_features(self, ctx)
        found = None
        if ctx.is_main:
            x = pca_whiten_l2(features.numpy(), self.options.pca_dim)
            found = kmeans(x, self.options.clusters, niter=self.options.kmeans_iters, seed=self.recipe.seed + ctx.epoch)
        found = ctx.broadcast(found)
        new = torch.full_like(self.assignments, -1)  # unreadable images keep -1 and are never drawn
        new[index.to(new.device)] = torch.as_tensor(found.assignments, device=new.device)
        metrics = {"kmeans_loss": found.loss, "empty_clusters_reseeded": float(found.reseeded),
                   CLUSTER_SIZES_KEY: cluster_size_log2_histogram(found.assignments, self.options.clusters)}
        before = self.assignments[index].cpu().numpy()
        if (before >= 0).all():  # not the first clustering
            metrics["nmi_previous"] = nmi(found.assignments, before)
        if len(labels) and int(labels.min()) >= 0:
            metrics["nmi_labels"] = nmi(found.assignments, labels.numpy())
        self.previous.copy_(self.assignments)
        self.assignments.copy_(new)
        self.epoch_metrics = metrics
        # Seeded by (seed, epoch), so that every DDP rank draws the same new top layer.
        generator = torch.Generator().manual_seed(self.recipe.seed * 100_003 + ctx.epoch)
        weight = torch.randn(self.top_layer.weight.shape, generator=generator) * self.options.top_layer_std
        with torch.no_grad():
            self.top_layer.weight.copy_(weight)
            self.top_layer.bias.zero_()

    def epoch_indices(self, ctx: FitContext):
        assigned = self.assignments.cpu().numpy()
        readable = np.flatnonzero(assigned >= 0)
        count = round(self.options.reassign * len(readable))
        return readable[uniform_cluster_indices(assigned[readable], count, seed=(self.recipe.seed, ctx.epoch))]

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        target = self.assignments[batch["index"]]
        logits = self.top_layer(deepest_features(self.backbone, batch["x"]))
        loss = F.cross_entropy(logits, target)
        return {"loss": loss, "cluster_acc": (logits.argmax(1) == target).float().mean()}

    def on_epoch_end(self, ctx: FitContext) -> dict[str, float]:
        return self.epoch_metrics

    def evaluate(self, ctx: FitContext) -> dict[str, float]:
        """The last clustering's NMI against the true training labels and against the one before."""
        return {k: v for k, v in self.epoch_metrics.items() if k.startswith("nmi_")}


METHOD = DeepCluster

RECIPES = method_recipes(__name__, {
    # facebookresearch/deepcluster main.sh and the paper (section 4): AlexNet with Sobel, k = 10,000,
    # PCA 256 + whitening + L2, FAISS k-means with 20 iterations, re-clustering every epoch, SGD lr
    # 0.05 with momentum 0.9 and weight decay 1e-5, batch 256, constant rate, dropout, random-resized
    # 224 crops and flips; 500 epochs (the paper; main.py's default is 200); seed 31 (main.py).
    "paper": paper_recipe(
        model="deepcluster_alexnet", epochs=500, batch_size=256, optimizer=Optimizer(lr=0.05, weight_decay=1e-5),
        workers=12, seed=31, checkpoint_every=5000, options=DeepClusterOptions(),
        source="facebookresearch/deepcluster main.py / main.sh and the paper (arXiv 1807.05520, section 4)"),
    # S3L scale: Fashion-MNIST 32x32 grey, a 4-stage ResNet with 16-128 channels, 15,000 images,
    # k = 100 (10x the classes, as the paper's 10,000 is 10x ImageNet's), PCA to 32 of the 128
    # features (a quarter; the paper keeps 256 of 4,096: whitening every direction clusters noise),
    # random crops after 4-pixel padding and flips (random-resized crops did worse here), batch 64
    # (DeepCluster needs many steps per clustering to fit the new labels), 8 epochs.
    "small": small_recipe(
        model="deepcluster_resnet_small_fmnist", epochs=8, batch_size=64,
        precision="fp32",  # its shipped weights were trained in fp32, which `auto` was on every CPU then
        optimizer=Optimizer(lr=0.05, weight_decay=1e-5), limit=15_000, checkpoint_every=100, log_every=10,
        options=DeepClusterOptions(clusters=100, pca_dim=32, augment="crop-flip"),
        source="the paper recipe scaled down (S3L: small images, network and data)"),
    # Seconds: for tests.
    "tiny": tiny_recipe(
        model="deepcluster_resnet_small_fmnist", epochs=2, batch_size=32,
        optimizer=Optimizer(lr=0.05, weight_decay=1e-5),
        options=DeepClusterOptions(clusters=8, pca_dim=16, augment="crop-flip"),
    ),
})
