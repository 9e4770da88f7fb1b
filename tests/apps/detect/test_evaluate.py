"""COCO metrics on hand-made cases whose AP is known, plus model classes matched to categories by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

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


def test_pose_eval_matches_keypoints_by_name(tmp_path):
    """A model whose keypoints are listed b, a scored against a file listing a, b: the same points, AP 1 (they
    were scored by position: 0); a file with a keypoint the model lacks is a one-line error, not numpy's."""
    import cv2

    from cnnapps.datasets.coco import CocoDataset
    from cnnapps.errors import CnnappsError
    from cnnapps.results import DetectionResult

    _gt(tmp_path, keypoints=True)
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((100, 100, 3), np.uint8))

    class Truth:  # the file's two people, its keypoints listed the other way round
        task, class_names = "pose", ("__background__", "thing")
        spec = type("Spec", (), {"keypoint_names": ["b", "a"]})

        def predict(self, paths, progress=None):
            people = [Instance("thing", 1, 0.9, (x, y, x + w, y + w), keypoints=[(x + 20, y + 20, 1.0),
                                                                                 (x + 5, y + 5, 1.0)])
                      for x, y, w in ((10, 10, 30), (50, 50, 40))]  # fmt: skip
            return [DetectionResult(str(p), instances=people, width=100, height=100) for p in paths]

    report, _ = evaluate_detector(Truth(), CocoDataset(tmp_path / "gt.json", tmp_path, "pose"))
    assert report["metrics"]["keypoints_ap"] == pytest.approx(1.0)
    Truth.spec.keypoint_names = ["b", "c"]
    with pytest.raises(CnnappsError, match=r"gt.json: keypoints a are not the model's \(it has b, c\)"):
        evaluate_detector(Truth(), CocoDataset(tmp_path / "gt.json", tmp_path, "pose"))


# Size classes: COCO calls an object small below 32² pixels of area, large above 96², medium between. An
# unmatched detection counts in the class of its own area, which must come from what is scored: its mask for
# segm, the extent of its keypoints for keypoints (as pycocotools' loadRes gives results without boxes).
_SIZED_OBJECTS = {  # rows, columns of filled squares: two of each class
    "small": [(slice(10, 30), slice(10, 30)), (slice(10, 30), slice(40, 60))],
    "medium": [(slice(40, 90), slice(10, 60)), (slice(40, 80), slice(70, 110))],
    "large": [(slice(120, 240), slice(10, 130)), (slice(110, 220), slice(140, 250))],
}


def _mask(*regions: tuple[slice, slice]) -> np.ndarray:
    mask = np.zeros((256, 256), np.uint8)
    for rows, cols in regions:
        mask[rows, cols] = 1
    return mask


def _sized_gt(tmp_path):
    """One 256 x 256 image with two small, two medium and two large squares (area = mask area), each with
    three keypoints at its corners and centre."""
    masks = [_mask(r) for regions in _SIZED_OBJECTS.values() for r in regions]
    keypoints = []
    anns = []
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        kps = [(x0 + 2, y0 + 2), ((x0 + x1) // 2, (y0 + y1) // 2), (x1 - 2, y1 - 2)]
        keypoints.append(kps)
        anns.append({"id": i + 1, "image_id": 1, "category_id": 7, "bbox": [x0, y0, x1 - x0, y1 - y0],
                     "area": float(m.sum()), "iscrowd": 0, "segmentation": encode_mask(m),
                     "keypoints": [v for x, y in kps for v in (x, y, 2)], "num_keypoints": 3})  # fmt: skip
    cat = {"id": 7, "name": "thing", "keypoints": ["a", "b", "c"], "skeleton": [[1, 2], [2, 3]]}
    path = tmp_path / "sized.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 256, "height": 256}],
                                "annotations": anns, "categories": [cat]}))  # fmt: skip
    return load_coco(path), masks, keypoints


