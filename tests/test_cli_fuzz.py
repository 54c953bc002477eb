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
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT

from zoo.cli import main

SEED = int(os.environ.get("ZOO_FUZZ_SEED", "16"))  # fixed, so CI is reproducible; vary it to explore
INVOCATIONS = 500
SECONDS_PER_INVOCATION = 20  # a command that starts real work instead of failing fast trips this

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


@pytest.mark.timeout(300)
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
    return subprocess.run([sys.executable, "-m", "zoo", *args], capture_output=True, cwd=cwd, timeout=120,
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
