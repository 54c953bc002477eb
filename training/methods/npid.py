"""NPID, non-parametric instance discrimination (Wu et al., CVPR 2018).

Every training image is its own class. A memory bank keeps one L2-normalised 128-d vector per
image, refreshed with momentum 0.5 from the image's newest embedding. The embedding of an image
is scored against its own bank entry and against K entries drawn uniformly at random, with noise-
contrastive estimation (NCE) at temperature 0.07; on a small data set the full softmax over the
whole bank replaces NCE. Evaluation is the weighted kNN over the same cosine similarities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from training.engine import FitContext, Method
from training.methods.heads import feature_dim, pooled_features
from training.methods.views import ViewRecipe, Views
from training.recipes import IMAGENET_HINT, Optimizer, Recipe, Schedule, method_recipes
from zoo.registry import create_model


@torch.no_grad()
def memory_bank_update(bank: torch.Tensor, indices: torch.Tensor, features: torch.Tensor,
                       momentum: float = 0.5) -> None:
    """``bank[i] <- normalise(momentum * bank[i] + (1 - momentum) * feature)`` for each index."""
    mixed = momentum * bank[indices] + (1.0 - momentum) * features.detach().to(bank.dtype)
    bank[indices] = F.normalize(mixed, dim=1)


def nce_normaliser(similarities: torch.Tensor, temperature: float, num_data: int) -> float:
    """NPID's estimate of the partition function Z: mean of exp(s / T) over a batch, times n.

    The original code computes it once, on the first batch, and keeps it fixed afterwards.
    """
    return float(torch.exp(similarities.detach() / temperature).mean() * num_data)


def nce_loss(similarities: torch.Tensor, temperature: float, normaliser: float,
             num_data: int) -> torch.Tensor:
    """NCE loss of (B, 1 + K) cosine similarities: column 0 the positive, the rest K noise draws.

    With P(i|v) = exp(s / T) / Z and noise probability 1/n, a sample is "from the data" with
    h = P / (P + K/n). The loss is -log h for the positive plus -log(1 - h) for each noise draw,
    summed per row and averaged over the batch. Computed in log space so that it cannot overflow.
    """
    k = similarities.shape[1] - 1
    if k < 1:
        raise ValueError("nce_loss needs at least one noise sample per row")
    log_p = similarities / temperature - math.log(normaliser)
    log_noise = math.log(k / num_data)
    log_h_pos = -F.softplus(log_noise - log_p[:, 0])  # log(P / (P + K/n))
    log_not_h = -F.softplus(log_p[:, 1:] - log_noise)  # log((K/n) / (P + K/n))
    return -(log_h_pos + log_not_h.sum(dim=1)).mean()


def instance_softmax_loss(features: torch.Tensor, bank: torch.Tensor, indices: torch.Tensor,
                          temperature: float) -> torch.Tensor:
    """The full (non-parametric) softmax: cross entropy of features . bank^T / T against the index."""
    return F.cross_entropy(features @ bank.t() / temperature, indices)


class MemoryBank(nn.Module):
    """One unit vector per training image, kept as a buffer so checkpoints carry it.

    Initialised like NPID (uniform in +-1/sqrt(dim/3), which has unit norm on average), then
    normalised so every entry is a unit vector from the start. The size of the training set is
    known only when training starts, so a bank may be built empty (``size=0``) and filled with
    ``reset(size)``; loading a checkpoint gives it the checkpoint's size.
    """

    def __init__(self, size: int, dim: int = 128, momentum: float = 0.5):
        super().__init__()
        self.dim, self.momentum = dim, momentum
        self.register_buffer("vectors", torch.empty(0, dim))
        self.register_buffer("normaliser", torch.tensor(-1.0))  # NCE's Z; < 0 until estimated
        if size:
            self.reset(size)

    def reset(self, size: int) -> None:
        bound = 1.0 / math.sqrt(self.dim / 3)
        fresh = torch.rand(size, self.dim, device=self.vectors.device) * 2 * bound - bound
        self.vectors = F.normalize(fresh, dim=1)
        self.normaliser.fill_(-1.0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        stored = state_dict.get(prefix + "vectors")
        if stored is not None and stored.shape != self.vectors.shape:
            self.vectors = torch.empty_like(stored, device=self.vectors.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def update(self, indices: torch.Tensor, features: torch.Tensor) -> None:
        memory_bank_update(self.vectors, indices, features, self.momentum)

    def similarities(self, features: torch.Tensor, indices: torch.Tensor, num_negatives: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 1 + K): each feature against its own entry, then K entries drawn uniformly."""
        noise = torch.randint(0, len(self), (features.shape[0], num_negatives), generator=generator,
                              device=self.vectors.device)
        candidates = torch.cat([indices.view(-1, 1), noise], dim=1)
        return torch.einsum("bkd,bd->bk", self.vectors[candidates], features)


