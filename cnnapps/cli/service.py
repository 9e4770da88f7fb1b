"""``cnnapps export``: a model as an ONNX or TorchScript file (registered on the main command)."""

from __future__ import annotations

import typer

from cnnapps.cli import app
from cnnapps.terminal import echo, echo_json


@app.command("export")
def export(
    model: str = typer.Option(..., "--model", "-m", help="Model file, registry or zoo name."),
    fmt: str = typer.Option("onnx", "--format", help="onnx or torchscript (detection models: onnx)."),
    out: str = typer.Option(..., "--out", help="File to write (never over an existing one)."),
    task: str = typer.Option(
        None, "--task", help="What to export: retrieve exports the embedding of a classifier or registry net."
    ),
    head: str = typer.Option(None, "--head", help="The head of a multi-head model file to export."),
    pooling: str = typer.Option("avg", "--pooling", help="Embeddings: avg or gem."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Write a classification, embedding or detection model as ONNX or TorchScript, with its metadata."""
    from cnnapps.export import export_model

    written = export_model(model, fmt, out, task=task, pooling=pooling, head=head)
    if as_json:
        echo_json(written)
    else:
        echo(f"wrote {written['path']} ({written['format']}, {written['task']}, {written['bytes'] / 2**20:.1f} MB)")
