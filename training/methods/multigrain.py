"""MultiGrain (Berman et al., 2019): one embedding for classes and for instances.

A classifier backbone whose global pooling is GeM (``zoo.pooling``) is trained on labelled images
with two losses mixed by lambda: cross entropy on the classes, and a margin ranking loss on the
L2-normalised pooled embedding, where the instances are the images themselves. Batches use
repeated augmentation (each image appears m = 3 times, differently augmented) so that every
image has positives in its batch; negatives are picked by distance-weighted sampling. At test
time, for inputs larger than the training ones, the GeM exponent is raised to p*, chosen on
held-out training images at the test resolution.

``MultiGrainOptions.mixup`` trains with mixup without hesitation (``training.methods.mixup``,
recipe ``small-mwh``): all m copies of an image are mixed with the copies of the same partner at
the same ratio, so they stay positives of each other for the margin loss, and the cross entropy
is mixed. The recipes ``small-ge`` and ``small-ge-theta`` train the small ResNet with
Gather-Excite (``zoo.backbones.gather_excite``) beside the plain ``small``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from training.data import limit_dataset
from training.engine import FitContext
from training.methods.common import BackboneMethod, grey_view
from training.methods.heads import feature_dim
from training.methods.mixup import MixupState, MixupWithoutHesitation, mix, mixed_loss
from training.methods.views import ViewRecipe, Views
from training.recipes import (SMALL_EMBEDDING, Optimizer, Schedule, method_recipes, paper_recipe,
                              small_recipe, tiny_recipe)
from training.transforms import eval_transform
from zoo.pooling import GeM, gem


def margin_loss(anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                beta: torch.Tensor | float, margin: float = 0.2) -> torch.Tensor:
    """Margin ranking loss of (anchor, positive, negative) triplets of embeddings.

    Positives closer than ``beta - margin`` and negatives farther than ``beta + margin`` cost
    nothing; the rest cost their distance past that band. The sum is divided by the number of
    terms that are not zero (as in "Sampling matters in deep embedding learning"); ``beta`` is
    learnt along with the network.
    """
    d_ap = torch.sqrt(((positives - anchors) ** 2).sum(dim=1) + 1e-8)
    d_an = torch.sqrt(((negatives - anchors) ** 2).sum(dim=1) + 1e-8)
    pos_loss = F.relu(d_ap - beta + margin)
    neg_loss = F.relu(beta - d_an + margin)
    active = (pos_loss > 0).sum() + (neg_loss > 0).sum()
    return (pos_loss + neg_loss).sum() / active.clamp(min=1)


@torch.no_grad()
def distance_weighted_sampling(embeddings: torch.Tensor, instances: torch.Tensor, cutoff: float = 0.5,
                               nonzero_loss_cutoff: float = 1.4,
                               generator: torch.Generator | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triplet indices (anchor, positive, negative) for a batch of unit-norm embeddings.

    Every ordered pair of distinct rows of one instance is an (anchor, positive) pair and gets one
    negative. Negatives are drawn with probability inversely proportional to the density of
    pairwise distances between random points on the unit sphere of this dimension,
    q(d) ~ d^(D-2) (1 - d^2/4)^((D-3)/2), so that all distances are drawn about evenly; distances
    are clamped below at ``cutoff`` and negatives farther than ``nonzero_loss_cutoff`` (which
    could not cost anything) are never drawn. An anchor without such negatives draws uniformly.
    """
    n, dim = embeddings.shape
    distance = torch.cdist(embeddings, embeddings).clamp(min=cutoff)
    log_inverse_density = ((2.0 - dim) * distance.log()
                           - (dim - 3.0) / 2.0 * (1.0 - 0.25 * distance ** 2).clamp(min=1e-8).log())
    other = instances.view(-1, 1) != instances.view(1, -1)
    allowed = other & (distance < nonzero_loss_cutoff)
    log_w = log_inverse_density.masked_fill(~allowed, float("-inf"))
    anchors, positives, negatives = [], [], []
    for i in range(n):
        same = torch.nonzero(~other[i]).flatten()
        same = same[same != i]
        if len(same) == 0:
            continue
        if allowed[i].any():
            weights = torch.exp(log_w[i] - log_w[i].max())
        elif other[i].any():
            weights = other[i].float()
        else:
            continue  # the whole batch is one instance: no negative exists
        replace = int((weights > 0).sum()) < len(same)
        negatives.append(torch.multinomial(weights, len(same), replacement=replace, generator=generator))
        anchors.append(torch.full_like(same, i))
        positives.append(same)
    if not anchors:
        empty = torch.empty(0, dtype=torch.long, device=embeddings.device)
        return empty, empty, empty
    return torch.cat(anchors), torch.cat(positives), torch.cat(negatives)


