"""The ``zoo`` command line. One registry drives it; errors are one line and a non-zero status.

Commands that belong to ``training`` or ``export`` are registered by those packages as entry points
(``zoo.plugins``) and loaded only when invoked, so that ``zoo`` itself never names those packages
(``training -> zoo <- export``) and ``zoo list`` stays fast.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import sys

import click

from zoo.errors import ZooError

# zoo's own commands that import more than ``zoo list`` needs: name -> "module:attribute", imported
# on first use. The commands of the packages above zoo come from entry points (zoo.plugins).
LAZY_COMMANDS: dict[str, str] = {
    "quickstart": "zoo.quickstart:quickstart",
    "convert": "zoo.convert:convert_command",
    "fetch": "zoo.fetch:fetch_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        from zoo.plugins import COMMANDS_GROUP, plugin_entry_points

        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS, *plugin_entry_points(COMMANDS_GROUP)})

    def get_command(self, ctx, name):
        from zoo.plugins import COMMANDS_GROUP, plugin_entry_points

        if name in LAZY_COMMANDS:
            module, attr = LAZY_COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attr)
        plugin = plugin_entry_points(COMMANDS_GROUP).get(name)
        if plugin is not None:
            return plugin.load()
        return super().get_command(ctx, name)

    def resolve_command(self, ctx, args):
        # Unknown subcommands get the same one-line "did you mean" as unknown model names.
        name = args[0] if args else None
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            from zoo.errors import UnknownNameError

            raise UnknownNameError("command", name, self.list_commands(ctx), hint="run `zoo --help`")
        return super().resolve_command(ctx, args)


class OutputPath(click.Path):
    """``click.Path`` that refuses an empty value (it would silently mean the current folder) and a
    path inside a file, which could never be created: both fail here, before any model is opened."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("is empty; name a file or folder", param, ctx)
        path = super().convert(value, param, ctx)
        absolute = os.path.abspath(os.fspath(path))
        existing = next(p for p in (absolute, *_parents(absolute)) if os.path.lexists(p))
        if existing != absolute and not os.path.isdir(existing):
            self.fail(f"cannot create {click.format_filename(absolute)!r}: {click.format_filename(existing)!r} "
                      "is not a folder", param, ctx)
        return path


def _parents(path: str):
    while (parent := os.path.dirname(path)) != path:
        yield parent
        path = parent


class NonEmptyText(click.types.StringParamType):
    """Text that must not be blank: an empty --layer or --protocol is a slip of the shell (an unset
    variable), not a request for the default."""

    name = "text"

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not value.strip():
            self.fail("is empty; leave the option out for its default", param, ctx)
        return value


NON_EMPTY = NonEmptyText()


class InputFolder(click.Path):
    """An existing folder to read. ``click.Path(exists=True, file_okay=False)`` refuses only regular
    files: a FIFO or a device would pass and then be opened as a folder, or block."""

    def __init__(self, **kwargs):
        super().__init__(exists=True, file_okay=False, **kwargs)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("is empty; name a folder", param, ctx)
        path = super().convert(value, param, ctx)
        if not os.path.isdir(path):
            self.fail(f"{click.format_filename(os.fspath(path))!r} is not a folder", param, ctx)
        return path


# ---------------------------------------------------------------------------------------------
# The option vocabulary every subcommand shares (README "Options"): the output is `-o/--out`, other
# files written beside it `--NAME-out`; `--json` is a flag that prints JSON on stdout; `-k/--k`;
# `--cards-dir`; `--no-progress` wherever a bar can be drawn. tests/test_cli_vocabulary.py walks
# every parser and holds each command to it.
# ---------------------------------------------------------------------------------------------

def renamed(old: str, new: str, flag: bool = False):
    """A hidden option ``old`` that refuses itself in one line naming ``new``, its current spelling:
    a script written for an older sslzoo stops at once instead of running with the option dropped."""
    def refuse(ctx, param, value):
        if value:
            raise click.UsageError(f"{old} is now {new}; rerun with {new}", ctx)

    # A name of its own: click keys parsed values by name, and "--output" would otherwise be named
    # "output", the very name the current "-o/--out" option often carries.
    name = "renamed_" + old.lstrip("-").replace("-", "_")
    return click.option(old, name, is_flag=flag, default=None, hidden=True, expose_value=False, callback=refuse)


