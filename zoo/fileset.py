"""Writing files so that a kill, a crash or a full disk never leaves a wrong answer behind.

* ``atomic_write``: one file, through a temporary file in the same folder, fsync and a rename.
  Files follow the umask (as ``huggingface_hub`` does), not mkstemp's owner-only 0600.
* Staged folders: an output that is a set of files (an extraction, an index) is written into a
  staging folder next to its target, sealed with ``manifest.json`` (size and sha256 of every
  file, plus what ties them together) and made visible by one atomic rename -- exchanged with
  the old folder, which is then removed. A reader calls ``verify_manifest`` and refuses a folder
  whose files do not match it.
* Lock files that name their owner (pid, host, start time): a lock whose owner is gone, or that
  is older than its maximum age, is stale and can be taken over.
* ``fault_point``: a test hook. ``ZOO_TEST_FAULT=KIND[@GLOB]:N:ACTION`` makes the N-th ``KIND``
  point ("write", "fsync" or "rename") of this process, on a file whose name matches GLOB, raise
  ENOSPC (ACTION ``enospc``) or SIGKILL the process (``kill``), so tests can kill or fill the
  disk at an exact point. Unset, it costs one environment lookup.

This module imports nothing heavy: ``zoo.checkpoint``, ``export`` and ``training`` build on it.
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from zoo.errors import ZooError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "sslzoo-manifest/1"
FAULT_ENV = "ZOO_TEST_FAULT"


class IntegrityError(ZooError):
    """A set of files that does not match the manifest tying it together, or a damaged file."""


class DiskFullError(ZooError):
    """The disk filled while writing; nothing half-written was kept."""


# ------------------------------------------------------------------------------------------------
# The test hook
# ------------------------------------------------------------------------------------------------

_fault_counts: dict[str, int] = {}


def fault_point(kind: str, path: str | os.PathLike) -> None:
    """Test hook at a point of kind ``kind`` on ``path``; see the module docstring."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    where, _, rest = spec.partition(":")
    count, _, action = rest.partition(":")
    want, _, pattern = where.partition("@")
    if want != kind or (pattern and not fnmatch.fnmatch(Path(path).name, pattern)):
        return
    _fault_counts[spec] = _fault_counts.get(spec, 0) + 1
    if _fault_counts[spec] != int(count):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


# ------------------------------------------------------------------------------------------------
# Single files
# ------------------------------------------------------------------------------------------------

