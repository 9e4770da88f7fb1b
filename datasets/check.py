"""Checks of a task's training data before any training: what would fail, be left out or mislead, found in one pass.

Every format training reads is checked: annotations (COCO JSON, YOLO, Pascal VOC, LabelMe, CVAT, through
:mod:`cnnapps.datasets.formats`) for ``detect``/``segment``/``pose``; class folders and ``path,label`` CSVs for
``classify``/``retrieve``; COCO captions and Karpathy's split file for ``caption``; VOC roots, image folders with masks
and COCO JSON for ``semantic``. Each image is read once: its bytes are hashed (duplicates, train/val leakage), decoded
as training decodes it (unreadable files, sizes that differ from the annotations) and, when asked, hashed by
perception (near-duplicates, :mod:`imagehash`). Each problem names the file and the line or entry to fix.

:func:`check_data` returns a :class:`CheckReport`: plain data, ``to_dict()`` for JSON, ``exit_code()`` for pipelines.
Errors (what training would trip on or silently drop) give exit code 1; warnings (imbalance, small classes, near
duplicates) 0 unless ``strict``. A source that cannot be used at all raises a :class:`~cnnapps.errors.CnnappsError`.
Plain Python, numpy and OpenCV; no torch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnnapps.errors import CnnappsError
from cnnapps.terminal import plural

#: every kind of problem, its severity and what it means (the order of the report)
KINDS: dict[str, tuple[str, str]] = {
    "unreadable_image": ("error", "image missing or not decodable (training skips it)"),
    "size_mismatch": ("error", "the image's size differs from what its annotations say"),
    "bad_annotation": ("error", "an entry or line that cannot be read (training leaves it out)"),
    "degenerate_box": ("error", "box of 1 pixel or less, or not four numbers (training leaves it out)"),
    "box_outside_image": ("error", "box reaching past the image or outside it (clipped or lost in training)"),
    "empty_mask": ("error", "polygon or mask with no area, or a segment object without one"),
    "bad_mask": ("error", "mask that does not fit its image or the class list (training skips the image)"),
    "keypoints": ("error", "keypoints that do not match their category's keypoint names or skeleton"),
    "empty_caption": ("error", "an empty caption"),
    "empty_class": ("error", "class folder without images (training refuses it)"),
    "class_mismatch": ("error", "validation classes differ from the training classes"),
    "duplicate_image": ("error", "the same image bytes twice in one split"),
    "leakage": ("error", "the same image bytes in training and validation (or test)"),
    "too_few_images": ("warning", "class with fewer images than --min-images"),
    "class_imbalance": ("warning", "largest class over smallest class above --max-imbalance"),
    "near_duplicate": ("warning", "images that look alike (perceptual hash), though their bytes differ"),
}

#: the tasks whose training data can be checked, and the data each reads
TASK_DATA: dict[str, str] = {
    "detect": "annotations",
    "segment": "annotations",
    "pose": "annotations",
    "classify": "labelled",
    "retrieve": "labelled",
    "caption": "captions",
    "semantic": "semantic",
}

_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test", "restval": "train"}
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
_BOX_SLACK = 1.0  # pixels a box may reach past the image (rounding) before it is reported


class DataCheckError(CnnappsError):
    """Data that cannot be checked at all: no such path, a layout no reader knows, no images."""


@dataclass
class Problem:
    """One thing to fix: its kind (a key of :data:`KINDS`), where (file and line or entry) and what."""

    kind: str
    where: str
    message: str

    @property
    def severity(self) -> str:
        return KINDS[self.kind][0]

    def to_dict(self) -> dict[str, str]:
        return {"where": self.where, "message": self.message}


@dataclass
class ClassCount:
    """One class: images showing it and instances of it (objects; for classification the same as images), in the
    training data and in the validation data."""

    name: str
    images: int = 0
    instances: int = 0
    val_images: int = 0
    val_instances: int = 0


@dataclass
class CheckReport:
    """What :func:`check_data` found: counts, per-class counts and the problems, each naming its file."""

    source: str
    format: str
    task: str
    images: int = 0
    annotations: int = 0
    counted: str = "objects"  # what ClassCount.instances counts: objects, images
    classes: list[ClassCount] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    val_source: str | None = None
    val_images: int = 0
    val_annotations: int = 0
    imbalance: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(1 for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> int:
        return sum(1 for p in self.problems if p.severity == "warning")

    def by_kind(self) -> dict[str, list[Problem]]:
        """The problems grouped by kind, errors first, in the order of :data:`KINDS`."""
        grouped: dict[str, list[Problem]] = {}
        for kind in KINDS:
            found = [p for p in self.problems if p.kind == kind]
            if found:
                grouped[kind] = found
        return grouped

    def exit_code(self, strict: bool = False) -> int:
        """0: no errors (and, with ``strict``, no warnings); 1: problems found."""
        return 1 if self.errors or (strict and self.warnings) else 0

    def to_dict(self, strict: bool = False) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("classes", "problems")}
        out["classes"] = {c.name: {k: v for k, v in asdict(c).items() if k != "name"} for c in self.classes}
        out["problems"] = {
            kind: {
                "severity": KINDS[kind][0],
                "meaning": KINDS[kind][1],
                "count": len(items),
                "items": [p.to_dict() for p in items],
            }
            for kind, items in self.by_kind().items()
        }
        out["errors"], out["warnings"] = self.errors, self.warnings
        out["exit_code"] = self.exit_code(strict)
        return out


@dataclass
class _Image:
    """One image to read: where problems name it, its split, the size its annotations state (width, height), and
    the class of each of its objects (classification: its one label)."""

    path: Path
    where: str
    split: str
    size: tuple[int, int] | None = None
    labels: list[str] = field(default_factory=list)
    index: int = -1  # the item of a semantic set


@dataclass
class _Data:
    format: str
    task: str
    class_names: list[str]
    images: list[_Image]
    annotations: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    semantic: Any = None  # a SemanticSet, its masks checked once the images' sizes are known


def check_data(
    path: str | os.PathLike,
    *,
    val: str | os.PathLike | None = None,
    task: str | None = None,
    images: str | os.PathLike | None = None,
    val_images: str | os.PathLike | None = None,
    min_images: int = 10,
    max_imbalance: float = 10.0,
    near_duplicates: int | None = None,
    progress: Callable[[int], None] | None = None,
    from_: str | None = None,
) -> CheckReport:
    """Check the training data at ``path`` (and the validation data at ``val``) for ``task`` (told by the data when
    not given). ``images``, ``val_images``: the image folders, when not where the format keeps them (validation
    images are not looked for in ``images``: the two sets often share file names). ``near_duplicates``: the largest
    perceptual-hash distance (of 64 bits) at which two images count as near-duplicates; ``None`` skips the check.
    ``progress(n)`` is called as images are read. ``from_``: the annotation format of ``path`` and ``val``
    (coco, yolo, voc, labelme, cvat), when the paths do not tell it."""
    path = Path(path)
    if not path.exists():
        raise DataCheckError(f"{path}: no such file or folder")
    if task is not None and task not in TASK_DATA:
        from cnnapps.errors import did_you_mean

        raise DataCheckError(f"--task {task!r}: not one of {', '.join(TASK_DATA)}{did_you_mean(task, TASK_DATA)}")
    guessed = task is None
    task = task or ("detect" if from_ else guess_task(path))
    kind = TASK_DATA[task]
    if from_ and kind != "annotations":
        raise DataCheckError(f"--from {from_}: annotation formats are read for detect, segment and pose, not {task}")
    if val is None and kind == "labelled" and path.is_dir():
        from cnnapps.datasets.folders import split_folders

        path, val = split_folders(path) or (path, None)  # the layout training reads: train/ and val/ class folders
    read = {
        "annotations": functools.partial(_read_annotations, from_=from_),
        "labelled": _read_labelled,
        "captions": _read_captions,
        "semantic": _read_semantic,
    }[kind]
    refine = guessed and kind == "annotations"  # detect, segment or pose: told by what the annotations hold
    train = read(path, None if refine else task, "train", Path(images) if images else None)
    report = CheckReport(str(path), train.format, train.task, counted="images" if kind != "annotations" else "objects")
    report.problems += train.problems
    report.notes += train.notes
    report.annotations = train.annotations
    items = list(train.images)
    valid = None
    if val is not None:
        if not Path(val).exists():
            raise DataCheckError(f"{val}: no such file or folder (--val)")
        valid = read(Path(val), train.task, "val", Path(val_images) if val_images else None)
        for data, split in ((train, "train"), (valid, "val")):
            for item in data.images:
                item.split = split  # each file's split is the one it was given as, whatever its folders say
        report.val_source, report.val_annotations = str(val), valid.annotations
        report.problems += valid.problems
        report.notes += [f"val: {n}" for n in valid.notes]
        items += valid.images
        extra = set(valid.class_names) - set(train.class_names)
        if (extra if kind == "labelled" else valid.class_names != train.class_names) and kind != "captions":
            report.problems.append(_class_mismatch(train, valid, str(path), str(val)))
    elif kind == "semantic":
        valid = _semantic_val(path)
        if valid is not None:
            items += valid.images
    if not items:
        raise DataCheckError(f"{path}: no images found")
    report.images = sum(1 for i in items if i.split == "train")
    report.val_images = len(items) - report.images
    sizes = _read_images(items, report, near_duplicates, progress)
    counts = {name: ClassCount(name) for name in train.class_names}
    if kind == "semantic":
        for data in (train, valid):
            if data is not None:
                _check_masks(data, sizes, counts, report)
    else:
        _count(items, counts)
    report.classes = list(counts.values())
    _class_balance(report, path, kind, min_images, max_imbalance)
    return report


# -- which task and format -------------------------------------------------------------------------------------------


def guess_task(path: Path) -> str:
    """The task a path's data is for, from its format and, for annotations, what they hold."""
    if path.is_file() and path.suffix.lower() in (".csv", ".txt"):
        return "classify"
    if path.is_file() and path.suffix.lower() == ".json":
        head = path.open("rb").read(1 << 20).decode("utf-8", "replace")
        if '"caption"' in head or '"sentences"' in head:
            return "caption"
        return "detect"  # refined once read (segment, pose)
    if path.is_dir():
        if (path / "images").is_dir() and (path / "masks").is_dir():
            return "semantic"
        if (path / "SegmentationClass").is_dir() and not (path / "Annotations").is_dir():
            return "semantic"
        from cnnapps.datasets.formats import FormatError, detect

        try:
            detect(path)
            return "detect"
        except FormatError:
            pass
        from cnnapps.datasets.folders import TAGS_FILE

        if (path / TAGS_FILE).is_file() or any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
            return "classify"
    elif path.suffix.lower() in (".yaml", ".yml", ".xml"):
        return "detect"
    raise DataCheckError(
        f"{path}: cannot tell what data this is (annotations, class folders, a CSV, captions, masks); give --task"
    )


