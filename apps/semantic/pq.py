"""Panoptic quality (Kirillov et al. 2019) computed as panopticapi's ``pq_compute`` does, and COCO panoptic files.

A predicted and a ground-truth segment of one category match when their IoU is above 0.5 (which makes matches
unique); the union leaves out the predicted pixels that fall on void (unlabelled) ground truth. Unmatched ground
truth counts as a false negative unless it is a crowd region; an unmatched prediction counts as a false positive
unless more than half of it lies on void or on a crowd region of its category. Per category
``PQ = sum(IoU of matches) / (TP + FP/2 + FN/2) = SQ x RQ``; averages take the categories that occur (TP + FP + FN
> 0), over all, things and stuff.

COCO panoptic format: a JSON with ``annotations`` (one per image: ``file_name`` of its PNG and ``segments_info``
with ``id``, ``category_id``, ``iscrowd``) and ``categories`` (with ``isthing``); the PNG holds each pixel's segment
id as ``R + 256 G + 256^2 B`` (0: void).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnapps.errors import CnnappsError

VOID = 0
_OFFSET = 256 * 256 * 256


class PanopticDataError(CnnappsError):
    """A COCO panoptic file, PNG or segment list that cannot be used."""


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids from a COCO panoptic PNG's RGB pixels (H, W, 3)."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """RGB pixels (uint8) that a COCO panoptic PNG stores for segment ids."""
    ids = np.asarray(ids, np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1).astype(np.uint8)


@dataclass
class _Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou: float = 0.0


@dataclass
class PanopticQuality:
    """Accumulates matches image by image; ``summary()`` gives PQ, SQ and RQ over all, things and stuff."""

    categories: dict[int, dict[str, Any]]  # category id -> {"name", "isthing"}
    counts: dict[int, _Counts] = field(default_factory=lambda: defaultdict(_Counts))
    images: int = 0

    def add(self, gt_ids: np.ndarray, gt_segments: list[dict[str, Any]], pred_ids: np.ndarray,
            pred_segments: list[dict[str, Any]], source: str = "image") -> None:  # fmt: skip
        """One image: id maps (H, W) and their segments (``id``, ``category_id``, ``iscrowd``)."""
        if gt_ids.shape != pred_ids.shape:
            raise PanopticDataError(
                f"{source}: prediction is {pred_ids.shape[::-1]}, ground truth {gt_ids.shape[::-1]}"
            )
        gt = {int(s["id"]): dict(s) for s in gt_segments}
        pred = {int(s["id"]): dict(s) for s in pred_segments}
        for segments, ids, what in ((gt, gt_ids, "ground truth"), (pred, pred_ids, "prediction")):
            labels, areas = np.unique(ids, return_counts=True)
            for label, area in zip(labels.tolist(), areas.tolist(), strict=True):
                if label == VOID:
                    continue
                if label not in segments:
                    raise PanopticDataError(f"{source}: {what} segment {label} is in the picture but not in its list")
                segments[label]["area"] = area
            for label, info in segments.items():
                if info["category_id"] not in self.categories:
                    raise PanopticDataError(
                        f"{source}: {what} segment {label} has unknown category {info['category_id']}"
                    )
                info.setdefault("area", 0)
        joint = gt_ids.astype(np.int64) * _OFFSET + pred_ids.astype(np.int64)
        labels, counts = np.unique(joint, return_counts=True)
        overlap = {(int(j // _OFFSET), int(j % _OFFSET)): int(c) for j, c in zip(labels, counts, strict=True)}
        gt_matched, pred_matched = set(), set()
        for (g, p), inter in overlap.items():
            if g not in gt or p not in pred or gt[g].get("iscrowd") or gt[g]["category_id"] != pred[p]["category_id"]:
                continue
            union = pred[p]["area"] + gt[g]["area"] - inter - overlap.get((VOID, p), 0)
            iou = inter / union
            if iou > 0.5:
                stat = self.counts[gt[g]["category_id"]]
                stat.tp += 1
                stat.iou += iou
                gt_matched.add(g)
                pred_matched.add(p)
        crowd = {}
        for g, info in gt.items():
            if g in gt_matched:
                continue
            if info.get("iscrowd"):
                crowd[info["category_id"]] = g
                continue
            self.counts[info["category_id"]].fn += 1
        for p, info in pred.items():
            if p in pred_matched or info["area"] == 0:
                continue
            ignored = overlap.get((VOID, p), 0)
            if info["category_id"] in crowd:
                ignored += overlap.get((crowd[info["category_id"]], p), 0)
            if ignored / info["area"] > 0.5:
                continue
            self.counts[info["category_id"]].fp += 1
        self.images += 1

    def _average(self, isthing: bool | None) -> dict[str, Any]:
        pq = sq = rq = 0.0
        n = 0
        for cat, info in self.categories.items():
            if isthing is not None and bool(info.get("isthing", 1)) != isthing:
                continue
            c = self.counts.get(cat, _Counts())
            if c.tp + c.fp + c.fn == 0:
                continue
            n += 1
            pq += c.iou / (c.tp + 0.5 * c.fp + 0.5 * c.fn)
            sq += c.iou / c.tp if c.tp else 0.0
            rq += c.tp / (c.tp + 0.5 * c.fp + 0.5 * c.fn)
        if n == 0:
            return {"pq": None, "sq": None, "rq": None, "n": 0}
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}

    def summary(self) -> dict[str, Any]:
        """``{"all": {pq, sq, rq, n}, "things": ..., "stuff": ..., "per_class": {name: {pq, sq, rq, tp, fp, fn}}}``."""
        per_class = {}
        for cat, info in self.categories.items():
            c = self.counts.get(cat, _Counts())
            if c.tp + c.fp + c.fn == 0:
                continue
            denominator = c.tp + 0.5 * c.fp + 0.5 * c.fn
            per_class[str(info["name"])] = {"pq": c.iou / denominator, "sq": c.iou / c.tp if c.tp else 0.0,
                                            "rq": c.tp / denominator, "tp": c.tp, "fp": c.fp, "fn": c.fn}  # fmt: skip
        return {"all": self._average(None), "things": self._average(True), "stuff": self._average(False),
                "per_class": per_class, "images": self.images}  # fmt: skip


@dataclass
class PanopticSet:
    """A COCO panoptic file: its images (in ``images``), ground-truth PNGs and categories."""

    path: Path
    images: Path
    pngs: Path
    categories: dict[int, dict[str, Any]]
    entries: list[dict[str, Any]]  # {"image": path, "png": path, "segments": [...]}

    def __len__(self) -> int:
        return len(self.entries)

    def ground_truth(self, i: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Image ``i``'s segment ids (H, W) and segments, or a one-line error naming the PNG."""
        from PIL import Image, UnidentifiedImageError

        entry = self.entries[i]
        try:
            with Image.open(entry["png"]) as img:
                rgb = np.array(img.convert("RGB"))
        except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
            raise PanopticDataError(f"{entry['png']}: cannot read the panoptic PNG ({exc})") from None
        return rgb_to_id(rgb), entry["segments"]