def _reference_cocoeval(coco, results, iou_type):
    """pycocotools' own evaluation of results that carry only what ``iou_type`` scores (no boxes)."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(results), iou_type)
        if iou_type == "keypoints":
            evaluator.params.kpt_oks_sigmas = np.full(3, 0.07)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def test_segm_size_classes_use_mask_areas(tmp_path):
    """Detections whose boxes and masks fall in different size classes: segm AP_small/medium/large follow the
    masks, as pycocotools on mask-only results and torchmetrics' MeanAveragePrecision(iou_type="segm") do."""
    from torchmetrics.detection import MeanAveragePrecision

    coco, masks, _ = _sized_gt(tmp_path)
    shifted = _mask((slice(13, 33), slice(43, 63)))  # the second small square, 3 px off: IoU 0.57
    detections = [  # (score, box, mask)
        (0.95, (10, 10, 30, 30), masks[0]),
        (0.9, (130, 5, 250, 95), _mask((slice(5, 7), slice(130, 250)), (slice(5, 95), slice(130, 132)))),  # L: small
        (0.85, (10, 40, 60, 90), masks[2]),
        (0.75, (10, 120, 130, 240), masks[4]),
        (0.6, (43, 13, 63, 33), shifted),
        (0.55, (160, 30, 170, 40), _mask((slice(30, 80), slice(160, 210)))),  # medium mask, tiny box
        (0.5, (70, 40, 110, 80), masks[3]),
        (0.45, (200, 60, 240, 100), _mask((slice(60, 90), slice(220, 240)))),  # small mask, medium box
    ]  # the second large square is missed; false positives in each class by mask, in others by box
    instances = [Instance("thing", 1, s, b, encode_mask(m)) for s, b, m in detections]
    results = to_coco_results(1, instances, {1: 7})
    ours = coco_evaluate(coco, results, ("bbox", "segm"))

    mask_only = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    reference = _reference_cocoeval(coco, mask_only, "segm")
    metric = MeanAveragePrecision(iou_type="segm")
    metric.update(
        [{"masks": torch.tensor(np.stack([m for _, _, m in detections])).bool(),
          "scores": torch.tensor([s for s, _, _ in detections]), "labels": torch.full((len(detections),), 7)}],
        [{"masks": torch.tensor(np.stack(masks)).bool(), "labels": torch.full((len(masks),), 7)}],
    )  # fmt: skip
    tm = metric.compute()
    names = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
    tm_names = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")
    for i, (name, tm_name) in enumerate(zip(names, tm_names, strict=True)):
        assert ours[f"segm_{name}"] == pytest.approx(reference[i], abs=1e-9), name
        assert ours[f"segm_{name}"] == pytest.approx(float(tm[tm_name]), abs=1e-6), name
    # the case is one where the box areas would give other figures
    boxed = _reference_cocoeval(coco, [dict(r) for r in results], "segm")
    assert tuple(boxed[3:6]) != tuple(reference[3:6])


def test_keypoint_size_classes_use_keypoint_extent(tmp_path):
    """Keypoint AP_medium/large follow the extent of each detection's keypoints, as pycocotools on results
    without boxes does, not its box."""
    coco, _, keypoints = _sized_gt(tmp_path)
    far = [(150, 10), (200, 40), (245, 90)]  # nowhere near an object, extent 95 x 80
    detections = [  # (score, box, keypoints)
        (0.95, (10, 40, 60, 90), keypoints[2]),
        (0.9, (140, 5, 150, 15), far),  # medium extent, tiny box
        (0.85, (10, 120, 130, 240), keypoints[4]),
        (0.8, (120, 0, 255, 110), [(133, 7), (143, 12), (153, 32)]),  # small extent, large box
        (0.7, (70, 40, 110, 80), [(x + 4, y + 3) for x, y in keypoints[3]]),
        (0.6, (140, 110, 250, 220), keypoints[5]),
        (0.5, (10, 10, 30, 30), keypoints[0]),
    ]
    instances = [Instance("thing", 1, s, b, None, [(x, y, 1.0) for x, y in k]) for s, b, k in detections]
    results = to_coco_results(1, instances, {1: 7})
    ours = coco_evaluate(coco, results, ("bbox", "keypoints"), None, ["a", "b", "c"])

    without_boxes = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    reference = _reference_cocoeval(coco, without_boxes, "keypoints")
    for i, name in enumerate(("ap", "ap50", "ap75", "ap_medium", "ap_large")):
        assert ours[f"keypoints_{name}"] == pytest.approx(reference[i], abs=1e-9), name
    boxed = _reference_cocoeval(coco, [dict(r) for r in results], "keypoints")
    assert tuple(boxed[3:5]) != tuple(reference[3:5])