def _split_of(file_name: str, default: str) -> str:
    """A split told by the first folder of an image's path (YOLO's images/train/, images/val/), else ``default``."""
    first = file_name.replace("\\", "/").split("/")[0].lower()
    return _SPLITS.get(first, default) if "/" in file_name.replace("\\", "/") else default


# -- annotations: detect, segment, pose -------------------------------------------------------------------------------


def _read_annotations(path: Path, task: str | None, split: str, images: Path | None, from_: str | None = None) -> _Data:
    from cnnapps.datasets.formats import read

    collection, report, fmt = read(path, from_, images=images)
    coco = collection.coco
    anns = coco["annotations"]
    task = task or annotation_task(coco)
    data = _Data(fmt, task, [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])], [])
    data.problems = [Problem(kind, where, why) for kind, where, why in report.items]
    data.notes = list(report.notes)
    data.annotations = len(anns)
    cats = collection.categories
    images_by_id = {im["id"]: im for im in coco["images"]}
    labels: dict[int, list[str]] = defaultdict(list)
    for ann in anns:
        where = collection.origins.get(("annotation", ann["id"])) or f"{path}: annotation {ann['id']}"
        image = images_by_id[ann["image_id"]]
        cat = cats[ann["category_id"]]
        if not ann.get("iscrowd"):
            labels[ann["image_id"]].append(cat["name"])
            data.problems += _check_box(ann, image, where)
        if task == "segment":
            data.problems += _check_mask(ann, where)
        if task == "pose" or ann.get("keypoints"):
            data.problems += _check_keypoints(ann, cat, image, where)
    for cat in coco["categories"]:
        data.problems += _check_skeleton(cat, f"{path}: category {cat['name']!r}")
    if task == "pose" and not any(c.get("keypoints") for c in coco["categories"]):
        data.problems.append(Problem("keypoints", str(path), "no category has keypoints: pose training needs them"))
    root = collection.images_root
    for image in coco["images"]:
        file = collection.files.get(image["id"]) or (root / image["file_name"] if root else Path(image["file_name"]))
        where = collection.origins.get(("image", image["id"])) or str(file)
        told = collection.splits.get(image["id"]) or _split_of(image["file_name"], split)  # as the source says
        item = _Image(file, where, told, (image["width"], image["height"]))
        item.labels = labels.get(image["id"], [])
        data.images.append(item)
    return data


