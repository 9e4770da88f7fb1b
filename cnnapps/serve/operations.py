"""What running the service in production needs, as plain ASGI middleware and small objects: API keys, a
per-client concurrency limit, request ids with one JSON log line per request, Prometheus metrics (one
registry per app), and the liveness/readiness state that graceful shutdown turns off.

Every refusal is the service's usual one-line ``{"error": ...}``.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import sys
import time
import uuid
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse

from cnnapps.errors import CnnappsError

#: the environment variable ``cnnapps serve`` reads API keys from (comma-separated)
API_KEYS_ENV = "CNNAPPS_API_KEYS"
#: paths open without an API key: the page, the API docs, liveness and readiness (``/metrics`` unless told)
OPEN_PATHS = ("/", "/livez", "/readyz", "/healthz", "/docs", "/openapi.json")
OPEN_PREFIXES = ("/docs/assets/",)
#: what an ``X-Request-ID`` sent by the client may look like to be kept (else a fresh one is made)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_KEY = re.compile(r"[\x21-\x7e]{1,4096}")  # printable ASCII, no spaces: what fits an HTTP header as is

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]


def route_path(scope: dict) -> str:
    """The path the app's routes see: without the ``root_path`` the app is mounted under."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def load_api_keys(keys: Iterable[str] = (), file: str | os.PathLike | None = None,
                  environ: dict[str, str] | None = None) -> list[str]:  # fmt: skip
    """The API keys given as ``keys``, in ``file`` (one a line; blank lines and ``#`` comments skipped) and in
    ``$CNNAPPS_API_KEYS`` (comma-separated), without repeats. A key must be printable ASCII without spaces; a file
    or a set ``$CNNAPPS_API_KEYS`` without any key is an error (a source of keys that holds none is a mistake to
    say, even where other sources give keys)."""
    environ = os.environ if environ is None else environ
    found = [k.strip() for k in keys]
    if file is not None:
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8-sig")  # Notepad's byte-order mark is not part of the first key
        except (OSError, UnicodeDecodeError) as exc:
            raise CnnappsError(f"--api-keys-file {path}: cannot read it ({exc.__class__.__name__}: {exc})") from None
        listed = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if not listed:  # an empty file would leave the server open to all
            raise CnnappsError(f"--api-keys-file {path}: no API keys in it (one a line; # comments)")
        found += listed
    if API_KEYS_ENV in environ:
        listed = [k.strip() for k in environ[API_KEYS_ENV].split(",") if k.strip()]
        if not listed:
            raise CnnappsError(f"${API_KEYS_ENV} is set but holds no API keys: give them comma-separated, or unset it")
        found += listed
    for n, key in enumerate(found, 1):
        if not _KEY.fullmatch(key):  # said by number: a key, even a malformed one, is not printed
            raise CnnappsError(f"API key {n} of {len(found)}: keys must be 1-4096 printable ASCII characters without "
                               "spaces")  # fmt: skip
    return list(dict.fromkeys(found))


def _header(scope: dict, name: bytes) -> bytes | None:
    return next((v for k, v in scope["headers"] if k == name), None)


async def _refuse(scope: dict, receive: Callable, send: Callable, status: int, message: str,
                  headers: dict[str, str] | None = None) -> None:  # fmt: skip
    await JSONResponse({"error": message}, status_code=status, headers=headers)(scope, receive, send)


class ApiKeyCheck:
    """ASGI middleware: with keys configured, every path but the open ones (page, docs, liveness, readiness and,
    unless ``metrics_need_key``, ``/metrics``) needs ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``
    (401 otherwise). The key sent is compared with every key in constant time."""

    def __init__(self, app: ASGIApp, keys: Sequence[str], metrics_need_key: bool = False) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.open = set(OPEN_PATHS) | (set() if metrics_need_key else {"/metrics"})

    def guarded(self, path: str) -> bool:
        return bool(self.keys) and path not in self.open and not path.startswith(OPEN_PREFIXES)

    def accepts(self, given: bytes) -> bool:
        ok = False
        for key in self.keys:  # every key, whatever matched before: the time taken tells nothing
            ok |= hmac.compare_digest(given, key)
        return ok

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket") or not self.guarded(route_path(scope)):
            return await self.app(scope, receive, send)
        given = (_header(scope, b"x-api-key") or b"").strip() or None  # an empty X-API-Key is no key
        if given is None:
            scheme, _, token = (_header(scope, b"authorization") or b"").strip().partition(b" ")
            given = token.strip() if scheme.lower() == b"bearer" and token.strip() else None
        if given is not None and self.accepts(given):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        message = (
            "wrong API key"
            if given is not None
            else "this server needs an API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
        )
        await _refuse(scope, receive, send, 401, message, {"www-authenticate": "Bearer"})


