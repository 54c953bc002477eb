"""Checkpoint folders in the Hugging Face model-repo layout, saved and loaded strictly.

A checkpoint is a folder with ``config.json`` (what to build and how to feed it, plus the sha256
of the weights), ``model.safetensors`` (the state dict; no pickle anywhere) and ``README.md`` (the
model card, ``zoo.cards``). Loading verifies the hash and loads strictly: a missing or unexpected
key or a shape mismatch is an error that names the key, never a silent partial load. Where
checkpoints are found and how they are published is ``zoo.hub``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from zoo.errors import UsageError, WeightsError, ZooError
from zoo.fileset import atomic_write, atomic_write_text, read_json, sha256_file  # noqa: F401  (re-exported)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FORMAT = "sslzoo-checkpoint/1"


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes and bytes, in key order): the weights' identity
    whatever file holds them, which ONNX, extraction and index metadata record. A saved file's own hash
    is ``sha256_file`` (``weights.sha256`` in config.json, ``weights_sha256`` in results)."""
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_config(model: nn.Module, **extra: Any) -> dict[str, Any]:
    """The config.json of a registry-built model (``create_model`` / ``from_pretrained``)."""
    from zoo import __version__

    entry = getattr(model, "entry", None)
    if entry is None:
        raise UsageError("save_pretrained needs a model built by zoo.create_model or zoo.from_pretrained")
    return {
        "format": FORMAT,
        "sslzoo_version": __version__,
        "name": entry.name,
        "arch": entry.arch,
        "arch_kwargs": dict(getattr(model, "arch_kwargs", entry.arch_kwargs)),
        "method": entry.method,
        "pretrain_data": entry.pretrain_data,
        "input": dataclasses.asdict(entry.input),
        "feature_layers": list(model.feature_layers),
        "embedding": {"layer": entry.embedding_layer or model.feature_layers[-1], "pool": "avg"},
        **extra,
    }


