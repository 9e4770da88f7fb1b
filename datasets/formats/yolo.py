"""YOLO text labels in ultralytics' layout: ``images/`` and ``labels/`` side by side (split subfolders allowed), a
``data.yaml`` with ``names`` (and ``kpt_shape`` for pose), one ``.txt`` per image with one object per line in
coordinates normalised by the image size: ``class cx cy w h`` (boxes), ``class x1 y1 x2 y2 ...`` (polygons) or
``class cx cy w h x1 y1 v1 ...`` (pose). The image files give the sizes, both ways.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cnnapps.datasets.formats.disk import (
    image_size,
    is_image,
    names_from,
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
    box_problem,
    flip_index_from_names,
    joined,
    note_crowd_left_out,
    polygon_problem,
    polygons_of,
)
from cnnapps.terminal import plural
from cnnapps.yamltext import load_yaml

#: how far outside 0..1 a coordinate may be (float noise) before the line is refused
_SLACK = 1e-3


def dataset_yaml(src: Path) -> Path | None:
    """The dataset's YAML: ``src`` itself, or ``data.yaml`` / the one ``*.yaml`` with ``names`` in the folder."""
    if src.is_file():
        return src if src.suffix.lower() in (".yaml", ".yml") else None
    for candidate in [src / "data.yaml", src / "dataset.yaml", *sorted(src.glob("*.y*ml"))]:
        if candidate.is_file() and "names:" in candidate.read_text(encoding="utf-8", errors="replace"):
            return candidate
    return None


def read(src: Path, report: Report, names: list[str] | None = None, images: Path | None = None) -> Collection:
    """A YOLO dataset (its folder or its YAML): every image with its label file; bad lines reported one by one."""
    if not src.exists():
        raise FormatError(f"{src}: no such file or folder")
    src = Path(os.path.abspath(src))  # label_path swaps a "/images/" of the path: "." or "data.yaml" has none
    yaml_path = dataset_yaml(src)
    config = _load_yaml(yaml_path) if yaml_path else {}
    root = yaml_path.parent if yaml_path else src
    names = names or _names(config, yaml_path, root)
    pose = _pose_spec(config, yaml_path)
    build = Builder(names)
    if pose:
        for i, cat in enumerate(build.coco["categories"]):
            if pose["classes"] is None or i in pose["classes"]:
                _pose_category(cat, pose)
    base = _base(config, root)
    listed = _image_files(config, base, yaml_path, report)  # image -> the YAML entry (train, val, test) naming it
    image_files = list(listed) or walk(
        root, lambda p: is_image(p) and "labels" not in p.relative_to(root).parts
    )  # no train/val/test entry found: every image under the dataset's folder
    img_root = root / "images" if (root / "images").is_dir() else root
    used: set[str] = set()
    for file in image_files:
        label = label_path(file)
        used.add(os.path.normcase(os.path.abspath(label)))
        try:
            width, height = image_size(file)
        except OSError as exc:
            report.skip(
                file, f"image could not be read ({exc}); its labels {label.name} were not converted", "unreadable_image"
            )
            continue
        image_id = build.image(_relative(file, img_root, root), width, height, file, where=file)
        if file in listed:
            build.splits[image_id] = listed[file]
        if label.is_file():
            _read_labels(label, image_id, width, height, names, pose, build, report)
    for orphan in walk(root, lambda p: p.suffix == ".txt" and "labels" in p.relative_to(root).parts):
        if os.path.normcase(os.path.abspath(orphan)) not in used:
            image = _unlisted_image(orphan) if listed else None
            why = (f"its image {image.name} is in none of {yaml_path.name}'s train, val and test" if image else
                   "label file without an image (the image gives the size)")  # fmt: skip
            report.skip(orphan, f"{why}; skipped", "unreadable_image")
    return build.result(img_root)


def _unlisted_image(label: Path) -> Path | None:
    """The image whose label file ``label`` is (by :func:`label_path`'s rule), where there is one."""
    sa, sb = f"{os.sep}labels{os.sep}", f"{os.sep}images{os.sep}"
    folder = Path(sb.join(f"{label.parent}{os.sep}".rsplit(sa, 1)))
    return next((f for f in sorted(folder.glob(f"{label.stem}.*")) if is_image(f)), None)


