"""Multi-task self-supervision: one trunk, several pretext heads trained together.

Doersch & Zisserman, "Multi-task Self-Supervised Visual Learning", ICCV 2017
(https://arxiv.org/abs/1708.07860). The paper trains one ResNet trunk on four pretext tasks at
once, each with its own head, and adds their losses (its "naive" combination: every task's
gradient reaches the shared trunk unscaled; the weights here are therefore all 1 by default). Of
its four tasks, two fit grey still images and are kept; two cannot be posed and are left out:

* relative position (Doersch, Gupta, Efros, ICCV 2015, https://arxiv.org/abs/1505.05192): the
  centre patch of a 3x3 grid and one of its 8 neighbours are encoded by the trunk separately, and a
  head on the two concatenated features names which neighbour it is. The 2015 paper leaves gaps
  between the patches (48 pixels between 96-pixel patches) and jitters each by up to 7 pixels so
  that continuing edges and textures across the border cannot give the answer away; here a patch
  is ``patch`` pixels inside a ``cell``-pixel cell, jittered by up to ``jitter`` pixels;
* exemplar (Dosovitskiy et al., NIPS 2014, https://arxiv.org/abs/1406.6909): surrogate classes,
  each one seed image, recognised from strongly transformed copies. The seeds are the first
  ``exemplar_classes`` images of the training set, visited ``exemplar_repeats`` extra times an epoch
  so that every class is seen in several transformations;
* rotation (Gidaris et al., ICLR 2018), which came after the paper, stands in for the paper's
  fourth task: each image is turned by one random quarter turn and a head names it (one turn an
  image rather than RotNet's all four, a quarter of the cost);
* left out: colorization (Fashion-MNIST has no colour to predict) and motion segmentation (it
  needs video: which pixels move in the next frames).

The paper's input "harmonisation" makes the tasks' inputs alike, so that the trunk is not trained
on inputs it never sees in use: relative position, which dropped colour channels against
chromatic aberration, and exemplar, which jittered colour, all take greyscale images instead. Here
the data is grey already, and every task reads the same augmented view, converted and normalised
by the model's own ``InputSpec`` exactly as at inference; the relative-position patches are cut
from that view and resized to ``patch_size``, with nothing of their own (no per-patch
normalisation, no channel tricks). Each head's accuracy is logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from training.engine import FitContext
from training.methods.common import BackboneMethod, grey_view, heldout_images
from training.methods.heads import feature_dim, mlp, pooled_features
from training.methods.views import ViewRecipe, Views
from training.recipes import Optimizer, Schedule, method_recipes, paper_recipe, small_recipe, tiny_recipe
from training.transforms import eval_transform, rotate_each

# The 8 neighbours of the centre cell of a 3x3 grid, (row, column) offsets, in reading order:
# relative-position class k is NEIGHBOURS[k].
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


@dataclass(frozen=True)
class MultiTaskOptions:
    relpos_weight: float = 1.0
    rotation_weight: float = 1.0
    exemplar_weight: float = 1.0
    cell: int = 10                  # relative position: grid cell side, pixels of the view
    patch: int = 6                  # patch side inside a cell (gap between patches: cell - patch +- 2 jitter)
    jitter: int = 1                 # random shift of each patch from its cell's centre, up to this many pixels
    patch_size: int = 16            # patches are resized to this before the trunk
    exemplar_classes: int = 500     # surrogate classes: the first this many training images
    exemplar_repeats: int = 8       # extra visits of each seed an epoch
    hidden_dim: int = 256           # the relative-position head's hidden layer
    view: ViewRecipe = field(default_factory=lambda: grey_view(blur_p=0.5))
    batched_views: bool = True


def grid_origin(size: int, cell: int) -> int:
    """Top-left pixel of a centred 3x3 grid of ``cell``-pixel cells in a ``size``-pixel image."""
    if 3 * cell > size:
        raise ValueError(f"a 3x3 grid of {cell}-pixel cells does not fit in {size} pixels")
    return (size - 3 * cell) // 2


def patch_corner(row: int, col: int, shift: tuple[int, int], size: int, cell: int, patch: int) -> tuple[int, int]:
    """(top, left) of the patch of grid cell (row, col) in 0..2, centred in its cell and moved by
    ``shift`` (dy, dx) pixels; the patch stays inside its cell, so patches never overlap."""
    slack = cell - patch
    if slack < 0:
        raise ValueError(f"patch {patch} is larger than the cell {cell}")
    origin = grid_origin(size, cell)
    inside = [slack // 2 + s for s in shift]
    if not all(0 <= v <= slack for v in inside):
        raise ValueError(f"a shift of {shift} moves a {patch}-pixel patch out of its {cell}-pixel cell")
    return origin + row * cell + inside[0], origin + col * cell + inside[1]


def relative_position_pairs(x: torch.Tensor, targets: torch.Tensor, shifts: torch.Tensor, cell: int,
                            patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image of (B, C, S, S): its centre patch and the neighbour patch ``NEIGHBOURS[target]``,
    each moved by its row of ``shifts`` (B, 2 patches, 2 coordinates). Returns two (B, C, patch, patch)."""
    size = x.shape[-1]
    centres, others = [], []
    for image, target, shift in zip(x, targets.tolist(), shifts.tolist()):
        dy, dx = NEIGHBOURS[target]
        top, left = patch_corner(1, 1, shift[0], size, cell, patch)
        centres.append(image[:, top:top + patch, left:left + patch])
        top, left = patch_corner(1 + dy, 1 + dx, shift[1], size, cell, patch)
        others.append(image[:, top:top + patch, left:left + patch])
    return torch.stack(centres), torch.stack(others)


