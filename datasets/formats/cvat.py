"""CVAT for images 1.1: one ``annotations.xml`` with the label list in ``meta`` and an ``image`` element per image
holding ``box``, ``polygon`` and ``skeleton`` shapes (pixel coordinates, two decimals).

Shapes with one ``group_id`` and label are one object (a box and a skeleton, or a multi-part polygon); single
``points`` with the object's ``group_id`` are keypoints named by their label (CVAT's way before skeletons). A
skeleton's keypoint order and edges come from its label in ``meta``; points marked ``outside`` are unlabelled
(visibility 0) and ``occluded`` ones hidden (1). An image's ``subset`` (Train, Validation, Test) is its split.
"""

from __future__ import annotations

import html
import math
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cnnapps.datasets.formats.disk import image_size, images_root, parse_xml, place_images, safe_relative
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

_NOT_CONVERTED = ("polyline", "mask", "ellipse", "cuboid")
#: the splits an image's ``subset`` names (CVAT's Train, Validation, Test; any other subset is no split)
_SUBSETS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
#: the subset each split is written as (CVAT's names)
SUBSET_NAMES = {"train": "Train", "val": "Validation", "test": "Test"}


def annotation_file(src: Path) -> Path:
    if src.is_file():
        return src
    if src.is_dir():
        found = [src / "annotations.xml"] if (src / "annotations.xml").is_file() else sorted(src.glob("*.xml"))
        if len(found) == 1:
            return found[0]
        raise FormatError(f"{src}: {'no' if not found else len(found)} .xml files; name the CVAT annotations.xml")
    raise FormatError(f"{src}: no such file or folder")


def read(src: Path, report: Report, names: list[str] | None = None, images: Path | None = None) -> Collection:
    """A CVAT for images XML: boxes, polygons, skeletons and grouped points; what cannot be used is reported."""
    path = annotation_file(src)
    try:
        root, lines = parse_xml(path)
    except ValueError as exc:
        raise FormatError(f"{path}: {exc}") from None
    if root.tag != "annotations":
        raise FormatError(f"{path}: not a CVAT for images file (root element <{root.tag}>, not <annotations>)")
    labels = _meta_labels(root)
    image_elements = root.findall("image")
    if not image_elements and root.find("track") is not None:
        raise FormatError(f"{path}: CVAT for video (tracks) is not read; export the task as CVAT for images 1.1")
    img_root = images_root([images, path.parent / "images", path.parent], [e.get("name", "") for e in image_elements])
    records = []
    for element in image_elements:
        where = f"{path}:{lines[element]}"
        name = element.get("name")
        if not name:
            report.skip(where, "<image> without a name; skipped")
            continue
        file = img_root / name if img_root else Path(name)
        try:
            size = (int(element.get("width", "")), int(element.get("height", "")))
        except ValueError:
            try:
                size = image_size(file)
            except OSError as exc:
                why = f"<image> {name!r} has no width/height and {file} could not be read ({exc})"
                report.skip(where, why, "unreadable_image")
                continue
        objects = _objects(element, path, lines, report)
        split = _SUBSETS.get((element.get("subset") or "").strip().lower())
        records.append({"file": file, "name": name, "size": size, "where": where, "objects": objects, "split": split})
    order: dict[str, list[list[str]]] = {}
    for record in records:
        for obj in record["objects"]:
            if obj["points"]:
                order.setdefault(obj["label"], []).append(list(obj["points"]))
    keypoints = {
        label: labels[label]["keypoints"] if labels.get(label, {}).get("keypoints") else merged_order(seqs)
        for label, seqs in order.items()
    }
    for label, info in labels.items():
        if info.get("keypoints"):
            keypoints.setdefault(label, info["keypoints"])
    top = [n for n, info in labels.items() if not info["parent"]]
    seen = {o["label"] for r in records for o in r["objects"]}
    build = Builder(names or top + sorted(seen - set(top)))
    for label, kp_names in keypoints.items():
        build.category(label, kp_names, labels.get(label, {}).get("skeleton"))
    for record in records:
        image_id = build.image(record["name"], *record["size"], record["file"], where=record["where"])
        if record["split"]:
            build.splits[image_id] = record["split"]
        for obj in record["objects"]:
            category = build.category(obj["label"])
            if category is None:
                report.skip(obj["where"], f"label {obj['label']!r} is not one of the --names; skipped")
                continue
            flat = None
            if obj["label"] in keypoints:
                flat = [c for n in keypoints[obj["label"]] for c in obj["points"].get(n, [0, 0, 0])]
            box = obj["box"]
            if box is None and not obj["polygons"]:
                box = bounds([[c for n, p in obj["points"].items() if p[2] > 0 for c in p[:2]]])
                problem = box_problem(box)
                if problem:
                    report.skip(obj["where"], f"keypoints span no area ({problem}); skipped", "degenerate_box")
                    continue
            build.annotation(
                image_id, category, bbox=box, polygons=obj["polygons"] or None, keypoints=flat, where=obj["where"]
            )
    return build.result(img_root)


