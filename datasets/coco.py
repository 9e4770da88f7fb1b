"""COCO instances and person-keypoints JSON, read with pycocotools; YOLO, Pascal VOC, LabelMe and CVAT annotations
are read into the same COCO structure in memory (:mod:`cnnapps.datasets.formats`), so training takes them as they are.

Categories become contiguous labels 1..C (0 is the background); crowd regions are kept out of
training targets (COCOeval still uses them); images without annotations stay, with empty targets.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnapps.errors import CnnappsError

log = logging.getLogger("cnnapps")

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


def load_coco(annotation_file: str | os.PathLike | dict[str, Any]) -> Any:
    """A pycocotools ``COCO`` object (from a file, or a COCO dict), with its chatter silenced and failures as
    one-line errors."""
    from pycocotools.coco import COCO

    dataset = annotation_file if isinstance(annotation_file, dict) else read_annotation_file(Path(annotation_file))
    dataset.setdefault("annotations", [])
    dataset.setdefault("categories", [])
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def read_collection(path: Path, images: Path | None, fmt: str) -> Any:
    """Annotations of any format as a :class:`~cnnapps.datasets.formats.Collection`; items that cannot be used are
    logged (one warning with the count and the first few, file and line) and left out, as conversion does."""
    from cnnapps.datasets.formats import read

    data, report, _ = read(path, fmt, images=images)
    if report.skipped:
        shown = "\n  ".join(report.skipped[:5])
        more = f"\n  ... and {len(report.skipped) - 5} more" if len(report.skipped) > 5 else ""
        log.warning("%s (%s): %d items left out (cnnapps data check %s lists them all):\n  %s%s", path, fmt,
                    len(report.skipped), path, shown, more)  # fmt: skip
    if not data.coco["images"]:
        raise CocoError(f"{path}: no images found ({fmt})")
    return data


def labelled_keypoints(ann: dict[str, Any]) -> int:
    """An annotation's labelled keypoints: its ``num_keypoints``, or where a file leaves that out, the keypoints
    marked visible (v > 0) in its ``keypoints`` triplets."""
    if "num_keypoints" in ann:
        return int(ann["num_keypoints"])
    return sum(1 for v in (ann.get("keypoints") or [])[2::3] if v > 0)


class CocoDataset:
    """An annotation file and its image folder for one task (``detect``, ``segment`` or ``pose``): a COCO JSON, or
    any format :mod:`cnnapps.datasets.formats` reads. Without ``images`` the images are found where the format keeps
    them (and the entries of a COCO JSON are checked by its reader: those that cannot be used are logged and left
    out). ``splits``: the split (train, val, test) the source puts each image id in, where it says (a YOLO data.yaml's
    entries, Pascal VOC's ImageSets/Main lists, CVAT subsets); empty for a COCO JSON. ``fmt``: the format (coco, yolo,
    voc, labelme, cvat) when the path does not tell it."""

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        images: str | os.PathLike | None = None,
        task: str = "segment",
        fmt: str | None = None,
    ) -> None:
        from cnnapps.datasets.formats import FormatError, other_format

        self.path = Path(annotation_file)
        self.task = task
        self.files: dict[int, Path] = {}
        self.splits: dict[int, str] = {}
        try:
            fmt = fmt or other_format(self.path)  # given (--from), or told by the path
        except FormatError as exc:
            raise CocoError(str(exc)) from None
        if fmt is None and not self.path.is_file():
            raise CocoError(f"{self.path}: annotation file not found")
        # each entry checked; a COCO file's images in --images, else where COCO files keep them
        data = read_collection(self.path, Path(images) if images else None, fmt or "coco")
        self.images = Path(images) if images else data.images_root or self.path.parent
        self.files = dict(data.files)
        self.splits = dict(data.splits)
        self.coco = load_coco(data.coco)
        cats = sorted(self.coco.loadCats(self.coco.getCatIds()), key=lambda c: c["id"])
        if task == "pose":
            cats = [c for c in cats if c.get("keypoints")]
            if not cats:
                raise CocoError(f"{self.path}: no category with keypoints (needed for pose)")
            self.keypoint_names = list(cats[0]["keypoints"])
            self.skeleton = _skeleton(cats[0], len(self.keypoint_names), self.path)
            self.flip_index = _flip_index(cats[0], len(self.keypoint_names), self.path)
        else:
            self.keypoint_names, self.skeleton, self.flip_index = [], [], None
        if not cats:
            raise CocoError(f"{self.path}: no categories")
        self.category_ids = [c["id"] for c in cats]
        self.class_names = ["__background__", *(c["name"] for c in cats)]
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self.image_ids = sorted(self.coco.getImgIds())
        if task == "pose":
            self._check_keypoints()

    def _check_keypoints(self) -> None:
        """Every annotation a target can hold has 3 numbers per keypoint (else one line: file, annotation, counts).
        An annotation without ``num_keypoints`` gets its count of labelled keypoints (pycocotools' evaluation needs
        it: a KeyError after the first epoch of training)."""
        k = len(self.keypoint_names)
        for ann in self.coco.dataset["annotations"]:
            if "num_keypoints" not in ann:
                ann["num_keypoints"] = labelled_keypoints(ann)
            if ann.get("category_id") not in self.label_of or ann.get("iscrowd", 0):
                continue
            points = ann.get("keypoints")
            if not points and not labelled_keypoints(ann):
                continue  # no keypoints (missing or an empty list): left out of the targets
            found = f"has {len(points)} values" if isinstance(points, list) else f"is {points!r}"
            if not isinstance(points, list) or len(points) != 3 * k:
                raise CocoError(f"{self.path}: annotation {ann.get('id')}: keypoints {found}; expected 3 x {k} = "
                                f"{3 * k} values (x, y, visibility per keypoint)")  # fmt: skip

    def __len__(self) -> int:
        return len(self.image_ids)

    def split(self, name: str | None) -> list[int]:
        """The indices of the images the source puts in split ``name`` (``None``: in no split)."""
        return [i for i, image_id in enumerate(self.image_ids) if self.splits.get(image_id) == name]

    def image_path(self, index: int) -> Path:
        image_id = self.image_ids[index]
        return self.files.get(image_id) or self.images / self.coco.imgs[image_id]["file_name"]

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
            anns = [a for a in anns if labelled_keypoints(a) > 0]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32).reshape(-1, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        inside = (boxes[:, 2] - boxes[:, 0] > 1) & (boxes[:, 3] - boxes[:, 1] > 1)  # a box outside the image: none
        anns, boxes = [a for a, keep in zip(anns, inside, strict=True) if keep], boxes[inside]
        target = Target(boxes, np.array([self.label_of[a["category_id"]] for a in anns], np.int64))
        if self.task == "segment":
            masks = [self.coco.annToMask(a) if a.get("segmentation") else _box_mask(a["bbox"], height, width)
                     for a in anns]  # fmt: skip
            target.masks = np.stack(masks).astype(np.uint8) if masks else np.zeros((0, height, width), np.uint8)
        if self.task == "pose":
            k = len(self.keypoint_names)
            target.keypoints = np.array([a["keypoints"] for a in anns], np.float32).reshape(-1, k, 3)
        return target


def _flip_index(cat: dict[str, Any], k: int, path: Path) -> list[int] | None:
    """The category's ``flip_index`` (ultralytics' ``flip_idx``: for each keypoint, the one it becomes in a mirrored
    image), checked; ``None`` when it has none (the keypoint names then say which swap)."""
    from cnnapps.datasets.formats.yolo import is_permutation

    flips = cat.get("flip_index")
    if flips is not None and not is_permutation(flips, k):
        raise CocoError(f"{path}: category {cat['name']!r}: flip_index: expected a permutation of 0..{k - 1}, "
                        f"not {flips!r}")  # fmt: skip
    return flips


def _skeleton(cat: dict[str, Any], k: int, path: Path) -> list[list[int]]:
    """The category's ``skeleton``: pairs of keypoints, 1-based as COCO's (a pair past the keypoints, or a 0-based
    one, was kept and drawn between the wrong joints or none)."""
    pairs = cat.get("skeleton") or []
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(i, int) and 1 <= i <= k for i in pair)):
            raise CocoError(f"{path}: category {cat['name']!r}: skeleton pair {pair!r} is not two keypoint numbers "
                            f"of 1..{k} (COCO's are 1-based)")  # fmt: skip
    return [list(p) for p in pairs]


def _box_mask(bbox: list[float], height: int, width: int) -> np.ndarray:
    x, y, w, h = (round(v) for v in bbox)
    mask = np.zeros((height, width), np.uint8)
    mask[max(0, y) : y + h, max(0, x) : x + w] = 1
    return mask