class ClientLimit:
    """ASGI middleware: at most ``limit`` requests at once that run a model (``POST`` to a ``/v1`` route) from one
    client address (429 past it). Reads (``/v1/models``, a hit's thumbnail) are not counted: a page shows ten
    thumbnails at once, and a limit of 2 broke eight of them. The address is the peer's, or the ``X-Forwarded-For``
    one uvicorn takes from a proxy trusted with ``--forwarded-allow-ips`` (none by default: a client could name any
    address there)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit
        self.active: Tally[str] = Tally()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        path = route_path(scope)
        if scope["type"] != "http" or scope["method"] != "POST" or not (path == "/v1" or path.startswith("/v1/")):
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("unknown",))[0]
        if self.active[client] >= self.limit:
            message = f"too many requests at once from {client}: at most {self.limit} (--max-concurrent-per-client)"
            return await _refuse(scope, receive, send, 429, message, {"retry-after": "1"})
        self.active[client] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active[client] -= 1
            if self.active[client] <= 0:
                del self.active[client]


#: the methods counted under their own name in the metrics; any other is ``other`` (a label per made-up method
#: would let any client add series without end)
METHODS = ("GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH")


def method_label(method: str) -> str:
    """The metrics label of an HTTP method: one of :data:`METHODS`, or ``other``."""
    return method if method in METHODS else "other"


#: errors counted by kind: a refused request's status (or the status a streamed clip's closing error line stands
#: for), or ``image`` for one bad image among good ones
ERROR_KINDS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               408: "timeout", 413: "too_large", 415: "unsupported_media_type", 422: "unprocessable",
               429: "too_many_requests", 500: "internal", 503: "unavailable"}  # fmt: skip


class ServiceMetrics:
    """The service's Prometheus metrics, in a registry of its own (several apps in one process do not clash):
    requests by route, method and status; latency by route; requests in progress; micro-batch sizes and
    the images waiting per model; errors by kind."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("cnnapps_requests", "HTTP requests answered, by route template, method and status",
                                ["route", "method", "status"], registry=r)  # fmt: skip
        self.latency = Histogram("cnnapps_request_duration_seconds", "Time from request to answer, by route template",
                                 ["route"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))  # fmt: skip
        self.in_progress = Gauge("cnnapps_requests_in_progress", "HTTP requests being answered", registry=r)
        self.batch_size = Histogram("cnnapps_batch_size", "Images per forward pass of a model's micro-batcher",
                                    ["model"], registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))  # fmt: skip
        self.queue = Gauge("cnnapps_queue_length", "Images waiting in a model's micro-batcher for their batch",
                           ["model"], registry=r)  # fmt: skip
        self.errors = Counter("cnnapps_errors", "Errors by kind: the status of a refused request or of a streamed "
                              "clip's error line, or 'image' for one image of a many-image request", ["kind"],
                              registry=r)  # fmt: skip
        self.images = Counter("cnnapps_images", "Images received, by route template", ["route"], registry=r)

    def watch(self, model: str, batcher: Any) -> None:
        """Batch sizes and queue length of one model's micro-batcher."""
        batcher.on_batch = self.batch_size.labels(model=model).observe
        self.queue.labels(model=model).set_function(lambda: batcher.pending)

    def refused(self, status: int) -> None:
        """Count an error of a request refused with ``status``, or of a streamed clip's error line standing for it."""
        self.errors.labels(kind=ERROR_KINDS.get(status, str(status))).inc()

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


@dataclass
class Lifecycle:
    """Liveness is the process answering at all; readiness is ``ready and not draining``: models loaded and
    warmed, and no shutdown begun."""

    ready: bool = False
    draining: bool = False


