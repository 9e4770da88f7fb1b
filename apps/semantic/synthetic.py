"""Synthetic scenes with exact per-pixel labels: "stuff" bands (sky, water, grass) behind "things" (the coloured
circles, squares and triangles of ``cnnapps.datasets.synthetic``), so one set serves semantic segmentation, instance
segmentation and panoptic segmentation.

    python -m cnnapps.apps.semantic.synthetic data/scenes --train 400 --val 100        # Pascal VOC layout + COCO JSON
    python -m cnnapps.apps.semantic.synthetic data/scenes-folders --format folders    # images/ + masks/ per split

``--format voc`` (the default) writes ``JPEGImages/``, ``SegmentationClass/`` (palette PNGs),
``ImageSets/Segmentation/{train,val}.txt``, ``classes.txt`` (names and colours) and, in ``annotations/``, COCO
instances of the things (``instances_<split>.json``), every segment COCO-stuff style (``semantic_<split>.json``) and
COCO panoptic (``panoptic_<split>.json`` with its PNGs in ``panoptic_<split>/``). ``--format folders`` writes
``<split>/images/*.png``, ``<split>/masks/*.png`` (index PNGs) and ``<split>/classes.txt``.
Validation scenes come from another seed than training scenes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnapps.datasets.semantic import ClassList, write_class_list, write_mask
from cnnapps.datasets.synthetic import SHAPES, shapes_scene
from cnnapps.files import OutputExistsError

STUFF = ("sky", "water", "grass")
CLASSES = (*STUFF, *SHAPES)
COLOURS = ((70, 130, 180), (0, 60, 110), (107, 142, 35), (220, 20, 60), (255, 170, 0), (150, 60, 200))
#: what each class is in COCO panoptic terms (category ids are class index + 1)
IS_THING = tuple(name in SHAPES for name in CLASSES)


@dataclass
class Segment:
    """One segment of a scene: a stuff region or a thing instance, with its exact mask."""

    label: int  # class index in CLASSES
    mask: np.ndarray  # (H, W) bool

    @property
    def is_thing(self) -> bool:
        return IS_THING[self.label]


def class_list() -> ClassList:
    return ClassList(list(CLASSES), list(COLOURS), None, "classes.txt")


def _band(rng: np.random.Generator, size: int, level: float) -> np.ndarray:
    """A wavy boundary: its height (in pixels) at each column."""
    x = np.arange(size, dtype=np.float32)
    waves = rng.uniform(0.01, 0.05) * size * np.sin(2 * math.pi * x / rng.uniform(0.4, 1.2) / size + rng.uniform(0, 6))
    return level * size + waves + rng.uniform(0.0, 0.015) * size * np.sin(x / rng.uniform(3, 9))


def _texture(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """A full image of one stuff class's look: sky a smooth gradient, water stripes, grass coarse noise."""
    y = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    if kind == "sky":
        top = np.array([rng.uniform(60, 120), rng.uniform(120, 170), rng.uniform(200, 250)])
        bottom = np.array([rng.uniform(170, 220), rng.uniform(200, 235), rng.uniform(225, 255)])
        img = top * (1 - y) + bottom * y + rng.normal(0, 3, (size, size, 3))
    elif kind == "water":
        base = np.array([rng.uniform(10, 50), rng.uniform(60, 110), rng.uniform(110, 170)])
        rows = np.sin(np.arange(size)[:, None, None] * rng.uniform(0.6, 1.2) + rng.uniform(0, 6)) * 18
        img = base + rows + rng.normal(0, 6, (size, size, 3))
    else:  # grass
        base = np.array([rng.uniform(60, 110), rng.uniform(120, 170), rng.uniform(20, 60)])
        blades = rng.normal(0, 22, (size, size, 1)) * np.array([0.6, 1.0, 0.4])
        img = base + blades + rng.normal(0, 6, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def scene(rng: np.random.Generator, size: int = 256, max_objects: int = 4) -> tuple[np.ndarray, list[Segment]]:
    """One image: sky on top, sometimes water, grass below (wavy boundaries), and 1..max_objects shapes over them.

    Returns the RGB image and its segments (stuff regions first, then thing instances), which cover every pixel
    exactly once."""
    shapes, instances = shapes_scene(rng, size, max_objects)
    rows = np.arange(size)[:, None]
    horizon = _band(rng, size, rng.uniform(0.3, 0.5))
    stuff = np.full((size, size), CLASSES.index("grass"), np.int64)
    stuff[rows < horizon[None, :]] = CLASSES.index("sky")
    if rng.random() < 0.6:
        shore = _band(rng, size, rng.uniform(0.55, 0.75))
        stuff[(rows >= horizon[None, :]) & (rows < shore[None, :])] = CLASSES.index("water")
    image = np.zeros((size, size, 3), np.uint8)
    for label, name in enumerate(STUFF):
        region = stuff == label
        if region.any():
            image[region] = _texture(rng, name, size)[region]
    things = np.zeros((size, size), bool)
    segments = []
    for inst in instances:
        mask = inst.mask.astype(bool)
        image[mask] = shapes[mask]
        things |= mask
        segments.append(Segment(CLASSES.index(inst.category), mask))
    stuff_segments = [Segment(label, (stuff == label) & ~things) for label in range(len(STUFF))]
    return image, [s for s in stuff_segments if s.mask.any()] + segments


def label_map(segments: list[Segment], size: tuple[int, int]) -> np.ndarray:
    out = np.zeros(size, np.int64)
    for segment in segments:
        out[segment.mask] = segment.label
    return out


def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(encoded["size"]), "counts": encoded["counts"].decode("ascii")}


