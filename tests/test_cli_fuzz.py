"""A seeded fuzz of the command line: random option values for every subcommand.

Each invocation runs ``zoo.cli.main`` in this process (seconds in all, where subprocesses would
take minutes) and must end as a user expects: a non-zero exit status whenever a value is invalid,
and then exactly one line on stderr, ``error: ...``, with no traceback and no "internal error"
(an exception nobody anticipated); nothing written in the current folder, under the temporary
folder or in the repository. Commands that would start real work (train, eval, export, extract,
index build, search, fetch, convert, publish, ship, card, quickstart) always get at least one
invalid value, so they fail before doing anything. A few subprocess checks cover what only a real
process shows: non-UTF-8 bytes in argv and the console script's output streams.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import HANG_GUARD_S, ROOT

from zoo.cli import main

SEED = int(os.environ.get("ZOO_FUZZ_SEED", "16"))  # fixed, so CI is reproducible; vary it to explore
INVOCATIONS = 500
SECONDS_PER_INVOCATION = 60  # a command that starts real work instead of failing fast trips this (fast
# failures take well under a second even on a loaded machine)

NUMBERS_BAD = ["-1", "0", "-5", "99999999999999999999", "1e309", "nan", "inf", "-inf", "", " ", "1.5", "0x10",
               "ten", "-0", "1_000_000_000_000"]
NAMES_BAD = ["", " ", "nosuch", "rotnet_alexnt", "random:", "random:nosuch", "../../etc/passwd", "caf\udce9",
             "-", "ORG/NAME", "a/b/c", "*", "rotnet_alexnet ", "\u00e9t\u00e9", "random:random:rotnet_nin_fmnist"]
SMALL_MODELS = ["rotnet_nin_fmnist", "simclr_resnet_small_fmnist", "iic_resnet_small_fmnist"]


class InvocationTimedOut(BaseException):
    """Not an Exception, so that ``zoo.cli.main`` cannot turn it into an ``error:`` line."""


class Fuzz:
    """Value pools over a temporary folder, and the command specs that draw from them."""

    def __init__(self, root: Path, rng: random.Random):
        self.rng = rng
        self.root = root
        self.file = root / "afile.txt"
        self.file.write_text("not a model, an image, a checkpoint or an index\n")
        self.dir = root / "adir"
        self.dir.mkdir()
        self.fifo = root / "afifo"
        os.mkfifo(self.fifo)
        self.missing = root / "missing"
        self.undecodable = root / "caf\udce9"  # the name os.fsdecode gives the bytes b"caf\xe9"

    # -- pools: (value, verdict) with verdict "ok" (valid), "bad" (must fail) or "odd" (either) --
    def pick(self, pool):
        return self.rng.choice(pool)

    def bad_number(self):
        return self.rng.choice(NUMBERS_BAD), "bad"

    def bad_name(self):
        return self.rng.choice(NAMES_BAD), "bad"

    def input_path(self, valid_kinds=()):
        """A path to read: missing, a file, a folder, a FIFO, /dev/null or an undecodable name."""
        kinds = {"missing": self.missing, "file": self.file, "dir": self.dir, "fifo": self.fifo,
                 "devnull": Path("/dev/null"), "undecodable": self.undecodable, "under_file": self.file / "x",
                 "empty": ""}
        kind = self.rng.choice(sorted(kinds))
        return str(kinds[kind]), ("odd" if kind in valid_kinds else "bad")

    def output_path(self, suffix=""):
        """A path to write, always under the temporary folder (never /dev/null or /: as root, a
        replaced /dev/null would break the machine): existing file or folder, a FIFO, a path under
        a file, an empty string, or a fresh name."""
        kinds = {"file": (self.file, "odd"), "dir": (self.dir, "odd"), "fifo": (self.fifo, "odd"),
                 "under_file": (self.file / "x", "bad"), "empty": ("", "bad"),
                 "fresh": (self.root / f"out{suffix}", "odd"), "undecodable": (self.root / f"\udcff{suffix}", "odd")}
        value, verdict = kinds[self.rng.choice(sorted(kinds))]
        return str(value), verdict


def _spec(fz: Fuzz):
    """command -> (heavy, generator of [(token list, verdict)]). Heavy commands get at least one
    value that must make them fail; light ones (list, info, results) may succeed."""
    r = fz.rng

    def opt(flag, value_verdict):
        value, verdict = value_verdict
        return [flag, value], verdict

    def num_opt(flag, valid, minimum=1):
        if r.random() < 0.6:
            bad = r.choice([n for n in NUMBERS_BAD if minimum > 0 or n not in ("0", "-0")])
            return [flag, bad], "bad"
        return [flag, str(r.choice(valid))], "ok"

    def choice_opt(flag, choices):
        return opt(flag, (r.choice(choices), "ok") if r.random() < 0.5 else (r.choice(["", "nosuch", "AVG", "\udcff"]), "bad"))

    def model(extra_ok=()):
        if r.random() < 0.5:
            return [r.choice(NAMES_BAD)], "bad"
        return [r.choice([*SMALL_MODELS, *extra_ok])], "ok"

    def pos(value_verdict):
        value, verdict = value_verdict
        return [value], verdict

    specs = {
        "list": (False, lambda: [
            ([r.choice(["*resnet50*", "rotnet_*", "*"])], "ok") if r.random() < 0.3 else
            ([r.choice(["resnet50", "\udcff*", "[", "*["])], "bad") if r.random() < 0.3 else ([], "ok"),
            (["--json"], "ok") if r.random() < 0.3 else ([], "ok"),
            (["--pretrained"], "ok") if r.random() < 0.3 else ([], "ok"),
            opt("--method", (r.choice(["rotnet", "simclr"]), "ok") if r.random() < 0.5 else fz.bad_name())
            if r.random() < 0.4 else ([], "ok"),
        ]),
        "info": (False, lambda: [model(), (["--json"], "ok") if r.random() < 0.3 else ([], "ok")]),
        "results": (False, lambda: [
            (["--ranking"], "ok") if r.random() < 0.3 else ([], "ok"),
            opt("--cards-dir", fz.input_path(valid_kinds=("dir",))) if r.random() < 0.5 else ([], "ok"),
        ]),
        "card": (True, lambda: [
            model() if r.random() < 0.7 else ([], "odd"),
            (["--all"], "odd") if r.random() < 0.2 else ([], "ok"),
            (["--check"], "odd") if r.random() < 0.3 else ([], "ok"),
            opt("--checkpoint", fz.input_path()) if r.random() < 0.3 else ([], "ok"),
            opt("--repo", fz.bad_name()) if r.random() < 0.2 else ([], "ok"),
            opt("--cards-dir", fz.output_path()),
        ]),
        "ship": (True, lambda: [pos(fz.input_path()),
                                opt("--cards-dir", fz.output_path()) if r.random() < 0.5 else ([], "ok")]),
        "publish": (True, lambda: [
            pos(fz.input_path()),
            opt("--repo", fz.bad_name() if r.random() < 0.5 else ("sslzoo/fuzz", "ok")),
            opt("--local-hub", fz.output_path()),
            (["--hf"], "odd") if r.random() < 0.2 else ([], "ok"),
            opt("--revision", (r.choice(["", "..", "a b", "refs/x", "\udcff"]), "bad")) if r.random() < 0.3 else ([], "ok"),
        ]),
        "quickstart": (True, lambda: [opt("--out", (r.choice(["", str(fz.file), str(fz.file / "x")]), "bad")),
                                      (["--fast"], "ok")]),
        "convert": (True, lambda: [
            ([r.choice(["rotnet", "vissl", "deepcluster_vgg16"])], "ok") if r.random() < 0.5 else pos(fz.bad_name()),
            pos(fz.input_path()),
            opt("-o", fz.output_path()),
            opt("--arch", fz.bad_name()) if r.random() < 0.3 else ([], "ok"),
            (["--overwrite"], "ok") if r.random() < 0.3 else ([], "ok"),
        ]),
        "fetch": (True, lambda: [
            ([r.choice([*NAMES_BAD, "rotnet_alexnet", "rotnet_nin_fmnist", "simclr_resnet50"])
              for _ in range(r.randint(0, 2))], "bad"),  # offline: even a real release cannot be fetched
            (["--force"], "ok") if r.random() < 0.3 else ([], "ok"),
            opt("--local-hub", fz.output_path()) if r.random() < 0.6 else ([], "ok"),
        ]),
        "train": (True, lambda: [
            ([r.choice(["rotnet", "simclr", "npid"])], "ok") if r.random() < 0.5 else pos(fz.bad_name()),
            choice_opt("--recipe", ["tiny", "small"]),
            opt("--data", (r.choice(["nosuch", "photo:nosuch", "image:" + str(fz.missing), str(fz.dir), str(fz.file),
                                      "/dev/null", str(fz.undecodable), ""]), "bad")) if r.random() < 0.5 else ([], "ok"),
            opt("--out", fz.output_path()) if r.random() < 0.5 else ([], "ok"),
            num_opt("--epochs", [1]) if r.random() < 0.5 else ([], "ok"),
            num_opt("--batch-size", [8]) if r.random() < 0.4 else ([], "ok"),
            num_opt("--limit", [16]) if r.random() < 0.4 else ([], "ok"),
            num_opt("--accumulate", [1]) if r.random() < 0.3 else ([], "ok"),
            choice_opt("--precision", ["fp32", "auto"]) if r.random() < 0.3 else ([], "ok"),
            num_opt("--workers", [0], minimum=0) if r.random() < 0.3 else ([], "ok"),
            num_opt("--checkpoint-every", [0], minimum=0) if r.random() < 0.3 else ([], "ok"),
            (["--resume"], "ok") if r.random() < 0.2 else ([], "ok"),
        ]),
        "eval": (True, lambda: [
            model(extra_ok=["random:rotnet_nin_fmnist"]),
            opt("--protocol", (r.choice(["", "nosuch", "linear,,nosuch", "knn,"]), "bad")) if r.random() < 0.4 else ([], "ok"),
            opt("--data", (r.choice(["nosuch", str(fz.missing), str(fz.file), "/dev/null", ""]), "bad"))
            if r.random() < 0.4 else ([], "ok"),
            opt("--layers", (r.choice(["nosuch", ",", "block9"]), "bad")) if r.random() < 0.3 else ([], "ok"),
            num_opt("--train-limit", [10]) if r.random() < 0.3 else ([], "ok"),
            num_opt("--val-size", [10]) if r.random() < 0.3 else ([], "ok"),
            num_opt("--test-limit", [10]) if r.random() < 0.3 else ([], "ok"),
            num_opt("--baseline-seeds", [0], minimum=0) if r.random() < 0.3 else ([], "ok"),
            num_opt("--k", [5]) if r.random() < 0.3 else ([], "ok"),
            num_opt("--temperature", [0.07]) if r.random() < 0.3 else ([], "ok"),
            num_opt("--epochs", [1]) if r.random() < 0.3 else ([], "ok"),
            opt("--json-out", fz.output_path(".json")) if r.random() < 0.3 else ([], "ok"),
            opt("--cards-dir", fz.output_path()) if r.random() < 0.3 else ([], "ok"),
            (["--record"], "odd") if r.random() < 0.2 else ([], "ok"),
        ]),
        "export": (True, lambda: [
            model(extra_ok=["random:rotnet_nin_fmnist"]) if r.random() < 0.7 else pos(fz.input_path()),
            (["--onnx"], "ok") if r.random() < 0.8 else ([], "odd"),
            opt("-o", fz.output_path(".onnx")) if r.random() < 0.6 else ([], "ok"),
            opt("--layer", (r.choice(["nosuch", "", "block9"]), "bad")) if r.random() < 0.3 else ([], "ok"),
            choice_opt("--pool", ["avg", "gem"]) if r.random() < 0.3 else ([], "ok"),
            choice_opt("--input", ["uint8", "float"]) if r.random() < 0.3 else ([], "ok"),
            num_opt("--opset", [18, 20]) if r.random() < 0.4 else ([], "ok"),
            opt("--batch-profile", (r.choice(["", "1,2", "a,b,c", "0,0,0", "-1,32,128", "128,32,1", "1,32,1e9"]), "bad"))
            if r.random() < 0.3 else ([], "ok"),
            (["--fp16", "--int8"], "bad") if r.random() < 0.1 else ([], "ok"),
        ]),
        "extract": (True, lambda: [
            model(extra_ok=["random:rotnet_nin_fmnist"]) if r.random() < 0.6 else pos(fz.input_path()),
            # unreadable and missing images are rows of failed.tsv, by design: only "" must fail
            pos(fz.input_path(valid_kinds=("missing", "file", "dir", "fifo", "devnull", "undecodable", "under_file"))),
            opt("-o", fz.output_path()),
            choice_opt("--engine", ["torch", "onnx"]) if r.random() < 0.3 else ([], "ok"),
            choice_opt("--provider", ["cpu"]) if r.random() < 0.2 else ([], "ok"),
            num_opt("--batch-size", [4]) if r.random() < 0.4 else ([], "ok"),
            num_opt("--workers", [0], minimum=0) if r.random() < 0.3 else ([], "ok"),
            num_opt("--shard-size", [8]) if r.random() < 0.3 else ([], "ok"),
            num_opt("--rank", [0], minimum=0) if r.random() < 0.2 else ([], "ok"),
            num_opt("--world-size", [1]) if r.random() < 0.2 else ([], "ok"),
            num_opt("--threads", [1]) if r.random() < 0.3 else ([], "ok"),
        ]),
        "index": (True, lambda: [
            (["build"], "ok"),
            pos(fz.input_path()),
            opt("-o", fz.output_path()),
            choice_opt("--type", ["flat", "hnsw", "ivfpq", "auto"]) if r.random() < 0.3 else ([], "ok"),
            num_opt("--whiten", [4]) if r.random() < 0.3 else ([], "ok"),
            opt("--recall", fz.bad_number() if r.random() < 0.6 else ("0.9", "ok")) if r.random() < 0.3 else ([], "ok"),
            num_opt("-k", [5]) if r.random() < 0.3 else ([], "ok"),
            num_opt("--nlist", [4]) if r.random() < 0.3 else ([], "ok"),
            num_opt("--pq-m", [8]) if r.random() < 0.3 else ([], "ok"),
            num_opt("--hnsw-m", [16]) if r.random() < 0.3 else ([], "ok"),
            num_opt("--threads", [1]) if r.random() < 0.3 else ([], "ok"),
        ]),
        "search": (True, lambda: [
            pos(fz.input_path()),
            pos(fz.input_path()),
            num_opt("-k", [5]) if r.random() < 0.4 else ([], "ok"),
            (["--json"], "ok") if r.random() < 0.3 else ([], "ok"),
            num_opt("--threads", [1]) if r.random() < 0.3 else ([], "ok"),
        ]),
    }
    return specs


def _listing(root: Path) -> set[str]:
    """Every path under root with its type and size (a FIFO is never opened)."""
    found = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("__pycache__", ".git", ".pytest_cache")]
        for name in files + dirs:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            found.add(f"{path}:{st.st_mode:o}:{st.st_size if not os.path.isdir(path) else 0}")
    return found


def _invocations(fz: Fuzz, count: int):
    """``count`` (argv, must_fail) pairs, drawn in a fixed order from the seeded generator."""
    specs = _spec(fz)
    names = sorted(specs)
    out = []
    while len(out) < count:
        command = fz.rng.choice(names)
        heavy, generate = specs[command]
        parts = generate()
        verdicts = [v for _, v in parts]
        if heavy and "bad" not in verdicts:
            continue  # would start real work (or might): draw again
        argv = [command] + [token for tokens, _ in parts for token in tokens]
        out.append((argv, "bad" in verdicts, "odd" in verdicts))
    return out


class _FifoFeeder:
    """Writes a few bytes to the FIFO whenever something opens it for reading, then closes it, so
    that a command reading it sees garbage and end of file instead of blocking forever."""

    def __init__(self, fifo: Path):
        self.fifo, self.stop = fifo, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as err:  # ENXIO: no reader yet; ENOENT: a command replaced or removed it
                if err.errno not in (errno.ENXIO, errno.ENOENT):
                    raise
                time.sleep(0.01)
                continue
            try:
                os.write(fd, b"\xff\xd8garbage")
            except OSError:
                pass
            finally:
                os.close(fd)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)


def _on_alarm(signum, frame):
    raise InvocationTimedOut()


def test_random_options_of_every_command_fail_in_one_line_and_write_nothing(tmp_path, monkeypatch, capsys):
    root = tmp_path / "fuzz"
    cwd = tmp_path / "cwd"
    root.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for key, value in {"HOME": tmp_path / "home", "XDG_CACHE_HOME": tmp_path / "cache", "ZOO_CARDS": tmp_path / "cards",
                       "ZOO_HUB": tmp_path / "hub", "HF_HUB_CACHE": tmp_path / "hf", "TMPDIR": tmp_path / "tmp"}.items():
        monkeypatch.setenv(key, str(value))
    (tmp_path / "tmp").mkdir()
    for key in ("ZOO_THREADS", "ZOO_RELEASE_MIRROR", "RANK", "WORLD_SIZE", "ZOO_DEBUG"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR: temporary files land under tmp_path too

    fz = Fuzz(root, random.Random(SEED))
    invocations = _invocations(fz, INVOCATIONS)
    repo_before = _listing(ROOT)
    before = _listing(tmp_path)
    failures, slowest = [], (0.0, None)
    old_handler = signal.signal(signal.SIGALRM, _on_alarm)
    start = time.monotonic()
    try:
        with _FifoFeeder(fz.fifo):
            for argv, must_fail, odd in invocations:
                t0 = time.monotonic()
                signal.alarm(SECONDS_PER_INVOCATION)
                try:
                    code = main(list(argv))
                except InvocationTimedOut:
                    failures.append(f"{argv!r}: still running after {SECONDS_PER_INVOCATION} s")
                    capsys.readouterr()
                    _restore(fz, before, tmp_path)
                    continue
                except SystemExit as exc:  # never: main returns the status
                    code = f"SystemExit({exc.code})"
                finally:
                    signal.alarm(0)
                took = time.monotonic() - t0
                slowest = max(slowest, (took, argv), key=lambda s: s[0])
                out, err = capsys.readouterr()
                problem = _judge(argv, code, out, err, must_fail, odd)
                after = _listing(tmp_path)
                if after != before:
                    problem = (problem + "; " if problem else "") + \
                        f"wrote {sorted(after - before)[:3]} removed {sorted(before - after)[:3]}"
                    _restore(fz, before, tmp_path)
                    before = _listing(tmp_path)
                if problem:
                    failures.append(f"{argv!r} -> {code}: {problem}")
    finally:
        signal.signal(signal.SIGALRM, old_handler)
    elapsed = time.monotonic() - start
    assert _listing(ROOT) == repo_before, "the fuzz changed files in the repository"
    assert not failures, f"{len(failures)} of {len(invocations)} invocations misbehaved:\n" + "\n".join(failures[:40])
    assert elapsed < 120, f"{len(invocations)} invocations took {elapsed:.0f} s (slowest {slowest})"


def _judge(argv, code, out, err, must_fail, odd) -> str:
    if "Traceback" in out + err:
        return f"traceback: {(out + err)[-300:]!r}"
    if not isinstance(code, int):
        return f"exit {code!r}"
    if code == 0:
        if must_fail:
            return f"exit 0 for an invalid invocation; stdout {out[-200:]!r}"
        if err:
            return f"exit 0 but stderr {err!r}"
        return ""
    if not must_fail and not odd:
        return f"a valid invocation failed: {err!r}"
    lines = err.splitlines()
    if argv[0] == "fetch" and len(argv) > 1:  # one line per model that failed, each an error
        lines = lines[:1] if all(line.startswith("error: ") for line in lines) else lines
    if len(lines) != 1 or not err.endswith("\n") or not lines[0].startswith("error: "):
        return f"stderr is not one 'error: ' line: {err[-400:]!r}"
    if "internal error" in err:
        return f"an unanticipated exception: {err!r}"
    return ""


def _restore(fz: Fuzz, before: set[str], root: Path):
    """Put the temporary folder back as it was after an invocation that changed it, so that one
    bug is reported once and does not change what the next invocations find."""
    import shutil

    known = {entry.rsplit(":", 2)[0] for entry in before}
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in files + dirs:
            path = os.path.join(folder, name)
            if path not in known:
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
    if not fz.file.is_file():
        fz.file.write_text("not a model, an image, a checkpoint or an index\n")
    fz.dir.mkdir(exist_ok=True)
    if not fz.fifo.is_fifo():
        os.mkfifo(fz.fifo)


def test_every_command_answers_help_and_the_version_with_exit_0(capsys):
    from zoo.cli import cli

    commands = [[name] for name in cli.list_commands(None)] + [["index", "build"]]
    for argv in [[], *commands]:
        assert main([*argv, "--help"]) == 0, argv
        out, err = capsys.readouterr()
        assert out.startswith("Usage: zoo") and err == "", argv
    assert main(["--version"]) == 0 and "zoo, version" in capsys.readouterr().out


def _zoo(*args: str | bytes, cwd: Path):
    """The real console script's process: argv as the shell passes bytes, streams as a pipe."""
    return subprocess.run([sys.executable, "-m", "zoo", *args], capture_output=True, cwd=cwd, timeout=HANG_GUARD_S,
                          env={**os.environ, "ZOO_OFFLINE": "1"})


