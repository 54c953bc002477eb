"""CPC v2, contrastive predictive coding (Henaff et al., ICML 2020, https://arxiv.org/abs/1905.09272).

An image becomes a grid of overlapping patches, each encoded on its own into a vector z. A
masked ("PixelCNN-style") context network turns the grid of z into context vectors c whose
receptive field covers only the rows above and the row itself. From c at row r a linear map
predicts z at row r + k; InfoNCE asks each prediction to pick its target out of every patch
vector of the batch (other positions and other images are the negatives). CPC v2 predicts in
several directions: the grid is rotated and each direction has its own context network and
predictors. Each patch is augmented on its own (flips and colour; CPC v2's "patch-based
augmentation"). Only the patch encoder (the backbone) is published.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from training.methods.common import BackboneMethod
from training.methods.heads import feature_dim, pooled_features
from training.methods.views import ViewRecipe, colour_jitter, random_greyscale, random_resized_crop
from training.recipes import (SMALL_EMBEDDING, Optimizer, Schedule, method_recipes, paper_recipe,
                              small_recipe, tiny_recipe)
from training.transforms import to_rgb_float
from zoo.preprocess import convert_and_normalise


def patch_grid(images: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """(B, C, H, W) images -> (B, rows, cols, C, patch, patch), patches ``stride`` apart.

    CPC cuts 64-pixel patches every 32 pixels (half overlap), a 7 x 7 grid from 256 pixels.
    """
    if images.dim() != 4:
        raise ValueError(f"patch_grid expects (B, C, H, W) images, got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    if patch > min(h, w):
        raise ValueError(f"patch size {patch} is larger than the {h}x{w} image")
    tiles = images.unfold(2, patch, stride).unfold(3, patch, stride)  # B, C, rows, cols, p, p
    return tiles.permute(0, 2, 3, 1, 4, 5).contiguous()


class _ContextBlock(nn.Module):
    """1x1 conv, ReLU, 1x3 conv along the row, a 2x1 conv over the row above and this row (the
    grid is padded with one empty row on top), ReLU, 1x1 conv; added to the input."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.reduce = nn.Conv2d(dim, hidden, 1)
        self.along_row = nn.Conv2d(hidden, hidden, (1, 3), padding=(0, 1))
        self.from_above = nn.Conv2d(hidden, hidden, (2, 1))
        self.expand = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.along_row(F.relu(self.reduce(x)))
        h = F.relu(self.from_above(F.pad(h, (0, 0, 1, 0))))
        return x + self.expand(h)


class RowCausalContext(nn.Module):
    """CPC v2's context network: residual blocks whose output at row r sees only rows <= r.

    The paper stacks 5 blocks with 256 hidden channels; each block widens the view by one row.
    """

    def __init__(self, dim: int, hidden: int = 256, blocks: int = 5):
        super().__init__()
        self.blocks = nn.Sequential(*[_ContextBlock(dim, hidden) for _ in range(blocks)])

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return F.relu(self.blocks(grid))


def info_nce_loss(predictions: torch.Tensor, candidates: torch.Tensor,
                  positives: torch.Tensor) -> torch.Tensor:
    """InfoNCE: cross entropy of the scores ``predictions . candidates^T`` against the index of
    each prediction's own target among the candidates; mean over predictions."""
    return F.cross_entropy(predictions @ candidates.t(), positives)


def spatial_info_nce(predictions: torch.Tensor, targets: torch.Tensor, offset: int) -> torch.Tensor:
    """InfoNCE of predictions made at row r for the targets at row r + ``offset``.

    Both are (B, D, rows, cols) grids. Every target vector of the batch is a candidate; the
    prediction at (b, r, col) has the target at (b, r + offset, col) as its positive. Rows with
    nothing ``offset`` rows below them make no prediction.
    """
    b, d, rows, cols = targets.shape
    if not 0 < offset < rows:
        raise ValueError(f"offset must be between 1 and {rows - 1} for a grid of {rows} rows, got {offset}")
    candidates = targets.permute(0, 2, 3, 1).reshape(-1, d)  # index (b * rows + r) * cols + col
    preds = predictions[:, :, : rows - offset].permute(0, 2, 3, 1).reshape(-1, d)
    image = torch.arange(b).view(-1, 1, 1)
    row = torch.arange(rows - offset).view(1, -1, 1) + offset
    col = torch.arange(cols).view(1, 1, -1)
    positives = ((image * rows + row) * cols + col).reshape(-1).to(targets.device)
    return info_nce_loss(preds, candidates, positives)