def test_validation_scores_each_image_once_when_one_cannot_be_read(tmp_path, monkeypatch):
    """A validation set leaves an unreadable image out of its batch (it put the next readable image in its
    place, whose detections were added twice under its id: false positives). A model answering the ground truth
    scores AP 1.0 on what was read, as `eval` does."""
    from types import SimpleNamespace

    from cnnapps.apps.detect.module import DetectionModule
    from cnnapps.datasets.coco import CocoDataset
    from cnnapps.datasets.synthetic import write_coco
    from cnnapps.datasets.training import DetectionDataset, collate_detection, readable_only

    path = write_coco("shapes", tmp_path, "val", 4, size=96)
    first = json.loads(path.read_text())["images"][0]["file_name"]
    (tmp_path / "val" / first).write_bytes(b"not a png")
    dataset = CocoDataset(path, tmp_path / "val", "detect")
    val = DetectionDataset(dataset, list(range(len(dataset))))
    val.substitute = False  # as make_loaders leaves a validation set

    class Truth(torch.nn.Module):  # each image's ground truth as its detections
        spec = SimpleNamespace(shared=False, task="detect", class_names=dataset.class_names, skeleton=[])

        def forward(self, images):
            pairs = [pair for pair in (val[i] for i in range(len(val))) if pair is not None]
            targets = [next(t for image, t in pairs if torch.equal(image, x)) for x in images]
            return [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.full((len(t["boxes"]),), 0.9)}
                    for t in targets]  # fmt: skip

    monkeypatch.setattr("cnnapps.apps.detect.module.run_detector", lambda model, images, **options: model(images))
    module = DetectionModule.__new__(DetectionModule)
    torch.nn.Module.__init__(module)
    module.model, module.val_coco, module._results, module._image_ids = Truth(), dataset, [], []
    module.category_of_label = {i + 1: c for i, c in enumerate(dataset.category_ids)}
    for i in range(len(val)):
        module.validation_step(readable_only(collate_detection)([val[i]]), i)  # None for the unreadable first
    assert list(module._image_ids) == [2, 3, 4]
    metrics = coco_evaluate(dataset.coco, module._results, ("bbox",), list(module._image_ids))
    assert metrics["bbox_ap"] == pytest.approx(1.0)


def test_no_detections_give_none_for_sizes_without_objects():
    """No detections at all: AP 0 for the sizes that have objects, None (pycocotools' -1) for those that have
    none, as one false positive far from the object gives."""
    gt = {"images": [{"id": 1, "file_name": "a.png", "width": 400, "height": 400}],
          "categories": [{"id": 1, "name": "box", "keypoints": ["a"]}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 200, 200], "area": 40000,
                           "iscrowd": 0, "keypoints": [50, 50, 2], "num_keypoints": 1},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [300, 300, 10, 10], "area": 100,
                           "iscrowd": 1, "keypoints": [0, 0, 0], "num_keypoints": 0}]}  # fmt: skip
    coco = load_coco(gt)
    empty = coco_evaluate(coco, [], ("bbox", "keypoints"), [1], ["a"])
    assert empty == {"bbox_ap": 0.0, "bbox_ap50": 0.0, "bbox_ap75": 0.0, "bbox_ap_small": None,
                     "bbox_ap_medium": None, "bbox_ap_large": 0.0, "keypoints_ap": 0.0, "keypoints_ap50": 0.0,
                     "keypoints_ap75": 0.0, "keypoints_ap_medium": None, "keypoints_ap_large": 0.0}  # fmt: skip
    far_off = [{"image_id": 1, "category_id": 1, "bbox": [350, 350, 5, 5], "score": 0.9, "keypoints": [352, 352, 1]}]
    assert coco_evaluate(coco, far_off, ("bbox", "keypoints"), [1], ["a"]) == empty