def _meta_labels(root: Any) -> dict[str, dict[str, Any]]:
    """The label list of ``meta`` (task, job or project): type, parent, and for skeletons their keypoint names in
    order with the edges as 1-based pairs."""
    labels: dict[str, dict[str, Any]] = {}
    children: dict[str, list[str]] = {}  # a skeleton's points by parent: two skeletons may name theirs alike
    meta = root.find("meta")
    for label in meta.iter("label") if meta is not None else []:
        name = (label.findtext("name") or "").strip()
        parent = (label.findtext("parent") or "").strip()
        if name and parent:
            children.setdefault(parent, []).append(name)
        elif name and name not in labels:
            labels[name] = {"type": (label.findtext("type") or "any").strip(), "parent": "",
                            "svg": label.findtext("svg") or ""}  # fmt: skip
    for name, info in labels.items():
        if info["type"] == "skeleton":
            info["keypoints"] = list(dict.fromkeys(children.get(name, [])))
            info["skeleton"] = _edges(info["svg"], info["keypoints"])
    return labels


def _edges(svg: str, names: list[str]) -> list[list[int]]:
    """A skeleton label's edges from its SVG (``data-node-from``/``-to`` over ``data-node-id``/``data-label-name``)."""
    tags = re.findall(r"<(?:circle|line)\b[^>]*>", svg)
    attrs = [{k: html.unescape(v) for k, v in re.findall(r'([\w-]+)="([^"]*)"', tag)} for tag in tags]  # &amp; ...
    node_name = {a["data-node-id"]: a.get("data-label-name") for a in attrs if "data-node-id" in a}
    index = {n: i + 1 for i, n in enumerate(names)}
    edges = []
    for a in attrs:
        ends = [index.get(node_name.get(a.get(k, ""), "")) for k in ("data-node-from", "data-node-to")]
        if all(ends):
            edges.append(ends)
    return edges


def _xy(text: str | None) -> list[float]:
    """``"x0,y0;x1,y1"`` as a flat list; raises ``ValueError`` when it is not that."""
    out = []
    for pair in (text or "").split(";"):
        x, y = pair.split(",")
        out.extend([float(x), float(y)])
    return out


def _objects(image: Any, path: Path, lines: dict[Any, int], report: Report) -> list[dict[str, Any]]:
    objects: dict[Any, dict[str, Any]] = {}
    grouped_points = []
    for n, shape in enumerate(image):
        where, label = f"{path}:{lines[shape]}", shape.get("label", "")
        group = shape.get("group_id") if shape.get("group_id") not in (None, "", "0") else None
        if shape.tag == "tag":
            report.note("image tags (<tag>) are labels of whole images, not objects: left out")
            continue
        if shape.tag in _NOT_CONVERTED or shape.tag not in ("box", "polygon", "skeleton", "points"):
            report.skip(where, f"<{shape.tag}> is not converted (boxes, polygons, skeletons and grouped points are)")
            continue
        if not label:
            report.skip(where, f"<{shape.tag}> without a label; skipped")
            continue
        try:
            if shape.tag == "box":
                xtl, ytl, xbr, ybr = (float(shape.get(k, "")) for k in ("xtl", "ytl", "xbr", "ybr"))
                geometry: Any = upright([xtl, ytl, xbr - xtl, ybr - ytl], float(shape.get("rotation") or 0))
                if geometry[2] != xbr - xtl or geometry[3] != ybr - ytl:
                    report.note("rotated boxes were written as the upright boxes around them")
            elif shape.tag == "skeleton":
                geometry = {p.get("label", ""): _keypoint(p) for p in shape.iter("points")}
            else:
                geometry = _xy(shape.get("points"))
        except ValueError:
            report.skip(where, f"<{shape.tag}> coordinates are not numbers; skipped")
            continue
        if shape.tag == "points":
            if group is None or len(geometry) != 2:
                why = "has no group_id tying it to an object" if group is None else f"holds {len(geometry) // 2} points"
                report.skip(where, f"<points> {label!r} {why} (skeletons or single grouped points become keypoints)")
            else:
                occluded = shape.get("occluded") == "1"
                grouped_points.append((where, group, label, [*geometry, 1 if occluded else 2]))
            continue
        problem = (
            box_problem(geometry)
            if shape.tag == "box"
            else polygon_problem(geometry)
            if shape.tag == "polygon"
            else None
        )
        if problem:
            kind = "degenerate_box" if shape.tag == "box" else "empty_mask"
            report.skip(where, f"<{shape.tag}> {label!r}: {problem}; skipped", kind)
            continue
        key = (n,) if group is None else (group, label)
        if shape.tag == "box" and key in objects and objects[key]["box"] is not None:
            key = (group, label, n)  # a second box of one group and label: another object, not a replacement
        obj = objects.setdefault(key, {"label": label, "box": None, "polygons": [], "points": {}, "where": where})
        if shape.tag == "box":
            obj["box"] = geometry
        elif shape.tag == "polygon":
            obj["polygons"].append(geometry)
        else:
            obj["points"].update(geometry)
    for where, group, label, point in grouped_points:
        key = next((k for k in objects if k[0] == group and len(k) == 2), None)
        if key is None:
            report.skip(where, f"<points> {label!r}: no box, polygon or skeleton has its group_id {group}; skipped")
        else:
            objects[key]["points"][label] = point
    return list(objects.values())