@torch.no_grad()
def gather_from_ranks(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank concatenated (no gradient): every rank's memory bank then receives the
    same updates and the banks stay identical."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def fill_memory_bank(memory: MemoryBank, embed, backbone: nn.Module, ctx: FitContext, how: str) -> None:
    """Size the bank for the training set; with ``how="features"`` fill it with ``embed`` of every
    training image under the model's reference preprocessing (in eval mode)."""
    if how not in ("random", "features"):
        raise ValueError(f"bank_init must be 'random' or 'features', got {how!r}")
    memory.reset(len(ctx.dataset))
    if how == "features":
        from training.transforms import eval_transform

        was_training = backbone.training
        backbone.eval()
        features, _ = ctx.map(lambda batch: embed(batch["x"]), ctx.dataset, eval_transform(backbone.entry.input))
        backbone.train(was_training)
        memory.vectors.copy_(F.normalize(features, dim=1).to(memory.vectors.device))


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


class NPID(Method):

    def __init__(self, recipe: Recipe):
        super().__init__(recipe)
        self.options: NPIDOptions = recipe.options or NPIDOptions()
        self.backbone = create_model(recipe.model, **recipe.model_kwargs)
        fc = getattr(self.backbone, "fc", None)
        # The released ResNets carry the 128-d embedding as the backbone's own fc layer.
        self.backbone_has_head = isinstance(fc, nn.Linear) and fc.out_features == self.options.embedding_dim
        self.head = nn.Identity() if self.backbone_has_head else nn.Linear(feature_dim(self.backbone),
                                                                           self.options.embedding_dim)
        self.memory = MemoryBank(0, self.options.embedding_dim, self.options.momentum)
        self.views = Views(self.backbone.entry.input, [self.options.view], self.options.batched_views)

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
        n = len(self.memory)
        if o.negatives == 0:
            loss = instance_softmax_loss(features, self.memory.vectors, index, o.temperature)
        else:
            similarities = self.memory.similarities(features, index, o.negatives)
            if self.memory.normaliser < 0:  # NPID fixes Z from the first batch
                z = torch.tensor(nce_normaliser(similarities, o.temperature, n), device=features.device)
                self.memory.normaliser.fill_(float(gather_from_ranks(z.view(1)).mean()))
            loss = nce_loss(similarities, o.temperature, float(self.memory.normaliser), n)
        # the bank moves towards the new embeddings only after they were scored against it
        self.memory.update(gather_from_ranks(index), gather_from_ranks(features.detach()))
        return {"loss": loss}


METHOD = NPID

RECIPES = method_recipes(__name__, {
    # zhirongw/lemniscate.pytorch main.py (the released ImageNet models): ResNet-50 with a 128-d
    # fc embedding, batch 256, SGD lr 0.03 momentum 0.9 weight decay 1e-4, 200 epochs with the lr
    # divided by 10 at epochs 120 and 160; NCE with 4096 noise samples, T = 0.07, memory momentum
    # 0.5; random-resized crops of 20-100 % of the area, greyscale p 0.2, colour jitter 0.4
    # (brightness, contrast, saturation; hue 0.4 is not reproduced), horizontal flips.
    "paper": Recipe(
        model="npid_resnet50", epochs=200, batch_size=256,
        optimizer=Optimizer("sgd", lr=0.03, momentum=0.9, weight_decay=1e-4),
        schedule=Schedule("step", milestones=(120, 160), gamma=0.1), data=None, data_hint=IMAGENET_HINT,
        workers=8, checkpoint_every=1000, log_every=50, options=NPIDOptions(),
        source="zhirongw/lemniscate.pytorch main.py defaults and README",
    ),
    # S3L scale: Fashion-MNIST 32x32 grey, the small ResNet, a 10,000-image subset seen 10 times
    # (each bank entry needs several updates), small enough for the full softmax over the bank
    # (NPID's CIFAR script does the same with --nce-k 0); the bank starts from the untrained
    # network's embeddings instead of random vectors, which a run this short cannot wash out.
    # 3,000 images x 10 epochs (230 steps, about a minute) beat random init on kNN (68.5 vs 66.5)
    # but not on the linear probe (86.9 vs 87.0): too few steps, so 10,000 images (780 steps).
    "small": Recipe(
        model="npid_resnet_small_fmnist", epochs=10, batch_size=128,
        optimizer=Optimizer("sgd", lr=0.03, momentum=0.9, weight_decay=5e-4),
        schedule=Schedule("cosine", warmup_epochs=0.1), data="fmnist", limit=10_000, precision="bf16",
        checkpoint_every=20, log_every=5,
        options=NPIDOptions(temperature=0.1, negatives=0, bank_init="features", batched_views=True, view=ViewRecipe(
            crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.0), jitter_p=1.0, grey_p=0.0, blur_p=0.0)),
        source="zhirongw/lemniscate.pytorch cifar.py (T 0.1, wd 5e-4, full softmax), scaled down",
    ),
    "tiny": Recipe(
        model="npid_resnet_small_fmnist", epochs=1, batch_size=32,
        optimizer=Optimizer("sgd", lr=0.03, momentum=0.9, weight_decay=5e-4), data="fmnist", limit=256,
        checkpoint_every=4, log_every=1,
        options=NPIDOptions(embedding_dim=32, negatives=64, bank_init="features", batched_views=True, view=ViewRecipe(
            crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.0), grey_p=0.0, blur_p=0.0)),
    ),
})
