"""The COCO dict every format is read into and written from, what a conversion reports, and shared geometry.

A reader returns a :class:`Collection`: a COCO dict (images with ``file_name``/``width``/``height``, categories with
``keypoints``/``skeleton`` for pose, annotations with ``bbox`` [x, y, w, h] in pixels, polygon ``segmentation`` and
``keypoints`` [x, y, v] * K) plus where each image file is on disk. Writers take the same.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnapps.errors import CnnappsError


class FormatError(CnnappsError):
    """A source or output that cannot be used at all (wrong path, unknown format, no class names)."""


#: the kinds of item a reader leaves out (``Report.skip(..., kind=...)``), as ``cnnapps data check`` groups them
SKIP_KINDS = ("bad_annotation", "unreadable_image", "degenerate_box", "box_outside_image", "empty_mask", "keypoints")


@dataclass
class Report:
    """What a conversion could not carry: ``skipped`` (one line per item left out, naming the file and the line
    or element) and ``notes`` (what the target format cannot hold, or where things went; each said once).
    ``items`` holds the same as ``skipped``, as (kind, where, why), the kind one of :data:`SKIP_KINDS`."""

    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    items: list[tuple[str, str, str]] = field(default_factory=list)

    def skip(self, where: object, why: str, kind: str = "bad_annotation") -> None:
        self.skipped.append(f"{where}: {why}")
        self.items.append((kind, str(where), why))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


@dataclass
class Collection:
    """A COCO dict and the image files it names: ``files[image_id]`` is the image on disk (it may be missing);
    ``images_root`` is the folder the ``file_name`` entries are relative to, when there is one. ``origins`` says
    where each image and annotation was read (``("image", id)`` / ``("annotation", id)`` -> file and line or
    element), for reports that name the line to fix. ``splits``: the split (train, val, test) the source put
    each image in, where it says (a YOLO data.yaml's entries)."""

    coco: dict[str, Any]
    files: dict[int, Path] = field(default_factory=dict)
    images_root: Path | None = None
    origins: dict[tuple[str, int], str] = field(default_factory=dict)
    splits: dict[int, str] = field(default_factory=dict)

    @property
    def categories(self) -> dict[int, dict[str, Any]]:
        """The categories by id, in id order: the class order every writer gives (whatever the file's order)."""
        return {c["id"]: c for c in sorted(self.coco["categories"], key=lambda c: c["id"])}

    def by_image(self) -> dict[int, list[dict[str, Any]]]:
        """The annotations of each image id, in file order (images without any have an empty list)."""
        found: dict[int, list[dict[str, Any]]] = {image["id"]: [] for image in self.coco["images"]}
        for ann in self.coco["annotations"]:
            found.setdefault(ann["image_id"], []).append(ann)
        return found


class Builder:
    """Builds a :class:`Collection` while a reader walks its files: categories by name, ids in order.

    With ``names`` the categories are those, in that order, and :meth:`category` answers ``None`` for any other
    label (the reader reports it); without, categories are made as labels appear."""

    def __init__(self, names: list[str] | None = None) -> None:
        self.fixed = False
        self.coco: dict[str, Any] = {"images": [], "annotations": [], "categories": []}
        self.files: dict[int, Path] = {}
        self.origins: dict[tuple[str, int], str] = {}
        self.splits: dict[int, str] = {}
        self._ids: dict[str, int] = {}
        for name in names or []:
            self.category(name)
        self.fixed = names is not None

    def category(
        self, name: str, keypoints: list[str] | None = None, skeleton: list[list[int]] | None = None
    ) -> int | None:
        """The id of category ``name`` (made on first use unless the names are fixed: then ``None`` if unknown)."""
        if name in self._ids:
            cat = self.coco["categories"][self._ids[name] - 1]
            if keypoints and not cat.get("keypoints"):
                cat["keypoints"], cat["skeleton"] = list(keypoints), [list(p) for p in skeleton or []]
            return self._ids[name]
        if self.fixed:
            return None
        cat: dict[str, Any] = {"id": len(self.coco["categories"]) + 1, "name": name, "supercategory": ""}
        if keypoints:
            cat["keypoints"], cat["skeleton"] = list(keypoints), [list(p) for p in skeleton or []]
        self.coco["categories"].append(cat)
        self._ids[name] = cat["id"]
        return cat["id"]

    def image(self, file_name: str, width: int, height: int, file: Path | None = None, where: object = None) -> int:
        image_id = len(self.coco["images"]) + 1
        self.coco["images"].append({"id": image_id, "file_name": file_name, "width": int(width), "height": int(height)})
        if file is not None:
            self.files[image_id] = file
        if where is not None:
            self.origins["image", image_id] = str(where)
        return image_id

    def annotation(
        self,
        image_id: int,
        category_id: int,
        bbox: list[float] | None = None,
        polygons: list[list[float]] | None = None,
        keypoints: list[float] | None = None,
        where: object = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Add an annotation; a missing box is the bounds of the polygons (or of the labelled keypoints). ``where``:
        the file and line it was read from."""
        if bbox is None:
            bbox = bounds(polygons) if polygons else bounds([_labelled_xy(keypoints or [])])
        ann: dict[str, Any] = {
            "id": len(self.coco["annotations"]) + 1,
            "image_id": image_id,
            "category_id": category_id,
            "bbox": [_tidy(v) for v in bbox],
        }
        ann["area"] = _tidy(sum(polygon_area(p) for p in polygons) if polygons else bbox[2] * bbox[3])
        ann["iscrowd"] = 0
        if polygons:
            ann["segmentation"] = [[_tidy(v) for v in p] for p in polygons]
        if keypoints is not None:
            ann["keypoints"] = [_tidy(v) for v in keypoints]
            ann["num_keypoints"] = sum(1 for v in keypoints[2::3] if v > 0)
        ann.update(extra)
        self.coco["annotations"].append(ann)
        if where is not None:
            self.origins["annotation", ann["id"]] = str(where)
        return ann

    def result(self, images_root: Path | None = None) -> Collection:
        return Collection(self.coco, self.files, images_root, self.origins, self.splits)


def _tidy(value: float) -> float | int:
    """A coordinate rounded to 1/1000 pixel (float noise of normalised formats goes), integers kept integers."""
    rounded = round(float(value), 3)
    return int(rounded) if rounded.is_integer() else rounded


def _labelled_xy(keypoints: list[float]) -> list[float]:
    return [c for i in range(0, len(keypoints), 3) if keypoints[i + 2] > 0 for c in keypoints[i : i + 2]]


def bounds(polygons: list[list[float]]) -> list[float]:
    """[x, y, w, h] around every point of flat [x0, y0, x1, y1, ...] lists (zeros when there is none)."""
    xs = [x for p in polygons for x in p[0::2]]
    ys = [y for p in polygons for y in p[1::2]]
    if not xs:
        return [0.0, 0.0, 0.0, 0.0]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def polygon_area(flat: list[float]) -> float:
    """Area of a flat [x0, y0, x1, y1, ...] polygon, as pycocotools fills it (even-odd): the outline is cut into the
    loops it closes by coming back to a point (the parts :func:`joined` bridges into one outline, a YOLO segment
    line), and each loop's area counts whichever way it winds, added, or taken away where it lies inside another
    loop (a hole reached by a bridge)."""
    points = list(zip(flat[0::2], flat[1::2], strict=False))
    loops, path, at = [], [], {}
    for point in points + points[:1]:  # back to the first point: the outline's last loop closes
        if point in at:  # a loop closes here
            start = at[point]
            loops.append(path[start:])
            for p in path[start + 1 :]:
                del at[p]
            del path[start + 1 :]
        else:
            at[point] = len(path)
            path.append(point)
    area = 0.0
    for i, loop in enumerate(loops):
        depth = sum(_inside(loop, other) for j, other in enumerate(loops) if j != i and len(other) > 2)
        area += _shoelace(loop) * (-1 if depth % 2 else 1)
    return area


def _inside(loop: list[tuple[float, float]], other: list[tuple[float, float]]) -> bool:
    """Whether ``loop`` lies inside ``other``, told by one of its points that is not a point of ``other``."""
    shared = set(other)
    x, y = next((p for p in loop if p not in shared), (math.nan, math.nan))
    inside = False
    for (x0, y0), (x1, y1) in zip(other, other[1:] + other[:1], strict=True):
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            inside = not inside
    return inside


def _shoelace(points: list[tuple[float, float]]) -> float:
    n = len(points)
    return abs(sum(points[i][0] * points[(i + 1) % n][1] - points[(i + 1) % n][0] * points[i][1] for i in range(n))) / 2


def note_crowd_left_out(annotations: list[dict[str, Any]], report: Report, target: str) -> None:
    """Say, for a target with no crowd marks, how many crowd regions it leaves out: COCO's, and the difficult
    objects Pascal VOC marks (read as crowd regions)."""
    crowd = [a for a in annotations if a.get("iscrowd")]
    difficult = sum(1 for a in crowd if a.get("difficult"))
    said = [f"{len(crowd) - difficult} crowd regions (iscrowd)"] if len(crowd) > difficult else []
    said += [f"{difficult} difficult objects (Pascal VOC's, read as crowd regions)"] if difficult else []
    if said:
        report.note(f"{' and '.join(said)} left out: {target} has no crowd marks")


def box_problem(bbox: list[float]) -> str | None:
    """Why a [x, y, w, h] box cannot be used (not four finite numbers, zero or negative size), or ``None``."""
    if len(bbox) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox):
        return f"box {bbox} is not four finite numbers"
    if bbox[2] <= 0 or bbox[3] <= 0:
        return f"degenerate box (width {_tidy(bbox[2])}, height {_tidy(bbox[3])})"
    return None


def polygon_problem(flat: list[float]) -> str | None:
    """Why a flat polygon cannot be used (fewer than 3 points, not numbers, no area), or ``None``."""
    if len(flat) % 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in flat):
        return "polygon coordinates are not x,y pairs of finite numbers"
    if len(flat) < 6:
        return f"polygon with {len(flat) // 2} point{'s' if len(flat) != 2 else ''} (at least 3 are needed)"
    if polygon_area(flat) == 0:
        return "degenerate polygon (zero area)"
    return None


def polygons_of(ann: dict[str, Any]) -> list[list[float]]:
    """An annotation's polygons (an RLE mask or a missing segmentation gives none)."""
    seg = ann.get("segmentation")
    return [p for p in seg if len(p) >= 6] if isinstance(seg, list) else []


def trace_masks(data: Collection, report: Report) -> None:
    """Give every RLE-mask annotation (``segmentation`` a dict with ``size`` and ``counts``, compressed or not) the
    polygons traced round its mask, for targets that hold polygons and no masks. Crowd regions are left as they are
    (the writers say what becomes of them); a mask that cannot be decoded, or traces to no polygon, is reported
    (its box is kept). numpy, OpenCV and pycocotools are imported only when such a mask is met."""
    files = {image["id"]: image for image in data.coco["images"]}
    annotations = []
    for ann in data.coco["annotations"]:
        seg = ann.get("segmentation")
        if isinstance(seg, dict) and not ann.get("iscrowd"):
            image = files.get(ann["image_id"], {})
            where = data.origins.get(("annotation", ann.get("id")))
            where = where or f"annotation {ann.get('id')} of {image.get('file_name', ann['image_id'])}"
            ann = {k: v for k, v in ann.items() if k != "segmentation"}
            try:
                polygons = rle_polygons(seg, image.get("height"), image.get("width"))
            except ValueError as exc:
                report.skip(f"{where} segmentation", f"{exc}; mask left out (its box kept)", "empty_mask")
                polygons = []
            else:
                if not polygons:
                    report.skip(
                        f"{where} segmentation",
                        "RLE mask traces to no polygon (empty, or only parts under 1 px); mask left out (its box kept)",
                        "empty_mask",
                    )
            if polygons:
                ann["segmentation"] = [[_tidy(v) for v in p] for p in polygons]
        annotations.append(ann)
    data.coco = {**data.coco, "annotations": annotations}


def rle_polygons(rle: dict[str, Any], height: int | None = None, width: int | None = None) -> list[list[float]]:
    """The outer outlines of a COCO RLE mask as flat polygons in pixels, along the pixels' outer edges: OpenCV's
    outer contours (CHAIN_APPROX_SIMPLE) on a half-pixel grid of the mask, so an outline's box is its mask's box
    and parts one pixel apart stay apart (ultralytics' JSON2YOLO traces the pixels' centres, a box 1 px smaller);
    parts of fewer than 3 points or under 1 px of area dropped. ``height``/``width``: the image's, which the
    mask's ``size`` must match. Raises ``ValueError`` for a mask that is not a valid RLE (checked before the
    decoder sees it)."""
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"RLE size {size!r} is not [height, width]")
    h, w = size
    if height is not None and width is not None and (h, w) != (height, width):
        raise ValueError(f"RLE size {h} x {w} (height x width) is not the image's {height} x {width}")
    runs = _rle_counts(counts)
    if runs is None or any(c < 0 for c in runs):
        raise ValueError("RLE counts are neither a list of run lengths nor a COCO-compressed string")
    if sum(runs) != h * w:
        raise ValueError(f"RLE counts cover {sum(runs)} pixels, its size {h} x {w} = {h * w}")
    import cv2
    import numpy as np
    from pycocotools import mask as mask_api

    mask = mask_api.decode(mask_api.frPyObjects({"size": [h, w], "counts": runs}, h, w)).astype(bool)
    # on a half-pixel grid, pixel (y, x) covers cells 2y..2y+2 x 2x..2x+2: its edges and corners are cells, and
    # parts one pixel apart stay apart (an empty cell between them)
    grid = np.zeros((2 * h + 1, 2 * w + 1), np.uint8)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            grid[dy : dy + 2 * h : 2, dx : dx + 2 * w : 2] |= mask
    contours, _ = cv2.findContours(grid, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        flat = [float(v) / 2 for v in contour.reshape(-1)]
        if len(flat) >= 6 and polygon_area(flat) >= 1:
            polygons.append(flat)
    return polygons


def _rle_counts(counts: object) -> list[int] | None:
    """The run lengths of an RLE: a list as it is, a string decoded as COCO's maskApi does (6-bit groups from
    ``0`` up, each run after the second stored as the difference from the one two before); ``None`` if invalid."""
    if isinstance(counts, list):
        return counts if all(isinstance(c, int) and not isinstance(c, bool) for c in counts) else None
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", "replace")
    if not isinstance(counts, str):
        return None
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                return None
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def joined(polygons: list[list[float]]) -> list[float]:
    """Several polygon parts as one outline: each part is reached from the first by a zero-width bridge between
    their closest points and walked round back to it (as ultralytics joins COCO's multi-part objects)."""
    first = [(polygons[0][i], polygons[0][i + 1]) for i in range(0, len(polygons[0]), 2)]
    detours: dict[int, list[tuple[float, float]]] = {}
    for part in polygons[1:]:
        pts = [(part[i], part[i + 1]) for i in range(0, len(part), 2)]
        _, i, j = min(
            ((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2, i, j) for i, a in enumerate(first) for j, b in enumerate(pts)
        )
        detours.setdefault(i, []).extend([*pts[j:], *pts[:j], pts[j], first[i]])
    out: list[float] = []
    for i, point in enumerate(first):
        out.extend(point)
        for p in detours.get(i, []):
            out.extend(p)
    return out


def merged_order(sequences: list[list[str]]) -> list[str]:
    """One order of keypoint names that keeps the order of each instance where they agree (first seen first)."""
    first: dict[str, int] = {}
    after: dict[str, set[str]] = {}
    for seq in sequences:
        for name in seq:
            first.setdefault(name, len(first))
            after.setdefault(name, set())
        for a, b in itertools.pairwise(seq):
            after[b].add(a)
    order: list[str] = []
    left = dict(after)
    while left:
        ready = [n for n, before in left.items() if not before - set(order)]
        pick = min(ready or left, key=first.__getitem__)  # a contradiction falls back to first seen
        order.append(pick)
        del left[pick]
    return order


#: name patterns of a left/right keypoint pair, as prefixes and as suffixes (matched whatever their case)
_SIDE_PREFIXES = (("left", "right"), ("right", "left"), ("l_", "r_"), ("r_", "l_"))
_SIDE_SUFFIXES = (("_left", "_right"), ("_right", "_left"), ("_l", "_r"), ("_r", "_l"))


def is_left(name: str) -> bool:
    """Whether a keypoint name says left (the spellings :func:`flip_index_from_names` reads)."""
    low = str(name).lower()
    return low.startswith(("left", "l_")) or low.endswith(("_left", "_l"))


def flip_index_from_names(names: list[str] | tuple[str, ...]) -> list[int]:
    """For each keypoint, the one it becomes under a horizontal flip, from the names: ``left_eye`` <-> ``right_eye``
    (also ``Left Eye``/``Right Eye``, ``l_knee``/``r_knee``, ``eye_left``/``eye_right``, ``hip_l``/``hip_r``:
    compared lower-case); a keypoint without a counterpart stays where it is."""
    position = {str(n).lower(): i for i, n in enumerate(names)}
    out = []
    for i, name in enumerate(names):
        low = str(name).lower()
        mates = [b + low[len(a) :] for a, b in _SIDE_PREFIXES if low.startswith(a)]
        mates += [low[: -len(a)] + b for a, b in _SIDE_SUFFIXES if low.endswith(a)]
        out.append(next((position[m] for m in mates if m in position and position[m] != i), i))
    return [j if out[j] == i else i for i, j in enumerate(out)]  # pairs only: both ends name each other
