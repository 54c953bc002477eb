"""IIC: Invariant Information Clustering (Ji, Henriques, Vedaldi 2019).

"Invariant Information Clustering for Unsupervised Image Classification and Segmentation", ICCV
2019 (https://arxiv.org/abs/1807.06653). A network with softmax heads is trained so that the
cluster predictions of two augmented views of the same image share as much information as possible:
the loss is minus the mutual information of the (K x K) joint distribution
``P = mean_i p(x_i) p(x'_i)^T``, symmetrised. Maximising it rewards confident predictions (low conditional entropy) and
a uniform use of the clusters (high marginal entropy) at once, without any pseudo-labels. A main
head with as many clusters as classes sits beside an over-clustering head (70 clusters for
CIFAR-10, 50 for MNIST), each repeated in 5 sub-heads; the main head is evaluated by mapping
clusters to classes with the Hungarian algorithm, using the sub-head with the lowest training loss,
as the paper does. The paper trains the two heads in alternation (on MNIST the main head for two
epochs, then the over-clustering head for one); the small recipe trains both at every step (their
losses summed), which its few epochs need.

Each image is paired with ``repeats`` differently transformed copies of itself (the paper's
"data repeats"): the original view is encoded once, each copy once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.clustering import deepest_feature_dim, deepest_features
from training.engine import FitContext
from training.evaluation import hungarian_accuracy, nmi
from training.methods.common import BackboneMethod, heldout_images
from training.recipes import Optimizer, method_recipes, paper_recipe, small_recipe, tiny_recipe
from training.transforms import eval_transform, normalise, random_hflip, resize_shorter, to_rgb_float
from zoo.preprocess import resize_and_crop


def iic_joint(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Symmetrised, normalised joint distribution (K, K) of two views' cluster probabilities."""
    if p1.shape != p2.shape or p1.ndim != 2:
        raise ValueError(f"need two (N, K) probability tensors of equal shape, got {tuple(p1.shape)} "
                         f"and {tuple(p2.shape)}")
    joint = p1.t() @ p2
    joint = (joint + joint.t()) / 2
    return joint / joint.sum()


def iic_loss(p1: torch.Tensor, p2: torch.Tensor, lamb: float = 1.0, eps: float | None = None) -> torch.Tensor:
    """Minus the mutual information between the cluster assignments of paired views.

    ``p1`` and ``p2`` are softmax outputs (N, K). ``lamb`` > 1 weights the marginal entropies more
    (the paper's variant against degenerate solutions; 1.0 is plain mutual information). Entries
    below ``eps`` are clamped so that empty clusters give no NaN; their contribution is ~0 anyway.
    """
    joint = iic_joint(p1, p2)
    eps = torch.finfo(joint.dtype).eps if eps is None else eps
    p_i = joint.sum(dim=1, keepdim=True)
    p_j = joint.sum(dim=0, keepdim=True)
    joint, p_i, p_j = joint.clamp(min=eps), p_i.clamp(min=eps), p_j.clamp(min=eps)
    return -(joint * (joint.log() - lamb * p_i.log() - lamb * p_j.log())).sum()


# ---------------------------------------------------------------------------------------------
# The views
# ---------------------------------------------------------------------------------------------

