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
