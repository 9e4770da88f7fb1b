"""COCO reading (polygons, RLE, crowd, empty images, keypoints) and the synthetic scenes written as COCO."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnapps.datasets.coco import CocoDataset, CocoError
from cnnapps.datasets.synthetic import people_scene, shapes_scene, write_coco
from cnnapps.errors import CnnappsError


@pytest.mark.parametrize("rle", [False, True])
def test_shapes_masks_survive_the_coco_round_trip(tmp_path, rle):
    path = write_coco("shapes", tmp_path, "train", 6, seed=3, size=256, rle=rle)
    data = CocoDataset(path, tmp_path / "train", "segment")
    assert data.class_names == ["__background__", "circle", "square", "triangle"]
    rng = np.random.default_rng(3)
    for i in range(6):
        _, instances = shapes_scene(rng, 256)
        target = data.target(i)
        assert len(target.boxes) == len(instances)
        for inst, mask, box, label in zip(instances, target.masks, target.boxes, target.labels, strict=True):
            iou = (mask & inst.mask).sum() / (mask | inst.mask).sum()
            assert iou == 1.0 if rle else iou > 0.8  # polygons trace pixel centres: edges lose half a pixel
            assert np.allclose(box, inst.box)
            assert data.class_names[label] == inst.category


def test_crowd_and_empty_images(tmp_path):
    path = write_coco("shapes", tmp_path, "train", 2, seed=0, size=64)
    coco = json.loads(path.read_text())
    coco["images"].append({"id": 99, "file_name": "empty.png", "width": 64, "height": 64})
    first = coco["annotations"][0]
    crowd = {**first, "id": 999, "iscrowd": 1, "segmentation": {"size": [64, 64], "counts": [0, 64 * 64]}}
    coco["annotations"].append(crowd)
    path.write_text(json.dumps(coco))
    data = CocoDataset(path, tmp_path / "train", "segment")
    assert len(data) == 3
    empty = data.target(data.image_ids.index(99))
    assert empty.boxes.shape == (0, 4) and empty.masks.shape == (0, 64, 64)
    with_crowd = data.target(data.image_ids.index(first["image_id"]))
    assert len(with_crowd.boxes) == sum(
        1 for a in coco["annotations"] if a["image_id"] == first["image_id"] and not a["iscrowd"]
    )


def test_people_keypoints(tmp_path):
    path = write_coco("people", tmp_path, "val", 4, seed=1, size=128)
    data = CocoDataset(path, tmp_path / "val", "pose")
    assert data.class_names == ["__background__", "person"] and len(data.keypoint_names) == 17
    assert len(data.skeleton) == 19
    target = data.target(0)
    k = target.keypoints
    assert k.shape[1:] == (17, 3)
    inside = k[..., 2] > 0
    boxes = target.boxes[:, None, :]
    assert ((k[..., 0] >= boxes[..., 0]) & (k[..., 0] <= boxes[..., 2]))[inside].all()
    # the person's left is on the image's right: left shoulder right of the right shoulder
    assert (k[:, 5, 0] > k[:, 6, 0]).all()


def test_people_without_a_num_keypoints_field_count_their_visible_keypoints(tmp_path):
    path = write_coco("people", tmp_path, "val", 2, seed=1, size=128)
    coco = json.loads(path.read_text())
    for ann in coco["annotations"]:
        del ann["num_keypoints"]  # optional in files other tools write
    path.write_text(json.dumps(coco))
    for images in (tmp_path / "val", None):  # read as it is (--images given) or through the format readers
        data = CocoDataset(path, images, "pose")
        people = sum(1 for a in coco["annotations"] if a["image_id"] == data.image_ids[0])
        assert people and len(data.target(0).keypoints) == people


def test_people_scene_keypoints_lie_on_drawn_pixels():
    rng = np.random.default_rng(0)
    image, people = people_scene(rng, 128)
    background = np.median(image.reshape(-1, 3), axis=0)
    for person in people:
        for x, y, v in person.keypoints[5:]:  # joints sit on limb strokes
            if v:
                patch = image[max(0, int(y) - 2) : int(y) + 3, max(0, int(x) - 2) : int(x) + 3].reshape(-1, 3)
                assert np.abs(patch.astype(int) - background).sum(1).max() > 60


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "annotation file not found"), ("{", "not a readable JSON"), ('{"annotations": []}', "no 'images' list")],
)
def test_bad_annotation_files(tmp_path, content, message):
    path = tmp_path / "ann.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CnnappsError, match=message):  # CocoError, or the format reader's FormatError
        CocoDataset(path, tmp_path, "segment")


def test_pose_needs_a_keypoint_category(tmp_path):
    path = write_coco("shapes", tmp_path, "train", 1, size=64)
    with pytest.raises(CocoError, match="no category with keypoints"):
        CocoDataset(path, tmp_path / "train", "pose")


@pytest.mark.parametrize("keypoints", [lambda k: k[:-3], lambda k: [*k, 1, 2, 2], lambda k: "left_eye"])
@pytest.mark.parametrize("images", ["train", None])
def test_keypoints_of_the_wrong_length_are_left_out_naming_the_annotation(tmp_path, keypoints, images, caplog):
    path = write_coco("people", tmp_path, "train", 2, seed=1, size=128)
    coco = json.loads(path.read_text())
    bad = coco["annotations"][1]
    bad["keypoints"] = keypoints(bad["keypoints"])
    path.write_text(json.dumps(coco))
    data = CocoDataset(path, images and tmp_path / images, "pose")  # with --images or without: checked alike
    assert sum(len(data.target(i).keypoints) for i in range(len(data))) == len(coco["annotations"]) - 1
    assert f"annotations[1] (id {bad['id']}) keypoints: expected 3 x 17 numbers" in caplog.text


@pytest.mark.parametrize("images", ["train", None])
def test_an_annotation_without_a_box_or_of_an_unknown_category_is_left_out(tmp_path, images, caplog):
    # with --images the file was read unchecked: training died in its first epoch with KeyError: 'bbox'
    path = write_coco("shapes", tmp_path, "train", 2, seed=1, size=64)
    coco = json.loads(path.read_text())
    del coco["annotations"][0]["bbox"]
    coco["annotations"][1]["category_id"] = 99
    path.write_text(json.dumps(coco))
    data = CocoDataset(path, images and tmp_path / images, "segment")
    assert sum(len(data.target(i).boxes) for i in range(len(data))) == len(coco["annotations"]) - 2
    assert "2 items left out" in caplog.text


def test_a_box_outside_its_image_is_left_out(tmp_path):
    # clipped to the image it had no width, and albumentations stopped the training (x_max <= x_min)
    path = write_coco("shapes", tmp_path, "train", 1, seed=1, size=64)
    coco = json.loads(path.read_text())
    coco["annotations"][0]["bbox"] = [200.0, 10.0, 20.0, 20.0]
    coco["annotations"][0].pop("segmentation", None)
    path.write_text(json.dumps(coco))
    target = CocoDataset(path, tmp_path / "train", "segment").target(0)
    assert len(target.boxes) == len(target.labels) == len(target.masks) == len(coco["annotations"]) - 1
    assert (target.boxes[:, 2] - target.boxes[:, 0] > 1).all()


def test_keypoints_without_their_count_are_evaluated(tmp_path):
    # pycocotools reads num_keypoints of every ground truth: eval pose, and training after its first epoch, died
    from cnnapps.apps.detect.evaluate import coco_evaluate

    path = write_coco("people", tmp_path, "val", 2, seed=1, size=128)
    coco = json.loads(path.read_text())
    for ann in coco["annotations"]:
        ann.pop("num_keypoints")
    path.write_text(json.dumps(coco))
    data = CocoDataset(path, tmp_path / "val", "pose")
    truth = [{"image_id": a["image_id"], "category_id": a["category_id"], "keypoints": a["keypoints"], "score": 1.0,
              "bbox": a["bbox"]} for a in coco["annotations"]]  # fmt: skip
    metrics = coco_evaluate(data.coco, truth, ["keypoints"], keypoint_names=data.keypoint_names)
    assert metrics["keypoints_ap"] == pytest.approx(1.0)


def test_a_detection_task_does_not_look_at_keypoints(tmp_path):
    path = write_coco("people", tmp_path, "train", 1, seed=1, size=128)
    coco = json.loads(path.read_text())
    coco["annotations"][0]["keypoints"] = [1, 2]
    path.write_text(json.dumps(coco))
    assert len(CocoDataset(path, tmp_path / "train", "detect").target(0).boxes) == len(coco["annotations"])


def test_an_annotation_counting_keypoints_it_does_not_have_is_refused(tmp_path):
    path = write_coco("people", tmp_path, "train", 1, seed=1, size=128)
    coco = json.loads(path.read_text())
    bad = coco["annotations"][0]
    del bad["keypoints"]  # num_keypoints > 0 stays
    path.write_text(json.dumps(coco))
    for images in (tmp_path / "train", None):
        with pytest.raises(CocoError, match=rf"annotation {bad['id']}: keypoints is None; expected 3 x 17 = 51"):
            CocoDataset(path, images, "pose")


def test_a_box_with_an_empty_keypoint_list_and_none_counted_is_left_out_as_before(tmp_path):
    """A person box nobody labelled (``keypoints: []``, ``num_keypoints: 0``) is not a broken annotation."""
    path = write_coco("people", tmp_path, "train", 2, seed=1, size=128)
    coco = json.loads(path.read_text())
    coco["annotations"][1].update(keypoints=[], num_keypoints=0)
    path.write_text(json.dumps(coco))
    data = CocoDataset(path, tmp_path / "train", "pose")
    assert sum(len(data.target(i).keypoints) for i in range(len(data))) == len(coco["annotations"]) - 1


@pytest.mark.parametrize("pair", [[1, 30], [0, 1], "nose-eye"])
def test_a_skeleton_pair_that_is_not_two_keypoints_is_refused(tmp_path, pair):
    # kept without a word: drawn between the wrong joints, or none
    path = write_coco("people", tmp_path, "train", 1, seed=1, size=64)
    coco = json.loads(path.read_text())
    coco["categories"][0]["skeleton"] = [[1, 2], pair]
    path.write_text(json.dumps(coco))
    with pytest.raises(CocoError, match=r"category 'person': skeleton pair .* is not two keypoint numbers of 1\.\.17"):
        CocoDataset(path, tmp_path / "train", "pose")
