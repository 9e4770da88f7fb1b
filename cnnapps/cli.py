"""The ``cnnapps`` command: one thin verb per task over the Python API.

Importing this module loads typer only; each command imports what it needs, so
``cnnapps --help`` answers without loading torch.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from cnnapps import __version__
from cnnapps.errors import CnnappsError

app = typer.Typer(
    name="cnnapps",
    help="Conv backbones as working applications: classify, retrieve, detect, caption.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[default: ...]" stays as written
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"cnnapps {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    _state["debug"] = debug
    import logging

    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    logging.getLogger("cnnapps").setLevel(logging.INFO)
    # Lightning's banners (accelerator lines, tips) are noise here; its warnings still show.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)


def _console() -> Any:
    """Rich console; pipes and CI get 120 columns instead of rich's 80 so tables stay unwrapped."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 120))
    return console


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


@contextmanager
def _progress(total: int, label: str, minimum: int = 16) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr for long jobs (only on a terminal); yields an ``advance(n)`` callback."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if total < minimum or not console.is_terminal:
        yield lambda n: None
        return
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _images(paths: list[str]) -> list[str]:
    """The image files that files, folders (recursively) and globs name; none at all is an error."""
    from cnnapps.datasets.folders import expand_inputs

    found = expand_inputs(paths)
    if not found:
        raise CnnappsError(f"{' '.join(paths)}: no images found")
    return found


# Exit codes of commands that take many inputs.
EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR = 0, 1, 2