def upright(box: list[float], degrees: float) -> list[float]:
    """The upright box around ``box`` (x, y, w, h) turned by ``degrees`` about its centre (CVAT's ``rotation``)."""
    if not degrees % 180:
        return box
    x, y, w, h = box
    turn = math.radians(degrees)
    c, s = abs(math.cos(turn)), abs(math.sin(turn))
    width, height = w * c + h * s, w * s + h * c
    return [x + w / 2 - width / 2, y + h / 2 - height / 2, width, height]


def _keypoint(element: Any) -> list[float]:
    if element.get("outside") == "1":
        return [0, 0, 0]
    x, y = _xy(element.get("points"))[:2]
    return [x, y, 1 if element.get("occluded") == "1" else 2]


def write(data: Collection, out: Path, at: Path, report: Report, images_mode: str) -> dict[str, str]:
    """``out.xml``, or ``out/annotations.xml`` (with ``out/images/`` when images are copied or linked)."""
    cats = dict(sorted(data.categories.items()))
    note_crowd_left_out(data.coco["annotations"], report, "CVAT")
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    root.append(_meta(cats, data, len(data.coco["images"])))
    by_image = data.by_image()
    targets: dict[int, Path] = {}
    for n, image in enumerate(data.coco["images"]):
        name = str(safe_relative(image["file_name"])) if images_mode != "none" else image["file_name"]
        targets[image["id"]] = at / "images" / name
        element = ET.SubElement(root, "image", id=str(n), name=name)
        if image["id"] in data.splits:
            element.set("subset", SUBSET_NAMES[data.splits[image["id"]]])
        element.set("width", str(image["width"]))
        element.set("height", str(image["height"]))
        group = 0
        for ann in by_image[image["id"]]:
            if ann["category_id"] in cats and not ann.get("iscrowd"):
                group += 1
                _shapes(element, ann, cats[ann["category_id"]], group, report)
    ET.indent(root)
    xml = at if out.suffix.lower() == ".xml" else at / "annotations.xml"
    xml.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(xml, encoding="utf-8", xml_declaration=True)
    where = {"annotations": str(out if out.suffix.lower() == ".xml" else out / "annotations.xml")}
    if images_mode != "none":
        place_images(data.files, targets, images_mode, report)
        where["images"] = str(out / "images")
    elif data.images_root:
        where["images"] = str(data.images_root)
    return where