class JsonLines(logging.Handler):
    """One JSON object a line on the standard error of the moment: time, level, logger, then the record's
    fields (a dict message) or its ``message``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry: dict[str, Any] = {
                "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                "level": record.levelname.lower(),
                "logger": record.name,
            }
            if isinstance(record.msg, dict):
                entry.update(record.msg)
            else:
                entry["message"] = record.getMessage()
            if record.exc_info:
                entry["exception"] = logging.Formatter().formatException(record.exc_info)
            sys.stderr.write(json.dumps(entry, default=str) + "\n")
            sys.stderr.flush()
        except Exception:  # pragma: no cover - logging must never take a request down
            self.handleError(record)


ACCESS_LOG = "cnnapps.serve.access"
#: where a request that failed with an unexpected exception is logged, with its traceback and request id
ERROR_LOG = "cnnapps.serve.error"


def use_json_logs(*names: str) -> None:
    """Send the named loggers (the access and error logs, uvicorn's own) to standard error as JSON lines."""
    for name in (ACCESS_LOG, ERROR_LOG, *names):
        logger = logging.getLogger(name)
        if not any(isinstance(h, JsonLines) for h in logger.handlers):
            logger.addHandler(JsonLines())
        logger.propagate = False
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)


class RequestLog:
    """ASGI middleware, outermost: gives every request an id (a sane ``X-Request-ID`` sent by the client, else a new
    one) echoed in the answer's ``X-Request-ID``, counts it in the metrics and, with ``log`` on, writes one JSON
    line when it is answered: request_id, method, route, path, status, latency_ms, images, client.
    Routes note how many images a request carried in ``scope["cnnapps"]["images"]``. A request that fails with an
    unexpected exception is answered 500 with its id and a message that tells nothing of the exception, which is
    logged (``ERROR_LOG``) with its traceback and the request id.

    The route is the template of the app's route the path asks for, also when a middleware refused the request
    before it reached the route (401, 429, a wrong Host); ``unmatched`` for paths no route answers (``router``: the
    app's router, to match paths against)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, log: bool = False, router: Any = None) -> None:
        self.app, self.metrics, self.log, self.router = app, metrics, log, router
        self.logger = logging.getLogger(ACCESS_LOG)

    def route(self, scope: dict) -> str:
        """The template of the route that answered ``scope``, or would have: like the router, a route matching the
        path and method first, then one matching the path alone (405)."""
        answered = getattr(scope.get("route"), "path", None)
        if answered or self.router is None:
            return answered or "unmatched"
        from starlette.routing import Match

        partial = None
        for route in self.router.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return getattr(route, "path", None) or "unmatched"
            if match is Match.PARTIAL and partial is None:
                partial = route
        return getattr(partial, "path", None) or "unmatched"

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = (_header(scope, b"x-request-id") or b"").decode("latin-1").strip()
        request_id = sent if _REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
        note = scope["cnnapps"] = {"request_id": request_id, "images": 0}
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            await send(message)

        self.metrics.in_progress.inc()
        started = False

        async def send_noted(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_with_id(message)

        try:
            await self.app(scope, receive, send_noted)
        except Exception:
            logging.getLogger(ERROR_LOG).error(
                {"request_id": request_id, "method": scope["method"], "path": scope["path"],
                 "message": "unhandled exception"} if self.log
                else f"request {request_id} ({scope['method']} {scope['path']}) failed: unhandled exception",
                exc_info=True,
            )  # fmt: skip
            if started:  # part of the answer is gone: the server cuts the connection
                raise
            message = f"internal error; see the server log, request id {request_id}"
            await JSONResponse({"error": message}, status_code=500)(scope, receive, send_with_id)
        finally:
            self.metrics.in_progress.dec()
            elapsed = time.perf_counter() - start
            route = self.route(scope)
            method = method_label(scope["method"])
            self.metrics.requests.labels(route=route, method=method, status=str(status)).inc()
            self.metrics.latency.labels(route=route).observe(elapsed)
            if status >= 400:
                self.metrics.refused(status)
            if note["images"]:
                self.metrics.images.labels(route=route).inc(note["images"])
            if self.log:
                self.logger.info({
                    "request_id": request_id, "method": scope["method"], "route": route, "path": scope["path"],
                    "status": status, "latency_ms": round(elapsed * 1000, 2), "images": note["images"],
                    "client": (scope.get("client") or ("",))[0],
                })  # fmt: skip