def no_progress_option(f):
    return click.option("--no-progress", is_flag=True,
                        help="No progress bar (bars are drawn only when stderr is a terminal).")(f)


def progress_wanted(no_progress: bool = False) -> bool:
    """Progress bars only on a terminal, and never with --no-progress: a log file or a pipe gets
    the results, not hundreds of carriage-return redraws."""
    return not no_progress and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def complete_model_names(ctx, param, incomplete: str):
    """Shell completion of registry names (`zoo info rot<TAB>`); ``random:NAME`` completes too."""
    from click.shell_completion import CompletionItem

    from zoo.registry import list_models

    prefix = "random:" if incomplete.startswith("random:") else ""
    return [CompletionItem(prefix + n) for n in list_models() if (prefix + n).startswith(incomplete)]


def complete_model_or_path(ctx, param, incomplete: str):
    """Registry names first; where none matches, the shell completes file and folder names (the
    file item tells click's bash script to fall back to them, and must come first: it clears the list)."""
    from click.shell_completion import CompletionItem

    return [CompletionItem(incomplete, type="file"), *complete_model_names(ctx, param, incomplete)]


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sslzoo", prog_name="zoo")
def cli():
    """sslzoo: self-supervised vision models -- train, publish, load, export, search."""


def _fmt_input(spec) -> str:
    extra = "+sobel" if spec.sobel_in_model else ""
    return f"{spec.size}px {spec.colour_space}{extra}"


@cli.command("list")
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the full registry entries as JSON.")
@click.option("--method", default=None, help="Only the models of one method (e.g. rotnet).")
@click.option("--pretrained", is_flag=True, help="Only the models whose weights load without training "
                                                  "(weights column not 'none').")
def list_cmd(pattern: str | None, as_json: bool, method: str | None, pretrained: bool):
    """List the models in the registry; PATTERN is a shell-style pattern of names, e.g. '*resnet50*'."""
    from zoo.errors import UnknownNameError
    from zoo.registry import get_model_entry, list_models

    every = list_models()
    methods = {get_model_entry(n).method for n in every}
    if method is not None and method not in methods:
        raise UnknownNameError("method", method, methods, hint="run `zoo list` for every model and its method")
    if pattern and not list_models(pattern):
        # A pattern that matches nothing is mostly a typo or a part of a name given without wildcards.
        raise UnknownNameError("model pattern", pattern, every,
                               hint="patterns are shell-style and match whole names, e.g. '*resnet50*'")
    entries = [get_model_entry(n) for n in list_models(pattern or "", pretrained=pretrained or None, method=method)]
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in entries], indent=2))
        return
    from zoo.hub import weights_origin

    rows = [(e.name, e.method, e.arch, e.pretrain_data, _fmt_input(e.input), weights_origin(e.name)) for e in entries]
    print_table(("model", "method", "architecture", "data", "input", "weights"), rows)
    click.echo("\nweights: shipped = inside sslzoo, loads offline; local hub = $ZOO_HUB; HF Hub = downloaded once; "
               "original release = the authors' file, downloaded and converted on first use (`zoo fetch NAME`) or "
               "by hand (`zoo fetch NAME` says where); none = random init only")


