"""LabelMe JSON: one file per image (``imagePath``, ``imageWidth``/``imageHeight``, ``shapes`` of ``label``,
``points``, ``shape_type``, ``group_id``), and the label list ``labels.txt`` beside them (``labelme --labels``).
Images in the folder that no JSON names (LabelMe writes none for an image never labelled) are read as images
without objects.

One object is a rectangle, a polygon (or circle), or several of them with one ``group_id``; ``point`` shapes with the
object's ``group_id`` are its keypoints, named by their label (a point flagged ``occluded`` is labelled but hidden,
COCO's visibility 1). Categories and keypoints are in the order of ``labels.txt`` when there is one (it is written),
else categories by name and keypoints in the order the files agree on.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from cnnapps.datasets.formats.disk import (
    image_size,
    is_image,
    path_from,
    place_images,
    read_names,
    safe_relative,
    walk,
)
from cnnapps.datasets.formats.hub import (
    Builder,
    Collection,
    FormatError,
    Report,
    bounds,
    box_problem,
    merged_order,
    note_crowd_left_out,
    polygon_problem,
    polygons_of,
)
from cnnapps.terminal import plural

_REGIONS = ("rectangle", "polygon", "circle")


def read(src: Path, report: Report, names: list[str] | None = None, images: Path | None = None) -> Collection:
    """Every LabelMe JSON under ``src`` (a folder, or one file)."""
    if src.is_file():
        root, files = src.parent, [src]
    elif src.is_dir():
        root, files = src, walk(src, lambda p: p.suffix.lower() == ".json")
    else:
        raise FormatError(f"{src}: no such file or folder")
    records = [r for r in (_parse(f, root, images, report) for f in files) if r]
    if not records and files:
        raise FormatError(f"{src}: no LabelMe file could be read")
    if src.is_dir():
        records += _images_without_json(root, files, records, report)
    images_root = _images_root(records, root, images)  # may rename the images relative to it
    order: dict[str, list[list[str]]] = {}
    for record in records:
        for obj in record["objects"]:
            if obj["points"]:
                order.setdefault(obj["label"], []).append(list(obj["points"]))
    regions = {o["label"] for r in records for o in r["objects"]}
    listed = names or _labels_file(root)
    rank = {name: i for i, name in enumerate(listed or [])}
    points = {n for seqs in order.values() for seq in seqs for n in seq}
    categories = [n for n in listed or [] if n in regions or n not in points]
    build = Builder(names if names else categories + sorted(regions - set(categories)))
    keypoints = {
        label: sorted(merged_order(seqs), key=lambda n: rank.get(n, len(rank))) for label, seqs in order.items()
    }
    for label, kp_names in keypoints.items():
        build.category(label, kp_names)  # a label outside --names stays out
    for record in records:
        image_id = build.image(record["file_name"], *record["size"], record["file"], where=record["where"])
        for obj in record["objects"]:
            category = build.category(obj["label"])
            if category is None:
                report.skip(obj["where"], f"label {obj['label']!r} is not one of the --names; skipped")
                continue
            flat = None
            if obj["label"] in keypoints:
                flat = []
                for name in keypoints[obj["label"]]:
                    flat.extend(obj["points"].get(name, [0, 0, 0]))
            polygons = obj["polygons"] or None
            build.annotation(image_id, category, bbox=obj["box"], polygons=polygons, keypoints=flat, where=obj["where"])
    return build.result(images_root)


def _images_root(records: list[dict[str, Any]], root: Path, images: Path | None) -> Path:
    """The folder the images' ``file_name`` entries are relative to: the LabelMe folder when they lie beside their
    JSON files, ``--images`` when they lie there; else the folder the images share, their names made relative to it
    (``imagePath`` entries such as ``../images/a.jpg``)."""
    for folder in (root, images):
        if folder is not None and all(_same(folder / r["file_name"], r["file"]) for r in records):
            return folder
    files = [Path(os.path.abspath(r["file"])) for r in records]
    common = Path(os.path.commonpath([f.parent for f in files])) if files else root
    for record, file in zip(records, files, strict=True):
        record["file_name"] = file.relative_to(common).as_posix()
    return common


def _images_without_json(
    root: Path, files: list[Path], records: list[dict[str, Any]], report: Report
) -> list[dict[str, Any]]:
    """The images in the folder that no JSON names nor shares a name with (LabelMe writes none for an image never
    labelled; the image of a JSON that could not be read is not one without objects), as records without objects."""
    named = {os.path.normcase(os.path.abspath(r["file"])) for r in records}
    named |= {os.path.normcase(os.path.abspath(f.with_suffix(""))) for f in files}
    found = []
    for file in walk(root, is_image):
        if {os.path.normcase(os.path.abspath(f)) for f in (file, file.with_suffix(""))} & named:
            continue
        try:
            width, height = image_size(file)
        except OSError as exc:
            report.skip(file, f"image without a JSON could not be read ({exc}); skipped", "unreadable_image")
            continue
        found.append({"where": file, "file": file, "file_name": file.relative_to(root).as_posix(),
                      "size": (width, height), "objects": []})  # fmt: skip
    if found:
        report.note(f"{plural(len(found), 'image')} in {root} without a JSON read as images without objects")
    return found


def _same(a: Path, b: Path) -> bool:
    return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


def _labels_file(root: Path) -> list[str] | None:
    """The label list beside the files (``labels.txt``, as ``labelme --labels`` takes): the order of categories
    and keypoints."""
    path = root / "labels.txt"
    return read_names(path) if path.is_file() else None


def _parse(path: Path, root: Path, images: Path | None, report: Report) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        report.skip(path, f"not a readable JSON file ({getattr(exc, 'strerror', None) or exc})")
        return None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        report.skip(path, "not a LabelMe file (no 'shapes' list)")
        return None
    file, file_name = _image(path, root, data.get("imagePath"), images)
    width, height = data.get("imageWidth"), data.get("imageHeight")
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        try:
            width, height = image_size(file)
        except OSError as exc:
            report.skip(
                path,
                f"no imageWidth/imageHeight and the image {file} could not be read ({exc}); skipped",
                "unreadable_image",
            )
            return None
    return {
        "where": path,
        "file": file,
        "file_name": file_name,
        "size": (width, height),
        "objects": _objects(path, data["shapes"], report),
    }


def _image(path: Path, root: Path, image_path: Any, images: Path | None) -> tuple[Path, str]:
    """The image file a LabelMe JSON names, and its name relative to the folder converted."""
    rel_dir = path.parent.relative_to(root)
    if isinstance(image_path, str) and image_path:
        name = image_path.replace("\\", "/")
        file = Path(os.path.normpath(path.parent / name))
    else:
        file = next((p for p in sorted(path.parent.glob(f"{path.stem}.*")) if is_image(p)), path.with_suffix(".jpg"))
        name = file.name
    if images is not None and not file.is_file():
        file = images / rel_dir / Path(name).name
    elif not file.is_file() and (path.parent / Path(name).name).is_file():  # a path of another machine (C:\...\a.jpg)
        file = path.parent / Path(name).name
    try:
        return file, file.relative_to(root).as_posix()
    except ValueError:
        return file, (rel_dir / Path(name).name).as_posix()


def _objects(path: Path, shapes: list[Any], report: Report) -> list[dict[str, Any]]:
    """The shapes as objects: regions grouped by (group_id, label); points join their group's first region."""
    objects: dict[Any, dict[str, Any]] = {}
    first_of_group: dict[Any, Any] = {}
    points: list[tuple[str, Any, str, list[float]]] = []
    for i, shape in enumerate(shapes):
        where = f"{path}: shapes[{i}]"
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
            report.skip(where, "not a shape with a label")
            continue
        label, kind, group = shape["label"], shape.get("shape_type") or "polygon", shape.get("group_id")
        try:
            xy = [[float(c) for c in p] for p in shape.get("points") or []]
            if any(len(p) != 2 or not all(math.isfinite(c) for c in p) for p in xy):
                raise ValueError
        except (TypeError, ValueError):
            report.skip(where, "points are not [x, y] pairs of numbers; skipped")
            continue
        if kind == "point":
            if len(xy) != 1:
                report.skip(where, f"point {label!r} with {len(xy)} coordinates; skipped")
            elif group is None:
                report.skip(where, f"point {label!r} has no group_id tying it to an object; skipped")
            else:
                occluded = isinstance(shape.get("flags"), dict) and shape["flags"].get("occluded")
                points.append((where, group, label, [*xy[0], 1 if occluded else 2]))
            continue
        if kind not in _REGIONS:
            report.skip(where, f"shape_type {kind!r} is not converted (only rectangles, polygons, circles, points)")
            continue
        key = (i,) if group is None else (group, label)
        if kind == "rectangle" and key in objects and objects[key]["box"] is not None:
            key = (group, label, i)  # a second rectangle of one group and label: another object, not a replacement
        obj = objects.setdefault(key, {"label": label, "box": None, "polygons": [], "points": {}, "where": where})
        first_of_group.setdefault(group, key)
        if kind == "rectangle":
            if len(xy) != 2:
                report.skip(where, f"rectangle with {len(xy)} points (2 corners are needed); skipped")
                continue
            (x0, y0), (x1, y1) = xy
            box = [min(x0, x1), min(y0, y1), abs(x1 - x0), abs(y1 - y0)]
            problem = box_problem(box)
            if problem:
                report.skip(where, f"{problem}; skipped", "degenerate_box")
                continue
            obj["box"] = box
        else:
            flat = _circle(xy) if kind == "circle" else [c for p in xy for c in p]
            problem = polygon_problem(flat) if flat else f"{kind} with {len(xy)} points"
            if problem:
                report.skip(where, f"{problem}; skipped", "empty_mask")
                continue
            obj["polygons"].append(flat)
    for where, group, label, point in points:
        key = first_of_group.get(group) if group is not None else None
        if key is None:
            report.skip(where, f"point {label!r}: no rectangle or polygon has its group_id {group}; skipped")
        elif label in objects[key]["points"]:
            report.skip(where, f"point {label!r} appears twice in group {group}; skipped")
        else:
            objects[key]["points"][label] = point
    kept = []
    for obj in objects.values():
        if obj["box"] is None and not obj["polygons"]:
            continue  # its only shapes were reported above
        if obj["box"] is None:
            obj["box"] = bounds(obj["polygons"])
        kept.append(obj)
    return kept