@dataclass(frozen=True)
class CPCOptions:
    image_size: int = 256               # the image is resized to this before the grid is cut
    crop_scale: tuple[float, float] = (0.3, 1.0)  # random-resized crop of the image first
    patch: int = 64                     # 64-pixel patches every 32 pixels: a 7 x 7 grid
    stride: int = 32
    target_dim: int = 64                # z and the predictions are compared in this space
    context_hidden: int = 256
    context_blocks: int = 5
    offsets: tuple[int, ...] = (2, 3)   # predict the rows this far below (1 would overlap the context)
    directions: int = 4                 # 1: top-down only; 2: and bottom-up; 4: and both sideways
    patch_view: ViewRecipe = field(default_factory=lambda: ViewRecipe(
        crop_scale=(1.0, 1.0), jitter=(0.4, 0.4, 0.4), jitter_p=0.8, grey_p=0.2, blur_p=0.0))


class CPC(BackboneMethod, options=CPCOptions):
    def build(self, o: CPCOptions) -> None:
        dim = feature_dim(self.backbone)
        self.to_target = nn.Conv2d(dim, o.target_dim, 1)
        self.contexts = nn.ModuleList(RowCausalContext(dim, o.context_hidden, o.context_blocks)
                                      for _ in range(o.directions))
        self.predictors = nn.ModuleList(nn.ModuleList(nn.Conv2d(dim, o.target_dim, 1) for _ in o.offsets)
                                        for _ in range(o.directions))

    def train_transform(self):
        o, spec = self.options, self.backbone.entry.input

        def transform(image: torch.Tensor) -> torch.Tensor:
            rgb = random_resized_crop(to_rgb_float(image)[None], o.image_size, o.crop_scale, ratio=(1.0, 1.0))
            patches = patch_grid(rgb, o.patch, o.stride)[0].flatten(0, 1)  # (rows * cols, 3, p, p)
            patches = random_resized_crop(patches, o.patch, scale=(1.0, 1.0), ratio=(1.0, 1.0))  # flips
            patches = colour_jitter(patches, *o.patch_view.jitter, p=o.patch_view.jitter_p)
            patches = random_greyscale(patches, o.patch_view.grey_p)
            return convert_and_normalise(patches, spec)

        return transform

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        o = self.options
        patches = batch["x"]  # (B, rows * cols, C, p, p)
        b, n = patches.shape[:2]
        side = round(n ** 0.5)
        z = pooled_features(self.backbone, patches.flatten(0, 1))
        grid = z.view(b, side, side, -1).permute(0, 3, 1, 2)  # (B, D, rows, cols)
        losses = []
        for turn, (context, predictors) in enumerate(zip(self.contexts, self.predictors)):
            rotated = torch.rot90(grid, turn, dims=(2, 3))  # each direction looks "down" its own way
            c = context(rotated)
            targets = self.to_target(rotated).float()
            for offset, predict in zip(o.offsets, predictors):
                losses.append(spatial_info_nce(predict(c).float(), targets, offset))
        return {"loss": torch.stack(losses).mean()}


METHOD = CPC

RECIPES = method_recipes(__name__, {
    # Henaff et al. 2020 and its appendix pseudocode: patches encoded on their own, a 5-block
    # PixelCNN-style context network (256 hidden channels), 64-d targets, predictions from
    # contexts in all four directions, InfoNCE against every patch of the batch, patch-based
    # augmentation. The grid (64-pixel patches every 32 pixels of a 256-pixel image) is CPC's.
    # Not reproduced: the paper's ResNet-161 with layer normalisation (the zoo's ResNet-50 with
    # BatchNorm stands in); the optimiser and schedule below are ours (Adam 4e-4, batch 512).
    "paper": paper_recipe(
        model="cpc_resnet50", epochs=200, batch_size=512, optimizer=Optimizer("adam", lr=4e-4),
        schedule=Schedule("cosine", warmup_epochs=5), options=CPCOptions(),
        data_hint="ImageNet-1k as an ImageFolder tree: --data /path/to/imagenet",
        source="Henaff et al. 2020 (arXiv 1905.09272) Sec. 3 and appendix; optimiser settings are ours"),
    # S3L scale: Fashion-MNIST 32x32 grey: a 7 x 7 grid of 8-pixel patches every 4 pixels, each
    # encoded by the small ResNet; 10,000 images.
    "small": small_recipe(
        **SMALL_EMBEDDING, model="cpc_resnet_small_fmnist", epochs=2, batch_size=64,
        optimizer=Optimizer("adam", lr=1e-3),
        options=CPCOptions(image_size=32, crop_scale=(0.6, 1.0), patch=8, stride=4, target_dim=32,
                           context_hidden=64, context_blocks=3, directions=2,
                           patch_view=ViewRecipe(crop_scale=(1.0, 1.0), jitter=(0.4, 0.4, 0.0), grey_p=0.0)),
        source="Henaff et al. 2020, scaled down"),
    "tiny": tiny_recipe(
        model="cpc_resnet_small_fmnist", batch_size=8, limit=32, optimizer=Optimizer("adam", lr=1e-3),
        options=CPCOptions(image_size=32, patch=8, stride=4, target_dim=16, context_hidden=16, context_blocks=2,
                           directions=2, patch_view=ViewRecipe(crop_scale=(1.0, 1.0), jitter=(0.4, 0.4, 0.0),
                                                               grey_p=0.0)),
    ),
})
