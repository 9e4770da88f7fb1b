"""Every target format gives the categories in id order, whatever their order in the COCO file, so a model trained
after any conversion has the same class order; a target without image ids says so."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cnnapps.datasets.formats import convert


@pytest.mark.parametrize("to", ["yolo", "voc", "labelme", "cvat"])
def test_categories_come_back_in_id_order_from_every_format(tmp_path, to):
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "a.png")
    cats = [{"id": 5, "name": "zebra"}, {"id": 1, "name": "apple"}, {"id": 3, "name": "person"}]
    anns = [
        {"id": k + 1, "image_id": 100, "category_id": c["id"], "bbox": [5 + 10 * k, 5, 8, 8], "area": 64, "iscrowd": 0}
        for k, c in enumerate(cats)
    ]
    coco = {"images": [{"id": 100, "file_name": "a.png", "width": 64, "height": 48}], "categories": cats}
    (tmp_path / "src.json").write_text(json.dumps({**coco, "annotations": anns}))
    there = convert(tmp_path / "src.json", tmp_path / to, to=to)
    assert any("image ids were not kept" in n for n in there.notes)
    back = convert(tmp_path / to, tmp_path / "back.json", to="coco", image_files="none")
    assert back.categories == ["apple", "person", "zebra"]


def test_what_a_target_without_ids_loses_is_noted(tmp_path):
    # category ids 3, 7 and supercategories came back as 1, 2 and nothing, without a word
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "a.png")
    cats = [{"id": 7, "name": "zebra", "supercategory": "animal"}, {"id": 3, "name": "apple", "supercategory": "food"}]
    ann = {"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 5, 8, 8], "area": 64, "iscrowd": 0}
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}], "categories": cats}
    (tmp_path / "src.json").write_text(json.dumps({**coco, "annotations": [ann]}))
    there = convert(tmp_path / "src.json", tmp_path / "yolo", to="yolo")
    assert there.categories == ["apple", "zebra"]  # as written: YOLO class 0 is apple
    assert there.notes == [
        "category ids (3, 7) were not kept: yolo has the classes in id order (apple, zebra) without ids, "
        "so read back they are numbered 1..2",
        "supercategories (animal, food) were not kept: yolo has none",
    ]
    back = convert(tmp_path / "yolo", tmp_path / "back.json", to="coco", image_files="none")
    assert not any("were not kept" in n for n in convert(tmp_path / "back.json", tmp_path / "voc", to="voc").notes)
    assert back.categories == ["apple", "zebra"]
