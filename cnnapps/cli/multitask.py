"""``cnnapps compose`` (heads trained on one trunk -> one model file) and ``cnnapps predict`` (every head of a model
file from one trunk pass), registered on the main command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cnnapps.cli import app
from cnnapps.cli.video import with_video
from cnnapps.terminal import (
    EXIT_SOME_FAILED,
    console,
    echo,
    echo_json,
    images,
    output_folder,
    predict_images,
    save_drawings,
    styled,
)


@app.command("compose")
def compose(
    models: list[str] = typer.Argument(..., help="Model files whose heads share one trunk.", metavar="MODELS..."),
    out: Path = typer.Option(..., "--out", "-o", help="The model file to write (never over an existing one)."),
    names: str = typer.Option(None, "--names", help="New names for the heads, in order, comma-separated."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Join heads trained on one trunk into one model file.

    Heads trained with `cnnapps train <task> --trunk SPEC` then answer from one trunk pass. Refused, naming both
    files, when trunks or preprocessing differ."""
    from cnnapps.apps.modelfile import compose as join
    from cnnapps.apps.modelfile import read_model_file
    from cnnapps.terminal import free

    free(out)
    wanted = [name.strip() for name in names.split(",")] if names else None  # "a, b" names "b", not " b"
    written = read_model_file(join(models, out, wanted))
    heads = {name: info.task for name, info in written.heads.items()}
    if as_json:
        echo_json({"path": str(out), "trunk": written.trunk["name"], "heads": heads, "bytes": out.stat().st_size})
        return
    listed = ", ".join(f"{name} ({task})" for name, task in heads.items())
    echo(f"wrote {out}: trunk {written.trunk['name']} with heads {listed} ({out.stat().st_size / 2**20:.1f} MB)")


def predict(
    model: str = typer.Argument(..., help="A model file (several heads answer at once), or any model spec."),
    paths: list[str] = typer.Argument(
        ..., help="Image files, folders (searched recursively) or globs.", metavar="PATHS..."
    ),
    tasks: str = typer.Option(None, "--tasks", help="Heads or tasks to run, comma-separated [default: all]."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Classes shown per classification head."),
    score_threshold: float = typer.Option(0.5, "--score-threshold", min=0.0, max=1.0, help="Detections kept."),
    beam: int = typer.Option(1, "--beam", min=1, help="Captioning beam width; 1 is greedy."),
    batch_size: int = typer.Option(None, "--batch-size", "-b", min=1, help="Images per trunk pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    save_dir: Path = typer.Option(None, "--save-dir", help="Draw every head's answer per image here."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: per image, one key per head."),
) -> None:
    """Every head of a model on images, one trunk pass per batch.

    Exit code 0: all done; 1: some inputs
    failed (reported, others done); 2: error."""
    from cnnapps.api import load_heads

    save_dir = output_folder(save_dir, "--save-dir")
    inputs = images(paths)
    chosen = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    predictor = load_heads(model, chosen, device=device, batch_size=batch_size, score_threshold=score_threshold,
                           beam=beam)  # fmt: skip
    results = predict_images(predictor, inputs, "predicting", top_k=top_k)  # Ctrl-C: the answers so far
    if save_dir is not None:
        save_drawings(results, save_dir)
    if as_json:
        echo_json([r.with_engine() for r in results])
    else:
        _print_answers(results, list(predictor.tasks))
    failed = [r for r in results if not r.ok]
    if failed:
        echo(f"{len(failed)} of {len(results)} inputs failed:", err=True)
        for r in failed:
            echo(f"  {r.source}: {r.error}", err=True)
        raise typer.Exit(EXIT_SOME_FAILED)


def _load_heads(options: dict[str, Any], extra: dict[str, Any]) -> Any:
    """The predictor ``cnnapps predict`` runs on video: the same heads, options and trunk pass as on images."""
    from cnnapps.api import load_heads

    chosen = [t.strip() for t in options["tasks"].split(",") if t.strip()] if options.get("tasks") else None
    return load_heads(options["model"], chosen, device=options["device"], batch_size=options["batch_size"],
                      score_threshold=options["score_threshold"], beam=options["beam"])  # fmt: skip


app.command("predict")(with_video(predict, _load_heads, loaded_with=("tasks", "beam")))


def _print_answers(results: list[Any], heads: list[str]) -> None:
    from rich.table import Table

    table = Table()
    table.add_column("image")
    for head in heads:
        table.add_column(head)
    for r in results:
        if not r.ok:
            table.add_row(r.source, styled(f"error: {r.error}", "red"), *[""] * (len(heads) - 1))
            continue
        table.add_row(r.source, *(r.results[h].summary() or "-" for h in heads))
    console().print(table)
