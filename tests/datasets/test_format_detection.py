"""Which annotation format a JSON file is: told by the keys of its top-level object, not by words anywhere in it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from cnnapps.datasets.formats import detect, other_format


def coco_file(path: Path, category: str = "thing", n: int = 1, annotations_first: bool = False) -> Path:
    """A valid COCO file with n box objects on one 64x48 image (a.png beside it)."""
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(path.parent / "a.png")
    images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}]
    anns = [
        {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0}
        for i in range(n)
    ]
    cats = [{"id": 1, "name": category}]
    coco = (
        {"annotations": anns, "categories": cats, "images": images}
        if annotations_first
        else {"images": images, "categories": cats, "annotations": anns}
    )
    path.write_text(json.dumps(coco))
    return path


def test_a_coco_file_naming_a_category_shapes_is_coco(tmp_path, run_cli):
    path = coco_file(tmp_path / "cat.json", category="shapes")
    assert detect(path) == "coco" and other_format(path) is None
    code, out, err = run_cli("data", "check", path, "--min-images", "0")
    assert code == 0 and "(coco, detect)" in out, err


def test_a_large_coco_file_with_annotations_before_images_is_coco(tmp_path, run_cli):
    path = coco_file(tmp_path / "order.json", n=2000, annotations_first=True)
    assert path.stat().st_size > 65536
    assert detect(path) == "coco"
    code, out, err = run_cli("data", "convert", path, tmp_path / "out", "--to", "yolo")
    assert code == 0 and "(coco) ->" in out, err


def test_labelme_is_told_by_its_top_level_shapes(tmp_path):
    labelme = {"version": "5.0.1", "flags": {}, "shapes": [], "imagePath": "a.png", "imageHeight": 48}
    (tmp_path / "a.json").write_text(json.dumps(labelme))
    assert detect(tmp_path / "a.json") == "labelme" and other_format(tmp_path / "a.json") == "labelme"
    (tmp_path / "other.json").write_text(json.dumps({"items": [{"images": 1, "shapes": 2}]}))
    assert other_format(tmp_path / "other.json") is None


def test_data_check_takes_the_format_with_from(tmp_path, run_cli):
    path = coco_file(tmp_path / "cat.json")
    code, out, err = run_cli("data", "check", path, "--from", "coco", "--min-images", "0")
    assert code == 0 and "(coco, detect)" in out, err
    code, _, err = run_cli("data", "check", path, "--from", "coco", "--task", "classify")
    assert code == 2 and "--from coco" in err
