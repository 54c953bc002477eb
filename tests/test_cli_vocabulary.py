"""One option vocabulary across every subcommand, progress bars only on a terminal, `zoo publish
--token`, shell completion of model names, and a CLI that a user's own `training/` or `export/`
package in the current folder cannot replace (issue 16)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import click
import pytest
from conftest import HANG_GUARD_S, ROOT, run_zoo

from zoo.cli import cli, complete_model_names, complete_model_or_path, main, progress_wanted
from zoo.registry import list_models

# Every command that can draw a progress bar (tqdm): training steps, evaluation features, extraction,
# downloads, and the quickstart that runs them.
PROGRESS_COMMANDS = {"train", "eval", "extract", "fetch", "quickstart"}
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _commands():
    """(command path, click command) for every subcommand, groups walked."""
    def walk(command, path):
        if isinstance(command, click.Group):
            ctx = click.Context(command)
            for name in command.list_commands(ctx):
                yield from walk(command.get_command(ctx, name), [*path, name])
        else:
            yield " ".join(path), command
    return list(walk(cli, []))


def _options(command):
    return [p for p in command.params if isinstance(p, click.Option) and not p.hidden]


def test_every_subcommand_speaks_one_vocabulary():
    commands = dict(_commands())
    assert {"train", "eval", "export", "extract", "index build", "search", "publish", "fetch"} <= set(commands)
    for name, command in commands.items():
        spellings = {s: o for o in _options(command) for s in o.opts + o.secondary_opts}
        where = f"zoo {name}"
        assert not any(s.startswith("--output") or s.endswith("-output") for s in spellings), where
        # The output is -o/--out; other files written beside it are --NAME-out.
        for spelling, option in spellings.items():
            if spelling in ("-o", "--out"):
                assert sorted(option.opts) == ["--out", "-o"], where
            if spelling.endswith("out") and spelling not in ("-o", "--out"):
                assert spelling.endswith("-out") and "-o" not in option.opts, (where, spelling)
        if "--json" in spellings:
            assert spellings["--json"].is_flag, f"{where}: --json prints JSON on stdout and takes no value"
        if "-k" in spellings or "--k" in spellings:
            assert sorted(spellings.get("-k", spellings.get("--k")).opts) == ["--k", "-k"], where
        assert "--cards" not in spellings, f"{where}: the card folder is --cards-dir"  # (eval keeps it hidden)
        assert ("--no-progress" in spellings) == (name in PROGRESS_COMMANDS), where
        if "--no-progress" in spellings:
            assert spellings["--no-progress"].is_flag, where


@pytest.mark.parametrize("argv, new", [
    (["export", "random:rotnet_nin_fmnist", "--onnx", "--output", "x.onnx"], "-o/--out"),
    (["export", "random:rotnet_nin_fmnist", "--tensorrt", "--engine-output", "x.engine"], "--engine-out"),
    (["eval", "random:rotnet_nin_fmnist", "--json", "report.json"], "--json-out FILE"),
])
def test_old_spellings_stop_in_one_line_naming_the_new_one(argv, new, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and new in lines[0], captured.err
    assert captured.out == "" and list(tmp_path.iterdir()) == []


def test_every_renamed_option_leaves_its_current_spelling_working():
    """A hidden old spelling must not share its name with the option that replaced it: click keys
    parsed values by name, so `export -o FILE` was refused as "--output is now -o/--out"."""
    commands = dict(_commands())
    for name, command in commands.items():
        hidden = {p.name for p in command.params if getattr(p, "hidden", False)}
        visible = {p.name for p in command.params if not getattr(p, "hidden", False)}
        assert not hidden & visible, name
    ctx = commands["export"].make_context("export", ["random:rotnet_nin_fmnist", "--onnx", "-o", "m.onnx"])
    assert ctx.params["output"] == Path("m.onnx")


@pytest.mark.slow
def test_eval_json_prints_only_the_report_on_stdout_and_json_out_writes_it(tmp_path):
    """Also: --cards, the spelling the published cards' commands use, still records (a hidden alias
    of --cards-dir)."""
    import json

    import zoo
    from hubtools import random_model

    ckpt = zoo.save_pretrained(random_model("rotnet_nin_fmnist"), tmp_path / "ckpt",
                               training={"seed": 0, "seconds": 1.0})
    args = ("eval", str(ckpt), "--protocol", "knn", "--train-limit", "60", "--val-size", "30",
            "--test-limit", "30", "--layers", "block1", "--baseline-seeds", "0", "-k", "5")
    res = run_zoo(*args, "--json", "--json-out", str(tmp_path / "r.json"), "--record", "--cards", str(tmp_path / "c"),
                  env={**ONE_THREAD, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr
    printed = json.loads(res.stdout)  # stdout is the JSON and nothing else
    assert printed == json.loads((tmp_path / "r.json").read_text())
    assert printed["results"][0]["protocol_id"] == "knn" and "\r" not in res.stderr
    recorded = json.loads((tmp_path / "c" / "results" / "rotnet_nin_fmnist.json").read_text())
    assert recorded["results"][0]["value"] == printed["results"][0]["value"]


# -- progress bars -----------------------------------------------------------------------------------

def _drain(master: int, into: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # the terminal's other end closed
            return
        if not chunk:
            return
        into.append(chunk)


def _on_a_terminal(monkeypatch, argv: list[str]) -> tuple[int, str]:
    """``main(argv)`` with stderr a pseudo-terminal, read while it runs (a full pty would block it)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # a terminal's size, as a real one has
    terminal = os.fdopen(slave, "w")
    drawn: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(master, drawn), daemon=True)
    reader.start()
    monkeypatch.setattr(sys, "stderr", terminal)
    try:
        code = main(argv)
        terminal.flush()
    finally:
        monkeypatch.undo()
        terminal.close()
    reader.join(5)
    os.close(master)
    return code, b"".join(drawn).decode(errors="replace")


