"""Detection training reads YOLO, VOC, LabelMe and CVAT annotations as they are: converted to COCO in memory, the
same targets as from the COCO file, images found where each format keeps them; up to one item of the training set
(no training is run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnapps.datasets.coco import CocoDataset
from cnnapps.datasets.formats import convert


def coco_source(root: Path) -> Path:
    """Three 64x48 noise images, boxes of two classes (one image without objects)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    images = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.png")
        images.append({"id": i + 1, "file_name": f"im{i}.png", "width": 64, "height": 48})
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 30], "area": 600, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [40, 10, 16, 20], "area": 320, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 2, "bbox": [0, 0, 30, 24], "area": 720, "iscrowd": 0},
    ]
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    path = root / "coco.json"
    path.write_text(json.dumps({"images": images, "categories": cats, "annotations": anns}))
    return path


def targets(data: CocoDataset) -> dict[str, list]:
    """Each image's boxes and class names by file name."""
    out = {}
    for i in range(len(data)):
        target = data.target(i)
        names = [data.class_names[label] for label in target.labels]
        out[data.image_path(i).name] = sorted(zip(names, target.boxes.round(2).tolist(), strict=True))
    return out


@pytest.mark.parametrize("fmt", ["yolo", "voc", "labelme", "cvat"])
def test_every_format_gives_the_targets_of_the_coco_file(tmp_path, fmt):
    path = coco_source(tmp_path)
    expected = CocoDataset(path, tmp_path / "images", "detect")
    out = tmp_path / f"as-{fmt}"
    convert(path, out, to=fmt, images=tmp_path / "images", image_files="copy")  # images where the format keeps them
    source = out / "annotations.xml" if fmt == "cvat" else out
    data = CocoDataset(source, None, "detect")  # no image folder: found where the format keeps it
    assert data.class_names == ["__background__", "cat", "dog"]
    assert all(data.image_path(i).is_file() for i in range(len(data)))
    assert targets(data) == targets(expected)


def test_a_yolo_dataset_goes_through_the_training_data_loader(tmp_path):
    from cnnapps.datasets.training import DetectionDataset
    from cnnapps.datasets.transforms import detection_transform

    root = tmp_path / "yolo"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    Image.new("RGB", (80, 40), (200, 30, 30)).save(root / "images" / "train" / "a.png")
    (root / "labels" / "train" / "a.txt").write_text("1 0.5 0.5 0.25 0.5\n")
    (root / "data.yaml").write_text("train: images/train\nval: images/train\nnames: {0: cat, 1: dog}\n")
    coco = CocoDataset(root / "data.yaml", None, "detect")
    item = DetectionDataset(coco, [0], detection_transform("none"))[0]
    pixels, target = item
    assert tuple(pixels.shape) == (3, 40, 80) and abs(float(pixels[0].mean()) - 200 / 255) < 1e-6
    assert target["boxes"].tolist() == [[30.0, 10.0, 50.0, 30.0]] and target["labels"].tolist() == [2]
    assert coco.class_names[2] == "dog"


def test_bad_lines_are_left_out_with_a_warning_naming_them(tmp_path, caplog):
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.new("RGB", (20, 20)).save(root / "images" / "a.png")
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n5 0.5 0.5 0.5 0.5\n")
    (root / "classes.txt").write_text("cat\n")
    data = CocoDataset(root, None, "detect")
    assert len(data.target(0).boxes) == 1
    assert f"{root / 'labels' / 'a.txt'}:2: class index 5 is beyond the 1 class names" in caplog.text


def test_the_config_wants_an_image_folder_only_for_a_coco_file(tmp_path):
    from cnnapps.apps.common.config import ConfigError
    from cnnapps.apps.detect.config import DetectConfig

    path = coco_source(tmp_path)
    convert(path, tmp_path / "yolo", to="yolo", images=tmp_path / "images")
    DetectConfig(task="detect", data=str(tmp_path / "yolo")).validate()
    with pytest.raises(ConfigError, match="images: required"):
        DetectConfig(task="detect", data=str(path)).validate()
