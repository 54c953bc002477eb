import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(min(2, os.cpu_count() or 1))


def run_zoo(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run the real `zoo` CLI in a subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "zoo", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=full_env, timeout=timeout)


@pytest.fixture
def zoo_cli():
    return run_zoo


@pytest.fixture(autouse=True)
def isolated_hubs(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's local hub or Hugging Face cache, or reaches the network:
    ZOO_HUB and HF_HUB_CACHE point at an empty folder and HF_HUB_OFFLINE=1 (for subprocesses through
    the environment, in this process through huggingface_hub's constants, read at import)."""
    root = tmp_path_factory.mktemp("hubs")
    env = {"ZOO_HUB": str(root / "zoo-hub"), "HF_HUB_CACHE": str(root / "hf-cache"), "HF_HUB_OFFLINE": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return root