@cli.command()
@click.argument("name", shell_complete=complete_model_names)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info(name: str, as_json: bool):
    """Input spec, feature layers with output shapes, parameter count and weights status of NAME."""
    from zoo.inspect import layer_shapes, parameter_count
    from zoo.registry import create_model, get_model_entry

    entry = get_model_entry(name)
    model = create_model(name)
    shapes = layer_shapes(model, entry.input)
    data = entry.to_dict()
    data["parameters"] = parameter_count(model)
    data["layers"] = {k: list(v) for k, v in shapes.items()}
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    spec = entry.input
    click.echo(f"{entry.name}: {entry.description}")
    click.echo(f"  method        {entry.method} ({entry.paper.title}, {entry.paper.venue})")
    click.echo(f"  architecture  {entry.arch} {dict(entry.arch_kwargs) or ''}".rstrip())
    click.echo(f"  parameters    {data['parameters']:,}")
    click.echo(f"  pretraining   {entry.pretrain_data}" + (f" (recipe: {entry.recipe})" if entry.recipe else ""))
    click.echo(f"  input         resize {spec.resize}, centre crop {spec.size}, {spec.colour_space}, "
               f"scale 0..{spec.value_range:g}, mean {list(spec.mean)}, std {list(spec.std)}"
               + (", Sobel inside the model" if spec.sobel_in_model else ""))
    click.echo(f"  weights       {entry.weights.status} ({entry.weights.hub_repo}@{entry.weights.revision})")
    if entry.weights.origin:
        click.echo(f"  original      {entry.weights.origin}")
    if entry.weights.original_url or entry.weights.original_file:
        from zoo.convert.releases import RELEASES
        from zoo.fetch import original_release

        release = original_release(name)
        how = f"`zoo convert {name} FILE -o DIR`" if name in RELEASES else "no converter yet"
        if release is not None and not release.manual:
            how = f"`zoo fetch {name}`, or {how} after downloading it"
        click.echo(f"  release file  {entry.weights.original_file} "
                   f"({entry.weights.original_url or 'not released by the authors'}); {how}")
    click.echo(f"  license       {entry.license}")
    click.echo("  layers")
    for layer, shape in shapes.items():
        click.echo(f"    {layer:<8} {' x '.join(map(str, shape))}")
    for r in entry.paper_results:
        click.echo(f"  paper         {r.dataset} ({r.split}) {r.metric} {r.value:g}: {r.protocol} ({r.source}, {r.url})")


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=str))
@click.option("--repo", required=True, help="Repo id ORG/NAME, e.g. sslzoo/rotnet-nin-fmnist.")
@click.option("--local-hub", default=None, type=OutputPath(file_okay=False), help="Local hub folder [default: $ZOO_HUB or ~/.cache/sslzoo/hub].")
@click.option("--hf", is_flag=True, help="Upload to the Hugging Face Hub instead (token from `hf auth login` or HF_TOKEN).")
@click.option("--revision", default="main", show_default=True, help="Branch to publish to.")
@click.option("--private", is_flag=True, help="Create the Hub repo private (--hf only).")
@click.option("--token", type=NON_EMPTY, default=None,
              help="Hugging Face token for --hf [default: $HF_TOKEN, else `hf auth login`'s]. Prefer HF_TOKEN: "
                   "other users of the machine can read a command line.")
@click.option("--message", default=None, help="Commit message [default: names the model and its weights' sha256].")
def publish(directory, repo, local_hub, hf, revision, private, token, message):
    """Validate the checkpoint folder DIRECTORY, then publish it to the local hub or the Hub."""
    from zoo.errors import UsageError
    from zoo.hub import publish as publish_checkpoint

    if token and not hf:
        raise UsageError("--token is for --hf uploads; the local hub needs none")
    # token None: huggingface_hub reads HF_TOKEN, then the token `hf auth login` stored. It is
    # handed to HfApi and nowhere else: never printed, never in an error line.
    done = publish_checkpoint(directory, repo, hf=hf, local_hub=local_hub, revision=revision, private=private,
                              token=token, commit_message=message)
    where = f"{done.destination} ({'commit' if hf else 'snapshot'} {done.version[:12]})"
    click.echo(f"published {repo}@{done.revision} to {where}: {', '.join(done.files)}")
    if done.url:
        click.echo(done.url)


@cli.command("results")
@click.option("--ranking", is_flag=True, help="The papers' ImageNet linear probe beside ours, with Kendall's tau.")
@click.option("--cards-dir", default=None, type=InputFolder(), help="[default: the repository's MODEL_CARDS].")
def results_cmd(ranking, cards_dir):
    """Print every model's recorded results as one markdown table (mean ± std over seeds; bold: beats
    random init by more than two standard deviations), or the ranking against the papers."""
    from zoo import tables

    if ranking:
        click.echo(tables.ranking_table(cards_dir=cards_dir), nl=False)
        return
    click.echo(tables.results_table(cards_dir), nl=False)
    counts = tables.beats_count(cards_dir)
    click.echo("\nbeat random init by more than two standard deviations: "
               + "; ".join(f"{protocol} {won} of {total}" for protocol, (won, total) in counts.items()))


