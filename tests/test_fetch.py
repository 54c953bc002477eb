"""Original releases on first use (`zoo fetch`, pretrained=True): real HTTP from a server this file
starts on 127.0.0.1, files written in the authors' layouts by test_convert's helpers, the real
converter and the real local hub. ZOO_RELEASE_MIRROR points the registry's URLs at the server (or
at a folder); conftest sets HF_HUB_OFFLINE=1 for every test, so these also show that an explicit
mirror is allowed offline."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import os
import pty
import select
import sys
import tarfile
import threading
import urllib.parse
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import run_zoo
from test_convert import (
    NCEAverage, Random, RunsCommand, WritesFile, assert_features_match, dc_alexnet_ref, dc_alexnet_state,
    nin_ref, nin_state, resnet_ref, resnet_state, sgd_state,
)

import zoo
import zoo.fetch as fetch
from zoo import UsageError, WeightsError, WeightsNotAvailableError
from zoo.cli import main as zoo_main
from zoo.hub import LocalHub

NIN = "rotnet_nin_cifar10"  # the smallest release: a tar.gz holding model_net_epoch200


def url_path(name: str) -> str:
    return urllib.parse.urlparse(zoo.get_model_entry(name).weights.original_url).path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ReleaseServer:
    """Static files on 127.0.0.1 with byte ranges (Range, If-Range, 206/416), ETags and a log of
    (method, path, Range header). ``cut[path] = n``: the next n answers for ``path`` send half of
    their body and drop the connection."""

    def __init__(self, files: dict[str, Path]):
        self.files = dict(files)
        self.cut: dict[str, int] = {}
        self.log: list[tuple[str, str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_CONNECT(self):  # what a client that uses us as its proxy for https sends
                server.log.append(("CONNECT", self.path, None))
                self.send_error(405)

            def do_GET(self):
                path = urllib.parse.urlparse(self.path).path
                rng = self.headers.get("Range")
                server.log.append(("GET", path, rng))
                file = server.files.get(path)
                if file is None:
                    self.send_error(404)
                    return
                size = file.stat().st_size
                etag = f'"{sha256(file)[:16]}"'
                start, status = 0, 200
                if rng and self.headers.get("If-Range", etag) == etag:
                    start, status = int(rng.removeprefix("bytes=").split("-")[0]), 206
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                self.send_response(status)
                self.send_header("Content-Length", str(size - start))
                self.send_header("ETag", etag)
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                self.end_headers()
                send = size - start
                if server.cut.get(path, 0) > 0:
                    server.cut[path] -= 1
                    send //= 2
                    self.close_connection = True
                with open(file, "rb") as f:
                    f.seek(start)
                    while send > 0:
                        block = f.read(min(send, 1 << 20))
                        self.wfile.write(block)
                        send -= len(block)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def gets(self, path: str) -> list[str | None]:
        """The Range header of each GET of ``path``, in order."""
        return [rng for method, p, rng in self.log if method == "GET" and p == path]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve(monkeypatch):
    """serve({path: file}) starts a ReleaseServer and points ZOO_RELEASE_MIRROR at it."""
    servers = []

    def start(files: dict[str, Path]) -> ReleaseServer:
        server = ReleaseServer(files)
        servers.append(server)
        monkeypatch.setenv(fetch.MIRROR_ENV, server.url)
        monkeypatch.setenv("no_proxy", "127.0.0.1")  # straight to the server, whatever proxy is configured
        return server

    yield start
    for server in servers:
        server.stop()


def nin_release(tmp_path: Path) -> tuple[dict, Path]:
    """CIFAR10_RotNet_NIN4blocks.tar.gz as the authors' config would write it: the network file
    (Algorithm.save_network: {'epoch', 'network'}) and its optimiser file in the experiment folder."""
    sd = nin_state(Random(2))
    members = {}
    for what, obj in (("net", {"epoch": 200, "network": sd}), ("optim", {"epoch": 200, "optimizer": sgd_state()})):
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        members[f"CIFAR10_RotNet_NIN4blocks/model_{what}_epoch200"] = buffer.getvalue()
    path = tmp_path / "CIFAR10_RotNet_NIN4blocks.tar.gz"
    write_tar(path, members)
    return sd, path


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def hub_files(hub: LocalHub) -> list[str]:
    """Everything under the local hub but the fetch lock: what a failed fetch must not leave."""
    return sorted(str(p.relative_to(hub.root)) for p in hub.root.rglob("*") if p.is_file() and p.name != ".lock")


# -- loading on first use ------------------------------------------------------------------------------

def test_deepcluster_alexnet_is_fetched_converted_and_cached_on_first_use(tmp_path, serve):
    rand = Random(4)
    sd = dc_alexnet_state(rand)
    rand.linear(sd, "top_layer", 10, 4096)
    path = tmp_path / "checkpoint.pth.tar"  # main.py, Python 2 / PyTorch 0.3: legacy serialisation
    torch.save({"epoch": 500, "arch": "alexnet", "state_dict": sd, "optimizer": sgd_state()}, path,
               _use_new_zipfile_serialization=False)
    where = url_path("deepcluster_alexnet")
    assert where == "/deepcluster/alexnet/checkpoint.pth.tar"
    server = serve({where: path})

    model = zoo.create_model("deepcluster_alexnet", pretrained=True)
    assert model.checkpoint_source.source == "original release"
    x = Random(5).normal(1, 3, 224, 224)
    assert_features_match(model, x, dc_alexnet_ref(sd, x))
    fetched = model.checkpoint_config["conversion"]["fetched"]
    assert fetched == {"from": server.url + where, "bytes": path.stat().st_size, "sha256": sha256(path)}
    assert model.checkpoint_config["conversion"]["url"] == "https://dl.fbaipublicfiles.com" + where
    hub = LocalHub()
    assert model.checkpoint_source.path == hub.snapshot("sslzoo/deepcluster-alexnet-in1k")
    assert not any(p.name != ".lock" for p in (hub.root / ".downloads").iterdir())  # the download is gone

    server.stop()  # later loads need no network
    again = zoo.create_model("deepcluster_alexnet", pretrained=True)
    assert again.checkpoint_source.source == "local hub"
    assert_features_match(again, x, dc_alexnet_ref(sd, x))
    assert server.gets(where) == [None]  # one download, no second request


def test_npid_release_with_pickled_payloads_loads_and_nothing_runs(tmp_path, serve):
    rand = Random(16)
    tv = resnet_state(rand, 18, counter=False, fc=128)
    path = tmp_path / "lemniscate_resnet18.pth"
    markers = (tmp_path / "command_ran", tmp_path / "file_written")
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": {"module." + k: v for k, v in tv.items()},
                "lemniscate": NCEAverage(128, 100), "best_prec1": 41.0, "optimizer": sgd_state(),
                "log": RunsCommand(markers[0]), "cache": WritesFile(markers[1])},
               path, _use_new_zipfile_serialization=False)
    where = url_path("npid_resnet18")
    assert where == "/pretraining/checkpoints/pil_pretrained_models/lemniscate/lemniscate_resnet18.pth"
    serve({where: path})

    model = zoo.from_pretrained("npid_resnet18")
    assert not any(m.exists() for m in markers)
    conversion = model.checkpoint_config["conversion"]
    assert {"posix.system", "io.open", "test_convert.NCEAverage"} <= set(conversion["pickled_classes_never_run"])
    assert "never run" in conversion["dropped"]["log"] and "memory bank" in conversion["dropped"]["lemniscate"]
    x = Random(17).normal(2, 3, 64, 64)
    assert_features_match(model, x, resnet_ref(tv, x, 18))


def test_an_interrupted_download_resumes_from_the_part_file(tmp_path, serve):
    sd, path = nin_release(tmp_path)
    where = url_path(NIN)
    server = serve({where: path})
    server.cut[where] = 1  # the first answer stops half way

    done = fetch.fetch_original(NIN)
    half = path.stat().st_size // 2
    assert server.gets(where) == [None, f"bytes={half}-"]
    assert (done.bytes, done.original_sha256) == (path.stat().st_size, sha256(path))
    assert done.member == "CIFAR10_RotNet_NIN4blocks/model_net_epoch200" and not done.cached
    model = zoo.from_pretrained(NIN)
    assert model.checkpoint_source.source == "local hub" and model.checkpoint_source.path == done.path
    x = Random(3).normal(2, 3, 32, 32)
    assert_features_match(model, x, nin_ref(sd, x))
    assert model.checkpoint_config["conversion"]["fetched"]["member"] == done.member


def test_a_download_that_keeps_failing_keeps_its_part_and_the_cli_resumes_it(tmp_path, serve, monkeypatch):
    _, path = nin_release(tmp_path)
    where = url_path(NIN)
    server = serve({where: path})
    server.cut[where] = fetch.ATTEMPTS
    monkeypatch.setattr(fetch, "RETRY_WAIT_S", 0.0)
    with pytest.raises(WeightsNotAvailableError) as err:
        fetch.fetch_original(NIN)
    message = str(err.value)
    assert "\n" not in message and f"failed {fetch.ATTEMPTS} times" in message
    assert "run the same command again to resume" in message
    hub = LocalHub()
    parts = list((hub.root / ".downloads").glob("*.part"))
    assert len(parts) == 1 and 0 < parts[0].stat().st_size < path.stat().st_size
    have = parts[0].stat().st_size
    assert hub.snapshot(zoo.get_model_entry(NIN).weights.hub_repo) is None

    res = run_zoo("fetch", NIN)
    assert res.returncode == 0, res.stderr
    assert server.gets(where)[-1] == f"bytes={have}-"
    line = res.stdout.strip()
    snapshot = hub.snapshot(zoo.get_model_entry(NIN).weights.hub_repo)
    weights_sha = json.loads((snapshot / "config.json").read_text())["weights"]["sha256"]
    assert line == (f"{NIN}: fetched {server.url}{where} [CIFAR10_RotNet_NIN4blocks/model_net_epoch200] "
                    f"({path.stat().st_size:,} bytes, sha256 {sha256(path)}) -> weights sha256 {weights_sha} in {snapshot}")
    repo_dir = hub.repo_dir(zoo.get_model_entry(NIN).weights.hub_repo)
    assert hub_files(hub) == sorted(str(p.relative_to(hub.root)) for p in repo_dir.rglob("*") if p.is_file())

    again = run_zoo("fetch", NIN)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"{NIN}: already in the local hub, from {server.url}{where}")
    assert f"weights sha256 {weights_sha} in {snapshot}" in again.stdout


@pytest.mark.parametrize("recorded", ["size", "sha256"])
def test_a_download_that_differs_from_the_registry_is_refused_and_nothing_is_cached(tmp_path, serve, monkeypatch,
                                                                                    recorded):
    _, path = nin_release(tmp_path)
    where = url_path(NIN)
    serve({where: path})
    entry = zoo.get_model_entry(NIN)

    def record(size=None, sha=None):
        weights = dataclasses.replace(entry.weights, original_size=size, original_sha256=sha)
        monkeypatch.setitem(zoo.registry._REGISTRY, NIN, dataclasses.replace(entry, weights=weights))

    record(size=path.stat().st_size + 1) if recorded == "size" else record(sha="0" * 64)
    with pytest.raises(WeightsError) as err:
        zoo.create_model(NIN, pretrained=True)
    message = str(err.value)
    assert "\n" not in message and "the registry records" in message and "nothing was cached" in message
    hub = LocalHub()
    assert hub_files(hub) == []

    record(size=path.stat().st_size, sha=sha256(path))  # the right values: the same download passes
    assert zoo.create_model(NIN, pretrained=True).checkpoint_source.source == "original release"


def test_a_local_folder_mirror_is_read_in_place(tmp_path, monkeypatch):
    sd, path = nin_release(tmp_path)
    mirror = tmp_path / "mirror"
    copy = mirror / url_path(NIN).lstrip("/")
    copy.parent.mkdir(parents=True)
    copy.write_bytes(path.read_bytes())
    monkeypatch.setenv(fetch.MIRROR_ENV, str(mirror))
    model = zoo.create_model(NIN, pretrained=True)
    assert model.checkpoint_config["conversion"]["fetched"]["from"] == str(copy)
    x = Random(3).normal(1, 3, 32, 32)
    assert_features_match(model, x, nin_ref(sd, x))
    assert copy.read_bytes() == path.read_bytes()  # the mirror's file is left alone
    monkeypatch.setenv(fetch.MIRROR_ENV, str(tmp_path / "empty-mirror"))
    with pytest.raises(WeightsNotAvailableError, match="is not in the mirror folder"):
        fetch.fetch_original("deepercluster_vgg16")


# -- what is not fetched -------------------------------------------------------------------------------

def test_manual_releases_give_one_line_with_the_page_and_the_command(monkeypatch):
    for name, needles in (("simclr_resnet50", ("storage.cloud.google.com", "asks for a Google login",
                                               "no converter")),
                          ("byol_resnet50", ("pretrain_res50x1.pkl", "no converter"))):
        with pytest.raises(WeightsNotAvailableError) as err:
            zoo.create_model(name, pretrained=True)
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"{name!r} has no published weights yet")
        assert all(n in message for n in needles), message
    assert sorted(set(fetch.list_release_names()) - set(fetch.direct_releases())) == ["byol_resnet50",
                                                                                   "simclr_resnet50"]
    # rotnet_alexnet as its README linked it until 2023: a mega.nz page
    entry = zoo.get_model_entry("rotnet_alexnet")
    mega = "https://mega.nz/#!n81AnC6L!xTbo_D3xd7QOpOSG1UFSChmDr8mbcuWbVjhQMaC4yoE"
    monkeypatch.setitem(zoo.registry._REGISTRY, "rotnet_alexnet",
                        dataclasses.replace(entry, weights=dataclasses.replace(entry.weights, original_url=mega)))
    with pytest.raises(WeightsNotAvailableError) as err:
        fetch.fetch_release("rotnet_alexnet")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"rotnet_alexnet: the original weights sit behind {mega}")
    assert "`zoo convert rotnet_alexnet model_net_epoch50 -o DIR`" in message


def test_offline_without_a_mirror_never_touches_the_network(tmp_path, monkeypatch):
    # Every request the loader could make goes to this server, as a proxy: it logs them all.
    proxy = ReleaseServer({})
    try:
        for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            monkeypatch.setenv(var, proxy.url)
        for var in ("no_proxy", "NO_PROXY", fetch.MIRROR_ENV):
            monkeypatch.delenv(var, raising=False)
        for offline in ("HF_HUB_OFFLINE", "ZOO_OFFLINE"):
            monkeypatch.delenv("HF_HUB_OFFLINE")
            monkeypatch.setenv(offline, "1")
            with pytest.raises(WeightsNotAvailableError) as err:
                zoo.create_model("deepercluster_vgg16", pretrained=True)
            message = str(err.value)
            assert "\n" not in message and f"{offline}=1 forbids downloading" in message
            for needle in ("https://dl.fbaipublicfiles.com/deepcluster/ours/ours.pth", "`zoo fetch deepercluster_vgg16`",
                           "ZOO_RELEASE_MIRROR", "`zoo convert deepercluster_vgg16 ours.pth -o DIR`"):
                assert needle in message, needle
            monkeypatch.delenv(offline)
            monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as conftest has it
        assert proxy.log == []
        # the control: online, the same call does reach the network (here: the logging proxy)
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setattr(fetch, "RETRY_WAIT_S", 0.0)
        with pytest.raises(WeightsNotAvailableError, match="downloading https://dl.fbaipublicfiles.com/.* failed"):
            fetch.fetch_original("deepercluster_vgg16")
        assert proxy.log[0][:2] == ("CONNECT", "dl.fbaipublicfiles.com:443")
    finally:
        proxy.stop()


def test_mirror_replaces_scheme_and_host_and_keeps_the_path(tmp_path):
    url = "https://dl.fbaipublicfiles.com/deepcluster/ours/ours.pth"
    assert fetch.mirrored(url, "http://127.0.0.1:8123") == "http://127.0.0.1:8123/deepcluster/ours/ours.pth"
    assert fetch.mirrored(url, "https://mirror.example/base/") == "https://mirror.example/base/deepcluster/ours/ours.pth"
    assert fetch.mirrored(url, "/srv/mirror") == "/srv/mirror/deepcluster/ours/ours.pth"
    assert fetch.mirrored(url, f"file://{tmp_path}") == f"{tmp_path}/deepcluster/ours/ours.pth"
    assert fetch.mirrored(url, None) == url
    for bad in ("ftp://mirror/releases", "http://"):
        with pytest.raises(UsageError, match="ZOO_RELEASE_MIRROR"):
            fetch.mirrored(url, bad)


# -- archives ------------------------------------------------------------------------------------------

def test_archive_members_are_extracted_safely(tmp_path):
    wanted = b"weights of model 569"
    members = {"models/569/best_net.pytorch": wanted, "models/1569/best_net.pytorch": b"other",
               "models/569/latest_net.pytorch": b"latest", "models/570/best_net.pytorch": b"570"}
    archive_zip = tmp_path / "models.zip"
    with zipfile.ZipFile(archive_zip, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    for archive in (archive_zip, write_tar(tmp_path / "models.tar.gz", members)):
        out = tmp_path / f"{archive.name}-best_net.pytorch"
        assert fetch.extract_member(archive, "569/best_net.pytorch", out) == "models/569/best_net.pytorch"
        assert out.read_bytes() == wanted

    def refused(archive: Path, match: str, member: str = "569/best_net.pytorch", **kw) -> None:
        out = tmp_path / "out"
        with pytest.raises(WeightsError, match=match) as err:
            fetch.extract_member(archive, member, out, **kw)
        assert "\n" not in str(err.value) and not out.exists() and not list(tmp_path.glob("out*"))

    traversal = tmp_path / "traversal.zip"
    with zipfile.ZipFile(traversal, "w") as zf:
        zf.writestr("../../569/best_net.pytorch", b"x")
    refused(traversal, "unsafe path")
    absolute = write_tar(tmp_path / "absolute.tar", {"/etc/569/best_net.pytorch": b"x"}, "w")
    refused(absolute, "unsafe path")
    link = tmp_path / "link.tar.gz"
    with tarfile.open(link, "w:gz") as tf:
        info = tarfile.TarInfo("models/569/best_net.pytorch")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    refused(link, "is a symbolic link, not a regular file")
    twice = write_tar(tmp_path / "twice.tar.gz", {"a/569/best_net.pytorch": b"1", "b/569/best_net.pytorch": b"2"})
    refused(twice, "several members ending in '569/best_net.pytorch'")
    refused(archive_zip, r"holds no member '571/best_net.pytorch' \(it has 4 members\)", member="571/best_net.pytorch")
    refused(archive_zip, "claims 20 bytes, more than the 10 allowed", limit=10)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes((tmp_path / "models.tar.gz").read_bytes()[:60])
    refused(truncated, "is not a readable tar archive")


# -- the progress bar ----------------------------------------------------------------------------------

def test_progress_bar_with_rate_only_on_a_terminal(tmp_path, serve, monkeypatch, capfd):
    _, path = nin_release(tmp_path)
    server = serve({"/file.tar.gz": path})
    fetch.download(server.url + "/file.tar.gz", tmp_path / "plain", name=NIN)
    assert (tmp_path / "plain").read_bytes() == path.read_bytes()
    assert capfd.readouterr().err == ""  # stderr is not a terminal: no bar

    master, slave = pty.openpty()  # a terminal
    terminal = os.fdopen(slave, "w")
    monkeypatch.setattr(sys, "stderr", terminal)
    try:
        fetch.download(server.url + "/file.tar.gz", tmp_path / "quiet", name=NIN, progress=False)  # --no-progress
        terminal.flush()
        quiet = select.select([master], [], [], 0.5)[0]
        fetch.download(server.url + "/file.tar.gz", tmp_path / "bar", name=NIN)
        terminal.flush()
        drawn = ""
        while select.select([master], [], [], 1.0)[0]:
            drawn += os.read(master, 1 << 16).decode(errors="replace")
    finally:
        monkeypatch.undo()
        terminal.close()
        os.close(master)
    assert (tmp_path / "bar").read_bytes() == path.read_bytes() == (tmp_path / "quiet").read_bytes()
    assert NIN in drawn and "B/s" in drawn and not quiet


# -- the command line ----------------------------------------------------------------------------------

def test_fetch_all_reports_every_release_and_fails_if_one_fails(tmp_path, serve, capsys):
    _, path = nin_release(tmp_path)
    server = serve({url_path(NIN): path})  # only one release on this mirror: the others answer 404
    res = run_zoo("fetch", "--all")
    assert res.returncode == 1
    direct, manual = fetch.direct_releases(), ["byol_resnet50", "simclr_resnet50"]
    out = res.stdout.strip().splitlines()
    assert out[-1] == f"1 fetched, 0 already cached, 2 manual, {len(direct) - 1} failed"
    assert [line.split(":")[0] for line in out[:-1]] == sorted([NIN, *manual])
    assert any(line.startswith(f"{NIN}: fetched {server.url}") for line in out)
    assert all(any(line.startswith(f"{m}: manual download: sslzoo has no converter") for line in out) for m in manual)
    errors = res.stderr.strip().splitlines()
    assert sorted(line.split(":")[1].strip() for line in errors) == sorted(set(direct) - {NIN})
    assert all(line.startswith("error: ") and "answered HTTP 404" in line for line in errors)
    hub = LocalHub()
    assert list(hub.root.glob("models--*")) == [hub.repo_dir(zoo.get_model_entry(NIN).weights.hub_repo)]

    manual_one = run_zoo("fetch", "simclr_resnet50")
    assert manual_one.returncode == 1 and manual_one.stdout == ""
    assert manual_one.stderr.count("\n") == 1
    assert manual_one.stderr.startswith("error: simclr_resnet50: sslzoo has no converter for the original release "
                                        "https://storage.cloud.google.com/")

    assert zoo_main(["fetch"]) == 2 and "give model NAMEs or --all" in capsys.readouterr().err
    assert zoo_main(["fetch", "deepcluster_alexnt"]) == 2
    assert "did you mean 'deepcluster_alexnet'" in capsys.readouterr().err
    assert zoo_main(["fetch", "rotnet_nin_fmnist"]) == 1
    assert "sslzoo trains this model itself" in capsys.readouterr().err
    assert zoo_main(["info", "deepcluster_alexnet"]) == 0
    assert "`zoo fetch deepcluster_alexnet`" in capsys.readouterr().out
