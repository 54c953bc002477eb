"""Where checkpoints live and how they are found, loaded and published.

``from_pretrained(id_or_path, revision=None)`` looks in this order:

1. a local checkpoint folder (``config.json`` + ``model.safetensors``);
2. the local hub, a folder of published checkpoints that needs no account and no network
   (``$ZOO_HUB``, default ``~/.cache/sslzoo/hub``; see ``LocalHub`` for the layout);
3. the shipped weights: the checkpoints whose numbers the model cards carry travel inside the
   package (``zoo/shipped``, the same layout, read-only), so they load offline on a fresh clone;
4. the Hugging Face Hub through ``huggingface_hub.snapshot_download``: its cache, revision pinning,
   ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and the token from its usual places (registry entries not
   yet published: only the cache);
5. for a registry entry not yet published, the original authors' release: downloaded, converted
   and cached in the local hub on first use (``zoo.fetch``).

A registry model name (``"rotnet_alexnet"``) stands for its entry's ``weights.hub_repo``.
``publish`` validates a checkpoint folder completely before it writes anything, then writes it
into the local hub atomically or uploads it to the Hugging Face Hub in one commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from zoo.checkpoint import (
    CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, atomic_write_text, load_checkpoint_folder, read_config, sha256_file,
)
from zoo.errors import UsageError, WeightsError, WeightsNotAvailableError, ZooError
from zoo.fileset import copy_synced, fsync_dir, is_temporary, owned_name, remove_abandoned

# The files a published checkpoint consists of; nothing else is uploaded or copied.
CHECKPOINT_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
DEFAULT_REVISION = "main"
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
SNAPSHOT_ID = re.compile(r"[0-9a-f]{40}")


def check_repo_id(repo: str) -> str:
    if not isinstance(repo, str) or not REPO_ID.fullmatch(repo) or ".." in repo:
        raise UsageError(f"{repo!r} is not a Hub repo id: use ORG/NAME (letters, digits, '-', '_', '.')")
    return repo


def check_revision(revision: str) -> str:
    if not isinstance(revision, str) or not REVISION.fullmatch(revision) or ".." in revision:
        raise UsageError(f"{revision!r} is not a revision name: use letters, digits, '-', '_', '.' (e.g. main, v1)")
    return revision


def check_branch(revision: str) -> str:
    """A revision to publish to: a name, never something that reads as a snapshot id or commit,
    which pins content and must keep pointing at what it was made from."""
    if SNAPSHOT_ID.fullmatch(check_revision(revision).lower()):
        raise UsageError(f"--revision {revision} reads as a snapshot id, and snapshot ids never change what they "
                         "point to; publish to a named revision (e.g. v2)")
    return revision


# ----------------------------------------------------------------------------------------------
# The local hub
# ----------------------------------------------------------------------------------------------

# The embedded hub: checkpoints that ship with sslzoo (written only by `zoo ship`, read-only otherwise).
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"


def shipped_hub() -> "LocalHub":
    return LocalHub(SHIPPED_DIR)


def default_hub_dir() -> Path:
    """``$ZOO_HUB``, else ``$XDG_CACHE_HOME/sslzoo/hub``, else ``~/.cache/sslzoo/hub``."""
    if os.environ.get("ZOO_HUB"):
        return Path(os.environ["ZOO_HUB"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "sslzoo" / "hub"


class LocalHub:
    """Published checkpoints on a local disk, laid out like the Hugging Face cache::

        <root>/models--ORG--NAME/
            snapshots/<id>/{config.json, model.safetensors, README.md}   # never modified once there
            refs/<revision>                                            # text: the snapshot id
            .incoming/                                                 # publishes in progress

    A snapshot id is a sha256 over the files' names and contents (40 hex digits, like a commit),
    so republishing the same files is a no-op and ``revision=<id>`` pins exact content. A publish
    copies into ``.incoming``, verifies, renames the folder into ``snapshots/`` and only then
    rewrites the ref atomically: an interrupted publish leaves every revision as it was.
    """

    def __init__(self, root: str | Path | None = None):
        if root is not None and not str(root).strip():
            raise UsageError("the local hub folder is empty; name a folder (or leave it out for $ZOO_HUB)")
        self.root = Path(root).expanduser() if root is not None else default_hub_dir()

    def repo_dir(self, repo: str) -> Path:
        org, name = check_repo_id(repo).split("/")
        return self.root / f"models--{org}--{name}"

    def snapshot(self, repo: str, revision: str | None = None) -> Path | None:
        """The snapshot folder ``revision`` (a ref name or a snapshot id) points to, or None."""
        revision = check_revision(revision or DEFAULT_REVISION)
        repo_dir = self.repo_dir(repo)
        ref = repo_dir / "refs" / revision
        if ref.is_file():
            snapshot_id = ref.read_text(encoding="utf-8").strip()
            if not SNAPSHOT_ID.fullmatch(snapshot_id):
                raise WeightsError(f"{ref} is damaged (it must hold a 40-hex snapshot id); publish the "
                                   f"checkpoint again with `zoo publish DIR --repo {repo} --revision {revision}`")
        elif SNAPSHOT_ID.fullmatch(revision):
            snapshot_id = revision
        else:
            return None
        folder = repo_dir / "snapshots" / snapshot_id
        return folder if folder.is_dir() else None

    def revisions(self, repo: str) -> dict[str, str]:
        refs = self.repo_dir(repo) / "refs"
        # a killed publish's temporary ref (.main.<owner>.tmp) is no revision; the next publish removes it
        return {p.name: p.read_text(encoding="utf-8").strip() for p in sorted(refs.glob("*"))
                if p.is_file() and not is_temporary(p.name)}

    def publish(self, directory: Path, repo: str, revision: str = DEFAULT_REVISION) -> tuple[Path, str]:
        """Copy the checkpoint files of ``directory`` in as a snapshot and point ``revision`` at it."""
        revision = check_branch(revision)
        repo_dir = self.repo_dir(repo)
        incoming = repo_dir / ".incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        # what killed publishes left: their staging folders and temporary refs
        remove_abandoned(incoming, "publish.", unowned_max_age=24 * 3600.0)
        remove_abandoned(incoming, "publish-", unowned_max_age=24 * 3600.0)  # named by older versions
        remove_abandoned(repo_dir / "refs", ".", ".tmp")
        staging = incoming / owned_name("publish.")
        try:
            staging.mkdir(parents=True)  # .incoming may have been removed by a publish that just ended
            for name in CHECKPOINT_FILES:
                copy_synced(directory / name, staging / name)
            # The source may have changed since it was validated: the copy is what must be right.
            hashes = {name: sha256_file(staging / name) for name in CHECKPOINT_FILES}
            if hashes[WEIGHTS_NAME] != read_config(staging)["weights"]["sha256"]:
                raise WeightsError(f"{directory / WEIGHTS_NAME} changed while it was being published; publish again")
            snapshot_id = _snapshot_id(hashes)
            target = repo_dir / "snapshots" / snapshot_id
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir() and snapshot_id_of(target) == snapshot_id:
                shutil.rmtree(staging)  # the same content is already published
            else:
                if target.exists():  # a damaged snapshot: move it aside, never delete before replacing
                    target.rename(incoming / f"damaged-{snapshot_id}-{os.getpid()}")
                staging.rename(target)
                fsync_dir(target.parent)
            atomic_write_text(repo_dir / "refs" / revision, snapshot_id)
            fsync_dir(repo_dir / "refs")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            with contextlib.suppress(OSError):
                incoming.rmdir()  # when no other publish is under way
        return target, snapshot_id


def snapshot_id_of(folder: Path) -> str:
    return _snapshot_id({name: sha256_file(folder / name) for name in CHECKPOINT_FILES})


def _snapshot_id(hashes: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in CHECKPOINT_FILES:
        h.update(f"{name}\0{hashes[name]}\n".encode())
    return h.hexdigest()[:40]


# ----------------------------------------------------------------------------------------------
# Resolution and loading
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resolved:
    path: Path     # a folder holding config.json and model.safetensors
    source: str    # "local folder", "local hub", "shipped", "huggingface", "original release"
    repo: str = ""
    revision: str = ""


def resolve(id_or_path: str | os.PathLike, revision: str | None = None, *, download: bool = True,
            hub: LocalHub | None = None) -> Resolved:
    """Find the checkpoint folder for a local path, a registry model name or a Hub repo id.

    ``download=False`` looks only at local folders, the local hub and the Hugging Face cache.
    """
    from zoo.registry import list_models

    text = os.fspath(id_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise WeightsError(f"{path} is a file; pass the checkpoint folder that holds {CONFIG_NAME} "
                               f"and {WEIGHTS_NAME}")
        if revision is not None:
            raise UsageError(f"revision={revision!r} applies to Hub repo ids, not to the local folder {path}")
        return Resolved(path, "local folder")
    if text in list_models():
        return resolve_entry(text, revision, download=download, hub=hub)
    if not REPO_ID.fullmatch(text):
        raise WeightsNotAvailableError(f"{text!r} is not a checkpoint folder, a registry model name (`zoo list`) "
                                       "or a Hub repo id ORG/NAME")
    return _resolve_repo(text, revision, download=download, hub=hub)


def resolve_entry(name: str, revision: str | None = None, *, download: bool = True,
                  hub: LocalHub | None = None) -> Resolved:
    """The checkpoint of registry model ``name``, at its entry's repo and revision.

    Weights the registry does not list as published are looked for locally (local hub, shipped
    weights, the Hugging Face cache), then fetched from the original authors' release and
    converted into the local hub where the entry has one (``zoo.fetch``).
    """
    from zoo.registry import get_model_entry

    entry = get_model_entry(name)
    published = entry.weights.status == "published"
    try:
        return _resolve_repo(entry.weights.hub_repo, revision or entry.weights.revision,
                             download=download and published, hub=hub)
    except WeightsNotAvailableError as err:
        if published:
            raise
        from zoo.fetch import resolve_release  # last: the authors' release, fetched and converted

        fetched = resolve_release(name, revision, download=download, hub=hub)
        if fetched is not None:
            return fetched
        hub = hub or LocalHub()
        raise WeightsNotAvailableError(
            f"{name!r} has no published weights yet (status: {entry.weights.status}) and none are in the local "
            f"hub {hub.root}, the shipped weights or the Hugging Face cache under {entry.weights.hub_repo}; "
            f"train or convert it, then "
            f"`zoo publish DIR --repo {entry.weights.hub_repo}`, or use pretrained=False") from err


def _resolve_repo(repo: str, revision: str | None, *, download: bool, hub: LocalHub | None) -> Resolved:
    check_repo_id(repo)
    revision = check_revision(revision or DEFAULT_REVISION)
    hub = hub or LocalHub()
    local = hub.snapshot(repo, revision)
    if local is not None:
        return Resolved(local, "local hub", repo, revision)
    shipped = shipped_hub().snapshot(repo, revision)
    if shipped is not None:
        return Resolved(shipped, "shipped", repo, revision)
    return Resolved(_hf_snapshot(repo, revision, download=download, hub=hub), "huggingface", repo, revision)


def weights_origin(name: str) -> str:
    """Where ``create_model(name, pretrained=True)`` would take the weights from, without loading
    or downloading anything: "local hub", "shipped", "HF Hub", "original release, on first use"
    (fetched and converted), "original release, by hand" or "none"."""
    from zoo.registry import get_model_entry

    weights = get_model_entry(name).weights
    try:
        if LocalHub().snapshot(weights.hub_repo, weights.revision) is not None:
            return "local hub"
    except WeightsError:
        return "local hub (damaged ref)"
    if shipped_hub().snapshot(weights.hub_repo, weights.revision) is not None:
        return "shipped"
    if weights.status == "published":
        return "HF Hub"
    from zoo.fetch import original_release

    release = original_release(name)
    if release is not None:
        return "original release, by hand" if release.manual else "original release, on first use"
    return "none"


def ship(directory: str | os.PathLike, cards_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Put a checkpoint whose numbers a results file records into the shipped weights (maintainers).

    Only weights that carry numbers ship: ``<cards>/results/<name>.json`` must record this file's
    sha256. The card is rendered into a staging copy (the source folder is not touched), the
    snapshot is published into ``zoo/shipped`` and older snapshots of the repo are removed, so
    the repository holds one version of each shipped model.
    """
    from zoo.cards import load_results, write_checkpoint_card
    from zoo.checkpoint import load_checkpoint_folder

    directory = Path(directory)
    model = load_checkpoint_folder(directory)  # verifies the weights against their sha256
    config = model.checkpoint_config
    name, sha = config["name"], config["weights"]["sha256"]
    results = load_results(name, cards_dir)
    if results is None or results.get("weights_sha256") != sha:
        recorded = (results or {}).get("weights_sha256") or "none"
        raise UsageError(f"{directory} ({name}, sha256 {sha[:12]}...) carries no recorded numbers (the results file "
                         f"records {recorded[:12]}...); only the weights the model card's numbers were measured on ship")
    repo = model.entry.weights.hub_repo
    hub = shipped_hub()
    with tempfile.TemporaryDirectory() as work:
        staging = Path(work) / name  # the card names this folder: the model, not a random temporary name
        staging.mkdir()
        for file_name in (CONFIG_NAME, WEIGHTS_NAME):
            shutil.copyfile(directory / file_name, Path(staging) / file_name)
        write_checkpoint_card(staging, cards_dir=cards_dir)
        validate_checkpoint(staging)
        target, snapshot_id = hub.publish(staging, repo, model.entry.weights.revision)
    for old in (hub.repo_dir(repo) / "snapshots").iterdir():
        if old.name != snapshot_id:
            shutil.rmtree(old)
    shutil.rmtree(hub.repo_dir(repo) / ".incoming", ignore_errors=True)
    return target, snapshot_id


