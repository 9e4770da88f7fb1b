"""The FastAPI application: one route per loaded task, micro-batched, JSON errors, and a page at ``/``.

Requests carry one image: the file itself as the body (``image/jpeg``, ``image/png``, ...,
``application/octet-stream``), ``multipart/form-data`` with an ``image`` file field, or JSON
``{"image": "<base64>"}``; or several: multipart with ``images`` fields (or the ``image`` field repeated), or
JSON ``{"images": ["<base64>", ...]}``, answered with a list in their order (a bad image gets its own
``{"error": ...}`` there, the others their answers). Options go in the query string (``model``, ``top_k``,
``k``, ``draw``). Responses are the JSON ``--json`` prints for that image on the command line. Retrieval hits
carry the index row's ``id``, and ``GET /v1/retrieve/thumbnail?id=N`` shows that indexed file, downscaled.

For production (see ``operations.py``): API keys, CORS, a per-client concurrency limit, request ids and JSON
logs, Prometheus metrics at ``/metrics``, ``/livez`` and ``/readyz``, and a graceful shutdown that answers every
accepted request (those waiting in the micro-batcher too) before the process exits.

Hostile clients are refused without disturbing the others: bodies are read as they stream in and refused
(413) as soon as they pass the size limit, a request whose headers and body do not arrive within the
request deadline is answered 408 or disconnected, ``Host`` headers naming another site are refused (400,
against DNS rebinding), and an image the model fails on fails its own request only. ``/docs`` is served
with the Swagger UI files shipped in ``static/`` (no CDN).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import inspect
import ipaddress
import itertools
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from cnnapps import __version__
from cnnapps.errors import CnnappsError
from cnnapps.serve.batcher import MicroBatcher
from cnnapps.serve.operations import ApiKeyCheck, ClientLimit, Lifecycle, RequestLog, ServiceMetrics, use_json_logs
from cnnapps.terminal import json_safe

if TYPE_CHECKING:  # pragma: no cover
    import uvicorn

MAX_TOP_K = 20
#: images one request may carry, unless ``max_images`` says otherwise
MAX_IMAGES = 64
#: the frames a clip sent to a /video route may have (after its vid_stride): a minute at 30 frames a second; its
#: seconds alone let a small file of many small frames (1000 frames a second) hold the model for minutes
MAX_CLIP_FRAMES = 1800
#: the files a multipart request may carry beside its images
OTHER_FILES = 16
#: the files a multipart request to a /video route may carry, its 'video' field's included
CLIP_FILES = 4
#: a command-line option a predictor's message tells its user to give (``; use --tile``, ``in tiles: --tile``):
#: no HTTP client can, so the server's answers leave it out
_CLI_HINT = re.compile(r"(?:; use|:) --[a-z][a-z-]*")
#: the names a Host header may always carry (IP addresses are accepted too: DNS rebinding needs a name)
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
STATIC = Path(__file__).with_name("static")
#: content types taken as the image file itself (``curl --data-binary @cat.jpg -H 'content-type: image/jpeg'``)
RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/tiff", "image/bmp", "image/gif",
                   "application/octet-stream")  # fmt: skip
#: the longest side of a thumbnail at most, in pixels
MAX_THUMBNAIL = 512
_JSON_SHAPE = 'JSON body must be {"image": "<base64 of the image file>"} or {"images": ["<base64>", ...]}'
_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "image": {"type": "string", "format": "binary"},
                    "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                },
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "image": {"type": "string", "format": "byte"},
                    "images": {"type": "array", "items": {"type": "string", "format": "byte"}},
                },
            }
        },
        **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in RAW_IMAGE_TYPES},
    },
}

#: the video routes' bodies: the clip itself, or multipart with a ``video`` field
_CLIP_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"video": {"type": "string", "format": "binary"}},
                "required": ["video"],
            }
        },
        **{
            kind: {"schema": {"type": "string", "format": "binary"}}
            for kind in ("video/mp4", "video/webm", "video/x-matroska", "video/quicktime", "application/octet-stream")
        },
    },
}


@functools.lru_cache(maxsize=256)
def _query_options(endpoint: Any) -> tuple[str, ...]:
    """The query-string options an endpoint takes: its parameters but the request (read once per endpoint)."""
    return tuple(name for name in inspect.signature(endpoint).parameters if name != "request")


def route_signature(options: dict[str, tuple[type, Any, Any, Any]], **extra: tuple[type, Any]) -> inspect.Signature:
    """A task route's parameters: the request, ``model``, the task's own options (its ``route_options``: ``top_k``,
    ``draw``...) and ``extra`` (name: (type, default)). What FastAPI reads the query string by and shows in the API
    docs, and what :func:`known_query` holds a query to: every route took ``top_k`` and ``draw`` before, and
    ``/v1/embed?draw=true`` was answered without a drawing."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    taken = {name: (kind, default) for name, (kind, default, _, _) in options.items()} | extra
    return inspect.Signature([
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
        inspect.Parameter("model", keyword, default=None, annotation=str | None),
        *(inspect.Parameter(name, keyword, default=value, annotation=kind) for name, (kind, value) in taken.items()),
    ])  # fmt: skip


def known_query(request: Request, endpoint: Any) -> None:
    """Refuse (422) a query-string option the route does not take, naming the route's own (a misspelt or another
    route's option was silently ignored: ``/v1/caption?beam=3`` answered greedily)."""
    if not request.query_params:
        return
    takes = _query_options(endpoint)
    unknown = [name for name in request.query_params if name not in takes]
    if unknown:
        raise RequestError(422, f"{unknown[0]}: not an option of {request.url.path} (it takes {', '.join(takes)})")


