"""Semantic data read as its files mean it: a COCO category named background is class 0 (not a second class of
that name), a name given twice is an error, and grey or palette masks with an alpha channel are class indices."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cnnapps.datasets.semantic import ClassList, MaskError, SemanticDataError, read_mask, read_semantic_data

PLAIN = ClassList(["a", "b", "c"], None, None, "plain.txt")


def _coco(tmp_path, categories: list[dict]) -> tuple:
    """A 20x20 image with a left-half annotation of category 1 and a 5x5 square of category 2."""
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", (20, 20)).save(tmp_path / "img" / "a.png")
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 20], "area": 200, "iscrowd": 0,
         "segmentation": [[0, 0, 10, 0, 10, 20, 0, 20]]},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [12, 5, 5, 5], "area": 25, "iscrowd": 0,
         "segmentation": [[12, 5, 17, 5, 17, 10, 12, 10]]},
    ]  # fmt: skip
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 20}], "categories": categories,
            "annotations": anns}  # fmt: skip
    path = tmp_path / "a.json"
    path.write_text(json.dumps(coco))
    return path, tmp_path / "img"


@pytest.mark.parametrize("name", ["background", "Background", "__background__"])
def test_a_coco_category_named_background_is_class_zero(tmp_path, name):
    path, images = _coco(tmp_path, [{"id": 1, "name": name}, {"id": 2, "name": "cat"}, {"id": 3, "name": "dog"}])
    data = read_semantic_data(path, images=images)
    assert data.class_names == ["background", "cat", "dog"]
    mask = data.load(0)[1]
    assert set(np.unique(mask)) == {0, 1} and int((mask == 1).sum()) == 25  # the annotated left half is background


def test_coco_categories_of_one_name_are_a_one_line_error(tmp_path):
    path, images = _coco(tmp_path, [{"id": 1, "name": "cat"}, {"id": 2, "name": "cat"}])
    with pytest.raises(SemanticDataError, match=r"a\.json: categories 1 and 2 are both named 'cat'; classes meet"):
        read_semantic_data(path, images=images)
    path, images = _coco(tmp_path, [{"id": 1, "name": "background"}, {"id": 2, "name": "__background__"}])
    with pytest.raises(SemanticDataError, match=r"categories 1 and 2 are both background \('background', '__backgr"):
        read_semantic_data(path, images=images)


def test_with_stuff_categories_background_is_a_class_like_the_others(tmp_path):
    cats = [{"id": 1, "name": "cat", "isthing": 1}, {"id": 2, "name": "background", "isthing": 0}]
    path, images = _coco(tmp_path, cats)
    data = read_semantic_data(path, images=images)
    assert data.class_names == ["cat", "background"]
    assert set(np.unique(data.load(0)[1])) == {0, 1, 255}  # unannotated pixels are ignored


def _with_alpha(indices: np.ndarray) -> np.ndarray:
    return np.dstack([indices, np.where(indices == 2, 0, 255)]).astype(np.uint8)  # class 2 fully transparent


def test_grey_and_palette_masks_with_alpha_are_class_indices(tmp_path, monkeypatch):
    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    Image.fromarray(_with_alpha(indices), "LA").save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    assert np.array_equal(read_mask(tmp_path / "la.png", PLAIN), indices)
    colours = ClassList(["a", "b", "c"], [(9, 9, 9), (0, 0, 255), (0, 255, 0)], None, "colours.txt")
    assert np.array_equal(read_mask(tmp_path / "la.png", colours), indices)  # grey is indices, colours or not
    palette = Image.fromarray(_with_alpha(indices), "PA")
    palette.putpalette([9, 9, 9, 0, 0, 255, 0, 255, 0])
    palette.save(tmp_path / "pa.tif")  # PNG cannot hold PA; TIFF can
    assert Image.open(tmp_path / "pa.tif").mode == "PA"
    assert np.array_equal(read_mask(tmp_path / "pa.tif", PLAIN), indices)  # palette indices
    assert np.array_equal(read_mask(tmp_path / "pa.tif", colours), indices)  # by the palette's colours
    Image.fromarray(np.dstack([indices, np.full_like(indices, 255)]), "LA").save(tmp_path / "opaque.png")
    opened = Image.open  # La (alpha premultiplied) is never a file's own mode; opaque, it is LA
    monkeypatch.setattr(Image, "open", lambda path: opened(path).convert("La"))
    assert np.array_equal(read_mask(tmp_path / "opaque.png", PLAIN), indices)


def test_a_mask_of_two_channels_of_no_known_kind_is_a_mask_error(tmp_path, monkeypatch):
    class TwoChannels:
        mode = "XA"

        def __enter__(self):
            return self

        def __exit__(self, *_):
            return None

        def load(self):
            return None

        def getpalette(self):
            return None

        def __array__(self, dtype=None, copy=None):
            return np.zeros((2, 3, 2), np.uint8)

    monkeypatch.setattr(Image, "open", lambda path: TwoChannels())
    with pytest.raises(MaskError, match=r"odd\.png: a XA mask with 2 channels: neither class indices"):
        read_mask(tmp_path / "odd.png", PLAIN)


def test_a_folder_with_an_la_mask_loads(tmp_path):
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    Image.new("RGB", (3, 2)).save(tmp_path / "images" / "x.jpg")
    Image.fromarray(_with_alpha(np.array([[0, 1, 2], [2, 1, 0]])), "LA").save(tmp_path / "masks" / "x.png")
    assert read_semantic_data(tmp_path).load(0)[1].tolist() == [[0, 1, 2], [2, 1, 0]]
