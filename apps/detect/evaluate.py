"""COCO metrics by pycocotools: box AP, mask AP and keypoint (OKS) AP with AP50/AP75/small/medium/large."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from cnnapps.apps.detect.zoo import COCO_KEYPOINTS, COCO_OKS_SIGMAS

log = logging.getLogger("cnnapps")

#: which COCOeval iouTypes each task reports
IOU_TYPES = {"detect": ("bbox",), "segment": ("bbox", "segm"), "pose": ("bbox", "keypoints")}
#: the metric that picks the best checkpoint (AP over IoU/OKS 0.5:0.95: AP50 saturates early)
MAIN_METRIC = {"detect": "bbox_ap", "segment": "segm_ap", "pose": "keypoints_ap"}
_STAT_NAMES = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
_KEYPOINT_STAT_NAMES = ("ap", "ap50", "ap75", "ap_medium", "ap_large")


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """A binary (H, W) mask as COCO compressed RLE with a JSON-ready ``counts`` string."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def to_coco_results(
    image_id: int, instances: Sequence[Any], category_of_label: dict[int, int], keypoint_order: Sequence[int] = ()
) -> list[dict]:
    """COCO results entries for one image's :class:`~cnnapps.results.Instance` list; ``keypoint_order``: the
    model's keypoint for each of the annotation file's, when they are listed otherwise (:func:`keypoint_order`)."""
    out = []
    for inst in instances:
        x0, y0, x1, y1 = inst.box
        entry: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(category_of_label[inst.label_index]),
            "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
            "score": round(float(inst.score), 5),
        }
        if inst.mask is not None:
            entry["segmentation"] = inst.mask
        if inst.keypoints is not None:
            points = [inst.keypoints[i] for i in keypoint_order] if keypoint_order else inst.keypoints
            entry["keypoints"] = [round(float(v), 2) for xy in points for v in (xy[0], xy[1], 1)]
        out.append(entry)
    return out


def keypoint_order(model_names: Sequence[str], file_names: Sequence[str], source: object) -> list[int]:
    """Which of the model's keypoints is each of the annotation file's, matched by name (results are scored in
    the file's order); a keypoint of the file the model does not have is a one-line error."""
    from cnnapps.errors import CnnappsError

    index = {name: i for i, name in enumerate(model_names)}
    missing = [name for name in file_names if name not in index]
    if missing:
        raise CnnappsError(f"{source}: keypoints {', '.join(missing[:5])} are not the model's (it has "
                           f"{', '.join(list(model_names)[:5])}{'...' if len(model_names) > 5 else ''})")  # fmt: skip
    if len(index) < len(model_names) or len(set(file_names)) < len(file_names):
        raise CnnappsError(f"{source}: keypoint names repeat; they cannot be matched to the model's")
    return [index[name] for name in file_names]


def oks_sigmas(keypoint_names: Sequence[str]) -> np.ndarray:
    """COCO's per-keypoint sigmas for its person keypoints, by name (in any order); 0.07 for other keypoints."""
    sigma = dict(zip(COCO_KEYPOINTS, COCO_OKS_SIGMAS, strict=True))
    return np.array([sigma.get(name, 0.07) for name in keypoint_names])


def coco_evaluate(
    coco_gt: Any,
    results: list[dict[str, Any]],
    iou_types: Sequence[str],
    image_ids: Sequence[int] | None = None,
    keypoint_names: Sequence[str] = (),
    category_ids: Sequence[int] | None = None,
) -> dict[str, float | None]:
    """``{iou_type}_{ap, ap50, ap75, ap_small, ap_medium, ap_large}`` over ``image_ids`` (all by default) and
    ``category_ids``, the categories the model is scored on (by default the file's, those with keypoints when
    ``keypoints`` is scored, as :class:`~cnnapps.datasets.coco.CocoDataset` keeps them for pose).

    No detections at all score 0 where there are objects; sizes without objects give None (pycocotools' -1)."""
    from pycocotools.cocoeval import COCOeval

    if category_ids is None:
        cats = coco_gt.loadCats(coco_gt.getCatIds())
        category_ids = [c["id"] for c in cats if c.get("keypoints") or "keypoints" not in iou_types]
    metrics: dict[str, float | None] = {}
    for iou_type in iou_types:
        names = _KEYPOINT_STAT_NAMES if iou_type == "keypoints" else _STAT_NAMES
        usable = [_scored_part(r, iou_type) for r in results if _key(iou_type) in r]
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(usable) if usable else _no_results(coco_gt)  # loadRes refuses an empty list
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            if image_ids is not None:
                evaluator.params.imgIds = list(image_ids)
            evaluator.params.catIds = list(category_ids)
            if iou_type == "keypoints":
                evaluator.params.kpt_oks_sigmas = oks_sigmas(keypoint_names)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        for name, value in zip(names, evaluator.stats, strict=False):
            metrics[f"{iou_type}_{name}"] = float(value) if value >= 0 else None  # -1: no such objects
    return metrics