def annotation_task(coco: dict[str, Any]) -> str:
    """pose when objects carry keypoints of a keypoint category, segment when they carry polygons or masks."""
    anns = coco["annotations"]
    if any(c.get("keypoints") for c in coco["categories"]) and any(a.get("keypoints") for a in anns):
        return "pose"
    if any(a.get("segmentation") for a in anns):
        return "segment"
    return "detect"


def _check_box(ann: dict[str, Any], image: dict[str, Any], where: str) -> list[Problem]:
    x, y, w, h = ann["bbox"]
    width, height = image["width"], image["height"]
    shown = "[" + ", ".join(f"{v:g}" for v in (x, y, w, h)) + "]"
    if w <= 1 or h <= 1:
        return [
            Problem(
                "degenerate_box", where, f"box {shown} is {w:g} x {h:g} px; training leaves boxes of 1 px or less out"
            )
        ]
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return [Problem("box_outside_image", where, f"box {shown} lies outside the {width}x{height} image")]
    past = max(-x, -y, x + w - width, y + h - height)
    if past > _BOX_SLACK:
        return [
            Problem(
                "box_outside_image",
                where,
                f"box {shown} reaches {past:g} px past the {width}x{height} image; training clips it",
            )
        ]
    return []


def _check_mask(ann: dict[str, Any], where: str) -> list[Problem]:
    seg = ann.get("segmentation")
    if isinstance(seg, dict):
        area = _rle_area(seg)
        if area == 0:
            return [Problem("empty_mask", where, "RLE mask with no pixels")]
        return []
    if not seg:
        return [Problem("empty_mask", where, "no polygon or mask; segment training uses its box as the mask")]
    return []