def label_path(image: Path) -> Path:
    """ultralytics' rule: the last ``/images/`` of the path becomes ``/labels/``, the suffix ``.txt``."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(sb.join(str(image).rsplit(sa, 1))).with_suffix(".txt")


def _relative(file: Path, *roots: Path) -> str:
    for root in roots:
        try:
            return file.relative_to(root).as_posix()
        except ValueError:
            continue
    return file.name


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise FormatError(f"{path}: not a readable YAML file ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise FormatError(f"{path}: expected a mapping with names (an ultralytics data.yaml)")
    return data


def _names(config: dict[str, Any], yaml_path: Path | None, root: Path) -> list[str]:
    if "names" in config:
        return names_from(config["names"], f"{yaml_path}")
    if isinstance(config.get("nc"), int) and config["nc"] > 0:
        return [f"class_{i}" for i in range(config["nc"])]
    if (root / "classes.txt").is_file():
        return read_names(root / "classes.txt")
    raise FormatError(  # the hint holds for every command that reads YOLO (only data convert has --names)
        f"{root}: no data.yaml with names and no classes.txt; write the class names in {root / 'classes.txt'}, one "
        "per line (data convert also takes them as --names FILE)"
    )


def _pose_spec(config: dict[str, Any], yaml_path: Path | None) -> dict[str, Any] | None:
    shape = config.get("kpt_shape")
    if shape is None:
        return None
    if not (isinstance(shape, list) and len(shape) == 2 and shape[0] > 0 and shape[1] in (2, 3)):
        raise FormatError(f"{yaml_path}: kpt_shape: expected [keypoints, 2 or 3], not {shape!r}")
    k = int(shape[0])
    names = config.get("kpt_names")
    classes = None  # which classes have keypoints: all, unless kpt_names lists them by class
    if isinstance(names, dict) and names:
        classes = {int(c) for c in names if str(c).isdigit()} or None
        names = next(iter(names.values()))
    names = [str(n) for n in names] if isinstance(names, list) and len(names) == k else [f"kp{i + 1}" for i in range(k)]
    skeleton = config.get("skeleton") or []
    skeleton = [list(p) for p in skeleton if isinstance(p, list) and len(p) == 2 and all(1 <= int(v) <= k for v in p)]
    flip = _flip_idx(config.get("flip_idx"), k, yaml_path)
    return {"k": k, "ndim": int(shape[1]), "names": names, "skeleton": skeleton, "classes": classes, "flip": flip}


def _flip_idx(value: Any, k: int, yaml_path: Path | None) -> list[int] | None:
    """ultralytics' ``flip_idx`` (for each keypoint, the one it becomes in a mirrored image), checked: a permutation
    of 0..k-1."""
    if value is not None and not is_permutation(value, k):
        raise FormatError(f"{yaml_path}: flip_idx: expected a permutation of 0..{k - 1} (kpt_shape), not {value!r}")
    return value


def is_permutation(value: Any, k: int) -> bool:
    """Whether ``value`` is a list of the integers 0..k-1, each once."""
    ints = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return ints and sorted(value) == list(range(k))


def _pose_category(cat: dict[str, Any], pose: dict[str, Any]) -> None:
    """Give a category the data's keypoints: names, skeleton and (when data.yaml has one) flip index."""
    cat["keypoints"], cat["skeleton"] = list(pose["names"]), [list(p) for p in pose["skeleton"]]
    if pose["flip"] is not None:
        cat["flip_index"] = list(pose["flip"])


def _base(config: dict[str, Any], root: Path) -> Path:
    """The folder ``train``/``val``/``test`` are relative to: ``path`` if it exists (as given or from the YAML's
    folder), else the YAML's folder (a ``path`` written for another machine)."""
    given = config.get("path")
    if isinstance(given, str) and given:
        candidate = root / given  # an absolute path stays as it is
        if candidate.is_dir():
            return candidate
    return root