class RequestError(Exception):
    """A request the server refuses: HTTP status and the reason, sent as ``{"error": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _host_name(header: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8000`` -> ``::1``, ``LocalHost.:80`` -> ``localhost``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    if header.count(":") == 1:
        header = header.split(":")[0]
    return header.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheck:
    """ASGI middleware: requests whose ``Host`` is neither an IP address nor one of ``allowed`` get 400.

    A page on another site that rebinds its DNS name to this machine sends its own name as the Host, so
    it cannot read the answers (which hold gallery paths); ``"*"`` in ``allowed`` accepts any host. A request
    without a Host header passes (HTTP/1.0 health probes send none; browsers always send one)."""

    def __init__(self, app: Callable[..., Awaitable[None]], allowed: Sequence[str]) -> None:
        self.app = app
        self.any = "*" in allowed
        self.allowed = {_host_name(a) for a in allowed if a != "*"}

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if self.any or scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
        if header is None:  # HTTP/1.0 health probes send none; a browser always sends its page's host
            return await self.app(scope, receive, send)
        name = _host_name(header)
        if name in self.allowed or _is_ip(name):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        names = ", ".join(sorted(a for a in self.allowed if not _is_ip(a)))
        message = (f"host {header!r} is not served here: reach it by IP address or as {names}, "
                   f"or start the server with --allowed-host {name or 'NAME'}")  # fmt: skip
        await JSONResponse({"error": message}, status_code=400)(scope, receive, send)


def _deadline_protocol(request_timeout_s: float, linger_s: float) -> type:
    """uvicorn's h11 protocol with a deadline on every request: its headers and body must arrive within
    ``request_timeout_s`` of the connection opening (or of the previous answer on a kept-alive connection),
    else the connection is closed. uvicorn itself waits for ever on a client that sends part of its headers.
    After an answer given before the body was in (413, 408), the rest is dropped for ``linger_s`` at most."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class DeadlineProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _grace_given = False

        def _arm(self, seconds: float) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._grace_given = False
            self._deadline = self.loop.call_later(seconds, self._expire)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(request_timeout_s)

        def on_response_complete(self) -> None:
            early = self.conn.their_state is h11.SEND_BODY  # answered before the whole body came
            super().on_response_complete()
            self._arm(linger_s if early else request_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _expire(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
                return  # the request is in: the model is working on it
            reading = self.cycle is not None and not self.cycle.response_started
            if self.conn.their_state is h11.SEND_BODY and reading and not self._grace_given:
                # the app is reading the body and answers 408 at its own deadline: give it a moment
                self._grace_given = True
                self._deadline = self.loop.call_later(1.0, self._expire)
                return
            self.transport.close()

    return DeadlineProtocol


def server_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, keep_alive_s: float = 5.0,
                  log_level: str = "warning",
                  forwarded_allow_ips: str | Sequence[str] | None = None) -> uvicorn.Config:  # fmt: skip
    """uvicorn's ``Config`` for ``app``: idle kept-alive connections close after ``keep_alive_s``, and a request
    must arrive whole within the app's ``request_timeout_s`` (what ``cnnapps serve`` and ``running`` use).

    The client of a request is the peer that connected, whatever ``X-Forwarded-For`` says (a client could name
    any address there, and so escape the per-client limit), unless ``forwarded_allow_ips`` names the proxies
    trusted to set it (addresses or networks, comma-separated or a list; ``"*"``: any peer): then the address
    they forward is the client, as uvicorn's ``--forwarded-allow-ips`` does."""
    import uvicorn

    request_timeout_s = getattr(app.state, "request_timeout_s", 60.0)
    protocol = _deadline_protocol(request_timeout_s, min(keep_alive_s, request_timeout_s))
    logs: dict[str, Any] = {}
    if getattr(app.state, "log_format", "text") == "json":  # uvicorn's own messages as JSON lines too
        use_json_logs("uvicorn")
        logs["log_config"] = None
    proxies: dict[str, Any] = {"proxy_headers": False}
    if forwarded_allow_ips:
        trusted = forwarded_allow_ips if isinstance(forwarded_allow_ips, str) else ",".join(forwarded_allow_ips)
        proxies = {"proxy_headers": True, "forwarded_allow_ips": trusted}
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol,
                          timeout_keep_alive=keep_alive_s, **proxies, **logs)  # type: ignore[arg-type]  # fmt: skip


def create_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, keep_alive_s: float = 5.0,
                  shutdown_delay_s: float = 0.0, log_level: str = "warning",
                  forwarded_allow_ips: str | Sequence[str] | None = None) -> uvicorn.Server:  # fmt: skip
    """uvicorn's ``Server`` for ``app`` (``server_config``'s deadlines and proxies) that shuts down gracefully. On
    SIGTERM or SIGINT, ``/readyz`` answers 503 at once; the server goes on serving for ``shutdown_delay_s`` (time for
    a load balancer to see it), then stops accepting connections, answers every request it has (those waiting in a
    micro-batcher too), closes the models and returns, so the process exits 0. A second signal cuts the delay
    short; Ctrl+C once more stops without waiting for requests (uvicorn's force exit)."""
    import signal

    import uvicorn

    lifecycle: Lifecycle | None = getattr(app.state, "lifecycle", None)

    def drain() -> None:
        if lifecycle is not None:
            lifecycle.draining = True

    class GracefulServer(uvicorn.Server):
        exit_at: float | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            drain()
            if shutdown_delay_s > 0 and self.exit_at is None and not self.should_exit:
                self.exit_at = time.monotonic() + shutdown_delay_s
                return
            super().handle_exit(sig, frame)
            if self.force_exit:  # Ctrl+C once more: the requests' tasks are cancelled, not failed
                logging.getLogger("uvicorn.error").addFilter(_quiet_cancelled)

        async def on_tick(self, counter: int) -> bool:
            if self.exit_at is not None and time.monotonic() >= self.exit_at:
                self.should_exit = True
            return await super().on_tick(counter)

        async def shutdown(self, sockets: Any = None) -> None:
            drain()
            await super().shutdown(sockets)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            """uvicorn's, without raising the signal again once shut down: a graceful stop exits 0."""
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = [signal.SIGINT, signal.SIGTERM]
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return GracefulServer(server_config(app, host, port, keep_alive_s, log_level, forwarded_allow_ips))


def _quiet_cancelled(record: logging.LogRecord) -> bool:
    """False for uvicorn's traceback of a request task cancelled by a forced exit (about 45 lines for each streamed
    clip cut short), and for the lifespan's (a traceback as text, Starlette's message)."""
    if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
        return False
    return not (isinstance(record.msg, str) and record.msg.rstrip().endswith("asyncio.exceptions.CancelledError"))


def _clip_options(task: Any) -> dict[str, tuple[type, Any, Any, Any]]:
    """The options of a task's /video route besides ``model`` and ``vid_stride``: its image route's but ``draw`` (a
    frame's answer is JSON: nothing is drawn)."""
    return {name: option for name, option in task.route_options.items() if name != "draw"}