def read_panoptic(path: str | os.PathLike, images: str | os.PathLike, pngs: str | os.PathLike | None = None
                  ) -> PanopticSet:  # fmt: skip
    """A COCO panoptic JSON with its PNG folder (default: the JSON's path without ``.json``) and image folder."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PanopticDataError(f"{path}: panoptic annotation file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PanopticDataError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list) or not data.get("categories"):
        raise PanopticDataError(f"{path}: not a COCO panoptic file (annotations with segments_info, categories)")
    folder = Path(pngs) if pngs is not None else path.with_suffix("")
    files = {int(im["id"]): im["file_name"] for im in data.get("images", [])}
    entries = []
    for ann in data["annotations"]:
        if "segments_info" not in ann or "file_name" not in ann:
            raise PanopticDataError(f"{path}: annotation of image {ann.get('image_id')} has no segments_info/file_name")
        image = files.get(int(ann["image_id"]))
        if image is None:
            raise PanopticDataError(f"{path}: annotation for image {ann['image_id']}, which is not in its images")
        entries.append({"image": Path(images) / image, "png": folder / ann["file_name"],
                        "segments": list(ann["segments_info"]), "image_id": int(ann["image_id"])})  # fmt: skip
    categories = {int(c["id"]): {"name": c["name"], "isthing": int(c.get("isthing", 1))} for c in data["categories"]}
    return PanopticSet(path, Path(images), folder, categories, entries)
