"""PIRL, pretext-invariant representation learning (Misra & van der Maaten, CVPR 2020).

An image I and its jigsaw transform I^t (a 3x3 grid of patches, each patch cut with jitter from
its cell, shuffled) are encoded by the same trunk: f(I) from the whole image, g(I^t) by encoding
each patch, projecting it and mapping the concatenation to one vector. Both are contrasted with
NPID's memory bank (NCE, T = 0.07, momentum 0.5), whose entry m_I is the running average of f(I):

    L = lambda * NCE(m_I, g(I^t)) + (1 - lambda) * NCE(m_I, f(I)),   lambda = 0.5.
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
from training.methods.views import (ViewRecipe, colour_jitter, random_greyscale, random_resized_crop,
                                    view_transform)
from training.recipes import (SMALL_EMBEDDING, Optimizer, Schedule, method_recipes, paper_recipe,
                              small_recipe, tiny_recipe)
from training.transforms import to_rgb_float
from zoo.preprocess import convert_and_normalise


def jigsaw_patches(image: torch.Tensor, grid: int = 3, patch: int | None = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a (C, H, W) image into ``grid x grid`` cells, take a random ``patch x patch`` crop of
    each cell (the jitter keeps the network from matching patch borders), and shuffle them.

    Returns the patches, (grid^2, C, patch, patch), and the permutation: patch k came from cell
    ``order[k]`` (cells numbered row by row). PIRL cuts 64-pixel patches from 85-pixel cells of a
    255-pixel crop; ``patch`` defaults to the same ratio.
    """
    if image.dim() != 3:
        raise ValueError(f"jigsaw_patches expects one (C, H, W) image, got shape {tuple(image.shape)}")
    cell = min(image.shape[1], image.shape[2]) // grid
    patch = patch if patch is not None else max(1, round(cell * 64 / 85))
    if not 0 < patch <= cell:
        raise ValueError(f"patch size must be between 1 and the cell size {cell}, got {patch}")
    offsets = torch.randint(0, cell - patch + 1, (grid * grid, 2), generator=generator)
    pieces = []
    for k in range(grid * grid):
        top = (k // grid) * cell + int(offsets[k, 0])
        left = (k % grid) * cell + int(offsets[k, 1])
        pieces.append(image[:, top:top + patch, left:left + patch])
    order = torch.randperm(grid * grid, generator=generator)
    return torch.stack(pieces)[order], order


def pirl_loss(image_similarities: torch.Tensor, patch_similarities: torch.Tensor, temperature: float,
              normaliser: float, num_data: int, patch_weight: float = 0.5) -> torch.Tensor:
    """PIRL's mix of two NCE losses against the memory bank.

    Both arguments are (B, 1 + K) cosine similarities of an embedding with the image's own bank
    entry (column 0) and K noise entries: ``patch_similarities`` for g(I^t), the jigsaw
    embedding, weighted ``patch_weight`` (lambda); ``image_similarities`` for f(I), weighted
    1 - lambda.
    """
    return (patch_weight * nce_loss(patch_similarities, temperature, normaliser, num_data)
            + (1.0 - patch_weight) * nce_loss(image_similarities, temperature, normaliser, num_data))


@dataclass(frozen=True)
class PIRLOptions:
    embedding_dim: int = 128
    temperature: float = 0.07
    momentum: float = 0.5               # memory-bank update (with the image embedding f(I))
    negatives: int = 32_000             # NCE noise samples; 0: full softmax over the bank
    bank_init: str = "random"           # or "features" (see training.methods.npid.NPIDOptions)
    patch_weight: float = 0.5           # lambda
    grid: int = 3                       # jigsaw: grid x grid patches
    patch_crop: int = 255               # side of the random-resized crop the patches are cut from
    patch_crop_scale: tuple[float, float] = (0.6, 1.0)
    view: ViewRecipe = field(default_factory=lambda: ViewRecipe(
        crop_scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.4), jitter_p=1.0, grey_p=0.2, blur_p=0.0))


