"""sslzoo: self-supervised vision models with exact architectures, verified checkpoints and export.

``zoo`` is what a downstream user imports. It never imports ``training`` or ``export``, so
``torch.hub`` and ``from_pretrained`` need only this package and its light dependencies.
"""

from pathlib import Path

from zoo.backbones import ARCHITECTURES, Backbone, build_architecture
from zoo.errors import (BadArgumentsError, UnknownNameError, UsageError, WeightsError, WeightsNotAvailableError,
                        ZooError)
from zoo.checkpoint import save_pretrained
from zoo.preprocess import ImageTransform, preprocess, transforms_for
from zoo.registry import InputSpec, ModelEntry, create_model, get_model_entry, list_models

__version__ = "0.1.0"


def from_pretrained(id_or_path: str | Path, revision: str | None = None):
    """Load a checkpoint strictly, its weights verified against config.json's sha256.

    ``id_or_path``: a checkpoint folder, a registry model name, or a Hub repo id ``ORG/NAME``
    looked up in the local hub (``$ZOO_HUB``) and then on the Hugging Face Hub (its cache,
    ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, token); a registry model converted from the authors'
    release and not yet published is fetched from that release on first use (``zoo.fetch``).
    ``revision`` pins a branch, tag or commit.
    """
    from zoo.hub import from_pretrained as _from_pretrained

    return _from_pretrained(id_or_path, revision)


__all__ = [
    "ARCHITECTURES", "BadArgumentsError", "Backbone", "ImageTransform", "InputSpec", "ModelEntry", "UnknownNameError", "UsageError",
    "WeightsError", "WeightsNotAvailableError", "ZooError", "__version__", "build_architecture",
    "create_model", "from_pretrained", "get_model_entry", "list_models", "preprocess", "save_pretrained",
    "transforms_for",
]