def choose_test_exponent(score: Callable[[float], float], candidates: Iterable[float]) -> float:
    """MultiGrain's p* by cross-validation: the candidate exponent with the best ``score(p)``.

    ``score`` evaluates the model with GeM exponent p at the test resolution on held-out training
    images (classification accuracy in the paper); ties go to the smaller exponent.
    """
    best_p, best = None, float("-inf")
    for p in sorted(candidates):
        value = score(p)
        if value > best:
            best_p, best = p, value
    if best_p is None:
        raise ValueError("choose_test_exponent needs at least one candidate exponent")
    return best_p


@dataclass(frozen=True)
class MultiGrainOptions:
    num_classes: int = 1000
    p: float = 3.0                      # GeM exponent while training (the paper's p = 3)
    learn_p: bool = False               # the paper keeps p fixed while training
    classification_weight: float = 0.5  # lambda: lambda * cross entropy + (1 - lambda) * margin loss
    repeats: int = 3                    # repeated augmentation: m copies of each image per batch
    beta_init: float = 1.2              # margin loss: learnt boundary beta and margin alpha
    margin: float = 0.2
    view: ViewRecipe = field(default_factory=lambda: ViewRecipe(
        crop_scale=(0.08, 1.0), jitter=(0.3, 0.3, 0.3), jitter_p=1.0, grey_p=0.0, blur_p=0.0))
    batched_views: bool = False         # augment whole batches in forward (see views.Views)
    test_size: int = 500                # resolution p* is chosen for (the paper's s* = 500)
    p_candidates: tuple[float, ...] = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0)
    p_images: int = 50_000              # training images scored for p* (the paper: 50 per class)
    mixup: MixupWithoutHesitation | None = None  # mixup without hesitation; None: plain training


