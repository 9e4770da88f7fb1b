"""Training samples as training sees them: each drawn with its labels before and after the task's own training
augmentation (as mmdetection's ``browse_dataset``), so a wrong box, a flipped keypoint or a mask that drifts from its
pixels shows before any training runs.

The augmentation is the one training builds, from the same functions: :func:`~cnnapps.datasets.transforms.
detection_transform` for detect/segment/pose (with the keypoint flip index training uses),
:func:`~cnnapps.datasets.transforms.train_transform` for classify/retrieve (as on a CPU: colour jitter in the
workers; on a GPU the same jitter runs on the batch), :func:`~cnnapps.datasets.semantic.semantic_transform` for
semantic. Captions are not augmented (a flip would make "left of" false): their "after" is the model's resize.

Each sample is a pair of ``cell`` x ``cell`` pictures (the image fitted inside, on grey) under a title line, framed
by :data:`PAD` pixels, with its class labels or caption under it (wrapped, the same size on every image); pairs are
``columns`` to a row. Drawing is OpenCV's, as the results' ``draw()``.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnapps.datasets.formats.hub import is_left
from cnnapps.datasets.semantic import MaskError
from cnnapps.errors import CnnappsError, ImageError, ImageNotFoundError
from cnnapps.results import PALETTE, text_band
from cnnapps.terminal import plural

log = logging.getLogger("cnnapps")

#: title line above each picture, and the frame around each picture (pixels)
TITLE, PAD = 22, 3
#: font scale and line height of a label under a picture (a class label, a caption), and the blank rows cut from the
#: top of its band: a line of it is 22 pixels high, each further line 20
LABEL_SCALE, LABEL_LINE, LABEL_CUT = 0.5, 20, 8
#: why rows with no label are left out of single-label data (show has no --multilabel; training reads them so too)
NO_LABEL_HINT = "every row has one label or none: single-label, as training reads it without --multilabel"


@dataclass
class Samples:
    """What :func:`draw_samples` drew: the grid (RGB uint8), each sample's (before, after) pictures, and which
    items of the data they are; ``skipped``: the samples whose image or mask could not be read (one line each),
    drawn over by others."""

    grid: np.ndarray
    pairs: list[tuple[np.ndarray, np.ndarray]]
    task: str
    augment: str
    sources: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # samples that could not be read, one line each (others drawn)


def augment_presets(task: str) -> dict[str, str]:
    """The training augmentation presets of ``task`` (name -> what it does)."""
    from cnnapps.datasets.check import TASK_DATA

    data = TASK_DATA.get(task)
    if data == "annotations":
        from cnnapps.datasets.transforms import DETECTION_PRESETS

        return DETECTION_PRESETS
    if data == "semantic":
        from cnnapps.datasets.semantic import SEMANTIC_PRESETS

        return SEMANTIC_PRESETS
    if data == "captions":
        return {"none": "no augmentation (captions name positions: flips and crops would make them false)"}
    from cnnapps.datasets.transforms import PRESETS

    return PRESETS


def draw_samples(
    path: str | os.PathLike,
    *,
    task: str | None = None,
    augment: str | None = None,
    n: int = 16,
    seed: int = 0,
    images: str | os.PathLike | None = None,
    input_size: int = 224,
    cell: int = 256,
    columns: int = 4,
    from_: str | None = None,
) -> Samples:
    """``n`` samples of the training data at ``path`` (picked at random with ``seed``) before and after the training
    augmentation ``augment`` of ``task`` (``default``, or ``none`` for captions; the task is told by the data when
    not given). ``input_size``: the side the model reads
    (classify, retrieve, semantic, caption: training ends there). ``from_``: the annotation format of ``path`` (coco,
    yolo, voc, labelme, cvat), when the path does not tell it. Returns the drawn grid and pictures."""
    from cnnapps.datasets.check import TASK_DATA, DataCheckError, guess_task

    path = Path(path)
    if not path.exists():
        raise DataCheckError(f"{path}: no such file or folder")
    if task is not None and task not in TASK_DATA:
        from cnnapps.errors import did_you_mean

        raise DataCheckError(f"--task {task!r}: not one of {', '.join(TASK_DATA)}{did_you_mean(task, TASK_DATA)}")
    if n < 1 or columns < 1 or cell < 32:
        raise CnnappsError(f"need n >= 1, columns >= 1 and cell >= 32 (not {n}, {columns}, {cell})")
    guessed = task or ("detect" if from_ else guess_task(path))  # as data check: --from names annotations
    kind = TASK_DATA[guessed]
    if from_ and kind != "annotations":
        raise DataCheckError(f"--from {from_}: annotation formats are read for detect, segment and pose, not {guessed}")
    presets = augment_presets(guessed)
    augment = augment or ("default" if "default" in presets else next(iter(presets)))
    if augment not in presets:
        raise CnnappsError(
            f"--augment {augment}: not a preset of this task's training; choose from {', '.join(presets)}"
        )
    reader = {"annotations": functools.partial(_annotations, from_=from_), "labelled": _labelled,
              "semantic": _semantic, "captions": _captions}[kind]  # fmt: skip
    task, count, pair = reader(path, task, augment, Path(images) if images else None, input_size, seed)
    rng = random.Random(seed)
    picked = sorted(rng.sample(range(count), min(n, count)))
    spare = sorted(set(range(count)) - set(picked))
    rng.shuffle(spare)  # drawn in place of samples that cannot be read
    pairs, sources, skipped, missing = [], [], [], 0
    while picked:
        index = picked.pop(0)
        try:
            source, before, after, label = pair(index)
        except (ImageError, MaskError) as exc:
            log.warning("skipping %s", exc)
            skipped.append(str(exc))
            missing += isinstance(exc, ImageNotFoundError)
            if spare:
                picked.append(spare.pop(0))
            continue
        pairs.append((_tile(before, Path(source).name, cell, label), _tile(after, f"after: {augment}", cell, label)))
        sources.append(source)
    if not pairs:
        why = f"{plural(len(skipped), 'sample')} skipped, the first: {skipped[0]}" if skipped else "no samples"
        if skipped and missing == len(skipped) and kind != "labelled":  # no image where the data says: elsewhere?
            where = f"none of them is in {images}" if images else "if they are in another folder, give --images DIR"
            why += f"; {where}"
        raise DataCheckError(f"{path}: nothing to draw ({why})")
    return Samples(_grid(pairs, columns), pairs, task, augment, sources, skipped)


# -- one reader per kind of data: (task, count, pair(index) -> (source, before, after, label or None)) ---------------


def _seeded(transform: Any, seed: int) -> Any:
    """The transform with its albumentations pipeline seeded (the same pictures for the same seed)."""
    from cnnapps.datasets.transforms import seed_augmentation

    seed_augmentation(transform, seed)
    if getattr(transform, "policy", None) is not None:  # RandAugment / TrivialAugment draw from torch's RNG
        import torch

        torch.manual_seed(seed)
    return transform


def _annotations(
    path: Path, task: str | None, augment: str, images: Path | None, size: int, seed: int, from_: str | None = None
) -> Any:
    from cnnapps.apps.detect.zoo import data_flip_index
    from cnnapps.datasets.check import annotation_task
    from cnnapps.datasets.coco import CocoDataset
    from cnnapps.datasets.io import read_image
    from cnnapps.datasets.transforms import detection_transform

    data = CocoDataset(path, images, task or "segment", fmt=from_)
    if task is None:
        task = annotation_task(data.coco.dataset)
        if task == "pose":
            data = CocoDataset(path, images, task, fmt=from_)
    data.task = task
    flips = data_flip_index(data) if task == "pose" else None
    with warnings.catch_warnings():  # "none": box and keypoint processors with no step to run are fine
        warnings.simplefilter("ignore", UserWarning)
        transform = _seeded(detection_transform(augment, flips), seed)

    # the training split where the data names its splits (VOC lists, YOLO data.yaml, CVAT subsets), as training
    indices = (data.split("train") if data.splits else []) or list(range(len(data)))

    def pair(index: int) -> tuple[str, np.ndarray, np.ndarray, None]:
        index = indices[index]
        source = data.image_path(index)
        rgb, target = read_image(source), data.target(index)
        info = data.coco.imgs[data.image_ids[index]]
        (height, width), said = rgb.shape[:2], (int(info["height"]), int(info["width"]))
        if (height, width) != said:  # the annotations are in another frame: drawn and augmented wrong
            raise ImageError(str(source), f"is {width}x{height} but its annotations say {said[1]}x{said[0]}")
        image, moved = transform(rgb, target)
        return str(source), _objects(rgb, target, data), _objects(image, moved, data), None

    return task, len(indices), pair


def _labelled(path: Path, task: str | None, augment: str, images: Path | None, size: int, seed: int) -> Any:
    from cnnapps.backbones.preprocess import Preprocess
    from cnnapps.datasets.folders import read_labeled, split_folders
    from cnnapps.datasets.io import read_image
    from cnnapps.datasets.transforms import train_transform

    path = (split_folders(path) or (path,))[0]  # the training half of a train/ + val/ layout
    # single- or multi-label as the data says (as training reads it: a folder's labels.csv, ``a|b`` labels)
    data = read_labeled(path, multilabel=None, no_label_hint=NO_LABEL_HINT)
    spec = Preprocess(input_size=(3, size, size), resize=round(size / 0.875))
    transform = _seeded(train_transform(augment, spec), seed)

    def pair(index: int) -> tuple[str, np.ndarray, np.ndarray, str]:
        source = data.paths[index]
        rgb = read_image(source)
        if data.multilabel:
            label = ", ".join(data.class_names[i] for i in data.labels[index]) or "no label"
        else:
            label = data.class_names[data.labels[index]]
        return source, rgb, _unnormalised(transform(rgb), spec), label

    return task or "classify", len(data), pair


def _semantic(path: Path, task: str | None, augment: str, images: Path | None, size: int, seed: int) -> Any:
    from cnnapps.backbones.preprocess import Preprocess
    from cnnapps.datasets.semantic import LAYOUT_HINT, read_semantic_data, semantic_transform, voc_colormap

    data = read_semantic_data(path, images=images, split="train", masks_hint=LAYOUT_HINT)  # show has no --masks
    fit = Preprocess(input_size=(3, size, size), resize=size, resize_mode="squash")
    transform = _seeded(semantic_transform(augment, fit, data.ignore_index), seed)
    colours = np.array(data.classes.colours or voc_colormap(len(data.class_names)), np.uint8)

    def pair(index: int) -> tuple[str, np.ndarray, np.ndarray, None]:
        rgb, mask = data.load(index)
        image, moved = transform(rgb, mask)
        before = _painted(rgb, mask, colours, data.ignore_index)
        return (
            str(data.items[index].image),
            before,
            _painted(_unnormalised(image, fit), moved, colours, data.ignore_index),
            None,
        )

    return "semantic", len(data), pair


def _captions(path: Path, task: str | None, augment: str, images: Path | None, size: int, seed: int) -> Any:
    from cnnapps.backbones.preprocess import Preprocess
    from cnnapps.datasets.captions import read_captions
    from cnnapps.datasets.check import json_image_folder
    from cnnapps.datasets.io import read_image

    folder = images or json_image_folder(path) or path.with_suffix("")
    items = read_captions(path, folder, split="train")
    spec = Preprocess(input_size=(3, size, size), resize=round(size / 0.875))

    def pair(index: int) -> tuple[str, np.ndarray, np.ndarray, str]:
        item = items[index]
        rgb = read_image(item.path)
        return str(item.path), rgb, _unnormalised(spec(rgb), spec), item.captions[0]

    return "caption", len(items), pair


# -- drawing ---------------------------------------------------------------------------------------------------------


def _unnormalised(chw: np.ndarray, spec: Any) -> np.ndarray:
    """A normalised float (C, H, W) input back as RGB uint8 (H, W, 3), to be looked at."""
    mean = np.array(spec.mean, np.float32)[:, None, None]
    std = np.array(spec.std, np.float32)[:, None, None]
    rgb = np.clip((np.asarray(chw, np.float32) * std + mean) * 255.0, 0, 255).round().astype(np.uint8)
    rgb = rgb.transpose(1, 2, 0)
    return np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else np.ascontiguousarray(rgb)


def _objects(rgb: np.ndarray, target: Any, data: Any, alpha: float = 0.45) -> np.ndarray:
    """Masks (translucent), boxes with class names, keypoints with the skeleton, in each class's colour."""
    import cv2

    out = np.ascontiguousarray(rgb).copy()
    thick = max(1, round(max(out.shape[:2]) / 300))
    colours = [PALETTE[int(label) % len(PALETTE)] for label in target.labels]
    if target.masks is not None:
        for mask, colour in zip(target.masks, colours, strict=False):
            on = mask.astype(bool)
            out[on] = (out[on] * (1 - alpha) + np.array(colour) * alpha).astype(np.uint8)
    for i, (box, label) in enumerate(zip(target.boxes, target.labels, strict=True)):
        colour = colours[i]
        x0, y0, x1, y1 = (round(float(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thick, cv2.LINE_AA)
        text = data.class_names[int(label)]
        scale = 0.4 * thick
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(th + 4, y0)
        cv2.rectangle(out, (x0, top - th - 4), (x0 + tw + 4, top), colour, -1)
        cv2.putText(out, text, (x0 + 2, top - 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
        if target.keypoints is not None:
            points = target.keypoints[i]
            seen = [(round(float(x)), round(float(y))) if v > 0 else None for x, y, v in points]
            for a, b in data.skeleton:
                if 0 < a <= len(seen) and 0 < b <= len(seen) and seen[a - 1] and seen[b - 1]:
                    cv2.line(out, seen[a - 1], seen[b - 1], colour, thick, cv2.LINE_AA)
            for j, p in enumerate(seen):
                if p is not None:  # the person's left side in white, right in the class colour: a bad flip shows
                    name = data.keypoint_names[j] if j < len(data.keypoint_names) else ""
                    fill = (255, 255, 255) if is_left(name) else colour
                    cv2.circle(out, p, thick + 2, fill, -1, cv2.LINE_AA)
                    cv2.circle(out, p, thick + 2, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def _painted(rgb: np.ndarray, mask: np.ndarray, colours: np.ndarray, ignore: int, alpha: float = 0.5) -> np.ndarray:
    """Each pixel's class colour over the image; ignored pixels hatched dark."""
    out = rgb.astype(np.float32)
    known = (mask != ignore) & (mask < len(colours))
    out[known] = out[known] * (1 - alpha) + colours[mask[known]] * alpha
    ys, xs = np.nonzero(mask == ignore)
    stripes = (ys + xs) % 8 < 4
    out[ys[stripes], xs[stripes]] *= 0.3
    return out.astype(np.uint8)


def _tile(rgb: np.ndarray, title: str, cell: int, label: str | None = None) -> np.ndarray:
    """``rgb`` fitted into a ``cell`` square (grey around it) under a title line, framed by :data:`PAD` pixels;
    ``label`` (a class label, a caption) under it, wrapped to the cell's width: the same size on every image."""
    import cv2

    h, w = rgb.shape[:2]
    scale = cell / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    fitted = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)
    tile = np.full((TITLE + cell + 2 * PAD, cell + 2 * PAD, 3), 255, np.uint8)
    box = tile[TITLE + PAD : TITLE + PAD + cell, PAD : PAD + cell]
    box[:] = 128
    top, left = (cell - size[1]) // 2, (cell - size[0]) // 2
    box[top : top + size[1], left : left + size[0]] = fitted
    shown = title if len(title) <= cell // 7 else title[: cell // 7 - 1] + "~"
    cv2.putText(tile, shown, (PAD + 2, TITLE - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    if label is not None:
        band = text_band(label, cell + 2 * PAD, scale=LABEL_SCALE, line=LABEL_LINE)[LABEL_CUT:]  # close to the picture
        tile = np.vstack([tile, band])
    return tile


def _grid(pairs: list[tuple[np.ndarray, np.ndarray]], columns: int) -> np.ndarray:
    """Pairs side by side, ``columns`` pairs to a row (a short last row filled with white; in a row, pairs with
    shorter labels under them filled with white below)."""
    joined = [np.hstack(pair) for pair in pairs]
    columns = min(columns, len(joined))
    rows = []
    for i in range(0, len(joined), columns):
        row = joined[i : i + columns]
        height = max(p.shape[0] for p in row)
        row = [np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=255) for p in row]
        row += [np.full_like(row[0], 255)] * (columns - len(row))
        rows.append(np.hstack(row))
    return np.vstack(rows)
