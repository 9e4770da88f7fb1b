"""``cnnapps batch TASK PATHS --out DIR``: a task's predictions over many files on a Ray cluster, into Parquet or
JSON Lines parts (:mod:`cnnapps.batch`), registered on the main command. Ray and torch are imported only when
it runs."""

from __future__ import annotations

from pathlib import Path

import typer

from cnnapps.apps.tasks import TASKS
from cnnapps.cli import app
from cnnapps.errors import CnnappsError
from cnnapps.terminal import EXIT_SOME_FAILED, echo, echo_json, plural, progress


@app.command("batch")
def batch(
    task: str = typer.Argument(..., metavar="TASK", help=f"What to predict: {', '.join(TASKS)}."),
    paths: list[str] = typer.Argument(None, help="Images: folders (recursive), files or globs."),
    out: Path = typer.Option(..., "--out", help="Folder of the part files (and _plan.json); rerun to resume."),
    model: str = typer.Option(None, "--model", "-m", help="Model file, or a name [default: the task's own]."),
    files_from: Path = typer.Option(None, "--files-from", help="A text file of input paths, one per line."),
    fmt: str = typer.Option("parquet", "--format", help="parquet or jsonl."),
    part_size: int = typer.Option(1000, "--part-size", min=1, help="Inputs per part file."),
    device: str = typer.Option(
        "auto", "--device", help="auto, cpu or cuda, in each actor (cuda asks Ray for a GPU per actor)."
    ),
    engine: str = typer.Option(None, "--engine", help="Inference engine, where the task has several."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Images per forward pass in each worker."),
    settings: list[str] = typer.Option(
        None, "--set", metavar="KEY=VALUE", help="Any other option of the task's predictor (e.g. top_k=3)."
    ),
    workers: int = typer.Option(None, "--workers", min=1, help="Ray actors [default: one per CPU of the cluster]."),
    address: str = typer.Option(
        None, "--address", help="A running Ray cluster (auto, ray://host:10001) [default: start one here]."
    ),
    gpus_per_worker: float = typer.Option(
        None, "--gpus-per-worker", min=0, help="GPUs each actor asks Ray for [default: 1 with --device cuda, else 0]."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print what was done as JSON."),
) -> None:
    """Predict on many files with Ray; a rerun resumes.

    Each actor loads the model once and writes part after part (OUT/part-00000.parquet ...: source, error,
    result as JSON). Exit code 0: all predicted; 1: some inputs failed (listed); 2: error."""
    from cnnapps.apps.tasks import get_task
    from cnnapps.batch import predict_files
    from cnnapps.parts import input_name
    from cnnapps.terminal import images, output_folder

    output_folder(out, "--out")  # a file in its way, or a folder not to be written in: said before Ray starts
    record = get_task(task)
    if gpus_per_worker is None:  # Ray hides the GPUs from actors that did not ask for one
        gpus_per_worker = 1.0 if device.startswith("cuda") else 0.0
    inputs = images(paths) if paths else []
    if files_from is not None:
        if not files_from.is_file():
            raise CnnappsError(f"{files_from}: no such file (--files-from)")
        inputs += [line.strip() for line in files_from.read_text().splitlines() if line.strip()]
    if not inputs:
        raise CnnappsError("no inputs: give PATHS or --files-from")
    given = {"device": device, "engine": engine, "batch_size": batch_size, **_parse(settings or [])}
    given = {k: v for k, v in given.items() if v is not None}
    load_options = record.options(given)
    predict_options = {k: v for k, v in given.items() if k in record.route_options and k != "draw"}
    ignored = sorted(set(given) - set(load_options) - set(predict_options))
    if ignored:
        raise CnnappsError(f"{', '.join(ignored)}: not an option of {task}'s predictor")
    with progress(len(set(map(input_name, inputs))), f"{task} on Ray") as advance:
        report = predict_files(task, inputs, out, model, fmt, part_size, load_options, predict_options, advance,
                               address=address, workers=workers, gpus_per_worker=gpus_per_worker)  # fmt: skip
    if as_json:
        echo_json(report.to_dict())
    else:
        echo(f"{out}: {plural(report.parts, 'part')} ({report.skipped} already finished), "
             f"{plural(report.predicted, 'input')} predicted ({report.predicted_now} by this run)")  # fmt: skip
    if report.failed:
        echo(f"{plural(len(report.failed), 'input')} failed:", err=True)
        for item in report.failed[:20]:
            echo(f"  {item['path']}: {item['error']}", err=True)
        if len(report.failed) > 20:
            echo(f"  ... and {len(report.failed) - 20} more (their rows in the parts have the error)", err=True)
        raise typer.Exit(EXIT_SOME_FAILED)


def _parse(settings: list[str]) -> dict[str, object]:
    """KEY=VALUE pairs, values read as YAML scalars (3, 0.5, true, text)."""
    import yaml

    parsed = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CnnappsError(f"--set {item}: expected KEY=VALUE")
        parsed[key.strip().replace("-", "_")] = yaml.safe_load(value) if value else ""
    return parsed
