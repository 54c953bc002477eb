"""`zoo serve` (issue 18): a real uvicorn process on loopback answering real HTTP, its answers
against `zoo search`'s, its 4xx errors, micro-batching, and the page rendered by a real headless
Chromium (Debian's package; `make test` installs it)."""

import http.client
import io
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

from zoo.cli import main
from zoo.photos import load_photos

from export.batching import MicroBatcher
from export.serve import RequestError, parse_k, render_page

PHOTOS = 6
MAX_UPLOAD_MB = 0.2


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """Shipped photos as JPEG files, embedded by a shipped model through the real `zoo extract` and
    indexed by `zoo index build`: (photo folder, index folder)."""
    root = tmp_path_factory.mktemp("served")
    photos = root / "photos"
    photos.mkdir()
    for name, photo in list(load_photos().items())[:PHOTOS]:
        Image.fromarray(photo).save(photos / f"{name}.jpg", quality=90)
    # the engine named, not auto: this module-scoped fixture runs before conftest points ZOO_CACHE and
    # ZOO_ENGINE at a test folder, and an auto choice would measure engines into the user's cache
    assert main(["extract", "rotnet_nin_fmnist", str(photos), "-o", str(root / "emb"), "--engine", "onnx",
                 "--no-progress"]) == 0
    assert main(["index", "build", str(root / "emb"), "-o", str(root / "ix")]) == 0
    return photos, root / "ix"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(indexed, tmp_path_factory):
    """`zoo serve` in its own process on a free loopback port: (base URL, its log file)."""
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    port = _free_port()
    with open(log, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "zoo", "serve", str(indexed[1]), "--port", str(port),
                                 "--max-upload-mb", str(MAX_UPLOAD_MB), "--batch-wait-ms", "20"],
                                cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"zoo serve exited: {log.read_text()}"
            try:
                if _get(base + "/health")[0] == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline, f"zoo serve never answered: {log.read_text()}"
                time.sleep(0.2)
        yield base, log
    finally:
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.headers.get("content-type"), r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("content-type"), err.read()


def _post(url, body: bytes, content_type: str):
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _multipart(fields: dict) -> tuple[bytes, str]:
    """A multipart/form-data body: bytes values are files, str values plain fields."""
    boundary = "sslzoo-test-boundary"
    parts = []
    for name, value in fields.items():
        if isinstance(value, bytes):
            head = f'Content-Disposition: form-data; name="{name}"; filename="{name}.bin"\r\n' \
                   "Content-Type: application/octet-stream\r\n\r\n"
            parts.append(f"--{boundary}\r\n{head}".encode() + value + b"\r\n")
        else:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _search(base, image: bytes, k: int):
    return _post(f"{base}/search?k={k}", *_multipart({"image": image}))


def _same_neighbours(got: list[dict], expected: list[dict]):
    assert [h["id"] for h in got] == [h["id"] for h in expected]
    np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in expected], atol=1e-5)


