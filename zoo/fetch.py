"""Original releases on first use: download the authors' file, convert it, cache it in the local hub.

For a registry entry whose ``weights.original_url`` is a direct download, ``fetch_release(name)``
(and through ``zoo.hub.resolve_entry`` also ``create_model(name, pretrained=True)``,
``from_pretrained(name)`` and torch.hub; ``zoo fetch NAME`` on the command line):

1. finds the file: ``$ZOO_RELEASE_MIRROR`` (an http(s) base URL or a local folder) replaces the
   scheme and host of the URL and keeps its path; with ``HF_HUB_OFFLINE=1`` or ``ZOO_OFFLINE=1``
   and no mirror nothing touches the network;
2. downloads it into ``<local hub>/.downloads/`` as ``<file>.part``, resuming a partial file with
   an HTTP Range request, a progress bar with the rate on a terminal; the complete file must match
   the server's Content-Length and the size and sha256 the registry records (where a public source
   states them) before it is renamed into place;
3. extracts ``weights.original_file`` when the download is an archive (zip or tar): exactly one
   regular-file member whose path ends with it, no links, no path traversal, bounded size;
4. converts it with ``zoo.convert.convert_checkpoint`` (its safe loader runs no pickled code),
   loads the result strictly with its sha256 checked, and publishes it into the local hub under
   ``weights.hub_repo``, so later loads need no network. The download is then removed.

Releases no program can fetch (mega.nz, Google Drive, a login page) or convert (a format without
a converter) get one line that names the page and what to run after downloading by hand.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import json
import lzma
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Iterator

from zoo.checkpoint import load_checkpoint_folder, read_config, sha256_file
from zoo.errors import UsageError, WeightsError, WeightsNotAvailableError, ZooError
from zoo.hub import LocalHub, Resolved

MIRROR_ENV = "ZOO_RELEASE_MIRROR"
OFFLINE_ENVS = ("ZOO_OFFLINE", "HF_HUB_OFFLINE")
DOWNLOADS_DIRNAME = ".downloads"
MAX_MEMBER_BYTES = 16 << 30  # the largest archive member extracted (the releases' are < 1 GiB)
CHUNK = 1 << 20
TIMEOUT_S = 60
ATTEMPTS = 5  # tries per download; each one resumes where the last stopped
RETRY_WAIT_S = 0.25  # before the second try; doubled for each further one, at most 4 s
RETRY_STATUS = (408, 425, 429, 500, 502, 503, 504)

# Hosts that serve a page rather than the file: a program cannot download from them.
MANUAL_HOSTS = {
    "mega.nz": "mega.nz serves files only through its JavaScript client",
    "drive.google.com": "Google Drive answers large files with a confirmation page",
    "docs.google.com": "Google Drive answers large files with a confirmation page",
    "storage.cloud.google.com": "storage.cloud.google.com asks for a Google login",
    "console.cloud.google.com": "the Google Cloud console asks for a Google login",
}


# ----------------------------------------------------------------------------------------------
# What a release is and where it is read from
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OriginalRelease:
    name: str  # the registry model
    url: str  # weights.original_url
    file: str  # weights.original_file
    member: str  # the archive member to extract ("" when the download is the file itself)
    size: int | None  # of the download, where a public source states it
    sha256: str | None
    manual: str  # "" for a direct download, else what to do instead (``manual_instruction``)

    @property
    def download_name(self) -> str:
        return PurePosixPath(urllib.parse.urlparse(self.url).path).name


def original_release(name: str) -> OriginalRelease | None:
    """The authors' release of registry model ``name``, or None for models sslzoo trains itself."""
    from zoo.convert.releases import RELEASES
    from zoo.registry import get_model_entry

    weights = get_model_entry(name).weights
    if not weights.original_url:
        return None
    url, file = weights.original_url, weights.original_file
    parsed = urllib.parse.urlparse(url)
    download_name = PurePosixPath(parsed.path).name
    member = file if download_name and download_name != PurePosixPath(file).name else ""
    host = (parsed.hostname or "").lower()
    behind_page = host in MANUAL_HOSTS or parsed.scheme not in ("http", "https") or not download_name
    why = MANUAL_HOSTS.get(host, "not a direct file link")
    manual = ""
    if name not in RELEASES:
        manual = (f"sslzoo has no converter for the original release {url} ({file}"
                  f"{f'; {why}' if behind_page else ''}) yet, so it can be neither fetched nor converted; "
                  "`zoo convert --help` lists the releases sslzoo reads")
    elif behind_page:
        manual = (f"the original weights sit behind {url} ({why}), which no program can fetch; download "
                  f"{PurePosixPath(file).name} there by hand (out of the archive it comes in, if any), then run "
                  f"`zoo convert {name} {PurePosixPath(file).name} -o DIR` and load DIR with zoo.from_pretrained(DIR)")
    return OriginalRelease(name, url, file, member, weights.original_size, weights.original_sha256, manual)