def test_non_utf8_bytes_in_argv_are_one_line_errors_or_printed_back_as_given(tmp_path):
    undecodable = os.fsencode(tmp_path) + b"/caf\xe9"
    checks = [
        ((b"info", b"caf\xe9"), 2, b"unknown model 'caf\\udce9'"),  # names are quoted with repr()
        ((b"list", b"\xff*"), 2, b"unknown model pattern '\\udcff*'"),
        ((b"search", undecodable, b"q.jpg"), 2, b"caf\\xe9"),  # a path as the bytes it was given
        ((b"train", b"rotnet", b"--recipe", b"\xff"), 2, b"unknown recipe"),
        ((b"export", b"random:rotnet_nin_fmnist", b"--onnx", b"-o", undecodable + b"/x.onnx", b"--opset", b"1"), 2,
         b"'--opset': 1 is not in the range"),
    ]
    for args, status, needle in checks:
        res = _zoo(*args, cwd=tmp_path)
        assert res.returncode == status, (args, res.stderr)
        assert res.stderr.count(b"\n") == 1 and res.stderr.startswith(b"error: ") and needle in res.stderr, (args, res.stderr)
        assert b"Traceback" not in res.stderr + res.stdout
    assert list(tmp_path.iterdir()) == []
    # A valid command echoes an undecodable output folder back as the very bytes it was given.
    cards = os.fsencode(tmp_path) + b"/cards-\xff"
    res = _zoo(b"card", b"rotnet_nin_fmnist", b"--cards-dir", cards, cwd=tmp_path)
    assert res.returncode == 0 and res.stderr == b"", res.stderr
    assert cards + b"/rotnet_nin_fmnist.md" in res.stdout


