"""Tiled inference for images far larger than the network's input (remote sensing, slides).

The image is cut into overlapping tiles; each tile's detections move to the image's frame and the
tiles are merged with class-wise NMS. Masks stay as crops of their boxes until they are written as
COCO RLE of the whole image, so memory grows with the objects found, not with the image's area.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """Detections in one frame: boxes (N, 4) x0 y0 x1 y1, scores (N,), labels (N,), optional masks (one
    ``(crop, x0, y0)`` per box: a bool array and where its top-left pixel sits) and keypoints (N, K, 3)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: list[tuple[np.ndarray, int, int]] | None = None
    keypoints: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.boxes)


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
    """Run ``detect`` on every tile of ``image`` (RGB, H x W x 3) and merge the results in image coordinates."""
    import torch
    from torchvision.ops import batched_nms

    boxes, scores, labels, keypoints = [], [], [], []
    has_masks = has_keypoints = False
    crops: list[tuple[np.ndarray, int, int]] = []
    height, width = image.shape[:2]
    for x0, y0, x1, y1 in tile_grid(height, width, tile, overlap):
        found = _drop_cut_objects(detect(np.ascontiguousarray(image[y0:y1, x0:x1])), (x0, y0, x1, y1), height, width,
                                  overlap)  # fmt: skip
        if not len(found):
            continue
        boxes.append(found.boxes + np.array([x0, y0, x0, y0], np.float32))
        scores.append(found.scores)
        labels.append(found.labels)
        if found.masks is not None:
            has_masks = True
            crops.extend((crop, x + x0, y + y0) for crop, x, y in found.masks)
        if found.keypoints is not None:
            has_keypoints = True
            moved = found.keypoints.copy()
            moved[..., 0] += x0
            moved[..., 1] += y0
            keypoints.append(moved)
    if not boxes:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                          None)  # fmt: skip
    all_boxes, all_scores, all_labels = np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels)
    keep = batched_nms(
        torch.from_numpy(all_boxes).float(), torch.from_numpy(all_scores).float(),
        torch.from_numpy(all_labels).long(), iou_threshold,
    ).numpy()  # fmt: skip
    return Detections(
        all_boxes[keep],
        all_scores[keep],
        all_labels[keep],
        [crops[i] for i in keep] if has_masks else None,
        np.concatenate(keypoints)[keep] if has_keypoints else None,
    )


def _drop_cut_objects(
    found: Detections, window: tuple[int, int, int, int], height: int, width: int, overlap: int, margin: float = 2.0
) -> Detections:
    """Drop detections cut by a tile edge inside the image when they are smaller than the overlap: such an
    object lies whole in the neighbouring tile, where it is found entire."""
    if not len(found):
        return found
    x0, y0, x1, y1 = window
    b = found.boxes
    small_x, small_y = (b[:, 2] - b[:, 0]) < overlap, (b[:, 3] - b[:, 1]) < overlap
    cut = np.zeros(len(b), bool)
    if x0 > 0:
        cut |= small_x & (b[:, 0] <= margin)
    if x1 < width:
        cut |= small_x & (b[:, 2] >= x1 - x0 - margin)
    if y0 > 0:
        cut |= small_y & (b[:, 1] <= margin)
    if y1 < height:
        cut |= small_y & (b[:, 3] >= y1 - y0 - margin)
    keep = np.flatnonzero(~cut)
    return Detections(
        b[keep],
        found.scores[keep],
        found.labels[keep],
        [found.masks[i] for i in keep] if found.masks is not None else None,
        found.keypoints[keep] if found.keypoints is not None else None,
    )


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