@cli.command()
@click.argument("directory", type=InputFolder())
@click.option("--cards-dir", default=None, type=OutputPath(file_okay=False), help="[default: the repository's MODEL_CARDS].")
def ship(directory, cards_dir):
    """Ship a checkpoint folder inside sslzoo (maintainers): its weights must be the ones the results
    file of its model card records; the older shipped version of that model is replaced."""
    from zoo.hub import ship as ship_checkpoint

    target, snapshot_id = ship_checkpoint(directory, cards_dir=cards_dir)
    click.echo(f"shipped {directory} -> {target} (snapshot {snapshot_id[:12]})")


@cli.command()
@click.argument("name", required=False, shell_complete=complete_model_names)
@click.option("--all", "all_models", is_flag=True, help="Every registry model, plus the index MODEL_CARDS/README.md.")
@click.option("--checkpoint", default=None, type=InputFolder(),
              help="Write the card of this checkpoint folder's own weights into its README.md instead.")
@click.option("--repo", default=None,
              help="With --checkpoint: the Hub repo ORG/NAME it will be published to [default: the registry's repo, "
                   "only when the folder holds the registry's weights].")
@click.option("--cards-dir", default=None, type=OutputPath(file_okay=False), help="[default: the repository's MODEL_CARDS].")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if any generated card is out of date.")
def card(name, all_models, checkpoint, repo, cards_dir, check):
    """Render the model card of NAME (or --all) from the registry and MODEL_CARDS/results."""
    from zoo import cards
    from zoo.errors import UsageError

    if repo and not checkpoint:
        raise UsageError("--repo names where a checkpoint is published; use it with --checkpoint DIR")
    if checkpoint:
        path = cards.write_checkpoint_card(checkpoint, cards_dir=cards_dir, repo=repo, name=name)
        click.echo(f"wrote {path}")
        return
    if check:
        stale = cards.stale_files(cards_dir)
        for file_name in stale:  # the report; the verdict is the one error line on stderr
            click.echo(f"out of date: {file_name}")
        if stale:
            raise UsageError(f"{len(stale)} generated card file(s) are out of date; run `zoo card --all`")
        click.echo("all cards are up to date")
        return
    if bool(name) == all_models:
        raise UsageError("give a model NAME or --all")
    changed = cards.write_cards(None if all_models else [name], cards_dir=cards_dir)
    click.echo(f"{len(changed)} file(s) updated" + "".join(f"\n  {p}" for p in changed))


def print_table(header, rows) -> None:
    rows = [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    click.echo(line.format(*header))
    click.echo(line.format(*("-" * w for w in widths)))
    for r in rows:
        click.echo(line.format(*r))


def _error(message: str) -> None:
    """``error: <message>`` as one line on stderr, whatever the message holds."""
    click.echo(f"error: {printable(' '.join(message.split()))}", err=True)


def printable(text: str) -> str:
    """``text`` with the bytes of undecodable file names (``os.fsdecode`` turns b"\\xe9" into
    "\\udce9") written as ``\\xe9``: a lone surrogate cannot be encoded, and printing it would
    raise inside the error handler itself."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no byte decodes to
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def main(argv=None) -> int:
    """Console entry point: turns every failure into one line on stderr and an exit status."""
    try:
        rv = cli.main(args=argv, prog_name="zoo", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:  # bad options and arguments: one line too, like every other error
        _error(e.format_message())
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except ZooError as e:
        _error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted; completed files were kept, partial ones discarded", err=True)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:
        if os.environ.get("ZOO_DEBUG"):
            raise
        if e.errno == errno.ENOSPC:
            _error(f"disk full while writing {e.filename or 'output'}; free space and rerun "
                   "(files already written were kept, the partial one was discarded)")
        else:
            _error(f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}")
        return 1
    except Exception as e:  # a bug: still one line, with a way to get the traceback
        if os.environ.get("ZOO_DEBUG"):
            raise
        _error(f"internal error {type(e).__name__}: {e} (rerun with ZOO_DEBUG=1 for the traceback and please "
               "report it)")
        return 1


def entry_point() -> None:
    # File names that are not UTF-8 reach us as lone surrogates (os.fsdecode); printed back with
    # surrogateescape they are the user's own bytes, as ls prints them, where the default
    # strict encoder would fail after the work is done.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")
    sys.exit(main())
