"""S4L-Rotation: semi-supervised classification with rotation prediction as the unlabelled loss.

Zhai, Oliver, Kolesnikov, Beyer, "S4L: Self-Supervised Semi-Supervised Learning", ICCV 2019
(https://arxiv.org/abs/1905.03670). A classifier is trained on a small labelled subset of the
training set while a rotation head on the same trunk predicts which of four quarter turns was
applied to every image, labelled or not. Facts from the paper and the official code
(google-research/s4l, semi_supervised/rotation.py and config/s4l_rotation.sh):

* every image of a minibatch is shown in all four rotations; the class cross-entropy is taken on
  all four rotated copies of each labelled image (its label repeated), the rotation cross-entropy
  on the labelled and on the unlabelled images, and the loss is ``L_class + w * L_rotation`` with
  ``w = 1`` (``--rot_loss_weight 1.0 --rot_loss_sup 1 --rot_loss_unsup 1``);
* each minibatch holds as many unlabelled as labelled images (``--unsup_batch_mult 1``: 256 + 256);
  the unlabelled images are drawn from the whole training set;
* the reported accuracy is the classifier's on unrotated test images (``unrotated top1``), with the
  average of its predictions over the four rotations (``rot_avg top1``) beside it;
* the supervised baseline trains the same network on the labelled images alone, without rotations
  (config/supervised_imagenet_10p.sh). Here that is the recipe ``small-supervised`` (rotation weight
  0): the same batches, of which only the labelled images are used, unrotated.

An epoch visits as many images as the training set holds (``epoch_indices``): half of them the
labelled images, each repeated as often as that takes, half drawn from the whole training set,
shuffled together, so a batch holds equal numbers of labelled and unlabelled images on average.
With 10 % of the labels an epoch thus shows every labelled image 5 times: the official schedule's
200 epochs of the labelled set are 40 of ours.
``evaluate`` reports the classifier's accuracy on held-out images: that is the semi-supervised
result. Only the backbone is published; the classifier stays in the training checkpoint.

``S4LOptions.mixup`` (recipes ``small-mwh`` and ``small-supervised-mwh``) trains with mixup
without hesitation (``training.methods.mixup``): the labelled images of a batch are mixed among
themselves before they are rotated, and their class loss is mixed; the rotation loss is not (a
mixed image is still turned by one known quarter turn), and unlabelled images are not mixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from training.engine import FitContext
from training.methods.common import BackboneMethod, crop_flip_augment, heldout_images
from training.methods.heads import feature_dim, pooled_features
from training.methods.mixup import MixupState, MixupWithoutHesitation, mix, mixed_loss
from training.recipes import Optimizer, Schedule, method_recipes, paper_recipe, small_recipe, tiny_recipe
from training.transforms import eval_transform, rotate_batch
from zoo.errors import UsageError


@dataclass(frozen=True)
class S4LOptions:
    label_fraction: float = 0.1       # share of the training set whose labels are used, equal per class
    num_classes: int = 10
    rotation_weight: float = 1.0      # w; 0 trains the supervised-only baseline on the same labelled images
    augment: str = "crop-flip"        # "crop-flip" (small images) or "resized-crop-flip" (the paper's inception crop)
    crop_padding: int = 4
    mixup: MixupWithoutHesitation | None = None  # mixup without hesitation of the labelled images; None: off


def balanced_subset(labels: torch.Tensor, fraction: float, num_classes: int, seed: int) -> torch.Tensor:
    """Sorted positions of a labelled subset: ``round(fraction * n / num_classes)`` images of every
    class (all of a class that has fewer), n counting the images with a label (>= 0); which ones
    is a permutation seeded by ``seed``, so the subset depends on nothing else."""
    known = labels >= 0
    per_class = max(1, round(fraction * int(known.sum()) / num_classes))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    chosen = [order[labels[order] == c][:per_class] for c in range(num_classes)]
    return torch.cat(chosen).sort().values


def epoch_draw(labelled: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """One epoch's ``n`` dataset indices: ``n // 2`` labelled ones (the labelled indices in a seeded
    order, repeated and cut to length, so their counts differ by at most one), then the rest drawn
    without replacement from all ``n`` images (the unlabelled half of the batches, as the official
    code draws them from the whole training set)."""
    g = torch.Generator().manual_seed(seed)
    half = n // 2
    shuffled = labelled[torch.randperm(len(labelled), generator=g)]
    tiled = shuffled.repeat(-(-half // len(shuffled)))[:half]
    return torch.cat([tiled, torch.randperm(n, generator=g)[:n - half]])


def s4l_loss(class_logits: torch.Tensor, labels: torch.Tensor, rotation_logits: torch.Tensor | None,
             rotations: torch.Tensor | None, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(``L_class + weight * L_rotation``, ``L_rotation``): mean cross-entropies over the rows given;
    without rotation logits (the supervised baseline) the class loss alone and a zero."""
    loss_class = F.cross_entropy(class_logits, labels)
    if rotation_logits is None:
        return loss_class, torch.zeros((), device=class_logits.device)
    loss_rot = F.cross_entropy(rotation_logits, rotations)
    return loss_class + weight * loss_rot, loss_rot


