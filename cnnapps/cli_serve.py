"""``cnnapps serve``: the HTTP service over the loaded models (registered on the main app by cli.py)."""

from __future__ import annotations

import typer

from cnnapps.cli import app


@app.command("serve")
def serve(
    model: list[str] = typer.Option(None, "--model", "-m", help="Model file, registry or zoo name; repeat for more."),
    index: str = typer.Option(None, "--index", help="An index to answer /v1/retrieve (its model serves /v1/embed)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 opens it to the network."),
    port: int = typer.Option(8000, "--port"),
    max_batch: int = typer.Option(16, "--max-batch", min=1, help="Requests one forward pass may take together."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", min=0, help="How long a batch waits to fill."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.001, help="Largest accepted request body."),
    device: str = typer.Option("auto", "--device"),
    engine: str = typer.Option(
        "auto", "--engine", help="Classification and embedding: auto, jit, eager or onnxruntime."
    ),
    allowed_host: list[str] = typer.Option(
        None, "--allowed-host", help="A name clients may reach the server by (Host header); repeat; * for any."
    ),
    request_timeout: float = typer.Option(
        60.0, "--request-timeout", min=0.001, help="Seconds a request's headers and body may take to arrive."
    ),
    keep_alive: float = typer.Option(5.0, "--keep-alive", min=0.001, help="Seconds an idle connection stays open."),
) -> None:
    """Serve models over HTTP: POST /v1/<task>, GET /healthz, /v1/models, OpenAPI at /docs, a page at /."""
    import uvicorn

    from cnnapps.serve.app import create_app, server_config

    specs = list(model or ([] if index else ["efficientnet_lite0"]))
    hosts = [host, *(allowed_host or [])]
    service = create_app(specs, index, max_batch, max_wait_ms, max_upload_mb, device, engine,
                         request_timeout_s=request_timeout, allowed_hosts=hosts)  # fmt: skip
    routes = sorted({r.path for r in service.routes if "POST" in getattr(r, "methods", ())})
    typer.echo(f"serving {', '.join(routes)} on http://{host}:{port} (page at /, API docs at /docs)", err=True)
    server = uvicorn.Server(server_config(service, host, port, keep_alive))
    server.run()
    if not server.started:  # uvicorn said why (e.g. the port is taken)
        raise typer.Exit(1)