def _rle_area(seg: dict[str, Any]) -> int | None:
    counts = seg.get("counts")
    if isinstance(counts, list):
        return int(sum(counts[1::2]))
    try:
        from pycocotools import mask as mask_utils

        rle = dict(seg)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
        return int(mask_utils.area(rle))
    except Exception:  # a broken RLE: said when training draws it
        return None


def _check_keypoints(ann: dict[str, Any], cat: dict[str, Any], image: dict[str, Any], where: str) -> list[Problem]:
    names = cat.get("keypoints") or []
    points = ann.get("keypoints")
    if not names:
        if points:
            return [Problem("keypoints", where, f"keypoints on category {cat['name']!r}, which names none")]
        return []
    if not points:
        return []
    found = []
    labelled = sum(1 for v in points[2::3] if v > 0)
    if "num_keypoints" in ann and ann["num_keypoints"] != labelled:
        found.append(
            Problem("keypoints", where, f"num_keypoints is {ann['num_keypoints']} but {labelled} are labelled")
        )
    width, height = image["width"], image["height"]
    for i in range(len(names)):
        x, y, v = points[3 * i : 3 * i + 3]
        if v > 0 and not (0 <= x <= width and 0 <= y <= height):
            found.append(
                Problem(
                    "keypoints",
                    where,
                    f"keypoint {names[i]!r} at ({x:g}, {y:g}) lies outside the {width}x{height} image",
                )
            )
    return found