def read_json(path: str | Path, error: type[ZooError], remedy: str) -> Any:
    """The JSON document in ``path``; one that does not parse is a one-line ``error`` ending in ``remedy``."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path} is not valid JSON ({err}); {remedy}") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_UMASK: int | None = None


def _umask() -> int:
    """The process's umask now. Linux shows it in /proc/self/status (read-only, so safe beside
    threads that create files); elsewhere ``os.umask`` can only read it by setting it, which is done
    once per process."""
    global _UMASK
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    if _UMASK is None:
        _UMASK = os.umask(0o077)
        os.umask(_UMASK)
    return _UMASK


def follow_umask(path: str | Path, folder: bool = False) -> None:
    """Give ``path`` the permissions a plain ``open``/``mkdir`` would (0666/0777 less the umask),
    as huggingface_hub does: mkstemp and mkdtemp make owner-only files (0600/0700), and so do
    some writers (safetensors' save_file), which would hide a shared hub from its other users."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def _disk_is_full(err: BaseException, folder: Path) -> bool:
    """Whether a failed write failed for want of space: ENOSPC, or a library's error that says so
    (FAISS, safetensors), or one that does not (torch.save: "unexpected pos") on a disk with
    (almost) nothing left."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    if "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text:
        return True
    if isinstance(err, RuntimeError):
        try:
            return shutil.disk_usage(folder).free < (1 << 20)
        except OSError:
            return False
    return False


def _shown(path: Path) -> Path:
    """A file in a staging folder is shown as the file it will become (``.OUT.staging.*/f`` -> ``OUT/f``)."""
    name = path.parent.name
    if name.startswith(".") and ".staging." in name:
        return path.parent.parent / name[1:name.index(".staging.")] / path.name
    return path


def disk_full(path: str | Path, needed: int | None = None, at_least: bool = False) -> DiskFullError:
    """The one-line error for a full disk while writing ``path`` (needing about ``needed`` bytes)."""
    path = Path(path)
    folder = next((p for p in (path.parent, *path.parents) if p.exists()), Path("."))
    try:
        free = f"{_mb(shutil.disk_usage(folder).free)} free there"
    except OSError:
        free = "free space unknown"
    need = f"{'at least' if at_least else 'about'} {_mb(needed)} needed, " if needed else ""
    path = _shown(path)
    return DiskFullError(f"disk full while writing {path} ({need}{free}); free some space and rerun "
                         "(nothing half-written was kept)")


def atomic_write(path: str | Path, write: Callable[[Path], None], size_hint: int | None = None) -> None:
    """Write ``path`` through a temporary file in the same folder and rename it into place, so a
    crash or a full disk never leaves a half-written file under the final name.

    ``write(tmp)`` writes the content. A full disk raises ``DiskFullError`` naming ``path`` and
    the space needed (``size_hint``, else what was written before the disk filled)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_temporaries(path)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        if _disk_is_full(err, path.parent):
            raise disk_full(path, size_hint) from None
        raise
    tmp = Path(name)
    try:
        os.close(fd)
        write(tmp)
        follow_umask(tmp)  # after write(): a writer may have replaced the file with an owner-only one
        fault_point("write", path)
        with open(tmp, "rb") as f:
            fault_point("fsync", path)
            os.fsync(f.fileno())
        fault_point("rename", path)
        os.replace(tmp, path)
    except BaseException as err:
        written = _size(tmp)
        full = isinstance(err, Exception) and _disk_is_full(err, path.parent)  # before the temp file frees space
        tmp.unlink(missing_ok=True)
        if full:
            raise disk_full(path, size_hint or written or None, at_least=size_hint is None) from None
        raise


_swept_folders: set[Path] = set()


def _remove_abandoned_temporaries(path: Path) -> None:
    """Remove the temporary files (``.NAME.<pid>.<host>.<random>.tmp``) that killed writers left
    beside ``path``, once per folder and process: a folder of many files written in turn
    (extraction shards) is listed once, not once per file."""
    if path.parent not in _swept_folders:
        remove_abandoned(path.parent, ".", ".tmp")
        _swept_folders.add(path.parent)


def is_temporary(name: str) -> bool:
    """A temporary file of an interrupted ``atomic_write`` (``.NAME.XXXX.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def copy_synced(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` to ``dst`` and fsync it; a full disk is a ``DiskFullError`` naming ``dst``."""
    src, dst = Path(src), Path(dst)
    try:
        shutil.copyfile(src, dst)
        fault_point("write", dst)
        with open(dst, "rb") as f:
            os.fsync(f.fileno())
    except OSError as err:
        full = _disk_is_full(err, dst.parent)
        dst.unlink(missing_ok=True)
        if full:
            raise disk_full(dst, _size(src)) from None
        raise


def fsync_dir(path: str | Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not support fsync on directories
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------
# Owners: who holds a lock or a staging folder, and whether it is gone
# ------------------------------------------------------------------------------------------------

def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def owner_tag() -> str:
    """``<pid>.<host>`` of this process, for names of temporary files and folders."""
    return f"{os.getpid()}.{_host_tag()}"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def owner_gone(pid: int | None, host: str | None, age: float, max_age: float) -> bool:
    """A lock or staging folder of process ``pid`` on host ``host`` (a ``_host_tag``), ``age``
    seconds old, is stale when its process is gone (same host) or, when that cannot be known
    (another host, no pid), when it is older than ``max_age``."""
    if pid is not None and host == _host_tag():
        return not process_alive(pid)
    return age > max_age


def _age(path: Path) -> float:
    try:
        return time.time() - path.lstat().st_mtime
    except OSError:
        return 0.0


# ------------------------------------------------------------------------------------------------
# Lock files
# ------------------------------------------------------------------------------------------------

def _read_lock(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}  # killed between creating and writing it


def _lock_stale(path: Path, info: dict[str, Any], max_age: float) -> bool:
    pid = info.get("pid") if isinstance(info.get("pid"), int) else None
    return owner_gone(pid, info.get("host"), _age(path), max_age)


def try_lock(path: str | Path, max_age: float = 3600.0) -> dict[str, Any] | None:
    """Create the lock file ``path`` naming this process. Returns None when this process holds
    it, or the owner of a live lock (``pid``, ``host``, ``hostname``, ``since``). A stale lock
    (``owner_gone``) is taken over."""
    path = Path(path)
    me = {"pid": os.getpid(), "host": _host_tag(), "hostname": socket.gethostname(), "since": time.time()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_umask())
        except FileExistsError:
            seen = path.read_bytes() if path.exists() else b""
            info = _read_lock(path)
            if not _lock_stale(path, info, max_age):
                return info
            # Take it over: only one process can rename it away; a lock that changed meanwhile
            # (another process took it over first) is put back.
            aside = path.with_name(f"{path.name}.stale.{os.getpid()}.{secrets.token_hex(4)}")
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            if aside.read_bytes() != seen:
                try:
                    os.link(aside, path)
                except FileExistsError:
                    pass
            aside.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        return None
    return _read_lock(path)


def release_lock(path: str | Path) -> None:
    path = Path(path)
    if _read_lock(path).get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def describe_owner(info: dict[str, Any]) -> str:
    since = info.get("since")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else ""
    return f"process {info.get('pid', '?')} on {info.get('hostname', 'an unknown host')}{when}"


# ------------------------------------------------------------------------------------------------
# Output folders: checked, staged, sealed with a manifest and swapped in by one rename
# ------------------------------------------------------------------------------------------------

def check_output_folder(path: str | os.PathLike, option: str = "-o") -> Path:
    """``path`` as an output folder that is replaced as a whole: never empty, ``/``, the current
    folder or one above it (replacing it would move the ground under the user's feet)."""
    from zoo.errors import UsageError

    text = os.fspath(path)
    if not text.strip():
        raise UsageError(f"{option} is empty; name the output folder")
    resolved = Path(text).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if resolved == Path(resolved.anchor) or resolved == cwd or resolved in cwd.parents:
        raise UsageError(f"{option} {text}: the output folder is written as a whole and must not be "
                         f"{'the root folder' if resolved == Path(resolved.anchor) else 'the current folder or one above it'}; "
                         "name a folder of its own")
    return resolved


def _leftover_prefixes(target: Path) -> tuple[str, str]:
    return f".{target.name}.staging.", f".{target.name}.old."


def owned_name(prefix: str, suffix: str = "") -> str:
    """``PREFIX<pid>.<host>.<random>SUFFIX``: a temporary name that says whose it is."""
    return f"{prefix}{owner_tag()}.{secrets.token_hex(4)}{suffix}"


def remove_abandoned(folder: str | Path, prefix: str, suffix: str = "", max_age: float = 24 * 3600.0,
                     unowned_max_age: float | None = None) -> None:
    """Remove the entries of ``folder`` named ``PREFIX...<pid>.<host>.<random>SUFFIX`` whose owner
    is gone (``owner_gone``). Other names with that prefix and suffix (older versions wrote no
    owner) are removed only when ``unowned_max_age`` is given and they are older than it."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        name = entry.name
        if not name.startswith(prefix) or not name.endswith(suffix) or len(name) <= len(prefix) + len(suffix):
            continue
        fields = name[len(prefix):len(name) - len(suffix)].rsplit(".", 3)[-3:]  # pid, host, random
        owned = len(fields) == 3 and fields[0].isdigit() and len(fields[1]) == 8
        if owned:
            gone = owner_gone(int(fields[0]), fields[1], _age(entry), max_age)
        else:
            gone = unowned_max_age is not None and _age(entry) > unowned_max_age
        if gone:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def clean_leftovers(target: str | Path) -> None:
    """Remove staging and replaced copies of ``target`` left by killed processes."""
    target = Path(target)
    for prefix in _leftover_prefixes(target):
        remove_abandoned(target.parent, prefix)


def _sibling(target: Path, kind: str) -> Path:
    return target.parent / owned_name(f".{target.name}.{kind}.")


def new_staging(target: str | Path) -> Path:
    """An empty staging folder beside ``target`` (leftovers of killed writers are removed first)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    staging = _sibling(target, "staging")
    staging.mkdir(mode=0o777 & ~_umask())
    return staging


def write_manifest(folder: str | Path, **extra: Any) -> dict[str, Any]:
    """Seal ``folder``: ``manifest.json`` with the size and sha256 of every file in it, plus ``extra``."""
    folder = Path(folder)
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")}
    doc = {"format": MANIFEST_FORMAT, "files": files, **extra}
    atomic_write_text(folder / MANIFEST, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return doc


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap the folders ``a`` and ``b`` in one atomic step (Linux renameat2); False if unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def commit_folder(staging: str | Path, target: str | Path, **manifest_extra: Any) -> dict[str, Any]:
    """Seal ``staging`` with its manifest and make it ``target`` by one atomic rename (an existing
    ``target`` is exchanged with it and then removed). Returns the manifest."""
    staging, target = Path(staging), Path(target)
    manifest = write_manifest(staging, **manifest_extra)
    fsync_dir(staging)
    fault_point("rename", target)
    try:
        os.rename(staging, target)  # no target yet (or an empty one)
    except OSError as err:
        if err.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
            raise
        if _exchange(staging, target):
            shutil.rmtree(staging, ignore_errors=True)  # now the old content
        else:  # no atomic exchange here: the old folder moves aside for a moment
            old = _sibling(target, "old")
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
    fsync_dir(target.parent)
    return manifest


def verify_manifest(folder: str | Path, required: Iterable[str] = (), fix: str = "write it again") -> dict[str, Any]:
    """The manifest of ``folder`` after checking that every file it lists (and every ``required``
    one) is there with its size and sha256; otherwise an ``IntegrityError`` naming the file."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise IntegrityError(f"{folder} has no {MANIFEST}: it is unfinished, damaged or from an older sslzoo; {fix}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        files = doc["files"]
        assert doc.get("format") == MANIFEST_FORMAT and isinstance(files, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise IntegrityError(f"{path} is damaged; {fix}") from None
    for name in required:
        if name not in files:
            raise IntegrityError(f"{path} does not list {name}; {fix}")
    for name, want in files.items():
        file = folder / name
        if not file.is_file():
            raise IntegrityError(f"{file} is missing (listed in {MANIFEST}); {fix}")
        if file.stat().st_size != want.get("bytes") or sha256_file(file) != want.get("sha256"):
            raise IntegrityError(f"{file} does not match {MANIFEST}: it was changed or damaged after the folder "
                                 f"was written; {fix}")
    return doc