def _person_and_ball(tmp_path, ball_num_keypoints: bool):
    """A pose file with a keypoint category (person) and one without keypoints (ball), one of each in a.png."""
    import cv2

    kps = [v for i in range(3) for v in (110.0 + 20 * i, 120.0 + 40 * i, 2)]
    extra = {"num_keypoints": 0, "keypoints": []} if ball_num_keypoints else {}
    gt = {"images": [{"id": 1, "file_name": "a.png", "width": 400, "height": 400}],
          "categories": [{"id": 1, "name": "person", "keypoints": ["a", "b", "c"], "skeleton": []},
                         {"id": 2, "name": "ball"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [100, 100, 80, 150], "area": 12000,
                           "iscrowd": 0, "keypoints": kps, "num_keypoints": 3},
                          {"id": 2, "image_id": 1, "category_id": 2, "bbox": [300, 300, 40, 40], "area": 1600,
                           "iscrowd": 0, **extra}]}  # fmt: skip
    (tmp_path / "pose.json").write_text(json.dumps(gt))
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((400, 400, 3), np.uint8))
    person = Instance("person", 1, 0.9, (100, 100, 180, 250), None, [(kps[i], kps[i + 1], 1.0) for i in (0, 3, 6)])
    return tmp_path / "pose.json", person


@pytest.mark.parametrize("ball_num_keypoints", [False, True])
def test_pose_scores_only_the_keypoint_categories(tmp_path, ball_num_keypoints):
    """A category without keypoints (which the pose dataset leaves out, so the model never learns it) is not
    scored: no KeyError for its missing num_keypoints, no AP 0 for its box averaged in; in `eval pose` and in
    training's validation alike."""
    from types import SimpleNamespace

    from cnnapps.apps.common.training import TrainConfig
    from cnnapps.apps.detect.module import DetectionModule
    from cnnapps.datasets.coco import CocoDataset
    from cnnapps.results import DetectionResult

    path, person = _person_and_ball(tmp_path, ball_num_keypoints)
    dataset = CocoDataset(path, tmp_path, "pose")
    assert dataset.category_ids == [1]

    class Truth:
        task, class_names = "pose", ("__background__", "person")
        spec = SimpleNamespace(keypoint_names=["a", "b", "c"])

        def predict(self, paths, progress=None):
            return [DetectionResult(str(p), instances=[person], width=400, height=400) for p in paths]

    report, _ = evaluate_detector(Truth(), dataset)
    assert report["metrics"]["bbox_ap"] == pytest.approx(1.0) and report["metrics"]["keypoints_ap"] == pytest.approx(1)
    assert report["categories_left_out"] == []

    model = torch.nn.Module()
    model.spec = SimpleNamespace(task="pose")
    module = DetectionModule(model, TrainConfig(), dataset)
    module.trainer = SimpleNamespace(sanity_checking=False)
    recorded = []
    module.log, module.record_epoch = (lambda *args, **kwargs: None), recorded.append
    module._results, module._image_ids = to_coco_results(1, [person], module.category_of_label), [1]
    module.on_validation_epoch_end()
    assert recorded[0]["val_bbox_ap"] == pytest.approx(1.0) and recorded[0]["val_keypoints_ap"] == pytest.approx(1)


