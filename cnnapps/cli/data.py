"""``cnnapps data``: training data checked (``cnnapps.datasets.check``), shown as training augments it
(``cnnapps.apps.common.browse``), and annotation files converted between formats through COCO
(``cnnapps.datasets.formats``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cnnapps.terminal import EXIT_SOME_FAILED, echo, echo_json, plural

data_app = typer.Typer(
    help="Training data: check it, show it augmented, convert formats.",
    no_args_is_help=True,
)

_TASK_HELP = (
    "What the data is for: detect, segment, pose (annotations: COCO JSON, YOLO, VOC, LabelMe, CVAT), classify, "
    "retrieve (class folders, CSV), caption (COCO captions, Karpathy JSON), semantic (VOC root, images/ + masks/, "
    "COCO JSON) [default: told by the data]."
)


@data_app.command("convert")
def convert(
    src: Path = typer.Argument(..., help="Annotations to read: a file or a folder (the format is told by the path)."),
    out: Path = typer.Argument(..., help="Where to write: a path that does not exist yet (nothing is overwritten)."),
    to: str = typer.Option(..., "--to", help="Format to write: coco, yolo, voc, labelme or cvat."),
    from_: str = typer.Option(None, "--from", help="Format of SRC [default: told by the path]."),
    names: Path = typer.Option(
        None,
        "--names",
        help="Class names in order: one per line, or a YAML/JSON with names. Needed for YOLO "
        "labels without data.yaml; for VOC, LabelMe and CVAT it fixes the order (other labels are skipped).",
    ),
    images: Path = typer.Option(
        None,
        "--images",
        help="Folder SRC's images are in [default: where the format keeps them, e.g. beside the "
        "COCO JSON or in images/, JPEGImages/]. YOLO needs the images for their sizes, both ways.",
    ),
    image_files: str = typer.Option(
        "auto",
        "--image-files",
        help="How images reach OUT: copy, link (hard links; copies across drives), none, or "
        "auto: link for yolo (images/ beside labels/), none for the others (their files name the images where they "
        "are; copy or link puts them in OUT/images/, OUT/JPEGImages/ or beside the LabelMe files).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as a JSON object."),
) -> None:
    """Convert annotations: COCO, YOLO, Pascal VOC, LabelMe, CVAT.

    Boxes, polygons and keypoints, as far as the target holds them (VOC: boxes; YOLO: boxes, polygons or keypoints
    with boxes; CVAT: boxes, polygons, skeletons). Bad items (a class index beyond the names, a degenerate box, a
    polygon under 3 points, an unreadable file) are reported one line each, naming the file and line, and the rest
    is converted. OUT is written under a temporary name and renamed when complete. Exit code 0: all converted;
    1: some items skipped; 2: nothing done (bad usage, unreadable source, OUT exists).
    """
    from cnnapps.datasets.formats import convert as run

    done = run(src, out, from_, to, names=names, images=images, image_files=image_files)
    if as_json:
        echo_json(done.to_dict())
    else:
        kinds = [plural(done.boxes, "box")]
        if done.polygons:
            kinds.append(f"{done.polygons} with polygons")
        if done.keypoints:
            kinds.append(f"{done.keypoints} with keypoints")
        categories = ", ".join(done.categories[:8]) + (", ..." if len(done.categories) > 8 else "")
        echo(
            f"{done.source} ({done.from_}) -> {done.output} ({done.to}): {plural(done.images, 'image')}, "
            f"{plural(done.annotations, 'annotation')} ({', '.join(kinds)}), "
            f"{len(done.categories)} categor{'y' if len(done.categories) == 1 else 'ies'} ({categories})"
        )
        for what, path in done.written.items():
            if what != "kind" and path:
                echo(f"  {what}: {path}")
        for note in done.notes:
            echo(f"note: {note}")
        if done.skipped:
            echo(f"skipped {plural(len(done.skipped), 'item')}:", err=True)
            for line in done.skipped:
                echo(f"  {line}", err=True)
    if not done.ok:
        raise typer.Exit(EXIT_SOME_FAILED)


@data_app.command("check")
def check(
    path: Path = typer.Argument(..., help="Training data: an annotation file or folder, class folders, a CSV, ..."),
    val: Path = typer.Option(
        None,
        "--val",
        help="Validation data, to check too and against PATH (leakage, classes) [default: PATH's own split: "
        "train/ and val/ (or valid/, test/) class folders, YOLO's images/val/, VOC's val list, Karpathy's split].",
    ),
    task: str = typer.Option(None, "--task", help=_TASK_HELP),
    from_: str = typer.Option(
        None,
        "--from",
        help="Annotation format of PATH and --val: coco, yolo, voc, labelme or cvat [default: told by the path].",
    ),
    images: Path = typer.Option(None, "--images", help="Image folder [default: where the format keeps its images]."),
    val_images: Path = typer.Option(None, "--val-images", help="Image folder of --val [default: where it keeps them]."),
    min_images: int = typer.Option(10, "--min-images", min=0, help="Warn of classes with fewer training images."),
    max_imbalance: float = typer.Option(
        10.0,
        "--max-imbalance",
        min=1.0,
        help="Warn when the largest class has more than this many times the instances of the smallest.",
    ),
    near: int = typer.Option(
        None,
        "--near-duplicates",
        min=0,
        max=32,
        help="Also find images that look alike: at most this many of 64 "
        "perceptual-hash bits apart (4 is a good start) [default: off].",
    ),
    strict: bool = typer.Option(False, "--strict", help="Warnings fail too (exit code 1)."),
    examples: int = typer.Option(5, "--examples", min=1, help="Items shown for each kind of problem (--json: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: counts, classes, problems by kind."),
) -> None:
    """Check training data: unreadable images, duplicates, leakage, bad labels.

    Every image is read once: duplicates and leakage are found by the hash of the file's bytes, unreadable files and
    sizes that differ from the annotations by decoding as training does. Annotations are checked as training reads
    them: boxes of 1 px or less, boxes outside the image, empty polygons and masks, keypoints that do not match their
    category's names or skeleton, classes with too few images and the imbalance between classes. Each problem
    names the file and line or entry to fix. Exit code 0: no errors (warnings are allowed: class imbalance, small
    classes, near-duplicates; --strict makes them fail); 1: errors found; 2: the data cannot be read at all.
    """
    from cnnapps.datasets.check import check_data
    from cnnapps.terminal import progress

    with progress(None, "reading images", minimum=0) as advance:
        report = check_data(
            path,
            val=val,
            task=task,
            images=images,
            val_images=val_images,
            min_images=min_images,
            max_imbalance=max_imbalance,
            near_duplicates=near,
            progress=advance,
            from_=from_,
        )
    if as_json:
        echo_json(report.to_dict(strict))
    else:
        _print_check(report, examples, strict)
    code = report.exit_code(strict)
    if code:
        raise typer.Exit(code)


def _print_check(report: Any, examples: int, strict: bool) -> None:
    from rich.table import Table

    from cnnapps.datasets.check import KINDS
    from cnnapps.terminal import console, styled

    out = console()
    val = f"; val {report.val_source}" if report.val_source else ""
    echo(
        f"{report.source} ({report.format}, {report.task}{val}): {plural(report.images, 'training image')}"
        f"{f', {report.val_images} validation' if report.val_images else ''}, "
        f"{plural(report.annotations, 'annotation')}, {plural(len(report.classes), 'class')}"
    )
    if report.classes:
        objects = report.counted != "images"
        table = Table()
        table.add_column("class")
        table.add_column("images", justify="right")
        if objects:
            table.add_column(report.counted, justify="right")
        if report.val_images:
            table.add_column("val images", justify="right")
            if objects:
                table.add_column(f"val {report.counted}", justify="right")
        for c in sorted(report.classes, key=lambda c: (-c.instances, c.name)):
            row = [c.name, str(c.images)] + ([str(c.instances)] if objects else [])
            if report.val_images:
                row += [str(c.val_images)] + ([str(c.val_instances)] if objects else [])
            table.add_row(*row)
        out.print(table)
        if report.imbalance is not None:
            echo(f"imbalance (largest / smallest class): {report.imbalance:g}x")
    for note in report.notes:
        echo(f"note: {note}")
    for kind, items in report.by_kind().items():
        severity, meaning = KINDS[kind]
        colour = "red" if severity == "error" else "yellow"
        out.print(styled(f"{severity} {kind} ({len(items)}): {meaning}", colour))
        for p in items[:examples]:
            echo(f"  {p.where}: {p.message}")
        if len(items) > examples:
            echo(f"  ... and {len(items) - examples} more (--json lists them all)")
    errors = len({p.kind for p in report.problems if p.severity == "error"})
    found = f"{plural(report.errors, 'error')} ({plural(errors, 'kind')}), {plural(report.warnings, 'warning')}"
    verdict = found if report.problems else "clean"
    echo(f"{verdict}; exit code {report.exit_code(strict)}")


@data_app.command("show")
def show(
    path: Path = typer.Argument(..., help="Training data, as cnnapps data check and cnnapps train take it."),
    augment: str = typer.Option(
        None,
        "--augment",
        help="The training augmentation preset to show: detect/segment/pose: default, none; classify/retrieve: "
        "default, alexnet, creative, randaugment, trivialaugment, none; semantic: default, none; caption: none "
        "[default: default].",
    ),
    n: int = typer.Option(16, "--n", min=1, max=256, help="Samples to draw (picked at random)."),
    out: Path = typer.Option(
        None,
        "--out",
        help="PNG to write (never over a file) [default: samples.png, or samples-1.png, ... when it exists].",
    ),
    seed: int = typer.Option(0, "--seed", help="Which samples, and the augmentation's random choices."),
    task: str = typer.Option(None, "--task", help=_TASK_HELP),
    from_: str = typer.Option(
        None, "--from", help="Annotation format of PATH: coco, yolo, voc, labelme or cvat [default: told by the path]."
    ),
    images: Path = typer.Option(None, "--images", help="Image folder [default: where the format keeps its images]."),
    input_size: int = typer.Option(
        224, "--input-size", min=8, max=4096, help="Side the model reads (classify, retrieve, semantic, caption)."
    ),
    cell: int = typer.Option(256, "--cell", min=32, max=2048, help="Side of each drawn picture, in pixels."),
    columns: int = typer.Option(4, "--columns", min=1, max=64, help="Samples per row of the grid."),
) -> None:
    """Draw samples before and after the training augmentation (a PNG).

    Boxes with class names, masks and polygons, keypoints with the skeleton (the person's left side white), class
    labels, semantic masks: each sample as it is on disk and as the task's own training augmentation gives it to
    the model (the same albumentations pipeline training builds, seeded with --seed). Prints the PNG's path.
    """
    from cnnapps.apps.common.browse import draw_samples
    from cnnapps.datasets.io import write_image
    from cnnapps.terminal import free_name, free_picture

    target = free_picture(out) if out is not None else free_name(Path.cwd(), "samples")
    samples = draw_samples(
        path,
        task=task,
        augment=augment,
        n=n,
        seed=seed,
        images=images,
        input_size=input_size,
        cell=cell,
        columns=columns,
        from_=from_,
    )
    write_image(target, samples.grid)
    height, width = samples.grid.shape[:2]
    echo(
        f"{target} ({width}x{height}: {plural(len(samples.pairs), 'sample')} of {path} ({samples.task}), before "
        f"and after --augment {samples.augment})"
    )
