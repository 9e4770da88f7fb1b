"""Annotation conversion through COCO: round trips to every format and back, bad items reported one line each
(file and line) while the rest converts, outputs that never replace anything, and the ``cnnapps data convert``
command."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnapps.datasets.formats import FORMATS, FormatError, convert, detect
from cnnapps.datasets.formats.disk import image_size
from cnnapps.files import OutputExistsError

SIZES = [(64, 48), (80, 60), (50, 40)]


def write_images(folder: Path, suffix: str = ".png") -> list[dict]:
    """Three small images; their COCO image entries."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (w, h) in enumerate(SIZES):
        Image.new("RGB", (w, h), (40 * i, 120, 200)).save(folder / f"im{i}{suffix}")
        entries.append({"id": i + 1, "file_name": f"im{i}{suffix}", "width": w, "height": h})
    return entries


def instances(images: list[dict]) -> dict:
    """Boxes and polygons (one object in two parts), two categories with sparse ids, one image without objects."""

    def poly(ann_id, image_id, cat, *parts):
        xs = [x for p in parts for x in p[0::2]]
        ys = [y for p in parts for y in p[1::2]]
        bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        return {
            "id": ann_id,
            "image_id": image_id,
            "category_id": cat,
            "bbox": bbox,
            "area": 1,
            "iscrowd": 0,
            "segmentation": [list(p) for p in parts],
        }

    anns = [
        poly(1, 1, 1, [10.5, 5.25, 30, 5.25, 20.75, 30.5]),
        poly(2, 1, 3, [40, 20, 55, 20, 55, 40, 40, 40]),
        poly(3, 2, 3, [5, 5, 20, 5, 12, 15], [30, 10, 45, 10, 45, 25.5]),
    ]
    cats = [{"id": 1, "name": "circle", "supercategory": ""}, {"id": 3, "name": "square", "supercategory": ""}]
    return {"images": images, "categories": cats, "annotations": anns}


KEYPOINTS = ["nose", "left_eye", "right_eye", "left_ear"]


def people(images: list[dict]) -> dict:
    """Person keypoints with all three visibilities; every keypoint labelled in some image."""
    cat = {"id": 1, "name": "person", "supercategory": "", "keypoints": KEYPOINTS, "skeleton": [[1, 2], [1, 3], [2, 4]]}
    anns = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "bbox": [10, 5, 20, 30],
            "area": 600,
            "iscrowd": 0,
            "keypoints": [20, 10, 2, 15.5, 12.25, 1, 0, 0, 0, 12, 14, 2],
            "num_keypoints": 3,
        },
        {
            "id": 2,
            "image_id": 2,
            "category_id": 1,
            "bbox": [30, 10, 40, 45],
            "area": 1800,
            "iscrowd": 0,
            "keypoints": [50, 20, 2, 0, 0, 0, 55.75, 22, 2, 0, 0, 0],
            "num_keypoints": 2,
        },
    ]
    return {"images": images, "categories": [cat], "annotations": anns}


def source(tmp_path: Path, make) -> tuple[Path, Path]:
    images = tmp_path / "src" / "images"
    path = tmp_path / "src" / "coco.json"
    path.write_text(json.dumps(make(write_images(images))))
    return path, images


def round_trip(tmp_path: Path, make, fmt: str) -> tuple[dict, dict]:
    """COCO -> fmt -> COCO: (the original, what came back); both conversions must convert everything. What came
    back names each image under the images folder its summary gives: the original's image, given the original's
    name here."""
    path, images = source(tmp_path, make)
    there = convert(path, tmp_path / f"out-{fmt}", to=fmt, images=images)
    assert there.skipped == [], there.skipped
    kept = there.written["images"] if fmt in ("coco", "cvat") else None  # they name their images under --images
    back = convert(tmp_path / f"out-{fmt}", tmp_path / "back.json", to="coco", images=kept)
    assert back.skipped == [] and back.from_ == fmt
    original, returned = json.loads(path.read_text()), json.loads((tmp_path / "back.json").read_text())
    names = {(images / im["file_name"]).read_bytes(): im["file_name"] for im in original["images"]}
    for im in returned["images"]:
        file = Path(back.written["images"]) / im["file_name"]
        assert file.is_file(), f"{fmt}: {im['file_name']} is not under {back.written['images']}"
        im["file_name"] = names[file.read_bytes()]
    return original, returned


def objects(coco: dict) -> list[dict]:
    """Annotations with file and category names instead of ids, in a fixed order."""
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    out = [{**a, "file": files[a["image_id"]], "name": names[a["category_id"]]} for a in coco["annotations"]]
    return sorted(out, key=lambda a: (a["file"], a["name"], a["bbox"][0]))


def close(a: list[float], b: list[float], tol: float) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b, strict=False))


