"""``zoo serve INDEX``: the index and its model behind HTTP (FastAPI on uvicorn).

The index and the model named in its metadata are opened once, by the same function as
``zoo search`` (``export.query.open_indexed_model``), and queries are decoded, embedded and
searched by the same code, so the service and the command give the same answer for the same image.

=====================  ===========================================================================
``GET /health``        200 ``{"status": "ok", "ready": true, ...}`` once the index and model are loaded
``POST /search?k=K``   an image (multipart field ``image``, or the raw request body) -> its K
                       nearest indexed images ``{"results": [{"id", "score", "metadata"}]}``
``POST /embed``        an image -> ``{"embedding": [...], "dim": D}``
``GET /``              a page: upload a query image, or ``/?id=ID&k=K`` searches with an indexed
                       image; every result links to its own search
``GET /thumbnails/R``  a small JPEG of indexed image R (row R of the index); only indexed files
=====================  ===========================================================================

Requests that arrive together are embedded in one engine call (``export.batching.MicroBatcher``).
An upload is bounded (``--max-upload-mb``: 413, checked on the declared length and on the bytes as
they arrive); an empty one is 400, one that is not an image 415, a bad ``k`` 422, each with a
one-line ``{"error": "..."}``. Every request is logged on one line with its status and timing.
FastAPI, uvicorn and python-multipart are the optional extra ``sslzoo[serve]``: they are imported
only here, when the service starts.
"""


import asyncio
import base64
import html
import io
import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote, urlencode

import click
import numpy as np

from zoo.errors import UsageError, ZooError

from export.batching import MicroBatcher
from export.options import MAX_BATCH, MAX_K, MAX_THREADS

LOG = logging.getLogger("sslzoo.serve")
INSTALL_HINT = "pip install 'sslzoo[serve]'"
DEFAULT_K = 5
THUMBNAIL_PIXELS = 160  # longer side of a thumbnail
THUMBNAILS_CACHED = 2048  # ~10 KB each
CONFIG_ENV = "SSLZOO_SERVE_CONFIG"  # how `--workers N` hands the configuration to each worker process


class RequestError(Exception):
    """A request the service refuses: its HTTP status and a one-line message for ``{"error": ...}``."""

    def __init__(self, status: int, message: str):
        super().__init__(" ".join(str(message).split()))
        self.status = status


@dataclass(frozen=True)
class ServeConfig:
    index_dir: str
    max_upload_bytes: int = 20_000_000
    max_batch: int = 32
    batch_wait_s: float = 0.005
    threads: int | None = None


