"""Hostile files reaching `zoo convert`: nothing in them ever runs, and nothing they claim is allocated.

Each file is built the way an attacker would build it, and where the attack works against a plain
``torch.load`` the test shows that first (the control), so the test would fail if the reader fell
back to torch's loader.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import numpy as np
import pytest
import torch

from zoo import WeightsError
from zoo.convert.safe_load import load_original

from conftest import HANG_GUARD_S, run_zoo

MARKER = "SSLZOO_TORCHSCRIPT_CODE_RAN"

# A TorchScript module whose __setstate__ prints MARKER: torch.jit.load runs it while loading.
SCRIPTED = textwrap.dedent(f"""
    import sys
    from typing import Tuple
    import torch

    class Payload(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.zeros(2)

        @torch.jit.export
        def __getstate__(self) -> Tuple[torch.Tensor, bool]:
            return (self.w, self.training)

        @torch.jit.export
        def __setstate__(self, state: Tuple[torch.Tensor, bool]) -> None:
            print("{MARKER}")
            self.w = state[0]
            self.training = state[1]

        def forward(self, x):
            return x + self.w

    torch.jit.save(torch.jit.script(Payload()), sys.argv[1])
""")


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=HANG_GUARD_S)


def _torchscript(path):
    """Writes the payload module to PATH (scripting needs the source in a file)."""
    script = path.with_name(path.name + "_make.py")
    script.write_text(SCRIPTED)
    made = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert made.returncode == 0, made.stderr
    return path


@pytest.fixture(scope="module")
def padded_torchscript(tmp_path_factory):
    """A TorchScript archive with b'PK\\x05\\x06' appended: zipfile.is_zipfile says no, torch says zip."""
    path = _torchscript(tmp_path_factory.mktemp("hostile") / "model_net_epoch200")
    with open(path, "ab") as f:
        f.write(b"PK\x05\x06")
    return path


def test_padded_torchscript_would_run_under_torch_load(padded_torchscript):
    """The control: the padded file hides from zipfile, and torch.load still dispatches to jit.load."""
    assert not zipfile.is_zipfile(padded_torchscript)
    ran = _python(f"import torch; torch.load({str(padded_torchscript)!r}, weights_only=False)")
    assert MARKER in ran.stdout


def test_padded_torchscript_is_refused_and_nothing_runs(padded_torchscript, tmp_path):
    out = tmp_path / "out"
    r = run_zoo("convert", "rotnet", str(padded_torchscript), "-o", str(out))
    assert r.returncode != 0 and MARKER not in r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "damaged or padded" in r.stderr
    assert not out.exists()


def test_unpadded_torchscript_and_torch_package_are_refused_by_content(tmp_path):
    script = _torchscript(tmp_path / "weights.pth")  # a harmless-looking name: the content decides
    with pytest.raises(WeightsError, match="TorchScript archive"):
        load_original(script)
    package = tmp_path / "packaged.pth"
    with torch.package.PackageExporter(package) as exporter:
        exporter.intern("**")
        exporter.save_pickle("model", "model.pkl", {"w": torch.zeros(2)})
    with pytest.raises(WeightsError, match="TorchScript archive \\(or a torch.package\\)"):
        load_original(package)


def test_compressed_records_are_refused_before_decompressing(tmp_path):
    """torch.save stores records uncompressed; a deflated one could expand a few KB into gigabytes."""
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.zeros(1000)}, plain)
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    assert load_original(plain).obj["w"].shape == (1000,)
    with pytest.raises(WeightsError, match="compressed or larger than the file"):
        load_original(bomb)


class _Reduces:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("payload, reason", [
    (_Reduces(bytearray, (10 ** 12,)), "bytearray built from a size"),
    (_Reduces(np.ndarray.__new__, (np.ndarray, (10 ** 6, 10 ** 6), np.uint8)), "claims"),
], ids=["bytearray", "numpy"])
def test_allocation_bombs_are_refused_within_the_file_size(tmp_path, payload, reason):
    path = tmp_path / "bomb.pth"
    if isinstance(payload.args[0], type):  # numpy pickles arrays through _reconstruct
        from numpy._core.multiarray import _reconstruct
        payload = _Reduces(_reconstruct, payload.args)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": payload}, path, _use_new_zipfile_serialization=False)
    assert os.path.getsize(path) < 10_000
    with pytest.raises(WeightsError, match=reason):
        load_original(path)


def test_a_storage_larger_than_the_file_is_refused(tmp_path):
    """A legacy file whose pickle claims a 4 GB storage: refused before anything is allocated."""
    class Storage:
        pass

    class ClaimsStorage(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", 10 ** 9, None) if isinstance(obj, Storage) else None

    buffer = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):  # torch's legacy header
        pickle.dump(header, buffer, protocol=2)
    ClaimsStorage(buffer, protocol=2).dump({"w": Storage()})
    pickle.dump(["0"], buffer, protocol=2)
    path = tmp_path / "big.pth"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(WeightsError, match="storage 0 claims 4000000000 bytes, more than the file holds"):
        load_original(path)


def test_truncated_legacy_files_are_one_line_errors(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"w": torch.arange(100.0)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_original(path).obj["w"], torch.arange(100.0))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(WeightsError, match="truncated"):
        load_original(path)


def test_tar_checkpoints_and_special_files_are_refused_without_blocking(tmp_path):
    """A FIFO inside a pre-0.4 tar checkpoint made torch's loader wait for a writer forever."""
    path = tmp_path / "old.pth"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        fifo = tarfile.TarInfo("storages")
        fifo.type = tarfile.FIFOTYPE
        tar.addfile(fifo)
        data = pickle.dumps({"w": 1})
        info = tarfile.TarInfo("pickle")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(WeightsError, match="pre-0.4 tar format"):
        load_original(path)
    fifo_path = tmp_path / "checkpoint.pth"
    os.mkfifo(fifo_path)
    with pytest.raises(WeightsError, match="not a regular file"):
        load_original(fifo_path)