def _check_skeleton(cat: dict[str, Any], where: str) -> list[Problem]:
    names, skeleton = cat.get("keypoints") or [], cat.get("skeleton") or []
    bad = [
        pair
        for pair in skeleton
        if not (
            isinstance(pair, (list, tuple))
            and len(pair) == 2
            and all(isinstance(v, int) and 1 <= v <= len(names) for v in pair)
        )
    ]
    if not bad:
        return []
    return [
        Problem(
            "keypoints",
            where,
            f"skeleton pairs {bad[:3]} are not pairs of keypoint numbers 1..{len(names)} "
            f"({plural(len(names), 'keypoint')})",
        )
    ]


# -- labelled images: classify, retrieve ------------------------------------------------------------------------------


def _read_labelled(path: Path, task: str, split: str, images: Path | None) -> _Data:
    from cnnapps.datasets.folders import TAGS_FILE, find_images, is_image_file, refuse_split_names

    if path.is_file():
        return _read_csv(path, task, split)
    if (path / TAGS_FILE).is_file():  # the multi-label layout: a folder of images and their labels.csv
        return _read_csv(path / TAGS_FILE, task, split)

    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataCheckError(f"{path}: no class sub-folders (expected {path}/<class>/<image>)")
    refuse_split_names(path, [f.name for f in folders])
    data = _Data("folders", task, [f.name for f in folders], [])
    loose = [p for p in path.iterdir() if p.is_file() and is_image_file(p)]
    if loose:
        data.notes.append(f"{len(loose)} images directly in {path} are in no class folder; training leaves them out")
    for folder in folders:
        files = find_images(folder)
        if not files:
            data.problems.append(Problem("empty_class", str(folder), "class folder with no images"))
        data.images += [_Image(Path(f), f, split, labels=[folder.name]) for f in files]
    data.annotations = len(data.images)
    return data


def _read_csv(path: Path, task: str, split: str) -> _Data:
    """A ``path,label`` CSV as training reads it (:func:`~cnnapps.datasets.folders.csv_rows`; each row it leaves out
    is a problem at its line, and a CSV it refuses raises); multi-label when a row has several labels separated by
    ``|`` or ``;``, each image then counted under each of its labels."""
    from cnnapps.datasets.folders import csv_rows, image_path

    data = _Data("csv", task, [], [])
    skipped: list[tuple[int, str]] = []
    rows = csv_rows(path, split=True, skipped=skipped)
    skipped += [(line, f"no label for {file!r}") for line, file, labels in rows if not labels]
    data.problems += [Problem("bad_annotation", f"{path}:{line}", why) for line, why in sorted(skipped)]
    for line, file, labels in rows:
        if not labels:
            continue
        image = image_path(path, file)
        if image.exists():
            data.images.append(_Image(image, f"{path}:{line}", split, labels=labels))
        else:  # left out when the CSV is read: its label alone makes no class, as in training
            data.problems.append(Problem("unreadable_image", f"{path}:{line}", f"image not found: {image}"))
    data.class_names = sorted({label for i in data.images for label in i.labels})
    data.annotations = len(data.images)
    return data


# -- captions -------------------------------------------------------------------------------------------------------