@dataclass
class Served:
    """One loaded model: its name in requests, its heads (name -> task), its predictor and batcher.

    A multi-head model file is one entry: one trunk in memory for all its heads, one pass per batch."""

    name: str
    spec: str
    heads: dict[str, str]  # head name -> task (a one-task model: {task: task})
    predictor: Any  # predict(images, top_k=, heads=) -> MultiTaskResult per image
    batcher: MicroBatcher

    def routes(self) -> list[tuple[str, str, str]]:
        """(route, task, head) for each head this model answers through its task's route."""
        from cnnapps.apps.tasks import TASKS

        return [(f"/v1/{TASKS[task].route}", task, head) for head, task in self.heads.items()]

    def info(self) -> list[dict[str, Any]]:
        """One entry per head: name (the ``model`` parameter), spec, task, route, the route's query options, its
        clips' route and options, engine, classes or embedding size."""
        from cnnapps.apps.tasks import TASKS

        entries = []
        for route, task, head in self.routes():
            info: dict[str, Any] = {"name": self.label(head), "spec": self.spec, "task": task, "route": route,
                                    "options": ["model", *TASKS[task].route_options], "video_route": f"{route}/video",
                                    "video_options": ["model", *_clip_options(TASKS[task]), "vid_stride"],
                                    "engine": getattr(self.predictor, "engine", None)}  # fmt: skip
            if len(self.heads) > 1:
                info["head"] = head
            entries.append({**info, **self.sizes(head)})
        return entries

    def sizes(self, head: str) -> dict[str, int]:
        """``classes`` (how many a head tells apart) or ``dim`` (an embedding's size) of one head, where known."""
        heads = getattr(self.predictor, "heads", None)  # a model file's heads on one trunk: (info, adapter, model)
        if isinstance(heads, dict) and head in heads:
            model = heads[head][2]
            if hasattr(model, "embed_features"):  # an embedding: its projection's size, or the trunk's pooled map's
                projection = getattr(model, "projection", None)
                return {"dim": int(projection.out_features if projection is not None else model.backbone.embedding_dim)}
            names = getattr(model, "class_names", None) or getattr(getattr(model, "spec", None), "class_names", None)
            return {"classes": len(names)} if names else {}  # a captioner has words, not classes
        predictor = getattr(self.predictor, "predictor", None)  # a one-task model's own predictor
        found = {}
        if predictor is not None and hasattr(predictor, "class_names"):
            found["classes"] = len(predictor.class_names)
        if predictor is not None and hasattr(predictor, "dim"):
            found["dim"] = int(predictor.dim)
        return found

    def label(self, head: str) -> str:
        """How requests name one head: the model's name, or ``name/head`` when it has two of one task."""
        same_task = [h for h, t in self.heads.items() if t == self.heads[head]]
        return self.name if len(same_task) == 1 else f"{self.name}/{head}"


def _runner(predictor: Any) -> Any:
    """The batch function of a served model: (image bytes, options) items -> one (answer, result) per item.

    The items of a batch may ask for different heads (and ``top_k``): the batch runs their union once. The model
    decodes at most the pixels one image may have at a time (``datasets.io.DEFAULT_MAX_PIXELS``, as every predictor
    does): a batch of large images runs a few images, or one, at a time, so memory does not grow with the number of
    images."""
    from cnnapps.results import ClassificationResult, MultiTaskResult

    def run(items: list[tuple[bytes, dict[str, Any]]]) -> list[tuple[dict[str, Any], Any]]:
        heads = sorted({h for _, options in items for h in options.get("heads", predictor.tasks)})
        top = max(options.get("top_k", 5) for _, options in items)
        images = [image for image, _ in items]
        answers = []
        for found, (_, options) in zip(predictor.predict(images, top_k=top, heads=heads), items, strict=True):
            if not found.ok:
                answers.append(({"path": found.source, "error": found.error}, found))
                continue
            chosen = {h: found.results[h] for h in options.get("heads", predictor.tasks)}
            for result in chosen.values():
                if isinstance(result, ClassificationResult):
                    result.predictions = result.predictions[: options.get("top_k", 5)]
            if options.get("one"):  # with the engine that gave it, as the command line's --json
                (result,) = chosen.values()
                answers.append((result.with_engine(), result))
            else:
                every = MultiTaskResult(found.source, results=chosen, engine=found.engine)
                answers.append((every.with_engine(), every))
        return answers

    return run


#: how a key is sent (operations.ApiKeyCheck takes either), as OpenAPI security schemes
KEY_SCHEMES = {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
               "bearer": {"type": "http", "scheme": "bearer"}}  # fmt: skip


def _schema_with_keys(app: FastAPI) -> None:
    """``app``'s OpenAPI schema with the API-key schemes, asked of every operation (either one)."""
    made = app.openapi

    def openapi() -> dict[str, Any]:
        schema = made()
        schema.setdefault("components", {})["securitySchemes"] = KEY_SCHEMES
        schema["security"] = [{name: []} for name in KEY_SCHEMES]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _name(spec: str) -> str:
    from cnnapps.apps.modelfile import file_label

    return file_label(spec) if Path(spec).suffix else spec


def load_models(specs: Sequence[str], index: str | None, max_batch: int, max_wait_ms: float, device: str,
                engine: str) -> tuple[list[Served], Any]:  # fmt: skip
    """Load every model (a multi-head file once, for all its heads) and the index, whose model serves
    /v1/embed and /v1/retrieve."""
    from cnnapps.api import load_heads
    from cnnapps.apps.multitask import OneHead

    served: list[Served] = []
    opened = None
    for spec in specs:
        predictor = load_heads(spec, device=device, engine=engine)
        served.append(Served(_name(spec), spec, dict(predictor.tasks), predictor, None))  # type: ignore[arg-type]
    if index is not None:
        from cnnapps.apps.retrieve.index import Index

        opened = Index.open(index)
        embedder = OneHead(opened.embedder(device=device, engine=engine), "retrieve")
        spec = opened.model["model"]
        served.append(Served(_name(spec), spec, {"retrieve": "retrieve"}, embedder, None))  # type: ignore[arg-type]
    names = [s.name for s in served]
    for s in served:
        if names.count(s.name) > 1:  # two specs with one name: tell them apart by their tasks
            s.name = f"{s.name}-{'-'.join(sorted(set(s.heads.values())))}"
    given, taken = {s.name for s in served}, set()
    for s in served:  # still alike (a file and its ONNX export, one task): the later ones get -2, -3, ...
        if s.name in taken:
            n = 2
            while f"{s.name}-{n}" in taken | given:
                n += 1
            s.name = f"{s.name}-{n}"
        taken.add(s.name)
        s.batcher = MicroBatcher(_runner(s.predictor), max_batch, max_wait_ms, s.name)
    return served, opened


#: one image of a request: its bytes, or why it cannot be read (that image's error, the others go on)
Image = bytes | RequestError


def _too_many(max_images: int) -> RequestError:
    return RequestError(413, f"more than {max_images:,} images in one request: send at most {max_images:,} "
                        "(--max-images)")  # fmt: skip