# ------------------------------------------------------------------------------------------------
# Hostile files and out-of-range values (issue 19), in a real process with bounded memory
# ------------------------------------------------------------------------------------------------
# Kept apart from the option fuzz above: its own pool, invocations, driver and test.

HOSTILE_INVOCATIONS = 90
HOSTILE_ADDRESS_SPACE = 7 << 30  # bytes: the driver's imports take ~4 GB of address space, a bomb more
HOSTILE_MARKER = "SSLZOO_HOSTILE_CODE_RAN"  # a payload that runs creates this file or prints this line
OUT_OF_RANGE = {  # option -> values each refused where it is parsed
    "--threads": ["100000", "640966", "0"], "--hnsw-m": ["-5", "0"], "--opset": ["1", "999"],
    "--temperature": ["0", "-1"], "--whiten": ["0"], "-k": ["0"], "--batch-size": ["0"]}


class _Payload:
    """Pickles as a call that creates the marker file: it exists only if a loader ran the pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


class _Call:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _hostile_pool(root: Path) -> dict:
    """Every hostile file once: releases for convert, checkpoint folders for the model commands,
    images for extract and search; name -> path (a str, undecodable names included)."""
    import io
    import tarfile
    import zipfile

    import numpy as np
    import torch
    from hubtools import random_model, rewrite_weights
    from PIL import Image
    from test_safe_load import _torchscript

    marker = root / HOSTILE_MARKER
    rel, ckpt, img = root / "releases", root / "checkpoints", root / "images"
    for d in (rel, ckpt, img):
        d.mkdir(parents=True)
    pool = {"marker": marker}
    with open(_torchscript(rel / "padded_torchscript"), "ab") as f:  # __setstate__ prints a marker
        f.write(b"PK\x05\x06")
    pool["padded_torchscript"] = rel / "padded_torchscript"
    for name, legacy in (("reduce_legacy.pth", True), ("reduce_zip.pth", False)):
        torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _Payload(marker)}, rel / name,
                   _use_new_zipfile_serialization=not legacy)
        pool[name] = rel / name
    (rel / "reduce_raw.pkl").write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    pickle.loads((rel / "reduce_raw.pkl").read_bytes())  # the control: a plain unpickler runs the payload
    assert marker.exists()
    marker.unlink()
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _Call(bytearray, (3 << 30,))}, rel / "alloc_bomb.pth",
               _use_new_zipfile_serialization=False)  # a few KB claiming 3 GB
    buffer = io.BytesIO()  # 1.5 MB of zeros per record, deflated to a few KB
    torch.save({"state_dict": {f"w{i}": torch.zeros(375_000) for i in range(8)}}, buffer)
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(rel / "zip_bomb.pth", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    with tarfile.open(rel / "fifo_tar.pth", "w", format=tarfile.PAX_FORMAT) as tar:
        fifo = tarfile.TarInfo("storages")
        fifo.type = tarfile.FIFOTYPE
        tar.addfile(fifo)
    os.mkfifo(rel / "fifo.pth")
    pool.update({n: rel / n for n in ("reduce_raw.pkl", "alloc_bomb.pth", "zip_bomb.pth", "fifo_tar.pth", "fifo.pth")})

    good = ckpt / "good"
    random_model("rotnet_nin_fmnist").save_pretrained(good)
    for name in ("truncated", "nan_weights", "pickled_weights"):
        shutil.copytree(good, ckpt / name)
    data = (good / "model.safetensors").read_bytes()
    rewrite_weights(ckpt / "truncated", raw=data[: len(data) // 2])
    state = random_model("rotnet_nin_fmnist").state_dict()
    state["block1.0.0.weight"].view(-1)[0] = float("nan")
    rewrite_weights(ckpt / "nan_weights", state)
    rewrite_weights(ckpt / "pickled_weights", raw=pickle.dumps({"state_dict": _Payload(marker)}))
    (rel / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    pool.update({"truncated.safetensors": rel / "truncated.safetensors", "ckpt_truncated": ckpt / "truncated",
                 "ckpt_nan": ckpt / "nan_weights", "ckpt_pickled": ckpt / "pickled_weights"})

    rgb = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(np.zeros((1, 8000, 3), np.uint8)).save(img / "long_1x8000.png")
    for key, raw in (("undecodable", b"caf\xe9.png"), ("cr", b"a\rb.png"), ("u2028", "x\u2028y.png".encode())):
        Image.fromarray(rgb).save(os.path.join(os.fsencode(img), raw), format="PNG")
        pool[f"img_{key}"] = Path(os.fsdecode(os.path.join(os.fsencode(img), raw)))
    pool["img_long"] = img / "long_1x8000.png"
    pool["img_fifo"] = rel / "fifo.pth"
    return {k: str(v) for k, v in pool.items()}


CONVERT_HOSTILE = ["padded_torchscript", "reduce_legacy.pth", "reduce_zip.pth", "reduce_raw.pkl", "alloc_bomb.pth",
                   "zip_bomb.pth", "fifo_tar.pth", "fifo.pth", "truncated.safetensors"]
MODEL_HOSTILE = ["ckpt_truncated", "ckpt_nan", "ckpt_pickled", "padded_torchscript", "reduce_zip.pth", "fifo.pth"]
IMAGE_HOSTILE = ["img_long", "img_undecodable", "img_cr", "img_u2028", "img_fifo"]


def _hostile_invocations(pool: dict, out: Path, rng: random.Random, count: int):
    """(argv, must_fail) pairs: a hostile file where the command reads one, or an out-of-range
    value, or both; each must fail in one line. Every 5th extraction is valid apart from its
    hostile images (they are rows of failed.tsv or escaped ids) and must succeed. Files are drawn
    from shuffled cycles, so that every one is drawn."""
    import itertools

    cycles = {id(kind): itertools.cycle(rng.sample(kind, len(kind))) for kind in (CONVERT_HOSTILE, MODEL_HOSTILE,
                                                                                IMAGE_HOSTILE)}

    def draw(kind):
        return pool[next(cycles[id(kind)])]

    def bad(option):
        return [option, rng.choice(OUT_OF_RANGE[option])]

    def images(k=2):
        return list(dict.fromkeys(draw(IMAGE_HOSTILE) for _ in range(k)))

    def model():
        return draw(MODEL_HOSTILE)

    o = str(out / "o")
    makers = {
        "convert": lambda: ["convert", rng.choice(["rotnet", "deepcluster", "npid", "vissl", "sela"]),
                            draw(CONVERT_HOSTILE), "-o", rng.choice([o, ""])],
        "extract": lambda: ["extract", model(), *images(), "-o", o] if rng.random() < 0.6 else
                           ["extract", "random:rotnet_nin_fmnist", *images(), "-o", rng.choice([o, ""]),
                            *bad(rng.choice(["--threads", "--batch-size"]))],
        "index": lambda: ["index", "build", pool["emb"], "-o", rng.choice([o, "", "//"]),
                          *bad(rng.choice(["--threads", "--hnsw-m", "--whiten", "-k"]))]
                         + (["--type", "hnsw"] if rng.random() < 0.5 else []),
        "search": lambda: ["search", pool["ix"], *images(1), *bad(rng.choice(["-k", "--threads"]))],
        "export": lambda: ["export", model(), "--onnx", "-o", o + ".onnx"] if rng.random() < 0.5 else
                          ["export", "random:rotnet_nin_fmnist", "--onnx", "-o", rng.choice([o + ".onnx", ""]),
                           *bad("--opset")],
        "eval": lambda: ["eval", model(), "--protocol", "knn"] if rng.random() < 0.5 else
                        ["eval", "random:rotnet_nin_fmnist", *bad("--temperature")],
    }
    found, extracts = [], 0
    while len(found) < count:
        command = rng.choice(sorted(makers))
        if command == "extract":
            extracts += 1
            if extracts % 5 == 1:  # valid: random weights, hostile images only
                found.append((["extract", "random:rotnet_nin_fmnist", *images(3), "-o", o, "--layer", "block1",
                               "--threads", "1", "--workers", "0"], False))
                continue
        found.append((makers[command](), True))
    return found


def _valid_extraction_problem(argv, code, err) -> str:
    """A valid extraction of hostile images: exit 0, and every image is an id or a failed.tsv row."""
    if code != 0 or "Traceback" in err:
        return f"a valid extraction failed ({code!r}): {err[-300:]!r}"
    out = Path(argv[argv.index("-o") + 1])
    rows = [len((out / n).read_bytes().splitlines()) for n in ("ids.txt", "failed.tsv")]
    images = argv[2:argv.index("-o")]
    unreadable = sum(a.endswith(("long_1x8000.png", "fifo.pth")) for a in images)  # too long; not an image
    return "" if rows == [len(images) - unreadable, unreadable] else f"ids/failed rows {rows} for {images}"


def _hostile_one(argv, must_fail, watched, marker) -> str:
    """Run one invocation in this (the driver's) process; what went wrong, or ''."""
    import contextlib
    import io

    before = set().union(*map(_listing, watched))
    out, err = io.StringIO(), io.StringIO()
    signal.alarm(SECONDS_PER_INVOCATION)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
    except InvocationTimedOut:
        code = f"still running after {SECONDS_PER_INVOCATION} s"
    finally:
        signal.alarm(0)
    out, err = out.getvalue(), err.getvalue()
    problem = _judge(argv, code, out, err, True, False) if must_fail else _valid_extraction_problem(argv, code, err)
    if Path(marker).exists():
        problem += "; a pickled payload ran (the marker file exists)"
    written = set().union(*map(_listing, watched)) - before
    allowed = "" if must_fail else argv[argv.index("-o") + 1]
    if any(not (allowed and (entry.startswith(allowed + "/") or entry.startswith(allowed + ":"))) for entry in written):
        problem += f"; wrote {sorted(written)[:3]}"
    for root in watched:  # back as it was: one bug is reported once
        for entry in sorted(set(_listing(root)) - before, reverse=True):
            path = entry.rsplit(":", 2)[0]
            if not os.path.lexists(path):
                continue  # inside a folder removed before it
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
    if allowed:
        shutil.rmtree(allowed, ignore_errors=True)
    return problem


def _hostile_driver(spec_file: str) -> None:
    """The driver process: each invocation in turn, one JSON result line each (flushed, so a
    crash under the memory limit still says which invocation it was)."""
    spec = json.loads(Path(spec_file).read_text())
    signal.signal(signal.SIGALRM, _on_alarm)
    with open(spec["results"], "w") as results, _FifoFeeder(Path(spec["fifo"])):
        for argv, must_fail in spec["invocations"]:
            t0 = time.monotonic()
            problem = _hostile_one(argv, must_fail, spec["watched"], spec["marker"])
            results.write(json.dumps({"problem": problem, "seconds": time.monotonic() - t0}) + "\n")
            results.flush()


@pytest.fixture(scope="session")
def hostile_pool(tmp_path_factory):
    """The hostile files, plus a valid extraction and index to hand to index build and search."""
    from export.embedding import build_embedding_model, load_backbone
    from export.engines import OnnxRuntimeEngine
    from export.extract import extract, load_embeddings
    from export.index import BuildParams, build_and_tune, save_index
    from export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("hostile")
    pool = _hostile_pool(root)
    backbone, weights = load_backbone("random:rotnet_nin_fmnist")
    onnx = export_onnx(*build_embedding_model(backbone, "rotnet_nin_fmnist", weights, layer="block1"),
                       root / "m.onnx")
    (root / "clean").mkdir()
    shutil.copy(pool["img_cr"], root / "clean" / "a.png")
    extract(OnnxRuntimeEngine(onnx), [root / "clean"], root / "emb", progress=False, workers=0)
    emb, ids, meta = load_embeddings(root / "emb")
    index, index_meta = build_and_tune(np.asarray(emb), BuildParams(type="flat"))
    save_index(root / "ix", index, ids, {**index_meta, "model": meta["model"], "source": str(onnx)})
    return {**pool, "emb": str(root / "emb"), "ix": str(root / "ix"), "root": str(root)}


def _bounded_memory():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (HOSTILE_ADDRESS_SPACE, HOSTILE_ADDRESS_SPACE))