def iic_views(spec, repeats: int, original_crop: int | None = None, crop_sizes=(20, 24, 28),
              max_degrees: float = 0.0, rotate_p: float = 0.5, flip: bool = True, jitter: float = 0.4,
              hue: float = 0.125):
    """(original, copy_1, ..., copy_repeats) of one image, as IIC's data loaders make them.

    The image is first resized so its shorter side is ``spec.resize``. The original is a random
    ``original_crop`` square resized to the model's size (the paper's ``crop_orig``), or the
    centre crop when ``original_crop`` is None. Each copy is, in order: rotated by up to
    ``max_degrees`` either way with probability ``rotate_p``; a random square crop of one of
    ``crop_sizes`` resized to the model's size; mirrored half the time with ``flip``; colour
    jittered (brightness, contrast and saturation by ``jitter``, hue by ``hue``).
    """
    from torchvision.transforms.v2 import ColorJitter, InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    colour = ColorJitter(jitter, jitter, jitter, hue) if jitter or hue else None

    def crop_resized(rgb: torch.Tensor, side: int) -> torch.Tensor:
        side = min(side, *rgb.shape[-2:])
        top = int(torch.randint(0, rgb.shape[-2] - side + 1, ()))
        left = int(torch.randint(0, rgb.shape[-1] - side + 1, ()))
        return TF.resize(rgb[:, top:top + side, left:left + side], [spec.size, spec.size], antialias=True)

    def copy(rgb: torch.Tensor) -> torch.Tensor:
        if max_degrees and float(torch.rand(())) < rotate_p:
            angle = float(torch.empty(()).uniform_(-max_degrees, max_degrees))
            rgb = TF.rotate(rgb, angle, interpolation=InterpolationMode.BILINEAR)
        view = crop_resized(rgb, crop_sizes[int(torch.randint(len(crop_sizes), ()))])
        if flip:
            view = random_hflip(view)
        if colour is not None:
            view = colour(view).clamp(0, 1)
        return normalise(view, spec)

    def transform(image: torch.Tensor):
        rgb = resize_shorter(to_rgb_float(image), spec.resize)
        original = resize_and_crop(rgb, spec) if original_crop is None else crop_resized(rgb, original_crop)
        return (normalise(original, spec), *(copy(rgb) for _ in range(repeats)))

    return transform


# ---------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IICOptions:
    classes: int = 10               # clusters of the main head (the number of true classes)
    overclusters: int = 70          # clusters of the auxiliary over-clustering head
    sub_heads: int = 5              # independent copies of each head
    repeats: int = 3                # transformed copies paired with each image
    lamb: float = 1.0
    head_cycle: tuple[str, ...] = ("main", "main", "overcluster")  # the heads each epoch trains, cycled
    original_crop: int | None = None  # random crop of the original view (None: the centre crop)
    crop_sizes: tuple[int, ...] = (20, 24, 28)  # crops of the transformed copies
    max_degrees: float = 25.0       # copies rotated by up to this, half of the time
    flip: bool = True
    jitter: float = 0.4             # brightness, contrast, saturation; hue 0.125


class IIC(BackboneMethod, options=IICOptions):
    def build(self, o: IICOptions) -> None:
        dim = deepest_feature_dim(self.backbone)
        self.main_heads = nn.ModuleList(nn.Linear(dim, o.classes) for _ in range(o.sub_heads))
        self.overcluster_heads = nn.ModuleList(nn.Linear(dim, o.overclusters) for _ in range(o.sub_heads))
        self.find_unused_parameters = any(h != "both" for h in o.head_cycle)  # one head group per epoch
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        # running mean of each main sub-head's loss; the lowest picks the head that is evaluated
        self.register_buffer("main_loss", torch.zeros(o.sub_heads))

    def train_transform(self):
        o = self.options
        return iic_views(self.backbone.entry.input, o.repeats, o.original_crop, o.crop_sizes, o.max_degrees,
                         flip=o.flip, jitter=o.jitter)

    def on_epoch_start(self, ctx: FitContext) -> None:
        self.epoch.fill_(ctx.epoch)  # a buffer, so a run resumed mid-epoch trains the same heads

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        original, *copies = batch["x"]
        n = len(original)
        features = deepest_features(self.backbone, torch.cat([original, *copies]))
        first = features[:n].repeat(len(copies), 1)  # each copy is paired with its original
        second = features[n:]
        active = self.options.head_cycle[int(self.epoch) % len(self.options.head_cycle)]
        out: dict[str, torch.Tensor] = {}
        loss = features.new_zeros(())
        for group, heads in (("main", self.main_heads), ("overcluster", self.overcluster_heads)):
            if active not in (group, "both"):
                continue
            per_head = torch.stack([iic_loss(h(first).softmax(1), h(second).softmax(1), self.options.lamb)
                                    for h in heads])
            loss = loss + per_head.mean()
            out[f"{group}_loss"] = per_head.mean().detach()
            if group == "main":
                with torch.no_grad():
                    self.main_loss.mul_(0.99).add_(0.01 * per_head.detach())
        out["loss"] = loss
        return out

    @torch.no_grad()
    def _predict(self, batch: dict) -> torch.Tensor:
        head = self.main_heads[int(self.main_loss.argmin())]
        return head(deepest_features(self.backbone, batch["x"])).argmax(1)

    def evaluate(self, ctx: FitContext) -> dict[str, float]:
        """NMI and Hungarian accuracy of the main head's clusters on held-out images."""
        heldout = heldout_images(self, ctx, "clustering scores")
        if heldout is None:
            return {}
        predicted, labels = ctx.map(self._predict, heldout, eval_transform(self.backbone.entry.input))
        if not len(labels) or int(labels.min()) < 0:
            return {}
        predicted = predicted.long().numpy()
        return {"head_nmi": nmi(predicted, labels.numpy()), "head_acc": hungarian_accuracy(predicted, labels.numpy()),
                "head": float(self.main_loss.argmin())}