class MultiGrain(BackboneMethod, options=MultiGrainOptions):
    def build(self, o: MultiGrainOptions) -> None:
        if isinstance(getattr(self.backbone, "pool", None), GeM):
            # MultiGrain's own ResNet-50 layout (resnet50_gem): GeM is the backbone's last layer
            self.backbone.pool = GeM(o.p, learn_p=o.learn_p)
            self.pool = None
        else:
            self.pool = GeM(o.p, learn_p=o.learn_p)
        fc = getattr(self.backbone, "fc", None)  # the release's classifier is the backbone's fc
        self.classifier = fc if isinstance(fc, nn.Linear) else nn.Linear(feature_dim(self.backbone), o.num_classes)
        self.beta = nn.Parameter(torch.tensor(o.beta_init))
        # m independently augmented copies of every image, side by side in the batch
        self.views = Views(self.backbone.entry.input, [o.view] * o.repeats, o.batched_views)
        self.mixup = MixupState(o.mixup, self.recipe.epochs) if o.mixup else None

    def train_transform(self):
        return self.views.transform()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The GeM-pooled vector (MultiGrain's embedding before L2 normalisation)."""
        return self.backbone(x) if self.pool is None else self.pool(self.backbone(x))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        o = self.options
        x = torch.cat(self.views(batch["x"]))
        labels = batch["label"].repeat(o.repeats)
        instances = batch["index"].repeat(o.repeats)
        n = len(batch["label"])
        partner, lam = self.mixup.draw(n, x.device) if self.mixup is not None else (None, 1.0)
        if lam != 1.0:  # copy r of image i with copy r of its partner
            partner = torch.cat([partner + r * n for r in range(o.repeats)])
            x = mix(x, partner, lam)
        embedding = self.embed(x.contiguous(memory_format=torch.channels_last)).float()
        logits = self.classifier(embedding)
        classification = mixed_loss(lambda y: F.cross_entropy(logits, y), labels, partner, lam)
        normalized = F.normalize(embedding, dim=1)
        anchors, positives, negatives = distance_weighted_sampling(normalized.detach(), instances)
        ranking = margin_loss(normalized[anchors], normalized[positives], normalized[negatives], self.beta, o.margin)
        w = o.classification_weight
        loss = w * classification + (1 - w) * ranking
        return {"loss": loss, "cross_entropy": classification.detach(), "margin": ranking.detach(),
                "top1": (logits.argmax(1) == labels).float().mean(), "beta": self.beta.detach()}

    def after_step(self, ctx: FitContext) -> None:
        if self.mixup is not None:
            self.mixup.after_step(ctx)

    def parameter_groups(self):
        # beta has its own optimiser in the official code: same learning rate, no weight decay
        rest = [p for name, p in self.named_parameters() if p.requires_grad and name != "beta"]
        return [{"params": rest}, {"params": [self.beta], "weight_decay": 0.0}]

    @torch.no_grad()
    def evaluate(self, ctx: FitContext) -> dict[str, float]:
        """p*: the GeM exponent that classifies training images best at ``test_size``, the
        resolution the embedding will be used at (cross-validation, as in the paper)."""
        o = self.options
        spec = self.backbone.entry.input
        big = dataclasses.replace(spec, size=o.test_size, resize=round(o.test_size * spec.resize / spec.size))
        images = limit_dataset(ctx.dataset, o.p_images, self.recipe.seed)
        last_map = "layer4"  # the ResNets' last convolutional stage, which GeM pools
        maps, labels = ctx.map(lambda b: self.backbone.forward_features(b["x"], [last_map])[last_map], images,
                               eval_transform(big))
        maps = maps.to(self.classifier.weight.device)
        labels = labels.to(maps.device)

        def accuracy(p: float) -> float:
            return float((self.classifier(gem(maps, p)).argmax(1) == labels).float().mean())

        p_star = choose_test_exponent(accuracy, o.p_candidates)
        return {"p_star": p_star, f"top1_at_{o.test_size}px_p{o.p:g}": accuracy(o.p),
                f"top1_at_{o.test_size}px_p_star": accuracy(p_star)}


METHOD = MultiGrain

# S3L scale: Fashion-MNIST 32x32 grey with its labels, the small ResNet, 10,000 images x 3
# copies; p* is chosen for 48-pixel inputs (1.5 x the training size).
_SMALL = dict(**SMALL_EMBEDDING, model="multigrain_resnet_small_fmnist", epochs=1, batch_size=64,
              optimizer=Optimizer(lr=0.1, weight_decay=1e-4))
_SMALL_OPTIONS = MultiGrainOptions(num_classes=10, test_size=48, p_images=2_000, batched_views=True,
                                   view=grey_view(0.3, jitter_p=1.0))

RECIPES = method_recipes(__name__, {
    # facebookresearch/multigrain README ("joint_3B_0.5") and scripts/train.py defaults: ResNet-50,
    # GeM p = 3, lambda = 0.5, repeated augmentation m = 3, batch 512 (here: 171 images x 3 copies =
    # 513), SGD lr 0.2 momentum 0.9 weight decay 1e-4, 120 epochs with the lr divided by 10 after
    # epochs 30, 60 and 90; margin loss beta 1.2 (learnt at the same lr, no decay), margin 0.2,
    # distance-weighted sampling (cutoff 0.5, no-loss cutoff 1.4); "full" augmentation (random-
    # resized crop, flip, colour jitter 0.3). p* is chosen for s* = 500 (the paper finds p* = 4).
    # Differences: an epoch here shows every image 3 times (the original draws 2N/3 images x 3);
    # the PCA lighting noise of the "full" augmentation is not reproduced.
    "paper": paper_recipe(
        model="multigrain_resnet50", epochs=120, batch_size=171, optimizer=Optimizer(lr=0.2, weight_decay=1e-4),
        schedule=Schedule("step", milestones=(30, 60, 90)), options=MultiGrainOptions(),
        source="facebookresearch/multigrain README and scripts/train.py; Berman et al. 2019 (arXiv 1902.05509)"),
    "small": small_recipe(**_SMALL, options=_SMALL_OPTIONS, source="facebookresearch/multigrain, scaled down"),
    # The same run with Gather-Excite in every block of the small ResNet (Hu et al. 2018): GE-theta-minus
    # with a global extent (no parameters; the paper's best parameter-free setting), and GE-theta with
    # extent 8 (three stride-2 depth-wise convolutions per block; +7,920 parameters).
    "small-ge": small_recipe(**{**_SMALL, "model_kwargs": {"gather_excite": "theta-minus", "ge_extent": 0}},
                             options=_SMALL_OPTIONS, source="facebookresearch/multigrain, scaled down; "
                             "Gather-Excite theta-minus (Hu et al. 2018, arXiv 1810.12348)"),
    "small-ge-theta": small_recipe(**{**_SMALL, "model_kwargs": {"gather_excite": "theta", "ge_extent": 8}},
                                   options=_SMALL_OPTIONS, source="facebookresearch/multigrain, scaled down; "
                                   "Gather-Excite theta, extent 8 (Hu et al. 2018, arXiv 1810.12348)"),
    # Mixup without hesitation (Yu et al. 2021) over the one epoch of 156 steps: mixup for 60 %,
    # on and off every 0.05 epoch (about 8 steps) up to 90 %, then fading out.
    "small-mwh": small_recipe(**_SMALL, options=dataclasses.replace(
        _SMALL_OPTIONS, mixup=MixupWithoutHesitation(period=0.05)),
        source="facebookresearch/multigrain, scaled down; mixup without hesitation (Yu et al. 2021)"),
    "tiny": tiny_recipe(
        model="multigrain_resnet_small_fmnist", batch_size=12, limit=96, optimizer=Optimizer(lr=0.1, weight_decay=1e-4),
        options=MultiGrainOptions(num_classes=10, test_size=40, p_images=64, p_candidates=(1.0, 3.0, 5.0),
                                  view=grey_view(0.3, blur_p=0.5)),
    ),
})
