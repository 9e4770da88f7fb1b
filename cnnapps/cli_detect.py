"""``cnnapps detect|segment|pose``, ``cnnapps train detect|segment|pose`` and ``cnnapps eval detect|segment|pose``.

The three tasks share one implementation each for predict, train and eval; only the task name differs.
Like the rest of the CLI this module imports typer only; commands import what they need.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from cnnapps.cli import (
    EXIT_SOME_FAILED,
    Devices,
    LrScaling,
    NumNodes,
    Strategy,
    SyncBatchnorm,
    _console,
    _echo_json,
    _free_name,
    _images,
    _progress,
    _report_failed,
    _scale_out,
    app,
    eval_app,
    train_app,
)
from cnnapps.errors import CnnappsError

_WHAT = {"detect": "objects (boxes)", "segment": "boxes and instance masks", "pose": "people and their keypoints"}
_ZOO = {"detect": "fasterrcnn_resnet50_fpn", "segment": "maskrcnn_resnet50_fpn", "pose": "keypointrcnn_resnet50_fpn"}


def _predict_command(task: str) -> Any:
    def command(
        paths: list[str] = typer.Argument(..., help="Image files, folders (searched recursively) or globs."),
        model: str = typer.Option(
            None, "--model", "-m", help=f"Trained model file or a torchvision COCO model [default: {_ZOO[task]}]."
        ),
        score_threshold: float = typer.Option(0.5, "--score-threshold", min=0.0, max=1.0, help="Keep scores >= this."),
        tile: int = typer.Option(None, "--tile", min=64, help="Run on overlapping tiles of this size (large images)."),
        overlap: int = typer.Option(128, "--overlap", min=0, help="Pixels shared by neighbouring tiles."),
        save_dir: Path = typer.Option(None, "--save-dir", help="Write overlays here (existing files are kept)."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON: one object per input, masks as COCO RLE."),
    ) -> None:
        from cnnapps.api import load

        inputs = _images(paths)
        predictor = load(model, task=task, device=device, score_threshold=score_threshold, tile=tile, overlap=overlap)
        with _progress(len(inputs), f"{task}ing", minimum=4) as advance:
            results = predictor.predict(inputs, progress=advance)
        if save_dir is not None:
            _save_overlays(results, save_dir)
        if as_json:
            _echo_json([r.to_dict() for r in results])
        else:
            _print_detections(results)
        failed = [r for r in results if not r.ok]
        _report_failed([{"path": r.source, "error": r.error} for r in failed])
        if failed:
            raise typer.Exit(EXIT_SOME_FAILED)

    command.__doc__ = (
        f"Find {_WHAT[task]} in images. Exit code 0: all done; 1: some inputs failed (reported, others done); 2: error."
    )
    return command


def _save_overlays(results: list[Any], folder: Path) -> None:
    from cnnapps.datasets.io import read_image, write_image

    folder.mkdir(parents=True, exist_ok=True)
    for r in results:
        if r.ok:
            path = _free_name(folder, Path(r.source).stem)
            write_image(path, r.draw(read_image(r.source, max_pixels=None)))
            typer.echo(f"wrote {path}", err=True)


def _print_detections(results: list[Any]) -> None:
    from collections import Counter

    from rich.table import Table

    table = Table()
    for column in ("image", "objects", "found"):
        table.add_column(column)
    for r in results:
        if not r.ok:
            table.add_row(r.source, "", f"[red]error: {r.error}[/]")
            continue
        counts = Counter(i.label for i in r.instances)
        best = {}
        for i in r.instances:
            best[i.label] = max(best.get(i.label, 0.0), i.score)
        found = ", ".join(f"{n}x {label} (best {best[label]:.0%})" for label, n in counts.most_common())
        table.add_row(r.source, str(len(r.instances)), found or "-")
    _console().print(table)


def _train_command(task: str) -> Any:
    def command(
        data: str = typer.Option(None, "--data", help="COCO annotation JSON (instances or person keypoints)."),
        images: str = typer.Option(None, "--images", help="Folder the JSON's file_name entries are in."),
        val_data: str = typer.Option(None, "--val-data", help="Validation COCO JSON [default: hold out --val-split]."),
        val_images: str = typer.Option(None, "--val-images", help="Validation image folder [default: --images]."),
        backbone: str = typer.Option(None, "--backbone", help="Registry name [default: resnet50]."),
        weights: str = typer.Option(
            None, "--weights", help="imagenet (backbone only), coco (torchvision COCO model, resnet50), none or a file."
        ),
        trainable_stages: int = typer.Option(None, "--trainable-stages", help="Train the last N backbone stages."),
        fpn_channels: int = typer.Option(None, "--fpn-channels", help="FPN width; heads scale with it [default: 256]."),
        min_size: int = typer.Option(None, "--min-size", help="Shorter side images are resized to [default: 800]."),
        max_size: int = typer.Option(None, "--max-size", help="Longest side limit [default: 1333]."),
        epochs: int = typer.Option(None, "--epochs"),
        batch_size: int = typer.Option(None, "--batch-size"),
        lr: float = typer.Option(None, "--lr", help="[default: 1e-4 for adamw, 0.02 x batch/16 for sgd]"),
        optimizer: str = typer.Option(None, "--optimizer", help="adamw or sgd."),
        augment: str = typer.Option(None, "--augment", help="default or none."),
        val_split: float = typer.Option(None, "--val-split", help="Held-out fraction without --val-data [0.2]."),
        patience: int = typer.Option(None, "--patience", help="Stop after this many epochs without a better AP."),
        out: str = typer.Option(None, "--out", help=f"Run folder [default: runs/{task}]."),
        config: Path = typer.Option(None, "--config", help=f"YAML recipe (configs/{task}/*.yaml); flags override it."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
        workers: int = typer.Option(None, "--workers", help="Data-loading processes [default: up to 4]."),
        device: str = typer.Option(None, "--device", help="auto, cpu or cuda."),
        devices: Devices = None,
        num_nodes: NumNodes = None,
        strategy: Strategy = None,
        sync_batchnorm: SyncBatchnorm = False,
        lr_scaling: LrScaling = None,
        as_json: bool = typer.Option(False, "--json", help="Print the final metrics as JSON."),
    ) -> None:
        from cnnapps.apps.common.training import load_config
        from cnnapps.apps.detect.evaluate import MAIN_METRIC
        from cnnapps.apps.detect.train import DetectConfig, train_detector

        cfg = load_config(
            config, DetectConfig,
            task=task, data=data, images=images, val_data=val_data, val_images=val_images, backbone=backbone,
            weights=weights, trainable_stages=trainable_stages, fpn_channels=fpn_channels, min_size=min_size,
            max_size=max_size, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, augment=augment,
            val_split=val_split, patience=patience, out=out, resume=resume or None, workers=workers, device=device,
            progress=False if as_json else None,  # the bar would mix with the JSON on stdout
            **_scale_out(devices, num_nodes, strategy, sync_batchnorm, lr_scaling),
        )  # fmt: skip
        metrics = train_detector(cfg)
        if metrics.get("global_rank"):  # another process of a distributed run; rank 0 reports
            return
        main = f"val_{MAIN_METRIC[task]}"
        keys = [k for k in metrics if k.startswith("val_") and k.endswith(("_ap", "_ap50", "_ap75"))]
        if as_json:
            _echo_json({k: metrics[k] for k in [*keys, "epochs", "best_epoch", "train_seconds"]})
            return
        scores = ", ".join(f"{k[4:]} {metrics[k]:.3f}" for k in keys if metrics[k] is not None)
        _console().print(
            f"{scores} (best {main[4:]} at epoch {metrics['best_epoch']} of {metrics['epochs']}, "
            f"{metrics['train_seconds']:.0f} s)\nwrote {cfg.out}/model.safetensors, metrics.json, curves.png"
        )

    command.__doc__ = f"Train a {task} model on a COCO-format set; writes model.safetensors, metrics.json, curves.png."
    return command


def _eval_command(task: str) -> Any:
    def command(
        model: str = typer.Option(..., "--model", "-m", help="Model file or a torchvision COCO model name."),
        data: str = typer.Option(..., "--data", help="COCO annotation JSON with the ground truth."),
        images: str = typer.Option(..., "--images", help="Folder the JSON's file_name entries are in."),
        save_results: Path = typer.Option(None, "--save-results", help="Write the detections as COCO results JSON."),
        device: str = typer.Option("auto", "--device"),
        as_json: bool = typer.Option(False, "--json", help="Print all metrics as JSON."),
    ) -> None:
        from cnnapps.api import load
        from cnnapps.apps.detect.evaluate import evaluate_detector
        from cnnapps.datasets.coco import CocoDataset

        if save_results is not None and save_results.exists():
            raise CnnappsError(f"{save_results}: already exists; choose another --save-results")
        predictor = load(model, task=task, device=device, score_threshold=0.05)
        dataset = CocoDataset(data, images, task)
        with _progress(len(dataset), "evaluating", minimum=4) as advance:
            report, results = evaluate_detector(predictor, dataset, progress=advance)
        if save_results is not None:
            save_results.write_text(json.dumps(results))
            typer.echo(f"wrote {save_results} ({len(results)} detections)", err=True)
        if as_json:
            _echo_json(report)
        else:
            _print_coco_metrics(report)
            _report_failed(report["failed"])
        if report["failed"]:
            raise typer.Exit(EXIT_SOME_FAILED)

    command.__doc__ = f"COCO AP of a {task} model (pycocotools): AP, AP50, AP75, small/medium/large."
    return command


def _print_coco_metrics(report: dict[str, Any]) -> None:
    from rich.table import Table

    metrics = report["metrics"]
    kinds = list(dict.fromkeys(k.split("_")[0] for k in metrics))
    columns = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
    table = Table(title=f"{report['images']} images, {report['detections']} detections")
    table.add_column("")
    for header in ("AP", "AP50", "AP75", "AP small", "AP medium", "AP large"):
        table.add_column(header, justify="right")
    for kind in kinds:
        cells = [metrics.get(f"{kind}_{c}") for c in columns]
        table.add_row(kind, *("-" if v is None else f"{v:.3f}" for v in cells))
    _console().print(table)


for _task in ("detect", "segment", "pose"):
    app.command(_task)(_predict_command(_task))
    train_app.command(_task)(_train_command(_task))
    eval_app.command(_task)(_eval_command(_task))
