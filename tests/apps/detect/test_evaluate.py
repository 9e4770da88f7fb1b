"""COCO metrics on hand-made cases whose AP is known, plus model classes matched to categories by name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnapps.apps.detect.evaluate import coco_evaluate, encode_mask, evaluate_detector, to_coco_results
from cnnapps.datasets.coco import load_coco
from cnnapps.results import Instance


def _gt(tmp_path, keypoints=False):
    masks = [np.zeros((100, 100), np.uint8) for _ in range(2)]
    masks[0][10:40, 10:40] = 1
    masks[1][50:90, 50:90] = 1
    anns = []
    for i, (m, box) in enumerate(zip(masks, ([10, 10, 30, 30], [50, 50, 40, 40]), strict=True)):
        ann = {"id": i + 1, "image_id": 1, "category_id": 7, "bbox": box, "area": float(m.sum()), "iscrowd": 0,
               "segmentation": encode_mask(m)}  # fmt: skip
        if keypoints:
            ann["keypoints"] = [box[0] + 5, box[1] + 5, 2, box[0] + 20, box[1] + 20, 2]
            ann["num_keypoints"] = 2
        anns.append(ann)
    cat = {"id": 7, "name": "thing", **({"keypoints": ["a", "b"], "skeleton": [[1, 2]]} if keypoints else {})}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 100}],
                                "annotations": anns, "categories": [cat]}))  # fmt: skip
    return load_coco(path), masks


def test_one_hit_one_miss_one_false_positive(tmp_path):
    coco, masks = _gt(tmp_path)
    fp = np.zeros((100, 100), np.uint8)
    fp[60:70, 0:10] = 1
    instances = [
        Instance("thing", 1, 0.9, (10, 10, 40, 40), encode_mask(masks[0])),  # exact: true positive
        Instance("thing", 1, 0.8, (0, 60, 10, 70), encode_mask(fp)),  # nothing there: false positive
    ]  # the second object is missed
    results = to_coco_results(1, instances, {1: 7})
    assert results[0]["bbox"] == [10, 10, 30, 30] and results[0]["category_id"] == 7
    metrics = coco_evaluate(coco, results, ("bbox", "segm"))
    # recall reaches 0.5 at precision 1 and never more: 51 of COCO's 101 recall points score 1
    for kind in ("bbox", "segm"):
        assert metrics[f"{kind}_ap50"] == pytest.approx(51 / 101)
        assert metrics[f"{kind}_ap"] == pytest.approx(51 / 101)
        assert metrics[f"{kind}_ap_large"] is None  # no large objects in the ground truth


def test_perfect_detections_and_no_detections(tmp_path):
    coco, masks = _gt(tmp_path, keypoints=True)
    boxes = [(10, 10, 40, 40), (50, 50, 90, 90)]
    kps = [[(15, 15, 1.0), (30, 30, 1.0)], [(55, 55, 1.0), (70, 70, 1.0)]]
    instances = [Instance("thing", 1, 0.9, b, encode_mask(m), k) for b, m, k in zip(boxes, masks, kps, strict=True)]
    metrics = coco_evaluate(
        coco, to_coco_results(1, instances, {1: 7}), ("bbox", "segm", "keypoints"), None, ["a", "b"]
    )
    assert metrics["bbox_ap"] == metrics["segm_ap"] == metrics["keypoints_ap"] == pytest.approx(1.0)
    shifted = [
        Instance("thing", 1, 0.9, b, None, [(x + 6, y, s) for x, y, s in k]) for b, k in zip(boxes, kps, strict=True)
    ]
    worse = coco_evaluate(coco, to_coco_results(1, shifted, {1: 7}), ("keypoints",), None, ["a", "b"])
    assert 0 < worse["keypoints_ap"] < 1.0  # OKS drops with distance
    empty = coco_evaluate(coco, [], ("bbox", "segm"))
    assert empty["bbox_ap"] == 0.0 and empty["segm_ap50"] == 0.0


def test_evaluate_detector_matches_classes_by_name(tmp_path):
    import cv2

    coco_path = tmp_path / "gt.json"
    _gt(tmp_path)
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((100, 100, 3), np.uint8))
    from cnnapps.datasets.coco import CocoDataset
    from cnnapps.results import DetectionResult

    class Fixed:
        task = "detect"
        class_names = ("__background__", "other", "thing")

        def predict(self, paths, progress=None):
            insts = [Instance("thing", 2, 0.9, (10, 10, 40, 40)), Instance("other", 1, 0.9, (50, 50, 90, 90))]
            return [DetectionResult(str(p), instances=insts, width=100, height=100) for p in paths]

    report, results = evaluate_detector(Fixed(), CocoDataset(coco_path, tmp_path, "detect"))
    assert [r["category_id"] for r in results] == [7]  # "other" is no category of the file
    assert report["metrics"]["bbox_ap50"] == pytest.approx(51 / 101)
    Fixed.class_names = ("__background__", "cat")
    with pytest.raises(Exception, match="none of its categories"):
        evaluate_detector(Fixed(), CocoDataset(coco_path, tmp_path, "detect"))
