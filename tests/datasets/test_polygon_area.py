"""The area of a polygon whose parts are joined into one outline (a YOLO segment line): each part counts whichever
way it winds."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from cnnapps.datasets.formats import convert
from cnnapps.datasets.formats.hub import joined, polygon_area


def test_joined_parts_that_wind_opposite_ways_add_up():
    first = [10, 10, 50, 10, 50, 35, 10, 35]  # 40 x 25, clockwise on screen
    second = [60, 40, 60, 60, 95, 60, 95, 40]  # 35 x 20, the other way round
    assert polygon_area(first) == 1000 and polygon_area(second) == 700
    assert polygon_area(joined([first, second])) == 1700
    assert polygon_area([0, 0, 4, 0, 4, 4, 0, 4, 0, 0]) == 16  # a closing point repeated


def test_a_two_part_polygon_keeps_its_area_through_yolo(tmp_path):
    Image.fromarray(np.zeros((80, 100, 3), np.uint8)).save(tmp_path / "a.png")
    parts = [[10, 10, 50, 10, 50, 35, 10, 35], [60, 40, 60, 60, 95, 60, 95, 40]]
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 85, 50], "iscrowd": 0, "segmentation": parts}
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 80}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{**ann, "area": 1700}],
    }
    (tmp_path / "src.json").write_text(json.dumps(coco))
    convert(tmp_path / "src.json", tmp_path / "yolo", to="yolo")
    convert(tmp_path / "yolo", tmp_path / "back.json", to="coco", image_files="none")
    (back,) = json.loads((tmp_path / "back.json").read_text())["annotations"]
    assert back["area"] == 1700


def test_a_hole_reached_by_a_bridge_is_taken_away_as_pycocotools_fills_it():
    from pycocotools import mask as mask_utils

    outer = [0, 0, 10, 0, 10, 10, 0, 10]
    hole = [3, 3, 3, 7, 7, 7, 7, 3]
    keyhole = joined([outer, hole])  # outer ring, a bridge to the hole, round it, back: one outline
    filled = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects([keyhole], 20, 20))))
    assert polygon_area(keyhole) == 100 - 16 == filled  # it was 116: the hole added
    apart = joined([outer, [12, 0, 12, 4, 16, 4, 16, 0]])  # a second part beside it, not inside: added
    assert polygon_area(apart) == 116