class S4L(BackboneMethod, options=S4LOptions):
    data_sized_buffers = ("is_labelled",)

    def build(self, o: S4LOptions) -> None:
        dim = feature_dim(self.backbone)
        self.classifier = nn.Linear(dim, o.num_classes)
        self.rotation_head = nn.Linear(dim, 4)
        self.register_buffer("is_labelled", torch.empty(0, dtype=torch.bool))  # one flag per training image
        self.mixup = MixupState(o.mixup, self.recipe.epochs) if o.mixup else None

    def train_transform(self):
        o = self.options
        return crop_flip_augment(self.backbone.entry.input, o.augment, crop_padding=o.crop_padding)

    def on_fit_start(self, ctx: FitContext) -> None:
        # Only the labels are needed: a stand-in transform skips decoding work on every image.
        _, labels, index = ctx.map(lambda b: b["label"], ctx.dataset, lambda image: torch.zeros(()), with_index=True)
        if not bool((labels >= 0).any()):
            raise UsageError(f"s4l needs labelled training data, but {ctx.data or 'the data'} has no labels; "
                             "pass --data with class labels (an ImageFolder tree, fmnist, cifar10)")
        chosen = index[balanced_subset(labels, self.options.label_fraction, self.options.num_classes,
                                       self.recipe.seed)]
        flags = torch.zeros(len(ctx.dataset), dtype=torch.bool)
        flags[chosen] = True
        self.is_labelled = flags.to(ctx.device)

    def epoch_indices(self, ctx: FitContext):
        labelled = self.is_labelled.nonzero().flatten().cpu()
        return epoch_draw(labelled, len(self.is_labelled), self.recipe.seed * 1_000_003 + ctx.epoch).tolist()

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        x, labels = batch["x"], batch["label"]
        has_label = self.is_labelled[batch["index"]]
        n_labelled = has_label.sum()
        partner, lam = self.mixup.draw(int(n_labelled), x.device) if self.mixup is not None else (None, 1.0)
        if lam != 1.0:  # the labelled images mixed among themselves
            x = x.clone()
            x[has_label] = mix(x[has_label], partner, lam)
        if self.options.rotation_weight == 0:  # the baseline: the labelled images only, unrotated
            if not bool(n_labelled):
                return {"loss": sum(p.sum() for p in self.parameters()) * 0.0}
            logits = self.classifier(pooled_features(self.backbone, x[has_label])).float()
            loss = mixed_loss(lambda y: s4l_loss(logits, y, None, None, 0.0)[0], labels[has_label], partner, lam)
            return {"loss": loss, "class_acc": (logits.argmax(1) == labels[has_label]).float().mean()}
        rotated, turns = rotate_batch(x)
        h = pooled_features(self.backbone, rotated)
        rot_logits = self.rotation_head(h).float()
        rows = has_label.repeat(4)  # the four rotated copies of each labelled image
        class_logits = self.classifier(h[rows]).float()
        class_target = labels.repeat(4)[rows]
        loss, loss_rot = s4l_loss(class_logits, class_target, rot_logits, turns, self.options.rotation_weight)
        if lam != 1.0:  # the class loss of the four rotated copies, mixed with the partners' labels
            n = int(n_labelled)
            partners = torch.cat([partner + r * n for r in range(4)])
            loss = mixed_loss(lambda y: F.cross_entropy(class_logits, y), class_target, partners, lam) \
                + self.options.rotation_weight * loss_rot
        if not bool(n_labelled):  # no labelled image drawn: the rotation loss alone
            loss = self.options.rotation_weight * loss_rot
        metrics = {"loss": loss, "rotation_loss": loss_rot.detach(),
                   "rotation_acc": (rot_logits.argmax(1) == turns).float().mean()}
        if bool(n_labelled):
            metrics["class_acc"] = (class_logits.argmax(1) == class_target).float().mean()
        return metrics

    @torch.no_grad()
    def predictions(self, batch: dict) -> torch.Tensor:
        """Per image: [class right unrotated, class right averaged over rotations, rotations right (of 4)]."""
        rotated, turns = rotate_batch(batch["x"])
        h = pooled_features(self.backbone, rotated)
        class_logits = self.classifier(h).float().view(4, len(batch["x"]), -1)
        labels = batch["label"]
        unrotated = (class_logits[0].argmax(1) == labels).float()
        averaged = (class_logits.softmax(-1).mean(0).argmax(1) == labels).float()
        rotations = (self.rotation_head(h).argmax(1) == turns).float().view(4, -1).sum(0)
        return torch.stack([unrotated, averaged, rotations], 1)

    def after_step(self, ctx: FitContext) -> None:
        if self.mixup is not None:
            self.mixup.after_step(ctx)

    def evaluate(self, ctx: FitContext) -> dict[str, float]:
        """The semi-supervised result: the classifier's top-1 on held-out images (the data's test
        split unless the recipe names one), unrotated and averaged over the four rotations, beside
        the rotation accuracy and the number of labelled training images used."""
        heldout = heldout_images(self, ctx, "classification accuracy")
        if heldout is None:
            return {}
        scores, _ = ctx.map(self.predictions, heldout, eval_transform(self.backbone.entry.input))
        metrics = {"semi_supervised_top1": float(scores[:, 0].mean()),
                   "semi_supervised_top1_rot_avg": float(scores[:, 1].mean()),
                   "labelled_images": float(self.is_labelled.sum())}
        if self.options.rotation_weight:
            metrics["rotation_acc"] = float(scores[:, 2].mean() / 4)
        return metrics