def _empty_checked(data: bytes) -> Image:
    return data if data else RequestError(422, "the image is empty")


async def _images_from_multipart(request: Request, body: bytes, max_images: int) -> tuple[list[Image], bool]:
    """The image files of a multipart body already read whole, in order: its ``image`` and ``images`` fields.
    Many when there are ``images`` fields or several ``image`` ones."""

    async def replay() -> AsyncIterator[bytes]:
        yield body

    try:
        parser = MultiPartParser(request.headers, replay(), max_files=max_images + OTHER_FILES, max_fields=16)
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):  # the parser counts every file, images or not
            raise RequestError(
                413,
                f"more than {max_images + OTHER_FILES:,} files in one request: send at most "
                f"{max_images:,} images (--max-images) and {OTHER_FILES} other files",
            ) from None
        raise RequestError(422, f"multipart body: {exc.message}") from None
    try:
        fields = [(name, value) for name, value in form.multi_items() if name in ("image", "images")]
        if len(fields) > max_images:  # only the image fields count: a request may carry other files too
            raise _too_many(max_images)
        many = len(fields) > 1 or any(name == "images" for name, _ in fields)
        if not many:
            upload = fields[0][1] if fields else None
            if upload is None or isinstance(upload, str):
                raise RequestError(422, "multipart request without an 'image' file field (or 'images' fields)")
            return [_empty_checked(await upload.read())], False
        images: list[Image] = []
        for name, value in fields:
            if isinstance(value, str):
                images.append(RequestError(422, f"image: the '{name}' field is text, not a file"))
            else:
                images.append(_empty_checked(await value.read()))
        return images, True
    finally:
        await form.close()


async def _file_from_multipart(request: Request, body: bytes, field: str) -> bytes:
    """The file field ``field`` of a multipart body already read whole."""

    async def replay() -> AsyncIterator[bytes]:
        yield body

    try:
        form = await MultiPartParser(request.headers, replay(), max_files=CLIP_FILES, max_fields=16).parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):  # a 413 in the image routes' words, as theirs is
            raise RequestError(413, f"more than {CLIP_FILES} files in one request: send one '{field}' file and at "
                               f"most {CLIP_FILES - 1} other files") from None  # fmt: skip
        raise RequestError(422, f"multipart body: {exc.message}") from None
    try:
        upload = form.get(field)
        if upload is None or isinstance(upload, str):
            raise RequestError(422, f"multipart request without a '{field}' file field")
        return await upload.read()
    finally:
        await form.close()


def _from_base64(text: Any) -> Image:
    """An image's bytes from base64: plain, wrapped in lines (MIME's, ``base64`` without ``-w0``) or a data URL
    (``data:image/png;base64,...``, as a browser's FileReader gives it)."""
    if not isinstance(text, str):
        return RequestError(422, "image: not a base64 string")
    if text.startswith("data:") and ";base64," in text[:200]:
        text = text.split(";base64,", 1)[1]
    try:
        return _empty_checked(base64.b64decode("".join(text.split()), validate=True))
    except ValueError:  # binascii.Error, or characters outside ASCII
        return RequestError(422, "image: not valid base64")


def _images_from_json(body: bytes, max_images: int) -> tuple[list[Image], bool]:
    """The files in a JSON body ``{"image": "<base64>"}`` (one) or ``{"images": ["<base64>", ...]}`` (many): a wrong
    shape is the request's 422, bad base64 that image's."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: [[[[...
        raise RequestError(422, _JSON_SHAPE) from None
    if not isinstance(data, dict) or ("image" in data) == ("images" in data):
        raise RequestError(422, _JSON_SHAPE)
    if "image" in data:
        if not isinstance(data["image"], str):
            raise RequestError(422, _JSON_SHAPE)
        return [_from_base64(data["image"])], False
    texts = data["images"]
    if not isinstance(texts, list) or not texts:
        raise RequestError(422, _JSON_SHAPE)
    if len(texts) > max_images:
        raise _too_many(max_images)
    return [_from_base64(text) for text in texts], True


def _still_image(source: Any) -> str | None:
    """What an opened video source is when FFmpeg reads it as one still picture (``source.still``): ``"a still JPEG
    image"``, ``"a still PNG image"``, ...; else None: a video."""
    if not source.still:
        return None
    demuxer = source.container_format or ""
    if demuxer.endswith("_pipe"):  # jpeg_pipe, png_pipe, webp_pipe, ...: one picture each
        return f"a still {demuxer.removesuffix('_pipe').upper()} image"
    return "a still GIF image" if demuxer == "gif" else "a still image"


def _thumbnail(path: str, size: int) -> bytes:
    """The image file at ``path`` (read with the image reader's limits), its longer side at most ``size``, as JPEG."""
    import os

    import cv2

    from cnnapps.datasets.io import read_image
    from cnnapps.errors import ImageError

    if os.path.exists(path) and not os.path.isfile(path):  # a pipe or a device: a read could wait for ever
        raise RequestError(404, "indexed image: not a regular file (run `cnnapps index sync`)")
    try:
        rgb = read_image(path)
    except ImageError as exc:
        raise RequestError(404, f"indexed image: {exc} (run `cnnapps index sync`)") from None
    scale = size / max(rgb.shape[:2])
    if scale < 1:
        width, height = max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


def _overlay(image: bytes, result: Any) -> str:
    """Boxes, masks and skeletons drawn on the image (what ``--save-dir`` writes), as a PNG data URL."""
    import cv2

    from cnnapps.datasets.io import read_image

    _, buf = cv2.imencode(".png", result.draw(read_image(image))[:, :, ::-1])
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


