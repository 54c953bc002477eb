"""What several methods share: building the backbone, crop-and-flip augmentation, features of the
whole training set for clustering, held-out images for a method's own scores, LARS's parameter
groups. Not a method: it defines no ``METHOD``."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from training.clustering import deepest_features
from training.data import DataError, limit_dataset, open_dataset
from training.engine import FitContext, Method
from training.methods.views import ViewRecipe
from training.recipes import Recipe
from training.transforms import eval_transform, resized_crop_flip, small_crop_flip
from zoo.registry import InputSpec, create_model


class BackboneMethod(Method):
    """A method that trains the recipe's registry model as ``self.backbone``, with its knobs in
    ``self.options``: the recipe's options, else the defaults of the dataclass a subclass names,
    ``class RotNet(BackboneMethod, options=RotNetOptions)``. ``build`` adds the rest."""

    options_type: type

    def __init_subclass__(cls, options: type | None = None, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if options is not None:
            cls.options_type = options

    def __init__(self, recipe: Recipe):
        super().__init__(recipe)
        self.options: Any = recipe.options or self.options_type()
        self.backbone = create_model(recipe.model, **recipe.model_kwargs).train()  # create_model returns eval mode
        self.build(self.options)

    def build(self, o: Any) -> None:
        """Whatever the method trains or keeps besides the backbone (heads, memory banks, targets,
        buffers), from the options ``o``; built after the backbone, whose random initialisation
        therefore comes first."""


def crop_flip_augment(spec: InputSpec, augment: str, crop_scale: tuple[float, float] = (0.08, 1.0),
                      crop_padding: int = 4):
    """``"crop-flip"``: a random crop after padding and a flip (small images, CIFAR-style);
    ``"resized-crop-flip"``: a random-resized crop of ``crop_scale`` of the area and a flip (ImageNet)."""
    if augment == "crop-flip":
        return small_crop_flip(spec, crop_padding)
    if augment == "resized-crop-flip":
        return resized_crop_flip(spec, crop_scale)
    raise ValueError(f"augment must be 'crop-flip' or 'resized-crop-flip', got {augment!r}")


def grey_view(jitter: float = 0.4, **changes: Any) -> ViewRecipe:
    """The small and tiny recipes' view of a grey (Fashion-MNIST) image: a crop of 20-100 % of the
    area and brightness and contrast jitter; no saturation jitter, greyscale or blur, which change
    nothing in a grey 32x32 image or wipe it out."""
    return ViewRecipe(**{"crop_scale": (0.2, 1.0), "jitter": (jitter, jitter, 0.0), "grey_p": 0.0, "blur_p": 0.0,
                         **changes})


def unassigned(ctx: FitContext) -> torch.Tensor:
    """One cluster id per training image, all -1 (none yet): a data-sized buffer's first value."""
    return torch.full((len(ctx.dataset),), -1, dtype=torch.long, device=ctx.device)


@torch.no_grad()
def training_set_features(method: Method, ctx: FitContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features, true labels, dataset index) of every readable training image: the backbone's
    deepest features of the centre crop, the method in eval mode, as clustering wants them. Images
    are drawn as in the current epoch, so that pseudo-labels of random crops (single-image data)
    belong to the crops the epoch's steps train on; fixed images (Fashion-MNIST) are the same in
    every epoch."""
    method.eval()
    backbone = method.backbone
    return ctx.map(lambda batch: deepest_features(backbone, batch["x"]), ctx.dataset,
                   eval_transform(backbone.entry.input), with_index=True, epoch=ctx.epoch)


def heldout_images(method: Method, ctx: FitContext, scores: str) -> Dataset | None:
    """The recipe's held-out images (the training data's test split unless it names others),
    limited to ``heldout_limit``; None, with a note naming the ``scores`` left out, if there are none."""
    recipe = method.recipe
    try:
        heldout = open_dataset(recipe.heldout or ctx.data, "test")
    except DataError as err:
        if ctx.is_main:
            print(f"note: no {scores} on held-out images ({err})")
        return None
    return limit_dataset(heldout, recipe.heldout_limit, recipe.seed)


def lars_parameter_groups(method: Method) -> list[dict]:
    """Biases and BatchNorm parameters get neither weight decay nor LARS's trust ratio (SimCLR,
    BYOL); everything else gets both. Optimisers other than LARS ignore the ``lars`` flag."""
    plain, excluded = [], []
    for p in method.parameters():
        if p.requires_grad:
            (excluded if p.dim() <= 1 else plain).append(p)
    return [{"params": plain}, {"params": excluded, "weight_decay": 0.0, "lars": False}]
