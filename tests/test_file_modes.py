"""Files and folders sslzoo writes follow the umask, as huggingface_hub's do: a shared local hub
or output folder must be readable by others under the usual umask 022, and owner-only under 077.
mkstemp/mkdtemp create 0600/0700 whatever the umask, so everything sslzoo writes goes through
zoo.fileset (atomic_write, new_staging) or a plain open/mkdir, which apply the umask."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_GUARD_S, ROOT

# One process per umask writes each kind of output the way a user does: a checkpoint
# (save_pretrained), a local-hub publish (snapshot folders, refs), an ONNX export, an extraction
# of the checkpoint (with the model.onnx it exports) and an index, each through the real CLI's main().
SCRIPT = r"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, {tests!r})
from hubtools import publishable_checkpoint, random_model

from zoo.cli import main
from zoo.hub import publish

out = Path(sys.argv[1])
images = out / "images"
images.mkdir(parents=True)
rng = np.random.default_rng(0)
for i in range(3):
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(images / f"{{i}}.png")
model = random_model("rotnet_nin_fmnist")
publish(publishable_checkpoint(model, out / "ckpt", out / "cards"), "sslzoo/rotnet-nin-fmnist")
for argv in (["export", "random:rotnet_nin_fmnist", "--onnx", "-o", str(out / "onnx" / "m.onnx")],
             ["extract", str(out / "ckpt"), str(images), "-o", str(out / "emb")],
             ["index", "build", str(out / "emb"), "-o", str(out / "idx")]):
    assert main(argv) == 0, argv
"""


def _modes(root: Path) -> dict[str, int]:
    """Relative path -> permission bits of every file and folder under ``root`` (symlinks skipped)."""
    found = {}
    for path in root.rglob("*"):
        if not path.is_symlink():
            found[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return found


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_written_file_and_folder_follows_the_umask(tmp_path, umask):
    out, hub = tmp_path / "out", tmp_path / "hub"
    env = {**os.environ, "ZOO_HUB": str(hub), "ZOO_THREADS": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(ROOT / "tests")), str(out)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=HANG_GUARD_S,
                         preexec_fn=lambda: os.umask(umask))
    assert res.returncode == 0, res.stdout + res.stderr
    modes = {**{f"out/{k}": v for k, v in _modes(out).items()}, **{f"hub/{k}": v for k, v in _modes(hub).items()}}
    # Everything the script wrote is here: the checkpoint, the hub's snapshot and ref, the ONNX
    # file, the extraction's and the index's files (a check that the walk saw them at all).
    names = {Path(k).name for k in modes}
    assert {"model.safetensors", "config.json", "README.md", "main", "m.onnx", "model.onnx", "embeddings.npy",
            "ids.txt", "index.faiss", "manifest.json"} <= names, sorted(names)
    wrong = {path: f"{mode:o}" for path, mode in modes.items()
             if mode != (0o777 if (tmp_path / path).is_dir() else 0o666) & ~umask}
    assert not wrong, f"not following umask {umask:03o}: {json.dumps(wrong, indent=1)}"