def _meta(cats: dict[int, dict[str, Any]], data: Collection, size: int) -> ET.Element:
    meta = ET.Element("meta")
    task = ET.SubElement(meta, "task")
    for key, value in (("name", "cnnapps data convert"), ("size", str(size)), ("mode", "annotation")):
        ET.SubElement(task, key).text = value
    labels = ET.SubElement(task, "labels")
    for cat in cats.values():
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = cat["name"]
        ET.SubElement(label, "type").text = "skeleton" if cat.get("keypoints") else "any"
        ET.SubElement(label, "attributes")
        if cat.get("keypoints"):
            ET.SubElement(label, "svg").text = _svg(cat, data)
    for cat in cats.values():
        for name in cat.get("keypoints") or []:
            label = ET.SubElement(labels, "label")
            for key, value in (("name", name), ("type", "points"), ("attributes", None), ("parent", cat["name"])):
                ET.SubElement(label, key).text = value
    ET.SubElement(meta, "dumped").text = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return meta


def _svg(cat: dict[str, Any], data: Collection) -> str:
    """CVAT's drawing of a skeleton label: each keypoint where it sits on average inside its box (0..100)."""
    k = len(cat["keypoints"])
    sums = [[0.0, 0.0, 0] for _ in range(k)]
    for ann in data.coco["annotations"]:
        points, (x, y, w, h) = ann.get("keypoints") or [], ann["bbox"]
        if ann["category_id"] == cat["id"] and len(points) == 3 * k and w > 0 and h > 0:
            for i in range(k):
                if points[3 * i + 2] > 0:
                    sums[i][0] += (points[3 * i] - x) / w * 100
                    sums[i][1] += (points[3 * i + 1] - y) / h * 100
                    sums[i][2] += 1
    at = [(sx / c, sy / c) if c else (50.0, 100.0 * i / max(k - 1, 1)) for i, (sx, sy, c) in enumerate(sums)]
    parts = []
    for a, b in cat.get("skeleton") or []:
        if 1 <= a <= k and 1 <= b <= k:
            (x1, y1), (x2, y2) = at[a - 1], at[b - 1]
            parts.append(
                f'<line x1="{x1:.2f}" y1="{y1:.2f}" x2="{x2:.2f}" y2="{y2:.2f}" stroke="black" '
                f'data-type="edge" data-node-from="{a}" stroke-width="0.5" data-node-to="{b}"></line>'
            )
    for i, (name, (x, y)) in enumerate(zip(cat["keypoints"], at, strict=True), 1):
        label = name.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
        parts.append(
            f'<circle r="1.5" stroke="black" fill="#b3b3b3" cx="{x:.2f}" cy="{y:.2f}" stroke-width="0.1" '
            f'data-type="element node" data-element-id="{i}" data-node-id="{i}" data-label-name="{label}">'
            "</circle>"
        )
    return "".join(parts)


def _shapes(image: ET.Element, ann: dict[str, Any], cat: dict[str, Any], group: int, report: Report) -> None:
    """An object as CVAT shapes: polygons (one group when several) or a box; a skeleton for a pose category (CVAT's
    skeleton labels hold skeletons only, so the object's box and polygons are not written)."""
    names = cat.get("keypoints") or []
    common = {"label": cat["name"], "source": "manual", "z_order": "0"}
    if names:
        points = ann.get("keypoints") or []
        report.note(
            "CVAT skeletons have no box: pose objects were written as skeletons only (read back, a box is "
            "the extent of the labelled keypoints, and an object with fewer than two labelled keypoints has none)"
        )
        if len(points) != 3 * len(names):
            report.skip(
                f"annotation {ann['id']} of category {cat['name']!r}", "no keypoints for its skeleton; not written"
            )
            return
        skeleton = ET.SubElement(image, "skeleton", common)
        for i, name in enumerate(names):
            x, y, v = points[3 * i : 3 * i + 3]
            ET.SubElement(
                skeleton,
                "points",
                {
                    "label": name,
                    "source": "manual",
                    "outside": "0" if v > 0 else "1",
                    "occluded": "1" if v == 1 else "0",
                    "points": f"{x:.2f},{y:.2f}",
                },
            )
        return
    polygons = polygons_of(ann)
    common["occluded"] = "0"
    if len(polygons) > 1:
        common["group_id"] = str(group)
    for p in polygons:
        xy = ";".join(f"{p[i]:.2f},{p[i + 1]:.2f}" for i in range(0, len(p), 2))
        ET.SubElement(image, "polygon", {**common, "points": xy})
    if not polygons:
        if isinstance(ann.get("segmentation"), dict):
            report.note("RLE masks were written as their boxes")
        x, y, w, h = ann["bbox"]
        ET.SubElement(
            image, "box", {**common, "xtl": f"{x:.2f}", "ytl": f"{y:.2f}", "xbr": f"{x + w:.2f}", "ybr": f"{y + h:.2f}"}
        )