def _hf_snapshot(repo: str, revision: str, *, download: bool, hub: LocalHub) -> Path:
    """``snapshot_download`` of the checkpoint files, with its errors turned into one line each."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError, HfHubHTTPError, IncompleteSnapshotError, LocalEntryNotFoundError,
        RepositoryNotFoundError, RevisionNotFoundError,
    )

    from zoo import __version__

    where = f"{repo}@{revision}"
    looked = f"no folder {repo!r}, not in the local hub {hub.root}, not in the Hugging Face cache {constants.HF_HUB_CACHE}"
    try:
        folder = snapshot_download(repo, revision=revision, allow_patterns=list(CHECKPOINT_FILES),
                                   local_files_only=not download, library_name="sslzoo",
                                   library_version=__version__)
    except IncompleteSnapshotError as err:
        raise WeightsNotAvailableError(f"the cached snapshot of {where} is incomplete ({_first_sentence(err)}); "
                                       "reconnect and load it again to complete the download") from None
    except LocalEntryNotFoundError as err:
        if not download:
            raise WeightsNotAvailableError(f"{where} not found: {looked}") from None
        if constants.is_offline_mode():
            raise WeightsNotAvailableError(
                f"{where} not found: {looked}, and HF_HUB_OFFLINE=1 forbids downloading; unset HF_HUB_OFFLINE "
                f"to download it, or publish it locally with `zoo publish DIR --repo {repo}`") from None
        cause = err.__cause__
        reason = f"{type(cause).__name__}: {cause}" if cause else _first_sentence(err)
        raise WeightsNotAvailableError(
            f"could not reach {constants.ENDPOINT} to download {where} ({_first_sentence(reason)}) and it is not "
            "cached; check the connection or HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use cached files only") from None
    except RevisionNotFoundError:
        raise WeightsNotAvailableError(f"revision {revision!r} not found in {repo} on {constants.ENDPOINT}") from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise WeightsNotAvailableError(
            f"{repo} not found on {constants.ENDPOINT} (or it is private or gated: log in with `hf auth login` "
            f"or set HF_TOKEN); {looked}") from None
    except HfHubHTTPError as err:
        raise WeightsNotAvailableError(f"downloading {where} from {constants.ENDPOINT} failed: "
                                       f"{_first_sentence(err)}") from None
    return Path(folder)


def _first_sentence(err: object) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def from_pretrained(id_or_path: str | os.PathLike, revision: str | None = None) -> nn.Module:
    """Load a checkpoint strictly, its weights verified against config.json's sha256.

    ``id_or_path`` is a checkpoint folder, a registry model name or a Hub repo id ``ORG/NAME``
    (looked up in the local hub, then on the Hugging Face Hub); ``revision`` pins a branch, tag or
    commit (or a local-hub snapshot id).
    """
    resolved = resolve(id_or_path, revision)
    model = load_checkpoint_folder(resolved.path)
    model.checkpoint_source = resolved
    return model


def load_entry_weights(name: str, **arch_overrides: Any) -> nn.Module:
    """``create_model(name, pretrained=True, **arch_overrides)``: the entry's published checkpoint."""
    resolved = resolve_entry(name)
    config = read_config(resolved.path)
    where = f"{resolved.repo}@{resolved.revision} ({resolved.source}: {resolved.path})"
    if config["name"] != name:
        raise WeightsError(f"{where} holds a checkpoint of {config['name']!r}, not of {name!r}")
    saved = dict(config["arch_kwargs"])
    changed = {k: v for k, v in arch_overrides.items() if k not in saved or saved[k] != v}
    if changed:
        import torch

        from zoo.backbones import build_architecture

        # An argument the architecture does not take at all is a TypeError, as for pretrained=False;
        # building on the meta device finds out without allocating or initialising anything.
        with torch.device("meta"):
            build_architecture(config["arch"], **{**saved, **arch_overrides})
        key, value = next(iter(changed.items()))
        raise UsageError(f"the pretrained weights of {name!r} were saved with architecture arguments {saved}; "
                         f"{key}={value!r} would change the architecture: pass pretrained=False to build it untrained")
    model = load_checkpoint_folder(resolved.path)
    model.checkpoint_source = resolved
    return model