def require_serve_packages() -> None:
    """One line naming the extra to install, instead of an ImportError, when the stack is missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
        try:
            import python_multipart  # noqa: F401
        except ImportError:
            import multipart  # noqa: F401  (python-multipart before 0.0.13)
    except ImportError as err:
        raise UsageError(f"zoo serve needs FastAPI, uvicorn and python-multipart ({err.name or 'one'} is not "
                         f"installed): {INSTALL_HINT}") from None


def parse_k(text: str | None, default: int = DEFAULT_K) -> int:
    """``k`` from a query string or form field: a whole number from 1 to MAX_K (422 otherwise)."""
    if text is None or text == "":
        return default
    value = text.strip()
    if not value.isdigit() or not 1 <= int(value) <= MAX_K:
        raise RequestError(422, f"k must be a whole number from 1 to {MAX_K}, got {text[:40]!r}")
    return int(value)


def thumbnail_jpeg(image: np.ndarray, pixels: int = THUMBNAIL_PIXELS) -> bytes:
    """An (H, W, 3) uint8 image as a JPEG whose longer side is at most ``pixels``."""
    from PIL import Image

    img = Image.fromarray(image)
    img.thumbnail((pixels, pixels))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def page_link(image_id: str, k: int) -> str:
    return "/?" + urlencode({"id": image_id, "k": k}, quote_via=quote)


def thumbnail_url(row: int) -> str:
    return f"/thumbnails/{row}"


def render_page(about: str, k: int, query: dict | None = None, results: list[dict] = (), error: str | None = None,
                max_upload_mb: float = 20) -> str:
    """The search page, rendered on the server (results are <img> tags, no script).

    ``query``: {"label", "src"}; ``results``: [{"id", "score", "row"}] as ``IndexedModel.neighbours`` gives them.
    """
    e = html.escape
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8"><title>sslzoo search</title>', "<style>",
        "body{font-family:sans-serif;margin:1.5em;background:#fafafa;color:#222}",
        "figure{display:inline-block;margin:.4em;padding:.4em;background:#fff;border:1px solid #ccc;"
        "vertical-align:top;width:170px;text-align:center}",
        "figure img{max-width:160px;max-height:160px}figcaption{font-size:12px;word-break:break-all}",
        ".query{border:2px solid #246}.error{color:#a00;font-weight:bold}",
        "</style></head><body>", "<h1>sslzoo search</h1>", f'<p class="about">{e(about)}</p>',
        '<form method="post" action="/" enctype="multipart/form-data">',
        f'<label>query image (at most {max_upload_mb:g} MB) <input type="file" name="image" accept="image/*" '
        'required></label> ',
        f'<label>k <input type="number" name="k" min="1" max="{MAX_K}" value="{k}"></label> ',
        '<button type="submit">search</button></form>',
    ]
    if error:
        parts.append(f'<p class="error">{e(error)}</p>')
    if query:
        parts += ['<section id="query"><h2>query</h2>',
                  f'<figure class="query"><img src="{e(query["src"])}" alt="query">'
                  f'<figcaption>{e(query["label"])}</figcaption></figure></section>']
    if query or results:
        parts.append(f'<section id="results"><h2>{len(results)} nearest</h2>')
        for rank, hit in enumerate(results, 1):
            parts.append(
                f'<figure class="result" data-rank="{rank}" data-id="{e(hit["id"])}" data-score="{hit["score"]:.6f}">'
                f'<a href="{e(page_link(hit["id"], k))}"><img src="{thumbnail_url(hit["row"])}" alt="{e(hit["id"])}"></a>'
                f'<figcaption>#{rank} score <span class="score">{hit["score"]:.4f}</span><br>{e(hit["id"])}'
                "</figcaption></figure>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


class Service:
    """The loaded index and model, the batcher in front of the engine, and the thumbnails."""

    def __init__(self, searcher, config: ServeConfig, images_root: Path | None = None):
        self.searcher, self.config = searcher, config
        self.images_root = images_root or Path.cwd()  # relative ids are paths from where the service runs
        self.rows = {image_id: row for row, image_id in enumerate(searcher.ids)}
        self.batcher = MicroBatcher(self._run_batch, max_batch=config.max_batch, max_wait_s=config.batch_wait_s)
        self.thumbnail = lru_cache(maxsize=THUMBNAILS_CACHED)(self._make_thumbnail)

    @property
    def about(self) -> str:
        spec = self.searcher.spec
        return (f"{len(self.searcher.ids)} images in a {self.searcher.meta.get('type', '?')} index; model {spec.model} "
                f"({spec.layer}, {spec.dim}-d) on {self.searcher.engine.name}")

    def health(self) -> dict:
        spec = self.searcher.spec
        return {"status": "ok", "ready": True, "images": len(self.searcher.ids), "dim": int(spec.dim),
                "model": spec.model, "engine": self.searcher.engine.name,
                "index": {"dir": str(self.searcher.index_dir), "type": self.searcher.meta.get("type")}}

    def _run_batch(self, items: list[tuple[np.ndarray, int]]) -> list[tuple[np.ndarray, list | None]]:
        """One engine call for every queued query; one search per distinct k (k=0: embedding only)."""
        embeddings = self.searcher.embed(np.stack([row for row, _ in items]))
        hits: list = [None] * len(items)
        for k in sorted({k for _, k in items if k}):
            chosen = [i for i, (_, wanted) in enumerate(items) if wanted == k]
            for i, found in zip(chosen, self.searcher.neighbours(embeddings[chosen], k)):
                hits[i] = found
        return [(embeddings[i], hits[i]) for i in range(len(items))]

    async def query(self, prepare, k: int) -> tuple[np.ndarray, list | None, int]:
        """(embedding, neighbours or None for k=0, how many queries shared the engine call) of the
        row that ``prepare()`` decodes (in a thread; the batcher knows it is coming meanwhile)."""
        from starlette.concurrency import run_in_threadpool

        with self.batcher.coming():
            row = await run_in_threadpool(prepare)
        future = self.batcher.submit((row, k))
        embedding, hits = await asyncio.wrap_future(future)
        return embedding, hits, future.batch_size

    def decode_upload(self, data: bytes) -> np.ndarray:
        if not data:
            raise RequestError(400, "the upload is empty (0 bytes): send an image file")
        row, reason = self.searcher.decode(io.BytesIO(data), name="upload")
        if row is None:
            raise RequestError(415, reason)
        return row

    def row_of(self, image_id: str) -> int:
        row = self.rows.get(image_id)
        if row is None:
            raise RequestError(404, f"no image {image_id!r} in the index")
        return row

    def path_of(self, row: int) -> Path:
        from export.extract import unescape_id

        path = Path(unescape_id(self.searcher.ids[row]))
        return path if path.is_absolute() else self.images_root / path

    def decode_indexed(self, row: int) -> np.ndarray:
        prepared, reason = self.searcher.decode(str(self.path_of(row)))
        if prepared is None:
            raise RequestError(404, f"indexed image {self.searcher.ids[row]!r} cannot be read here: {reason}")
        return prepared

    def _make_thumbnail(self, row: int) -> bytes:
        from zoo.photos import read_image

        if not 0 <= row < len(self.searcher.ids):
            raise RequestError(404, f"no row {row} in the index (it has {len(self.searcher.ids)})")
        try:
            return thumbnail_jpeg(read_image(self.path_of(row)))
        except ZooError as err:
            raise RequestError(404, f"indexed image {self.searcher.ids[row]!r} cannot be read here: {err}") from None

    def close(self) -> None:
        self.batcher.close()


def neighbour_json(hit: dict) -> dict:
    return {"id": hit["id"], "score": hit["score"], "metadata": {"row": hit["row"], "thumbnail": thumbnail_url(hit["row"])}}


class _TooLarge(RequestError):
    pass


def _limited_uploads(app, max_bytes: int):
    """ASGI middleware: a request body longer than ``max_bytes`` is refused with 413, by its
    declared Content-Length before it is read, or (chunked uploads) as soon as it grows past it."""
    message = f"the upload is larger than the limit of {max_bytes / 1e6:g} MB (--max-upload-mb)"

    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > max_bytes:
            return await _send_json(send, 413, {"error": message})
        seen = 0

        async def counted():
            nonlocal seen
            event = await receive()
            seen += len(event.get("body", b""))
            if seen > max_bytes:
                raise _TooLarge(413, message)
            return event

        await app(scope, counted, send)
    return middleware


def _timed(app):
    """ASGI middleware: one log line per request with its status and time (and the batch it shared)."""
    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def sending(event):
            if event["type"] == "http.response.start":
                status[0] = event["status"]
            await send(event)
        try:
            await app(scope, receive, sending)
        finally:
            target = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
            batch = scope.get("sslzoo.batch_size")
            LOG.info("%s %s %d %.1f ms%s", scope["method"], target, status[0], 1e3 * (time.perf_counter() - start),
                     f" (batch of {batch})" if batch else "")
    return middleware


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})


def create_app(service: Service):
    """The ASGI application over a loaded ``Service`` (closed when the application shuts down)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    @asynccontextmanager
    async def lifespan(_app):
        yield
        service.close()

    app = FastAPI(title="sslzoo search", lifespan=lifespan, docs_url=None, redoc_url=None)
    _add_error_handlers(app)
    _add_api(app, service)
    _add_pages(app, service)
    app.add_middleware(lambda inner: _limited_uploads(inner, service.config.max_upload_bytes))
    app.add_middleware(_timed)
    return app


