"""Generated scenes with exact labels, written as COCO JSON, for tests and demos.

``shapes``: coloured circles, squares and triangles on textured backgrounds, with instance masks.
``people``: stick figures with COCO's 17 person keypoints (front-facing: the person's left is on the
image's right, as in COCO), their boxes and skeleton.
``captions``: one or two shapes with captions that follow from the scene ("a red circle above a blue
square", and the same scene said the other way round), written as COCO captions JSON.

    python -m cnnapps.datasets.synthetic shapes data/shapes --train 400 --val 100   # or people, captions
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnapps.errors import CnnappsError
from cnnapps.files import OutputExistsError, atomic_write
from cnnapps.terminal import EXIT_ERROR, article

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 40),
    "purple": (140, 60, 180),
    "orange": (240, 130, 30),
}


@dataclass
class Instance:
    category: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    mask: np.ndarray | None = None  # (H, W) uint8
    keypoints: np.ndarray | None = None  # (K, 3): x, y, visibility (2 visible, 0 not labelled)
    attributes: dict[str, Any] = field(default_factory=dict)  # colour, size, position...


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A soft two-colour gradient with noise, so that shapes are not found by colour alone."""
    a, b = rng.integers(90, 250, 3), rng.integers(90, 250, 3)
    t = np.linspace(0, 1, size, dtype=np.float32)
    grad = t[:, None] if rng.random() < 0.5 else t[None, :]
    img = a[None, None, :] * (1 - grad[..., None]) + b[None, None, :] * grad[..., None]
    img = img + rng.normal(0, 8, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_mask(kind: str, centre: tuple[float, float], radius: float, angle: float, size: int) -> np.ndarray:
    import cv2

    mask = np.zeros((size, size), np.uint8)
    cx, cy = centre
    if kind == "circle":
        cv2.circle(mask, (round(cx), round(cy)), round(radius), 1, -1, cv2.LINE_8)
        return mask
    corners = 4 if kind == "square" else 3
    r = radius * (1.2 if kind == "square" else 1.25)
    pts = [
        (cx + r * math.cos(angle + 2 * math.pi * i / corners), cy + r * math.sin(angle + 2 * math.pi * i / corners))
        for i in range(corners)
    ]
    cv2.fillPoly(mask, [np.round(np.array(pts)).astype(np.int32)], 1, cv2.LINE_8)
    return mask


def shapes_scene(rng: np.random.Generator, size: int = 256, max_objects: int = 4) -> tuple[np.ndarray, list[Instance]]:
    """One image with 1..max_objects non-overlapping coloured shapes and their exact masks."""
    image = _background(rng, size)
    taken = np.zeros((size, size), bool)
    instances: list[Instance] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(30):
            kind = SHAPES[int(rng.integers(len(SHAPES)))]
            radius = float(rng.uniform(0.06, 0.16) * size)
            cx, cy = rng.uniform(radius + 2, size - radius - 2, 2)
            angle = float(rng.uniform(0, 2 * math.pi)) if kind == "triangle" else float(rng.uniform(-0.3, 0.3))
            mask = _shape_mask(kind, (cx, cy), radius, angle, size)
            grown = np.zeros_like(taken)
            ys, xs = np.nonzero(mask)
            grown[max(0, ys.min() - 3) : ys.max() + 4, max(0, xs.min() - 3) : xs.max() + 4] = True
            if not (grown & taken).any() and mask.sum() > 20:
                break
        else:
            continue
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        shade = np.clip(np.array(COLOURS[colour]) + rng.integers(-20, 21, 3), 0, 255)
        image[mask.astype(bool)] = shade.astype(np.uint8)
        taken |= grown
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        instances.append(Instance(kind, box, mask, attributes={"colour": colour, "centre": (cx, cy)}))
    return image, instances


def _figure_keypoints(rng: np.random.Generator, hip: tuple[float, float], height: float) -> tuple[np.ndarray, float]:
    """COCO's 17 keypoints for a front-facing stick figure (x, y), and its head radius."""
    hx, hy = hip
    torso, head = 0.32 * height, 0.08 * height
    neck = np.array([hx + rng.uniform(-0.05, 0.05) * height, hy - torso])
    centre = neck - np.array([0, 1.5 * head])
    half_shoulder, half_hip = 0.13 * height, 0.08 * height
    pts = {
        "nose": centre + np.array([0, 0.25 * head]),
        "left_eye": centre + np.array([0.38 * head, -0.15 * head]),
        "right_eye": centre + np.array([-0.38 * head, -0.15 * head]),
        "left_ear": centre + np.array([0.95 * head, 0]),
        "right_ear": centre + np.array([-0.95 * head, 0]),
        "left_shoulder": neck + np.array([half_shoulder, 0]),
        "right_shoulder": neck + np.array([-half_shoulder, 0]),
        "left_hip": np.array([hx + half_hip, hy]),
        "right_hip": np.array([hx - half_hip, hy]),
    }

    def limb(start: np.ndarray, angle: float, length: float) -> np.ndarray:
        return start + length * np.array([math.sin(angle), math.cos(angle)])

    for side, sign in (("left", 1.0), ("right", -1.0)):
        upper = sign * rng.uniform(0.2, 2.4)  # arms: from down along the body to raised
        pts[f"{side}_elbow"] = limb(pts[f"{side}_shoulder"], upper, 0.17 * height)
        pts[f"{side}_wrist"] = limb(pts[f"{side}_elbow"], upper + sign * rng.uniform(-0.6, 1.0), 0.16 * height)
        thigh = sign * rng.uniform(0.0, 0.5)
        pts[f"{side}_knee"] = limb(pts[f"{side}_hip"], thigh, 0.22 * height)
        pts[f"{side}_ankle"] = limb(pts[f"{side}_knee"], thigh + rng.uniform(-0.3, 0.3), 0.22 * height)
    from cnnapps.datasets.coco import COCO_KEYPOINTS

    return np.array([pts[name] for name in COCO_KEYPOINTS], np.float32), head


def people_scene(rng: np.random.Generator, size: int = 256, max_people: int = 2) -> tuple[np.ndarray, list[Instance]]:
    """One image with 1..max_people stick figures side by side, with keypoints and boxes."""
    import cv2

    from cnnapps.datasets.coco import COCO_SKELETON

    image = _background(rng, size)
    count = int(rng.integers(1, max_people + 1))
    instances = []
    slot = size / count
    for i in range(count):
        height = float(rng.uniform(0.45, 0.85) * size)
        hip = (slot * (i + 0.5) + rng.uniform(-0.1, 0.1) * slot, rng.uniform(0.5, 0.62) * size)
        xy, head = _figure_keypoints(rng, hip, height)
        colour = tuple(int(c) for c in rng.integers(0, 90, 3))
        thick = max(2, round(height / 45))
        p = {k: tuple(np.round(v).astype(int)) for k, v in enumerate(xy)}
        for a, b in COCO_SKELETON[:12]:  # limbs and torso; the face is drawn below
            cv2.line(image, p[a - 1], p[b - 1], colour, thick, cv2.LINE_AA)
        neck = tuple(np.round((xy[5] + xy[6]) / 2).astype(int))
        hips = tuple(np.round((xy[11] + xy[12]) / 2).astype(int))
        cv2.line(image, neck, hips, colour, thick, cv2.LINE_AA)
        centre = tuple(np.round(xy[0] - np.array([0, 0.25 * head])).astype(int))
        cv2.circle(image, centre, round(head), colour, thick, cv2.LINE_AA)
        for k in (1, 2):
            cv2.circle(image, p[k], max(1, thick // 2), colour, -1, cv2.LINE_AA)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < size) & (xy[:, 1] >= 0) & (xy[:, 1] < size)
        keypoints = np.concatenate([xy, np.where(inside, 2, 0)[:, None]], 1).astype(np.float32)
        lo = np.minimum(xy.min(0), np.array(centre) - head) - thick
        hi = np.maximum(xy.max(0), np.array(centre) + head) + thick
        lo, hi = np.clip(lo, 0, size), np.clip(hi, 0, size)
        instances.append(Instance("person", (*map(float, lo), *map(float, hi)), keypoints=keypoints))
    return image, instances


def _place(rng: np.random.Generator, size: int, taken: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """A shape's centre and radius inside the central part of the image, clear of the shapes in ``taken``."""
    for _ in range(100):
        r = float(rng.uniform(0.08, 0.14) * size)
        cx, cy = (float(v) for v in rng.uniform(0.2 * size, 0.8 * size, 2))
        if all(math.hypot(cx - x, cy - y) > r + q + 0.06 * size for x, y, q in taken):
            return cx, cy, r
    raise RuntimeError("no room left for another shape")


def captioned_scene(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, list[str]]:
    """One or two shapes of different colours or kinds, and the captions that describe them."""
    image = _background(rng, size)
    count = int(rng.integers(1, 3))
    shapes: list[tuple[str, str, float, float]] = []
    taken: list[tuple[float, float, float]] = []
    while len(shapes) < count:
        kind, colour = SHAPES[int(rng.integers(len(SHAPES)))], list(COLOURS)[int(rng.integers(len(COLOURS)))]
        if any(kind == k and colour == c for k, c, _, _ in shapes):
            continue
        cx, cy, r = _place(rng, size, taken)
        taken.append((cx, cy, r))
        angle = float(rng.uniform(0, 2 * math.pi)) if kind == "triangle" else float(rng.uniform(-0.3, 0.3))
        image[_shape_mask(kind, (cx, cy), r, angle, size).astype(bool)] = COLOURS[colour]
        shapes.append((kind, colour, cx, cy))
    if count == 1:
        kind, colour, _, _ = shapes[0]
        return image, [f"{article(colour)} {kind} on its own", f"a single {colour} {kind}"]
    (k1, c1, x1, y1), (k2, c2, x2, y2) = shapes
    if abs(y2 - y1) > abs(x2 - x1):
        relation, inverse = ("above", "below") if y1 < y2 else ("below", "above")
    else:
        relation, inverse = ("left of", "right of") if x1 < x2 else ("right of", "left of")
    first, second = f"{article(c1)} {k1}", f"{article(c2)} {k2}"  # "an orange circle"
    return image, [f"{first} {relation} {second}", f"{second} {inverse} {first}"]


def write_captions(out: str | os.PathLike, split: str, n: int, seed: int = 0, size: int = 256) -> Path:
    """Write ``n`` captioned scenes as ``out/<split>/*.png`` and COCO captions JSON ``out/<split>.json``."""
    import cv2

    folder, path = _fresh(out, split)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(n):
        image, captions = captioned_scene(rng, size)
        name = f"captions_{i:05d}.png"
        cv2.imwrite(str(folder / name), image[:, :, ::-1])
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for caption in captions:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "caption": caption})
    atomic_write(path, json.dumps({"images": images, "annotations": annotations}).encode())
    return path


SCENES = {"shapes": shapes_scene, "people": people_scene}


def scenes(kind: str, n: int, seed: int = 0, size: int = 256) -> Iterator[tuple[np.ndarray, list[Instance]]]:
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield SCENES[kind](rng, size)


def categories(kind: str) -> list[dict[str, Any]]:
    from cnnapps.datasets.coco import COCO_KEYPOINTS, COCO_SKELETON

    if kind == "people":
        skeleton = [list(p) for p in COCO_SKELETON]
        return [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO_KEYPOINTS),
                 "skeleton": skeleton}]  # fmt: skip
    return [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)]


