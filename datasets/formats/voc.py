"""Pascal VOC XML: one file per image with its ``size`` and ``object``s (``name``, ``bndbox``, ``difficult``).

Boxes only. VOC counts pixels from 1 and its box names the first and last pixel inside, so the box covers
[xmin - 1, xmax] in COCO's continuous coordinates (as Detectron reads VOC); writing inverts this exactly for boxes on
whole pixels. ``difficult`` and ``truncated`` are kept as annotation keys (``"difficult": 1``) and written back;
COCO crowd regions are written as difficult objects and difficult objects read as crowd regions (``"iscrowd": 1``):
both evaluations ignore them, and training leaves them out. Images in ``JPEGImages/`` without an XML are read as
images without objects. The split lists ``ImageSets/Main/{train,val,trainval,test}.txt`` (one image name, the XML's
name without ``.xml``, per line) put each image they name in its split (``trainval``: train). The class list is
written to ``labels.txt`` in the VOC root (one name per line, in category order), and read from there when it is
present, so the categories keep their order and those without objects across a round trip; without it, names
sort. An image is where ``<path>`` leads (from the XML's folder, or absolute as LabelImg writes it), else found by
``<filename>`` in ``JPEGImages/`` (or ``images/``, or beside the XML); written with the images left where they are,
``<path>`` and ``<folder>`` lead to them; the source's splits are written as ``ImageSets/Main`` lists.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath
from typing import Any

from cnnapps.datasets.formats.disk import (
    image_size,
    images_in_place,
    images_root,
    is_image,
    parse_xml,
    path_from,
    place_images,
    read_names,
    safe_relative,
    walk,
)
from cnnapps.datasets.formats.hub import Builder, Collection, FormatError, Report, box_problem, polygons_of
from cnnapps.terminal import plural

#: the class list beside Annotations/ (written; read when present)
LABELS = "labels.txt"
FLAGS = ("difficult", "truncated")  # an object's VOC flags, kept as annotation keys


def read(src: Path, report: Report, names: list[str] | None = None, images: Path | None = None) -> Collection:
    """Every VOC XML under ``src`` (a VOC root with ``Annotations/``, a folder of XMLs, or one XML)."""
    if src.is_file():
        ann_root, xmls = src.parent, [src]
    elif src.is_dir():
        ann_root = src / "Annotations" if (src / "Annotations").is_dir() else src
        xmls = walk(ann_root, lambda p: p.suffix.lower() == ".xml")
    else:
        raise FormatError(f"{src}: no such file or folder")
    if not xmls:
        raise FormatError(f"{src}: no .xml files")
    voc_root = ann_root.parent if ann_root.name == "Annotations" else ann_root
    records = [r for r in (_parse(x, ann_root, report) for x in xmls) if r]
    if not records:
        first = f" ({report.skipped[0]})" if report.skipped else ""
        raise FormatError(f"{src}: no VOC file could be read{first}")
    root = images_root(
        [images, voc_root / "JPEGImages", voc_root / "images", ann_root], [r["file_name"] for r in records]
    )
    found = sorted({o["name"] for r in records for o in r["objects"]})
    listed = read_names(voc_root / LABELS) if not names and (voc_root / LABELS).is_file() else []
    build = Builder(names or [*listed, *(n for n in found if n not in listed)])  # the list's order, then the rest
    files = [_image_file(record, root, images) for record in records]
    folder = root if src.is_dir() and root in (images, voc_root / "JPEGImages") else None  # its images without XML
    root = _root_of_paths(records, files) or root
    splits = _splits(voc_root)
    for record, file in zip(records, files, strict=True):
        size = record["size"]
        if size is None:
            try:
                size = image_size(file) if file else None
            except OSError:
                size = None
            if size is None:
                report.skip(
                    record["where"],
                    f"<size> is missing (or not a positive width and height) and the image {record['file_name']} was "
                    "not found to read it from; skipped",
                    "unreadable_image",
                )
                continue
        image_id = build.image(record["file_name"], *size, file, where=record["where"])
        _split(build, image_id, splits, record["xml"].relative_to(ann_root).with_suffix(""))
        for obj in record["objects"]:
            category = build.category(obj["name"])
            if category is None:
                report.skip(obj["where"], f"label {obj['name']!r} is not one of the --names; skipped")
                continue
            extra = {key: 1 for key in ("difficult", "truncated") if obj[key]}
            if obj["difficult"]:
                extra["iscrowd"] = 1  # as a crowd region: ignored by evaluation, left out of training
            build.annotation(image_id, category, bbox=obj["bbox"], where=obj["where"], **extra)
    added = 0
    for file in _images_without_xml(folder, files, [x.relative_to(ann_root) for x in xmls]) if folder else []:
        try:
            size = image_size(file)
        except OSError as exc:
            report.skip(file, f"image without an XML could not be read ({exc}); skipped", "unreadable_image")
            continue
        name = file.relative_to(root if file.is_relative_to(root) else folder)
        image_id = build.image(name.as_posix(), *size, file, where=file)
        _split(build, image_id, splits, file.relative_to(folder).with_suffix(""))
        added += 1
    if added:
        report.note(f"{plural(added, 'image')} in {folder} without an XML read as images without objects")
    return build.result(root)


def _splits(voc_root: Path) -> dict[str, str]:
    """The split of each image that ``ImageSets/Main`` lists, by its name (its XML's name without ``.xml``)."""
    found: dict[str, str] = {}
    for split, file in (("train", "train"), ("val", "val"), ("train", "trainval"), ("test", "test")):
        path = voc_root / "ImageSets" / "Main" / f"{file}.txt"
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.split():
                    found.setdefault(line.split()[0], split)
    return found


def _split(build: Builder, image_id: int, splits: dict[str, str], name: Path) -> None:
    if name.as_posix() in splits:
        build.splits[image_id] = splits[name.as_posix()]


def _images_without_xml(folder: Path, files: list[Path | None], xmls: list[Path]) -> list[Path]:
    """The images in ``folder`` (``JPEGImages/``, or ``--images``) that no XML leads to nor shares a name with (the
    image of an XML that could not be read is not one without objects)."""
    named = {os.path.normcase(os.path.abspath(f)) for f in files if f}
    stems = {x.with_suffix("").as_posix() for x in xmls}
    return [f for f in walk(folder, is_image) if os.path.normcase(os.path.abspath(f)) not in named
            and f.relative_to(folder).with_suffix("").as_posix() not in stems]  # fmt: skip


def _image_file(record: dict[str, Any], root: Path | None, images: Path | None) -> Path | None:
    """The record's image: where its ``<path>`` leads (from the XML's folder; LabelImg writes it absolute), else in
    the images folder or beside the XML (by ``file_name``, then by its last part); ``--images`` comes first."""
    folders = [f for f in (root, record["xml"].parent) if f]
    candidates = [c for f in folders for c in (f / record["file_name"], f / Path(record["file_name"]).name)]
    if record["path"]:
        candidates.insert(2 if images else 0, record["xml"].parent / record["path"])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return folders[0] / record["file_name"] if folders else None


def _root_of_paths(records: list[dict[str, Any]], files: list[Path | None]) -> Path | None:
    """The folder every image is found below by its ``file_name`` when every one was found by its ``<path>`` (a
    set written beside images left where they were): what the names are relative to; else ``None``."""
    roots = set()
    for record, file in zip(records, files, strict=True):
        name = PurePosixPath(record["file_name"]).parts
        if not record["path"] or file != record["xml"].parent / record["path"] or not file.is_file():
            return None
        parts = Path(os.path.normpath(file)).parts
        if parts[-len(name) :] != name:
            return None
        roots.add(Path(*parts[: -len(name)]))
    return roots.pop() if len(roots) == 1 else None


def _parse(xml: Path, ann_root: Path, report: Report) -> dict[str, Any] | None:
    """One XML as a plain record; problems reported with the file and line."""
    try:
        root, lines = parse_xml(xml)
    except ValueError as exc:
        report.skip(xml, str(exc))
        return None
    if root.tag != "annotation":
        report.skip(f"{xml}:{lines[root]}", f"not a Pascal VOC annotation (root element <{root.tag}>)")
        return None
    rel = xml.parent.relative_to(ann_root) if xml.parent != ann_root else Path()
    filename = (root.findtext("filename") or "").strip()
    if not filename:
        filename = next((p.name for p in sorted(xml.parent.glob(f"{xml.stem}.*")) if is_image(p)), f"{xml.stem}.jpg")
    record: dict[str, Any] = {
        "xml": xml,
        "where": f"{xml}:{lines[root]}",
        "file_name": (rel / filename).as_posix(),
        "path": (root.findtext("path") or "").strip(),
        "size": _size(root),
        "objects": [],
    }
    size = root.find("size")
    if size is not None:
        record["where"] = f"{xml}:{lines[size]}"
    for obj in root.iter("object"):
        where = f"{xml}:{lines[obj]}"
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not name or box is None:
            report.skip(where, "<object> without a <name> and a <bndbox>; skipped")
            continue
        try:
            xmin, ymin, xmax, ymax = (float(box.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            report.skip(where, "<bndbox> coordinates are not numbers; skipped")
            continue
        bbox = [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]
        problem = box_problem(bbox)
        if problem:
            report.skip(where, f"{problem}; skipped", "degenerate_box")
            continue
        difficult, truncated = ((obj.findtext(k) or "0").strip() in ("1", "true", "True") for k in FLAGS)
        record["objects"].append({"name": name, "bbox": bbox, "difficult": difficult, "truncated": truncated,
                                  "where": where})  # fmt: skip
    return record


def _size(root: Any) -> tuple[int, int] | None:
    try:
        width, height = int(float(root.findtext("size/width"))), int(float(root.findtext("size/height")))
    except (TypeError, ValueError):
        return None
    return (width, height) if width > 0 and height > 0 else None


def write(data: Collection, out: Path, at: Path, report: Report, images_mode: str) -> dict[str, str]:
    """``out/Annotations/<name>.xml`` per image (and ``out/JPEGImages/`` when images are copied or linked, else
    ``<path>`` leads from the XML's folder to the image where it is, ``<folder>`` to its folder)."""
    at.mkdir(parents=True)
    cats = data.categories
    anns = data.coco["annotations"]
    if any(polygons_of(a) or isinstance(a.get("segmentation"), dict) for a in anns):
        report.note("VOC holds boxes only: polygons and masks were not written")
    if any(a.get("keypoints") for a in anns):
        report.note("VOC holds boxes only: keypoints were not written")
    if any(a.get("iscrowd") for a in anns):
        report.note("crowd regions (iscrowd) were written as difficult objects")
    by_image = data.by_image()
    found: dict[int, Path] = {}
    if images_mode == "none":
        found = images_in_place(data.files, {im["id"]: im["file_name"] for im in data.coco["images"]}, report)
    written: set[Path] = set()
    targets: dict[int, Path] = {}
    lists: dict[str, list[str]] = {}  # each split's images by their XML's name without .xml (ImageSets/Main)
    for image in data.coco["images"]:
        rel = safe_relative(image["file_name"])
        xml = at / "Annotations" / rel.with_suffix(".xml")
        if xml in written:
            report.skip(image["file_name"], f"another image already wrote {rel.with_suffix('.xml')}; not written")
            continue
        written.add(xml)
        if image["id"] in data.splits:
            lists.setdefault(data.splits[image["id"]], []).append(rel.with_suffix("").as_posix())
        targets[image["id"]] = at / "JPEGImages" / rel
        xml.parent.mkdir(parents=True, exist_ok=True)
        path = path_from((out / "Annotations" / rel).parent, found[image["id"]]) if image["id"] in found else None
        objects = [a for a in by_image[image["id"]] if a["category_id"] in cats]
        tree = _tree(image, rel.name, path, objects, cats, report)
        ET.indent(tree)
        tree.write(xml, encoding="utf-8", xml_declaration=False)
    (at / LABELS).write_text("".join(f"{c['name']}\n" for _, c in sorted(cats.items())), "utf-8")
    _write_splits(at / "ImageSets" / "Main", lists)
    where = {"annotations": str(out / "Annotations")}
    if images_mode != "none":
        place_images(data.files, targets, images_mode, report)
        where["images"] = str(out / "JPEGImages")
    elif data.images_root:
        where["images"] = str(data.images_root)
    return where


def _write_splits(folder: Path, lists: dict[str, list[str]]) -> None:
    """``train.txt``, ``val.txt``, ``test.txt`` (and ``trainval.txt``, both first ones) of the images each split
    holds, as VOC lists them; nothing where the source names no split."""
    if not lists:
        return
    folder.mkdir(parents=True)
    if "train" in lists or "val" in lists:
        lists = {**lists, "trainval": lists.get("train", []) + lists.get("val", [])}
    for split, names in lists.items():
        (folder / f"{split}.txt").write_text("".join(f"{name}\n" for name in names), "utf-8")


def _tree(
    image: dict[str, Any],
    filename: str,
    path: str | None,
    anns: list[dict[str, Any]],
    cats: dict[int, dict[str, Any]],
    report: Report,
) -> ET.ElementTree:
    """One image's XML; ``path``: the image from the XML's folder, when it stays where it is (else in JPEGImages/)."""
    width, height = image["width"], image["height"]
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = str(PurePosixPath(path).parent) if path else "JPEGImages"
    ET.SubElement(root, "filename").text = filename
    if path:
        ET.SubElement(root, "path").text = path
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for ann in anns:
        x, y, w, h = ann["bbox"]
        xmin, ymin = min(max(round(x) + 1, 1), width), min(max(round(y) + 1, 1), height)
        xmax, ymax = min(round(x + w), width), min(round(y + h), height)
        if xmax < xmin or ymax < ymin:
            report.skip(f"annotation {ann['id']} of {image['file_name']}", "box outside the image; not written")
            continue
        if x < 0 or y < 0 or round(x + w) > width or round(y + h) > height:
            report.note("boxes reaching past their image were cut at its edges (VOC boxes lie in it)")
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = cats[ann["category_id"]]["name"]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "1" if ann.get("truncated") else "0"
        ET.SubElement(obj, "difficult").text = "1" if ann.get("difficult") or ann.get("iscrowd") else "0"
        box = ET.SubElement(obj, "bndbox")
        for key, value in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
            ET.SubElement(box, key).text = str(value)
    return ET.ElementTree(root)