def save_pretrained(model: nn.Module, directory: str | Path, **extra_config: Any) -> Path:
    """Write ``model.safetensors``, ``README.md`` (the model card) and ``config.json`` (with the
    weights' sha256) into ``directory``.

    ``extra_config`` adds keys to config.json (e.g. ``training`` with the recipe and its results).
    The weights are written first and the config last, each atomically, so a folder whose config
    exists always has the weights it describes. The card comes from ``_card_writer``.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    config = model_config(model, **extra_config)
    write_card = _card_writer(config["name"])
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    config["weights"] = {"file": WEIGHTS_NAME, "sha256": sha256_file(directory / WEIGHTS_NAME)}
    atomic_write_text(directory / CARD_NAME, write_card(config, directory))
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def _card_writer(name: str) -> Callable[[dict[str, Any], Path], str]:
    """Saving's one use of ``zoo.cards``: ``(config, folder) -> README.md text`` of model ``name``.

    The card shows the results recorded in the source tree's ``MODEL_CARDS/results/<name>.json``
    (none for an installed package: the working directory is never read). The file is read and
    checked here, before save_pretrained writes anything.
    """
    from zoo.cards import render_card
    from zoo.results import load_results, source_cards_dir

    cards_dir = source_cards_dir()
    results = load_results(name, cards_dir) if cards_dir is not None else None
    return lambda config, directory: str(render_card(name, results=results, checkpoint_config=config,
                                                     checkpoint_dir=directory))


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise WeightsError(f"{path} not found: not an sslzoo checkpoint folder")
    config = read_json(path, WeightsError, "re-download or re-save the checkpoint")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise WeightsError(f"{path} is not an sslzoo checkpoint config (expected format {FORMAT!r})")
    for key, kind in (("name", str), ("arch", str), ("arch_kwargs", dict), ("input", dict), ("weights", dict)):
        if key not in config:
            raise WeightsError(f"{path} lacks {key!r}; re-save the checkpoint with save_pretrained")
        if not isinstance(config[key], kind):
            raise WeightsError(f"{path}: {key!r} must be a {kind.__name__}, got {type(config[key]).__name__}")
    return config


def read_weights(path: str | Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    """Load a safetensors file after checking its sha256; every failure is one line naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise WeightsError(f"{path} has sha256 {actual[:12]}..., config.json expects "
                               f"{expected_sha256[:12]}...: the file is corrupt or was replaced; re-download it")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise WeightsError(f"{path} is not a readable safetensors file ({err}); it may be truncated") from None


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str, assign: bool = False) -> None:
    """``load_state_dict(strict=True)`` with one-line messages naming the first offending key.

    ``assign=True`` puts the given tensors into the model instead of copying into its own (for a
    model built on the meta device, which then owns no memory of its own)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing:
        raise WeightsError(f"{source}: missing key {missing[0]!r}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    if unexpected:
        raise WeightsError(f"{source}: unexpected key {unexpected[0]!r}"
                           + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""))
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise WeightsError(f"{source}: key {k!r} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
        if v.dtype != own[k].dtype:
            raise WeightsError(f"{source}: key {k!r} is {str(v.dtype).removeprefix('torch.')}, the model expects "
                               f"{str(own[k].dtype).removeprefix('torch.')}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise WeightsError(f"{source}: key {k!r} holds NaN or infinite values; the weights are broken")
        if k.rpartition(".")[2] == "running_var" and bool((v < 0).any()):
            raise WeightsError(f"{source}: key {k!r} holds negative variances; the weights are broken")
    model.load_state_dict(state, strict=True, assign=assign)


def load_checkpoint_folder(directory: str | Path) -> nn.Module:
    """Build the model a checkpoint folder describes and load its verified weights strictly."""
    from zoo.backbones import ARCHITECTURES
    from zoo.registry import InputSpec, create_model, get_model_entry, list_models

    directory = Path(directory)
    config = read_config(directory)
    source = directory / CONFIG_NAME
    if config["arch"] not in ARCHITECTURES:
        raise WeightsError(f"{source} names unknown architecture {config['arch']!r} (known: "
                           f"{', '.join(sorted(ARCHITECTURES))}); it needs a newer sslzoo or is not an sslzoo checkpoint")
    if config["name"] not in list_models():
        raise WeightsError(f"{source} names model {config['name']!r}, which this sslzoo's registry does not have "
                           f"(saved by sslzoo {config.get('sslzoo_version', '?')}); run `zoo list` for the known models")
    entry = get_model_entry(config["name"])
    if entry.arch != config["arch"]:
        raise WeightsError(f"{source} names architecture {config['arch']!r} but "
                           f"model {entry.name!r} is a {entry.arch!r}")
    try:
        spec = InputSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in config["input"].items()})
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{directory / CONFIG_NAME} has a bad input spec: {err}") from None
    # What save_pretrained copies from the registry entry must still be the entry's: a config that
    # names another model would otherwise load under that model's preprocessing and embedding.
    for key, theirs, ours in (("input", spec, entry.input), ("method", config.get("method", entry.method), entry.method),
                              ("pretrain_data", config.get("pretrain_data", entry.pretrain_data), entry.pretrain_data)):
        if theirs != ours:
            raise WeightsError(f"{source} names model {entry.name!r} but its {key} is not that model's "
                               f"({_describe(theirs)} instead of {_describe(ours)}); the config belongs to another model")
    weights = config["weights"]
    if not isinstance(weights.get("sha256"), str) or len(weights["sha256"]) != 64:
        raise WeightsError(f"{source} gives no sha256 of the weights, so they cannot be verified; "
                           "re-save the checkpoint with save_pretrained")
    weights_file = weights.get("file", WEIGHTS_NAME)
    if not isinstance(weights_file, str) or Path(weights_file).name != weights_file or weights_file in ("", ".", ".."):
        raise WeightsError(f"{source}: weights file must be a file name inside the folder, got {weights_file!r}")
    state = read_weights(directory / weights_file, weights.get("sha256"))
    try:
        # Built on the meta device: no random initialisation to compute and throw away, and no
        # second copy of the weights; every tensor then comes from the file.
        with torch.device("meta"):
            model = create_model(entry.name, **config["arch_kwargs"])
    except ZooError as err:
        raise WeightsError(f"{directory / CONFIG_NAME}: {err}") from None
    load_state_dict_strict(model, state, str(directory / weights_file), assign=True)
    left = next((n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta), None)
    if left is not None:  # a tensor outside the state dict: a bug in the architecture, never silent
        raise WeightsError(f"{directory / weights_file}: {left!r} was not loaded")
    model.entry = entry
    model.checkpoint_config = config
    return model.eval()


def _describe(value: Any) -> str:
    return json.dumps(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value)[:160]