def test_eval_detect_scores_the_categories_the_model_knows(tmp_path, caplog):
    """A file category that is no class of the model is left out of the AP (not averaged in as 0), listed in the
    report and warned of."""
    import cv2

    from cnnapps.datasets.coco import CocoDataset
    from cnnapps.results import DetectionResult

    path, person = _person_and_ball(tmp_path, ball_num_keypoints=False)
    dataset = CocoDataset(path, tmp_path, "detect")
    assert dataset.category_ids == [1, 2]
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((400, 400, 3), np.uint8))

    class Boxes:
        task, class_names = "detect", ("__background__", "person", "dog")

        def predict(self, paths, progress=None):
            found = [Instance("person", 1, 0.9, person.box), Instance("dog", 2, 0.8, (300, 300, 340, 340))]
            return [DetectionResult(str(p), instances=found, width=400, height=400) for p in paths]

    with caplog.at_level("WARNING", logger="cnnapps"):
        report, results = evaluate_detector(Boxes(), dataset)
    assert report["metrics"]["bbox_ap"] == pytest.approx(1.0)  # ball's AP 0 is not averaged in
    assert report["categories_left_out"] == ["ball"] and [r["category_id"] for r in results] == [1]
    assert "categories left out of the AP" in caplog.text and "ball" in caplog.text
    # the model knowing both: the ball it misses counts
    Boxes.class_names = ("__background__", "person", "ball")
    report, _ = evaluate_detector(Boxes(), dataset)
    assert report["categories_left_out"] == [] and 0.0 < report["metrics"]["bbox_ap"] < 1.0


def test_validation_pastes_masks_into_their_box_windows_and_scores_as_the_full_masks_did(tmp_path, monkeypatch):
    """Training's validation of a Mask R-CNN keeps each mask as a window around its box (an image-sized float mask
    per detection, 100 per image, took gigabytes on large validation images): the same RLE masks as pasting them
    whole, so the same AP."""
    from cnnapps.apps.common.training import TrainConfig
    from cnnapps.apps.detect.model import create_detector
    from cnnapps.apps.detect.module import DetectionModule
    from cnnapps.apps.detect.predictor import to_detections, to_result
    from cnnapps.datasets.coco import CocoDataset
    from cnnapps.datasets.synthetic import write_coco

    path = write_coco("shapes", tmp_path, "val", 2, size=96)
    dataset = CocoDataset(path, tmp_path / "val", "segment")
    torch.manual_seed(0)
    model = create_detector("segment", "resnet18", num_classes=len(dataset.class_names),
                            class_names=dataset.class_names, backbone_weights=None, fpn_channels=16, min_size=96,
                            max_size=128).eval()  # fmt: skip
    model.roi_heads.score_thresh = 0.0
    images = [torch.rand(3, 90, 120, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with torch.no_grad():
        whole = [to_result("", to_detections(out, 90, 120), 90, 120, model.spec) for out in model(images)]
    expected = [r for i, result in enumerate(whole) for r in to_coco_results(i + 1, result.instances,
                {k + 1: c for k, c in enumerate(dataset.category_ids)})]  # fmt: skip
    assert len(expected) > 10 and all("segmentation" in r for r in expected)

    def no_image_sized_masks(*args, **kwargs):
        raise AssertionError("a mask pasted at the image's size")

    monkeypatch.setattr("torchvision.models.detection.transform.paste_masks_in_image", no_image_sized_masks)
    module = DetectionModule(model, TrainConfig(), dataset).eval()  # as Lightning validates
    with torch.no_grad():
        module.validate_batch((images, [{"image_id": torch.tensor(1)}, {"image_id": torch.tensor(2)}]))
    assert module._image_ids == [1, 2] and len(module._results) == len(expected)
    for got, want in zip(module._results, expected, strict=True):
        assert got["segmentation"] == want["segmentation"] and got["score"] == pytest.approx(want["score"])
