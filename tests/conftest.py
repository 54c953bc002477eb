import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(min(2, os.cpu_count() or 1))


# Timeouts in these tests only end a hung run; they assert no speed. A shared CI machine can be many
# times slower than an idle one (the suite was run with a load average of 25 on 2 cores), so every
# subprocess and process join waits HANG_GUARD_S, below pytest's own per-test --timeout (pyproject).
HANG_GUARD_S = 1800


def run_zoo(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = HANG_GUARD_S):
    """Run the real `zoo` CLI in a subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "zoo", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=full_env, timeout=timeout)


@pytest.fixture
def zoo_cli():
    return run_zoo


@pytest.fixture(autouse=True)
def fresh_fault_counts():
    """Each test counts its ZOO_TEST_FAULT points from zero: the hook counts per spec in the process,
    so two tests injecting the same spec ("write@model.safetensors:1:enospc") would otherwise see the
    second one's first write as the second and never fire."""
    from zoo import fileset

    fileset._fault_counts.clear()
    yield
    fileset._fault_counts.clear()


@pytest.fixture(autouse=True)
def isolated_hubs(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's local hub, sslzoo cache (engine choices of `--engine auto`,
    TensorRT engines) or Hugging Face cache, or reaches the network: ZOO_HUB, ZOO_CACHE and
    HF_HUB_CACHE point at an empty folder and HF_HUB_OFFLINE=1 (for subprocesses through the
    environment, in this process through huggingface_hub's constants, read at import).

    ZOO_ENGINE=onnx: `zoo extract` runs ONNX Runtime fp32 unless a test asks for another engine, so
    that results do not depend on which engine measured fastest (tests/test_autoselect.py tests auto)."""
    root = tmp_path_factory.mktemp("hubs")
    env = {"ZOO_HUB": str(root / "zoo-hub"), "ZOO_CACHE": str(root / "zoo-cache"), "HF_HUB_CACHE": str(root / "hf-cache"),
           "HF_HUB_OFFLINE": "1", "ZOO_ENGINE": "onnx"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return root


# Killed runs (issue 19's kill tests): a fork server imports the commands once, with one OpenMP
# thread, and forks each run from there -- a real process, killed for real by the fault hook --
# instead of starting a new interpreter for every kill.
# (Not for training: a run forked after faiss and onnxruntime were imported computes other numbers.)
KILL_PRELOAD = ["zoo.cli", "export.cli", "export.extract", "export.index", "zoo.hub", "onnxruntime", "faiss"]


def _killed_child(args, fault):
    os.environ["ZOO_TEST_FAULT"] = fault
    from zoo.cli import main

    sys.exit(main(list(args)))


@pytest.fixture(scope="session")
def killed():
    """``killed(args, fault)``: ``zoo ARGS`` in a forked process with ``ZOO_TEST_FAULT=fault``;
    asserts that the fault point was reached (the process died of SIGKILL)."""
    import multiprocessing
    from multiprocessing import forkserver

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(KILL_PRELOAD)
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # read once, by the server's imports
    try:
        forkserver.ensure_running()
    finally:
        os.environ.pop("OMP_NUM_THREADS") if threads is None else os.environ.update(OMP_NUM_THREADS=threads)

    def run(args, fault):
        proc = ctx.Process(target=_killed_child, args=(tuple(args), fault))
        proc.start()
        proc.join(timeout=HANG_GUARD_S)
        assert proc.exitcode == -9, f"{fault}: the point was not reached (exit {proc.exitcode})"
    return run