def _read_captions(path: Path, task: str, split: str, images: Path | None) -> _Data:
    from cnnapps.datasets.captions import CaptionDataError
    from cnnapps.datasets.coco import read_annotation_file
    from cnnapps.datasets.formats.disk import images_root

    raw = read_annotation_file(path, CaptionDataError)
    data = _Data("coco-captions" if "annotations" in raw else "karpathy", "caption", [], [])
    entries = [im for im in raw["images"] if isinstance(im, dict)]
    names = [str(Path(im.get("filepath", "")) / (im.get("file_name") or im.get("filename") or "")) for im in entries]
    root = (
        images_root(
            [images, path.parent / path.stem, path.parent, path.parent / "images", path.parent.parent / "images"], names
        )
        or path.parent
    )
    if "annotations" in raw:
        ids = {im.get("id") for im in entries}
        captioned: set[Any] = set()
        for i, ann in enumerate(raw["annotations"]):
            where = f"{path}: annotations[{i}]"
            if not isinstance(ann, dict) or ann.get("image_id") not in ids:
                data.problems.append(Problem("bad_annotation", where, "not a caption of an image of the file"))
            elif not str(ann.get("caption") or "").strip():
                data.problems.append(Problem("empty_caption", where, f"empty caption of image {ann['image_id']}"))
            else:
                captioned.add(ann["image_id"])
                data.annotations += 1
        for i, (im, name) in enumerate(zip(entries, names, strict=True)):
            if im.get("id") in captioned:
                data.images.append(_Image(root / name, f"{path}: images[{i}]", split, _stated_size(im)))
        if len(captioned) < len(entries):
            data.notes.append(f"{len(entries) - len(captioned)} images have no caption; training leaves them out")
        return data
    for i, (im, name) in enumerate(zip(entries, names, strict=True)):
        where = f"{path}: images[{i}]"
        sentences = im.get("sentences") or []
        for j, s in enumerate(sentences):
            text = (s.get("raw") or " ".join(s.get("tokens") or [])) if isinstance(s, dict) else ""
            if not str(text).strip():
                data.problems.append(Problem("empty_caption", f"{where} sentences[{j}]", "empty caption"))
            else:
                data.annotations += 1
        if sentences:
            data.images.append(_Image(root / name, where, _SPLITS.get(str(im.get("split", "")), split)))
    return data


def _stated_size(image: dict[str, Any]) -> tuple[int, int] | None:
    w, h = image.get("width"), image.get("height")
    return (w, h) if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0 else None


# -- semantic masks ---------------------------------------------------------------------------------------------------


def _read_semantic(path: Path, task: str, split: str, images: Path | None) -> _Data:
    from cnnapps.datasets.semantic import LAYOUT_HINT, read_semantic_data

    if path.suffix.lower() == ".json" and images is None:
        images = json_image_folder(path)
    voc_list = split if split != "test" else "val"
    dataset = read_semantic_data(path, images=images, split=voc_list, masks_hint=LAYOUT_HINT)  # check has no --masks
    return _semantic_data(dataset, split)


def _semantic_data(dataset: Any, split: str) -> _Data:
    voc = (Path(dataset.source) / "SegmentationClass").is_dir()
    fmt = "coco" if dataset.coco is not None else "voc" if voc else "masks"
    data = _Data(fmt, "semantic", list(dataset.class_names), [], semantic=dataset)
    for i, item in enumerate(dataset.items):
        where = str(item.mask) if item.mask is not None else f"{dataset.source}: image {item.image_id}"
        stated = None
        if dataset.coco is not None:
            stated = _stated_size(dataset.coco.imgs[item.image_id])
        data.images.append(_Image(item.image, where, split, stated, index=i))
    data.annotations = len(data.images)
    return data


def _semantic_val(path: Path) -> _Data | None:
    """VOC's own validation list, when the root has one (what training validates on)."""
    if not (path / "ImageSets" / "Segmentation" / "val.txt").is_file():
        return None
    from cnnapps.datasets.semantic import read_semantic_data

    return _semantic_data(read_semantic_data(path, split="val"), "val")


