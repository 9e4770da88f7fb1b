"""COCO instances and person-keypoints JSON, read with pycocotools.

Categories become contiguous labels 1..C (0 is the background); crowd regions are kept out of
training targets (COCOeval still uses them); images without annotations stay, with empty targets.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnapps.errors import CnnappsError

#: COCO's 17 person keypoints, their OKS sigmas and skeleton (1-based pairs, as in COCO's categories)
COCO_KEYPOINTS = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
COCO_OKS_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)  # fmt: skip
COCO_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip


class CocoError(CnnappsError):
    """A COCO annotation file that is missing or malformed."""


@dataclass
class Target:
    """One image's training target in pixels: boxes (N, 4) x0 y0 x1 y1, labels (N,), masks (N, H, W) uint8,
    keypoints (N, K, 3) x y visibility."""

    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None
    keypoints: np.ndarray | None = None


def read_annotation_file(path: Path, error: type[CnnappsError] = CocoError) -> dict[str, Any]:
    """A COCO-style JSON file as a dict with an ``images`` list; anything else raises ``error`` in one line."""
    if not path.is_file():
        raise error(f"{path}: annotation file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise error(f"{path}: no 'images' list (not a COCO-style annotation file)")
    return data


def load_coco(annotation_file: str | os.PathLike) -> Any:
    """A pycocotools ``COCO`` object, with its chatter silenced and failures as one-line errors."""
    from pycocotools.coco import COCO

    path = Path(annotation_file)
    dataset = read_annotation_file(path)
    dataset.setdefault("annotations", [])
    dataset.setdefault("categories", [])
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDataset:
    """A COCO file and its image folder for one task (``detect``, ``segment`` or ``pose``)."""

    def __init__(self, annotation_file: str | os.PathLike, images: str | os.PathLike, task: str = "segment") -> None:
        self.path = Path(annotation_file)
        self.images = Path(images)
        self.task = task
        self.coco = load_coco(self.path)
        cats = sorted(self.coco.loadCats(self.coco.getCatIds()), key=lambda c: c["id"])
        if task == "pose":
            cats = [c for c in cats if c.get("keypoints")]
            if not cats:
                raise CocoError(f"{self.path}: no category with keypoints (needed for pose)")
            self.keypoint_names = list(cats[0]["keypoints"])
            self.skeleton = [list(p) for p in cats[0].get("skeleton", [])]
        else:
            self.keypoint_names, self.skeleton = [], []
        if not cats:
            raise CocoError(f"{self.path}: no categories")
        self.category_ids = [c["id"] for c in cats]
        self.class_names = ["__background__", *(c["name"] for c in cats)]
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self.image_ids = sorted(self.coco.getImgIds())

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, index: int) -> Path:
        return self.images / self.coco.imgs[self.image_ids[index]]["file_name"]

    def target(self, index: int) -> Target:
        """The annotations of image ``index`` (crowd regions and degenerate boxes left out)."""
        info = self.coco.imgs[self.image_ids[index]]
        height, width = int(info["height"]), int(info["width"])
        anns = [
            a
            for a in self.coco.imgToAnns.get(self.image_ids[index], [])
            if not a.get("iscrowd", 0) and a["category_id"] in self.label_of and a["bbox"][2] > 1 and a["bbox"][3] > 1
        ]
        if self.task == "pose":
            anns = [a for a in anns if a.get("num_keypoints", 0) > 0]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32).reshape(-1, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        target = Target(boxes, np.array([self.label_of[a["category_id"]] for a in anns], np.int64))
        if self.task == "segment":
            masks = [self.coco.annToMask(a) if a.get("segmentation") else _box_mask(a["bbox"], height, width)
                     for a in anns]  # fmt: skip
            target.masks = np.stack(masks).astype(np.uint8) if masks else np.zeros((0, height, width), np.uint8)
        if self.task == "pose":
            k = len(self.keypoint_names)
            target.keypoints = np.array([a["keypoints"] for a in anns], np.float32).reshape(-1, k, 3)
        return target


def _box_mask(bbox: list[float], height: int, width: int) -> np.ndarray:
    x, y, w, h = (round(v) for v in bbox)
    mask = np.zeros((height, width), np.uint8)
    mask[max(0, y) : y + h, max(0, x) : x + w] = 1
    return mask