def test_progress_is_wanted_only_on_a_terminal_and_never_with_no_progress(monkeypatch):
    assert progress_wanted() is False  # pytest's stderr is a file
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        assert progress_wanted() is True and progress_wanted(no_progress=True) is False
    os.close(master)


@pytest.mark.slow
def test_extract_draws_a_bar_on_a_terminal_unless_no_progress(tmp_path, monkeypatch):
    from zoo.photos import photo_paths

    images = [str(p) for p in sorted(photo_paths().values())[:2]]
    argv = ["extract", "random:rotnet_nin_fmnist", *images, "--engine", "torch", "--workers", "0"]
    code, drawn = _on_a_terminal(monkeypatch, [*argv, "-o", str(tmp_path / "bar")])
    assert code == 0 and "img" in drawn and "\r" in drawn, drawn
    code, drawn = _on_a_terminal(monkeypatch, [*argv, "-o", str(tmp_path / "quiet"), "--no-progress"])
    assert code == 0 and drawn == ""


@pytest.mark.slow
@pytest.mark.parametrize("argv", [
    ["train", "rotnet", "--recipe", "tiny", "-o", "{tmp}/run"],
    ["extract", "random:rotnet_nin_fmnist", "{photo}", "--engine", "torch", "-o", "{tmp}/emb"],
], ids=["train", "extract"])
def test_no_bar_when_stderr_is_a_pipe(argv, tmp_path):
    from zoo.photos import photo_paths

    photo = str(sorted(photo_paths().values())[0])
    res = run_zoo(*(a.format(tmp=tmp_path, photo=photo) for a in argv), env=ONE_THREAD)
    assert res.returncode == 0, res.stderr
    # no redraws (carriage returns), no bar blocks, no rate: a log gets results, not a bar
    assert "\r" not in res.stderr and "\u2588" not in res.stderr and "/s]" not in res.stderr, res.stderr
    assert res.stdout.strip()


# -- zoo publish --token --------------------------------------------------------------------------------