def json_image_folder(path: Path) -> Path | None:
    """The folder a COCO-style JSON's ``file_name`` entries are in, when it is where such files keep them: the folder
    named as the JSON (``train.json``, ``train/``), ``images/`` beside it, beside it, or ``../images``."""
    from cnnapps.datasets.formats.disk import images_root

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        names = [im.get("file_name") or im["filename"] for im in raw.get("images", [])[:5]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    candidates = [path.with_suffix(""), path.parent / "images", path.parent, path.parent.parent / "images"]
    return images_root([*candidates, path.parent.parent / "JPEGImages"], names)


def _check_masks(
    data: _Data, sizes: dict[int, tuple[int, int]], counts: dict[str, ClassCount], report: CheckReport
) -> None:
    """Each readable image's mask read as training reads it: errors, empty masks, and images per class."""
    import numpy as np

    from cnnapps.datasets.semantic import MaskError

    dataset = data.semantic
    names = dataset.class_names
    for item in data.images:
        size = sizes.get(id(item))
        if size is None:
            continue
        try:
            mask = dataset.mask(item.index, size)
        except MaskError as exc:
            report.problems.append(Problem("bad_mask", item.where, exc.reason))
            continue
        present = np.bincount(mask[mask != dataset.ignore_index].ravel(), minlength=len(names))
        if not present.any():
            report.problems.append(Problem("empty_mask", item.where, "every pixel is ignored (no class anywhere)"))
        for index in np.flatnonzero(present):
            count = counts[names[index]]
            if item.split == "train":
                count.images += 1
                count.instances += 1
            else:
                count.val_images += 1
                count.val_instances += 1


# -- the images themselves --------------------------------------------------------------------------------------------


def _read_images(
    items: list[_Image], report: CheckReport, near: int | None, progress: Callable[[int], None] | None
) -> dict[int, tuple[int, int]]:
    """Read, hash and decode each image once; report unreadable ones, size mismatches, duplicates and leakage.
    Returns the decoded (height, width) of each readable item, by ``id(item)``."""
    from cnnapps.datasets.io import decode_bytes
    from cnnapps.errors import ImageError

    digests: dict[str, list[_Image]] = defaultdict(list)
    perceptual: list[tuple[_Image, int, str]] = []
    sizes: dict[int, tuple[int, int]] = {}
    decoded: dict[Path, tuple[str, tuple[int, int] | None, int | None, str | None]] = {}
    for item in items:
        if item.path not in decoded:
            decoded[item.path] = _read_one(item.path, near is not None, decode_bytes, ImageError)
        digest, size, phash, error = decoded[item.path]
        if progress is not None:
            progress(1)
        if error is not None:
            report.problems.append(Problem("unreadable_image", item.where, error))
            continue
        sizes[id(item)] = size
        if item.size is not None and (size[1], size[0]) != tuple(item.size):
            report.problems.append(
                Problem(
                    "size_mismatch",
                    item.where,
                    f"{_subject(item)}is {size[1]}x{size[0]} but its annotations say {item.size[0]}x{item.size[1]}",
                )
            )
        digests[digest].append(item)
        if phash is not None:
            perceptual.append((item, phash, digest))
    for group in digests.values():
        if len(group) > 1:
            report.problems += _duplicates(group)
    if near is not None and len(perceptual) > 1:
        report.problems += _near_duplicates(perceptual, near)
    return sizes


def _read_one(path: Path, near: bool, decode: Callable[..., Any], image_error: type[Exception]) -> tuple[Any, ...]:
    """(content digest, (height, width), perceptual hash or None, error or None) of one image file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "", None, None, f"image not found: {path}"
    except OSError as exc:
        return "", None, None, f"{path}: cannot read ({exc.strerror or exc})"
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        rgb = decode(data, name=str(path))
    except image_error as exc:
        return digest, None, None, str(exc)
    except Exception as exc:  # a decoder crash on one file is that file's problem
        return digest, None, None, f"{path}: {type(exc).__name__}: {exc}"
    phash = _phash(rgb) if near else None
    return digest, rgb.shape[:2], phash, None


def _phash(rgb: Any) -> int:
    import imagehash
    from PIL import Image

    return int(str(imagehash.phash(Image.fromarray(rgb))), 16)


def _subject(item: _Image) -> str:
    """How a message about an image begins: its path, unless the problem's ``where`` is the path already."""
    return "" if item.where == str(item.path) else f"{item.path} "


def _duplicates(group: list[_Image]) -> list[Problem]:
    """Copies within a split are duplicates; copies across splits are leakage (named against the earliest split)."""
    found = []
    by_split: dict[str, list[_Image]] = defaultdict(list)
    for item in group:
        by_split[item.split].append(item)
    for items in by_split.values():
        first = items[0]
        for item in items[1:]:
            same = "the same file as" if item.path == first.path else "the same bytes as"
            labels = ""
            if set(item.labels) != set(first.labels) and len(item.labels) == len(first.labels) == 1:
                labels = f" (labelled {item.labels[0]!r} here, {first.labels[0]!r} there)"
            found.append(Problem("duplicate_image", item.where, f"{_subject(item)}is {same} {first.path}{labels}"))
    splits = sorted(by_split, key=lambda s: _SPLIT_ORDER.get(s, 3))
    base = by_split[splits[0]][0]
    for split in splits[1:]:
        for item in by_split[split]:
            found.append(
                Problem(
                    "leakage", item.where, f"{_subject(item)}({split}) has the same bytes as {base.path} ({base.split})"
                )
            )
    return found


def _near_duplicates(hashes: list[tuple[_Image, int, str]], limit: int) -> list[Problem]:
    """Each image whose perceptual hash is within ``limit`` bits of an earlier image's (exact copies left to
    :func:`_duplicates`), named with the closest earlier one."""
    import numpy as np

    values = np.array([h for _, h, _ in hashes], dtype=np.uint64)
    bits = np.array([bin(i).count("1") for i in range(256)], np.uint8)
    found = []
    for j in range(1, len(hashes)):
        distance = bits[(values[:j] ^ values[j]).view(np.uint8).reshape(j, 8)].sum(1)
        for i in np.argsort(distance, kind="stable"):
            if distance[i] > limit:
                break
            if hashes[i][2] != hashes[j][2]:
                a, b = hashes[i][0], hashes[j][0]
                across = f" ({b.split} and {a.split})" if a.split != b.split else ""
                found.append(
                    Problem(
                        "near_duplicate",
                        b.where,
                        f"{_subject(b)}looks like {a.path}{across} (perceptual hashes {int(distance[i])} of 64 "
                        "bits apart)",
                    )
                )
                break
    return found


# -- classes ----------------------------------------------------------------------------------------------------------


def _count(items: list[_Image], counts: dict[str, ClassCount]) -> None:
    for item in items:
        for name in set(item.labels):
            count = counts.setdefault(name, ClassCount(name))
            if item.split == "train":
                count.images += 1
            else:
                count.val_images += 1
        for name in item.labels:
            if item.split == "train":
                counts[name].instances += 1
            else:
                counts[name].val_instances += 1


def _class_mismatch(train: _Data, valid: _Data, source: str, val: str) -> Problem:
    missing = [n for n in train.class_names if n not in valid.class_names]
    extra = [n for n in valid.class_names if n not in train.class_names]
    parts = ([f"not in val: {', '.join(missing[:6])}"] if missing else []) + (
        [f"not in train: {', '.join(extra[:6])}"] if extra else []
    )
    detail = "; ".join(parts) or "the same classes in another order"
    return Problem("class_mismatch", val, f"its classes differ from {source}'s ({detail})")


def _class_balance(report: CheckReport, path: Path, kind: str, min_images: int, max_imbalance: float) -> None:
    unit = "images" if report.counted == "images" else "objects"
    for count in report.classes:
        if count.images < min_images and not (kind == "labelled" and count.images == 0):  # empty: an error already
            where = str(path / count.name) if kind == "labelled" and path.is_dir() else f"{path}: class {count.name!r}"
            message = f"{plural(count.images, 'training image')} (fewer than --min-images {min_images})"
            report.problems.append(Problem("too_few_images", where, message))
    present = [c for c in report.classes if c.instances > 0]
    if len(present) < 2:
        return
    large = max(present, key=lambda c: c.instances)
    small = min(present, key=lambda c: c.instances)
    report.imbalance = round(large.instances / small.instances, 3)
    if report.imbalance > max_imbalance and math.isfinite(report.imbalance):
        report.problems.append(
            Problem(
                "class_imbalance",
                str(path),
                f"largest class {large.name!r} has "
                f"{large.instances} {unit}, smallest {small.name!r} {small.instances}: "
                f"{report.imbalance:g}x (more than --max-imbalance {max_imbalance:g})",
            )
        )
