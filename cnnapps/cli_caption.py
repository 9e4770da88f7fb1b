"""``cnnapps caption``, ``cnnapps train caption`` and ``cnnapps eval caption``.

Like the rest of the CLI this module imports typer only; commands import what they need.
"""

from __future__ import annotations

import json
from pathlib import Path

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


@app.command()
def caption(
    paths: list[str] = typer.Argument(..., help="Image files, folders (searched recursively) or globs."),
    model: str = typer.Option(..., "--model", "-m", help="Trained captioner (model file)."),
    beam: int = typer.Option(1, "--beam", min=1, help="Beam width; 1 is greedy decoding."),
    max_len: int = typer.Option(None, "--max-len", min=1, help="Most words per caption [default: the model's]."),
    save_attention: Path = typer.Option(None, "--save-attention", help="Write a picture of each word's attention."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: one object per input."),
) -> None:
    """Describe images in words. Exit code 0: all done; 1: some inputs failed (reported, others done); 2: error."""
    from cnnapps.api import load

    inputs = _images(paths)
    predictor = load(model, task="caption", device=device, beam=beam, max_len=max_len)
    with _progress(len(inputs), "captioning") as advance:
        results = predictor.predict(inputs, progress=advance)
    if save_attention is not None:
        from cnnapps.datasets.io import read_image, write_image

        save_attention.mkdir(parents=True, exist_ok=True)
        for r in results:
            if r.ok:
                target = _free_name(save_attention, f"{Path(r.source).stem}-attention")
                write_image(target, r.draw(read_image(r.source)))
                typer.echo(f"wrote {target}", err=True)
    if as_json:
        _echo_json([r.to_dict() for r in results])
    else:
        for r in results:
            typer.echo(f"{r.source}: {r.caption}" if r.ok else f"{r.source}: error: {r.error}")
    failed = [r for r in results if not r.ok]
    if failed and as_json:
        _report_failed([{"path": r.source, "error": r.error} for r in failed])
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


@train_app.command("caption")
def train_caption(
    data: str = typer.Option(None, "--data", help="COCO captions JSON or Karpathy's dataset_*.json."),
    images: str = typer.Option(None, "--images", help="Folder the file's image names are relative to."),
    val_data: str = typer.Option(None, "--val-data", help="Validation captions [default: Karpathy val, or split]."),
    val_images: str = typer.Option(None, "--val-images", help="Validation image folder [default: --images]."),
    backbone: str = typer.Option(None, "--backbone", help="Registry name [default: efficientnet_lite0]."),
    weights: str = typer.Option(None, "--weights", help="imagenet, none, or a weights file [default: imagenet]."),
    decoder: str = typer.Option(None, "--decoder", help="lstm (soft attention) or transformer [default: lstm]."),
    grid: int = typer.Option(None, "--grid", help="Feature grid side the encoder pools to [default: 14]."),
    fine_tune_after: int = typer.Option(None, "--fine-tune-after", help="Train the encoder from this epoch on."),
    min_count: int = typer.Option(None, "--min-count", help="Words seen fewer times become <unk> [default: 1]."),
    max_len: int = typer.Option(None, "--max-len", help="Most words per caption [default: 20]."),
    input_size: int = typer.Option(None, "--input-size", help="Encode images at this side length."),
    epochs: int = typer.Option(None, "--epochs"),
    batch_size: int = typer.Option(None, "--batch-size"),
    lr: float = typer.Option(None, "--lr", help="[default: 4e-4; the encoder gets 0.1x]"),
    val_split: float = typer.Option(None, "--val-split", help="Held-out fraction when there is no validation set."),
    out: str = typer.Option(None, "--out", help="Run folder [default: runs/caption]."),
    config: Path = typer.Option(None, "--config", help="YAML recipe (configs/caption/*.yaml); flags override it."),
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
    """Train a captioner; writes model.safetensors (with its vocabulary), metrics.json, curves.png."""
    from cnnapps.apps.caption.train import CaptionConfig, train_captioner
    from cnnapps.apps.common.training import load_config

    cfg = load_config(
        config, CaptionConfig,
        data=data, images=images, val_data=val_data, val_images=val_images, backbone=backbone, weights=weights,
        decoder=decoder, grid=grid, fine_tune_after=fine_tune_after, min_count=min_count, max_len=max_len,
        input_size=input_size, epochs=epochs, batch_size=batch_size, lr=lr, val_split=val_split, out=out,
        resume=resume or None, workers=workers, device=device,
        progress=False if as_json else None,  # the bar would mix with the JSON on stdout
        **_scale_out(devices, num_nodes, strategy, sync_batchnorm, lr_scaling),
    )  # fmt: skip
    metrics = train_captioner(cfg)
    if metrics.get("global_rank"):  # another process of a distributed run; rank 0 reports
        return
    keys = ("val_bleu1", "val_bleu4", "val_cider", "epochs", "best_epoch", "train_seconds")
    if as_json:
        _echo_json({k: metrics.get(k) for k in keys})
        return
    _console().print(
        f"val BLEU-1 {metrics['val_bleu1']:.3f}, BLEU-4 {metrics['val_bleu4']:.3f}, CIDEr {metrics['val_cider']:.3f} "
        f"(best epoch {metrics['best_epoch']} of {metrics['epochs']}, {metrics['train_seconds']:.0f} s)\n"
        f"wrote {cfg.out}/model.safetensors, metrics.json, curves.png"
    )


@eval_app.command("caption")
def eval_caption(
    model: str = typer.Option(..., "--model", "-m", help="Trained captioner (model file)."),
    data: str = typer.Option(..., "--data", help="COCO captions JSON or Karpathy's dataset_*.json."),
    images: str = typer.Option(..., "--images", help="Folder the file's image names are relative to."),
    split: str = typer.Option(None, "--split", help="Karpathy split to score [default: test if present]."),
    beam: int = typer.Option(1, "--beam", min=1, help="Beam width; 1 is greedy decoding."),
    save_results: Path = typer.Option(None, "--save-results", help="Write the captions as COCO results JSON."),
    device: str = typer.Option("auto", "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
) -> None:
    """BLEU-1..4 and CIDEr by pycocoevalcap (and METEOR when Java is present)."""
    from cnnapps.api import load
    from cnnapps.apps.caption.evaluate import evaluate_captioner
    from cnnapps.datasets.captions import read_captions

    if save_results is not None and save_results.exists():
        raise CnnappsError(f"{save_results}: already exists; choose another --save-results")
    items = _split_items(read_captions, data, images, split)
    predictor = load(model, task="caption", device=device, beam=beam)
    with _progress(len(items), "captioning") as advance:
        report, results = evaluate_captioner(predictor, items, progress=advance)
    if save_results is not None:
        save_results.write_text(json.dumps(results))
        typer.echo(f"wrote {save_results} ({len(results)} captions)", err=True)
    if as_json:
        _echo_json(report)
    else:
        scores = ", ".join(f"{k.upper()} {v:.3f}" for k, v in report["scores"].items())
        typer.echo(f"{report['images']} images (beam {report['beam']}, {report['tokenizer']} tokens): {scores}")
        _report_failed(report["failed"])
    if report["failed"]:
        raise typer.Exit(EXIT_SOME_FAILED)


def _split_items(read, data: str, images: str, split: str | None) -> list:
    if split is not None:
        return read(data, images, split)
    try:  # a Karpathy file: its test split; a COCO captions file is one split
        return read(data, images, "test")
    except CnnappsError:
        return read(data, images)