@app.command()
def models(
    timm_pattern: str = typer.Option(
        None, "--timm", help="Also list timm models with pretrained weights matching PATTERN."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List backbones and COCO detectors, and whether their weights are bundled, cached or downloadable."""
    from cnnapps.backbones.catalog import list_models

    rows = list_models(timm_pattern)
    if as_json:
        _echo_json(rows)
        return
    from rich.table import Table

    table = Table(title="Backbones (any timm model also works as timm:<name>) and COCO detectors")
    for column in ("name", "from", "weights", "description"):
        table.add_column(column)
    colours = {"bundled": "green", "cached": "green", "downloadable": "yellow", "none": "dim", "missing": "red"}
    for row in rows:
        state = row["weights"]["state"]
        table.add_row(row["name"], row["source"], f"[{colours.get(state, 'white')}]{state}[/]", row["description"])
    _console().print(table)


@app.command()
def summary(
    model: str = typer.Argument(..., help="Backbone name, e.g. vgg16, lenet5, timm:resnet18."),
    input_size: int = typer.Option(None, "--input", help="Input side in pixels (default: the model's own)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Per-layer table: output volume, parameters, activations; then totals and forward memory."""
    from cnnapps.backbones import create_backbone, summarize

    result = summarize(create_backbone(model, weights=None), input_size, name=model)
    if as_json:
        _echo_json(result.to_dict())
        return
    from rich.table import Table

    c, h, w = result.input_size
    table = Table(title=f"{model}: {h}x{w}x{c} input")
    for column, justify in (
        ("layer", "left"),
        ("type", "left"),
        ("output volume", "right"),
        ("params", "right"),
        ("activations", "right"),
    ):
        table.add_column(column, justify=justify)
    table.add_row("input", "", f"{h}x{w}x{c}", "0", f"{result.input_activations:,}")
    for row in result.rows:
        volume = row.volume if row.activations else "-"
        table.add_row(row.name, row.kind, volume, f"{row.params:,}", f"{row.activations:,}")
    console = _console()
    console.print(table)
    console.print(
        f"total params: {result.total_params:,} ({result.params_memory_mb:.3g} MB at fp32)\n"
        f"total activations: {result.total_activations:,}\n"
        f"forward memory per image: {result.forward_memory_mb:.3g} MB at fp32 (about twice that with the backward pass)"
    )


@app.command()
def classify(
    paths: list[str] = typer.Argument(..., help="Image files, folders (searched recursively) or globs."),
    model: list[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="Registry name or trained model file; repeat for an ensemble. [default: efficientnet_lite0]",
    ),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="How many classes to show per image."),
    batch_size: int = typer.Option(
        None, "--batch-size", "-b", min=1, help="Images per forward pass [default: 4 on CPU, 32 on GPU]."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    engine: str = typer.Option(
        "auto", "--engine", help="auto (fused graph on CPU), jit, eager or onnxruntime (the exported ONNX graph)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: one object per input."),
) -> None:
    """Classify images. Exit code 0: all classified; 1: some inputs failed (reported, others done); 2: error."""
    from cnnapps.api import load
    from cnnapps.backbones.registry import DEFAULT_BACKBONE

    inputs = _images(paths)
    predictor = load(model or [DEFAULT_BACKBONE], task="classify", device=device, engine=engine, batch_size=batch_size)
    with _progress(len(inputs), "classifying") as advance:
        results = predictor.predict(inputs, top_k=top_k, progress=advance)
    failed = [r for r in results if not r.ok]
    if as_json:
        _echo_json([r.to_dict() for r in results])
    else:
        _print_classifications(results, top_k)
    if failed:
        typer.echo(f"{len(failed)} of {len(results)} inputs failed:", err=True)
        for r in failed:
            typer.echo(f"  {r.source}: {r.error}", err=True)
        raise typer.Exit(EXIT_SOME_FAILED)


def _print_classifications(results: list[Any], top_k: int) -> None:
    from rich.table import Table

    table = Table()
    table.add_column("image")
    table.add_column("top-1")
    table.add_column("score", justify="right")
    if top_k > 1:
        table.add_column(f"next {top_k - 1}")
    for r in results:
        if not r.ok:
            table.add_row(r.source, f"[red]error: {r.error}[/]", "", *([""] if top_k > 1 else []))
            continue
        best, rest = r.predictions[0], r.predictions[1:]
        others = ", ".join(f"{p.label} {p.score:.0%}" for p in rest)
        table.add_row(r.source, best.label, f"{best.score:.1%}", *([others] if top_k > 1 else []))
    _console().print(table)


# Options every train command takes for running on several processes (README: Scaling out)
_SCALE = "Scaling out"
Devices = Annotated[
    int | None,
    typer.Option("--devices", min=1, help="Processes per node: GPUs, or CPU processes [1].", rich_help_panel=_SCALE),
]
NumNodes = Annotated[int | None, typer.Option("--num-nodes", min=1, help="Machines [1].", rich_help_panel=_SCALE)]
Strategy = Annotated[
    str | None,
    typer.Option("--strategy", help="auto, ddp, ddp_spawn or ddp_find_unused_parameters_true.", rich_help_panel=_SCALE),
]
SyncBatchnorm = Annotated[
    bool, typer.Option("--sync-batchnorm", help="Batch-norm statistics over all GPUs.", rich_help_panel=_SCALE)
]
LrScaling = Annotated[
    str | None,
    typer.Option("--lr-scaling", help="none, linear or sqrt in the number of processes.", rich_help_panel=_SCALE),
]


def _scale_out(devices: int | None, num_nodes: int | None, strategy: str | None, sync_batchnorm: bool,
               lr_scaling: str | None) -> dict[str, Any]:  # fmt: skip
    """The scaling-out options as config overrides (None: keep the recipe's value)."""
    return {"devices": devices, "num_nodes": num_nodes, "strategy": strategy,
            "sync_batchnorm": sync_batchnorm or None, "lr_scaling": lr_scaling}  # fmt: skip


train_app = typer.Typer(help="Fine-tune a backbone for a task.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate a trained model on labelled data.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")


@train_app.command("classify")
def train_classify(
    data: str = typer.Option(
        None, "--data", help="Class-per-folder tree (with train/ and val/, or split), or a path,label CSV."
    ),
    backbone: str = typer.Option(None, "--backbone", help="Registry name [default: efficientnet_lite0]."),
    weights: str = typer.Option(None, "--weights", help="imagenet, none, or a weights file [default: imagenet]."),
    freeze: int = typer.Option(None, "--freeze", help="Freeze the stem and this many stages."),
    epochs: int = typer.Option(None, "--epochs"),
    batch_size: int = typer.Option(None, "--batch-size"),
    lr: float = typer.Option(None, "--lr", help="[default: 1e-3 for adamw, 1e-2 for sgd]"),
    optimizer: str = typer.Option(None, "--optimizer", help="adamw or sgd (momentum 0.9)."),
    schedule: str = typer.Option(None, "--schedule", help="cosine, step, plateau (divide by 10 on a plateau) or none."),
    augment: str = typer.Option(None, "--augment", help="default, alexnet, creative or none."),
    input_size: int = typer.Option(None, "--input-size", help="Train and predict at this side length."),
    val_split: float = typer.Option(
        None, "--val-split", help="Validation fraction when DIR has no val/ [default: 0.2]."
    ),
    patience: int = typer.Option(None, "--patience", help="Stop after this many epochs without a lower val loss."),
    out: str = typer.Option(None, "--out", help="Run folder [default: runs/classify]."),
    config: Path = typer.Option(None, "--config", help="YAML recipe (configs/classify/*.yaml); flags override it."),
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
    """Fine-tune a classifier; writes model.safetensors, metrics.json, curves.png, confusion_matrix.png."""
    from cnnapps.apps.classify.train import train_classifier
    from cnnapps.apps.common.training import load_config

    cfg = load_config(
        config,
        data=data, backbone=backbone, weights=weights, freeze=freeze, epochs=epochs, batch_size=batch_size, lr=lr,
        optimizer=optimizer, schedule=schedule, augment=augment, input_size=input_size, val_split=val_split,
        patience=patience, out=out, resume=resume or None, workers=workers, device=device,
        progress=False if as_json else None,  # the bar would mix with the JSON on stdout
        **_scale_out(devices, num_nodes, strategy, sync_batchnorm, lr_scaling),
    )  # fmt: skip
    metrics = train_classifier(cfg)
    if metrics.get("global_rank"):  # another process of a distributed run; rank 0 reports
        return
    if as_json:
        _echo_json({k: metrics[k] for k in ("val_top1", "val_top5", "val_loss", "epochs", "train_seconds")})
        return
    _console().print(
        f"val top-1 {metrics['val_top1']:.2%}, top-5 {metrics['val_top5']:.2%}, loss {metrics['val_loss']:.4f} "
        f"after {metrics['epochs']} epochs ({metrics['train_seconds']:.0f} s)\n"
        f"wrote {cfg.out}/model.safetensors, metrics.json, curves.png, confusion_matrix.png"
    )


@eval_app.command("classify")
def eval_classify(
    model: list[str] = typer.Option(..., "--model", "-m", help="Model file or registry name; repeat for an ensemble."),
    data: str = typer.Option(..., "--data", help="Class-per-folder tree or a path,label CSV."),
    batch_size: int = typer.Option(None, "--batch-size", "-b", min=1),
    device: str = typer.Option("auto", "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print all metrics as JSON."),
) -> None:
    """Top-1, top-5, per-class precision and recall, and the confusion matrix."""
    from cnnapps.api import load
    from cnnapps.apps.classify.evaluate import evaluate
    from cnnapps.datasets.folders import read_labeled

    predictor = load(model, task="classify", device=device, batch_size=batch_size)
    labelled = read_labeled(data, None)
    with _progress(len(labelled), "evaluating") as advance:
        report = evaluate(predictor, labelled, progress=advance)
    if as_json:
        _echo_json(report.to_dict())
        return
    from rich.table import Table

    console = _console()
    console.print(f"{report.n} images: top-1 {report.top1:.2%}, top-5 {report.top5:.2%}, loss {report.loss:.4f}")
    table = Table()
    for column in ("class", "precision", "recall", "images"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, p, r, n in zip(report.class_names, report.precision, report.recall, report.support, strict=True):
        table.add_row(name, f"{p:.3f}", f"{r:.3f}", str(n))
    console.print(table)
    console.print("confusion matrix (rows: true, columns: predicted):")
    for name, row in zip(report.class_names, report.confusion, strict=True):
        console.print(f"  {name:>12} " + " ".join(f"{v:4d}" for v in row))
    if report.failed:
        typer.echo(f"{len(report.failed)} images could not be read:", err=True)
        for item in report.failed:
            typer.echo(f"  {item['path']}: {item['error']}", err=True)
        raise typer.Exit(EXIT_SOME_FAILED)


@train_app.command("retrieve")
def train_retrieve(
    data: str = typer.Option(
        None, "--data", help="Class-per-folder tree (with train/ and val/, or split), or a path,label CSV."
    ),
    backbone: str = typer.Option(None, "--backbone", help="Registry name [default: efficientnet_lite0]."),
    weights: str = typer.Option(None, "--weights", help="imagenet, none, or a weights file [default: imagenet]."),
    loss: str = typer.Option(None, "--loss", help="arcface, multisimilarity or triplet [default: arcface]."),
    embedding_size: int = typer.Option(None, "--embedding-size", help="Projection size [default: 128]."),
    pooling: str = typer.Option(None, "--pooling", help="avg or gem."),
    freeze: int = typer.Option(None, "--freeze", help="Freeze the stem and this many stages."),
    epochs: int = typer.Option(None, "--epochs"),
    batch_size: int = typer.Option(None, "--batch-size"),
    lr: float = typer.Option(None, "--lr"),
    augment: str = typer.Option(None, "--augment", help="default, alexnet, creative or none."),
    input_size: int = typer.Option(None, "--input-size"),
    val_split: float = typer.Option(None, "--val-split"),
    out: str = typer.Option(None, "--out", help="Run folder [default: runs/retrieve]."),
    config: Path = typer.Option(None, "--config", help="YAML recipe; flags override it."),
    resume: bool = typer.Option(False, "--resume"),
    workers: int = typer.Option(None, "--workers"),
    device: str = typer.Option(None, "--device"),
    devices: Devices = None,
    num_nodes: NumNodes = None,
    strategy: Strategy = None,
    sync_batchnorm: SyncBatchnorm = False,
    lr_scaling: LrScaling = None,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Metric learning for retrieval; writes model.safetensors, metrics.json (recall@k, mAP@R), curves.png."""
    from cnnapps.apps.common.training import load_config
    from cnnapps.apps.retrieve.train import RetrieveConfig, train_retrieval

    cfg = load_config(
        config, RetrieveConfig,
        data=data, backbone=backbone, weights=weights, loss=loss, embedding_size=embedding_size, pooling=pooling,
        freeze=freeze, epochs=epochs, batch_size=batch_size, lr=lr, augment=augment, input_size=input_size,
        val_split=val_split, out=out, resume=resume or None, workers=workers, device=device,
        progress=False if as_json else None,  # the bar would mix with the JSON on stdout
        **_scale_out(devices, num_nodes, strategy, sync_batchnorm, lr_scaling),
    )  # fmt: skip
    metrics = train_retrieval(cfg)
    if metrics.get("global_rank"):  # another process of a distributed run; rank 0 reports
        return
    keys = ("val_recall@1", "val_recall@5", "val_recall@10", "val_map@r", "epochs", "train_seconds")
    if as_json:
        _echo_json({k: metrics[k] for k in keys})
        return
    _console().print(
        f"val recall@1 {metrics['val_recall@1']:.2%}, mAP@R {metrics['val_map@r']:.3f} after {metrics['epochs']} "
        f"epochs ({metrics['train_seconds']:.0f} s)\nwrote {cfg.out}/model.safetensors, metrics.json, curves.png"
    )


@eval_app.command("retrieve")
def eval_retrieve(
    model: str = typer.Option(..., "--model", "-m", help="Model file or registry name."),
    data: str = typer.Option(..., "--data", help="Class-per-folder tree or a path,label CSV."),
    pooling: str = typer.Option("avg", "--pooling", help="For registry names and classifiers: avg or gem."),
    device: str = typer.Option("auto", "--device"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """recall@1/5/10 and mAP@R with every image querying all the others."""
    from cnnapps.apps.retrieve.evaluate import evaluate_retrieval
    from cnnapps.datasets.folders import read_labeled

    labelled = read_labeled(data)
    with _progress(len(labelled), "embedding") as advance:
        report = evaluate_retrieval(_embedder(model, pooling, device), labelled, progress=advance)
    if as_json:
        _echo_json(report)
    else:
        typer.echo(
            f"{report['n']} images: recall@1 {report['recall@1']:.2%}, recall@5 {report['recall@5']:.2%}, "
            f"recall@10 {report['recall@10']:.2%}, mAP@R {report['map@r']:.3f}"
        )
    _report_failed(report["failed"] if not as_json else [])
    if report["failed"]:
        raise typer.Exit(EXIT_SOME_FAILED)


visualize_app = typer.Typer(help="Look inside a classifier: Grad-CAM, filters, activations, top patches.")
app.add_typer(visualize_app, name="visualize")

_MODEL_HELP = "Registry name or trained model file [default: efficientnet_lite0]."


def _load_classifier(model: str | None) -> Any:
    from cnnapps.apps.classify.model import load_classifier
    from cnnapps.backbones.registry import DEFAULT_BACKBONE

    return load_classifier(model or DEFAULT_BACKBONE)


def _free(path: Path) -> Path:
    """Refuse an output path that exists before any work is done (nothing the user has is overwritten)."""
    if path.exists():
        raise CnnappsError(f"{path}: already exists; choose another --out")
    return path


def _free_name(folder: Path, stem: str, suffix: str = ".png") -> Path:
    """``folder/stem.png``, or ``stem-1.png``, ``stem-2.png``... when that exists: nothing is overwritten."""
    path, n = folder / f"{stem}{suffix}", 0
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}{suffix}"
    return path


def _saved(path: Path, rgb: Any) -> None:
    from cnnapps.datasets.io import write_image

    write_image(path, rgb)
    typer.echo(f"wrote {path} ({rgb.shape[1]}x{rgb.shape[0]})")


@visualize_app.command("gradcam")
def visualize_gradcam(
    image: str = typer.Argument(..., help="Image file."),
    model: str = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    target: str = typer.Option(None, "--class", help="Class name or index [default: the top prediction]."),
    out: Path = typer.Option(Path("gradcam.png"), "--out", "-o", help="Picture to write (never overwritten)."),
) -> None:
    """Grad-CAM: where in the image the evidence for a class lies."""
    _free(out)
    from cnnapps.apps.classify.visualize import grad_cam
    from cnnapps.datasets.io import read_image

    cam = grad_cam(_load_classifier(model), read_image(image), target)
    typer.echo(f"{image}: Grad-CAM for {cam.label} (class {cam.class_index}, p={cam.score:.3f})")
    _saved(out, cam.overlay())


@visualize_app.command("filters")
def visualize_filters(
    model: str = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    out: Path = typer.Option(Path("filters.png"), "--out", "-o", help="Picture to write (never overwritten)."),
) -> None:
    """The first convolution layer's filters as a grid."""
    _free(out)
    from cnnapps.apps.classify.visualize import first_layer_filters

    _saved(out, first_layer_filters(_load_classifier(model).model))


@visualize_app.command("activations")
def visualize_activations(
    image: str = typer.Argument(..., help="Image file."),
    model: str = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    layer: str = typer.Option(None, "--layer", help="Stage name, e.g. C3 [default: a middle stage]."),
    out: Path = typer.Option(Path("activations.png"), "--out", "-o", help="Picture to write (never overwritten)."),
) -> None:
    """Activation maps of one stage for one image (first 64 channels)."""
    _free(out)
    from cnnapps.apps.classify.visualize import activation_maps
    from cnnapps.datasets.io import read_image

    _saved(out, activation_maps(_load_classifier(model), read_image(image), layer))


@visualize_app.command("patches")
def visualize_patches(
    folder: list[str] = typer.Argument(..., help="Images: files, folders or globs."),
    model: str = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    layer: str = typer.Option("C5", "--layer", help="Stage name."),
    channel: int = typer.Option(0, "--channel", help="Channel of that stage."),
    k: int = typer.Option(9, "-k", min=1, help="How many patches."),
    out: Path = typer.Option(Path("patches.png"), "--out", "-o", help="Picture to write (never overwritten)."),
) -> None:
    """The image patches that excite one channel most (Zeiler & Fergus), strongest first."""
    _free(out)
    from cnnapps.apps.classify.visualize import tile, top_patches
    from cnnapps.datasets.folders import expand_inputs

    patches, failed = top_patches(_load_classifier(model), expand_inputs(folder), layer, channel, k)
    for item in failed:
        typer.echo(f"skipped {item}", err=True)
    if not patches:
        raise CnnappsError(f"{' '.join(folder)}: no readable images")
    for p in patches:
        typer.echo(f"{p.activation:10.3f}  {p.source}")
    _saved(out, tile([p.image for p in patches], columns=3))


index_app = typer.Typer(help="Build and keep an image index (FAISS + SQLite) for retrieval.", no_args_is_help=True)
app.add_typer(index_app, name="index")

_INDEX_HELP = "Index folder (FAISS file + SQLite database)."


def _report_failed(failed: list[dict[str, str]]) -> None:
    if failed:
        typer.echo(f"{len(failed)} images could not be read:", err=True)
        for item in failed:
            typer.echo(f"  {item['path']}: {item['error']}", err=True)


def _embedder(model: str | None, pooling: str, device: str) -> Any:
    from cnnapps.apps.retrieve.embedder import Embedder
    from cnnapps.backbones.registry import DEFAULT_BACKBONE

    return Embedder(model or DEFAULT_BACKBONE, pooling=pooling, device=device)


@index_app.command("build")
def index_build(
    folder: list[str] = typer.Argument(..., help="Images: folders (recursive), files or globs."),
    index: Path = typer.Option(..., "--index", help=_INDEX_HELP),
    model: str = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    kind: str = typer.Option(
        "auto", "--kind", help="auto (exact below 100,000 images, then IVF-PQ), flat, ivfpq, hnsw."
    ),
    pooling: str = typer.Option("avg", "--pooling", help="avg or gem (generalised mean)."),
    device: str = typer.Option("auto", "--device"),
    rank: int = typer.Option(
        None, "--rank", min=0, help="This process's share of a sharded build [default: from torchrun or SLURM]."
    ),
    world_size: int = typer.Option(
        None, "--world-size", min=1, help="Processes sharing the build [default: from torchrun or SLURM, else 1]."
    ),
    part_size: int = typer.Option(10_000, "--part-size", min=1, help="Images per part file of a sharded build."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Embed every image under FOLDER into a new index.

    Started on several processes (torchrun, srun, or --rank/--world-size), each embeds its share into part
    files under INDEX/parts; `cnnapps index merge` then writes the index. A rerun skips finished parts."""
    from cnnapps.apps.retrieve.index import Index
    from cnnapps.apps.retrieve.sharded import launcher_rank

    world_size = world_size or launcher_rank()[1]
    if rank is not None or world_size > 1:
        _build_shard(folder, index, model, pooling, device, rank, world_size, part_size, as_json)
        return
    paths = _images(folder)
    embedder = _embedder(model, pooling, device)
    built = Index.create(index, embedder.describe(), kind=kind)
    with _progress(len(paths), "embedding") as advance:
        added, failed = built.add(paths, embedder=embedder, progress=advance)
    _index_done(built.info(), as_json, f"indexed {added} images", failed)


def _build_shard(folder: list[str], index: Path, model: str | None, pooling: str, device: str, rank: int | None,
                 world_size: int, part_size: int, as_json: bool) -> None:  # fmt: skip
    """One rank of a sharded ``index build``: its parts, a line on what it did, the merge hint."""
    from cnnapps.apps.retrieve.sharded import build_shard, launcher_rank

    env_rank, _, local_rank = launcher_rank()
    rank = env_rank if rank is None else rank
    if rank >= world_size:
        raise CnnappsError(f"--rank {rank}: must be below --world-size {world_size}")
    if device == "auto" and local_rank is not None:
        import torch

        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"  # one GPU per local process
    paths = _images(folder)
    embedder = _embedder(model, pooling, device)
    share = -(-len(paths) // world_size)
    with _progress(share, f"rank {rank} embedding") as advance:
        report = build_shard(paths, index, embedder, rank, world_size, part_size, progress=advance)
    if as_json:
        _echo_json(report.to_dict())
    else:
        typer.echo(
            f"rank {rank} of {world_size}: {report.parts} parts ({report.skipped} already finished), "
            f"embedded {report.embedded} images; when every rank is done: cnnapps index merge --index {index}"
        )
    _report_failed(report.failed)


def _index_done(info: dict[str, Any], as_json: bool, headline: str, failed: list[dict[str, str]]) -> None:
    """After an index write: its state, the inputs that failed, and exit 1 when some did."""
    _print_index(info, as_json, headline)
    _report_failed(failed)
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def _print_index(info: dict[str, Any], as_json: bool, headline: str | None = None) -> None:
    if as_json:
        _echo_json(info)
        return
    if headline:
        typer.echo(headline)
    for key, value in info.items():
        typer.echo(f"  {key:>14}: {value}")


@index_app.command("merge")
def index_merge(
    index: Path = typer.Option(..., "--index", help=_INDEX_HELP),
    kind: str = typer.Option(
        "auto", "--kind", help="auto (exact below 100,000 images, then IVF-PQ), flat, ivfpq, hnsw."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Write the parts of a sharded `index build` into the index (IVF-PQ trained once, on a sample)."""
    from cnnapps.apps.retrieve.sharded import merge_parts

    built, failed = merge_parts(index, kind=kind)
    _index_done(built.info(), as_json, f"merged {len(built)} images", failed)


@index_app.command("add")
def index_add(
    paths: list[str] = typer.Argument(..., help="Images: files, folders or globs."),
    index: Path = typer.Option(..., "--index", help=_INDEX_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Embed and add images (re-embeds ones already indexed)."""
    from cnnapps.apps.retrieve.index import Index
    from cnnapps.datasets.folders import expand_inputs

    opened = Index.open(index)
    files = expand_inputs(paths)
    with _progress(len(files), "embedding") as advance:
        added, failed = opened.add(files, progress=advance)
    _index_done(opened.info(), as_json, f"added {added} images", failed)


@index_app.command("remove")
def index_remove(
    paths: list[str] = typer.Argument(..., help="Indexed image paths."),
    index: Path = typer.Option(..., "--index", help=_INDEX_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Drop images from the index (the files themselves are untouched)."""
    from cnnapps.apps.retrieve.index import Index

    opened = Index.open(index)
    removed = opened.remove(paths)
    _print_index(opened.info(), as_json, f"removed {removed} images")


@index_app.command("info")
def index_info(
    index: Path = typer.Option(..., "--index", help=_INDEX_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Items, model, embedding size, index kind and size on disk."""
    from cnnapps.apps.retrieve.index import Index

    _print_index(Index.open(index).info(), as_json)


@index_app.command("sync")
def index_sync(
    folder: str = typer.Argument(..., help="The folder the index mirrors."),
    index: Path = typer.Option(..., "--index", help=_INDEX_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Add new images, re-embed changed ones, drop deleted ones."""
    from cnnapps.apps.retrieve.index import Index

    report = Index.open(index).sync(folder)
    if as_json:
        _echo_json(report)
    else:
        typer.echo(
            f"added {report['added']}, re-embedded {report['changed']}, removed {report['removed']}; "
            f"{report['items']} images indexed"
        )
    _report_failed(report["failed"])
    if report["failed"]:
        raise typer.Exit(EXIT_SOME_FAILED)


@app.command()
def retrieve(
    query: list[str] = typer.Option(..., "--query", "-q", help="Query image; repeat for several."),
    index: Path = typer.Option(..., "--index", help=_INDEX_HELP),
    k: int = typer.Option(10, "-k", min=1, help="Results per query."),
    as_json: bool = typer.Option(False, "--json"),
    save_grid: Path = typer.Option(None, "--save-grid", help="Draw each query beside its top-k (one file per query)."),
    engine: str = typer.Option("auto", "--engine", help="auto, jit, eager or onnxruntime (the exported graph)."),
) -> None:
    """Rank the indexed images by cosine similarity to each query."""
    from cnnapps.apps.retrieve.index import Index
    from cnnapps.apps.retrieve.search import query_grid, retrieve

    if save_grid is not None:
        targets = (
            [save_grid]
            if len(query) == 1
            else [save_grid.with_stem(f"{save_grid.stem}-{i}") for i in range(len(query))]
        )
        for target in targets:
            _free(target)
    opened = Index.open(index)
    results = retrieve(opened, query, k, embedder=opened.embedder(engine=engine))
    if as_json:
        _echo_json([r.to_dict() for r in results])
    else:
        for r in results:
            typer.echo(f"{r.source}:" + (f" error: {r.error}" if r.error else ""))
            for hit in r.hits:
                typer.echo(f"  {hit.rank:3d}  {hit.score:.4f}  {hit.path}")
    if save_grid is not None:
        from cnnapps.datasets.io import read_image, write_image

        for target, r in zip(targets, results, strict=True):
            if r.ok:
                write_image(target, query_grid(read_image(r.source), r.hits))
                typer.echo(f"wrote {target}", err=True)
    if any(not r.ok for r in results):
        raise typer.Exit(EXIT_SOME_FAILED)


@app.command()
def dedup(
    folder: list[str] = typer.Argument(..., help="Images: folders (recursive), files or globs."),
    threshold: float = typer.Option(
        0.9, "--threshold", help="Cosine similarity at which two images count as duplicates."
    ),
    model: str = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Groups of near-duplicate images."""
    from cnnapps.apps.retrieve.search import find_duplicates
    from cnnapps.datasets.folders import expand_inputs

    paths = expand_inputs(folder)
    with _progress(len(paths), "embedding") as advance:
        groups, failed = find_duplicates(paths, _embedder(model, "avg", "auto"), threshold, progress=advance)
    if as_json:
        _echo_json({"groups": groups, "failed": failed})
    else:
        typer.echo(f"{len(groups)} groups of near-duplicates among {len(paths)} images (threshold {threshold})")
        for n, group in enumerate(groups, start=1):
            typer.echo(f"group {n} (similarity >= {group['min_similarity']:.3f}):")
            for path in group["images"]:
                typer.echo(f"  {path}")
    _report_failed(failed if not as_json else [])
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


# detect/segment/pose and caption live in their own modules; importing them registers their commands
from cnnapps import cli_caption, cli_detect, cli_serve  # noqa: E402, F401


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: user errors print one line and exit non-zero; ``--debug`` shows tracebacks."""
    args = sys.argv[1:] if argv is None else argv
    try:
        app(args=args, prog_name="cnnapps")
    except CnnappsError as exc:
        if _state["debug"] or "--debug" in args:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # unexpected: still one line, the traceback is behind --debug
        if _state["debug"] or "--debug" in args:
            raise
        typer.echo(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
