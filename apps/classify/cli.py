"""``cnnapps classify``, ``cnnapps eval classify`` and ``cnnapps visualize``: thin commands over the Python API.

Imports typer only; each command imports what it needs, so ``cnnapps --help`` loads no torch.
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
    free_picture,
    head_option,
    images,
    one_line,
    plural,
    predict_images,
    progress,
    saved,
    styled,
)

_MODEL_HELP = "Registry name or trained model file [default: efficientnet_lite0]."
_THRESHOLD_HELP = (
    "Multi-label models: a label is given when its probability reaches this, for every class [default: the "
    "model's own threshold per class]."
)
_JSON_HELP = (
    "Print JSON: one object per input (a multi-label model's also has labels: those over their thresholds, with "
    "their scores)."
)
_DATA_HELP = (
    "Class-per-folder tree, a path,label CSV, or multi-label data (a path,labels CSV with labels separated by | or ;, "
    "or a folder holding such a labels.csv)."
)


def classify(
    paths: list[str] = typer.Argument(
        ..., help="Image files, folders (searched recursively) or globs.", metavar="PATHS..."
    ),
    model: list[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="Registry name, model file or exported ONNX file; repeat for an ensemble. [default: efficientnet_lite0]",
    ),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="How many classes to show per image."),
    batch_size: int = typer.Option(
        None, "--batch-size", "-b", min=1, help="Images per forward pass [default: 4 on CPU, 32 on GPU]."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    engine: str = typer.Option(
        "auto",
        "--engine",
        help="auto (fused graph on CPU, fp16 on GPU), jit, compile, eager, onnxruntime, onnx-cuda, tensorrt or "
        "openvino (which run here: cnnapps models --engines).",
    ),
    threshold: float = typer.Option(None, "--threshold", min=0.0, max=1.0, help=_THRESHOLD_HELP),
    head: str = head_option("classify"),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Classify images. Exit code 0: all classified; 1: some inputs failed (reported, others done); 2: error."""
    from cnnapps.api import load
    from cnnapps.backbones.registry import DEFAULT_BACKBONE

    inputs = images(paths)
    predictor = load(model or [DEFAULT_BACKBONE], task="classify", device=device, engine=engine, batch_size=batch_size,
                     head=head)  # fmt: skip
    if threshold is not None and not getattr(predictor, "multilabel", False):
        raise CnnappsError("--threshold: the model is single-label (one class per image); it applies to multi-label "
                           "models")  # fmt: skip
    extra = {"threshold": threshold} if threshold is not None else {}
    results = predict_images(predictor, inputs, "classifying", top_k=top_k, **extra)  # Ctrl-C: the answers so far
    failed = [r for r in results if not r.ok]
    if as_json:
        echo_json([r.with_engine() for r in results])
    elif getattr(predictor, "multilabel", False):
        _print_labels(results, top_k)
    else:
        _print_classifications(results, top_k)
    if failed:
        echo(f"{len(failed)} of {len(results)} inputs failed:", err=True)
        for r in failed:
            echo(one_line(f"  {r.source}: {r.error}"), err=True)
        raise typer.Exit(EXIT_SOME_FAILED)


def _shown(results: list[Any], top_k: int) -> int:
    """How many classes each answer shows: ``top_k``, or fewer when the model has fewer classes."""
    return max((len(r.predictions) for r in results if r.ok), default=top_k)


def _print_classifications(results: list[Any], top_k: int) -> None:
    from rich.table import Table

    table = Table()
    table.add_column("image")
    table.add_column("top-1")
    table.add_column("score", justify="right")
    more = _shown(results, top_k) - 1  # the header counts what is shown, not what was asked for
    if more > 0:
        table.add_column(f"next {more}")
    for r in results:
        if not r.ok:
            table.add_row(r.source, styled(f"error: {r.error}", "red"), "", *([""] if more > 0 else []))
            continue
        best, rest = r.predictions[0], r.predictions[1:]
        others = ", ".join(f"{p.label} {p.score:.1%}" for p in rest)  # as precise as the top-1's score
        table.add_row(r.source, best.label, f"{best.score:.1%}", *([others] if more > 0 else []))
    console().print(table)