def test_serve_answers_health_and_its_search_agrees_with_zoo_search(server, indexed, capsys):
    base, _ = server
    photos, ix = indexed
    status, _, body = _get(base + "/health")
    health = json.loads(body)
    assert status == 200 and health["ready"] is True and health["images"] == PHOTOS
    assert health["model"] == "rotnet_nin_fmnist" and health["dim"] > 0

    query = photos / "coffee.jpg"
    capsys.readouterr()
    assert main(["search", str(ix), str(query), "-k", "4", "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)[0]["results"]
    assert len(expected) == 4 and expected[0]["id"] == str(query)
    status, answer = _search(base, query.read_bytes(), 4)
    assert status == 200 and answer["k"] == 4
    _same_neighbours(answer["results"], expected)
    rows = [h["metadata"]["row"] for h in answer["results"]]
    assert all(h["metadata"]["thumbnail"] == f"/thumbnails/{r}" for h, r in zip(answer["results"], rows))
    status, raw = _post(f"{base}/search?k=4", query.read_bytes(), "image/jpeg")  # the bare body works too
    assert status == 200
    _same_neighbours(raw["results"], expected)

    status, embedded = _post(f"{base}/embed", *_multipart({"image": query.read_bytes()}))
    vector = np.asarray(embedded["embedding"])
    assert status == 200 and embedded["dim"] == health["dim"] == len(vector)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_concurrent_requests_get_the_answers_of_sequential_ones(server, indexed):
    base, log = server
    images = [p.read_bytes() for p in sorted(indexed[0].iterdir())]
    sequential = [_search(base, image, 3) for image in images]
    with ThreadPoolExecutor(len(images) * 2) as pool:
        concurrent = list(pool.map(lambda image: _search(base, image, 3), images * 2))
    for (s_status, s_answer), (c_status, c_answer) in zip(sequential * 2, concurrent):
        assert s_status == c_status == 200
        _same_neighbours(c_answer["results"], s_answer["results"])
    batches = [int(b) for b in re.findall(r"POST /search\?k=3 200 [\d.]+ ms \(batch of (\d+)\)", log.read_text())]
    assert len(batches) >= 3 * len(images)  # every search is logged with its time and the batch it shared


def _refused_unread(base, path: str, headers: dict, chunks=()):
    """POST with the given headers and chunks, then read the answer without sending the rest: the
    service answers a body that is too large before it has all been sent."""
    connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=60)
    try:
        connection.putrequest("POST", path)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        for chunk in chunks:
            connection.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_bad_uploads_get_one_line_json_errors_and_every_request_a_timed_log_line(server, indexed):
    base, log = server
    photo = (indexed[0] / "coffee.jpg").read_bytes()
    limit = int(MAX_UPLOAD_MB * 1e6)
    chunk = bytes(range(256)) * 256  # 64 KiB
    checks = [
        (_search(base, b"", 3), 400, "empty"),
        (_search(base, b"just some text, not a picture", 3), 415, "not an image"),
        (_search(base, photo, 0), 422, "k must be"),
        (_post(f"{base}/search?k=ten", photo, "image/jpeg"), 422, "k must be"),
        (_post(f"{base}/search?k=3", *_multipart({"picture": photo})), 400, "field 'image'"),
        (_post(f"{base}/embed", b"", "image/png"), 400, "empty"),
        # too large by its declared length, refused before the body is read
        (_refused_unread(base, "/search?k=3", {"Content-Type": _multipart({})[1], "Content-Length": str(limit + 1)}),
         413, "--max-upload-mb"),
        # a chunked upload declares no length: cut off once it passes the limit
        (_refused_unread(base, "/search", {"Content-Type": "image/png", "Transfer-Encoding": "chunked"},
                         [chunk] * (limit // len(chunk) + 1)), 413, "--max-upload-mb"),
    ]
    for (status, body), expected, words in checks:
        assert status == expected and words in body["error"] and "\n" not in body["error"], (expected, body)
    for path in ("/thumbnails/999", "/thumbnails/-1", "/thumbnails/..%2F..%2Fetc%2Fpasswd", "/?id=%2Fetc%2Fpasswd"):
        assert _get(base + path)[0] == 404, path
    logged = log.read_text()
    for line in ("POST /search?k=3 400", "POST /search?k=3 415", "POST /search?k=3 413", "POST /search?k=0 422",
                 "POST /search 413", "GET /thumbnails/999 404"):
        assert re.search(re.escape(line) + r" \d+\.\d ms", logged), line
    assert "Traceback" not in logged


class _Figures(HTMLParser):
    """The page's query and result figures: (class, data-* attributes, img src)."""

    def __init__(self):
        super().__init__()
        self.figures, self._open = [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self._open = {"class": attrs.get("class"), **{k: v for k, v in attrs.items() if k.startswith("data-")}}
            self.figures.append(self._open)
        elif tag == "img" and self._open is not None:
            self._open["src"] = attrs.get("src")

    def handle_endtag(self, tag):
        if tag == "figure":
            self._open = None


def _browser() -> str:
    for name in ("chromium-headless-shell", "chromium"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("no headless Chromium here: `make test` apt-installs chromium-headless-shell (Debian's package)")


def _chromium(*args, profile):
    res = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                          "--window-size=1000,700", *args], capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.decode()


def test_headless_chromium_renders_the_page_of_an_indexed_image_with_its_k_thumbnails(server, indexed, tmp_path):
    base, _ = server
    photos, _ = indexed
    query, k = photos / "chelsea.jpg", 4
    status, answer = _search(base, query.read_bytes(), k)
    assert status == 200
    url = f"{base}/?id={urllib.request.quote(str(query), safe='')}&k={k}"
    parser = _Figures()
    parser.feed(_chromium("--dump-dom", url, profile=tmp_path / "profile"))
    queries = [f for f in parser.figures if f["class"] == "query"]
    results = [f for f in parser.figures if f["class"] == "result"]
    assert len(queries) == 1 and len(results) == k
    assert [r["data-id"] for r in results] == [h["id"] for h in answer["results"]]
    np.testing.assert_allclose([float(r["data-score"]) for r in results], [h["score"] for h in answer["results"]],
                               atol=1e-5)
    for figure in queries + results:  # every thumbnail the page shows is served, and is an image
        status, content_type, body = _get(base + figure["src"])
        assert status == 200 and content_type == "image/jpeg", figure
        assert max(Image.open(io.BytesIO(body)).size) <= 160

    shot = tmp_path / "page.png"
    _chromium(f"--screenshot={shot}", url, profile=tmp_path / "profile")
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (700, 1000, 3)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000, "a blank page"
    print(f"screenshot: {shot}")

    status, _, page = _get(f"{base}/?id=nosuch")  # the page reports errors in the page
    assert status == 404 and b"no image &#x27;nosuch&#x27; in the index" in page


def test_the_page_takes_an_uploaded_query(server, indexed):
    base, _ = server
    body, content_type = _multipart({"image": (indexed[0] / "astronaut.jpg").read_bytes(), "k": "2"})
    request = urllib.request.Request(base + "/", data=body, method="POST", headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=60) as r:
        page = r.read().decode()
    assert page.count('class="result"') == 2 and 'src="data:image/jpeg;base64,' in page


def test_micro_batcher_runs_queued_items_in_one_call_and_gives_each_its_own_result(indexed):
    from export.query import open_indexed_model

    searcher = open_indexed_model(indexed[1])
    rows = [searcher.decode(str(p))[0] for p in sorted(indexed[0].iterdir())]
    batcher = MicroBatcher(searcher.embed, max_batch=4, max_wait_s=0.0, start=False)
    futures = [batcher.submit(row) for row in rows]  # all queued before the worker starts
    batcher.start()
    got = np.stack([f.result(timeout=60) for f in futures])
    assert batcher.batch_sizes == [4, 2] and [f.batch_size for f in futures] == [4, 4, 4, 4, 2, 2]
    np.testing.assert_allclose(got, searcher.embed(np.stack(rows)), atol=1e-5)

    sizes = MicroBatcher(lambda items: [len(items)] * len(items), max_batch=8, max_wait_s=600)
    assert sizes.submit("alone").result(timeout=60) == 1  # nobody else on the way: no waiting
    with sizes.coming():  # a request decoding its image: the worker waits for it
        first, second = sizes.submit("first"), sizes.submit("second")
    assert first.result(timeout=60) == second.result(timeout=60) == 2
    sizes.close()

    def refuse(items):
        raise RequestError(500, "engine failed")
    failing = MicroBatcher(refuse, start=False)
    doomed = [failing.submit(row) for row in rows[:2]]
    failing.start()
    for f in doomed:
        with pytest.raises(RequestError, match="engine failed"):
            f.result(timeout=60)
    batcher.close()
    failing.close()


def test_parse_k_and_the_page_escape_what_they_are_given():
    assert parse_k(None) == parse_k("") == 5 and parse_k("7") == 7
    for bad in ("0", "-1", "x", "1.5", "10001"):
        with pytest.raises(RequestError, match="k must be"):
            parse_k(bad)
    page = render_page("about", 3, query={"label": "<b>q</b>", "src": "/thumbnails/0"},
                       results=[{"id": 'a"<script>&.jpg', "score": 0.5, "row": 0}])
    assert "<script>" not in page and "a&quot;&lt;script&gt;&amp;.jpg" in page
    assert 'href="/?id=a%22%3Cscript%3E%26.jpg&amp;k=3"' in page


def test_serve_refuses_in_one_line_without_its_packages_a_bad_index_or_a_busy_port(indexed, monkeypatch, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", str(indexed[1]), "--port", str(busy.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot listen on 127.0.0.1:") and err.count("\n") == 1
    assert main(["serve", str(indexed[1].parent / "nothing"), "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err
    assert "is not an index folder" in err and err.count("\n") == 1
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if `sslzoo[serve]` was not installed
    assert main(["serve", str(indexed[1])]) == 2
    err = capsys.readouterr().err
    assert "pip install 'sslzoo[serve]'" in err and err.count("\n") == 1
