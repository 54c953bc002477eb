"""zoo.fileset: atomic files that follow the umask, the fault-injection hook, staged folders, locks."""

import os
import stat
import subprocess
import sys

import pytest

from zoo.checkpoint import atomic_write_text
from zoo.fileset import DiskFullError, FAULT_ENV


def test_atomic_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o002)  # read when the file is written, not once per process
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o664


def test_a_full_disk_names_the_file_and_keeps_the_old_content(tmp_path, monkeypatch):
    target = tmp_path / "out" / "meta.json"
    atomic_write_text(target, "old")
    monkeypatch.setenv(FAULT_ENV, "write@meta.json:1:enospc")
    with pytest.raises(DiskFullError, match=r"disk full while writing .*meta\.json \((about|at least) .* needed, "
                                            r".* free"):
        atomic_write_text(target, "new content")
    assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == ["meta.json"]


def test_the_fault_hook_kills_at_the_nth_rename(tmp_path):
    code = ("from zoo.checkpoint import atomic_write_text as w\n"
            f"for i in range(3): w(r'{tmp_path}' + f'/f{{i}}', 'x')\n")
    res = subprocess.run([sys.executable, "-c", code], env={**os.environ, FAULT_ENV: "rename:2:kill"})
    assert res.returncode == -9
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["f0"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 512 KiB tmpfs, where mounting one is allowed (root in a container); skipped elsewhere."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_really_full_disk_is_one_line_for_torch_faiss_and_safetensors_writers(tiny_disk):
    import faiss
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from zoo.checkpoint import atomic_write

    writers = {"state.pt": lambda p: torch.save({"w": torch.zeros(300_000)}, p),  # torch: "unexpected pos"
               "index.faiss": lambda p: faiss.write_index(_flat_index(np, faiss), str(p)),
               "model.safetensors": lambda p: save_file({"w": torch.zeros(300_000)}, str(p))}
    for name, write in writers.items():
        with pytest.raises(DiskFullError, match=rf"disk full while writing {tiny_disk / name} \((at least .* needed, )?"
                                                r"[0-9.]+ MB free there\); free some space and rerun") as err:
            atomic_write(tiny_disk / name, write)  # how much was written before the disk filled varies by writer
        assert "\n" not in str(err.value)
        assert list(tiny_disk.iterdir()) == []  # nothing half-written


def _flat_index(np, faiss):
    index = faiss.IndexFlatIP(64)
    index.add(np.zeros((4000, 64), np.float32))
    return index
