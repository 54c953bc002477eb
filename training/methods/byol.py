"""BYOL, bootstrap your own latent (Grill et al., NeurIPS 2020).

An online network (encoder, projector, predictor) predicts the projection that a target network
(encoder, projector) gives to another view of the same image. No negatives: the target is an
exponential moving average of the online weights, with a decay that rises from 0.996 to 1 along a
cosine, and gradients never flow into it. The loss is the normalised MSE, 2 - 2 cos, symmetrised
over the two views.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from training.engine import FitContext
from training.methods.common import BackboneMethod, grey_view, lars_parameter_groups
from training.methods.heads import feature_dim, mlp, pooled_features
from training.methods.views import ViewRecipe, Views
from training.recipes import (LARS_1000_EPOCHS, SMALL_EMBEDDING, Optimizer, method_recipes, paper_recipe,
                              small_recipe, tiny_recipe)


def normalized_mse_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``|| p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z)`` per row, averaged; the target is not trained."""
    p = F.normalize(prediction, dim=1)
    z = F.normalize(target.detach(), dim=1)
    return (2.0 - 2.0 * (p * z).sum(dim=1)).mean()


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Symmetric loss: view 1's prediction against view 2's target projection, and vice versa."""
    return normalized_mse_loss(p1, z2) + normalized_mse_loss(p2, z1)


def target_decay(step: int, total_steps: int, base: float = 0.996) -> float:
    """BYOL's schedule: tau = 1 - (1 - base) * (cos(pi * step / total) + 1) / 2, from base to 1."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, decay: float) -> None:
    """``target <- decay * target + (1 - decay) * online`` for every parameter.

    Buffers (BatchNorm running statistics) are left alone: as in BYOL's code, the target keeps its
    own, updated by its own forward passes.
    """
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(decay).add_(o.detach(), alpha=1.0 - decay)


@dataclass(frozen=True)
class BYOLOptions:
    hidden_dim: int = 4096              # projector and predictor: Linear-BN-ReLU-Linear
    out_dim: int = 256
    base_decay: float = 0.996           # tau_base of the target's moving average
    # The two views are augmented differently: blur always on the first, rarely on the second;
    # solarisation only on the second.
    view1: ViewRecipe = field(default_factory=lambda: ViewRecipe(
        crop_scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2), jitter_p=0.8, grey_p=0.2, blur_p=1.0, solarize_p=0.0))
    view2: ViewRecipe = field(default_factory=lambda: ViewRecipe(
        crop_scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2), jitter_p=0.8, grey_p=0.2, blur_p=0.1, solarize_p=0.2))
    batched_views: bool = False         # augment whole batches in forward (see views.Views)


class BYOL(BackboneMethod, options=BYOLOptions):
    def build(self, o: BYOLOptions) -> None:
        self.projector = mlp(feature_dim(self.backbone), o.hidden_dim, o.out_dim)
        self.predictor = mlp(o.out_dim, o.hidden_dim, o.out_dim)
        # The target starts as a copy of the online encoder and projector and is never trained.
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.views = Views(self.backbone.entry.input, [o.view1, o.view2], o.batched_views)

    def train_transform(self):
        return self.views.transform()

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        view1, view2 = self.views(batch["x"])
        both = torch.cat([view1, view2])
        z = self.projector(pooled_features(self.backbone, both))
        p1, p2 = self.predictor(z).float().chunk(2)
        with torch.no_grad():
            t1, t2 = self.target_projector(pooled_features(self.target_backbone, both)).float().chunk(2)
        loss = byol_loss(p1, p2, t1, t2)
        return {"loss": loss, "target_cos": 1.0 - loss.detach() / 4.0}  # mean cosine of the two terms

    def parameter_groups(self):
        return lars_parameter_groups(self)

    def after_step(self, ctx: FitContext) -> None:
        decay = target_decay(ctx.step, self.recipe.epochs * ctx.steps_per_epoch, self.options.base_decay)
        ema_update(self.target_backbone, self.backbone, decay)
        ema_update(self.target_projector, self.projector, decay)


METHOD = BYOL

# The small and tiny recipes' views of grey images; solarisation on the second view only, as in
# the paper's pair.
_GREY_VIEWS = dict(view1=grey_view(), view2=grey_view(solarize_p=0.2))

RECIPES = method_recipes(__name__, {
    # Grill et al. 2020, Sec. 3.3 and Appendix B/C: batch 4096, LARS with lr 0.2 x batch/256 = 3.2,
    # weight decay 1.5e-6, biases and BN excluded from LARS and decay, 10 warm-up epochs then
    # cosine decay, 1000 epochs; projector and predictor 4096-256; tau_base 0.996 raised to 1 along
    # a cosine; the asymmetric view pair (blur p 1.0 / 0.1, solarise p 0 / 0.2; colour jitter 0.4,
    # 0.4, 0.2 with p 0.8, greyscale p 0.2). Not reproduced: hue jitter (0.1).
    "paper": paper_recipe(
        **LARS_1000_EPOCHS, model="byol_resnet50", optimizer=Optimizer("lars", lr=3.2, weight_decay=1.5e-6),
        options=BYOLOptions(), source="Grill et al. 2020 (arXiv 2006.07733) Sec. 3.3, Appendix B and C"),
    # S3L scale: Fashion-MNIST 32x32 grey, the small ResNet, 10,000 images; a faster-moving target
    # (tau_base 0.99) for a short run. 6 epochs (234 steps) beat random init on kNN (71.5 vs 66.5)
    # but not on the linear probe (87.0 vs 87.0 at the best layers): BYOL needs more steps than
    # SimCLR, so 12 epochs.
    "small": small_recipe(
        **SMALL_EMBEDDING, model="byol_resnet_small_fmnist", epochs=12, batch_size=256,
        optimizer=Optimizer(lr=0.2, weight_decay=5e-4),
        options=BYOLOptions(hidden_dim=512, out_dim=128, base_decay=0.99, batched_views=True, **_GREY_VIEWS),
        source="Grill et al. 2020, scaled down"),
    "tiny": tiny_recipe(
        model="byol_resnet_small_fmnist", batch_size=32, optimizer=Optimizer(lr=0.1, weight_decay=1e-4),
        options=BYOLOptions(hidden_dim=64, out_dim=32, base_decay=0.99, **_GREY_VIEWS)),
})