def manual_instruction(release: OriginalRelease) -> str:
    """The one line for a release no program can fetch or convert ("" for a direct download)."""
    return f"{release.name}: {release.manual}" if release.manual else ""


def direct_releases() -> list[str]:
    """Registry models whose original release ``zoo fetch`` can download and convert."""
    from zoo.registry import list_models

    return [n for n in list_models() if (r := original_release(n)) is not None and not r.manual]


def release_mirror() -> str | None:
    value = os.environ.get(MIRROR_ENV, "").strip()
    return value or None


def offline_variable() -> str | None:
    """The variable (``ZOO_OFFLINE`` or ``HF_HUB_OFFLINE``) that forbids the network, if one is set."""
    for var in OFFLINE_ENVS:
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return var
    return None


def mirrored(url: str, mirror: str | None) -> str:
    """``url`` with its scheme and host replaced by ``mirror`` (an http(s) base URL, or a folder,
    giving a path); the URL's path is kept. Without a mirror, ``url`` itself."""
    if not mirror:
        return url
    parsed, base = urllib.parse.urlparse(url), urllib.parse.urlparse(mirror)
    tail = parsed.path + (f"?{parsed.query}" if parsed.query else "")
    if base.scheme in ("http", "https"):
        if not base.netloc or base.query or base.fragment:
            raise UsageError(f"{MIRROR_ENV}={mirror!r} is not a usable base URL; give e.g. http://host:8000/releases")
        return mirror.rstrip("/") + tail
    if base.scheme == "file":
        root = Path(urllib.request.url2pathname(base.path))
    elif len(base.scheme) > 1:  # one letter would be a Windows drive
        raise UsageError(f"{MIRROR_ENV}={mirror!r} is neither an http(s) base URL nor a folder")
    else:
        root = Path(mirror).expanduser()
    parts = [p for p in PurePosixPath(urllib.parse.unquote(parsed.path)).parts if p != "/"]
    if not parts or any(p in (".", "..") for p in parts):
        raise UsageError(f"{url} has no file path to look up in the mirror folder {root}")
    return str(root.joinpath(*parts))


def _is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def _where_from(release: OriginalRelease, lead: str) -> str:
    """The URL or mirror path to read ``release`` from; one line when the network is forbidden."""
    mirror = release_mirror()
    if mirror is None and (var := offline_variable()):
        raise WeightsNotAvailableError(
            f"{lead}, and {var}=1 forbids downloading the authors' release {release.url}: run "
            f"`zoo fetch {release.name}` when online, set {MIRROR_ENV} to a mirror of the releases (a URL or a "
            f"folder), or download it by hand and run `zoo convert {release.name} "
            f"{PurePosixPath(release.file).name} -o DIR`")
    return mirrored(release.url, mirror)


def _not_cached(name: str, hub: LocalHub) -> str:
    return (f"{name!r} has no published weights yet and none are in the local hub {hub.root} or the Hugging Face "
            f"cache")


# ----------------------------------------------------------------------------------------------
# Downloading
# ----------------------------------------------------------------------------------------------