class PIRL(BackboneMethod, options=PIRLOptions):
    def build(self, o: PIRLOptions) -> None:
        dim = feature_dim(self.backbone)
        self.image_head = nn.Linear(dim, o.embedding_dim)                      # f
        self.patch_head = nn.Linear(dim, o.embedding_dim)                      # each patch
        self.jigsaw_head = nn.Linear(o.grid ** 2 * o.embedding_dim, o.embedding_dim)  # g, from the 9 patches
        self.memory = MemoryBank(0, o.embedding_dim, o.momentum)

    def train_transform(self):
        o, spec = self.options, self.backbone.entry.input
        image_view = view_transform(spec, o.view)
        photometric = o.view

        def transform(image: torch.Tensor):
            rgb = to_rgb_float(image)[None]
            crop = random_resized_crop(rgb, o.patch_crop, o.patch_crop_scale, flip_p=0.0)[0]
            patches, _ = jigsaw_patches(crop, o.grid)
            # each patch gets its own flip and colour distortion
            patches = random_resized_crop(patches, patches.shape[-1], scale=(1.0, 1.0), ratio=(1.0, 1.0))
            patches = colour_jitter(patches, *photometric.jitter, p=photometric.jitter_p)
            patches = random_greyscale(patches, photometric.grey_p)
            return image_view(image), convert_and_normalise(patches, spec)

        return transform

    def embed_image(self, x: torch.Tensor) -> torch.Tensor:
        """f(I), the L2-normalised image embedding the memory bank holds."""
        return F.normalize(self.image_head(pooled_features(self.backbone, x)).float(), dim=1)

    def on_fit_start(self, ctx: FitContext) -> None:
        fill_memory_bank(self.memory, self.embed_image, self.backbone, ctx, self.options.bank_init)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        o, index = self.options, batch["index"]
        images, patches = batch["x"]
        f = self.embed_image(images)
        b, k = patches.shape[:2]
        per_patch = self.patch_head(pooled_features(self.backbone, patches.flatten(0, 1)))
        g = F.normalize(self.jigsaw_head(per_patch.reshape(b, -1)).float(), dim=1)
        if o.negatives == 0:
            bank = self.memory.vectors
            loss = (o.patch_weight * instance_softmax_loss(g, bank, index, o.temperature)
                    + (1 - o.patch_weight) * instance_softmax_loss(f, bank, index, o.temperature))
        else:
            image_sims = self.memory.similarities(f, index, o.negatives)
            patch_sims = self.memory.similarities(g, index, o.negatives)
            normaliser = self.memory.fixed_normaliser(image_sims, o.temperature)
            loss = pirl_loss(image_sims, patch_sims, o.temperature, normaliser, len(self.memory), o.patch_weight)
        self.memory.update_from_all_ranks(index, f)
        with torch.no_grad():
            agreement = (f * g).sum(dim=1).mean()  # cosine between f(I) and g(I^t)
        return {"loss": loss, "image_jigsaw_cos": agreement}


METHOD = PIRL

RECIPES = method_recipes(__name__, {
    # VISSL configs/config/pretrain/pirl/pirl_jigsaw_4node_resnet50.yaml with epochs_200.yaml (the
    # release with 62.9 % linear top-1): ResNet-50, batch 32 x 32 GPUs = 1024, SGD momentum 0.9,
    # weight decay 1e-4 (not on BN and biases), lr 0.12 (0.03 x 1024/256) cosine to 0.00012, 200
    # epochs; NCE with 32,000 negatives, T 0.07, memory momentum 0.5 updated with f(I); loss weights
    # 0.5 / 0.5; image: random-resized crop 224 of 8-100 %; patches: a 255 crop of 60-100 %, 3 x 3
    # jigsaw (64-pixel patches with jitter, shuffled); colour jitter 0.4 and greyscale 0.2 on the
    # image and each patch; flips. Not reproduced: hue jitter and VISSL's extra photometric step.
    "paper": paper_recipe(
        model="pirl_resnet50", epochs=200, batch_size=1024, optimizer=Optimizer(lr=0.12, weight_decay=1e-4),
        schedule=Schedule("cosine", final_fraction=0.001), options=PIRLOptions(),
        source="facebookresearch/vissl PIRL configs (pirl_jigsaw_4node_resnet50.yaml, epochs_200.yaml)"),
    # S3L scale: Fashion-MNIST 32x32 grey, the small ResNet, 10,000 images seen 10 times, full
    # softmax over the bank (started from the untrained network's embeddings, as NPID's small
    # recipe); the patches (8 x 8 from 10-pixel cells) are cut from a 30-pixel crop. 10,000
    # rather than 3,000 images (780 steps instead of 230), as for NPID: kNN 73.2 instead of 68.8
    # and copy-detection mAP 51.0 instead of 44.0; the linear probe stayed within noise of random
    # init either way (87.15 and 87.34 vs 87.02).
    "small": small_recipe(
        **SMALL_EMBEDDING, model="pirl_resnet_small_fmnist", epochs=10, batch_size=128,
        optimizer=Optimizer(lr=0.03, weight_decay=5e-4),
        options=PIRLOptions(temperature=0.1, negatives=0, bank_init="features", patch_crop=30,
                            view=grey_view(jitter_p=1.0)),
        source="facebookresearch/vissl PIRL configs, scaled down"),
    "tiny": tiny_recipe(
        model="pirl_resnet_small_fmnist", batch_size=16, limit=64, optimizer=Optimizer(lr=0.03, weight_decay=1e-4),
        options=PIRLOptions(embedding_dim=32, negatives=16, patch_crop=30, view=grey_view(blur_p=0.5)),
    ),
})