def test_hostile_files_and_out_of_range_values_fail_in_one_line_in_bounded_memory(hostile_pool, tmp_path):
    from test_safe_load import MARKER as TORCHSCRIPT_MARKER

    work, cwd = tmp_path / "work", tmp_path / "cwd"
    work.mkdir(), cwd.mkdir()
    invocations = _hostile_invocations(hostile_pool, work, random.Random(SEED), HOSTILE_INVOCATIONS)
    spec = {"invocations": invocations, "watched": [str(work), str(cwd), hostile_pool["root"]],
            "marker": hostile_pool["marker"], "fifo": hostile_pool["fifo.pth"], "results": str(tmp_path / "r.jsonl")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1",
           "MALLOC_ARENA_MAX": "2", "ZOO_OFFLINE": "1", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}  # torch leaves files there
    code = "import sys, test_cli_fuzz; test_cli_fuzz._hostile_driver(sys.argv[1])"
    driver = subprocess.run([sys.executable, "-c", code, str(tmp_path / "spec.json")], cwd=cwd, env=env,
                            capture_output=True, timeout=HANG_GUARD_S, preexec_fn=_bounded_memory)
    results = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(results) == len(invocations), \
        f"the driver died (exit {driver.returncode}) at {invocations[len(results)][0]!r}: {driver.stderr[-800:]!r}"
    assert driver.returncode == 0, driver.stderr[-800:]
    output = driver.stdout + driver.stderr
    assert TORCHSCRIPT_MARKER.encode() not in output and not Path(hostile_pool["marker"]).exists()
    problems = [f"{argv!r}: {r['problem']}" for (argv, _), r in zip(invocations, results) if r["problem"]]
    assert not problems, f"{len(problems)} of {len(invocations)} misbehaved:\n" + "\n".join(problems[:30])
    assert os.listdir(cwd) == []
