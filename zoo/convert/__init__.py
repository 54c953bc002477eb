"""``zoo convert``: the original authors' checkpoints as clean, verified sslzoo checkpoint folders.

Converting is loading, so it lives in ``zoo``. The steps, for ``zoo convert SOURCE FILE -o DIR``:

1. read FILE without running pickled code (``safe_load``) and hash it;
2. find the release: SOURCE is a registry name (``deepcluster_vgg16``) or a method / family
   (``deepcluster``, ``vissl``) whose releases are tried in turn, ``--arch`` narrowing them;
3. the release's reader (``releases``) maps the authors' keys onto the backbone's;
4. build the registry model and load strictly: a backbone weight the file lacks, a key the model
   does not have or a shape that differs stops the conversion, nothing is written;
5. ``save_pretrained`` writes the folder, with ``conversion`` in config.json: where the file came
   from, its name and sha256, what was dropped and what was added.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoo.checkpoint import CONFIG_NAME, load_state_dict_strict, save_pretrained, sha256_file
from zoo.convert.releases import RELEASES, Extracted, LayoutMismatch, Release, found_keys
from zoo.convert.safe_load import load_original
from zoo.errors import UnknownNameError, UsageError, WeightsError
from zoo.registry import create_model, get_model_entry


@dataclass
class ConversionReport:
    name: str
    directory: Path
    conversion: dict[str, Any]
    tensors: int
    parameters: int


def releases_for(source: str, arch: str | None = None) -> list[Release]:
    """The releases SOURCE may mean: a registry name, a family (``vissl``) or a method (``npid``)."""
    matches = [r for r in RELEASES.values()
               if source in (r.name, r.family, get_model_entry(r.name).method)]
    if not matches:
        words = {r.name for r in RELEASES.values()} | {r.family for r in RELEASES.values()}
        raise UnknownNameError("conversion source", source, words, hint="run `zoo convert --help` for the list")
    if arch:
        narrowed = [r for r in matches if arch in (r.arch, get_model_entry(r.name).arch)]
        if not narrowed:
            archs = sorted({r.arch for r in matches})
            raise UsageError(f"{source} has no release with architecture {arch!r}; choose from {', '.join(archs)}")
        matches = narrowed
    return matches


def _release_file(source: str, file: Path, candidates: list[Release]) -> Path:
    """FILE, or for a folder (an unpacked download) the one release file of SOURCE inside it."""
    if not file.is_dir():
        return file
    names = sorted({get_model_entry(r.name).weights.original_file for r in candidates} - {""})
    found = [file / n for n in names if (file / n).is_file()]
    if len(found) == 1:
        return found[0]
    expected = f" (for {source}: {', '.join(names)})" if names else ""
    raise UsageError(f"{file} is a folder{' holding several release files' if found else ''}; pass the release "
                     f"file itself{expected}")


def _pick(source: str, file: Path, obj: Any, candidates: list[Release], keep_heads: bool) -> tuple[Release, Extracted]:
    fits, reasons = [], []
    for release in candidates:
        try:
            fits.append((release, release.read(obj, keep_heads)))
        except LayoutMismatch as why:
            reasons.append(f"{release.name}: {why}")
    if not fits:
        layouts = "; ".join(f"{r.name}: {r.layout}" for r in candidates)
        raise UsageError(f"{file.name} is not in a layout `zoo convert {source}` knows: it holds "
                         f"{found_keys(obj)} ({'; '.join(reasons)}). Supported: {layouts}")
    if len(fits) > 1:  # e.g. several VISSL ResNet-50 releases: the file name may tell
        named = [f for f in fits if Path(get_model_entry(f[0].name).weights.original_file).name == file.name]
        if len(named) != 1:
            names = ", ".join(r.name for r, _ in fits)
            raise UsageError(f"{file.name} fits {names}; name the one it is, e.g. "
                             f"`zoo convert {fits[0][0].name} {file}`")
        fits = named
    return fits[0]


def _complete(model: torch.nn.Module, extracted: Extracted) -> dict[str, torch.Tensor]:
    """The extracted tensors in the model's dtypes, with counters old files predate added."""
    own = model.state_dict()
    state = {}
    for key, value in extracted.state.items():
        target = own.get(key)
        state[key] = value.to(target.dtype) if target is not None and value.is_floating_point() else value
    stale = [k for k in own if k.endswith("num_batches_tracked") and k not in state]
    if stale:  # PyTorch < 0.4.1 did not save it; eval-mode BatchNorm does not read it
        for key in stale:
            state[key] = torch.zeros((), dtype=torch.long)
        extracted.added.append(f"{len(stale)} x num_batches_tracked = 0 (the file predates them)")
    missing = [k for k in own if k not in state]
    if missing:
        raise WeightsError(f"refusing to write {extracted.layout}: the file lacks {len(missing)} backbone "
                           f"weight(s) the model needs, first {missing[0]!r}; nothing was written")
    return state


