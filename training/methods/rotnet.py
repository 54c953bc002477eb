"""RotNet: learn features by predicting which of four rotations was applied to an image.

Gidaris, Singh, Komodakis, "Unsupervised Representation Learning by Predicting Image Rotations",
ICLR 2018 (https://arxiv.org/abs/1803.07728). Every training image is shown in all four
orientations (0, 90, 180, 270 degrees) in the same batch, as the official code does, and the
network classifies the orientation with a cross-entropy loss. The classifier is a head on the
backbone's deepest feature layer: global average pooling and a linear layer for the NIN (the
paper's CIFAR classifier), a linear layer on fc7 for AlexNet. Only the backbone is published.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from training.engine import FitContext
from training.methods.common import BackboneMethod, crop_flip_augment, heldout_images
from training.recipes import Optimizer, Schedule, method_recipes, paper_recipe, small_recipe, tiny_recipe
from training.transforms import eval_transform, rotate_batch
from zoo.inspect import layer_shapes


@dataclass(frozen=True)
class RotNetOptions:
    quarter_turns: tuple[int, ...] = (0, 1, 2, 3)   # rotations by k x 90 degrees, one class each
    augment: str = "crop-flip"                      # "crop-flip" (CIFAR-style) or "resized-crop-flip" (ImageNet)
    crop_padding: int = 4


class RotNet(BackboneMethod, options=RotNetOptions):
    def build(self, o: RotNetOptions) -> None:
        _official_init(self.backbone)
        deepest = layer_shapes(self.backbone, self.backbone.entry.input)[self.backbone.feature_layers[-1]]
        self.head = nn.Linear(deepest[0], len(o.quarter_turns))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        return F.adaptive_avg_pool2d(f, 1).flatten(1) if f.dim() == 4 else f

    def train_transform(self):
        o = self.options
        return crop_flip_augment(self.backbone.entry.input, o.augment, crop_padding=o.crop_padding)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        rotated, target = rotate_batch(batch["x"], self.options.quarter_turns)
        logits = self.head(self.features(rotated))
        loss = F.cross_entropy(logits, target)
        return {"loss": loss, "rotation_acc": (logits.argmax(1) == target).float().mean()}

    @torch.no_grad()
    def rotation_correct(self, batch: dict) -> torch.Tensor:
        """Per image, how many of its rotations were classified correctly (0..4)."""
        rotated, target = rotate_batch(batch["x"], self.options.quarter_turns)
        hits = (self.head(self.features(rotated)).argmax(1) == target).float()
        return hits.view(len(self.options.quarter_turns), -1).sum(0)

    def evaluate(self, ctx: FitContext) -> dict[str, float]:
        """Rotation accuracy on held-out images (the data's test split unless the recipe names one)."""
        heldout = heldout_images(self, ctx, "rotation accuracy")
        if heldout is None:
            return {}
        correct, _ = ctx.map(self.rotation_correct, heldout, eval_transform(self.backbone.entry.input))
        return {"rotation_acc": float(correct.sum() / (len(correct) * len(self.options.quarter_turns)))}


def _official_init(module: nn.Module) -> None:
    """The official code's initialisation: convs N(0, 2 / (k * k * out_channels)), BN 1 and 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and m.weight.requires_grad:
            nn.init.normal_(m.weight, 0.0, (2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)) ** 0.5)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


METHOD = RotNet

RECIPES = method_recipes(__name__, {
    # The official configuration that produced the released AlexNet (config/ImageNet_RotNet_AlexNet.py
    # in gidariss/FeatureLearningRotNet, model_net_epoch50): 192 images per batch, each in all 4
    # rotations (768 inputs); SGD with Nesterov momentum 0.9 and weight decay 5e-4; its learning-rate
    # table gives 0.01 for epochs 0-14, 0.001 for 15-29, 1e-4 for 30-44, 1e-5 for 45-49; random-resized
    # 224 crops and horizontal flips.
    "paper": paper_recipe(
        model="rotnet_alexnet", epochs=50, batch_size=192,
        optimizer=Optimizer(lr=0.01, weight_decay=5e-4, nesterov=True),
        schedule=Schedule("step", milestones=(15, 30, 45)), options=RotNetOptions(augment="resized-crop-flip"),
        source="gidariss/FeatureLearningRotNet config/ImageNet_RotNet_AlexNet.py (the released model's schedule)"),
    # S3L scale: Fashion-MNIST at 32x32 grey, the paper's 4-block NIN at width 32 (registry entry
    # rotnet_nin_fmnist), a fixed 12,800-image subset, 2 epochs of 200 steps; the CIFAR recipe's
    # optimiser (SGD 0.1, Nesterov, wd 5e-4, x0.2 steps) compressed into those epochs.
    "small": small_recipe(
        model="rotnet_nin_fmnist", epochs=2, batch_size=64,
        precision="fp32",  # its shipped weights were trained in fp32, which `auto` was on every CPU then
        optimizer=Optimizer(lr=0.1, weight_decay=5e-4, nesterov=True),
        schedule=Schedule("step", milestones=(1.2, 1.7), gamma=0.2, warmup_epochs=0.1),
        limit=12_800, heldout_limit=2_000, checkpoint_every=50, log_every=10, options=RotNetOptions(),
        source="CIFAR schedule of gidariss/FeatureLearningRotNet (config/CIFAR10_RotNet_NIN4blocks.py: 200 epochs, "
               "lr 0.1 x0.2 at 60/120/160), compressed to 2 epochs"),
    # Seconds: for tests and `zoo quickstart --fast`.
    "tiny": tiny_recipe(
        model="rotnet_nin_fmnist", model_kwargs={"width": 16}, batch_size=32, limit=512, heldout_limit=256,
        optimizer=Optimizer(lr=0.1, weight_decay=5e-4, nesterov=True), options=RotNetOptions(),
    ),
})