def _image_files(config: dict[str, Any], base: Path, yaml_path: Path | None, report: Report) -> dict[Path, str]:
    """The images the YAML's ``train``/``val``/``test`` entries name (folders, lists of folders or .txt lists),
    each with the entry that named it first."""
    found: dict[Path, str] = {}
    missing: list[tuple[str, Path]] = []
    for key in ("train", "val", "test"):
        value = config.get(key)
        for entry in value if isinstance(value, list) else [value] if isinstance(value, str) else []:
            path = base / entry
            if path.is_dir():
                for image in walk(path, is_image):
                    found.setdefault(image, key)
            elif path.is_file() and path.suffix == ".txt":
                for line in path.read_text(encoding="utf-8").splitlines():
                    line = line.strip()
                    if line:
                        found.setdefault(path.parent / line[2:] if line.startswith("./") else base / line, key)
            else:
                missing.append((key, path))
    for key, path in missing:
        if found:
            report.skip(f"{yaml_path}: {key}", f"{path} not found; its images were not converted")
        else:
            report.note(f"{yaml_path}: {key}: {path} not found; every image under {yaml_path.parent} was converted")
    return found


def _read_labels(
    label: Path,
    image_id: int,
    width: int,
    height: int,
    names: list[str],
    pose: dict[str, Any] | None,
    build: Builder,
    report: Report,
) -> None:
    try:
        lines = label.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        report.skip(label, f"label file could not be read ({getattr(exc, 'strerror', None) or exc})")
        return
    for n, line in enumerate(lines, 1):
        where = f"{label}:{n}"
        tokens = line.split()
        if not tokens:
            continue
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            report.skip(where, f"not numbers: {line.strip()[:60]!r}")
            continue
        cls, coords = values[0], values[1:]
        if not cls.is_integer() or cls < 0:
            report.skip(where, f"class {tokens[0]!r} is not a class index")
            continue
        if cls >= len(names):
            report.skip(where, f"class index {int(cls)} is beyond the {len(names)} class names (0..{len(names) - 1})")
            continue
        expected = 4 + pose["k"] * pose["ndim"] if pose else None
        if expected and len(coords) != expected:
            report.skip(where, f"{len(values)} values; pose lines have 5 + {pose['k']} x {pose['ndim']}", "keypoints")
            continue
        if not expected and (len(coords) < 6 or len(coords) % 2) and len(coords) != 4:
            report.skip(
                where,
                f"{len(values)} values: neither a box (class cx cy w h) nor a polygon (class and 3 or more x y pairs)",
            )
            continue
        shape = coords[:4] if expected or len(coords) == 4 else coords
        if any(v < -_SLACK or v > 1 + _SLACK for v in shape):
            report.skip(
                where, "coordinates outside 0..1 (YOLO labels are normalised by the image size)", "box_outside_image"
            )
            continue
        category = int(cls) + 1
        if len(shape) == 4:
            cx, cy, w, h = shape
            bbox = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
            problem = box_problem(bbox)
            if problem:
                report.skip(where, problem, "degenerate_box")
                continue
            keypoints = _keypoints(coords[4:], pose, width, height) if pose else None
            if keypoints and not build.coco["categories"][category - 1].get("keypoints"):
                if any(keypoints[2::3]):  # a class kpt_names did not list, with keypoints all the same
                    _pose_category(build.coco["categories"][category - 1], pose)
                else:
                    keypoints = None
            build.annotation(image_id, category, bbox=bbox, keypoints=keypoints, where=where)
        else:
            polygon = [v * (width if i % 2 == 0 else height) for i, v in enumerate(shape)]
            problem = polygon_problem(polygon)
            if problem:
                report.skip(where, problem, "empty_mask")
                continue
            build.annotation(image_id, category, polygons=[polygon], where=where)


def _keypoints(values: list[float], pose: dict[str, Any], width: int, height: int) -> list[float]:
    out: list[float] = []
    for i in range(0, len(values), pose["ndim"]):
        x, y = values[i], values[i + 1]
        v = int(values[i + 2]) if pose["ndim"] == 3 else (0 if x == 0 and y == 0 else 2)
        out.extend([x * width, y * height, v] if v > 0 else [0, 0, 0])
    return out