@pytest.mark.parametrize(("fmt", "tol"), [("coco", 0), ("yolo", 0.01), ("labelme", 0), ("cvat", 0.005)])
def test_boxes_and_polygons_survive_a_round_trip(tmp_path, fmt, tol):
    original, back = round_trip(tmp_path, instances, fmt)
    assert sorted(im["file_name"] for im in back["images"]) == ["im0.png", "im1.png", "im2.png"]
    assert {(im["file_name"], im["width"], im["height"]) for im in back["images"]} == {
        (im["file_name"], im["width"], im["height"]) for im in original["images"]
    }
    assert sorted(c["name"] for c in back["categories"]) == ["circle", "square"]
    before, after = objects(original), objects(back)
    assert [(a["file"], a["name"]) for a in after] == [(a["file"], a["name"]) for a in before]
    for a, b in zip(before, after, strict=True):
        assert close(a["bbox"], b["bbox"], tol), (fmt, a["bbox"], b["bbox"])
        if fmt == "yolo" and len(a["segmentation"]) > 1:  # one outline joining the parts by zero-width bridges
            assert len(b["segmentation"]) == 1
            outline = b["segmentation"][0]
            points = set(zip(outline[::2], outline[1::2], strict=True))
            corners = [(x, y) for p in a["segmentation"] for x, y in zip(p[::2], p[1::2], strict=True)]
            assert all(any(close([x, y], list(q), tol) for q in points) for x, y in corners)
        else:
            assert len(a["segmentation"]) == len(b["segmentation"])
            assert all(close(p, q, tol) for p, q in zip(a["segmentation"], b["segmentation"], strict=True))


@pytest.mark.parametrize("fmt", ["yolo", "labelme", "cvat"])
def test_keypoints_survive_a_round_trip(tmp_path, fmt):
    original, back = round_trip(tmp_path, people, fmt)
    (cat,) = back["categories"]
    assert cat["name"] == "person" and cat["keypoints"] == KEYPOINTS
    if fmt != "labelme":  # LabelMe has no skeletons
        assert cat["skeleton"] == [[1, 2], [1, 3], [2, 4]]
    tol = 0.01 if fmt == "yolo" else 0.005
    for a, b in zip(objects(original), objects(back), strict=True):
        assert a["keypoints"][2::3] == b["keypoints"][2::3]  # visibility 0, 1 and 2 kept
        assert close(a["keypoints"], b["keypoints"], tol)
        assert b["num_keypoints"] == a["num_keypoints"]
        if fmt == "cvat":  # a CVAT skeleton has no box of its own: the labelled keypoints' extent
            xy = [(x, y) for x, y, v in zip(*[iter(a["keypoints"])] * 3, strict=True) if v]
            xs, ys = [x for x, _ in xy], [y for _, y in xy]
            assert close(b["bbox"], [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], tol)
        else:
            assert close(a["bbox"], b["bbox"], tol)