@contextlib.contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", port: int = 0, keep_alive_s: float = 5.0,
            forwarded_allow_ips: str | Sequence[str] | None = None) -> Iterator[str]:  # fmt: skip
    """Serve ``app`` with uvicorn on a background thread (port 0: a free one) and yield its URL; stops on exit.
    For tests, scripts and notebooks; ``cnnapps serve`` runs uvicorn in the foreground (both with
    ``server_config``'s deadlines and proxies)."""
    import socket

    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    server = create_server(app, host, port, keep_alive_s, forwarded_allow_ips=forwarded_allow_ips)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise CnnappsError(f"could not serve on {host}:{port}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def create_app(
    models: Sequence[str],
    index: str | None = None,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_upload_mb: float = 20.0,
    device: str = "auto",
    engine: str = "auto",
    warm_up: bool = True,
    request_timeout_s: float = 60.0,
    allowed_hosts: Sequence[str] = (),
    max_clip_mb: float = 50.0,
    max_clip_s: float = 60.0,
    max_clip_frames: int = MAX_CLIP_FRAMES,
    max_images: int = MAX_IMAGES,
    api_keys: Sequence[str] = (),
    metrics_need_key: bool = False,
    cors_origins: Sequence[str] = (),
    max_concurrent_per_client: int = 0,
    log_format: str = "text",
) -> FastAPI:
    """The service for ``models`` (specs as ``cnnapps.load`` takes them) and, optionally, an index.

    Each task's route also takes a short video at ``POST /v1/<route>/video``: at most ``max_clip_mb``,
    ``max_clip_s`` seconds and ``max_clip_frames`` frames (after its ``vid_stride``), answered with one JSON line per
    frame as the model gives them.

    A request body must arrive within ``request_timeout_s`` (else 408) and hold at most ``max_upload_mb`` and
    ``max_images`` images (else 413). Requests must name this machine in their ``Host`` header: an IP address,
    ``localhost``, or one of ``allowed_hosts`` (``"*"``: any name).

    With ``api_keys`` (see ``operations.load_api_keys``), every route but the page, the docs, ``/livez``,
    ``/readyz``, ``/healthz`` and ``/metrics`` (unless ``metrics_need_key``, which needs ``api_keys``) needs one of
    them (401). ``cors_origins`` lets pages from those origins call the API (none by default);
    ``max_concurrent_per_client`` caps the requests one client address has running at once (429; 0: no cap);
    ``log_format="json"`` writes one JSON line per request. ``/metrics`` answers Prometheus metrics from a registry
    of this app's own."""
    if request_timeout_s <= 0:
        raise CnnappsError(f"serve: the request timeout must be positive, not {request_timeout_s}")
    if max_clip_frames < 1:
        raise CnnappsError(f"serve: --max-clip-frames {max_clip_frames} must be >= 1")
    if max_images < 1 or max_concurrent_per_client < 0:
        raise CnnappsError(f"serve: --max-images {max_images} must be >= 1 and --max-concurrent-per-client "
                           f"{max_concurrent_per_client} >= 0")  # fmt: skip
    if log_format not in ("text", "json"):
        raise CnnappsError(f"serve: --log-format {log_format!r}: text or json")
    if metrics_need_key and not api_keys:
        raise CnnappsError("serve: --metrics-need-key without any API key: give --api-key, --api-keys-file or "
                           "$CNNAPPS_API_KEYS (with none, every route would be open)")  # fmt: skip
    served, opened = load_models(models, index, max_batch, max_wait_ms, device, engine)
    if not served:
        raise CnnappsError("serve: give at least one --model (or an --index)")
    limit = int(max_upload_mb * 2**20)
    metrics = ServiceMetrics()
    for s in served:
        metrics.watch(s.name, s.batcher)
    lifecycle = Lifecycle()
    index_lock = threading.Lock()  # one SQLite connection: searches take turns
    if warm_up:  # compile graphs and touch every model once before the first request
        import numpy as np

        probe = np.full((64, 64, 3), 127, np.uint8)
        for s in served:
            s.batcher.run([(probe, {"heads": list(s.heads)})])
    lifecycle.ready = True  # loaded and warmed: ready also where no lifespan runs (an app mounted in another)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        lifecycle.draining = False  # served again after a shutdown (the batchers start again when asked)
        yield
        lifecycle.draining = True
        for s in served:
            s.batcher.close()

    app = FastAPI(
        lifespan=lifespan,
        title="cnnapps",
        version=__version__,
        description="Conv backbones as working applications: "
        + ", ".join(sorted({t for s in served for t in s.heads.values()})),
        docs_url=None,  # served below with local Swagger UI files
        redoc_url=None,  # ReDoc would come from a CDN
    )
    if api_keys:  # the schema says so: /docs then has an "Authorize" button that sends the key
        _schema_with_keys(app)
    app.state.request_timeout_s = request_timeout_s
    app.state.lifecycle, app.state.metrics, app.state.log_format = lifecycle, metrics, log_format
    # the last added is the outermost: request log -> Host check -> CORS -> API key -> per-client limit -> routes
    if max_concurrent_per_client:
        app.add_middleware(ClientLimit, limit=max_concurrent_per_client)
    if api_keys:
        app.add_middleware(ApiKeyCheck, keys=list(api_keys), metrics_need_key=metrics_need_key)
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "x-api-key", "content-type", "x-request-id"],
                           expose_headers=["x-request-id"], max_age=600)  # fmt: skip
    app.add_middleware(HostCheck, allowed=[*LOOPBACK_NAMES, *allowed_hosts])
    if log_format == "json":
        use_json_logs()
    app.add_middleware(RequestLog, metrics=metrics, log=log_format == "json", router=app.router)
    docs_files = {p.name: p for p in STATIC.glob("swagger-ui*")}  # swagger-ui-dist, with its licence

    @app.get("/docs/assets/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> FileResponse:
        if name not in docs_files:
            raise StarletteHTTPException(404)
        return FileResponse(docs_files[name])

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # mounted under a prefix (/ml): its schema and files
        return get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"),
            title=f"{app.title} - API",
            swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/assets/swagger-ui-favicon-32x32.png",
            oauth2_redirect_url=None,
            swagger_ui_parameters={"validatorUrl": None},  # its badge would call validator.swagger.io
        )

    @app.exception_handler(RequestError)
    async def _refused(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:  # every POST route: each task's and its /video one, /v1/predict, /v1/retrieve
            routes = sorted({path for s in served for r, _, _ in s.routes() for path in (r, f"{r}/video")}
                            | {"/v1/predict"} | ({"/v1/retrieve"} if opened else set()))  # fmt: skip
            message = f"no route {request.method} {request.url.path}; this server answers POST {', '.join(routes)}"
        return JSONResponse({"error": message}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.exception_handler(Exception)
    async def _failed(request: Request, exc: Exception) -> JSONResponse:
        """What escaped the request log (which answers the routes' exceptions itself): nothing of it is told."""
        request_id = request.scope.get("cnnapps", {}).get("request_id")
        headers = {"x-request-id": request_id} if request_id else None
        message = "internal error; see the server log" + (f", request id {request_id}" if request_id else "")
        return JSONResponse({"error": message}, status_code=500, headers=headers)

    async def read_body(request: Request, limit: int = limit) -> bytes:
        """The body as it streams in (any framing, chunked too): 413 as soon as it passes the limit, 408 when
        it has not all come within the request deadline."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"request of {int(declared):,} bytes is over the {limit:,}-byte limit")
        chunks: list[bytes] = []

        async def read() -> None:
            size = 0
            async with contextlib.aclosing(request.stream()) as stream:
                async for chunk in stream:
                    size += len(chunk)
                    if size > limit:
                        raise RequestError(413, f"request body over the {limit:,}-byte limit")
                    chunks.append(chunk)

        try:
            await asyncio.wait_for(read(), request_timeout_s)
        except asyncio.TimeoutError:  # a distinct class before Python 3.11
            raise RequestError(408, f"the request body did not all arrive within {request_timeout_s:g} s") from None
        except ClientDisconnect:
            raise RequestError(400, "the client went away before sending the whole body") from None
        return b"".join(chunks)

    async def read_images(request: Request) -> tuple[list[Image], bool]:
        """The images a request carries, and whether it sent many (answered with a list): the body itself, its
        multipart ``image``/``images`` fields, or its JSON's base64."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in ("multipart/form-data", "application/json", *RAW_IMAGE_TYPES):
            how = ("the image file as the body (e.g. image/jpeg), multipart/form-data with 'image' or 'images' "
                   "fields, or JSON")  # fmt: skip
            raise RequestError(415, f"content type {kind or 'none'}: send {how}")
        body = await read_body(request)
        if kind == "multipart/form-data":
            images, many = await _images_from_multipart(request, body, max_images)
        elif kind == "application/json":
            images, many = _images_from_json(body, max_images)
        else:
            images, many = [_empty_checked(body)], False
        request.scope.setdefault("cnnapps", {})["images"] = len(images)
        return images, many

    def outcome(model: Served, output: Any) -> tuple[dict[str, Any], Any] | RequestError:
        """What the batcher gave for one image: (answer, result), or that image's error."""
        oom = isinstance(output, Exception) and "out of memory" in str(output).lower()
        if isinstance(output, MemoryError) or oom:
            return RequestError(503, "out of memory: try again, or send a smaller image")
        if isinstance(output, BaseException):  # it failed on this image alone (its batch-mates were answered)
            said = _CLI_HINT.sub("", str(output))
            return RequestError(422, f"image: the model could not run on it ({type(output).__name__}: {said})")
        payload, result = output
        if payload.get("error"):  # the predictor's words, without the command-line options they may name
            return RequestError(422, f"image: {_CLI_HINT.sub('', payload['error'])}")
        return json_safe({**payload, "path": "<upload>", "model": model.name}), result  # NaN is not JSON

    async def answer_all(model: Served, images: list[Image], options: dict[str, Any],
                         draw: bool) -> list[tuple[dict, Any] | RequestError]:  # fmt: skip
        """Every image of a request through the model's micro-batcher at once (they share batches), in order."""
        readable = [i for i, image in enumerate(images) if isinstance(image, bytes)]
        outputs = await model.batcher.submit_many([(images[i], options) for i in readable])
        answers: list[tuple[dict, Any] | RequestError] = list(images)  # type: ignore[arg-type]  # errors stay
        for i, output in zip(readable, outputs, strict=True):
            answers[i] = outcome(model, output)
        for i, found in enumerate(answers):
            if draw and not isinstance(found, RequestError) and hasattr(found[1], "draw"):
                found[0]["overlay"] = await run_in_threadpool(_overlay, images[i], found[1])
        return answers

    def respond(answers: list[tuple[dict, Any] | RequestError], many: bool, model: str,
                answered: Callable[[dict], dict] | None = None, source: str = "path") -> Any:  # fmt: skip
        """One image: its answer, or its error as the request's. Many: the list of answers, in order, a bad image's
        being ``{"path": "<upload>", "error": ..., "model"}`` (counted as an ``image`` error)."""
        shaped = [a if isinstance(a, RequestError) else {**(answered or dict)(a[0]), "model": model} for a in answers]
        if not many:
            if isinstance(shaped[0], RequestError):
                raise shaped[0]
            return shaped[0]
        for found in shaped:
            if isinstance(found, RequestError):
                metrics.errors.labels(kind="image").inc()
        return [{source: "<upload>", "error": a.message, "model": model} if isinstance(a, RequestError) else a
                for a in shaped]  # fmt: skip

    def pick(task: str, name: str | None) -> tuple[Served, str]:
        """The model (and its head) a request for ``task`` goes to: the first one, or the one it names."""
        candidates = [(s, head) for s in served for _, t, head in s.routes() if t == task]
        if name is None:
            return candidates[0]
        for s, head in candidates:
            if name in (s.label(head), f"{s.name}/{head}"):
                return s, head
        loaded = ", ".join(s.label(head) for s, head in candidates)
        raise RequestError(404, f"no {task} model named {name!r}; loaded: {loaded}")

    def checked_top_k(top_k: int) -> int:
        if not 1 <= top_k <= MAX_TOP_K:
            raise RequestError(422, f"top_k {top_k}: must be between 1 and {MAX_TOP_K}")
        return top_k

    def add_task_route(task: Any) -> None:
        async def endpoint(request: Request, model: str | None = None, **given: Any) -> Any:
            known_query(request, endpoint)
            chosen, head = pick(task.name, model)
            options = {"heads": [head], "top_k": checked_top_k(given.get("top_k", 5)), "one": True}
            images, many = await read_images(request)
            return respond(await answer_all(chosen, images, options, given.get("draw", False)), many,
                           chosen.label(head))  # fmt: skip

        endpoint.__signature__ = route_signature(task.route_options)  # type: ignore[attr-defined]

        endpoint.__name__ = task.route
        endpoint.__doc__ = (f"{task.summary} One image in, the JSON of the command line's --json for it out; many "
                            "images (multipart 'images' fields, JSON {\"images\": [...]}) in, a list of those out, "
                            "in order, a bad image's being {\"path\", \"error\", \"model\"}.")  # fmt: skip
        app.post(f"/v1/{task.route}", openapi_extra={"requestBody": _BODY}, tags=[task.name])(endpoint)

    clip_limit = int(max_clip_mb * 2**20)

    async def open_clip(request: Request, stride: int) -> tuple[Any, Any]:
        """The uploaded clip, opened: (its temporary folder, its :class:`VideoSource`). Its header gives the checks
        (a still image, the frame size within an image's limits, the length in seconds and in frames) before a frame
        is decoded."""
        import tempfile

        from cnnapps.datasets import io
        from cnnapps.datasets.video import VideoError, VideoSource

        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "multipart/form-data" and not kind.startswith("video/") and kind != "application/octet-stream":
            raise RequestError(415, f"content type {kind or 'none'}: send the video file as the body (e.g. "
                               "video/mp4) or multipart/form-data with a 'video' field")  # fmt: skip
        body = await read_body(request, clip_limit)
        if kind == "multipart/form-data":
            body = await _file_from_multipart(request, body, "video")
        if not body:
            raise RequestError(422, "the video is empty")
        folder = tempfile.TemporaryDirectory(prefix="cnnapps-clip-")
        source = None
        try:
            path = Path(folder.name) / "clip"
            path.write_bytes(body)
            try:  # frames within an image's limits, from the header before a frame is decoded; read to its end,
                # not cut at max_clip_s: a clip whose header does not say its length was answered for its first
                # seconds as if that were all (clip_lines ends it with an error line at the limit)
                source = await run_in_threadpool(lambda: VideoSource(
                    str(path), stride=stride, max_pixels=io.DEFAULT_MAX_PIXELS,
                    max_aspect=io.DEFAULT_MAX_ASPECT))  # fmt: skip
            except VideoError as exc:
                raise RequestError(422, f"video: {str(exc).split(': ', 1)[-1]}") from None
            still = _still_image(source)
            if still is not None:
                route = request.url.path.removesuffix("/video")
                raise RequestError(422, f"video: {still}, not a video: send it to {route}")
            duration = source.duration or 0.0
            if duration > max_clip_s:
                raise RequestError(413, f"video of {duration:.1f} s is over the {max_clip_s:g}-second limit")
            if source.frames is not None and source.frames > max_clip_frames:
                raise RequestError(413, f"video of {source.frames} frames (at vid_stride {stride}) is over the "
                                   f"{max_clip_frames}-frame limit: send a larger vid_stride")  # fmt: skip
        except BaseException:
            if source is not None:
                source.close()
            folder.cleanup()
            raise
        return folder, source

    async def clip_lines(request: Request, model: Served, options: dict[str, Any], folder: Any,
                         source: Any) -> AsyncIterator[tuple[int, dict]]:  # fmt: skip
        """One line per frame of an opened clip (a frame's answer as the route gives it for one image), as the model
        gives them, each with its status: 200, or for the ``{"error": ...}`` line that ends a clip the status a
        request refused for it would get. A clip that fails part way (a frame that cannot be read, larger than the
        header said, or that the model fails on) or goes past the frame or seconds limit (a frame kept at or after
        ``max_clip_s``: its header did not say its length, or said less) ends with that line after the frames
        answered before it. Each frame given to the model counts as one of the request's images. A client that goes
        away stops it (between batches of 8 frames); the clip and its folder are closed at the end, whichever it
        is."""
        from cnnapps.datasets.video import VideoError

        frames = iter(source)
        answered = 0
        note = request.scope.setdefault("cnnapps", {})  # the request log counts its images in the metrics

        def chunk() -> tuple[list[Any], VideoError | None]:
            """The next frames (8 at most, one more than the limit leaves at most), and the error that ended the
            clip after them."""
            got: list[Any] = []
            try:
                for frame in itertools.islice(frames, min(8, max_clip_frames - answered + 1)):
                    got.append(frame)
            except VideoError as exc:
                return got, exc
            return got, None

        try:
            while True:
                if await request.is_disconnected():  # nobody reads the answers: the model's time is for others
                    return
                got, error = await run_in_threadpool(chunk)
                ended: tuple[int, dict] | None = None  # the error line that ends the clip after these frames
                if error is not None:
                    ended = (422, {"error": f"video: {str(error).split(': ', 1)[-1]}"})
                if answered + len(got) > max_clip_frames:
                    got = got[: max_clip_frames - answered]
                    ended = (413, {"error": f"video: more than {max_clip_frames} frames (at vid_stride "
                                            f"{source.stride}): the frame limit; send a larger vid_stride or a "
                                            "shorter clip"})  # fmt: skip
                late = next((i for i, f in enumerate(got) if f.time >= max_clip_s - 1e-6), None)  # as end= cut
                if late is not None:  # the frames before it are within the limit; none after it is answered
                    got = got[:late]
                    ended = (413, {"error": f"video: longer than the {max_clip_s:g}-second limit; send a shorter "
                                            "clip"})  # fmt: skip
                outputs = await model.batcher.submit_many([(f.rgb, options) for f in got]) if got else []
                for frame, output in zip(got, outputs, strict=True):
                    note["images"] = note.get("images", 0) + 1
                    found = outcome(model, output)  # a frame the model failed on ends the clip's lines
                    if isinstance(found, RequestError):
                        yield found.status, {"frame": frame.index, "error": found.message}
                        return
                    payload = {k: v for k, v in output[0].items() if k != "path"}
                    answered += 1
                    yield 200, json_safe({"frame": frame.index, "time": round(frame.time, 3), **payload})
                if ended is not None:
                    yield ended
                    return
                if not got:
                    return
        finally:  # shielded: a client gone cancels the stream, and the clip's reader and folder were left to the GC

            def close() -> None:
                source.close()
                folder.cleanup()

            await asyncio.shield(run_in_threadpool(close))

    def add_video_route(task: Any) -> None:
        async def endpoint(request: Request, model: str | None = None, vid_stride: int = 1, **given: Any) -> Any:
            known_query(request, endpoint)
            chosen, head = pick(task.name, model)
            if not 1 <= vid_stride <= 1000:
                raise RequestError(422, f"vid_stride {vid_stride}: must be between 1 and 1000")
            options = {"heads": [head], "top_k": checked_top_k(given.get("top_k", 5)), "one": True}
            folder, source = await open_clip(request, vid_stride)
            lines = clip_lines(request, chosen, options, folder, source)
            first = await anext(lines, None)  # a clip of no readable frame is the request's error, before any line
            if first is None:
                raise RequestError(422, "video: no frame could be read")
            status, opening = first
            if status != 200:  # it ended before a frame was answered (the model refused the first): the request's
                await lines.aclose()
                where = f"frame {opening['frame']}: " if "frame" in opening else ""
                said = opening["error"].removeprefix("image: ").removeprefix("video: ")
                raise RequestError(status, f"video: {where}{said}")
            label = chosen.label(head)

            async def text() -> AsyncIterator[str]:
                async with contextlib.aclosing(lines):
                    yield json.dumps({"model": label, **opening}) + "\n"
                    async for status, line in lines:
                        if status != 200:  # the stream's status is 200, sent with the first line: count it apart
                            metrics.refused(status)
                        yield json.dumps({"model": label, **line}) + "\n"

            return StreamingResponse(text(), media_type="application/x-ndjson")

        endpoint.__name__ = f"{task.route}_video"
        endpoint.__signature__ = route_signature(_clip_options(task), vid_stride=(int, 1))  # type: ignore[attr-defined]
        endpoint.__doc__ = (f"{task.summary} A short video in (at most {max_clip_mb:g} MB, {max_clip_s:g} s and "
                            f"{max_clip_frames} frames after vid_stride), one JSON line per frame out as the model "
                            "gives them: frame, time and the answer the image route gives.")  # fmt: skip
        app.post(f"/v1/{task.route}/video", openapi_extra={"requestBody": _CLIP_BODY}, tags=[task.name])(endpoint)

    from cnnapps.apps.tasks import TASKS

    present = {t for s in served for t in s.heads.values()}
    for task in TASKS.values():
        if task.name in present:
            add_task_route(task)
            add_video_route(task)

    @app.post("/v1/predict", openapi_extra={"requestBody": _BODY}, tags=["all tasks"])
    async def predict(request: Request, model: str | None = None, top_k: int = 5, draw: bool = False) -> Any:
        """Every head of one model (the first multi-head model unless ``model`` names one) on one image, from one
        trunk pass: ``{"path", "model", "<head>": <its answer>, ...}``; ``draw=true`` adds the picture."""
        known_query(request, predict)
        multi = [s for s in served if len(s.heads) > 1] or served
        chosen = next((s for s in served if s.name == model), None) if model else multi[0]
        if chosen is None:
            raise RequestError(404, f"no model named {model!r}; loaded: {', '.join(s.name for s in served)}")
        options = {"heads": list(chosen.heads), "top_k": checked_top_k(top_k)}
        images, many = await read_images(request)
        return respond(await answer_all(chosen, images, options, draw), many, chosen.name)

    if opened is not None:

        @app.post("/v1/retrieve", openapi_extra={"requestBody": _BODY}, tags=["retrieve"])
        async def retrieve(request: Request, k: int = 10) -> Any:
            """The index's nearest images to the uploaded one: ``{"query", "results": [{rank, path, score, id}],
            "model"}``; ``GET /v1/retrieve/thumbnail?id=ID`` shows a hit."""
            known_query(request, retrieve)
            if not 1 <= k <= 1000:
                raise RequestError(422, f"k {k}: must be between 1 and 1000")
            import numpy as np

            served_index = served[-1]  # the index's own model, loaded last
            images, many = await read_images(request)
            answers = await answer_all(served_index, images, {"heads": ["retrieve"], "one": True}, False)
            found = [i for i, a in enumerate(answers) if not isinstance(a, RequestError)]

            def search() -> list[Any]:
                vectors = np.stack([answers[i][1].vector for i in found])  # type: ignore[index]
                with index_lock:
                    opened.refresh_if_changed()  # what another process added or removed since
                    return opened.search_vectors(vectors, k)

            for i, hits in zip(found, await run_in_threadpool(search) if found else [], strict=True):
                engine = answers[i][1].engine  # type: ignore[index]  # the query's embedder's, as --json says it
                answers[i] = ({"results": [{**h.to_dict(), "id": h.id} for h in hits],
                               **({"engine": engine} if engine else {})}, None)  # fmt: skip
            return respond(answers, many, served_index.name, lambda hits: {"query": "<upload>", **hits}, "query")

        @app.get("/v1/retrieve/thumbnail", tags=["retrieve"], response_class=Response)
        async def thumbnail(request: Request, id: int, size: int = 160) -> Response:
            """A JPEG of the indexed image ``id`` (a /v1/retrieve hit's), its longer side at most ``size`` px.
            Only the index's own files are read: the client names a row of the index, never a path."""
            known_query(request, thumbnail)
            if not 16 <= size <= MAX_THUMBNAIL:
                raise RequestError(422, f"size {size}: must be between 16 and {MAX_THUMBNAIL}")

            def find() -> str | None:
                if not 0 <= id < 2**63:  # no row has it (and SQLite cannot even be asked past 64 bits)
                    return None
                with index_lock:
                    opened.refresh_if_changed()  # a removed image is not served
                    return opened.item_path(id)

            path = await run_in_threadpool(find)
            if path is None:
                raise RequestError(404, f"no image with id {id} in the index (ids come from /v1/retrieve hits)")
            jpeg = await run_in_threadpool(_thumbnail, path, size)
            return Response(jpeg, media_type="image/jpeg", headers={"cache-control": "private, max-age=300"})

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, Any]:
        """Up and serving: the loaded models and how batching went so far."""
        batches = sum(s.batcher.batches for s in served)
        items = sum(s.batcher.items for s in served)
        return {"status": "ok", "models": len(served), "requests": items, "batches": batches}

    @app.get("/livez", tags=["service"])
    async def livez() -> dict[str, Any]:
        """Liveness: the process answers (while it shuts down too; `cnnapps serve` opens its port once the models
        are loaded and warm). Never needs a key."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["service"])
    async def readyz() -> Any:
        """Readiness: 200 once the models are loaded and warm (when ``create_app`` returns), and 503 from the
        moment shutdown begins (SIGTERM), so a load balancer stops sending requests. Never needs a key."""
        if lifecycle.draining:
            return JSONResponse({"error": "shutting down: answering the requests in flight"}, status_code=503)
        if not lifecycle.ready:
            return JSONResponse({"error": "not ready: the models are loading"}, status_code=503)
        return {"status": "ready", "models": len(served)}

    @app.get("/metrics", tags=["service"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus metrics (text exposition format): requests by route and status, latency histograms by route,
        micro-batch sizes, queue length per model, errors by kind. Open unless the server needs a key for it."""
        body, media_type = metrics.exposition()
        return Response(body, media_type=media_type)

    @app.get("/v1/models", tags=["service"])
    async def list_models(request: Request) -> dict[str, Any]:
        """The loaded models: name (the ``model`` query parameter), spec, task, route, the route's query options,
        engine."""
        known_query(request, list_models)
        models_info = [entry for s in served for entry in s.info()]
        if opened is not None:

            def items() -> int:
                with index_lock:
                    opened.refresh_if_changed()
                    return len(opened)

            models_info.append({"name": "index", "task": "retrieve", "route": "/v1/retrieve", "options": ["k"],
                                "items": await run_in_threadpool(items)})  # fmt: skip
        return {
            "models": models_info,
            "max_batch": max_batch,
            "max_wait_ms": max_wait_ms,
            "max_upload_bytes": limit,
            "max_images": max_images,
        }

    page = STATIC / "index.html"

    @app.get("/", include_in_schema=False)
    async def index_page() -> FileResponse:
        return FileResponse(page, media_type="text/html")

    return app