def write(data: Collection, out: Path, at: Path, report: Report, images_mode: str) -> dict[str, str]:
    """``out/images/``, ``out/labels/`` (one .txt per image, 6 decimals) and ``out/data.yaml``; pose when the data
    has keypoints, else polygons when it has any, else boxes."""
    at.mkdir(parents=True)
    cats = sorted(data.coco["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(cats)}
    anns = data.coco["annotations"]
    kpt_cats = [c for c in cats if c.get("keypoints")]
    k = len(kpt_cats[0]["keypoints"]) if kpt_cats and any(a.get("keypoints") for a in anns) else 0
    kind = "pose" if k else "segment" if any(polygons_of(a) for a in anns) else "detect"
    for cat in kpt_cats:
        if len(cat["keypoints"]) != k:
            report.note(
                f"category {cat['name']!r} has {len(cat['keypoints'])} keypoints and YOLO one count for all "
                f"({k}): its keypoints were not written"
            )
        elif cat.get("flip_index") is not None and not is_permutation(cat["flip_index"], k):
            report.note(f"category {cat['name']!r}: flip_index is not a permutation of 0..{k - 1}; not written")
    if kind == "pose" and any(polygons_of(a) for a in anns):
        report.note("YOLO pose labels hold boxes and keypoints: polygons were not written")
    note_crowd_left_out(anns, report, "YOLO")
    by_image = data.by_image()
    targets: dict[int, Path] = {}
    for image in data.coco["images"]:
        rel = safe_relative(image["file_name"])
        label = label_path(at / "images" / rel)  # where ultralytics (and read) look, an images/ in rel or not
        if label.exists():
            report.skip(image["file_name"], f"another image already wrote {label.relative_to(at)}; skipped")
            continue
        targets[image["id"]] = at / "images" / rel
        lines = [
            _line(a, index[a["category_id"]], image, kind, k, report)
            for a in by_image[image["id"]]
            if not a.get("iscrowd") and a["category_id"] in index
        ]
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(f"{line}\n" for line in lines if line), encoding="utf-8")
    if images_mode != "none":
        place_images(data.files, targets, images_mode, report)
    else:
        (at / "images").mkdir(exist_ok=True)
        report.note(f"images were not placed: ultralytics finds them in {out / 'images'} (same paths as labels/)")
    rel_names = {safe_relative(im["file_name"]).as_posix(): data.splits.get(im["id"]) for im in data.coco["images"]}
    _write_yaml(at, cats, kpt_cats, k, rel_names, report)
    return {
        "annotations": str(out / "labels"),
        "images": str(out / "images"),
        "yaml": str(out / "data.yaml"),
        "kind": kind,
    }


#: how far past an image's edge a coordinate may lie before it is said to have been cut (a sum's rounding)
EDGE = 1e-6


def _line(ann: dict[str, Any], cls: int, image: dict[str, Any], kind: str, k: int, report: Report) -> str | None:
    """One object as a label line (``None`` when its box lies outside the image): box, polygon or pose."""
    width, height = image["width"], image["height"]
    x, y, w, h = ann["bbox"]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        report.skip(f"annotation {ann['id']} of {image['file_name']}", "box outside the image; not written")
        return None
    if min(x, y) < -EDGE or x + w > width + EDGE or y + h > height + EDGE:
        report.note("boxes reaching past their image were cut at its edges (YOLO holds 0..1)")
    box = [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height]
    if kind == "segment":
        polygons = polygons_of(ann)
        if not polygons:
            report.note("objects without a polygon (boxes, RLE masks) were written as their box's rectangle")
            polygons = [[x0, y0, x1, y0, x1, y1, x0, y1]]
        outline = joined(polygons) if len(polygons) > 1 else polygons[0]
        values = [v / (width if i % 2 == 0 else height) for i, v in enumerate(outline)]
        if any(not -EDGE <= v <= 1.0 + EDGE for v in values):
            report.note("polygon points past their image were moved to its edges (YOLO holds 0..1)")
            values = [min(max(v, 0.0), 1.0) for v in values]
    elif kind == "pose":
        points = ann.get("keypoints") or []
        if len(points) != 3 * k:
            points = [0] * (3 * k)
        values = list(box)
        for i in range(0, 3 * k, 3):
            px, py, v = points[i : i + 3]
            inside = v > 0 and 0 <= px <= width and 0 <= py <= height
            if v > 0 and not inside:
                report.note("keypoints outside their image were written as not labelled (YOLO holds 0..1)")
            values.extend([px / width, py / height, int(v)] if inside else [0.0, 0.0, 0])
    else:
        values = box
    return " ".join([str(cls), *(str(v) if isinstance(v, int) else f"{v:.6f}" for v in values)])


SPLIT_FOLDERS = ("train", "val", "valid", "validation", "test")


def _write_yaml(
    at: Path,
    cats: list[dict[str, Any]],
    kpt_cats: list[dict[str, Any]],
    k: int,
    rel_names: dict[str, str | None],
    report: Report,
) -> None:
    """``at/data.yaml``; its train/val/test are split folders where every image is in one (``images/train/``...),
    else the lists ``train.txt``, ``val.txt``, ``test.txt`` of the splits the source named (``rel_names``: each
    image's path under images/ and its split), else ``images`` for both train and val."""
    import yaml

    splits = {name.split("/")[0] for name in rel_names if "/" in name}
    # split folders only when every image is in one (an images/extra/ beside train/ would be left out)
    nested = all("/" in name for name in rel_names) and "train" in splits and splits <= set(SPLIT_FOLDERS)
    config: dict[str, Any] = {"train": "images/train" if nested else "images"}
    config["val"] = (
        next((f"images/{s}" for s in ("val", "valid", "validation") if s in splits), config["train"])
        if nested
        else "images"
    )
    if nested and "test" in splits:
        config["test"] = "images/test"
    lists: dict[str, list[str]] = {}
    for name, split in rel_names.items():
        if split and not nested:
            lists.setdefault(split, []).append(f"./images/{name}")
    if "train" in lists:  # the source's own splits, as ultralytics' lists of images (each line from the list's folder)
        for split in ("train", "val", "test"):
            if split in lists:
                (at / f"{split}.txt").write_text("".join(f"{line}\n" for line in lists[split]), encoding="utf-8")
        config = {split: f"{split}.txt" for split in ("train", "val", "test") if split in lists}
        config.setdefault("val", "train.txt")
        left = len(rel_names) - sum(len(listed) for listed in lists.values())
        if left:
            report.note(f"{plural(left, 'image')} in no split of the source's are in no list (train.txt, val.txt)")
    elif lists:
        report.note("the source names no train split: its splits were not written (data.yaml trains on every image)")
    config["names"] = {i: c["name"] for i, c in enumerate(cats)}
    if k:
        first = next(c for c in kpt_cats if len(c["keypoints"]) == k)
        config["kpt_shape"] = [k, 3]
        flip = first.get("flip_index")  # the data's own, even where no keypoint swaps (then flips are right too)
        if not is_permutation(flip, k):
            flip = flip_index_from_names(first["keypoints"])
            flip = flip if flip != list(range(k)) else None  # derived: only where some keypoints swap sides
        if flip:
            config["flip_idx"] = flip
        config["kpt_names"] = {
            i: list(c["keypoints"]) for i, c in enumerate(cats) if len(c.get("keypoints") or []) == k
        }
        skeleton = next((c.get("skeleton") for c in kpt_cats if c.get("skeleton")), None)
        if skeleton:
            config["skeleton"] = [list(p) for p in skeleton]
    header = "# written by cnnapps data convert; paths are relative to this file's folder\n"
    if k:
        header += "# skeleton: pairs of 1-based keypoint indices, as COCO's categories (not read by ultralytics)\n"
    (at / "data.yaml").write_text(header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True), "utf-8")