@pytest.fixture
def mocked_hub(monkeypatch):
    """HfApi mocked where it would talk to the Hub (as tests/test_hub.py does); each call records the
    Authorization header huggingface_hub would send."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import CommitInfo, RepoUrl
    from huggingface_hub.utils import build_hf_headers

    sent = []

    def create_repo(self, repo_id, **kw):
        sent.append(build_hf_headers(token=self.token).get("authorization"))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, **kw):
        sent.append(build_hf_headers(token=self.token).get("authorization"))
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{'b' * 40}", commit_message="",
                          commit_description="", oid="b" * 40)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return sent


def test_publish_token_goes_to_the_hub_and_nowhere_else(tmp_path, monkeypatch, capsys, mocked_hub):
    from hubtools import publishable_checkpoint, random_model

    ckpt = publishable_checkpoint(random_model("rotnet_nin_fmnist"), tmp_path / "ckpt", tmp_path / "cards")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    secret = "hf_cliSecretToken0123456789"
    assert main(["publish", str(ckpt), "--repo", "someone/rotnet", "--hf", "--token", secret]) == 0
    assert mocked_hub == [f"Bearer {secret}"] * 2
    out = capsys.readouterr()
    assert secret not in out.out + out.err and "b" * 12 in out.out

    # Without --token: HF_TOKEN, read as huggingface_hub reads it.
    mocked_hub.clear()
    monkeypatch.setenv("HF_TOKEN", "hf_fromTheEnvironment42")
    assert main(["publish", str(ckpt), "--repo", "someone/rotnet", "--hf"]) == 0
    assert mocked_hub == ["Bearer hf_fromTheEnvironment42"] * 2
    assert "hf_fromTheEnvironment42" not in "".join(capsys.readouterr())

    # A token for the local hub is a mistake, said in one line that does not repeat it.
    mocked_hub.clear()
    assert main(["publish", str(ckpt), "--repo", "someone/rotnet", "--local-hub", str(tmp_path / "hub"),
                 "--token", secret]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--token is for --hf" in err and secret not in err
    assert mocked_hub == [] and not (tmp_path / "hub").exists()
    assert main(["publish", str(ckpt), "--repo", "someone/rotnet", "--hf", "--token", " "]) == 2
    assert "--token" in capsys.readouterr().err and mocked_hub == []


# -- shell completion ------------------------------------------------------------------------------------

def _values(items):
    return [i.value for i in items if i.type == "plain"]


def test_completion_of_model_names():
    names = list_models()
    assert _values(complete_model_names(None, None, "")) == names
    assert _values(complete_model_names(None, None, "rotnet_")) == [n for n in names if n.startswith("rotnet_")] != []
    assert _values(complete_model_names(None, None, "random:rotnet_nin_f")) == ["random:rotnet_nin_fmnist"]
    assert complete_model_names(None, None, "nosuch") == []
    # arguments that also take a path: the file fallback comes first (click's bash script clears
    # the list on it), then the names
    items = complete_model_or_path(None, None, "rotnet_nin_f")
    assert items[0].type == "file" and _values(items) == ["rotnet_nin_fmnist"]


@pytest.mark.parametrize("words, incomplete, expected", [
    (["info"], "rotnet_nin_f", ["rotnet_nin_fmnist"]),
    (["card"], "rotnet_nin_f", ["rotnet_nin_fmnist"]),
    (["fetch", "npid_resnet50"], "rotnet_nin_f", ["rotnet_nin_fmnist"]),
    (["export"], "rotnet_nin_f", ["rotnet_nin_fmnist"]),
    (["extract"], "rotnet_nin_f", ["rotnet_nin_fmnist"]),
    (["eval", "runs/a"], "random:rotnet_nin_f", ["random:rotnet_nin_fmnist"]),
    (["train"], "rot", ["rotnet"]),
])
def test_positional_model_arguments_complete_names(words, incomplete, expected):
    from click.shell_completion import ShellComplete

    completions = ShellComplete(cli, {}, "zoo", "_ZOO_COMPLETE").get_completions(words, incomplete)
    assert _values(completions) == expected


def test_completion_through_the_real_command():
    """The README's setup line and one completion request, as bash makes it."""
    script = run_zoo(env={"_ZOO_COMPLETE": "bash_source"})
    assert script.returncode == 0 and "complete -o nosort -F _zoo_completion zoo" in script.stdout
    res = run_zoo(env={"_ZOO_COMPLETE": "bash_complete", "COMP_WORDS": "zoo info rotnet_nin_f", "COMP_CWORD": "2"})
    assert res.returncode == 0 and res.stdout.splitlines() == ["plain,rotnet_nin_fmnist"], res.stdout + res.stderr


# -- installed top-level names ----------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["python -m zoo", "zoo script", "torchrun"])
def test_a_users_own_training_and_export_packages_do_not_replace_sslzoos(how, tmp_path):
    """A user's packages named like sslzoo's top-level ones: importing one leaves a mark. (With an
    editable install, a submodule such as training.cli may still be found through the user's
    package, so the mark, not only the exit status, tells which package was imported.)"""
    (tmp_path / "hubconf.py").write_text("raise ImportError('the user hubconf')\n")
    for package in ("training", "export"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(
            "import pathlib  # the user's own package\npathlib.Path(__file__).with_name('imported').touch()\n")
    script = Path(sys.executable).parent / "zoo"
    assert how != "zoo script" or script.is_file(), "the console script is installed by `pip install -e .`"
    command = {"python -m zoo": [sys.executable, "-m", "zoo"], "zoo script": [str(script)],
               # the README's multi-process form: torchrun starts the installed script, not `-m training`
               "torchrun": [str(script.with_name("torchrun")), "--nproc-per-node", "1", "--no-python", str(script)]}[how]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's zoo, wherever sslzoo was installed from
    for sub in (["train", "--help"], ["index", "build", "--help"]):
        res = subprocess.run([*command, *sub], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
        assert res.returncode == 0 and f"Usage: zoo {' '.join(sub[:-1])}" in res.stdout, res.stderr
    assert sorted(p.name for p in tmp_path.glob("*/imported")) == []
    # and the user's packages stay theirs for their own `python` in that folder
    mine = subprocess.run([sys.executable, "-c", "import training"], cwd=tmp_path, timeout=HANG_GUARD_S)
    assert mine.returncode == 0 and (tmp_path / "training" / "imported").is_file()


def test_python_m_zoo_keeps_the_current_folder_when_it_is_the_source_checkout():
    """Run in place from a checkout (no install): zoo comes from the current folder, and so do its
    training and export."""
    res = subprocess.run([sys.executable, "-m", "zoo", "train", "--help"], cwd=ROOT, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, timeout=HANG_GUARD_S)
    assert res.returncode == 0 and "Usage: zoo train" in res.stdout, res.stderr