def _print_labels(results: list[Any], top_k: int) -> None:
    """A multi-label model's answers: every label over its threshold with its probability, then the top-k."""
    from rich.table import Table

    table = Table()
    table.add_column("image")
    table.add_column("labels")
    table.add_column(f"top {_shown(results, top_k)}")
    for r in results:
        if not r.ok:
            table.add_row(r.source, styled(f"error: {r.error}", "red"), "")
            continue
        labels = ", ".join(f"{p.label} {p.score:.0%}" for p in r.labels or []) or styled("none", "dim")
        table.add_row(r.source, labels, ", ".join(f"{p.label} {p.score:.0%}" for p in r.predictions))
    console().print(table)


def eval_classify(
    model: list[str] = typer.Option(..., "--model", "-m", help="Model file or registry name; repeat for an ensemble."),
    data: str = typer.Option(..., "--data", help=_DATA_HELP),
    batch_size: int = typer.Option(None, "--batch-size", "-b", min=1, help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    head: str = head_option("classify"),
    as_json: bool = typer.Option(False, "--json", help="Print all metrics as JSON."),
) -> None:
    """Top-1, top-5, per-class precision and recall, and the confusion matrix (a multi-label model: mAP, micro and
    macro F1 at its thresholds, per-class AP, F1, precision and recall)."""
    from cnnapps.api import load
    from cnnapps.apps.classify.evaluate import evaluate
    from cnnapps.datasets.folders import read_labeled
    from cnnapps.terminal import report_failed

    predictor = load(model, task="classify", device=device, batch_size=batch_size, head=head)
    missing: list[dict[str, str]] = []  # the CSV's rows whose image is not there: failed inputs, as unreadable ones
    # the model says how the data is read: a multi-label model's images with no label are negatives it is scored on
    if getattr(predictor, "multilabel", False):
        labelled = read_labeled(data, None, multilabel=True, missing=missing)
    else:
        labelled = read_labeled(data, None, multilabel=None, no_label_hint="the model gives each image one class",
                                missing=missing)  # fmt: skip
    with progress(len(labelled), "evaluating") as advance:
        report = evaluate(predictor, labelled, progress=advance)
    report.failed = [*missing, *report.failed]
    if report.n == 0:
        report_failed(report.failed)
        raise CnnappsError(f"{data}: none of its {len(labelled)} images could be read")
    if as_json:
        echo_json(report.to_dict())
    elif getattr(report, "multilabel", False):
        _print_multilabel_report(report)
    else:
        _print_report(report)
    if report.failed:
        report_failed(report.failed)
        raise typer.Exit(EXIT_SOME_FAILED)


def _print_report(report: Any) -> None:
    from rich.table import Table

    out = console()
    out.print(f"{plural(report.n, 'image')}: top-1 {report.top1:.2%}, top-5 {report.top5:.2%}, loss {report.loss:.4f}")
    table = Table()
    for column in ("class", "precision", "recall", "images"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, p, r, n in zip(report.class_names, report.precision, report.recall, report.support, strict=True):
        table.add_row(name, f"{p:.3f}", f"{r:.3f}", str(n))
    out.print(table)
    out.print("\n".join(confusion_lines(report.class_names, report.confusion)))


def _print_multilabel_report(report: Any) -> None:
    from rich.table import Table

    out = console()
    out.print(f"{plural(report.n, 'image')}: mAP {report.map:.2%}, F1 micro {report.f1_micro:.2%}, "
              f"macro {report.f1_macro:.2%} (at the model's thresholds)")  # fmt: skip
    table = Table()
    for column in ("label", "AP", "F1", "precision", "recall", "threshold", "images"):
        table.add_column(column, justify="left" if column == "label" else "right")
    rows = zip(report.class_names, report.ap, report.f1, report.precision, report.recall, report.thresholds,
               report.support, strict=True)  # fmt: skip
    for name, ap, f1, p, r, t, n in rows:
        table.add_row(name, "-" if ap is None else f"{ap:.3f}", f"{f1:.3f}", f"{p:.3f}", f"{r:.3f}", f"{t:.3f}", str(n))
    out.print(table)


def confusion_lines(names: list[str], confusion: list[list[int]]) -> list[str]:
    """The confusion matrix as text: a title, a header row that names the predicted classes (cut to 8 characters)
    under a "true \\ predicted" corner, then one row per true class."""
    corner = "true \\ predicted"
    width = max(len(corner), *(len(n) for n in names))
    cell = max(4, *(len(n[:8]) for n in names), *(len(str(v)) for row in confusion for v in row))
    lines = ["confusion matrix (rows: true class, columns: predicted class):"]
    lines.append(f"  {corner:>{width}} " + " ".join(f"{n[:8]:>{cell}}" for n in names))
    for name, row in zip(names, confusion, strict=True):
        lines.append(f"  {name:>{width}} " + " ".join(f"{v:{cell}d}" for v in row))
    return lines


visualize_app = typer.Typer(help="Look inside a classifier (Grad-CAM, filters, activations).",
                            no_args_is_help=True)  # fmt: skip


def _load_classifier(model: str | None) -> Any:
    """The network to look inside: a classify model file or a backbone with published weights."""
    from cnnapps.apps.classify.visualize import classifier_to_look_inside

    return classifier_to_look_inside(model)


@visualize_app.command("gradcam")
def visualize_gradcam(
    image: str = typer.Argument(..., help="Image file."),
    model: str = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    target: str = typer.Option(None, "--class", help="Class name or index [default: the top prediction]."),
    out: Path = typer.Option(Path("gradcam.png"), "--out", "-o", help="Picture to write (never overwritten)."),
) -> None:
    """Grad-CAM: where in the image the evidence for a class lies."""
    free_picture(out)
    from cnnapps.apps.classify.visualize import grad_cam
    from cnnapps.datasets.io import read_image

    rgb = read_image(image)
    cam = grad_cam(_load_classifier(model), rgb, target)
    echo(f"{image}: Grad-CAM for {cam.label} (class {cam.class_index}, p={cam.score:.3f})")
    saved(out, cam.overlay())


@visualize_app.command("filters")
def visualize_filters(
    model: str = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    out: Path = typer.Option(Path("filters.png"), "--out", "-o", help="Picture to write (never overwritten)."),
) -> None:
    """The first convolution layer's filters as a grid."""
    free_picture(out)
    from cnnapps.apps.classify.visualize import first_layer_filters

    saved(out, first_layer_filters(_load_classifier(model).model))


@visualize_app.command("activations")
def visualize_activations(
    image: str = typer.Argument(..., help="Image file."),
    model: str = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    layer: str = typer.Option(None, "--layer", help="Stage name, e.g. C3 [default: a middle stage]."),
    out: Path = typer.Option(Path("activations.png"), "--out", "-o", help="Picture to write (never overwritten)."),
) -> None:
    """Activation maps of one stage for one image (first 64 channels)."""
    free_picture(out)
    from cnnapps.apps.classify.visualize import activation_maps
    from cnnapps.datasets.io import read_image

    rgb = read_image(image)
    saved(out, activation_maps(_load_classifier(model), rgb, layer))


@visualize_app.command("patches")
def visualize_patches(
    folder: list[str] = typer.Argument(..., help="Images: files, folders or globs.", metavar="PATHS..."),
    model: str = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    layer: str = typer.Option("C5", "--layer", help="Stage name."),
    channel: int = typer.Option(0, "--channel", help="Channel of that stage."),
    k: int = typer.Option(9, "-k", min=1, help="How many patches."),
    out: Path = typer.Option(Path("patches.png"), "--out", "-o", help="Picture to write (never overwritten)."),
) -> None:
    """The image patches that excite one channel most (Zeiler & Fergus), strongest first."""
    free_picture(out)
    from cnnapps.apps.classify.visualize import tile, top_patches

    paths = images(folder)
    patches, failed = top_patches(_load_classifier(model), paths, layer, channel, k)
    for item in failed:
        echo(f"skipped {item}", err=True)
    if not patches:
        raise CnnappsError(f"{' '.join(folder)}: no readable images")
    for p in patches:
        echo(f"{p.activation:10.3f}  {p.source}")
    saved(out, tile([p.image for p in patches], columns=3))


def register(app: typer.Typer, eval_app: typer.Typer, task: str) -> None:
    """Add the classification commands to the ``cnnapps`` command."""
    app.command("classify")(classify)
    eval_app.command("classify")(eval_classify)
    app.add_typer(visualize_app, name="visualize")