METHOD = IIC

RECIPES = method_recipes(__name__, {
    # The released STL-10 model (xu-ji/IIC examples/commands.txt, model 569; registry iic_net5g):
    # ClusterNet5g on Sobel gradients, over-clustering head 70 and main head 10, 5 sub-heads,
    # 5 data repeats of 140 images (700 pairs per step), Adam lr 1e-4, lambda 1, 2,000 epochs each
    # training the over-clustering head and then the main head once (head_A_first), STL-10 train
    # and unlabelled images (mix_train); originals and copies are random 64-pixel crops of the
    # 96-pixel images, copies also flipped and colour-jittered (0.4, 0.4, 0.4, hue 0.125).
    "paper": paper_recipe(
        model="iic_net5g", epochs=2000 * 2, batch_size=140, optimizer=Optimizer("adam", lr=1e-4), workers=5,
        data_hint="STL-10 train + unlabelled images as an ImageFolder tree: --data /path/to/stl10",
        options=IICOptions(classes=10, overclusters=70, repeats=5, original_crop=64, crop_sizes=(64,),
                           max_degrees=0.0, head_cycle=("overcluster", "main")),
        source="xu-ji/IIC examples/commands.txt (STL-10, model 569), code/utils/cluster/transforms.py"),
    # S3L scale, after the paper's MNIST recipe (model 685: heads 50 and 10, copies rotated by up to
    # 25 degrees half of the time, cropped to 16/20/24 pixels of the 28-pixel digits): Fashion-MNIST
    # at 32x32, crops of 20/24/28, flips (garments are mirror-symmetric), the clustering recipes'
    # small ResNet, 10,000 images, one copy per image (more steps for the same compute), both heads
    # at every step, 10 epochs, Adam at 1e-3 for the short run. Milder crops of 24/28/32 clustered
    # worse (seed 0: main head NMI 39.2 vs 44.0, Hungarian 36.6 vs 43.7 %; k-means NMI 43.6 vs 47.7).
    "small": small_recipe(
        model="iic_resnet_small_fmnist", epochs=10, batch_size=128, optimizer=Optimizer("adam", lr=1e-3),
        precision="fp32",  # its shipped weights were trained in fp32, which `auto` was on every CPU then
        limit=10_000, heldout_limit=10_000, checkpoint_every=100, log_every=10,
        options=IICOptions(classes=10, overclusters=50, repeats=1, head_cycle=("both",)),
        source="the paper's MNIST recipe (model 685) scaled to S3L: small images, network and data"),
    # Seconds: for tests.
    "tiny": tiny_recipe(
        model="iic_resnet_small_fmnist", epochs=2, batch_size=32, optimizer=Optimizer("adam", lr=1e-3),
        heldout_limit=256, options=IICOptions(classes=10, overclusters=20, sub_heads=2, repeats=1,
                                              head_cycle=("overcluster", "main")),
    ),
})
