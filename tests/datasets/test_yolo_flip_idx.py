"""ultralytics' ``flip_idx``: read from a pose data.yaml (checked), carried in the COCO category as ``flip_index``
through conversion, and written back as ``flip_idx``."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from cnnapps.datasets.coco import CocoDataset, CocoError
from cnnapps.datasets.formats import FormatError, convert

LINE = "0 0.5 0.5 0.6 0.6 0.3 0.5 2 0.7 0.5 2 0.5 0.3 2\n"


def write_pose_set(root, flip_idx="[1, 0, 2]", extra=""):
    """One 100x100 image with one object of three unnamed keypoints; ``flip_idx`` as written in data.yaml."""
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    Image.new("RGB", (100, 100)).save(root / "images" / "train" / "a.png")
    (root / "labels" / "train" / "a.txt").write_text(LINE)
    flip = f"flip_idx: {flip_idx}\n" if flip_idx is not None else ""
    yaml = f"path: .\ntrain: images/train\nval: images/train\nnames: {{0: person}}\nkpt_shape: [3, 3]\n{flip}{extra}"
    (root / "data.yaml").write_text(yaml)
    return root / "data.yaml"


def test_flip_idx_of_the_yaml_is_the_datasets_flip_index(tmp_path):
    data = CocoDataset(write_pose_set(tmp_path), None, "pose")
    assert data.keypoint_names == ["kp1", "kp2", "kp3"]  # no kpt_names: the names say nothing about sides
    assert data.flip_index == [1, 0, 2]


def test_without_flip_idx_the_dataset_has_none(tmp_path):
    assert CocoDataset(write_pose_set(tmp_path, None), None, "pose").flip_index is None


@pytest.mark.parametrize("flip_idx", ["[1, 1, 2]", "[1, 0]", "[1, 0, 3]", "left", "[1, 0, x]"])
def test_a_flip_idx_that_is_no_permutation_is_refused_in_one_line(tmp_path, flip_idx):
    path = write_pose_set(tmp_path, flip_idx)
    with pytest.raises(FormatError, match=r"data\.yaml: flip_idx: expected a permutation of 0\.\.2") as caught:
        CocoDataset(path, None, "pose")
    assert "\n" not in str(caught.value)
    with pytest.raises(FormatError, match="flip_idx"):
        convert(path, tmp_path / "out.json", to="coco")


def test_flip_idx_goes_through_coco_and_back(tmp_path):
    path = write_pose_set(tmp_path / "src")
    assert convert(path, tmp_path / "coco.json", to="coco").ok
    cats = json.loads((tmp_path / "coco.json").read_text())["categories"]
    assert cats[0]["flip_index"] == [1, 0, 2]
    assert CocoDataset(tmp_path / "coco.json", None, "pose").flip_index == [1, 0, 2]
    assert convert(tmp_path / "coco.json", tmp_path / "yolo", to="yolo", images=tmp_path / "src/images").ok
    import yaml

    assert yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())["flip_idx"] == [1, 0, 2]


def test_a_coco_category_with_a_bad_flip_index_is_refused(tmp_path):
    path = write_pose_set(tmp_path / "src")
    convert(path, tmp_path / "coco.json", to="coco")
    coco = json.loads((tmp_path / "coco.json").read_text())
    coco["categories"][0]["flip_index"] = [0, 0, 0]
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    with pytest.raises(CocoError, match=r"coco\.json: category 'person': flip_index: expected a permutation"):
        CocoDataset(tmp_path / "coco.json", None, "pose")