def multitask_loss(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """The weighted sum of the tasks' losses; a task without a loss this batch adds nothing."""
    return sum(weights[name] * loss for name, loss in losses.items())


class MultiTask(BackboneMethod, options=MultiTaskOptions):
    def build(self, o: MultiTaskOptions) -> None:
        dim = feature_dim(self.backbone)
        patch_corner(0, 0, (o.jitter, o.jitter), self.backbone.entry.input.size, o.cell, o.patch)  # checks the grid
        self.relpos_head = mlp(2 * dim, o.hidden_dim, len(NEIGHBOURS))
        self.rotation_head = nn.Linear(dim, 4)
        self.exemplar_head = nn.Linear(dim, o.exemplar_classes)
        self.views = Views(self.backbone.entry.input, [o.view], o.batched_views)

    def train_transform(self):
        return self.views.transform()

    def epoch_indices(self, ctx: FitContext):
        """Every image once, and the exemplar seeds ``exemplar_repeats`` more times."""
        seeds = list(range(min(self.options.exemplar_classes, len(ctx.dataset))))
        return list(range(len(ctx.dataset))) + seeds * self.options.exemplar_repeats

    def relative_position(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, targets) of the relative-position task on a batch of views."""
        o, b = self.options, x.shape[0]
        targets = torch.randint(0, len(NEIGHBOURS), (b,))
        shifts = torch.randint(-o.jitter, o.jitter + 1, (b, 2, 2))
        pair = relative_position_pairs(x, targets, shifts, o.cell, o.patch)
        h = [pooled_features(self.backbone, F.interpolate(p, size=o.patch_size, mode="bilinear",
                                                          align_corners=False)) for p in pair]
        return self.relpos_head(torch.cat(h, 1)).float(), targets.to(x.device)

    def rotation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        turns = torch.randint(0, 4, (x.shape[0],)).to(x.device)
        return self.rotation_head(pooled_features(self.backbone, rotate_each(x, turns))).float(), turns

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        o = self.options
        (x,) = self.views(batch["x"])
        logits = {"relpos": self.relative_position(x), "rotation": self.rotation(x)}
        seeds = batch["index"] < o.exemplar_classes
        if bool(seeds.any()):
            logits["exemplar"] = (self.exemplar_head(pooled_features(self.backbone, x[seeds])).float(),
                                  batch["index"][seeds])
        losses = {name: F.cross_entropy(z, t) for name, (z, t) in logits.items()}
        weights = {"relpos": o.relpos_weight, "rotation": o.rotation_weight, "exemplar": o.exemplar_weight}
        metrics = {"loss": multitask_loss(losses, weights)}
        for name, (z, t) in logits.items():
            metrics[f"{name}_loss"] = losses[name].detach()
            metrics[f"{name}_acc"] = (z.argmax(1) == t).float().mean()
        return metrics

    @torch.no_grad()
    def heldout_hits(self, batch: dict) -> torch.Tensor:
        """Per image: [relative position right, rotation right] (one random draw each)."""
        relpos, t = self.relative_position(batch["x"])
        rotation, turns = self.rotation(batch["x"])
        return torch.stack([(relpos.argmax(1) == t).float(), (rotation.argmax(1) == turns).float()], 1)

    def evaluate(self, ctx: FitContext) -> dict[str, float]:
        """Relative-position and rotation accuracy on held-out images (chance: 1/8 and 1/4); the
        exemplar classes are training images, so that head has no held-out score."""
        heldout = heldout_images(self, ctx, "pretext accuracies")
        if heldout is None:
            return {}
        hits, _ = ctx.map(self.heldout_hits, heldout, eval_transform(self.backbone.entry.input))
        return {"relpos_acc": float(hits[:, 0].mean()), "rotation_acc": float(hits[:, 1].mean())}


METHOD = MultiTask

RECIPES = method_recipes(__name__, {
    # The paper's trunk is ResNet-101 v2 trained on ImageNet asynchronously by many workers; its
    # optimiser settings are not in the sources we could read, so the optimiser and length below
    # are ours (the zoo's ResNet-50, SGD, RotNet's 50-epoch step schedule). The relative-position
    # geometry scales the 2015 paper's 96-pixel patches, 48-pixel gaps and 7-pixel jitter to a
    # 224-pixel view: 48-pixel patches in 74-pixel cells (gaps 12-40 px), resized to 96.
    "paper": paper_recipe(
        model="byol_resnet50", epochs=50, batch_size=256, optimizer=Optimizer(lr=0.1, weight_decay=1e-4),
        schedule=Schedule("step", milestones=(15, 30, 45)),
        options=MultiTaskOptions(cell=74, patch=48, jitter=7, patch_size=96, exemplar_classes=8000,
                                 exemplar_repeats=100, hidden_dim=4096, batched_views=False,
                                 view=ViewRecipe(crop_scale=(0.08, 1.0), grey_p=1.0)),
        source="Doersch & Zisserman 2017 (tasks, summed losses, greyscale inputs); optimiser ours"),
    # Fashion-MNIST 32x32 grey, the small ResNet, 8,000 images plus 250 exemplar seeds seen 8 more
    # times an epoch (78 steps), 2 epochs; 6-pixel patches in 10-pixel cells (gaps of 2-6 px) resized to 16.
    # Measured once (seed 0): held-out relative position 36.8 % (chance 12.5), rotation 58.9 % (25),
    # exemplar training accuracy 1.0 -> 2.7 % (chance 0.4); kNN 69.9 vs random init 65.5 +- 2.6.
    "small": small_recipe(
        model="multitask_resnet_small_fmnist", epochs=2, batch_size=128, limit=8_000, heldout_limit=2_000,
        optimizer=Optimizer(lr=0.05, weight_decay=5e-4),
        schedule=Schedule("cosine", warmup_epochs=0.1), checkpoint_every=50, log_every=10,
        options=MultiTaskOptions(exemplar_classes=250), source="Doersch & Zisserman 2017, scaled down"),
    "tiny": tiny_recipe(
        model="multitask_resnet_small_fmnist", batch_size=16, limit=96, heldout_limit=64,
        optimizer=Optimizer(lr=0.05, weight_decay=5e-4),
        # no extra visits of the seeds, so that an epoch is the data's size, as the engine tests assume
        options=MultiTaskOptions(exemplar_classes=16, exemplar_repeats=0, hidden_dim=32),
    ),
})
