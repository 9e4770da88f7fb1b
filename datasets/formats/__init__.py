"""Annotation formats and conversion between them, through COCO (the format cnnapps trains on).

Each format has a reader that returns a COCO dict (a :class:`~cnnapps.datasets.formats.hub.Collection`) and a writer
from one; :data:`FORMATS` lists them with what each can hold, and :func:`convert` joins a reader to a writer. Bad
input is reported one line per item (file and line or element) while the rest is converted; outputs are written
under a temporary name and renamed when complete, never over an existing path. Imports no torch, and numpy (with
OpenCV and pycocotools) only to trace the polygons of RLE masks for a target that holds polygons but no masks.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnnapps.datasets.formats import coco, cvat, labelme, voc, yolo
from cnnapps.datasets.formats.disk import IMAGE_MODES, check_free, distinct, read_names, staged
from cnnapps.datasets.formats.hub import Collection, FormatError, Report, polygons_of, trace_masks
from cnnapps.errors import did_you_mean
from cnnapps.terminal import first_few

__all__ = [
    "FORMATS",
    "Collection",
    "Conversion",
    "Format",
    "FormatError",
    "Report",
    "convert",
    "detect",
    "other_format",
    "read",
]


@dataclass(frozen=True)
class Format:
    """One annotation format: its reader and writer, what it can hold, what OUT is, and where images go by
    default (``link``: into the output's own layout; ``none``: the annotations name the images where they are)."""

    name: str
    read: Callable[..., Collection]
    write: Callable[..., dict[str, str]]
    holds: tuple[str, ...]
    output: str
    images: str
    file_suffix: str | None = None  # a single-file format: OUT with this suffix is the file itself


FORMATS: dict[str, Format] = {
    "coco": Format(
        "coco",
        coco.read,
        coco.write,
        ("boxes", "polygons", "masks", "keypoints"),
        "a .json file, or a folder for annotations.json (and images/)",
        "none",
        ".json",
    ),
    "yolo": Format(
        "yolo",
        yolo.read,
        yolo.write,
        ("boxes", "polygons", "keypoints", "splits"),
        "a folder: images/, labels/, data.yaml (ultralytics)",
        "link",
    ),
    "voc": Format("voc", voc.read, voc.write, ("boxes", "splits"), "a folder: Annotations/ (and JPEGImages/)", "none"),
    "labelme": Format(
        "labelme",
        labelme.read,
        labelme.write,
        ("boxes", "polygons", "keypoints"),
        "a folder of .json files, one per image",
        "none",
    ),
    "cvat": Format(
        "cvat",
        cvat.read,
        cvat.write,
        ("boxes", "polygons", "keypoints", "splits"),
        "a .xml file, or a folder for annotations.xml (and images/)",
        "none",
        ".xml",
    ),
}


@dataclass
class Conversion:
    """What :func:`convert` did: counts of what was read, the output paths, and one line per item left out."""

    source: str
    output: str
    from_: str
    to: str
    images: int
    annotations: int
    boxes: int
    polygons: int
    keypoints: int
    categories: list[str]
    written: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every item was converted (the command's exit code is 0, else 1)."""
        return not self.skipped

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {("from" if k == "from_" else k): v for k, v in data.items()}


def convert(
    src: str | Path,
    dst: str | Path,
    from_: str | None = None,
    to: str = "coco",
    *,
    names: str | Path | list[str] | None = None,
    images: str | Path | None = None,
    image_files: str = "auto",
) -> Conversion:
    """Convert the annotations at ``src`` (format ``from_``, or told by the path) to format ``to`` at ``dst``.

    ``names``: class names (a list, or a file: one per line, or a YAML/JSON ``names``) for sources that do not
    name their classes (YOLO without data.yaml) or to fix their order (labels outside it are skipped).
    ``images``: the folder the source's images are in, when not where the format puts them.
    ``image_files``: ``auto`` (the target format's default), ``copy``, ``link`` or ``none``.
    Raises :class:`FormatError` (nothing written) for a source or output that cannot be used at all.
    """
    src, dst = Path(src), Path(dst)
    target = _format(to, "--to")
    mode = target.images if image_files == "auto" else image_files
    if mode not in IMAGE_MODES:
        raise FormatError(f"--image-files: {image_files!r} is not one of auto, {', '.join(IMAGE_MODES)}")
    if target.file_suffix and dst.suffix.lower() == target.file_suffix and mode != "none":
        raise FormatError(
            f"{dst}: images are placed only with a folder as the output (it gets "
            f"annotations{target.file_suffix} and images/); give a folder or --image-files none"
        )
    check_free(dst)
    if not src.exists():
        raise FormatError(f"{src}: no such file or folder")
    source = _format(from_, "--from") if from_ else FORMATS[detect(src)]
    if isinstance(names, (str, Path)):
        names = read_names(Path(names))
    elif names:
        names = distinct(list(names), "--names")
    report = Report()
    data = source.read(src, report, names=names, images=Path(images) if images else None)
    if "polygons" in target.holds and "masks" not in target.holds:
        trace_masks(data, report)  # RLE masks (COCO's) become the polygons traced round them
    if data.splits and "splits" not in target.holds:
        counts = Counter(data.splits.values())
        named = ", ".join(f"{counts[split]} {split}" for split in ("train", "val", "test") if counts[split])
        report.note(f"{target.name} names no splits: the source's ({named} images) were written together")
    counts = _counts(data, target)
    if target.name != "coco":
        _note_ids_not_kept(data, target.name, report)
    with staged(dst) as at:
        written = target.write(data, dst, at, report, mode)
    return Conversion(
        str(src),
        str(dst),
        source.name,
        target.name,
        len(data.coco["images"]),
        *counts,
        categories=[
            c["name"] for c in (data.coco["categories"] if target.name == "coco" else data.categories.values())
        ],
        written=written,
        skipped=report.skipped,
        notes=report.notes,
    )


def _format(name: str, option: str) -> Format:
    key = name.lower().replace("-", "").replace("_", "")
    key = {"labelmejson": "labelme", "pascalvoc": "voc", "ultralytics": "yolo", "cocojson": "coco"}.get(key, key)
    if key not in FORMATS:
        raise FormatError(
            f"{option}: {name!r} is not a known format ({', '.join(FORMATS)}){did_you_mean(key, FORMATS)}"
        )
    return FORMATS[key]


def _note_ids_not_kept(data: Collection, target: str, report: Report) -> None:
    """Say what a target that keeps no ids loses: image and category ids other than 1..n come back numbered 1..n
    (categories in id order), and supercategories do not come back."""
    ids = [im["id"] for im in data.coco["images"]]
    if ids != list(range(1, len(ids) + 1)):
        report.note(f"image ids were not kept: {target} has none, so read back the images are numbered 1, 2, ...")
    cats = list(data.categories.values())
    if [c["id"] for c in cats] != list(range(1, len(cats) + 1)):
        ids, names = first_few((str(c["id"]) for c in cats), 8), first_few((c["name"] for c in cats), 8)
        report.note(
            f"category ids ({ids}) were not kept: {target} has the classes in id order ({names}) without ids, so read "
            f"back they are numbered 1..{len(cats)}"
        )
    supers = sorted({str(c["supercategory"]) for c in cats if c.get("supercategory") not in (None, "", c["name"])})
    if supers:
        report.note(f"supercategories ({first_few(supers, 8)}) were not kept: {target} has none")


def _counts(data: Collection, target: Format) -> tuple[int, int, int, int]:
    """Annotations, and how many have a box, polygons, labelled keypoints (kinds the target cannot hold: 0)."""
    anns = data.coco["annotations"]
    boxes = len(anns)
    polygons = sum(1 for a in anns if polygons_of(a)) if "polygons" in target.holds else 0
    keypoints = sum(1 for a in anns if a.get("num_keypoints", 0) > 0) if "keypoints" in target.holds else 0
    return len(anns), boxes, polygons, keypoints


def read(
    src: str | Path, from_: str | None = None, *, names: list[str] | None = None, images: str | Path | None = None
) -> tuple[Collection, Report, str]:
    """Annotations of any format as a COCO :class:`Collection`, the :class:`Report` of what was left out, and the
    format's name (``from_``, or told by the path). Raises :class:`FormatError` for a source that cannot be read."""
    src = Path(src)
    if not src.exists():
        raise FormatError(f"{src}: no such file or folder")
    source = _format(from_, "--from") if from_ else FORMATS[detect(src)]
    report = Report()
    return source.read(src, report, names=names, images=Path(images) if images else None), report, source.name


def other_format(path: str | Path) -> str | None:
    """The format of annotations that training reads through :func:`read` rather than as a COCO file: a YOLO folder
    or data.yaml, a VOC folder or XML, LabelMe JSON, a CVAT XML, a folder holding a COCO JSON. ``None`` for a COCO
    JSON file, and for a path that does not exist (reported where it is read)."""
    path = Path(path)
    if not path.exists():
        return None
    if path.is_file() and path.suffix.lower() == ".json":
        return "labelme" if _file_format(path) == "labelme" else None  # anything else: COCO says what is wrong
    return detect(path)


def detect(src: Path) -> str:
    """The format of a source path: by its suffix and a look at its first bytes, or at a folder's layout."""
    src = Path(src)
    if src.is_file():
        found = _file_format(src)
        if found:
            return found
    elif src.is_dir():
        if yolo.dataset_yaml(src) or (src / "labels").is_dir():
            return "yolo"
        if (src / "Annotations").is_dir():
            return "voc"
        for pattern in ("annotations.xml", "*.json", "*.xml", "**/*.json", "**/*.xml"):
            for path in sorted(src.glob(pattern))[:3]:
                found = _file_format(path)
                if found:
                    return found
    else:
        raise FormatError(f"{src}: no such file or folder")
    raise FormatError(
        f"{src}: cannot tell its annotation format ({', '.join(FORMATS)}); name it with --from in "
        "cnnapps data check, show or convert (to train on it, convert it to COCO JSON)"
    )


def _file_format(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "yolo"
    if suffix not in (".json", ".xml"):
        return None
    try:
        with path.open("rb") as fh:
            raw = fh.read(65536)
    except OSError:
        return None
    head = raw.decode("utf-8", "replace")
    if suffix == ".json":
        return _json_format(path, head, whole=len(raw) < 65536)
    tag = re.search(r"<\s*([A-Za-z_][\w.-]*)", re.sub(r"<\?.*?\?>|<!--.*?-->|<!.*?>", "", head, flags=re.S))
    return {"annotations": "cvat", "annotation": "voc"}.get(tag.group(1) if tag else "")


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:]')


def _json_format(path: Path, head: str, whole: bool) -> str | None:
    """COCO or LabelMe by the keys of the file's top-level object (COCO: ``images`` or ``annotations``; LabelMe:
    ``shapes``), read from its first bytes; the whole file is parsed only when those do not tell."""
    keys = _top_level_keys(head)
    if not keys & {"images", "annotations", "shapes"} and not whole:
        try:
            with path.open("rb") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return None
        keys = set(data) if isinstance(data, dict) else set()
    return "coco" if keys & {"images", "annotations"} else "labelme" if "shapes" in keys else None


def _top_level_keys(text: str) -> set[str]:
    """The keys of the JSON object ``text`` begins with, as far as ``text`` goes (strings and brackets only)."""
    keys: set[str] = set()
    if not text.lstrip("\ufeff \t\r\n").startswith("{"):
        return keys
    depth, last = 0, None
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token[0] == '"':
            last = token
            continue
        if token == ":" and depth == 1 and last is not None:
            keys.add(last[1:-1])
        elif token in "{[":
            depth += 1
        elif token in "}]":
            depth -= 1
            if depth == 0:
                break
        last = None
    return keys