def _box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def categories() -> list[dict[str, Any]]:
    return [
        {"id": i + 1, "name": name, "supercategory": "thing" if thing else "stuff", "isthing": int(thing),
         "color": list(COLOURS[i])}
        for i, (name, thing) in enumerate(zip(CLASSES, IS_THING, strict=True))
    ]  # fmt: skip


def write_voc(out: str | os.PathLike, split: str, n: int, seed: int = 0, size: int = 256) -> Path:
    """Write ``n`` scenes of ``split`` in Pascal VOC's layout with COCO instances, COCO-stuff style and COCO
    panoptic annotations beside it; returns the root."""
    import cv2

    from cnnapps.apps.semantic.pq import id_to_rgb

    root = Path(out)
    for taken in (root / "ImageSets" / "Segmentation" / f"{split}.txt", root / "JPEGImages" / f"{split}_00000.jpg"):
        if os.path.lexists(taken):  # the split is there already: a data set the user has is never written over
            raise OutputExistsError(taken)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation", f"annotations/panoptic_{split}"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    write_class_list(root / "classes.txt", class_list())
    rng = np.random.default_rng(seed)
    names, images = [], []
    instances, semantic, panoptic = [], [], []
    for i in range(n):
        name = f"{split}_{i:05d}"
        image, segments = scene(rng, size)
        cv2.imwrite(str(root / "JPEGImages" / f"{name}.jpg"), image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        write_mask(root / "SegmentationClass" / f"{name}.png", label_map(segments, (size, size)), list(COLOURS))
        names.append(name)
        image_id = i + 1
        images.append({"id": image_id, "file_name": f"{name}.jpg", "width": size, "height": size})
        ids = np.zeros((size, size), np.int64)
        infos = []
        for k, segment in enumerate(segments):
            area = float(segment.mask.sum())
            ann = {"image_id": image_id, "category_id": segment.label + 1, "iscrowd": 0, "area": area,
                   "bbox": _box(segment.mask)}  # fmt: skip
            semantic.append({**ann, "id": len(semantic) + 1, "segmentation": _rle(segment.mask)})
            if segment.is_thing:
                instances.append({**ann, "id": len(instances) + 1, "segmentation": _rle(segment.mask)})
            segment_id = image_id * 1000 + k + 1
            ids[segment.mask] = segment_id
            infos.append({"id": segment_id, "category_id": segment.label + 1, "iscrowd": 0, "area": area,
                          "bbox": _box(segment.mask)})  # fmt: skip
        cv2.imwrite(str(root / "annotations" / f"panoptic_{split}" / f"{name}.png"), id_to_rgb(ids)[:, :, ::-1])
        panoptic.append({"image_id": image_id, "file_name": f"{name}.png", "segments_info": infos})
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    cats = categories()
    things = [c for c in cats if c["isthing"]]
    files = {
        f"instances_{split}.json": {"images": images, "annotations": instances, "categories": things},
        f"semantic_{split}.json": {"images": images, "annotations": semantic, "categories": cats},
        f"panoptic_{split}.json": {"images": images, "annotations": panoptic, "categories": cats},
    }
    for filename, content in files.items():
        (root / "annotations" / filename).write_text(json.dumps(content))
    return root


def write_folders(out: str | os.PathLike, split: str, n: int, seed: int = 0, size: int = 256) -> Path:
    """Write ``n`` scenes as ``out/<split>/images/*.png`` and ``masks/*.png`` (index PNGs) with a class list."""
    import cv2

    folder = Path(out) / split
    if os.path.lexists(folder) and not (folder.is_dir() and not any(folder.iterdir())):
        raise OutputExistsError(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    write_class_list(folder / "classes.txt", class_list())
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, segments = scene(rng, size)
        cv2.imwrite(str(folder / "images" / f"{split}_{i:05d}.png"), image[:, :, ::-1])
        cv2.imwrite(str(folder / "masks" / f"{split}_{i:05d}.png"), label_map(segments, (size, size)).astype(np.uint8))
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write synthetic scenes with stuff and things, labelled per pixel.")
    parser.add_argument("out")
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("voc", "folders"), default="voc")
    args = parser.parse_args(argv)
    write = write_voc if args.format == "voc" else write_folders
    for split, n, seed in (("train", args.train, args.seed), ("val", args.val, args.seed + 1)):
        try:
            where = write(args.out, split, n, seed, args.size)
        except OutputExistsError as exc:
            raise SystemExit(f"error: {exc}") from None
        print(f"{split}: {n} scenes in {where}")


if __name__ == "__main__":
    main()
