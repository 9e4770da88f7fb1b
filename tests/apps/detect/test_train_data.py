"""What detection training takes from its data: the flip index of a pose set (``flip_idx`` of a YOLO data.yaml
before the keypoint names)."""

from __future__ import annotations

import pytest
from PIL import Image


def write_pose_set(root, flip_idx, names=None):
    """One 96x96 image with one object of three keypoints (YOLO layout)."""
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    Image.new("RGB", (96, 96)).save(root / "images" / "train" / "a.png")
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.6 0.6 0.3 0.5 2 0.7 0.5 2 0.5 0.3 2\n")
    lines = ["train: images/train", "val: images/train", "names: {0: person}", "kpt_shape: [3, 3]"]
    lines += [f"flip_idx: {flip_idx}"] if flip_idx else []
    lines += [f"kpt_names: {{0: {names}}}"] if names else []
    (root / "data.yaml").write_text("\n".join(lines) + "\n")
    return root / "data.yaml"


def recorded_flips(monkeypatch) -> list:
    """The flip index of every detection augmentation built from now on (the list fills as they are built)."""
    import cnnapps.datasets.transforms as transforms

    seen = []
    real = transforms.detection_transform

    def recording(preset, flip_index=None, fit=None):
        seen.append(flip_index)
        return real(preset, flip_index, fit)

    monkeypatch.setattr(transforms, "detection_transform", recording)
    return seen


def flips_trained_with(data, monkeypatch, tmp_path):
    """The flip index ``_prepare`` hands the training augmentation."""
    import torch

    from cnnapps.apps.detect.config import DetectConfig
    from cnnapps.apps.detect.train import _prepare

    seen = recorded_flips(monkeypatch)
    config = DetectConfig(task="pose", data=str(data), val_data=str(data), backbone="resnet18", weights=None,
                          fpn_channels=16, min_size=64, max_size=64, workers=0, batch_size=1,
                          out=str(tmp_path / "run")).validate()  # fmt: skip
    _prepare(config, torch.device("cpu"))
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize(
    ("flip_idx", "names", "expected"),
    [
        ("[1, 0, 2]", None, [1, 0, 2]),  # unnamed keypoints (kp1..kp3): flip_idx alone says which swap
        ("[0, 1, 2]", "[left_a, right_a, mid]", [0, 1, 2]),  # flip_idx is the data's word, before the names
        (None, "[left_a, right_a, mid]", [1, 0, 2]),  # no flip_idx: left_*/right_* names
    ],
)
def test_pose_training_flips_keypoints_by_flip_idx_before_names(tmp_path, monkeypatch, flip_idx, names, expected):
    data = write_pose_set(tmp_path / "data", flip_idx, names)
    assert flips_trained_with(data, monkeypatch, tmp_path) == expected


def test_data_show_flips_keypoints_as_training_does(tmp_path, monkeypatch):
    """`cnnapps data show` draws the training augmentation with the same flip index training takes."""
    from cnnapps.apps.common.browse import _annotations

    seen = recorded_flips(monkeypatch)
    data = write_pose_set(tmp_path / "data", "[1, 0, 2]")
    task, count, _ = _annotations(data, "pose", "default", None, 64, 0)
    assert (task, count, seen) == ("pose", 1, [[1, 0, 2]])


def test_validation_data_with_the_same_names_under_other_ids_is_named_so(tmp_path):
    import json

    import torch

    from cnnapps.apps.detect.config import DetectConfig
    from cnnapps.apps.detect.train import _prepare
    from cnnapps.datasets.synthetic import write_coco
    from cnnapps.errors import CnnappsError

    train = write_coco("shapes", tmp_path, "train", 2, seed=0, size=64)
    val = json.loads(train.read_text())
    ids = [c["id"] for c in val["categories"]]
    swap = dict(zip(ids, ids[::-1], strict=True))
    val["categories"] = [{**c, "id": swap[c["id"]]} for c in val["categories"]]
    val["annotations"] = [{**a, "category_id": swap[a["category_id"]]} for a in val["annotations"]]
    (tmp_path / "val.json").write_text(json.dumps(val))
    config = DetectConfig(data=str(train), images=str(tmp_path / "train"), val_data=str(tmp_path / "val.json"),
                          backbone="resnet18", weights=None, workers=0, out=str(tmp_path / "run"))  # fmt: skip
    names = [c["name"] for c in sorted(val["categories"], key=lambda c: c["id"])]
    with pytest.raises(CnnappsError, match=rf"val\.json: its categories \({', '.join(names)}, in id order\) differ .*"
                                           r": the same names under other ids$"):  # fmt: skip
        _prepare(config.validate(), torch.device("cpu"))