class _Retry(Exception):
    """A transfer that stopped for a reason worth another try (it resumes from the .part file)."""


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int | None, initial: int, desc: str, show: bool = True):
    """A tqdm bar with the transfer rate on stderr, drawn only when stderr is a terminal (and
    ``show``: not `zoo fetch --no-progress`)."""
    from zoo.cli import progress_wanted

    if not (show and progress_wanted()):
        return _NoBar()
    from tqdm import tqdm

    try:  # a terminal that reports no size (some emulated ones) would get no bar at all
        size = os.get_terminal_size(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        size = os.terminal_size((0, 0))
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, leave=False, ncols=None if size.columns else 80, nrows=None if size.lines else 24)


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total) of a ``Content-Range: bytes a-b/total`` header; None where absent."""
    if not value or not value.strip().lower().startswith("bytes"):
        return None, None
    spec = value.strip()[5:].strip()
    span, _, total = spec.partition("/")
    first = span.split("-", 1)[0].strip()
    return (int(first) if first.isdigit() else None), (int(total) if total.strip().isdigit() else None)


def _discard(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def download(url: str, dest: Path, *, size: int | None = None, name: str = "", progress: bool = True) -> None:
    """Download ``url`` to ``dest`` through ``dest.part``: resumed with HTTP Range after an
    interruption (also by a later call), checked against Content-Length and ``size``, then renamed
    into place. A transfer that keeps failing leaves the .part file for the next call."""
    part = dest.with_name(dest.name + ".part")
    meta_path = dest.with_name(dest.name + ".part.json")
    reason = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(min(RETRY_WAIT_S * 2 ** (attempt - 1), 4.0))
        try:
            _transfer(url, part, meta_path, size, name, progress)
        except _Retry as why:
            reason = str(why)
            continue
        os.replace(part, dest)
        meta_path.unlink(missing_ok=True)
        return
    have = part.stat().st_size if part.exists() else 0
    kept = (f"the {have:,} bytes received are kept in {part}: run the same command again to resume"
            if have else "check the connection, or set ZOO_RELEASE_MIRROR to a mirror of the releases")
    raise WeightsNotAvailableError(f"downloading {url} failed {ATTEMPTS} times ({reason}); {kept}")


def _read_meta(meta_path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _transfer(url: str, part: Path, meta_path: Path, size: int | None, name: str, progress: bool = True) -> None:
    """One HTTP request appending to ``part``; raises _Retry when it should be tried again."""
    from zoo import __version__

    meta = _read_meta(meta_path)
    if part.exists() and meta.get("url") != url:  # left by another source or an older sslzoo
        _discard(part)
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"sslzoo/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if meta.get("etag") or meta.get("last_modified"):
            headers["If-Range"] = meta.get("etag") or meta["last_modified"]
    try:
        # A fresh opener reads the proxy settings (http_proxy, no_proxy, ...) of this moment.
        opener = urllib.request.build_opener()
        response = opener.open(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:  # nothing left to send: complete, or a stale part
            _, total = _content_range(err.headers.get("Content-Range"))
            if total is not None and total == offset and (size is None or size == offset):
                return
            _discard(part, meta_path)
            raise _Retry("the server could not resume the partial file; starting again") from None
        if err.code in RETRY_STATUS:
            raise _Retry(f"HTTP {err.code} {err.reason}") from None
        raise WeightsNotAvailableError(f"{url} answered HTTP {err.code} {err.reason}; the release may have moved: "
                                       f"check the authors' README (`zoo info {name or 'NAME'}` names it)") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or err
        raise _Retry(f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason) from None

    with response:
        if response.status == 206:
            first, total = _content_range(response.headers.get("Content-Range"))
            if first != offset or (meta.get("total") is not None and total != meta.get("total")):
                _discard(part, meta_path)  # not the continuation of our file
                raise _Retry("the server resumed at another offset or with another file; starting again")
        else:  # 200: the whole file (a server that ignores Range, or a changed file)
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.strip().isdigit() else None
        if size is not None and total is not None and total != size:
            _discard(part, meta_path)
            raise WeightsError(f"{url} offers {total:,} bytes but the registry records {size:,} for this release: "
                               "it is not the file sslzoo knows; nothing was cached")
        meta = {"url": url, "etag": response.headers.get("ETag"), "last_modified": response.headers.get("Last-Modified"),
                "total": total}
        meta_path.write_text(json.dumps(meta), encoding="utf-8")
        bar = _progress(total, offset, name or part.name, progress)
        try:
            with open(part, "r+b" if offset else "wb") as f:
                f.seek(offset)
                f.truncate()
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (OSError, http.client.HTTPException) as err:
                        raise _Retry(f"{type(err).__name__} after {f.tell():,} bytes") from None
                    if not chunk:
                        break
                    f.write(chunk)
                    bar.update(len(chunk))
                    if (size is not None and f.tell() > size) or (total is not None and f.tell() > total):
                        _discard(part, meta_path)
                        raise WeightsError(f"{url} sent more bytes than {'the registry records' if size else 'announced'}; "
                                           "nothing was cached")
                f.flush()
                os.fsync(f.fileno())
        finally:
            bar.close()
    have = part.stat().st_size
    if total is not None and have < total:
        raise _Retry(f"the connection closed after {have:,} of {total:,} bytes")


def verify_original(path: Path, release: OriginalRelease, where: str) -> tuple[int, str]:
    """(size, sha256) of the original file, checked against what the registry records."""
    size = path.stat().st_size
    if release.size is not None and size != release.size:
        raise WeightsError(f"{release.name}: {where} has {size:,} bytes but the registry records {release.size:,}: "
                           "it is not the file sslzoo knows; nothing was cached")
    sha = sha256_file(path)
    if release.sha256 is not None and sha != release.sha256:
        raise WeightsError(f"{release.name}: {where} has sha256 {sha[:16]}... but the registry records "
                           f"{release.sha256[:16]}...: it is not the file sslzoo knows; nothing was cached")
    return size, sha


# ----------------------------------------------------------------------------------------------
# Archives
# ----------------------------------------------------------------------------------------------

def _member_parts(name: str) -> tuple[str, ...]:
    return tuple(p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("/", "."))


def _unsafe(name: str) -> bool:
    text = name.replace("\\", "/")
    return text.startswith("/") or (len(text) > 1 and text[1] == ":") or ".." in _member_parts(text)


def _copy_bounded(src: BinaryIO, out: Path, limit: int, what: str) -> None:
    part = out.with_name(out.name + ".part")
    copied = 0
    try:
        with open(part, "wb") as f:
            while block := src.read(CHUNK):
                copied += len(block)
                if copied > limit:
                    raise WeightsError(f"{what} is larger than {limit:,} bytes; refusing to extract it")
                f.write(block)
        os.replace(part, out)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def extract_member(archive: Path, member: str, out: Path, *, limit: int = MAX_MEMBER_BYTES) -> str:
    """Copy the one member of the zip or tar ``archive`` whose path ends with the components of
    ``member`` (``569/best_net.pytorch`` matches ``models/569/best_net.pytorch``) into ``out``, and
    return its path in the archive. It must be a regular file of at most ``limit`` bytes with a
    relative path free of ``..``; anything else in the archive is left alone."""
    want = _member_parts(member)
    if not want or ".." in want:
        raise UsageError(f"{member!r} is not a member path")
    what = archive.name

    def matches(name: str) -> bool:
        parts = _member_parts(name)
        return len(parts) >= len(want) and parts[-len(want):] == want

    def check(name: str, regular: bool, kind: str, nbytes: int) -> None:
        if _unsafe(name):
            raise WeightsError(f"{what}: member {name!r} has an unsafe path (absolute or with '..'); refusing it")
        if not regular:
            raise WeightsError(f"{what}: member {name!r} is a {kind}, not a regular file; refusing it")
        if nbytes > limit:
            raise WeightsError(f"{what}: member {name!r} claims {nbytes:,} bytes, more than the {limit:,} allowed")

    with open(archive, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    try:
        if is_zip:
            with zipfile.ZipFile(archive) as zf:
                found = [i for i in zf.infolist() if matches(i.filename)]
                if len(found) != 1:
                    raise _member_count_error(what, member, [i.filename for i in found], len(zf.infolist()))
                info = found[0]
                mode = info.external_attr >> 16
                regular = not info.is_dir() and stat.S_IFMT(mode) in (0, stat.S_IFREG)  # 0: no type recorded
                kind = "folder" if info.is_dir() else "symbolic link" if stat.S_ISLNK(mode) else "special file"
                check(info.filename, regular, kind, info.file_size)
                if info.flag_bits & 0x1:
                    raise WeightsError(f"{what}: member {info.filename!r} is encrypted")
                with zf.open(info) as src:
                    _copy_bounded(src, out, min(limit, info.file_size), f"{what}: member {info.filename!r}")
                return info.filename
        found_name = None
        seen = 0
        with tarfile.open(archive, mode="r|*") as tf:  # a stream: one pass, no seeking back
            for m in tf:
                seen += 1
                if not matches(m.name):
                    continue
                if found_name is not None:
                    out.unlink(missing_ok=True)
                    raise _member_count_error(what, member, [found_name, m.name], seen)
                kind = ("folder" if m.isdir() else "symbolic link" if m.issym() else "hard link" if m.islnk()
                        else "special file")
                check(m.name, m.isreg(), kind, m.size)
                src = tf.extractfile(m)
                _copy_bounded(src, out, min(limit, m.size), f"{what}: member {m.name!r}")
                found_name = m.name
        if found_name is None:
            raise _member_count_error(what, member, [], seen)
        return found_name
    except ZooError:
        out.unlink(missing_ok=True)
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError,
            ValueError) as err:
        out.unlink(missing_ok=True)
        kind = "zip" if is_zip else "tar"
        raise WeightsError(f"{what} is not a readable {kind} archive ({type(err).__name__}: "
                           f"{' '.join(str(err).split())[:160]}); it may be truncated: delete it and fetch again") from None


def _member_count_error(what: str, member: str, names: list[str], total: int) -> WeightsError:
    if not names:
        return WeightsError(f"{what} holds no member {member!r} (it has {total} members); the release has changed")
    return WeightsError(f"{what} holds several members ending in {member!r} ({', '.join(names[:3])}); "
                        "refusing to guess which one")


# ----------------------------------------------------------------------------------------------
# Fetching: download, extract, convert, verify, cache
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fetched:
    name: str
    path: Path  # the local-hub snapshot folder
    source: str  # the URL or mirror file the original came from
    bytes: int | None  # of the original download
    original_sha256: str  # of the original download
    member: str  # the archive member converted ("" for a plain file)
    weights_sha256: str  # of the converted model.safetensors
    cached: bool  # True when the local hub already had it and nothing was downloaded


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One fetch at a time per local hub (two processes never write the same .part file)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cached(name: str, folder: Path) -> Fetched:
    config = read_config(folder)
    conversion = config.get("conversion") or {}
    fetched = conversion.get("fetched") or {}
    return Fetched(name, folder, fetched.get("from") or conversion.get("url", ""), fetched.get("bytes"),
                   fetched.get("sha256") or conversion.get("original_sha256", ""), fetched.get("member", ""),
                   config["weights"]["sha256"], cached=True)


def fetch_original(name: str, *, hub: LocalHub | None = None, force: bool = False,
                   keep_download: bool = False, progress: bool = True) -> Fetched:
    """Download, convert, verify and cache the original release of ``name`` (see the module).

    The local hub's copy is returned when there is one (``force=True`` fetches again);
    ``keep_download`` keeps the downloaded file in ``<hub>/.downloads`` for another entry of the
    same archive. ``progress=False``: no download bar (one is drawn only on a terminal anyway)."""
    from zoo.convert import convert_checkpoint
    from zoo.registry import get_model_entry

    entry = get_model_entry(name)
    release = original_release(name)
    if release is None:
        raise WeightsNotAvailableError(f"{name}: sslzoo trains this model itself; there is no original release to "
                                       f"fetch (`zoo info {name}` shows its recipe)")
    hub = hub or LocalHub()
    repo, revision = entry.weights.hub_repo, entry.weights.revision
    if not force and (folder := hub.snapshot(repo, revision)) is not None:
        return _cached(name, folder)
    if release.manual:
        raise WeightsNotAvailableError(manual_instruction(release))
    where = _where_from(release, f"{name}: not in the local hub {hub.root}")
    downloads = hub.root / DOWNLOADS_DIRNAME
    downloads.mkdir(parents=True, exist_ok=True)
    with _locked(downloads / ".lock"):
        if not force and (folder := hub.snapshot(repo, revision)) is not None:
            return _cached(name, folder)  # another process fetched it meanwhile
        if _is_url(where):
            key = hashlib.sha256(where.encode()).hexdigest()[:12]
            original = downloads / f"{key}-{release.download_name}"
            if not original.is_file():
                download(where, original, size=release.size, name=name, progress=progress)
        else:
            original = Path(where)
            if not original.is_file():
                raise WeightsNotAvailableError(f"{name}: {original} is not in the mirror folder {release_mirror()} "
                                               f"({MIRROR_ENV}); copy {release.url} there under the same path")
        downloaded, keep = _is_url(where), keep_download
        work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=downloads))
        try:
            try:
                nbytes, sha = verify_original(original, release, where)
            except WeightsError:
                if downloaded:
                    original.unlink(missing_ok=True)
                raise
            file, member = original, ""
            if release.member:
                file = work / PurePosixPath(release.member).name
                member = extract_member(original, release.member, file)
            record = {"from": where, "bytes": nbytes, "sha256": sha, **({"member": member} if member else {})}
            checkpoint = work / "checkpoint"
            convert_checkpoint(name, file, checkpoint, fetched=record)
            model = load_checkpoint_folder(checkpoint)  # strict keys, sha256 of the weights
            config = model.checkpoint_config
            del model
            if config["name"] != name:
                raise WeightsError(f"{name}: the conversion produced a checkpoint of {config['name']!r}")
            folder, _ = hub.publish(checkpoint, repo, revision)
        except ZooError:
            raise  # a file sslzoo cannot use: not kept (unless another entry reads the same archive)
        except BaseException:
            keep = True  # interrupted (or a bug): the next call converts the download without fetching it again
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if downloaded and not keep:
                original.unlink(missing_ok=True)
    return Fetched(name, folder, where, nbytes, sha, member, config["weights"]["sha256"], cached=False)


def fetch_release(name: str, *, hub: LocalHub | None = None, force: bool = False) -> Path:
    """The local-hub snapshot folder of ``name``'s converted original release, fetched on first use."""
    return fetch_original(name, hub=hub, force=force).path


