"""Helpers shared by the hub, card and torch.hub tests: checkpoints with a card that carries
numbers, a Hugging Face cache laid out like huggingface_hub's own, features to compare."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

import zoo
from zoo.cards import write_checkpoint_card
from zoo.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from zoo.inspect import FEATURE_RTOL, nominal_input

FIXTURE_VALUE = 12.5  # a made-up number for test cards; never written to the repository's MODEL_CARDS


def random_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A registry model with random weights *and* random BatchNorm statistics, so that every
    buffer matters when features are compared."""
    torch.manual_seed(seed)
    model = zoo.create_model(name, **kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(seed + 7)
    return model.eval()


def fixture_results(cards_dir: Path, name: str) -> Path:
    """A results file for ``name`` in a test's own cards folder (never the repository's)."""
    path = cards_dir / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": name, "results": [{
        "task": "image-classification", "dataset": "Fashion-MNIST test", "metric": "top-1",
        "value": FIXTURE_VALUE, "protocol": "test fixture, not a measurement", "command": "pytest tests/"}]}))
    return path


def publishable_checkpoint(model: torch.nn.Module, directory: Path, cards_dir: Path) -> Path:
    """save_pretrained, then the card re-rendered with a fixture result so that publish accepts it."""
    model.save_pretrained(directory)
    fixture_results(cards_dir, model.entry.name)
    write_checkpoint_card(directory, cards_dir=cards_dir)
    return directory


@torch.no_grad()
def features(model: torch.nn.Module, seed: int = 1, batch: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    x = torch.randn_like(nominal_input(model.entry.input, batch))
    return model.forward_features(x)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Every tensor of the two state dicts is bit-identical (names, dtypes, shapes, bytes)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), f"{key} differs"


def assert_same_features(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Features of identical weights on identical inputs, computed in two separate forwards: equal
    to within summation order (``zoo.inspect.FEATURE_RTOL`` says why and how close)."""
    assert list(a) == list(b)
    for layer in a:
        scale = float(a[layer].abs().max()) or 1.0
        torch.testing.assert_close(b[layer], a[layer], rtol=0, atol=FEATURE_RTOL * scale, msg=f"layer {layer} differs")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lay_out_hf_cache(cache: Path, repo: str, checkpoint: Path, commit: str, revision: str = "main") -> Path:
    """Put ``checkpoint``'s files into a Hugging Face hub cache the way huggingface_hub stores a
    download: blobs named by their etag (sha256 for LFS files such as the weights, the git blob
    sha1 for small text files), snapshots/<commit>/ of relative symlinks, refs/<revision>."""
    org, name = repo.split("/")
    root = cache / f"models--{org}--{name}"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in sorted(checkpoint.iterdir()):
        data = path.read_bytes()
        etag = hashlib.sha256(data).hexdigest() if path.name == WEIGHTS_NAME else git_blob_sha1(data)
        (root / "blobs" / etag).write_bytes(data)
        (snapshot / path.name).symlink_to(Path("..") / ".." / "blobs" / etag)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    return snapshot


def rewrite_weights(directory: Path, state: dict[str, torch.Tensor] | None = None, raw: bytes | None = None) -> None:
    """Replace the weights and record their new sha256 in config.json, as a different (wrong)
    build would: the hash matches, so the loader's other checks must catch the problem."""
    from safetensors.torch import save_file

    weights = directory / WEIGHTS_NAME
    if raw is not None:
        weights.write_bytes(raw)
    else:
        save_file(state, str(weights))
    config = json.loads((directory / CONFIG_NAME).read_text())
    config["weights"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (directory / CONFIG_NAME).write_text(json.dumps(config))


def edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / CONFIG_NAME).read_text())
    config.update(changes)
    (directory / CONFIG_NAME).write_text(json.dumps(config))
