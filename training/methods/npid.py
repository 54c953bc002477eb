"""NPID, non-parametric instance discrimination (Wu et al., CVPR 2018).

Every training image is its own class. A memory bank keeps one L2-normalised 128-d vector per
image, refreshed with momentum 0.5 from the image's newest embedding. The embedding of an image
is scored against its own bank entry and against K entries drawn uniformly at random, with noise-
contrastive estimation (NCE) at temperature 0.07; on a small data set the full softmax over the
whole bank replaces NCE. Evaluation is the weighted kNN over the same cosine similarities.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from training.engine import FitContext
from training.methods.common import BackboneMethod, grey_view
from training.methods.heads import feature_dim, pooled_features
from training.methods.memory_bank import MemoryBank, fill_memory_bank, instance_softmax_loss, nce_loss
from training.methods.views import ViewRecipe, Views
from training.recipes import (SMALL_EMBEDDING, Optimizer, Schedule, method_recipes, paper_recipe,
                              small_recipe, tiny_recipe)


@dataclass(frozen=True)
class NPIDOptions:
    embedding_dim: int = 128
    temperature: float = 0.07
    momentum: float = 0.5               # memory-bank update
    negatives: int = 4096               # NCE noise samples per image; 0: full softmax over the bank
    # "random": NPID's random unit vectors; "features": the untrained network's embeddings of the
    # (unaugmented) training images, so that a short run does not spend its first epochs pulling
    # every image towards a random target
    bank_init: str = "random"
    view: ViewRecipe = field(default_factory=lambda: ViewRecipe(
        crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4), jitter_p=1.0, grey_p=0.2, blur_p=0.0))
    batched_views: bool = False         # augment whole batches in forward (see views.Views)


class NPID(BackboneMethod, options=NPIDOptions):
    def build(self, o: NPIDOptions) -> None:
        fc = getattr(self.backbone, "fc", None)
        # The released ResNets carry the 128-d embedding as the backbone's own fc layer.
        self.backbone_has_head = isinstance(fc, nn.Linear) and fc.out_features == o.embedding_dim
        self.head = nn.Identity() if self.backbone_has_head else nn.Linear(feature_dim(self.backbone),
                                                                           o.embedding_dim)
        self.memory = MemoryBank(0, o.embedding_dim, o.momentum)
        self.views = Views(self.backbone.entry.input, [o.view], o.batched_views)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised embedding v = f(x) / |f(x)|."""
        h = self.backbone.forward_head(x) if self.backbone_has_head else self.head(pooled_features(self.backbone, x))
        return F.normalize(h.float(), dim=1)

    def train_transform(self):
        return self.views.transform()

    def on_fit_start(self, ctx: FitContext) -> None:
        fill_memory_bank(self.memory, self.embed, self.backbone, ctx, self.options.bank_init)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        o, index = self.options, batch["index"]
        (x,) = self.views(batch["x"])
        features = self.embed(x)
        if o.negatives == 0:
            loss = instance_softmax_loss(features, self.memory.vectors, index, o.temperature)
        else:
            similarities = self.memory.similarities(features, index, o.negatives)
            normaliser = self.memory.fixed_normaliser(similarities, o.temperature)
            loss = nce_loss(similarities, o.temperature, normaliser, len(self.memory))
        # the bank moves towards the new embeddings only after they were scored against it
        self.memory.update_from_all_ranks(index, features)
        return {"loss": loss}


METHOD = NPID

RECIPES = method_recipes(__name__, {
    # zhirongw/lemniscate.pytorch main.py (the released ImageNet models): ResNet-50 with a 128-d
    # fc embedding, batch 256, SGD lr 0.03 momentum 0.9 weight decay 1e-4, 200 epochs with the lr
    # divided by 10 at epochs 120 and 160; NCE with 4096 noise samples, T = 0.07, memory momentum
    # 0.5; random-resized crops of 20-100 % of the area, greyscale p 0.2, colour jitter 0.4
    # (brightness, contrast, saturation; hue 0.4 is not reproduced), horizontal flips.
    "paper": paper_recipe(
        model="npid_resnet50", epochs=200, batch_size=256, optimizer=Optimizer(lr=0.03, weight_decay=1e-4),
        schedule=Schedule("step", milestones=(120, 160)), options=NPIDOptions(),
        source="zhirongw/lemniscate.pytorch main.py defaults and README"),
    # S3L scale: Fashion-MNIST 32x32 grey, the small ResNet, a 10,000-image subset seen 10 times
    # (each bank entry needs several updates), small enough for the full softmax over the bank
    # (NPID's CIFAR script does the same with --nce-k 0); the bank starts from the untrained
    # network's embeddings instead of random vectors, which a run this short cannot wash out.
    # 3,000 images x 10 epochs (230 steps, about a minute) beat random init on kNN (68.5 vs 66.5)
    # but not on the linear probe (86.9 vs 87.0): too few steps, so 10,000 images (780 steps).
    "small": small_recipe(
        **SMALL_EMBEDDING, model="npid_resnet_small_fmnist", epochs=10, batch_size=128,
        optimizer=Optimizer(lr=0.03, weight_decay=5e-4),
        options=NPIDOptions(temperature=0.1, negatives=0, bank_init="features", batched_views=True,
                            view=grey_view(jitter_p=1.0)),
        source="zhirongw/lemniscate.pytorch cifar.py (T 0.1, wd 5e-4, full softmax), scaled down"),
    "tiny": tiny_recipe(
        model="npid_resnet_small_fmnist", batch_size=32, optimizer=Optimizer(lr=0.03, weight_decay=5e-4),
        options=NPIDOptions(embedding_dim=32, negatives=64, bank_init="features", batched_views=True,
                            view=grey_view()),
    ),
})
