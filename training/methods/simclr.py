"""SimCLR: a simple framework for contrastive learning of visual representations.

Chen, Kornblith, Norouzi, Hinton, ICML 2020 (https://arxiv.org/abs/2002.05709). Each image is
augmented twice (random-resized crop and flip, strong colour distortion, Gaussian blur); the
backbone's pooled feature h goes through a projection MLP g to z, and the NT-Xent loss asks each
view to pick its partner out of the other 2N - 2 views of the batch, by cosine similarity over a
temperature. Only the backbone is published; the projection head is a pretraining device. Under
DDP the projections of all ranks are gathered, so the negatives come from the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from training.methods.common import BackboneMethod, grey_view, lars_parameter_groups
from training.methods.heads import feature_dim, gather_with_grad, mlp, pooled_features
from training.methods.views import ViewRecipe, Views, copy_pair_transform
from training.recipes import (LARS_1000_EPOCHS, SMALL_EMBEDDING, Optimizer, method_recipes, paper_recipe,
                              small_recipe, tiny_recipe)


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Normalised-temperature cross entropy over a batch of N pairs (2N anchors, mean loss).

    ``z1[i]`` and ``z2[i]`` are the projections of two views of image i. Each of the 2N views is
    an anchor: its positive is its partner, its negatives every other view of the batch, and the
    similarity is cosine / temperature.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent_loss needs two (N, D) tensors of one shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    self_pair = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = (z @ z.t() / temperature).masked_fill(self_pair, float("-inf"))  # never its own candidate
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, partner)


@dataclass(frozen=True)
class SimCLROptions:
    temperature: float = 0.1
    hidden_dim: int = 2048              # projection MLP: h -> hidden -> out
    out_dim: int = 128
    view: ViewRecipe = field(default_factory=lambda: ViewRecipe(
        crop_scale=(0.08, 1.0), jitter=(0.8, 0.8, 0.8), jitter_p=0.8, grey_p=0.2, blur_p=0.5))
    batched_views: bool = False         # augment whole batches in forward (see views.Views)
    # Copy detection: the two views are the image itself and a copy distorted by the benchmark's
    # chain (views.copy_pair_transform) instead of two ``view`` augmentations.
    copy_views: bool = False


class SimCLR(BackboneMethod, options=SimCLROptions):
    def build(self, o: SimCLROptions) -> None:
        self.projector = mlp(feature_dim(self.backbone), o.hidden_dim, o.out_dim)
        self.views = Views(self.backbone.entry.input, [o.view] * 2, o.batched_views and not o.copy_views)

    def train_transform(self):
        if self.options.copy_views:
            return copy_pair_transform(self.backbone.entry.input)
        return self.views.transform()

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        view1, view2 = self.views(batch["x"])
        # One pass over both views, so BatchNorm normalises them with the same statistics.
        z = self.projector(pooled_features(self.backbone, torch.cat([view1, view2]))).float()
        z1, z2 = gather_with_grad(z[: len(view1)]), gather_with_grad(z[len(view1):])
        loss = nt_xent_loss(z1, z2, self.options.temperature)
        with torch.no_grad():  # how often a view's nearest other view is its partner
            a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
            hits = ((a @ b.t()).argmax(1) == torch.arange(len(a), device=a.device)).float().mean()
        return {"loss": loss, "pair_acc": hits}

    def parameter_groups(self):
        return lars_parameter_groups(self)


METHOD = SimCLR

RECIPES = method_recipes(__name__, {
    # The paper (Sec. 2.3, B.1) and google-research/simclr: batch 4096, LARS with lr 0.3 x batch/256
    # = 4.8, weight decay 1e-6, 10 warm-up epochs then cosine decay; the released ResNet-50 (1x)
    # was trained for 1000 epochs; temperature 0.1 (the repository's ImageNet command); a 2-layer
    # projection MLP 2048-2048-128; crops of 8-100 % of the area, colour distortion of strength 1
    # (brightness, contrast, saturation 0.8 with p 0.8; greyscale p 0.2), blur with p 0.5.
    # Not reproduced: the hue jitter (0.2) and global (cross-device) BatchNorm.
    "paper": paper_recipe(
        **LARS_1000_EPOCHS, model="simclr_resnet50", optimizer=Optimizer("lars", lr=4.8, weight_decay=1e-6),
        options=SimCLROptions(),
        source="Chen et al. 2020 (arXiv 2002.05709) Sec. 2.3 and B.1; google-research/simclr README"),
    # S3L scale: Fashion-MNIST at 32x32 grey, a 4-stage ResNet of widths 16-128 with one block per
    # stage, 10,000 images for 8 epochs. Grey images: no saturation jitter, greyscale or blur; the
    # CIFAR command of the official repository (no blur, weaker colour jitter, temperature 0.5).
    "small": small_recipe(
        **SMALL_EMBEDDING, model="simclr_resnet_small_fmnist", epochs=8, batch_size=256,
        optimizer=Optimizer(lr=0.3, weight_decay=5e-4),
        options=SimCLROptions(temperature=0.5, hidden_dim=256, out_dim=64, batched_views=True, view=grey_view()),
        source="google-research/simclr CIFAR-10 command, scaled down"),
    # Colour photos at 64 px (registry: simclr_resnet_small_photos), trained for copy detection:
    # single-image-paper crops of the training photos (zoo.photos.TRAINING_PHOTOS; --data photo:NAME
    # for the 1-image version), each paired with a copy of it distorted by the copy-detection chain
    # (copy_views), never with a second crop: crop-invariant views would teach the network that two
    # parts of one photo are the same image, and a copy must be told from the rest of its photo.
    # Sized for 2 shared CPU cores: 1,800 steps of 128 pairs, one loader process (793 s for seed 0
    # in bf16 alone on a Sapphire Rapids Xeon with AMX, 1,222-1,281 s for seeds 1 and 2 side by side
    # on its 2 cores: the shipped runs' config.json). 900 steps gave 64.1 ± 4.9 mAP on the held-out
    # photos, 1,800 give 72.5 ± 2.8 (README, "Colour photos").
    "photos": small_recipe(
        **{**SMALL_EMBEDDING, "limit": 12_800}, model="simclr_resnet_small_photos", data="training-photos",
        epochs=18, batch_size=128, workers=1, optimizer=Optimizer(lr=0.05, weight_decay=5e-4),
        options=SimCLROptions(temperature=0.1, hidden_dim=256, out_dim=64, copy_views=True),
        source="google-research/simclr, scaled down; Asano et al. 2020 (arXiv 1904.13132) crops; "
               "zoo.retrieval's copy distortions as the second view"),
    # Seconds: for tests.
    "tiny": tiny_recipe(
        model="simclr_resnet_small_fmnist", batch_size=32, optimizer=Optimizer(lr=0.1, weight_decay=1e-4),
        options=SimCLROptions(temperature=0.5, hidden_dim=64, out_dim=32, batched_views=True, view=grey_view()),
    ),
})