def _circle(xy: list[list[float]], sides: int = 24) -> list[float]:
    """A LabelMe circle (centre, a point on it) as a polygon."""
    if len(xy) != 2:
        return []
    (cx, cy), (px, py) = xy
    r = math.hypot(px - cx, py - cy)
    return [
        c
        for i in range(sides)
        for c in (cx + r * math.cos(2 * math.pi * i / sides), cy + r * math.sin(2 * math.pi * i / sides))
    ]


def write(data: Collection, out: Path, at: Path, report: Report, images_mode: str) -> dict[str, str]:
    """``out/<name>.json`` per image; with images copied or linked, each beside its JSON, else ``imagePath`` leads
    from the JSON to the image where it is."""
    at.mkdir(parents=True)
    cats = data.categories
    if any(c.get("skeleton") for c in cats.values()):
        report.note("LabelMe has no skeletons: the keypoint pairs were not written")
    note_crowd_left_out(data.coco["annotations"], report, "LabelMe")
    for cat in cats.values():
        never = _never_labelled(cat, data.coco["annotations"])
        if never:
            report.note(
                f"{cat['name']}: keypoints labelled in no image ({', '.join(never)}) cannot be named in "
                "LabelMe files: read back, the category lacks them"
            )
    by_image = data.by_image()
    written: set[Path] = set()
    targets: dict[int, Path] = {}
    for image in data.coco["images"]:
        rel = safe_relative(image["file_name"])
        target = at / rel.with_suffix(".json")
        if target in written:
            report.skip(image["file_name"], f"another image already wrote {rel.with_suffix('.json')}; not written")
            continue
        written.add(target)
        if images_mode != "none":
            targets[image["id"]] = at / rel
            image_path = rel.name
        elif image["id"] in data.files:
            image_path = path_from((out / rel).parent, data.files[image["id"]])
        else:
            image_path = rel.name
        shapes = []
        for n, ann in enumerate(a for a in by_image[image["id"]] if a["category_id"] in cats and not a.get("iscrowd")):
            shapes.extend(_shapes(ann, cats[ann["category_id"]], n + 1, report))
        doc = {
            "version": "5.5.0",
            "flags": {},
            "shapes": shapes,
            "imagePath": image_path,
            "imageData": None,
            "imageHeight": image["height"],
            "imageWidth": image["width"],
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
    labels = [c["name"] for c in cats.values()]
    # a name in labels.txt that no point carries reads back as a category: keypoints never labelled are left out
    for cat in cats.values():
        never = _never_labelled(cat, data.coco["annotations"])
        labels += [n for n in cat.get("keypoints") or [] if n not in labels and n not in never]
    (at / "labels.txt").write_text("".join(f"{n}\n" for n in ["__ignore__", "_background_", *labels]), "utf-8")
    if images_mode != "none":
        place_images(data.files, targets, images_mode, report)
    return {"annotations": str(out), "images": str(out) if images_mode != "none" else str(data.images_root or "")}


def _never_labelled(cat: dict[str, Any], anns: list[dict[str, Any]]) -> list[str]:
    names = cat.get("keypoints") or []
    seen = [False] * len(names)
    for ann in anns:
        points = ann.get("keypoints") or []
        if ann["category_id"] == cat["id"] and len(points) == 3 * len(names):
            seen = [s or points[3 * i + 2] > 0 for i, s in enumerate(seen)]
    return [n for n, s in zip(names, seen, strict=True) if not s]


def _shapes(ann: dict[str, Any], cat: dict[str, Any], group: int, report: Report) -> list[dict[str, Any]]:
    label = cat["name"]
    polygons = polygons_of(ann)
    points = ann.get("keypoints") or []
    if isinstance(ann.get("segmentation"), dict):
        report.note("RLE masks were written as their boxes (rectangles)")
    regions = [("polygon", [[p[i], p[i + 1]] for i in range(0, len(p), 2)]) for p in polygons]
    if not regions:
        x, y, w, h = ann["bbox"]
        regions = [("rectangle", [[x, y], [x + w, y + h]])]
    names = cat.get("keypoints") or []
    visible = [
        (names[i // 3], points[i : i + 3]) for i in range(0, min(len(points), 3 * len(names)), 3) if points[i + 2] > 0
    ]
    group_id = group if len(regions) + len(visible) > 1 else None
    shapes = [_shape(label, xy, kind, group_id) for kind, xy in regions]
    for name, (x, y, v) in visible:
        shapes.append(_shape(name, [[x, y]], "point", group_id, {"occluded": True} if v == 1 else {}))
    return shapes


def _shape(label: str, points: list[list[float]], kind: str, group: int | None, flags: dict | None = None) -> dict:
    return {
        "label": label,
        "points": points,
        "group_id": group,
        "description": "",
        "shape_type": kind,
        "flags": flags or {},
        "mask": None,
    }
