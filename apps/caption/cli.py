"""``cnnapps caption`` and ``cnnapps eval caption``.

Imports typer only; commands import what they need.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cnnapps.errors import CnnappsError
from cnnapps.files import atomic_write
from cnnapps.terminal import (
    EXIT_SOME_FAILED,
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
)


def caption(
    paths: list[str] = typer.Argument(..., help="Image files, folders (searched recursively) or globs."),
    model: str = typer.Option(..., "--model", "-m", help="Trained captioner (model file)."),
    beam: int = typer.Option(1, "--beam", min=1, help="Beam width; 1 is greedy decoding."),
    max_len: int = typer.Option(None, "--max-len", min=1, help="Most words per caption [default: the model's]."),
    head: str = head_option("caption"),
    save_attention: Path = typer.Option(None, "--save-attention", help="Write a picture of each word's attention."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: one object per input."),
) -> None:
    """Describe images in words. Exit code 0: all done; 1: some inputs failed (reported, others done); 2: error."""
    from cnnapps.api import load

    save_attention = output_folder(save_attention, "--save-attention")
    inputs = images(paths)
    predictor = load(model, task="caption", device=device, beam=beam, max_len=max_len, head=head)
    results = predict_images(predictor, inputs, "captioning")  # Ctrl-C: the answers so far
    if save_attention is not None:
        save_drawings(results, save_attention, "-attention")
    if as_json:
        echo_json([r.with_engine() for r in results])
    else:
        for r in results:
            echo(f"{r.source}: {r.caption}" if r.ok else f"{r.source}: error: {r.error}")
    failed = [r for r in results if not r.ok]
    if failed and as_json:
        report_failed([{"path": r.source, "error": r.error} for r in failed])
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def eval_caption(
    model: str = typer.Option(..., "--model", "-m", help="Trained captioner (model file)."),
    data: str = typer.Option(..., "--data", help="COCO captions JSON or Karpathy's dataset_*.json."),
    images: str = typer.Option(..., "--images", help="Folder the file's image names are relative to."),
    split: str = typer.Option(None, "--split", help="Karpathy split to score [default: test if present]."),
    beam: int = typer.Option(1, "--beam", min=1, help="Beam width; 1 is greedy decoding."),
    head: str = head_option("caption"),
    save_results: Path = typer.Option(None, "--save-results", help="Write the captions as COCO results JSON."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
) -> None:
    """BLEU-1..4 and CIDEr by pycocoevalcap (and METEOR when Java is present)."""
    from cnnapps.api import load
    from cnnapps.apps.caption.evaluate import evaluate_captioner
    from cnnapps.datasets.captions import read_captions

    if save_results is not None and save_results.exists():
        raise CnnappsError(f"{save_results}: already exists; choose another --save-results")
    items = _split_items(read_captions, data, images, split)
    predictor = load(model, task="caption", device=device, beam=beam, head=head)
    with progress(len(items), "captioning") as advance:
        report, results = evaluate_captioner(predictor, items, progress=advance)
    if save_results is not None:
        atomic_write(save_results, json.dumps(results).encode())
        echo(f"wrote {save_results} ({len(results)} captions)", err=True)
    if as_json:
        echo_json(report)
    else:
        from cnnapps.apps.caption.evaluate import SCORE_NAMES

        scores = ", ".join(f"{SCORE_NAMES.get(k, k)} {v:.3f}" for k, v in report["scores"].items())
        echo(f"{plural(report['images'], 'image')} (beam {report['beam']}, {report['tokenizer']} tokens): {scores}")
        report_failed(report["failed"])
    if report["failed"]:
        raise typer.Exit(EXIT_SOME_FAILED)


def _split_items(read, data: str, images: str, split: str | None) -> list:
    """The images to score: ``split`` of a Karpathy file, else its test split; a COCO captions file is one split."""
    if split is not None:
        return read(data, images, split)
    items = read(data, images)
    if not any(item.split for item in items):  # COCO captions, or a Karpathy file that says no split: one split
        return items
    test = [item for item in items if item.split == "test"]
    if not test:
        from cnnapps.datasets.captions import CaptionDataError

        splits = ", ".join(sorted({item.split or "(none)" for item in items}))
        raise CaptionDataError(f"{data}: a Karpathy file without a 'test' split (it has {splits}); "
                               "choose one with --split")  # fmt: skip
    return test


def register(app: typer.Typer, eval_app: typer.Typer, task: str) -> None:
    """Add the captioning commands to the ``cnnapps`` command."""
    app.command("caption")(caption)
    eval_app.command("caption")(eval_caption)