def _segmentation(mask: np.ndarray, rle: bool) -> Any:
    import cv2

    if rle:
        from pycocotools import mask as mask_utils

        encoded = mask_utils.encode(np.asfortranarray(mask))
        return {"size": list(encoded["size"]), "counts": encoded["counts"].decode("ascii")}
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def write_coco(
    kind: str, out: str | os.PathLike, split: str, n: int, seed: int = 0, size: int = 256, rle: bool = True
) -> Path:
    """Write ``n`` scenes as ``out/<split>/*.png`` and ``out/<split>.json``; returns the JSON's path.

    Masks are written as RLE, which is exact; ``rle=False`` writes polygons (contours through pixel
    centres, so each mask loses about half a pixel at its edge, as COCO's own polygons do)."""
    import cv2

    folder, path = _fresh(out, split)
    cats = categories(kind)
    cat_ids = {c["name"]: c["id"] for c in cats}
    images, annotations = [], []
    for i, (image, instances) in enumerate(scenes(kind, n, seed, size)):
        name = f"{kind}_{i:05d}.png"
        cv2.imwrite(str(folder / name), image[:, :, ::-1])
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for inst in instances:
            x0, y0, x1, y1 = inst.box
            ann: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": i + 1,
                "category_id": cat_ids[inst.category],
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "iscrowd": 0,
            }
            if inst.mask is not None:
                ann["segmentation"] = _segmentation(inst.mask, rle)
                ann["area"] = float(inst.mask.sum())
            else:  # a person's segmented area is about half its box in COCO; OKS scales with it
                ann["area"] = round(0.5 * (x1 - x0) * (y1 - y0), 2)
            if inst.keypoints is not None:
                ann["keypoints"] = [round(float(v), 2) for v in inst.keypoints.reshape(-1)]
                ann["num_keypoints"] = int((inst.keypoints[:, 2] > 0).sum())
            annotations.append(ann)
    atomic_write(path, json.dumps({"images": images, "annotations": annotations, "categories": cats}).encode())
    return path


def _fresh(out: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(``out/<split>/``, ``out/<split>.json``), refused when either holds something already (a data set the user
    has is never written over)."""
    folder, path = Path(out) / split, Path(out) / f"{split}.json"
    for taken in (path, folder):
        if os.path.lexists(taken) and not (taken.is_dir() and not any(taken.iterdir())):
            raise OutputExistsError(taken)
    folder.mkdir(parents=True, exist_ok=True)
    return folder, path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write synthetic COCO-format scenes.")
    parser.add_argument("kind", choices=[*sorted(SCENES), "captions"])
    parser.add_argument("out")
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--polygons", action="store_true", help="Write masks as polygons instead of exact RLE.")
    args = parser.parse_args(argv)
    for split, n, seed in (("train", args.train, args.seed), ("val", args.val, args.seed + 1)):
        try:
            if args.kind == "captions":
                path = write_captions(args.out, split, n, seed, args.size)
            else:
                path = write_coco(args.kind, args.out, split, n, seed, args.size, rle=not args.polygons)
        except CnnappsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_ERROR) from None
        print(f"{path}: {n} images in {Path(args.out) / split}")


if __name__ == "__main__":
    main()