# ----------------------------------------------------------------------------------------------
# Publishing
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Published:
    repo: str
    revision: str
    destination: str   # local hub root or Hub endpoint
    version: str       # local snapshot id or Hub commit id
    url: str = ""
    files: tuple[str, ...] = CHECKPOINT_FILES


def validate_checkpoint(directory: str | os.PathLike) -> dict[str, Any]:
    """Everything ``publish`` checks before writing: the config, the weights (sha256, strict load
    into the architecture the config names) and the model card, which must be the sslzoo card of
    these weights with at least one number in its model-index, each number also in its text.
    Returns the config."""
    from zoo.cards import check_checkpoint_card

    directory = Path(directory)
    if not directory.is_dir():
        raise WeightsError(f"{directory} is not a checkpoint folder")
    model = load_checkpoint_folder(directory)
    check_checkpoint_card(directory, model.checkpoint_config)
    return model.checkpoint_config


def publish(directory: str | os.PathLike, repo: str, *, hf: bool = False, local_hub: str | os.PathLike | None = None,
            revision: str = DEFAULT_REVISION, private: bool = False, token: str | None = None,
            commit_message: str | None = None) -> Published:
    """Validate the checkpoint folder, then put it in the local hub (default) or, with ``hf=True``,
    on the Hugging Face Hub (``create_repo`` + one ``upload_folder`` commit of exactly
    config.json, model.safetensors and README.md). A failed publish leaves the previous version."""
    from zoo import __version__

    check_repo_id(repo)
    check_branch(revision)
    if hf and local_hub is not None:
        raise UsageError("choose one destination: --local-hub PATH or --hf")
    if private and not hf:
        raise UsageError("--private applies to --hf uploads; local hub checkpoints are as private as the folder")
    directory = Path(directory)
    config = validate_checkpoint(directory)
    sha = config["weights"]["sha256"]
    message = commit_message or f"Publish {config['name']} (sslzoo {__version__}, weights sha256 {sha[:12]})"
    if hf:
        return _publish_hf(directory, repo, revision, private=private, token=token, message=message)
    hub = LocalHub(local_hub)
    _, snapshot_id = hub.publish(directory, repo, revision)
    return Published(repo, revision, str(hub.root), snapshot_id)


