"""``cnnapps serve`` (the HTTP service) and ``cnnapps export`` (ONNX, TorchScript), registered on the main command."""

from __future__ import annotations

import errno
import os
import socket
import sys

import typer

from cnnapps.cli import app
from cnnapps.errors import CnnappsError, in_one_line
from cnnapps.terminal import echo, echo_json


@app.command("export")
def export(
    spec: str = typer.Argument(None, metavar="MODEL", help="Model file, registry or zoo name (or --model)."),
    model: str = typer.Option(None, "--model", "-m", help="Model file, registry or zoo name."),
    fmt: str = typer.Option("onnx", "--format", help="onnx or torchscript (detection models: onnx)."),
    out: str = typer.Option(..., "--out", help="File to write (never over an existing one)."),
    task: str = typer.Option(
        None, "--task", help="What to export: retrieve exports the embedding of a classifier or registry net."
    ),
    head: str = typer.Option(None, "--head", help="The head of a multi-head model file to export."),
    pooling: str = typer.Option("avg", "--pooling", help="Embeddings: avg or gem."),
    int8: bool = typer.Option(
        False,
        "--int8",
        help="ONNX with 8-bit weights and activations (static post-training quantization, QDQ, weights per channel), "
        "calibrated on --calibrate, for CPUs. Classification, embedding and R-CNN detection models (detectors: "
        "convolutions in 8 bits; resize, box decoding, NMS, RoI Align and the box head stay fp32).",
    ),
    calibrate: str = typer.Option(
        None, "--calibrate", metavar="DIR", help="Images like those the model will see, to calibrate --int8 on."
    ),
    check: str = typer.Option(
        None,
        "--check",
        metavar="DIR",
        help="Held-out images to compare the int8 or fp16 graph with fp32 on (top-1 agreement, embedding cosine, "
        "box F1), printed and stored in the file [--int8 default: every fifth --calibrate image, held out].",
    ),
    fp16: bool = typer.Option(
        False,
        "--fp16",
        help="ONNX in fp16 with fp32 inputs and outputs, half the size: meant for GPUs (on a CPU onnxruntime computes "
        "most ops back in fp32: expect no speed-up there). Detectors: the learned layers in fp16, boxes in fp32.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Write a model as ONNX (fp32, int8 or fp16) or TorchScript.

    The file carries its metadata (task, classes, preprocessing; for int8 and fp16 also how it was made and how it
    compared with fp32 on the check images)."""
    from cnnapps.errors import CnnappsError
    from cnnapps.export import export_model

    if (spec is None) == (model is None):
        raise CnnappsError("name the model once: cnnapps export MODEL --out FILE (or --model MODEL)")
    written = export_model(spec or model, fmt, out, task=task, pooling=pooling, head=head, int8=int8,
                           calibrate=calibrate, check=check, fp16=fp16)  # fmt: skip
    if as_json:
        echo_json(written)
        return
    kind = f"{written['format']} {written['precision']}" if "precision" in written else written["format"]
    size = f"{written['bytes'] / 2**20:.1f} MB"
    if "fp32_bytes" in written:
        size += f"; fp32 {written['fp32_bytes'] / 2**20:.1f} MB"
    echo(f"wrote {written['path']} ({kind}, {written['task']}, {size})")
    if written.get("check"):
        from cnnapps.quantize import describe_check

        echo(describe_check(written["check"], written["precision"]))


@app.command("serve")
def serve(
    model: list[str] = typer.Option(None, "--model", "-m", help="Model file, registry or zoo name; repeat for more."),
    index: str = typer.Option(None, "--index", help="An index to answer /v1/retrieve (its model serves /v1/embed)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 opens it to the network."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on (0: one the system picks)."),
    max_batch: int = typer.Option(16, "--max-batch", min=1, help="Requests one forward pass may take together."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", min=0, help="How long a batch waits to fill."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.001, help="Largest accepted request body."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    engine: str = typer.Option(
        "auto",
        "--engine",
        help="auto, eager, jit, compile, onnxruntime, onnx-cuda, tensorrt or openvino (cnnapps models --engines).",
    ),
    allowed_host: list[str] = typer.Option(
        None, "--allowed-host", help="A name clients may reach the server by (Host header); repeat; * for any."
    ),
    request_timeout: float = typer.Option(
        60.0, "--request-timeout", min=0.001, help="Seconds a request's headers and body may take to arrive."
    ),
    keep_alive: float = typer.Option(5.0, "--keep-alive", min=0.001, help="Seconds an idle connection stays open."),
    max_clip_mb: float = typer.Option(50.0, "--max-clip-mb", min=0.001, help="Largest video a /video route takes."),
    max_clip_s: float = typer.Option(60.0, "--max-clip-s", min=0.001, help="Longest video a /video route takes."),
    max_clip_frames: int = typer.Option(
        1800, "--max-clip-frames", min=1, help="Most frames (after vid_stride) of a video a /video route takes."
    ),
    max_images: int = typer.Option(
        64, "--max-images", min=1, help="Images one request may carry (multipart 'images', JSON {\"images\": [...]})."
    ),
    api_key: list[str] = typer.Option(
        None, "--api-key", help="Require this key on /v1 routes (repeat; see also $CNNAPPS_API_KEYS, --api-keys-file)."
    ),
    api_keys_file: str = typer.Option(None, "--api-keys-file", help="A file of API keys, one a line (# comments)."),
    metrics_need_key: bool = typer.Option(
        False, "--metrics-need-key", help="/metrics needs an API key too (it is open by default, as scrapers expect)."
    ),
    cors_origin: list[str] = typer.Option(
        None,
        "--cors-origin",
        help="A web origin whose pages may call the API (CORS; repeat; * for any). Off by default.",
    ),
    max_concurrent_per_client: int = typer.Option(
        0,
        "--max-concurrent-per-client",
        min=0,
        help="Requests one client IP may have running at once (429 past it); 0: no cap.",
    ),
    log_format: str = typer.Option(
        "text",
        "--log-format",
        help="text, or json: one JSON line per request (request_id, route, status, latency_ms, images).",
    ),
    forwarded_allow_ips: str = typer.Option(
        None,
        "--forwarded-allow-ips",
        metavar="IPS",
        help="The proxies trusted to say who the client is (X-Forwarded-For): comma-separated addresses or networks, "
        "* for any. Off by default: the client is the peer that connected.",
    ),
    shutdown_delay: float = typer.Option(
        0.0,
        "--shutdown-delay",
        min=0,
        help="Seconds to keep serving after SIGTERM, /readyz already 503 (for load balancers).",
    ),
) -> None:
    """Serve models over HTTP, with a page and API docs.

    POST /v1/<task> and /v1/predict (every head of a multi-head model; one image, or many as multipart 'images'
    fields or JSON {"images": [...]}, answered as a list), POST /v1/<task>/video (a short clip, JSON Lines back),
    GET /v1/models, OpenAPI at /docs, a page at /.

    With an API key (--api-key, --api-keys-file, or $CNNAPPS_API_KEYS, comma-separated), every /v1 route needs
    'Authorization: Bearer KEY' or 'X-API-Key: KEY' (401 otherwise); the page, /docs, GET /livez (liveness),
    /readyz (readiness: 503 until the models are warm and once shutdown begins), /healthz and /metrics
    (Prometheus; unless --metrics-need-key) stay open. Every answer carries an X-Request-ID (the client's, or a
    new one). On SIGTERM or Ctrl+C the server stops accepting, answers every request it has, and exits 0."""
    from cnnapps.serve.app import create_app, create_server
    from cnnapps.serve.operations import load_api_keys

    specs = list(model or ([] if index else ["efficientnet_lite0"]))
    hosts = [host, *(allowed_host or [])]
    keys = load_api_keys(api_key or [], api_keys_file)
    listening = _bind(host, port)  # before the models load: a port that is taken is said at once
    port = listening.getsockname()[1]
    service = create_app(specs, index, max_batch, max_wait_ms, max_upload_mb, device, engine,
                         request_timeout_s=request_timeout, allowed_hosts=hosts, max_clip_mb=max_clip_mb,
                         max_clip_s=max_clip_s, max_clip_frames=max_clip_frames, max_images=max_images,
                         api_keys=keys, metrics_need_key=metrics_need_key,
                         cors_origins=cors_origin or [], max_concurrent_per_client=max_concurrent_per_client,
                         log_format=log_format)  # fmt: skip
    routes = sorted({r.path for r in service.routes if "POST" in getattr(r, "methods", ())})
    guarded = f", {len(keys)} API key{'s' if len(keys) != 1 else ''}" if keys else ""
    echo(f"serving {', '.join(routes)} on http://{host}:{port} (page at /, API docs at /docs{guarded})", err=True)
    server = create_server(service, host, port, keep_alive, shutdown_delay, forwarded_allow_ips=forwarded_allow_ips)
    server.run(sockets=[listening])
    if not server.started:  # uvicorn said why (e.g. the port is taken)
        raise typer.Exit(1)
    if getattr(server, "force_exit", False):
        # Ctrl+C once more: requests were not waited for, and one may hold a thread no signal reaches (a read of a
        # hung network file system), which the interpreter would wait for at exit
        echo("stopped at the second Ctrl+C, without answering the requests in progress", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` for the server to listen on, as uvicorn binds it (IPv6 for a host with
    a colon, else IPv4: ``localhost`` is 127.0.0.1), or a one-line error naming the address and why (taken, not this
    machine's, not an address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise CnnappsError(f"--host {host}: not an address to listen on ({in_one_line(exc)})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        why = exc.strerror or in_one_line(exc)
        raise CnnappsError(f"--port {port}: cannot listen on {host}:{port} ({why.lower()}); choose another --port"
                           + (" or --host" if exc.errno != errno.EADDRINUSE else "")) from None  # fmt: skip
    sock.set_inheritable(True)
    return sock
