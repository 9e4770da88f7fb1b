"""``cnnapps data``: annotation files, converted between formats through COCO (``cnnapps.datasets.formats``)."""

from __future__ import annotations

from pathlib import Path

import typer

from cnnapps.terminal import EXIT_SOME_FAILED, echo, echo_json, plural

data_app = typer.Typer(help="Annotations: convert between formats.", no_args_is_help=True)


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
