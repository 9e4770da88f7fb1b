"""Tiled inference for images far larger than the network's input (remote sensing, slides).

The image is cut into overlapping tiles; each tile's detections move to the image's frame; pieces of
objects cut by tile edges are dropped or joined, and whole detections merged with class-wise NMS.
Masks stay as crops of their boxes until they are written as COCO RLE of the whole image, so memory
grows with the objects found, not with the image's area.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """Detections in one frame: boxes (N, 4) x0 y0 x1 y1, scores (N,), labels (N,), optional masks (one
    ``(crop, x0, y0)`` per box: a bool array and where its top-left pixel sits), keypoints (N, K, 3) and
    appearance embeddings (N, D) unit vectors (asked for by trackers)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: list[tuple[np.ndarray, int, int]] | None = None
    keypoints: np.ndarray | None = None
    embeddings: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.boxes)


#: how far (as a factor either way) a tile may be from the size a model was trained at before a warning says so
TILE_SCALE_TOLERANCE = 2.0


def resolve_tile(tile: int | str | None, overlap: int | None, trained: int) -> tuple[int | None, int]:
    """The tile size and overlap to run with: ``tile="auto"`` is ``trained``, the size the model was trained at
    (objects then reach it at the scale it learned them); ``overlap=None`` is 128 pixels, at most half the tile."""
    if isinstance(tile, str):
        word = tile.strip().lower()
        if word != "auto" and not word.isdigit():
            raise ValueError(f"takes a number of pixels or auto, not {tile!r}")
        tile = trained if word == "auto" else int(word)
    if overlap is None:
        overlap = min(128, tile // 2) if tile else 128
    return tile, overlap


def tile_advice(tile: int, trained: int, tolerance: float = TILE_SCALE_TOLERANCE) -> str | None:
    """One line saying that ``tile`` is far from the size the model was trained at (more than ``tolerance`` times
    larger or smaller), and what to use instead; None when it is close enough."""
    ratio = tile / trained
    if 1 / tolerance <= ratio <= tolerance:
        return None
    factor, shown = (ratio, "smaller") if ratio > 1 else (1 / ratio, "larger")
    return (f"--tile {tile} is far from the {trained} px this model was trained at: objects reach it {factor:.2g}x "
            f"{shown} than it learned them and many may be missed; try --tile {trained} (or --tile auto)")  # fmt: skip


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles (x0, y0, x1, y1) covering the image, ``overlap`` pixels shared by neighbours; the last row and
    column are moved back inside the image rather than cut short."""
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")

    def starts(size: int) -> list[int]:
        if size <= tile:
            return [0]
        step = tile - overlap
        out = list(range(0, size - tile, step))
        return [*out, size - tile]

    return [(x, y, min(x + tile, width), min(y + tile, height)) for y in starts(height) for x in starts(width)]


def mask_window(box: np.ndarray, height: int, width: int, margin: float = 0.1) -> tuple[int, int, int, int]:
    """The pixel window (x0, y0, x1, y1) kept of a box's mask: the box grown by ``margin`` of its size
    (R-CNN masks are pasted slightly beyond their box), clipped to the image."""
    mx, my = margin * (box[2] - box[0]) + 1, margin * (box[3] - box[1]) + 1
    x0 = min(int(np.floor(max(0.0, box[0] - mx))), width - 1)
    y0 = min(int(np.floor(max(0.0, box[1] - my))), height - 1)
    x1, y1 = int(np.ceil(min(width, box[2] + mx))), int(np.ceil(min(height, box[3] + my)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def detect_tiled(
    image: np.ndarray,
    detect: Callable[[np.ndarray], Detections],
    tile: int = 1024,
    overlap: int = 128,
    iou_threshold: float = 0.5,
) -> Detections:
    """Run ``detect`` on every tile of ``image`` (RGB, H x W x 3) and merge the results in image coordinates.

    Objects a tile edge cuts (boxes touching an edge inside the image) are fragments: one that is a piece of a
    stronger detection (:func:`_piece_of`) is dropped; fragments of one class that touch across tiles
    (an object larger than the overlap, which no tile holds whole) are joined, boxes, masks and keypoints, into
    one. Whole detections go through class-wise NMS, and one object that two tiles saw whole under two labels
    keeps the stronger."""
    parts: list[Detections] = []
    cut_flags: list[np.ndarray] = []
    tiles: list[np.ndarray] = []
    height, width = image.shape[:2]
    windows = np.array(tile_grid(height, width, tile, overlap), np.float32)
    for n, (x0, y0, x1, y1) in enumerate(windows.astype(int).tolist()):
        found = detect(np.ascontiguousarray(image[y0:y1, x0:x1]))
        if not len(found):
            continue
        cut_flags.append(_touches_inner_edge(found.boxes, (x0, y0, x1, y1), height, width))
        parts.append(_shifted(found, x0, y0))
        tiles.append(np.full(len(found), n))
    if not parts:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    found = _concat(parts)
    cut, tile_of = np.concatenate(cut_flags), np.concatenate(tiles)
    whole = _one_label_across_tiles(found, _nms(found, np.flatnonzero(~cut), iou_threshold), tile_of, iou_threshold)
    fragments = [i for i in np.flatnonzero(cut) if not _piece_of(found, i, windows[tile_of[i]], found, whole)]
    kept = _take(found, whole)
    if not fragments:
        return kept
    groups = _groups(found, fragments, tile_of)
    joined = _concat([_join(found, group) for group in groups])
    seen_in = [_bounds(windows[tile_of[group]]) for group in groups]  # the tiles each joined piece was seen in
    chosen: list[int] = []
    for i in np.argsort(-joined.scores):
        if not _piece_of(joined, i, seen_in[i], kept, np.arange(len(kept))) and not _piece_of(
            joined, i, seen_in[i], joined, np.array(chosen, np.int64)
        ):
            chosen.append(int(i))
    return _concat([kept, _take(joined, sorted(chosen))])


def _touches_inner_edge(boxes: np.ndarray, window: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
    """Boxes within 1 % of the tile's size (at least 3 px) of an edge that lies inside the image: a network
    run on a downscaled tile places a cut object's edge a few pixels off the tile's."""
    x0, y0, x1, y1 = window
    margin = max(3.0, 0.01 * max(x1 - x0, y1 - y0))
    cut = np.zeros(len(boxes), bool)
    if x0 > 0:
        cut |= boxes[:, 0] <= margin
    if x1 < width:
        cut |= boxes[:, 2] >= x1 - x0 - margin
    if y0 > 0:
        cut |= boxes[:, 1] <= margin
    if y1 < height:
        cut |= boxes[:, 3] >= y1 - y0 - margin
    return cut


def _shifted(found: Detections, x0: int, y0: int) -> Detections:
    keypoints = None
    if found.keypoints is not None:
        keypoints = found.keypoints.copy()
        keypoints[..., 0] += x0
        keypoints[..., 1] += y0
    masks = [(crop, x + x0, y + y0) for crop, x, y in found.masks] if found.masks is not None else None
    return Detections(found.boxes + np.array([x0, y0, x0, y0], np.float32), found.scores, found.labels, masks,
                      keypoints)  # fmt: skip


def _take(found: Detections, index: Sequence[int] | np.ndarray) -> Detections:
    index = np.asarray(index, np.int64)
    return Detections(
        found.boxes[index],
        found.scores[index],
        found.labels[index],
        [found.masks[i] for i in index] if found.masks is not None else None,
        found.keypoints[index] if found.keypoints is not None else None,
    )


def _concat(parts: list[Detections]) -> Detections:
    return Detections(
        np.concatenate([p.boxes for p in parts]).astype(np.float32),
        np.concatenate([p.scores for p in parts]),
        np.concatenate([p.labels for p in parts]),
        [m for p in parts for m in p.masks] if parts[0].masks is not None else None,
        np.concatenate([p.keypoints for p in parts]) if parts[0].keypoints is not None else None,
    )


def _nms(found: Detections, index: np.ndarray, iou_threshold: float) -> np.ndarray:
    import torch
    from torchvision.ops import batched_nms

    if not len(index):
        return index
    keep = batched_nms(
        torch.from_numpy(found.boxes[index]).float(), torch.from_numpy(found.scores[index]).float(),
        torch.from_numpy(found.labels[index]).long(), iou_threshold,
    ).numpy()  # fmt: skip
    return index[keep]


def _one_label_across_tiles(found: Detections, whole: np.ndarray, tile_of: np.ndarray, iou: float) -> np.ndarray:
    """``whole`` without the detections that another tile saw as the same object under another label only (boxes
    overlapping by ``iou`` or more; the stronger one is kept): class-wise NMS keeps both, so one object counted
    twice. A label that its own tile also gave the object is the detector's own answer and stays, as without tiles."""
    kept: list[int] = []
    for i in sorted(whole, key=lambda j: -found.scores[j]):
        rivals = [j for j in kept if tile_of[j] != tile_of[i] and found.labels[j] != found.labels[i]]
        if not any(_iou(found.boxes[i], found.boxes[j]) >= iou and not _also_said(found, i, j, tile_of, iou)
                   for j in rivals):  # fmt: skip
            kept.append(int(i))
    return np.array(sorted(kept), np.int64)


def _also_said(found: Detections, i: int, j: int, tile_of: np.ndarray, iou: float) -> bool:
    """Whether detection ``i``'s tile also found its object under ``j``'s label."""
    same = np.flatnonzero((tile_of == tile_of[i]) & (found.labels == found.labels[j]))
    return any(_iou(found.boxes[i], found.boxes[k]) >= iou for k in same)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = float(_intersection(a, b[None])[0])
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(float(union), 1e-6)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection areas of box ``a`` with each of the boxes ``b`` (N, 4)."""
    w = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    return w * h


def _piece_of(pieces: Detections, i: int, window: np.ndarray, others: Detections, index: np.ndarray,
              share: float = 0.6, iou: float = 0.5) -> bool:  # fmt: skip
    """Whether cut piece ``i`` of ``pieces``, seen in ``window`` (x0, y0, x1, y1: its tile, or the tiles a joined
    piece spans), is part of one of the detections ``others[index]``: of its class, when most of its box lies inside
    one; of another class (a cut object often gets a second, weaker label: a cut square looks like a triangle), when
    that detection is stronger and the piece's box is its part in the window (IoU ``iou`` with its box clipped to the
    window). An object of another class inside the other's box (a person before a bus) is much smaller than that
    part, and a strong object is never dropped for a weaker one of another class: both stay."""
    if not len(index):
        return False
    box, boxes = pieces.boxes[i], others.boxes[index]
    area = max(1e-6, float((box[2] - box[0]) * (box[3] - box[1])))
    same = others.labels[index] == pieces.labels[i]
    if (same & (_intersection(box, boxes) / area >= share)).any():
        return True
    rivals = ~same & (others.scores[index] > pieces.scores[i])
    parts = np.concatenate([np.maximum(boxes[:, :2], window[:2]), np.minimum(boxes[:, 2:], window[2:])], axis=1)
    return any(_iou(box, part) >= iou for part in parts[rivals] if (part[2:] > part[:2]).all())


def _bounds(windows: np.ndarray) -> np.ndarray:
    """The box around windows (N, 4)."""
    return np.array([*windows[:, :2].min(0), *windows[:, 2:].max(0)], np.float32)


def _groups(found: Detections, fragments: list[int], tile_of: np.ndarray, gap: float = 2.0) -> list[list[int]]:
    """Fragments of one class from different tiles whose boxes overlap or touch, joined transitively."""
    parent = {i: i for i in fragments}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for n, i in enumerate(fragments):
        grown = found.boxes[i] + np.array([-gap, -gap, gap, gap])
        for j in fragments[n + 1 :]:
            same = found.labels[i] == found.labels[j] and tile_of[i] != tile_of[j]
            if same and _intersection(grown, found.boxes[j : j + 1])[0] > 0:
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in fragments:
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _join(found: Detections, group: list[int]) -> Detections:
    """One detection from fragments: the union of boxes and masks, the best score, and each keypoint from the
    fragment that scored it highest (a tile that does not see a keypoint still places it, with a low score; ties
    go to the stronger fragment)."""
    group = sorted(group, key=lambda i: -found.scores[i])
    best = group[0]
    boxes = found.boxes[group]
    box = np.array([[*boxes[:, :2].min(0), *boxes[:, 2:].max(0)]], np.float32)
    masks = None
    if found.masks is not None:
        x0 = min(found.masks[i][1] for i in group)
        y0 = min(found.masks[i][2] for i in group)
        x1 = max(found.masks[i][1] + found.masks[i][0].shape[1] for i in group)
        y1 = max(found.masks[i][2] + found.masks[i][0].shape[0] for i in group)
        canvas = np.zeros((y1 - y0, x1 - x0), bool)
        for i in group:
            crop, x, y = found.masks[i]
            canvas[y - y0 : y - y0 + crop.shape[0], x - x0 : x - x0 + crop.shape[1]] |= crop
        masks = [(canvas, x0, y0)]
    keypoints = None
    if found.keypoints is not None:
        points = found.keypoints[group]  # (fragments, K, 3): x, y, score
        keypoints = points[points[..., 2].argmax(0), np.arange(points.shape[1])][None]
    return Detections(box, found.scores[[best]], found.labels[[best]], masks, keypoints)


def crop_to_rle(crop: np.ndarray, x0: int, y0: int, height: int, width: int) -> dict:
    """COCO compressed RLE of an (height, width) image whose only foreground is ``crop`` with its top-left
    pixel at (x0, y0); the full-size mask is never built."""
    from pycocotools import mask as mask_utils

    h, w = crop.shape
    padded = np.zeros((h + 2, w), np.int8)
    padded[1:-1] = crop.astype(np.int8)
    flat = padded.reshape(-1, order="F")
    change = np.flatnonzero(np.diff(flat))  # index i: value changes between i and i + 1
    starts, ends = change[0::2] + 1, change[1::2] + 1  # [start, end) in padded column-major order
    counts: list[int] = []
    position = 0
    for s, e in zip(starts, ends, strict=True):
        col, row = divmod(int(s), h + 2)
        start = (x0 + col) * height + y0 + row - 1
        length = int(e - s)
        if counts and start == position:  # a run continuing from the previous column
            counts[-1] += length
        else:
            counts.extend([start - position, length])
        position = start + length
    if position < height * width:
        counts.append(height * width - position)
    rle = mask_utils.frPyObjects({"counts": counts, "size": [height, width]}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}