def _add_error_handlers(app) -> None:
    """Every refusal is ``{"error": "one line"}`` with its status."""
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(RequestError)
    async def refused(_request, err: RequestError):
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(_request, err: HTTPException):
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(ZooError)
    async def failed(_request, err: ZooError):  # the model or index failed on a valid query (non-finite output)
        return JSONResponse({"error": str(err)}, status_code=500)


async def _read_upload(request) -> tuple[bytes, dict]:
    """The image bytes (multipart field ``image``, or the whole body) and the other form fields."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await request.body(), {}
    async with request.form(max_files=1, max_fields=8) as form:
        image = form.get("image")
        if image is None or isinstance(image, str):
            raise RequestError(400, "send the image as the multipart file field 'image' "
                                    "(curl -F image=@photo.jpg) or as the request body")
        return await image.read(), {key: value for key, value in form.items() if isinstance(value, str)}


async def _query(service: Service, request, prepare, k: int):
    """(embedding, neighbours) of the row ``prepare()`` decodes; the batch it shared goes into the
    request's log line."""
    embedding, hits, batch = await service.query(prepare, k)
    request.scope["sslzoo.batch_size"] = batch
    return embedding, hits


def _add_api(app, service: Service) -> None:
    from fastapi import Request
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool

    @app.get("/health")
    async def health():
        return service.health()

    @app.post("/search")
    async def search_upload(request: Request):
        k = parse_k(request.query_params.get("k"))
        data, _ = await _read_upload(request)
        _, hits = await _query(service, request, lambda: service.decode_upload(data), k)
        return {"k": k, "model": service.searcher.spec.model, "results": [neighbour_json(h) for h in hits]}

    @app.post("/embed")
    async def embed_upload(request: Request):
        data, _ = await _read_upload(request)
        embedding, _ = await _query(service, request, lambda: service.decode_upload(data), 0)
        return {"model": service.searcher.spec.model, "dim": int(embedding.shape[0]),
                "embedding": [float(v) for v in embedding]}

    @app.get("/thumbnails/{row}")
    async def thumbnail(row: str):
        if not row.isdigit():
            raise RequestError(404, f"no row {row[:40]!r} in the index: thumbnails are /thumbnails/ROW, ROW a number")
        data = await run_in_threadpool(service.thumbnail, int(row))
        return Response(data, media_type="image/jpeg", headers={"cache-control": "max-age=3600"})


