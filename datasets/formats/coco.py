"""COCO JSON, the hub: read with a check of every entry (bad ones are reported and left out), written as one file.

A source is a ``.json`` file or a folder holding one (``annotations.json`` first). Its images are looked for in
``--images``, beside the JSON, in ``images/`` beside it, in ``../images`` (COCO's own ``annotations/`` layout), or in
the folder named as the JSON (``train.json`` and ``train/``, as ``cnnapps.datasets.synthetic`` writes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnnapps.datasets.formats.disk import image_size, images_root, place_images, safe_relative
from cnnapps.datasets.formats.hub import Collection, FormatError, Report, bounds, box_problem, polygon_problem


def annotation_file(src: Path) -> Path:
    """The JSON file a COCO source names: the file itself, or the one JSON file in a folder."""
    if src.is_file():
        return src
    if src.is_dir():
        if (src / "annotations.json").is_file():
            return src / "annotations.json"
        found = sorted(src.glob("*.json")) or sorted(src.glob("annotations/*.json"))
        if len(found) == 1:
            return found[0]
        what = "no .json file" if not found else f"{len(found)} .json files ({', '.join(p.name for p in found[:4])})"
        raise FormatError(f"{src}: {what}; name the COCO file itself")
    raise FormatError(f"{src}: no such file or folder")


def read(src: Path, report: Report, names: list[str] | None = None, images: Path | None = None) -> Collection:
    """A COCO file, each image, category and annotation checked; what cannot be used is reported and left out."""
    path = annotation_file(src)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not a readable JSON file ({getattr(exc, 'strerror', None) or exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise FormatError(f"{path}: no 'images' list (not a COCO annotation file)")
    if names:
        report.note("--names is not used with COCO sources: the categories come from the file")
    file_names = [im.get("file_name", "") for im in data["images"] if isinstance(im, dict)]
    places = [path.parent, path.parent / "images", path.parent.parent / "images", path.with_suffix("")]
    candidates = [images] if images else places  # a folder given is where they are: not another found instead
    root = images_root(candidates, file_names)
    out: dict[str, Any] = {k: data[k] for k in ("info", "licenses") if k in data}
    origins: dict[tuple[str, int], str] = {}
    out["images"], files = _images(data["images"], path, root, report, origins)
    out["categories"] = _categories(data.get("categories") or [], path, report)
    out["annotations"] = _annotations(data.get("annotations") or [], out, path, report, origins)
    return Collection(out, files, root, origins)


def _images(
    entries: list[Any], path: Path, root: Path | None, report: Report, origins: dict[tuple[str, int], str]
) -> tuple[list[dict], dict[int, Path]]:
    kept, files, seen = [], {}, set()
    for i, image in enumerate(entries):
        where = f"{path}: images[{i}]"
        if not isinstance(image, dict) or not isinstance(image.get("file_name"), str) or "id" not in image:
            report.skip(where, "not an image entry with an id and a file_name")
            continue
        if image["id"] in seen:
            report.skip(where, f"image id {image['id']} appears twice")
            continue
        file = root / image["file_name"] if root else Path(image["file_name"])
        width, height = image.get("width"), image.get("height")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            try:
                width, height = image_size(file)
            except OSError as exc:
                report.skip(
                    where, f"no width and height, and the image {file} could not be read ({exc})", "unreadable_image"
                )
                continue
        seen.add(image["id"])
        origins["image", image["id"]] = where
        kept.append({**image, "width": width, "height": height})
        files[image["id"]] = file
    return kept, files


def _categories(entries: list[Any], path: Path, report: Report) -> list[dict]:
    kept, seen = [], set()
    for i, cat in enumerate(entries):
        where = f"{path}: categories[{i}]"
        if not isinstance(cat, dict) or "id" not in cat or not isinstance(cat.get("name"), str):
            report.skip(where, "not a category with an id and a name")
        elif cat["id"] in seen:
            report.skip(where, f"category id {cat['id']} appears twice")
        else:
            seen.add(cat["id"])
            kept.append(cat)
    return kept


def _annotations(
    entries: list[Any], coco: dict[str, Any], path: Path, report: Report, origins: dict[tuple[str, int], str]
) -> list[dict]:
    images = {im["id"] for im in coco["images"]}
    cats = {c["id"]: c for c in coco["categories"]}
    kept = []
    for i, ann in enumerate(entries):
        where = f"{path}: annotations[{i}]" + (f" (id {ann['id']})" if isinstance(ann, dict) and "id" in ann else "")
        if not isinstance(ann, dict):
            report.skip(where, "not an annotation object")
            continue
        if ann.get("image_id") not in images:
            report.skip(where, f"image_id {ann.get('image_id')!r} is not an image of the file (or was left out)")
            continue
        if ann.get("category_id") not in cats:
            report.skip(where, f"category_id {ann.get('category_id')!r} is not a category of the file")
            continue
        ann = dict(ann)
        seg = ann.get("segmentation")
        if isinstance(seg, list):
            parts = []
            for j, part in enumerate(seg):
                problem = polygon_problem(part) if isinstance(part, list) else "not a list of coordinates"
                if problem:
                    report.skip(f"{where} segmentation[{j}]", f"{problem}; polygon left out", "empty_mask")
                else:
                    parts.append(part)
            if parts:
                ann["segmentation"] = parts
            else:
                ann.pop("segmentation")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) and ann.get("segmentation") and isinstance(ann["segmentation"], list):
            bbox = ann["bbox"] = bounds(ann["segmentation"])
        problem = box_problem(bbox) if isinstance(bbox, list) else "no bbox"
        if problem:
            report.skip(where, problem, "degenerate_box" if isinstance(bbox, list) else "bad_annotation")
            continue
        names = cats[ann["category_id"]].get("keypoints") or []
        points = ann.get("keypoints")
        if points is not None and (not names or not isinstance(points, list) or len(points) != 3 * len(names)):
            report.skip(
                f"{where} keypoints",
                f"expected 3 x {len(names)} numbers for the category's keypoints, "
                f"found {len(points) if isinstance(points, list) else points!r}; keypoints left out",
                "keypoints",
            )
            ann.pop("keypoints")
            ann.pop("num_keypoints", None)
        elif points is not None and "num_keypoints" not in ann:
            ann["num_keypoints"] = sum(1 for v in points[2::3] if v > 0)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", bbox[2] * bbox[3])
        kept.append(ann)
        if "id" in ann:
            origins["annotation", ann["id"]] = where
    return kept


def write(data: Collection, out: Path, at: Path, report: Report, images_mode: str) -> dict[str, str]:
    """``out.json``, or ``out/annotations.json`` (with ``out/images/`` when images are copied or linked)."""
    coco = dict(data.coco)
    where = {"annotations": str(out if out.suffix.lower() == ".json" else out / "annotations.json")}
    target = at if out.suffix.lower() == ".json" else at / "annotations.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    if images_mode != "none":
        coco["images"] = [{**im, "file_name": str(safe_relative(im["file_name"]))} for im in coco["images"]]
        targets = {im["id"]: at / "images" / im["file_name"] for im in coco["images"]}
        place_images(data.files, targets, images_mode, report)
        where["images"] = str(out / "images")
    elif data.images_root:
        where["images"] = str(data.images_root)
    target.write_text(json.dumps(coco, ensure_ascii=False), encoding="utf-8")
    return where
