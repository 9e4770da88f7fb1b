"""``cnnapps detect|segment|pose`` and ``cnnapps eval detect|segment|pose``.

The three tasks share one implementation each for predict and eval; only the task name differs. Imports typer
only; commands import what they need.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from cnnapps.errors import CnnappsError
from cnnapps.files import atomic_write
from cnnapps.terminal import (
    EXIT_SOME_FAILED,
    console,
    echo,
    echo_json,
    head_option,
    images,
    output_folder,
    plural,
    predict_images,
    progress,
    report_failed,
    save_drawings,
    styled,
)

_WHAT = {"detect": "objects (boxes)", "segment": "boxes and instance masks", "pose": "people and their keypoints"}
#: what ``--json`` gives for each instance, by task (detect: boxes only)
_JSON = {
    "detect": "label, score and box (x0 y0 x1 y1)",
    "segment": "label, score, box (x0 y0 x1 y1) and mask (COCO RLE)",
    "pose": "label, score, box (x0 y0 x1 y1) and keypoints ([x, y, score] each)",
}


def _predict_command(task: str) -> Any:
    from cnnapps.apps.tasks import get_task

    default = get_task(task).default_model

    def command(
        paths: list[str] = typer.Argument(..., help="Image files, folders (searched recursively) or globs."),
        model: str = typer.Option(
            None, "--model", "-m", help=f"Trained model file or a torchvision COCO model [default: {default}]."
        ),
        score_threshold: float = typer.Option(0.5, "--score-threshold", min=0.0, max=1.0, help="Keep scores >= this."),
        tile: str = typer.Option(
            None,
            "--tile",
            metavar="auto|SIZE",
            callback=_check_tile,
            help="Run on overlapping tiles (large images): auto, the size the model was trained at, or a size in "
            "pixels (64 or more; one far from the training size is warned of).",
        ),
        overlap: int = typer.Option(
            None, "--overlap", min=0, help="Pixels shared by neighbouring tiles [default: 128, at most half the tile]."
        ),
        save_dir: Path = typer.Option(None, "--save-dir", help="Write overlays here (existing files are kept)."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        batch_size: int = typer.Option(
            None,
            "--batch-size",
            "-b",
            min=1,
            help="Images per forward pass [default: 1 on CPU, 4 for video; 4 on GPU].",
        ),
        head: str = head_option(task),
        as_json: bool = typer.Option(
            False, "--json", help=f"Print JSON: one object per input, each instance with its {_JSON[task]}."
        ),
    ) -> None:
        from cnnapps.api import load

        save_dir = output_folder(save_dir, "--save-dir")
        inputs = images(paths)
        predictor = load(model, task=task, device=device, score_threshold=score_threshold, tile=tile, overlap=overlap,
                         batch_size=batch_size, head=head)  # fmt: skip
        results = predict_images(predictor, inputs, f"{task}ing", minimum=4)  # Ctrl-C: the answers so far
        if save_dir is not None:
            save_drawings(results, save_dir)
        if as_json:
            echo_json([r.with_engine() for r in results])
        else:
            _print_detections(results)
        failed = [r for r in results if not r.ok]
        report_failed([{"path": r.source, "error": r.error} for r in failed])
        if failed:
            raise typer.Exit(EXIT_SOME_FAILED)

    command.__doc__ = (
        f"Find {_WHAT[task]} in images. Exit code 0: all done; 1: some inputs failed (reported, others done); 2: error."
    )
    return command


def _check_tile(value: str | None) -> str | None:
    """``--tile``: auto or a size of 64 pixels or more (a bad value is a usage error)."""
    if value is None or value.strip().lower() == "auto":
        return value
    if not value.strip().isdigit() or int(value) < 64:
        raise typer.BadParameter(f"{value!r}: give auto or a size in pixels, 64 or more")
    return value.strip()


def _print_detections(results: list[Any]) -> None:
    from collections import Counter

    from rich.table import Table

    table = Table()
    for column in ("image", "objects", "found"):
        table.add_column(column)
    for r in results:
        if not r.ok:
            table.add_row(r.source, "", styled(f"error: {r.error}", "red"))
            continue
        counts = Counter(i.label for i in r.instances)
        best = {}
        for i in r.instances:
            best[i.label] = max(best.get(i.label, 0.0), i.score)
        found = ", ".join(f"{n}x {label} (best {best[label]:.0%})" for label, n in counts.most_common())
        table.add_row(r.source, str(len(r.instances)), found or "-")
    console().print(table)


def _eval_command(task: str) -> Any:
    def command(
        model: str = typer.Option(..., "--model", "-m", help="Model file or a torchvision COCO model name."),
        data: str = typer.Option(..., "--data", help="COCO annotation JSON with the ground truth."),
        images: str = typer.Option(..., "--images", help="Folder the JSON's file_name entries are in."),
        save_results: Path = typer.Option(None, "--save-results", help="Write the detections as COCO results JSON."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        head: str = head_option(task),
        as_json: bool = typer.Option(False, "--json", help="Print all metrics as JSON."),
    ) -> None:
        from cnnapps.api import load
        from cnnapps.apps.detect.evaluate import evaluate_detector
        from cnnapps.datasets.coco import CocoDataset

        if save_results is not None and save_results.exists():
            raise CnnappsError(f"{save_results}: already exists; choose another --save-results")
        if not Path(images).is_dir():
            raise CnnappsError(f"{images}: no such image folder (--images)")
        dataset = CocoDataset(data, images, task)  # the data first: a wrong path fails before the model loads
        _check_images_there(dataset, data, images)
        predictor = load(model, task=task, device=device, score_threshold=0.05, head=head)
        with progress(len(dataset), "evaluating", minimum=4) as advance:
            report, results = evaluate_detector(predictor, dataset, progress=advance)
        if report["failed"] and not report["images"]:
            first = report["failed"][0]
            raise CnnappsError(f"{data}: none of its {plural(len(report['failed']), 'image')} could be read from "
                               f"{images} ({first['path']}: {first['error']})")  # fmt: skip
        if save_results is not None:
            atomic_write(save_results, json.dumps(results).encode())
            echo(f"wrote {save_results} ({plural(len(results), 'detection')})", err=True)
        if as_json:
            echo_json(report)
        else:
            _print_coco_metrics(report)
            report_failed(report["failed"])
        if report["failed"]:
            raise typer.Exit(EXIT_SOME_FAILED)

    command.__doc__ = f"COCO AP of a {task} model (pycocotools): AP, AP50, AP75, small/medium/large."
    return command


def _check_images_there(dataset: Any, data: str, images: str) -> None:
    """Refuse an image folder that holds none of the annotation file's images, before the model loads."""
    paths = [dataset.image_path(i) for i in range(len(dataset))]
    if paths and not any(p.exists() for p in paths):
        raise CnnappsError(f"{images}: none of the {plural(len(paths), 'image')} of {data} is there (no "
                           f"{paths[0].name}); --images is the folder its file_name entries are in")  # fmt: skip


def _print_coco_metrics(report: dict[str, Any]) -> None:
    from rich.table import Table

    metrics = report["metrics"]
    kinds = list(dict.fromkeys(k.split("_")[0] for k in metrics))
    columns = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
    table = Table(title=f"{plural(report['images'], 'image')}, {plural(report['detections'], 'detection')}")
    table.add_column("")
    for header in ("AP", "AP50", "AP75", "AP small", "AP medium", "AP large"):
        table.add_column(header, justify="right")
    for kind in kinds:
        cells = [metrics.get(f"{kind}_{c}") for c in columns]
        table.add_row(kind, *("-" if v is None else f"{v:.3f}" for v in cells))
    console().print(table)


def register(app: typer.Typer, eval_app: typer.Typer, task: str) -> None:
    """Add the prediction verb and the eval command of ``task`` (detect, segment or pose) to ``cnnapps``."""
    app.command(task)(_predict_command(task))
    eval_app.command(task)(_eval_command(task))