def _add_pages(app, service: Service) -> None:
    """``GET /`` (``?id=ID&k=K``: search with an indexed image) and ``POST /`` (the upload form);
    a refusal is shown in the page, with its status."""
    from fastapi import Request
    from fastapi.responses import HTMLResponse
    from starlette.concurrency import run_in_threadpool

    def page(k: int, status: int = 200, **kwargs) -> HTMLResponse:
        return HTMLResponse(render_page(service.about, k, max_upload_mb=service.config.max_upload_bytes / 1e6,
                                        **kwargs), status_code=status)

    @app.get("/", response_class=HTMLResponse)
    async def index_page(request: Request):
        k = DEFAULT_K
        try:
            k = parse_k(request.query_params.get("k"))
            image_id = request.query_params.get("id")
            if image_id is None:
                return page(k)
            row = service.row_of(image_id)
            _, hits = await _query(service, request, lambda: service.decode_indexed(row), k)
        except RequestError as err:
            return page(k, err.status, error=str(err))
        return page(k, query={"label": image_id, "src": thumbnail_url(row)}, results=hits)

    @app.post("/", response_class=HTMLResponse)
    async def upload_page(request: Request):
        k = DEFAULT_K
        try:
            data, fields = await _read_upload(request)
            k = parse_k(fields.get("k"))
            _, hits = await _query(service, request, lambda: service.decode_upload(data), k)
            picture = await run_in_threadpool(_upload_thumbnail, data)
        except RequestError as err:
            return page(k, err.status, error=str(err))
        return page(k, query={"label": "uploaded image", "src": picture}, results=hits)


