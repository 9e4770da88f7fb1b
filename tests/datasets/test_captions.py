"""Caption files that cannot be used: one line naming the file and the entry, not a bare KeyError."""

from __future__ import annotations

import json

import pytest

from cnnapps.datasets.captions import CaptionDataError, read_captions

IMAGES = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}]
CAPTIONS = [{"id": 10, "image_id": 1, "caption": "a red circle"}, {"id": 11, "image_id": 2, "caption": "a square"}]


def read_coco(tmp_path, images=IMAGES, annotations=CAPTIONS):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return read_captions(path, tmp_path)


def test_well_formed_coco_captions_read(tmp_path):
    assert [(i.image_id, i.captions) for i in read_coco(tmp_path)] == [(1, ["a red circle"]), (2, ["a square"])]


@pytest.mark.parametrize(
    ("annotation", "reason"),
    [
        ({"id": 12, "image_id": 1}, "annotation 12: no caption"),
        ({"id": 12, "image_id": 1, "caption": None}, "annotation 12: caption is None, not text"),
        ({"id": 12, "image_id": 1, "caption": ["a", "dog"]}, r"annotation 12: caption is \['a', 'dog'\], not text"),
        ({"id": 12, "caption": "a dog"}, "annotation 12: no image_id"),
        ({"id": 12, "image_id": 1, "caption": " \n"}, "annotation 12: an empty caption"),  # read, and scored against
        ({"image_id": 1}, r"annotations\[2\]: no caption"),  # no id: its place in the list
        ("a dog", r"annotations\[2\]: not an annotation object"),
    ],
)
def test_a_caption_annotation_without_its_caption_is_named(tmp_path, annotation, reason):
    with pytest.raises(CaptionDataError, match=rf"^{tmp_path}/captions\.json: {reason}$"):
        read_coco(tmp_path, annotations=[*CAPTIONS, annotation])


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ({"id": 3}, "image 3: no file_name"),
        ({"id": 3, "file_name": 7}, "image 3: file_name is 7, not text"),
        ({"file_name": "c.png"}, r"images\[2\] \(c\.png\): no id"),
        ([], r"images\[2\]: not an image object"),
    ],
)
def test_an_image_without_file_name_or_id_is_named(tmp_path, image, reason):
    with pytest.raises(CaptionDataError, match=rf"^{tmp_path}/captions\.json: {reason}$"):
        read_coco(tmp_path, images=[*IMAGES, image])


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ({"sentences": [{"raw": "a dog"}]}, r"images\[1\]: not an image entry with a filename"),
        ({"filename": "b.png"}, r"images\[1\] \(b\.png\): no 'sentences' list"),
        ({"filename": "b.png", "sentences": [{"tokens": None}]}, r"images\[1\] \(b\.png\): a sentence without"),
        ({"filename": "b.png", "sentences": ["a dog"]}, r"images\[1\] \(b\.png\): a sentence without"),
    ],
)
def test_a_karpathy_image_without_what_it_needs_is_named(tmp_path, image, reason):
    path = tmp_path / "dataset.json"
    first = {"filename": "a.png", "split": "train", "sentences": [{"tokens": ["a", "cat"]}]}
    path.write_text(json.dumps({"images": [first, {"split": "train", **image}]}))
    with pytest.raises(CaptionDataError, match=rf"^{path}: {reason}"):
        read_captions(path, tmp_path, "train")
    first_only = json.dumps({"images": [first]})
    path.write_text(first_only)
    assert [i.captions for i in read_captions(path, tmp_path, "train")] == [["a cat"]]