def resolve_release(name: str, revision: str | None = None, *, download: bool = True,
                    hub: LocalHub | None = None) -> Resolved | None:
    """``zoo.hub.resolve_entry``'s last step for unpublished entries: the original release,
    fetched and converted into the local hub. None when ``name`` has no original release (or a
    revision other than the entry's is asked for); otherwise the checkpoint or one line."""
    from zoo.registry import get_model_entry

    weights = get_model_entry(name).weights
    release = original_release(name)
    if release is None or (revision or weights.revision) != weights.revision:
        return None
    hub = hub or LocalHub()
    lead = _not_cached(name, hub)
    if release.manual:
        raise WeightsNotAvailableError(f"{lead}; {release.manual}")
    if not download:
        raise WeightsNotAvailableError(f"{lead}; run `zoo fetch {name}` to download and convert the authors' release")
    _where_from(release, lead)  # offline without a mirror: one line, before any network
    folder = fetch_release(name, hub=hub)
    return Resolved(folder, "original release", weights.hub_repo, weights.revision)


# ----------------------------------------------------------------------------------------------
# `zoo fetch`
# ----------------------------------------------------------------------------------------------

def _report_line(done: Fetched) -> str:
    size = f"{done.bytes:,} bytes, " if done.bytes is not None else ""
    member = f" [{done.member}]" if done.member else ""
    how = "already in the local hub, from" if done.cached else "fetched"
    return (f"{done.name}: {how} {done.source}{member} ({size}sha256 {done.original_sha256}) -> weights sha256 "
            f"{done.weights_sha256} in {done.path}")