def _upload_thumbnail(data: bytes) -> str:
    from zoo.photos import read_image

    return "data:image/jpeg;base64," + base64.b64encode(thumbnail_jpeg(read_image(io.BytesIO(data), "upload"))).decode()


def load_service(config: ServeConfig) -> Service:
    from export.query import open_indexed_model

    if config.threads:
        import faiss

        faiss.omp_set_num_threads(config.threads)
    return Service(open_indexed_model(config.index_dir, threads=config.threads), config)


def app_from_environment():
    """The application of one worker process under ``--workers N`` (uvicorn's factory)."""
    return create_app(load_service(ServeConfig(**json.loads(os.environ[CONFIG_ENV]))))


def _check_address(host: str, port: int) -> None:
    """A one-line error now, rather than uvicorn's exit once the model is loaded, if HOST:PORT cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise UsageError(f"--host {host!r}: {err.strerror}; give an address such as 127.0.0.1 or 0.0.0.0") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as err:
            raise UsageError(f"cannot listen on {host}:{port}: {err.strerror}; choose another --port or --host") from None


def _log_config() -> dict:
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"][LOG.name] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


@click.command("serve")
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; the service has no authentication).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(1, MAX_THREADS), default=1, show_default=True,
              help="Server processes, each with its own copy of the index and model.")
@click.option("--max-upload-mb", type=click.FloatRange(0, 1024, min_open=True), default=20.0, show_default=True,
              help="Largest accepted request body (413 above it).")
@click.option("--max-batch", type=click.IntRange(1, MAX_BATCH), default=32, show_default=True,
              help="Most queries embedded in one engine call.")
@click.option("--batch-wait-ms", type=click.FloatRange(0, 1000), default=5.0, show_default=True,
              help="How long a query waits for others to share its engine call.")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None,
              help="Engine and FAISS threads per worker [default: ZOO_THREADS or all CPUs].")
def serve_cmd(index_dir, host, port, workers, max_upload_mb, max_batch, batch_wait_ms, threads):
    """Serve INDEX_DIR (from `zoo index build`) over HTTP: /health, POST /search?k=K and /embed with an
    image upload, and a search page at / (/?id=ID searches with an indexed image).

    The index and its model are loaded once per worker; relative image ids are read from the
    current folder (start the service where `zoo extract` ran). Queries that arrive together share
    one engine call. Bad requests get a one-line JSON error: 400 empty upload, 413 over
    --max-upload-mb, 415 not an image, 422 bad k. Each request is logged with its time. Example:
    curl -F image=@query.jpg 'http://127.0.0.1:8000/search?k=5'
    """
    require_serve_packages()
    import uvicorn

    _check_address(host, port)
    config = ServeConfig(str(Path(index_dir).resolve()), max_upload_bytes=int(max_upload_mb * 1e6),
                         max_batch=max_batch, batch_wait_s=batch_wait_ms / 1e3, threads=threads)
    service = load_service(config)  # a bad index or model is one line here, before the port opens
    click.echo(f"serving {service.about} on http://{host}:{port} ({workers} worker{'s' * (workers > 1)})", err=True)
    common = dict(host=host, port=port, access_log=False, log_config=_log_config(), timeout_graceful_shutdown=10)
    if workers == 1:
        uvicorn.run(create_app(service), **common)
        return
    service.close()  # each worker process loads its own
    os.environ[CONFIG_ENV] = json.dumps(asdict(config))
    import inspect

    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters:  # uvicorn >= 0.30
        # a worker answers the supervisor's pings only once Python is up; on a busy machine that and
        # loading the model take longer than the default 5 s, and the worker was killed and restarted
        common["timeout_worker_healthcheck"] = 120
    uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=workers, **common)
