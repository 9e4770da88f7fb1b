"""What annotation formats say beyond their objects, as training takes it: the split each image is in (a YOLO
data.yaml's entries, VOC's ImageSets/Main lists, CVAT subsets), VOC difficult objects (ignored, as crowd regions),
and images without any annotation file (LabelMe, VOC: images without objects)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from PIL import Image

from cnnapps.apps.detect.train import _own_split
from cnnapps.datasets.coco import CocoDataset
from cnnapps.datasets.formats import convert, read


def image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (90, 120, 150)).save(path)


def yolo_split(root: Path, yaml: str = "train: images/train\nval: images/val\ntest: images/test\n") -> Path:
    """3 train, 2 val and 1 test image, each with one box."""
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        for i in range(n):
            image(root / "images" / split / f"{split}{i}.png")
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{split}{i}.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    (root / "data.yaml").write_text(yaml + "names: {0: box}\n")
    return root


def voc_xml(path: Path, name: str, difficult: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation><filename>{name}</filename><size><width>40</width><height>30</height><depth>3</depth></size>"
        f"<object><name>cat</name><difficult>{difficult}</difficult>"
        "<bndbox><xmin>5</xmin><ymin>5</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object></annotation>"
    )


def names_of(data: CocoDataset, indices: list[int]) -> list[str]:
    return sorted(data.image_path(i).name for i in indices)


CONFIG = SimpleNamespace(val_split=0.5, seed=0)


def test_training_takes_the_yolo_datasets_own_train_and_val_and_leaves_test_out(tmp_path):
    data = CocoDataset(yolo_split(tmp_path / "y"), None, "detect")
    train, val, source = _own_split(data, CONFIG)
    assert names_of(data, train) == ["train0.png", "train1.png", "train2.png"]
    assert names_of(data, val) == ["val0.png", "val1.png"]
    assert source == "the data's val split; 1 test image left out"


def test_without_a_val_split_a_share_of_the_train_split_is_held_out(tmp_path):
    data = CocoDataset(yolo_split(tmp_path / "y", "train: images/train\ntest: images/test\n"), None, "detect")
    train, val, source = _own_split(data, CONFIG)
    assert len(train) + len(val) == 3 and val
    assert all(n.startswith("train") for n in names_of(data, train + val))
    assert source == "50% of its train split held out at random; 1 test image left out"


def test_data_without_splits_is_held_out_at_random(tmp_path):
    root = tmp_path / "voc"
    for name in "abcd":
        voc_xml(root / "Annotations" / f"{name}.xml", f"{name}.jpg")
        image(root / "JPEGImages" / f"{name}.jpg")
    data = CocoDataset(root, None, "detect")  # no ImageSets/
    train, val, source = _own_split(data, CONFIG)
    assert (len(train), len(val)) == (2, 2)
    assert source == "50% of them held out at random"


def voc_split(root: Path, names: str) -> Path:
    """A VOC set of the images ``names`` (a.jpg ...), listed: a, b train; c val; a-d trainval; e test."""
    for name in names:
        voc_xml(root / "Annotations" / f"{name}.xml", f"{name}.jpg")
        image(root / "JPEGImages" / f"{name}.jpg")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for split, listed in (("train", "a b"), ("val", "c"), ("trainval", "a b c d"), ("test", "e")):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(listed.split()) + "\n")
    return root


def test_voc_image_sets_give_the_splits(tmp_path):
    root = voc_split(tmp_path / "voc", "abcde")
    data = CocoDataset(root, None, "detect")
    assert [data.splits.get(i) for i in data.image_ids] == ["train", "train", "val", "train", "test"]
    train, val, _ = _own_split(data, CONFIG)
    assert names_of(data, train) == ["a.jpg", "b.jpg", "d.jpg"]  # d: in trainval only
    assert names_of(data, val) == ["c.jpg"]


def test_cvat_subsets_give_the_splits(tmp_path):
    path = tmp_path / "annotations.xml"
    images = "".join(
        f'<image id="{i}" name="{name}.jpg" subset="{subset}" width="40" height="30">'
        f'<box label="cat" xtl="5" ytl="5" xbr="20" ybr="20" occluded="0"/></image>'
        for i, (name, subset) in enumerate([("a", "Train"), ("b", "Validation"), ("c", "Test"), ("d", "default")])
    )
    path.write_text(f"<annotations><version>1.1</version>{images}</annotations>")
    collection, _, _ = read(path)
    assert {im["file_name"]: collection.splits.get(im["id"]) for im in collection.coco["images"]} == {
        "a.jpg": "train",
        "b.jpg": "val",
        "c.jpg": "test",
        "d.jpg": None,
    }


def test_voc_difficult_objects_are_crowd_regions_and_round_trip(tmp_path):
    root = tmp_path / "voc"
    voc_xml(root / "Annotations" / "a.xml", "a.jpg", difficult=1)
    voc_xml(root / "Annotations" / "b.xml", "b.jpg")
    image(root / "JPEGImages" / "a.jpg")
    image(root / "JPEGImages" / "b.jpg")
    data = CocoDataset(root, None, "detect")
    assert [len(data.target(i).boxes) for i in range(len(data))] == [0, 1]  # a's difficult cat: not trained on
    convert(root, tmp_path / "back.json", to="coco")
    anns = json.loads((tmp_path / "back.json").read_text())["annotations"]
    assert [a["iscrowd"] for a in anns] == [1, 0]  # ignored by COCOeval
    convert(tmp_path / "back.json", tmp_path / "voc2", to="voc", image_files="none")
    assert "<difficult>1</difficult>" in (tmp_path / "voc2" / "Annotations" / "a.xml").read_text()
    done = convert(root, tmp_path / "yolo", to="yolo", image_files="none")  # left out, as ultralytics' VOC script does
    assert "1 difficult objects (Pascal VOC's, read as crowd regions) left out: YOLO has no crowd marks" in done.notes


def test_labelme_images_without_a_json_are_images_without_objects(tmp_path):
    root = tmp_path / "lm"
    for name in "abc":
        image(root / f"{name}.jpg")
    shape = {"label": "cat", "points": [[5, 5], [20, 20]], "shape_type": "rectangle", "group_id": None}
    doc = {"shapes": [shape], "imagePath": "a.jpg", "imageWidth": 40, "imageHeight": 30}
    (root / "a.json").write_text(json.dumps(doc))
    done = convert(root, tmp_path / "lm.json", to="coco")
    assert done.images == 3 and done.ok
    assert done.notes == [f"2 images in {root} without a JSON read as images without objects"]
    images = json.loads((tmp_path / "lm.json").read_text())["images"]
    assert sorted(im["file_name"] for im in images) == ["a.jpg", "b.jpg", "c.jpg"]


def test_voc_images_without_an_xml_are_images_without_objects(tmp_path):
    root = tmp_path / "voc"
    voc_xml(root / "Annotations" / "a.xml", "a.jpg")
    for name in "abc":
        image(root / "JPEGImages" / f"{name}.jpg")
    done = convert(root, tmp_path / "voc.json", to="coco")
    assert done.images == 3 and done.ok
    assert done.notes == [f"2 images in {root / 'JPEGImages'} without an XML read as images without objects"]
    data = CocoDataset(root, None, "detect")
    assert [len(data.target(i).boxes) for i in range(len(data))] == [1, 0, 0]


def test_the_image_of_an_unreadable_annotation_file_is_not_read_as_one_without_objects(tmp_path):
    root = tmp_path / "lm"
    for name in "abc":
        image(root / f"{name}.jpg")
    (root / "a.json").write_text('{"shapes": [')
    (root / "c.json").write_text(json.dumps({"shapes": [], "imagePath": "c.jpg"}))
    done = convert(root, tmp_path / "lm.json", to="coco")
    assert done.images == 2 and len(done.skipped) == 1  # b.jpg and c.jpg; a.json reported
    voc = tmp_path / "voc"
    voc_xml(voc / "Annotations" / "a.xml", "a.jpg")
    (voc / "Annotations" / "b.xml").write_text("<annotation><filename>b.jpg</annotation>")
    for name in "abc":
        image(voc / "JPEGImages" / f"{name}.jpg")
    done = convert(voc, tmp_path / "voc.json", to="coco")
    assert done.images == 2 and len(done.skipped) == 1  # a.jpg and c.jpg; b.xml reported


def splits_by_name(path: Path) -> dict[str, str | None]:
    collection, _, _ = read(path)
    return {Path(im["file_name"]).stem: collection.splits.get(im["id"]) for im in collection.coco["images"]}


def test_the_splits_survive_conversion_to_every_format_that_names_them(tmp_path):
    """A VOC set's ImageSets split (d in trainval only: train; f in none) converted to CVAT (subsets), to YOLO
    (train.txt, val.txt, test.txt: its images are not in split folders) and back to VOC (ImageSets/Main): each
    image keeps its split; COCO and LabelMe, which name none, say so."""
    root = voc_split(tmp_path / "voc", "abcdef")
    expected = {"a": "train", "b": "train", "c": "val", "d": "train", "e": "test", "f": None}
    assert splits_by_name(root) == expected
    convert(root, tmp_path / "cvat.xml", to="cvat", image_files="none")
    assert 'subset="Validation"' in (tmp_path / "cvat.xml").read_text()
    assert splits_by_name(tmp_path / "cvat.xml") == expected
    yolo = convert(root, tmp_path / "yolo", to="yolo")
    assert (tmp_path / "yolo" / "train.txt").read_text().split() == [f"./images/{n}.jpg" for n in "abd"]
    assert yolo.notes[-1] == "1 image in no split of the source's are in no list (train.txt, val.txt)"
    assert splits_by_name(tmp_path / "yolo") == {k: v for k, v in expected.items() if v}  # f is in no list
    _, report, _ = read(tmp_path / "yolo")
    why = "its image f.jpg is in none of data.yaml's train, val and test; skipped"
    assert report.skipped == [f"{tmp_path / 'yolo' / 'labels' / 'f.txt'}: {why}"]
    data = CocoDataset(tmp_path / "yolo", None, "detect")
    train, val, _ = _own_split(data, CONFIG)
    assert (names_of(data, train), names_of(data, val)) == (["a.jpg", "b.jpg", "d.jpg"], ["c.jpg"])
    convert(tmp_path / "cvat.xml", tmp_path / "voc2", to="voc", images=root / "JPEGImages", image_files="copy")
    lists = tmp_path / "voc2" / "ImageSets" / "Main"
    assert sorted(p.name for p in lists.iterdir()) == ["test.txt", "train.txt", "trainval.txt", "val.txt"]
    assert (lists / "trainval.txt").read_text().split() == ["a", "b", "d", "c"]
    assert splits_by_name(tmp_path / "voc2") == expected
    for target, out in (("coco", tmp_path / "all.json"), ("labelme", tmp_path / "labelme")):
        said = convert(root, out, to=target).notes
        assert f"{target} names no splits: the source's (3 train, 1 val, 1 test images) were written together" in said