METHOD = S4L

# The small recipes: Fashion-MNIST at 32x32 grey on the small ResNet, a fixed 16,000-image subset
# of which 10 % keep their labels (1,600 images, 160 per class), the paper's loss weights, batches
# of 64 labelled + 64 drawn images (each in four rotations), one epoch (125 steps: 5 epochs of the
# labelled set); SGD with the official weight decay (1e-3) and schedule shape (warm-up, then x0.1
# at 70, 80 and 90 % of the run), bf16 autocast.
# Measured once (seed 0, 5,000 test images): S4L 62.9 % top-1 unrotated (rotation 87.2 %), the
# supervised-only recipe 72.9 %: at 5 epochs of the labelled set the rotation loss and the
# rotated copies of the labelled images still slow the classifier down (the paper trains 200).
_SMALL = dict(model="s4l_resnet_small_fmnist", epochs=1, batch_size=128, limit=16_000, heldout_limit=5_000,
              schedule=Schedule("step", milestones=(0.7, 0.8, 0.9), warmup_epochs=0.05),
              checkpoint_every=20, log_every=5)

_SMALL_MWH = MixupWithoutHesitation(period=0.05)

RECIPES = method_recipes(__name__, {
    # config/s4l_rotation.sh of google-research/s4l: ImageNet with 10 % of the labels (128,000
    # images), 256 labelled + 256 unlabelled images per batch, SGD lr 0.03 (not scaled with the
    # batch), weight decay 1e-3, schedule '5,140,160,180,200' (5 warm-up epochs, x0.1 at 140, 160
    # and 180, 200 epochs of the labelled set: 40, with 1 of warm-up and steps at 28, 32, 36, of our
    # epochs, which show each labelled image 5 times), inception crops and flips. Their ResNet-50 v2
    # has 4x the width; the zoo's nearest is the standard ResNet-50.
    "paper": paper_recipe(
        model="byol_resnet50", epochs=40, batch_size=512, optimizer=Optimizer(lr=0.03, weight_decay=1e-3),
        schedule=Schedule("step", milestones=(28, 32, 36), warmup_epochs=1),
        options=S4LOptions(num_classes=1000, augment="resized-crop-flip"),
        source="google-research/s4l config/s4l_rotation.sh (S4L-Rotation, 10 % of ImageNet labels)"),
    "small": small_recipe(**_SMALL, optimizer=Optimizer(lr=0.05, weight_decay=1e-3), options=S4LOptions(),
                          source="google-research/s4l config/s4l_rotation.sh, scaled down"),
    # The supervised-only baseline of the same run: the same labelled images, batches and steps,
    # no rotation loss (config/supervised_imagenet_10p.sh: the labelled images alone, unrotated).
    "small-supervised": small_recipe(**_SMALL, optimizer=Optimizer(lr=0.05, weight_decay=1e-3),
                                     options=S4LOptions(rotation_weight=0.0),
                                     source="google-research/s4l config/supervised_imagenet_10p.sh, scaled down"),
    # Both with mixup without hesitation (Yu et al. 2021) over the one epoch of 125 steps: mixup for
    # 60 %, on and off every 0.05 epoch (about 6 steps) up to 90 %, then fading out.
    "small-mwh": small_recipe(**_SMALL, optimizer=Optimizer(lr=0.05, weight_decay=1e-3),
                              options=S4LOptions(mixup=_SMALL_MWH),
                              source="google-research/s4l config/s4l_rotation.sh, scaled down; mixup without "
                                     "hesitation (Yu et al. 2021)"),
    "small-supervised-mwh": small_recipe(
        **_SMALL, optimizer=Optimizer(lr=0.05, weight_decay=1e-3),
        options=S4LOptions(rotation_weight=0.0, mixup=_SMALL_MWH),
        source="google-research/s4l config/supervised_imagenet_10p.sh, scaled down; mixup without hesitation "
               "(Yu et al. 2021)"),
    "tiny": tiny_recipe(
        model="s4l_resnet_small_fmnist", batch_size=16, limit=128, heldout_limit=64,
        optimizer=Optimizer(lr=0.05, weight_decay=1e-3), options=S4LOptions(label_fraction=0.5),
    ),
})