def _no_results(coco_gt: Any) -> Any:
    """An empty results set on ``coco_gt``'s images, for COCOeval to score (AP 0 where there are objects)."""
    from pycocotools.coco import COCO

    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                       "categories": list(coco_gt.dataset.get("categories", []))}  # fmt: skip
    coco_dt.createIndex()
    return coco_dt


def _key(iou_type: str) -> str:
    return {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}[iou_type]


def _scored_part(result: dict[str, Any], iou_type: str) -> dict[str, Any]:
    """A results entry with only what ``iou_type`` scores. pycocotools' ``loadRes`` takes a detection's area
    (its size class) from its box whenever it has one: without it, the area is the mask's for segm and the
    extent of the keypoints for keypoints, as COCO's own mask and keypoint results give it."""
    key = _key(iou_type)
    return {"image_id": result["image_id"], "category_id": result["category_id"], key: result[key],
            "score": result["score"]}  # fmt: skip


def evaluate_detector(
    predictor: Any, dataset: Any, progress: Any = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run ``predictor`` over a :class:`~cnnapps.datasets.coco.CocoDataset` and score it with pycocotools.

    Model classes are matched to the file's categories by name, and AP is averaged over the categories matched:
    the file's categories the model does not know are left out (listed in the report's ``categories_left_out``
    and in a warning), as they would otherwise count as AP 0. Returns the report (metrics, counts, categories
    left out, unreadable images) and the COCO results list (what ``--save-results`` writes)."""
    from cnnapps.errors import CnnappsError

    by_name = {name: cid for name, cid in zip(dataset.class_names[1:], dataset.category_ids, strict=True)}
    category_of_label = {i: by_name[n] for i, n in enumerate(predictor.class_names) if n in by_name}
    if not category_of_label:
        raise CnnappsError(
            f"{dataset.path}: none of its categories ({', '.join(dataset.class_names[1:6])}...) is a class of the "
            f"model ({', '.join(predictor.class_names[1:6])}...)"
        )
    category_ids = sorted(set(category_of_label.values()))
    left_out = [name for name, cid in zip(dataset.class_names[1:], dataset.category_ids, strict=True)
                if cid not in category_ids]  # fmt: skip
    if left_out:
        log.warning("%s: categories left out of the AP (no class of the model has the name): %s", dataset.path,
                    ", ".join(left_out))  # fmt: skip
    scored = IOU_TYPES[predictor.task]
    order: list[int] = []
    if "keypoints" in scored:  # results in the file's keypoint order
        order = keypoint_order(predictor.spec.keypoint_names, dataset.keypoint_names, dataset.path)
    paths = [dataset.image_path(i) for i in range(len(dataset))]
    results, failed, evaluated = [], [], []
    for image_id, result in zip(dataset.image_ids, predictor.predict(paths, progress=progress), strict=True):
        if not result.ok:
            failed.append({"path": result.source, "error": result.error})
            continue
        evaluated.append(image_id)
        known = [i for i in result.instances if i.label_index in category_of_label]
        results.extend(to_coco_results(image_id, known, category_of_label, order))
    metrics = coco_evaluate(dataset.coco, results, scored, evaluated, dataset.keypoint_names, category_ids)
    report = {"task": predictor.task, "images": len(evaluated), "detections": len(results), "metrics": metrics,
              "categories_left_out": left_out, "failed": failed}  # fmt: skip
    return report, results
