"""Semantic scores from one confusion matrix, checked against torchmetrics and a plain numpy computation; PQ
matching as panopticapi does it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cnnapps.apps.semantic.evaluate import class_lookup, confusion_matrix, scores
from cnnapps.apps.semantic.pq import PanopticDataError, PanopticQuality, id_to_rgb, rgb_to_id
from cnnapps.errors import CnnappsError


def test_scores_match_torchmetrics_and_numpy():
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_jaccard_index

    rng = np.random.default_rng(0)
    k = 5
    truth = rng.integers(0, k - 1, (3, 40, 50))  # class 4 never occurs in the truth
    pred = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, k, truth.shape))
    truth[:, :4] = 255
    confusion = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(truth), k, 255).numpy()
    found = scores(confusion)

    valid = truth != 255
    plain = np.zeros((k, k), np.int64)
    np.add.at(plain, (truth[valid], pred[valid]), 1)
    assert np.array_equal(confusion, plain)
    p, t = torch.from_numpy(pred), torch.from_numpy(truth)
    iou = multiclass_jaccard_index(p, t, k, average=None, ignore_index=255).numpy()
    assert np.allclose(found["iou"], iou, atol=1e-6)  # class 4: predicted, never true -> IoU 0
    assert found["miou"] == pytest.approx(float(iou.mean()), abs=1e-6)
    accuracy = float(multiclass_accuracy(p, t, k, average="micro", ignore_index=255))
    assert found["pixel_acc"] == pytest.approx(accuracy, abs=1e-6)
    recall = np.diag(plain)[:4] / plain.sum(1)[:4]
    assert found["mean_acc"] == pytest.approx(float(recall.mean()), abs=1e-9) and found["acc"][4] is None
    frequency = plain.sum(1) / plain.sum()
    assert found["fwiou"] == pytest.approx(float((frequency * iou).sum()), abs=1e-6)


def test_a_class_absent_everywhere_is_left_out_of_the_mean():
    confusion = np.array([[5, 1, 0], [0, 4, 0], [0, 0, 0]])
    found = scores(confusion)
    assert found["iou"][2] is None
    assert found["miou"] == pytest.approx((5 / 6 + 4 / 5) / 2)


def test_classes_meet_by_name():
    lut = class_lookup(["sky", "grass", "dot"], ["grass", "sky"], 255)
    assert lut[0] == 1 and lut[1] == 0 and lut[255] == 255
    with pytest.raises(Exception, match="the data has classes the model does not know: cloud"):
        class_lookup(["sky"], ["sky", "cloud"], 255)


def test_a_class_name_given_twice_is_refused_on_either_side():
    with pytest.raises(CnnappsError, match=r"^m\.safetensors: classes 0 and 2 are both named 'sky'; classes meet"):
        class_lookup(["sky", "grass", "sky"], ["sky"], 255, model_source="m.safetensors")
    with pytest.raises(CnnappsError, match=r"^the data: classes 0 and 1 are both named 'background'"):
        class_lookup(["background", "cat"], ["background", "background", "cat"], 255)


def test_a_perfect_prediction_of_coco_data_with_a_background_category_scores_one(tmp_path):
    import json

    from PIL import Image

    from cnnapps.apps.semantic.evaluate import evaluate_semantic
    from cnnapps.apps.semantic.result import SemanticResult
    from cnnapps.datasets.semantic import read_semantic_data

    (tmp_path / "img").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "img" / "a.png")
    square = {"bbox": [12, 5, 5, 5], "area": 25, "iscrowd": 0, "segmentation": [[12, 5, 17, 5, 17, 10, 12, 10]]}
    half = {"bbox": [0, 0, 10, 20], "area": 200, "iscrowd": 0, "segmentation": [[0, 0, 10, 0, 10, 20, 0, 20]]}
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 20}],
            "categories": [{"id": 1, "name": "background"}, {"id": 2, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, **half},
                            {"id": 2, "image_id": 1, "category_id": 2, **square}]}  # fmt: skip
    (tmp_path / "a.json").write_text(json.dumps(coco))
    data = read_semantic_data(tmp_path / "a.json", images=tmp_path / "img")
    truth = data.mask(0, (20, 20)).astype(np.uint8)

    class Perfect:
        class_names = tuple(data.class_names)

        def predict(self, paths):
            return [SemanticResult(str(p), labels=truth, class_names=self.class_names) for p in paths]

    report = evaluate_semantic(Perfect(), data).to_dict()
    assert report["class_names"] == ["background", "cat"] and report["miou"] == pytest.approx(1.0)


def test_panoptic_png_ids_round_trip():
    ids = np.array([[0, 1, 256], [65536 + 7, 1000, 3]])
    assert np.array_equal(rgb_to_id(id_to_rgb(ids)), ids)


CATEGORIES = {1: {"name": "sky", "isthing": 0}, 2: {"name": "dot", "isthing": 1}}


def _gt():
    ids = np.zeros((10, 10), np.int64)
    ids[:5] = 1  # sky
    ids[6:9, 1:4] = 2  # a dot of 9 pixels
    ids[6:9, 6:9] = 3  # another dot of 9 pixels
    return ids, [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 2}, {"id": 3, "category_id": 2}]


def test_pq_of_a_perfect_prediction_is_one():
    quality = PanopticQuality(CATEGORIES)
    ids, segments = _gt()
    quality.add(ids, segments, ids * 7, [{"id": s["id"] * 7, "category_id": s["category_id"]} for s in segments])
    found = quality.summary()
    assert found["all"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 2}
    assert found["things"]["pq"] == found["stuff"]["pq"] == 1.0


def test_pq_matching_needs_iou_above_a_half_and_leaves_void_out():
    quality = PanopticQuality(CATEGORIES)
    gt, segments = _gt()
    pred = np.zeros_like(gt)
    pred[:4] = 10  # sky: 40 of its 50 pixels -> IoU 0.8
    pred[5, :] = 10  # ... and a void row (row 5 is unlabelled): left out of the union
    pred[6:9, 1:3] = 20  # first dot: 6 of 9 pixels -> IoU 6/9, a match
    pred[7:9, 6:8] = 30  # second dot: 4 of 9 pixels -> IoU 4/9, no match: one FP and one FN
    quality.add(gt, segments, pred, [{"id": 10, "category_id": 1}, {"id": 20, "category_id": 2},
                                     {"id": 30, "category_id": 2}])  # fmt: skip
    found = quality.summary()
    sky, dot = found["per_class"]["sky"], found["per_class"]["dot"]
    assert (sky["tp"], sky["fp"], sky["fn"]) == (1, 0, 0) and sky["pq"] == pytest.approx(0.8)
    assert (dot["tp"], dot["fp"], dot["fn"]) == (1, 1, 1)
    assert dot["sq"] == pytest.approx(6 / 9) and dot["rq"] == pytest.approx(1 / 2)
    assert dot["pq"] == pytest.approx((6 / 9) / 2)
    assert found["all"]["pq"] == pytest.approx((0.8 + 6 / 18) / 2)


def test_pq_ignores_predictions_mostly_on_void_or_crowd():
    categories = {2: {"name": "dot", "isthing": 1}}
    gt = np.zeros((6, 6), np.int64)
    gt[:3, :3] = 5  # a crowd region of dots
    quality = PanopticQuality(categories)
    pred = np.zeros_like(gt)
    pred[:3, :3] = 1  # on the crowd region: neither TP nor FP
    pred[4:, 4:] = 2  # on void: not an FP either
    quality.add(gt, [{"id": 5, "category_id": 2, "iscrowd": 1}], pred,
                [{"id": 1, "category_id": 2}, {"id": 2, "category_id": 2}])  # fmt: skip
    assert quality.summary()["all"]["n"] == 0  # nothing counted for dots at all
    with pytest.raises(PanopticDataError, match="prediction segment 9 is in the picture but not in its list"):
        quality.add(gt, [{"id": 5, "category_id": 2, "iscrowd": 1}], np.full_like(gt, 9), [])


def test_evaluation_lists_what_it_cannot_use_and_scores_the_rest(tmp_path):
    import cv2

    from cnnapps.apps.semantic.evaluate import evaluate_semantic
    from cnnapps.apps.semantic.result import SemanticResult
    from cnnapps.datasets.semantic import read_semantic_data

    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    (tmp_path / "classes.txt").write_text("x\ny\n")
    truth = np.zeros((8, 8), np.uint8)
    truth[:, 4:] = 1
    for name, mask in (("a", truth), ("b", truth[:4]), ("c", truth + 3)):
        cv2.imwrite(str(tmp_path / "images" / f"{name}.png"), np.zeros((8, 8, 3), np.uint8))
        cv2.imwrite(str(tmp_path / "masks" / f"{name}.png"), mask)

    class AllX:
        class_names = ("x", "y")

        def predict(self, paths):
            return [
                SemanticResult(str(p), labels=np.zeros((8, 8), np.uint8), class_names=self.class_names) for p in paths
            ]

    report = evaluate_semantic(AllX(), read_semantic_data(tmp_path)).to_dict()
    assert report["images"] == 1 and report["confusion"] == [[32, 0], [32, 0]]
    assert report["miou"] == pytest.approx(0.25) and report["pixel_acc"] == pytest.approx(0.5)
    failed = {Path(f["path"]).name: f["error"] for f in report["failed"]}
    assert set(failed) == {"b.png", "c.png"}
    assert (
        "mask is 8x4 but its image is 8x8" in failed["b.png"]
        and "class index 3, 4 at 64 pixels, beyond the 2 classes" in failed["c.png"]
    )