def _publish_hf(directory: Path, repo: str, revision: str, *, private: bool, token: str | None,
                message: str) -> Published:
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    from zoo import __version__

    api = HfApi(token=token, library_name="sslzoo", library_version=__version__)
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        if revision != DEFAULT_REVISION:
            api.create_branch(repo, branch=revision, repo_type="model", exist_ok=True)
        # One commit: the Hub applies it whole or not at all, so the previous version stays
        # until the new files are all in. Only the checkpoint files go up, whatever else is in
        # the folder (logs, optimizer state).
        info = api.upload_folder(repo_id=repo, folder_path=str(directory), repo_type="model", revision=revision,
                                 allow_patterns=list(CHECKPOINT_FILES), commit_message=message)
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise ZooError(f"uploading {directory} to {repo}@{revision} on {api.endpoint or constants.ENDPOINT} failed "
                       f"({_first_sentence(err)}); nothing was committed, the previous version is unchanged") from None
    except Exception as err:  # httpx connection errors and the like: still one line
        if type(err).__module__.split(".")[0] not in ("httpx", "httpx2", "httpcore", "requests", "hf_xet"):
            raise
        raise ZooError(f"could not reach {api.endpoint} to upload {repo} ({type(err).__name__}: "
                       f"{_first_sentence(err)}); nothing was committed") from None
    return Published(repo, revision, api.endpoint, getattr(info, "oid", "") or "", getattr(info, "commit_url", "") or "")


# ----------------------------------------------------------------------------------------------
# torch.hub entrypoints (hubconf.py is three lines over this)
# ----------------------------------------------------------------------------------------------

def hub_entrypoints() -> dict[str, Any]:
    """One ``name(pretrained=False, **kwargs)`` function per registry model, for hubconf.py."""
    from zoo.registry import list_models

    return {name: _entrypoint(name) for name in list_models()}


def _entrypoint(name: str):
    from zoo.cards import entrypoint_docstring

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        from zoo.registry import create_model

        return create_model(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = "hubconf"
    entrypoint.__doc__ = entrypoint_docstring(name)
    return entrypoint
