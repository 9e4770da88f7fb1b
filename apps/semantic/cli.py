"""``cnnapps semantic``, ``cnnapps eval semantic``, ``cnnapps panoptic`` and ``cnnapps eval panoptic``.

Imports typer only; commands import what they need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cnnapps.errors import CnnappsError
from cnnapps.terminal import (
    EXIT_SOME_FAILED,
    console,
    echo,
    echo_json,
    free_name,
    free_picture,
    head_option,
    images,
    output_folder,
    plural,
    predict_images,
    progress,
    report_failed,
    styled,
)


def _finish(results: list[Any], save_dir: Path | None, save_masks: Path | None, as_json: bool, table: Any) -> None:
    """Overlays and masks written (never over a file), JSON or a table printed, failures reported (exit 1)."""
    from cnnapps.datasets.io import read_image, write_image

    for folder, write in ((save_dir, "overlay"), (save_masks, "mask")):
        if folder is None:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for r in results:
            if not r.ok:
                continue
            path = free_name(folder, Path(r.source).stem)
            if write == "overlay":
                write_image(path, r.draw(read_image(r.source, max_pixels=None)))
            elif hasattr(r, "save_mask"):
                r.save_mask(path)
            else:
                r.save_png(path)
            echo(f"wrote {path}", err=True)
    if as_json:
        echo_json([r.with_engine() for r in results])
    else:
        table(results)
    failed = [r for r in results if not r.ok]
    report_failed([{"path": r.source, "error": r.error} for r in failed])
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def semantic(
    paths: list[str] = typer.Argument(..., help="Image files, folders (searched recursively) or globs."),
    model: str = typer.Option(
        None,
        "--model",
        "-m",
        help="Trained model file, exported ONNX file or a torchvision model "
        "(fcn_resnet50, deeplabv3_resnet50, lraspp_mobilenet_v3_large, ...) [default: deeplabv3_resnet50].",
    ),
    tile: int = typer.Option(None, "--tile", min=16, help="Sliding window of this many pixels (large images)."),
    overlap: int = typer.Option(64, "--overlap", min=0, help="Pixels shared by neighbouring windows."),
    save_dir: Path = typer.Option(None, "--save-dir", help="Write colour overlays here (existing files are kept)."),
    save_masks: Path = typer.Option(None, "--save-masks", help="Write index PNGs (pixel value = class) here."),
    batch_size: int = typer.Option(None, "--batch-size", "-b", min=1, help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    head: str = head_option("semantic"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: one object per input with each class's area."),
) -> None:
    """Label every pixel of images with a class. Exit code 0: all done; 1: some inputs failed (reported, others
    done); 2: error."""
    from cnnapps.api import load

    save_dir, save_masks = output_folder(save_dir, "--save-dir"), output_folder(save_masks, "--save-masks")
    inputs = images(paths)
    predictor = load(model, task="semantic", device=device, tile=tile, overlap=overlap, batch_size=batch_size,
                     head=head)  # fmt: skip
    results = predict_images(predictor, inputs, "segmenting", minimum=4)  # Ctrl-C: the answers so far
    _finish(results, save_dir, save_masks, as_json, _print_classes)


def _print_classes(results: list[Any]) -> None:
    from rich.table import Table

    table = Table()
    for column in ("image", "size", "classes (share of the pixels)"):
        table.add_column(column)
    for r in results:
        if not r.ok:
            table.add_row(r.source, "", styled(f"error: {r.error}", "red"))
            continue
        table.add_row(r.source, f"{r.width}x{r.height}", r.summary() or "-")
    console().print(table)


def eval_semantic(
    model: str = typer.Option(..., "--model", "-m", help="Model file, exported ONNX file or torchvision model."),
    data: str = typer.Option(
        ..., "--data", help="VOC root, image folder (with --masks or images/ + masks/), or COCO JSON."
    ),
    masks: str = typer.Option(None, "--masks", help="Mask folder for an image folder."),
    images_dir: str = typer.Option(None, "--images", help="Image folder of a COCO JSON."),
    classes: str = typer.Option(None, "--classes", help="Class list file [default: classes.txt of the data]."),
    split: str = typer.Option("val", "--split", help="VOC split list to score."),
    ignore_index: int = typer.Option(255, "--ignore-index", help="Mask value left out of the scores."),
    tile: int = typer.Option(None, "--tile", min=16, help="Sliding window of this many pixels."),
    overlap: int = typer.Option(64, "--overlap", min=0, help="Pixels shared by neighbouring windows."),
    save_confusion: Path = typer.Option(
        None, "--save-confusion", help="Draw the confusion matrix to this picture (no suffix: PNG)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    head: str = head_option("semantic"),
    as_json: bool = typer.Option(False, "--json", help="Print all scores as JSON."),
) -> None:
    """mIoU, per-class IoU, pixel accuracy, mean accuracy and frequency-weighted IoU of a semantic model (classes
    meet by name), and its confusion matrix."""
    from cnnapps.api import load
    from cnnapps.apps.semantic.evaluate import evaluate_semantic
    from cnnapps.datasets.semantic import read_semantic_data

    if save_confusion is not None:
        free_picture(save_confusion, "--save-confusion")
    dataset = read_semantic_data(data, masks=masks, images=images_dir, classes=classes, split=split,
                                 ignore_index=ignore_index)  # fmt: skip
    predictor = load(model, task="semantic", device=device, tile=tile, overlap=overlap, head=head)
    with progress(len(dataset), "evaluating", minimum=4) as advance:
        report = evaluate_semantic(predictor, dataset, progress=advance)
    found = report.to_dict()
    if save_confusion is not None:
        from cnnapps.apps.common.plots import plot_confusion

        plot_confusion(report.confusion, report.class_names, save_confusion, overwrite=False)
        echo(f"wrote {save_confusion}", err=True)
    if as_json:
        echo_json(found)
    else:
        _print_scores(found)
        report_failed(found["failed"])
    if found["failed"]:
        raise typer.Exit(EXIT_SOME_FAILED)


def _print_scores(found: dict[str, Any]) -> None:
    from rich.table import Table

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.2%}"

    echo(f"{plural(found['images'], 'image')}: mIoU {pct(found['miou'])}, pixel accuracy {pct(found['pixel_acc'])}, "
         f"mean accuracy {pct(found['mean_acc'])}, frequency-weighted IoU {pct(found['fwiou'])}")  # fmt: skip
    table = Table()
    for column, justify in (("class", "left"), ("IoU", "right"), ("accuracy", "right"), ("pixels", "right")):
        table.add_column(column, justify=justify)
    for name, row in found["per_class"].items():
        table.add_row(name, pct(row["iou"]), pct(row["acc"]), f"{row['pixels']:,}")
    console().print(table)


def panoptic(
    paths: list[str] = typer.Argument(..., help="Image files, folders (searched recursively) or globs."),
    model: str = typer.Option(..., "--model", "-m", help="Panoptic model file (`cnnapps train panoptic`)."),
    save_dir: Path = typer.Option(None, "--save-dir", help="Write overlays here (existing files are kept)."),
    save_masks: Path = typer.Option(None, "--save-masks", help="Write COCO panoptic PNGs (segment ids) here."),
    batch_size: int = typer.Option(None, "--batch-size", "-b", min=1, help="Images per trunk pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    head: str = head_option("panoptic"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: one object per input with its segments."),
) -> None:
    """Things and stuff: a segment for every pixel.

    Each object is its own segment. Exit code 0: all done; 1: some inputs
    failed (reported, others done); 2: error."""
    from cnnapps.api import load

    save_dir, save_masks = output_folder(save_dir, "--save-dir"), output_folder(save_masks, "--save-masks")
    inputs = images(paths)
    predictor = load(model, task="panoptic", device=device, batch_size=batch_size, head=head)
    results = predict_images(predictor, inputs, "segmenting", minimum=4)  # Ctrl-C: the answers so far
    _finish(results, save_dir, save_masks, as_json, _print_segments)


def _print_segments(results: list[Any]) -> None:
    from collections import Counter

    from rich.table import Table

    table = Table()
    for column in ("image", "things", "stuff"):
        table.add_column(column)
    for r in results:
        if not r.ok:
            table.add_row(r.source, styled(f"error: {r.error}", "red"), "")
            continue
        things = Counter(s.label for s in r.segments if s.isthing)
        stuff = [s.label for s in r.segments if not s.isthing]
        table.add_row(r.source, ", ".join(f"{n}x {label}" for label, n in things.most_common()) or "-",
                      ", ".join(stuff) or "-")  # fmt: skip
    console().print(table)


def eval_panoptic(
    model: str = typer.Option(..., "--model", "-m", help="Panoptic model file."),
    data: str = typer.Option(..., "--data", help="COCO panoptic JSON (its PNGs in <json without .json>/)."),
    images_dir: str = typer.Option(..., "--images", help="Image folder of the panoptic JSON."),
    pngs: str = typer.Option(None, "--pngs", help="Folder of its ground-truth PNGs."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    head: str = head_option("panoptic"),
    as_json: bool = typer.Option(False, "--json", help="Print all scores as JSON."),
) -> None:
    """Panoptic quality PQ = SQ x RQ over all, things and stuff (panopticapi's matching: IoU > 0.5)."""
    from cnnapps.api import load
    from cnnapps.apps.semantic.panoptic import evaluate_panoptic
    from cnnapps.apps.semantic.pq import read_panoptic

    dataset = read_panoptic(data, images_dir, pngs)
    predictor = load(model, task="panoptic", device=device, head=head)
    with progress(len(dataset), "evaluating", minimum=4) as advance:
        found = evaluate_panoptic(predictor, dataset, progress=advance)
    if as_json:
        echo_json(found)
    else:
        from rich.table import Table

        table = Table(title=plural(found["images"], "image"))
        for column in ("", "PQ", "SQ", "RQ", "classes"):
            table.add_column(column, justify="right" if column else "left")
        for part in ("all", "things", "stuff"):
            row = found[part]
            cells = ["-" if row[k] is None else f"{100 * row[k]:.1f}" for k in ("pq", "sq", "rq")]
            table.add_row(part, *cells, str(row["n"]))
        console().print(table)
        report_failed(found["failed"])
    if found["failed"]:
        raise typer.Exit(EXIT_SOME_FAILED)


def register(app: typer.Typer, eval_app: typer.Typer, task: str) -> None:
    """Add the prediction verb and the eval command of ``task`` (semantic or panoptic) to ``cnnapps``."""
    commands = {"semantic": (semantic, eval_semantic), "panoptic": (panoptic, eval_panoptic)}
    if task not in commands:
        raise CnnappsError(f"{task}: not a task of cnnapps.apps.semantic")
    predict, evaluate = commands[task]
    app.command(task)(predict)
    eval_app.command(task)(evaluate)