@pytest.mark.parametrize("folders", [("images", "images", "images"), ("train", "val", "extra")])
def test_yolo_output_keeps_every_image_and_its_labels_whatever_the_folders(tmp_path, folders):
    """Images in an images/ folder of their own (labels go where ultralytics looks: the last /images/ of the path
    swapped for /labels/), or in a folder beside train/ and val/ (data.yaml then names them all)."""
    entries = write_images(tmp_path / "src")
    for entry, folder in zip(entries, folders, strict=True):
        (tmp_path / "src" / folder).mkdir(exist_ok=True)
        (tmp_path / "src" / entry["file_name"]).rename(tmp_path / "src" / folder / entry["file_name"])
        entry["file_name"] = f"{folder}/{entry['file_name']}"
    anns = [{"id": e["id"], "image_id": e["id"], "category_id": 1, "bbox": [2, 3, 20, 10], "area": 200, "iscrowd": 0}
            for e in entries]  # fmt: skip
    coco = {"images": entries, "annotations": anns, "categories": [{"id": 1, "name": "cat"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    assert convert(tmp_path / "coco.json", tmp_path / "yolo", to="yolo", images=tmp_path / "src").ok
    back = convert(tmp_path / "yolo", tmp_path / "back.json", to="coco")
    assert back.ok and back.images == 3 and back.annotations == 3, back.skipped


def test_a_keypoint_labelled_nowhere_does_not_come_back_from_labelme_as_a_category(tmp_path):
    def unlabelled_third(images: list[dict]) -> dict:
        data = people(images)
        for ann in data["annotations"]:
            ann["keypoints"][6:9] = [0, 0, 0]  # the third keypoint labelled in no image
        return data

    _, back = round_trip(tmp_path, unlabelled_third, "labelme")
    assert [c["name"] for c in back["categories"]] == ["person"]  # the third keypoint's name was a second category
    assert back["categories"][0]["keypoints"] == [n for i, n in enumerate(KEYPOINTS) if i != 2]


def test_yolo_pose_files_follow_ultralytics(tmp_path):
    path, images = source(tmp_path, people)
    convert(path, tmp_path / "pose", to="yolo", images=images)
    import yaml

    config = yaml.safe_load((tmp_path / "pose" / "data.yaml").read_text())
    assert config["kpt_shape"] == [4, 3] and config["names"] == {0: "person"}
    assert config["flip_idx"] == [0, 2, 1, 3]  # left_ear has no right_ear: it stays
    line = (tmp_path / "pose" / "labels" / "im0.txt").read_text().split()
    assert line[:5] == ["0", "0.312500", "0.416667", "0.312500", "0.625000"]  # 64x48 image, box 10,5,20,30
    assert line[5:8] == ["0.312500", "0.208333", "2"] and line[11:14] == ["0.000000", "0.000000", "0"]
    assert (tmp_path / "pose" / "images" / "im0.png").stat().st_size > 0  # linked into the layout


def test_voc_boxes_round_trip_with_its_one_based_pixels(tmp_path):
    original, back = round_trip(tmp_path, people, "voc")  # boxes on whole pixels come back exactly
    assert [a["bbox"] for a in objects(back)] == [a["bbox"] for a in objects(original)]
    xml = (tmp_path / "out-voc" / "Annotations" / "im0.xml").read_text()
    assert (
        "<xmin>11</xmin>" in xml and "<ymin>6</ymin>" in xml and "<xmax>30</xmax>" in xml and "<ymax>35</ymax>" in xml
    )
    assert "keypoints" not in json.dumps(back["annotations"])


def test_voc_keeps_the_category_order_and_categories_without_objects(tmp_path):
    entries = write_images(tmp_path / "src")
    cats = [{"id": 1, "name": "zebra"}, {"id": 2, "name": "apple"}, {"id": 3, "name": "unseen"}]
    anns = [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [2, 3, 20, 10], "area": 200, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0}]  # fmt: skip
    (tmp_path / "coco.json").write_text(json.dumps({"images": entries, "annotations": anns, "categories": cats}))
    convert(tmp_path / "coco.json", tmp_path / "voc", to="voc", images=tmp_path / "src")
    convert(tmp_path / "voc", tmp_path / "back.json", to="coco")
    back = json.loads((tmp_path / "back.json").read_text())
    assert [c["name"] for c in back["categories"]] == ["zebra", "apple", "unseen"]  # they sorted, unseen was lost
    assert [(a["image_id"], a["category_id"]) for a in back["annotations"]] == [(1, 2), (2, 1)]
    # VOC's object flags come back (truncated was written 0 whatever it was)
    xml = tmp_path / "voc" / "Annotations" / "im0.xml"
    xml.write_text(xml.read_text().replace("<truncated>0</truncated>", "<truncated>1</truncated>"))
    convert(tmp_path / "voc", tmp_path / "voc-again", to="voc")
    again = (tmp_path / "voc-again" / "Annotations" / "im0.xml").read_text()
    assert "<truncated>1</truncated>" in again and "<difficult>0</difficult>" in again


def test_every_written_format_is_told_by_its_path(tmp_path):
    path, images = source(tmp_path, instances)
    for fmt in FORMATS:
        out = tmp_path / f"out-{fmt}"
        convert(path, out, to=fmt, images=images)
        assert detect(out) == fmt
    assert detect(path) == "coco" and detect(tmp_path / "out-yolo" / "data.yaml") == "yolo"


def test_image_sizes_come_from_the_header_with_exif_rotation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: shown 30 wide, 50 high
    Image.new("RGB", (50, 30)).save(tmp_path / "r.jpg", exif=exif)
    assert image_size(tmp_path / "r.jpg") == (30, 50)


# -- bad input: one line each, naming the file and line; the rest converted ---------------------------------------


def yolo_dataset(root: Path, lines: dict[str, str]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i, (w, h) in enumerate(SIZES):
        Image.new("RGB", (w, h)).save(root / "images" / f"im{i}.png")
    for name, text in lines.items():
        (root / "labels" / name).write_text(text)
    (root / "data.yaml").write_text("train: images\nval: images\nnames: [cat, dog]\n")
    return root


def test_yolo_bad_lines_are_reported_and_the_rest_converted(tmp_path):
    root = yolo_dataset(
        tmp_path / "yolo",
        {
            "im0.txt": "0 0.5 0.5 0.25 0.5\n2 0.5 0.5 0.1 0.1\n1 0.5 0.5 0 0.2\n",
            "im1.txt": "1 0.1 0.1 0.5 0.1 0.3 0.6\nx 1 2 3 4\n0 0.5 0.5 1.5 0.2\n",
            "orphan.txt": "0 0.5 0.5 0.1 0.1\n",
        },
    )
    (root / "images" / "im2.png").write_bytes(b"not a png")
    (root / "labels" / "im2.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    done = convert(root, tmp_path / "out.json", to="coco")
    labels = root / "labels"
    assert done.skipped == [
        f"{labels / 'im0.txt'}:2: class index 2 is beyond the 2 class names (0..1)",
        f"{labels / 'im0.txt'}:3: degenerate box (width 0, height 9.6)",
        f"{labels / 'im1.txt'}:2: not numbers: 'x 1 2 3 4'",
        f"{labels / 'im1.txt'}:3: coordinates outside 0..1 (YOLO labels are normalised by the image size)",
        f"{root / 'images' / 'im2.png'}: image could not be read (not a readable image (cannot identify image file "
        f"'{root / 'images' / 'im2.png'}')); its labels im2.txt were not converted",
        f"{labels / 'orphan.txt'}: label file without an image (the image gives the size); skipped",
    ]
    back = json.loads((tmp_path / "out.json").read_text())
    assert [a["bbox"] for a in back["annotations"]] == [[24, 12, 16, 24], [8, 6, 32, 30]]
    assert len(back["images"]) == 2 and not done.ok


@pytest.mark.parametrize("given", [".", "data.yaml"])
def test_a_yolo_set_named_from_inside_its_folder_keeps_its_labels(tmp_path, monkeypatch, given):
    """Labels are found by swapping the image path's last /images/ for /labels/: "." and "data.yaml" (relative,
    no folder in front) found none, in conversion and in training alike (the same reader)."""
    from cnnapps.datasets.coco import CocoDataset

    root = yolo_dataset(tmp_path / "yolo", {"im0.txt": "0 0.5 0.5 0.25 0.5\n", "im1.txt": "1 0.5 0.5 0.5 0.5\n"})
    monkeypatch.chdir(root)
    done = convert(given, tmp_path / "out.json", to="coco")
    assert done.ok and [a["bbox"] for a in json.loads((tmp_path / "out.json").read_text())["annotations"]] == [
        [24, 12, 16, 24], [20, 15, 40, 30]]  # fmt: skip
    read = CocoDataset(given, task="detect")
    assert sum(len(read.target(i).boxes) for i in range(len(read))) == 2


def test_yolo_without_names_needs_them(tmp_path):
    root = yolo_dataset(tmp_path / "yolo", {"im0.txt": "1 0.5 0.5 0.25 0.5\n"})
    (root / "data.yaml").unlink()
    hint = r"write the class names in .*classes.txt, one per line \(data convert also takes them as --names FILE\)"
    with pytest.raises(FormatError, match=f"no data.yaml with names and no classes.txt; {hint}"):
        convert(root, tmp_path / "out.json", to="coco")
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    done = convert(root, tmp_path / "out.json", to="coco", names=tmp_path / "names.txt")
    assert done.categories == ["cat", "dog"] and done.annotations == 1


def voc_xml(filename: str, objects: str, size: str = "<size><width>64</width><height>48</height></size>") -> str:
    return f"<annotation>\n<filename>{filename}</filename>\n{size}\n{objects}</annotation>\n"


def voc_object(name: str, box: tuple[int, int, int, int]) -> str:
    x0, y0, x1, y1 = box
    return (
        f"<object>\n<name>{name}</name><difficult>0</difficult>\n<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>\n</object>\n"
    )


def test_voc_missing_size_degenerate_box_and_unsafe_xml(tmp_path):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    write_images(root / "JPEGImages")
    ann = root / "Annotations"
    (ann / "im0.xml").write_text(
        voc_xml("im0.png", voc_object("cat", (1, 1, 10, 10)) + voc_object("cat", (9, 5, 4, 8)))
    )
    (ann / "im1.xml").write_text(voc_xml("im1.png", voc_object("dog", (2, 3, 20, 30)), size=""))  # size from image
    (ann / "gone.xml").write_text(voc_xml("gone.png", voc_object("dog", (2, 3, 20, 30)), size="<size></size>"))
    bomb = (
        '<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>\n<annotation>&b;</annotation>'
    )
    (ann / "bomb.xml").write_text(bomb)
    (ann / "broken.xml").write_text("<annotation><filename>x</annotation>")
    done = convert(root, tmp_path / "out.json", to="coco")
    skipped = sorted(done.skipped)
    assert skipped[0].startswith(f"{ann / 'bomb.xml'}: XML refused")
    assert skipped[1].startswith(f"{ann / 'broken.xml'}: not valid XML (mismatched tag: line 1")
    assert (
        skipped[2] == f"{ann / 'gone.xml'}:3: <size> is missing (or not a positive width and height) and the image "
        "gone.png was not found to read it from; skipped"
    )
    assert skipped[3] == f"{ann / 'im0.xml'}:8: degenerate box (width -4, height 4); skipped"
    assert len(skipped) == 4
    back = json.loads((tmp_path / "out.json").read_text())
    assert [(im["file_name"], im["width"], im["height"]) for im in back["images"]] == [
        ("im0.png", 64, 48),
        ("im1.png", 80, 60),
        ("im2.png", 50, 40),  # no XML: an image without objects
    ]
    assert [a["bbox"] for a in back["annotations"]] == [[0, 0, 10, 10], [1, 2, 19, 28]]
    # nothing readable: an error (exit 2), not an empty output, as for the other formats
    for name in ("im0.xml", "im1.xml", "gone.xml"):
        (ann / name).unlink()
    with pytest.raises(FormatError, match=r"voc: no VOC file could be read \(.*bomb.xml: XML refused"):
        convert(root, tmp_path / "none.json", to="coco")
    assert not (tmp_path / "none.json").exists()


CVAT = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <image id="0" name="im0.png" width="64" height="48">
    <polygon label="cat" occluded="0" points="1.00,1.00;20.00,1.00" z_order="0"></polygon>
    <polygon label="cat" occluded="0" points="1.00,1.00;20.00,1.00;10.50,15.25" z_order="0"></polygon>
    <box label="dog" occluded="0" xtl="5" ytl="5" xbr="5" ybr="9" z_order="0"></box>
    <box label="dog" occluded="0" xtl="5" ytl="5" xbr="15" ybr="9" z_order="0"></box>
    <mask label="dog" rle="1, 2" left="0" top="0" width="2" height="1"></mask>
  </image>
</annotations>
"""


def test_cvat_short_polygon_and_degenerate_box_are_reported_by_line(tmp_path):
    (tmp_path / "annotations.xml").write_text(CVAT)
    done = convert(tmp_path / "annotations.xml", tmp_path / "out.json", to="coco")
    xml = tmp_path / "annotations.xml"
    assert done.skipped == [
        f"{xml}:5: <polygon> 'cat': polygon with 2 points (at least 3 are needed); skipped",
        f"{xml}:7: <box> 'dog': degenerate box (width 0, height 4); skipped",
        f"{xml}:9: <mask> is not converted (boxes, polygons, skeletons and grouped points are)",
    ]
    back = json.loads((tmp_path / "out.json").read_text())
    assert [(a["category_id"], a["bbox"]) for a in back["annotations"]] == [(1, [1, 1, 19, 14.25]), (2, [5, 5, 10, 4])]


def test_cvat_rotated_and_grouped_boxes(tmp_path):
    """A rotated box becomes the upright box around it (said in a note); two boxes of one group and label are two
    objects, not the last of them."""
    (tmp_path / "annotations.xml").write_text(
        '<annotations><image id="0" name="im0.png" width="100" height="80">'
        '<box label="car" xtl="40" ytl="30" xbr="60" ybr="40" rotation="90.0"></box>'
        '<box label="car" xtl="1" ytl="2" xbr="11" ybr="12" group_id="3"></box>'
        '<box label="car" xtl="50" ytl="40" xbr="70" ybr="60" group_id="3"></box></image></annotations>'
    )
    done = convert(tmp_path / "annotations.xml", tmp_path / "out.json", to="coco")
    back = json.loads((tmp_path / "out.json").read_text())
    assert [a["bbox"] for a in back["annotations"]] == [[45, 25, 10, 20], [1, 2, 10, 10], [50, 40, 20, 20]]
    assert done.ok and "rotated boxes were written as the upright boxes around them" in done.notes


def test_cvat_skeletons_keep_their_edges_with_shared_or_escaped_point_names(tmp_path):
    """Two skeleton labels naming their points alike (the second lost its edges), and names XML escapes."""
    entries = write_images(tmp_path / "src")
    names = ["nose & ear", 'tail "end"']
    cats = [{"id": i, "name": n, "keypoints": names, "skeleton": [[1, 2]]} for i, n in ((1, "cat"), (2, "dog"))]
    anns = [{"id": i, "image_id": i, "category_id": i, "bbox": [2, 2, 20, 20], "area": 400, "iscrowd": 0,
             "keypoints": [4, 4, 2, 18, 18, 2], "num_keypoints": 2} for i in (1, 2)]  # fmt: skip
    (tmp_path / "coco.json").write_text(json.dumps({"images": entries, "annotations": anns, "categories": cats}))
    convert(tmp_path / "coco.json", tmp_path / "cvat.xml", to="cvat", images=tmp_path / "src")
    convert(tmp_path / "cvat.xml", tmp_path / "back.json", to="coco", images=tmp_path / "src")
    back = json.loads((tmp_path / "back.json").read_text())
    assert [(c["name"], c["keypoints"], c["skeleton"]) for c in back["categories"]] == [
        ("cat", names, [[1, 2]]), ("dog", names, [[1, 2]])]  # fmt: skip


def test_labelme_two_rectangles_of_one_group_are_two_objects(tmp_path):
    write_images(tmp_path / "lm")
    box = {"label": "car", "shape_type": "rectangle", "group_id": 1}
    shapes = [{**box, "points": [[1, 2], [11, 12]]}, {**box, "points": [[20, 20], [40, 30]]}]
    (tmp_path / "lm" / "im0.json").write_text(json.dumps({"shapes": shapes, "imagePath": "im0.png"}))
    assert convert(tmp_path / "lm", tmp_path / "out.json", to="coco").ok
    back = json.loads((tmp_path / "out.json").read_text())
    assert [a["bbox"] for a in back["annotations"]] == [[1, 2, 10, 10], [20, 20, 20, 10]]


def test_labelme_unreadable_file_and_lone_point(tmp_path):
    write_images(tmp_path / "lm")
    good = {
        "shapes": [
            {"label": "cat", "points": [[1, 2], [11, 12]], "shape_type": "rectangle", "group_id": None},
            {"label": "nose", "points": [[3, 4]], "shape_type": "point", "group_id": None},
        ],
        "imagePath": "im0.png",
        "imageHeight": 48,
        "imageWidth": 64,
    }
    (tmp_path / "lm" / "im0.json").write_text(json.dumps(good))
    (tmp_path / "lm" / "im1.json").write_text('{"shapes": [')
    done = convert(tmp_path / "lm", tmp_path / "out.json", to="coco")
    assert (
        done.skipped[0] == f"{tmp_path / 'lm' / 'im0.json'}: shapes[1]: point 'nose' has no group_id tying it to "
        "an object; skipped"
    )
    assert done.skipped[1].startswith(f"{tmp_path / 'lm' / 'im1.json'}: not a readable JSON file")
    assert len(done.skipped) == 2 and done.annotations == 1 and done.images == 2  # im2.png, named by no JSON, too
    # a file saved on another machine names its image by that machine's path: the image beside it is the one
    (tmp_path / "lm" / "im1.json").write_text(json.dumps({**good, "imagePath": "C:\\Users\\me\\im1.png"}))
    done = convert(tmp_path / "lm", tmp_path / "again.json", to="coco")
    back = json.loads((tmp_path / "again.json").read_text())
    assert sorted(im["file_name"] for im in back["images"]) == ["im0.png", "im1.png", "im2.png"] and done.images == 3


# -- outputs: never over anything, nothing half-written -----------------------------------------------------------


def test_an_existing_output_is_refused_and_a_failed_run_leaves_nothing(tmp_path, monkeypatch):
    path, images = source(tmp_path, instances)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    with pytest.raises(OutputExistsError, match=r"taken: already exists; choose another output path$"):
        convert(path, tmp_path / "taken", to="yolo", images=images)
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["mine.txt"]

    def fail(data, out, at, report, mode):  # a writer that dies half-way
        (at / "labels").mkdir(parents=True)
        raise OSError("disk full")

    monkeypatch.setitem(FORMATS, "yolo", dataclasses.replace(FORMATS["yolo"], write=fail))
    with pytest.raises(OSError, match="disk full"):
        convert(path, tmp_path / "new", to="yolo", images=images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "taken"]  # no output, no temporary folder


# -- the command ----------------------------------------------------------------------------------------------------


def test_the_command_converts_and_sets_the_exit_code(run_cli, tmp_path):
    root = yolo_dataset(
        tmp_path / "yolo", {"im0.txt": "0 0.5 0.5 0.25 0.5\n", "im1.txt": "1 0.1 0.1 0.5 0.1 0.3 0.6\n"}
    )
    code, out, err = run_cli("data", "convert", root, tmp_path / "a.json", "--to", "coco", "--json")
    assert code == 0 and err == ""
    summary = json.loads(out)
    assert summary["from"] == "yolo" and summary["images"] == 3 and summary["annotations"] == 2
    assert (summary["boxes"], summary["polygons"], summary["categories"]) == (2, 1, ["cat", "dog"])

    code, out, _ = run_cli(
        "data", "convert", tmp_path / "a.json", tmp_path / "back", "--to", "yolo", "--images", root / "images"
    )
    assert code == 0 and "3 images, 2 annotations (2 boxes, 1 with polygons), 2 categories (cat, dog)" in out
    assert (
        tmp_path / "back" / "labels" / "im1.txt"
    ).read_text() == "1 0.100000 0.100000 0.500000 0.100000 0.300000 0.600000\n"

    (root / "labels" / "im2.txt").write_text("5 0.5 0.5 0.1 0.1\n")
    code, out, err = run_cli("data", "convert", root, tmp_path / "b.json", "--to", "coco")
    assert code == 1 and f"{root / 'labels' / 'im2.txt'}:1: class index 5 is beyond" in err

    code, _, err = run_cli("data", "convert", root, tmp_path / "b.json", "--to", "coco")
    assert code == 2 and err.strip() == f"error: {tmp_path / 'b.json'}: already exists; choose another output path"
    code, _, err = run_cli("data", "convert", root, tmp_path / "c", "--to", "yollo")
    assert code == 2 and "did you mean yolo?" in err


def test_conversion_imports_no_torch_or_numpy(tmp_path):
    path, images = source(tmp_path, instances)
    code = (
        "import sys\n"
        "from cnnapps.datasets.formats import convert\n"
        f"convert({str(path)!r}, {str(tmp_path / 'y')!r}, to='yolo', images={str(images)!r})\n"
        f"convert({str(tmp_path / 'y')!r}, {str(tmp_path / 'c')!r}, to='cvat')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'cv2')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def rle_masks(images: list[dict]) -> dict:
    """RLE masks as cnnapps' synthetic data has them: a square (compressed counts) and a disc (uncompressed
    counts), not crowds, and one crowd region."""
    import numpy as np
    from pycocotools import mask as mask_api

    square = np.zeros((48, 64), np.uint8)
    square[8:40, 12:44] = 1
    yy, xx = np.mgrid[:60, :80]
    disc = ((xx - 45) ** 2 + (yy - 28) ** 2 <= 18**2).astype(np.uint8)
    crowd = np.zeros((40, 50), np.uint8)
    crowd[5:20, 5:30] = 1
    compressed = mask_api.encode(np.asfortranarray(square))
    column_major = disc.T.reshape(-1)  # COCO's uncompressed counts: runs down the columns, zeros first
    edges = np.flatnonzero(np.diff(column_major)) + 1
    runs = np.diff(np.concatenate([[0], edges, [column_major.size]])).tolist()
    anns = [
        {"segmentation": {"size": [48, 64], "counts": compressed["counts"].decode()}, "mask": square},
        {"segmentation": {"size": [60, 80], "counts": runs if column_major[0] == 0 else [0, *runs]}, "mask": disc},
        {"segmentation": mask_api.encode(np.asfortranarray(crowd)), "mask": crowd, "iscrowd": 1},
    ]
    for i, ann in enumerate(anns):
        ys, xs = np.nonzero(ann.pop("mask"))
        if isinstance(ann["segmentation"]["counts"], bytes):
            ann["segmentation"]["counts"] = ann["segmentation"]["counts"].decode()
        ann.update(
            id=i + 1,
            image_id=i + 1,
            category_id=i + 1,
            bbox=[int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
            area=len(xs),
            iscrowd=ann.get("iscrowd", 0),
        )
    cats = [{"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(["square", "circle", "crowd"])]
    return {"images": images, "categories": cats, "annotations": anns}


def decoded(segmentation, height: int, width: int):
    """A COCO segmentation (polygons or RLE) as a boolean mask, as pycocotools rasterises it."""
    from pycocotools import mask as mask_api

    if isinstance(segmentation, dict) and isinstance(segmentation["counts"], str):  # compressed RLE
        return mask_api.decode(segmentation).astype(bool)
    rles = mask_api.frPyObjects(segmentation, height, width)
    return mask_api.decode(mask_api.merge(rles) if isinstance(rles, list) else rles).astype(bool)


@pytest.mark.parametrize("fmt", ["yolo", "labelme", "cvat"])
def test_rle_masks_are_written_as_the_polygons_traced_round_them(tmp_path, fmt):
    path, images = source(tmp_path, rle_masks)
    there = convert(path, tmp_path / f"out-{fmt}", to=fmt, images=images)
    assert there.skipped == [] and there.annotations == 3
    assert there.polygons == 2  # the square and the disc; the crowd region stays a mask
    assert any("crowd regions (iscrowd) left out" in n for n in there.notes)
    assert not any("RLE" in n for n in there.notes)  # no mask was written as its box
    if fmt == "yolo":
        assert there.written["kind"] == "segment"
    back = convert(tmp_path / f"out-{fmt}", tmp_path / "back.json", to="coco")
    assert back.skipped == [] and back.polygons == 2
    original, returned = json.loads(path.read_text()), json.loads((tmp_path / "back.json").read_text())
    sizes = {im["file_name"]: (im["height"], im["width"]) for im in original["images"]}
    before = {a["file"]: a for a in objects(original) if not a["iscrowd"]}
    after = {a["file"]: a for a in objects(returned)}
    assert sorted(after) == sorted(before) == ["im0.png", "im1.png"]
    for file, ann in before.items():
        height, width = sizes[file]
        assert isinstance(after[file]["segmentation"], list) and after[file]["name"] == ann["name"]
        mask = decoded(ann["segmentation"], height, width)
        traced = decoded(after[file]["segmentation"], height, width)
        iou = (mask & traced).sum() / (mask | traced).sum()
        assert iou >= 0.9, (fmt, file, iou)
        rows, cols = np.nonzero(mask)  # the outline runs along the pixels' outer edges: the mask's own box
        box = [cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min()]
        assert after[file]["bbox"] == pytest.approx(box, abs=0.01), (fmt, file)


def test_rle_outlines_run_along_the_pixels_edges_and_keep_parts_apart():
    """Two blocks one pixel apart stay two outlines, each exactly its block (on a grid of pixel corners they
    joined into one rectangle over the gap)."""
    from pycocotools import mask as mask_api

    from cnnapps.datasets.formats.hub import rle_polygons

    mask = np.zeros((12, 12), np.uint8)
    mask[2:8, 1:5] = mask[2:8, 6:10] = 1
    encoded = mask_api.encode(np.asfortranarray(mask))
    polygons = rle_polygons({"size": [12, 12], "counts": encoded["counts"].decode()})
    assert sorted(polygons) == [[1, 2, 1, 8, 5, 8, 5, 2], [6, 2, 6, 8, 10, 8, 10, 2]]


def test_rle_masks_that_trace_to_nothing_are_reported(tmp_path, run_cli):
    path, images = source(tmp_path, rle_masks)
    coco = json.loads(path.read_text())
    empty = {"size": [48, 64], "counts": [48 * 64]}
    dot = {"size": [60, 80], "counts": [60 * 30 + 20, 1, 60 * 50 - 21]}  # one pixel: its own 1 px square
    short = {"size": [48, 64], "counts": [10, 5]}  # runs that do not cover the image
    coco["annotations"][0]["segmentation"], coco["annotations"][1]["segmentation"] = empty, dot
    coco["annotations"].append({**coco["annotations"][0], "id": 9, "segmentation": short})
    path.write_text(json.dumps(coco))

    done = convert(path, tmp_path / "out", to="yolo", images=images)
    assert done.polygons == 1 and done.boxes == 4
    assert done.skipped == [
        f"{path}: annotations[0] (id 1) segmentation: RLE mask traces to no polygon (empty, or only parts under "
        "1 px); mask left out (its box kept)",
        f"{path}: annotations[3] (id 9) segmentation: RLE counts cover 15 pixels, its size 48 x 64 = 3072; "
        "mask left out (its box kept)",
    ]
    assert (tmp_path / "out" / "labels" / "im0.txt").read_text().count("\n") == 2  # both boxes written

    voc = convert(path, tmp_path / "voc", to="voc", images=images)  # boxes only: masks are not traced
    assert voc.skipped == [] and "VOC holds boxes only: polygons and masks were not written" in voc.notes

    code, _, err = run_cli("data", "convert", path, tmp_path / "cli", "--to", "yolo", "--images", images)
    assert code == 1 and f"{path}: annotations[0] (id 1) segmentation: RLE mask traces to no polygon" in err


def test_labelme_images_in_another_folder_are_named_from_theirs(tmp_path):
    """The summary and the COCO file_names point where the images are: beside the JSON files, --images, or the
    folder an imagePath such as ../imgs/a.png leads to (the LabelMe folder was named, where no image is)."""
    write_images(tmp_path / "imgs")
    box = {"label": "car", "shape_type": "rectangle", "group_id": None, "points": [[1, 2], [11, 12]]}
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "im0.json").write_text(json.dumps({"shapes": [box], "imagePath": "../imgs/im0.png"}))
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "im0.json").write_text(json.dumps({"shapes": [box], "imagePath": "im0.png"}))
    for src, images in (("up", None), ("flat", tmp_path / "imgs")):
        done = convert(tmp_path / src, tmp_path / f"{src}.json", to="coco", images=images, image_files="none")
        coco = json.loads((tmp_path / f"{src}.json").read_text())
        folder = Path(done.written["images"])
        assert folder.resolve() == (tmp_path / "imgs").resolve(), src
        assert [(folder / im["file_name"]).is_file() for im in coco["images"]] == [True], src


def test_class_names_given_twice_are_refused_before_anything_is_read(tmp_path):
    """Two indices of one name were read as one class: a label of the third index named category 3 of 2 (an invalid
    COCO file, and `data check` failed with KeyError), and [p, p, q] labelled class 1 as q."""
    root = yolo_dataset(tmp_path / "yolo", {"im0.txt": "0 .5 .5 .2 .2\n1 .5 .5 .2 .2\n2 .5 .5 .3 .3\n"})
    (root / "data.yaml").write_text("train: images\nval: images\nnames: [p, q, p]\n")
    with pytest.raises(FormatError, match=r"data\.yaml: class name 'p' is given twice \(indices 0 and 2\)"):
        convert(root, tmp_path / "out.json", to="coco")
    (root / "data.yaml").unlink()
    with pytest.raises(FormatError, match=r"^--names: class name 'p' is given twice \(indices 0 and 1\)"):
        convert(root, tmp_path / "out.json", to="coco", names=["p", "p", "q"])
    (tmp_path / "names.txt").write_text("p\nq\np\n")
    with pytest.raises(FormatError, match=r"names\.txt: class name 'p' is given twice"):
        convert(root, tmp_path / "out.json", to="coco", names=tmp_path / "names.txt")
    assert not (tmp_path / "out.json").exists()


def test_what_yolo_and_voc_cannot_hold_past_the_image_is_said(tmp_path):
    """Boxes past the image's edges are cut, polygon points moved to them and keypoints outside it unlabelled: each
    now with a note (they were changed without a word, exit 0)."""
    images = write_images(tmp_path / "src" / "images")
    person = {"id": 1, "name": "person", "supercategory": "", "keypoints": ["a", "b"], "skeleton": [[1, 2]]}
    shape = {"id": 1, "name": "shape", "supercategory": ""}
    past = {
        "id": 1,
        "image_id": 1,
        "category_id": 1,
        "bbox": [-5, 10, 20, 20],
        "area": 400,
        "iscrowd": 0,
        "segmentation": [[-5, 10, 15, 10, 15, 30]],
        "keypoints": [-2, 12, 1, 10, 20, 2],
        "num_keypoints": 2,
    }
    inside = {
        "id": 2,
        "image_id": 2,
        "category_id": 1,
        "bbox": [10, 10, 20, 20],
        "area": 400,
        "iscrowd": 0,
        "segmentation": [[10, 10, 30, 10, 30, 30]],
        "keypoints": [12, 12, 2, 20, 20, 2],
        "num_keypoints": 2,
    }
    cut = "boxes reaching past their image were cut at its edges (YOLO holds 0..1)"
    moved = "polygon points past their image were moved to its edges (YOLO holds 0..1)"
    unlabelled = "keypoints outside their image were written as not labelled (YOLO holds 0..1)"

    def converted(name: str, category: dict, anns: list[dict], to: str = "yolo"):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"images": images, "categories": [category], "annotations": anns}))
        return convert(path, tmp_path / name, to=to, images=tmp_path / "src" / "images")

    pose = converted("pose", person, [past, inside])
    assert cut in pose.notes and unlabelled in pose.notes and pose.skipped == []
    segment = converted("segment", shape, [past, inside])
    assert moved in segment.notes and cut in segment.notes and unlabelled not in segment.notes
    voc = converted("voc", shape, [past, inside], to="voc")
    assert "boxes reaching past their image were cut at its edges (VOC boxes lie in it)" in voc.notes
    for name, category in (("pose-inside", person), ("segment-inside", shape)):  # what lies inside: no note
        assert not {cut, moved, unlabelled} & set(converted(name, category, [inside]).notes)
    assert not [n for n in converted("voc-inside", shape, [inside], to="voc").notes if "cut" in n]


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_an_output_made_while_converting_is_not_replaced(tmp_path: Path, monkeypatch, kind: str) -> None:
    # the output was looked for, then renamed into place: what took the name in between was replaced
    from cnnapps.datasets.formats import disk

    out = tmp_path / ("out.json" if kind == "file" else "out")
    monkeypatch.setattr(disk, "check_free", lambda path: None)  # the look passes; the name is taken after it
    with pytest.raises(OutputExistsError), disk.staged(out) as at:
        if kind == "file":
            at.write_text("converted")
            out.write_text("the user's")
        else:
            at.mkdir()
            (at / "labels.txt").write_text("converted")
            out.mkdir()
    assert (out.read_text() if kind == "file" else sorted(out.iterdir())) == ("the user's" if kind == "file" else [])
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # nothing staged left behind