def _command():
    import click

    # OutputPath: an empty --local-hub would silently mean the current folder
    from zoo.cli import OutputPath, complete_model_names, no_progress_option, printable, progress_wanted

    @click.command("fetch")
    @click.argument("names", nargs=-1, shell_complete=complete_model_names)
    @click.option("--all", "all_releases", is_flag=True,
                  help="Every release that is a direct download; report the manual ones.")
    @click.option("--force", is_flag=True, help="Download and convert again even if the local hub has the model.")
    @click.option("--local-hub", default=None, type=OutputPath(file_okay=False),
                  help="Local hub folder [default: $ZOO_HUB or ~/.cache/sslzoo/hub].")
    @no_progress_option
    @click.pass_context
    def fetch(ctx, names, all_releases, force, local_hub, no_progress):
        """Download the original authors' release of each NAME, convert it and cache it in the local hub.

        No pickled code in the file runs (`zoo convert`'s safe loader reads it). A partial download
        resumes on the next run. ZOO_RELEASE_MIRROR (an http(s) base URL or a folder) replaces the
        host of every release URL; HF_HUB_OFFLINE=1 or ZOO_OFFLINE=1 without a mirror forbids the
        network. Prints one line per model: where it came from, its size and sha256, the sha256 of
        the converted weights and the local hub folder.
        """
        from zoo.registry import get_model_entry

        if bool(names) == all_releases:
            raise UsageError("give model NAMEs or --all")
        for name in names:
            get_model_entry(name)  # unknown names stop everything, before any download
        hub = LocalHub(local_hub)
        chosen = list_release_names() if all_releases else list(dict.fromkeys(names))
        releases = {n: original_release(n) for n in chosen}
        last_use = {r.url: i for i, (n, r) in enumerate(releases.items()) if r is not None}
        counts = {"fetched": 0, "cached": 0, "manual": 0}
        failed: list[tuple[str, ZooError]] = []
        for i, name in enumerate(chosen):
            release = releases[name]
            try:
                if release is not None and release.manual and all_releases:
                    click.echo(f"{name}: manual download: {release.manual}")
                    counts["manual"] += 1
                    continue
                done = fetch_original(name, hub=hub, force=force, progress=progress_wanted(no_progress),
                                      keep_download=release is not None and last_use[release.url] > i)
            except ZooError as err:
                message = str(err)
                if not message.startswith((f"{name}:", f"{name!r}")):
                    message = f"{name}: {message}"
                click.echo(f"error: {printable(message)}", err=True)
                failed.append((name, err))
                continue
            counts["cached" if done.cached else "fetched"] += 1
            click.echo(_report_line(done))
        if len(chosen) > 1:
            click.echo(f"{counts['fetched']} fetched, {counts['cached']} already cached, {counts['manual']} manual, "
                       f"{len(failed)} failed")
        if failed:
            ctx.exit(max(err.exit_code for _, err in failed))

    return fetch


def list_release_names() -> list[str]:
    """Every registry model with an original release (direct or manual), in registry order."""
    from zoo.registry import list_models

    return [n for n in list_models() if original_release(n) is not None]


fetch_command = _command()

__all__ = ["Fetched", "OriginalRelease", "direct_releases", "download", "extract_member", "fetch_command",
           "fetch_original", "fetch_release", "mirrored", "original_release", "resolve_release"]