def convert_checkpoint(source: str, file: str | Path, directory: str | Path, arch: str | None = None,
                       keep_heads: bool = False, overwrite: bool = False,
                       fetched: dict[str, Any] | None = None) -> ConversionReport:
    """Convert an original release FILE into an sslzoo checkpoint folder at ``directory``.

    ``fetched`` (from ``zoo.fetch``) records where the file was downloaded from; it is kept in
    config.json as ``conversion.fetched``."""
    file, directory = Path(file), Path(directory)
    candidates = releases_for(source, arch)  # bad names fail before the file is read
    if (directory / CONFIG_NAME).exists() and not overwrite:
        raise UsageError(f"{directory} already holds a checkpoint; pass --overwrite to replace it")
    file = _release_file(source, file, candidates)
    loaded = load_original(file)
    release, extracted = _pick(source, file, loaded.obj, candidates, keep_heads)
    entry = get_model_entry(release.name)
    try:
        model = create_model(release.name, **extracted.arch_kwargs)
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{file.name}: the file describes a {entry.arch} the registry cannot build ({err})") from None
    state = _complete(model, extracted)
    load_state_dict_strict(model, state, f"{file.name} ({extracted.layout})")
    conversion = {
        "source": release.family,
        "release": release.name,
        "layout": extracted.layout,
        "original_file": file.name,
        "original_sha256": sha256_file(file),
        "url": entry.weights.original_url,
        "origin": entry.weights.origin,
        "loader": loaded.method,
        "pickled_classes_never_run": loaded.placeholders,
        "dropped_keys": sorted(extracted.dropped_keys),
        "dropped": extracted.dropped,
        "added": extracted.added,
        "notes": extracted.notes,
    }
    if fetched:
        conversion["fetched"] = dict(fetched)
    save_pretrained(model.eval(), directory, conversion=conversion)
    return ConversionReport(release.name, directory, conversion, len(state),
                            sum(p.numel() for p in model.parameters()))


def _sources_help() -> str:
    lines = [f"  {r.name:<22} {r.family:<13} {get_model_entry(r.name).weights.original_file}" for r in RELEASES.values()]
    return "\n".join(["\b", "releases (name, family, original file):", *lines])


def _command():
    import click

    from zoo.cli import OutputPath

    @click.command("convert", epilog=_sources_help())
    @click.argument("source")
    @click.argument("file", type=click.Path(path_type=Path))
    @click.option("-o", "--out", "directory", required=True, type=OutputPath(path_type=Path),
                  help="Checkpoint folder to write (model.safetensors + config.json).")
    @click.option("--arch", default=None, help="Architecture when SOURCE has several (alexnet, vgg16, resnet50, ...).")
    @click.option("--keep-heads", is_flag=True, help="Keep AlexNet/VGG pretraining heads as heads.<i>.")
    @click.option("--overwrite", is_flag=True, help="Replace a checkpoint already in the output folder.")
    def convert(source, file, directory, arch, keep_heads, overwrite):
        """Convert an original authors' checkpoint FILE into an sslzoo checkpoint folder.

        SOURCE is a registry model (deepcluster_vgg16), a method (rotnet, npid) or a family
        (vissl). No code pickled in FILE is run: classes it names are rebuilt as inert data.
        """
        report = convert_checkpoint(source, file, directory, arch=arch, keep_heads=keep_heads, overwrite=overwrite)
        c = report.conversion
        click.echo(f"converted {file.name} -> {report.name} in {report.directory}")
        click.echo(f"  layout    {c['layout']}")
        click.echo(f"  sha256    {c['original_sha256']}  (read with {c['loader']})")
        if c["pickled_classes_never_run"]:
            click.echo(f"  pickled   {', '.join(c['pickled_classes_never_run'])} (rebuilt as inert data, never run)")
        click.echo(f"  kept      {report.tensors} tensors, {report.parameters:,} parameters")
        for what, why in c["dropped"].items():
            click.echo(f"  dropped   {what}: {why}")
        if c["dropped_keys"]:
            keys = c["dropped_keys"]
            click.echo(f"  dropped   {len(keys)} weight key(s): {', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''}")
        for added in c["added"]:
            click.echo(f"  added     {added}")
        for note in c["notes"]:
            click.echo(f"  note      {note}")

    return convert


convert_command = _command()

__all__ = ["ConversionReport", "RELEASES", "convert_checkpoint", "convert_command", "releases_for"]
