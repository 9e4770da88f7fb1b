"""``cnnapps data check``: each kind of problem found in every task's formats, named by its file (and line or entry);
clean data exits 0, errors 1, unusable input 2; warnings fail only with --strict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnapps.datasets.check import DataCheckError, check_data


def picture(path: Path, size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    """A noise image (distinct per seed, so only true copies share bytes or look alike)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def kinds(report) -> dict[str, list]:
    return {kind: [(p.where, p.message) for p in items] for kind, items in report.by_kind().items()}


def coco_set(root: Path, n: int = 4) -> tuple[Path, dict]:
    """A clean COCO instances file: n 64x48 images, two categories, one polygon object per image."""
    images = [{"id": i + 1, "file_name": f"im{i}.png", "width": 64, "height": 48} for i in range(n)]
    for i in range(n):
        picture(root / "images" / f"im{i}.png", seed=i)
    anns = [
        {
            "id": i + 1,
            "image_id": i + 1,
            "category_id": 1 + i % 2,
            "bbox": [10, 10, 20, 20],
            "area": 400,
            "iscrowd": 0,
            "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]],
        }
        for i in range(n)
    ]
    coco = {"images": images, "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}], "annotations": anns}
    path = root / "train.json"
    path.write_text(json.dumps(coco))
    return path, coco


def test_a_clean_coco_set_has_no_problems_and_exits_0(tmp_path, run_cli):
    path, _ = coco_set(tmp_path)
    report = check_data(path, min_images=1)
    assert report.task == "segment" and report.format == "coco" and report.images == 4
    assert report.problems == [] and report.exit_code() == 0
    assert {c.name: (c.images, c.instances) for c in report.classes} == {"cat": (2, 2), "dog": (2, 2)}
    code, out, _ = run_cli("data", "check", path, "--min-images", "1")
    assert code == 0 and "clean; exit code 0" in out and "cat" in out


def test_coco_annotation_problems_name_their_entry(tmp_path):
    path, coco = coco_set(tmp_path, 6)
    anns = coco["annotations"]
    anns[0]["bbox"] = [10, 10, 0.5, 20]  # degenerate: training drops it
    anns[1]["bbox"] = [50, 30, 40, 10]  # reaches 26 px past the 64 px wide image
    anns[2]["bbox"] = [100, 100, 5, 5]  # outside entirely
    anns[3]["segmentation"] = [[1, 2, 3, 4]]  # a polygon of two points
    anns[4]["segmentation"] = []  # segment object with no mask
    coco["images"][5]["width"] = 80  # the file is 64 wide
    path.write_text(json.dumps(coco))
    found = kinds(check_data(path, min_images=1))
    assert [w for w, _ in found["degenerate_box"]] == [f"{path}: annotations[0] (id 1)"]
    outside = dict(found["box_outside_image"])
    assert "26 px past the 64x48 image" in outside[f"{path}: annotations[1] (id 2)"]
    assert "lies outside" in outside[f"{path}: annotations[2] (id 3)"]
    empty = [w for w, _ in found["empty_mask"]]
    assert f"{path}: annotations[3] (id 4) segmentation[0]" in empty and f"{path}: annotations[4] (id 5)" in empty
    ((where, message),) = found["size_mismatch"]
    assert where == f"{path}: images[5]" and "is 64x48 but its annotations say 80x48" in message


def test_keypoints_that_do_not_fit_their_category(tmp_path):
    path, coco = coco_set(tmp_path, 3)
    coco["categories"] = [
        {"id": 1, "name": "person", "keypoints": ["nose", "left_eye", "right_eye"], "skeleton": [[1, 2], [2, 7]]}
    ]
    for ann in coco["annotations"]:
        ann["category_id"] = 1
        ann.pop("segmentation")
        ann["keypoints"] = [15, 15, 2, 20, 15, 2, 25, 15, 2]
        ann["num_keypoints"] = 3
    coco["annotations"][0]["keypoints"] = [15, 15, 2, 20, 15, 2]  # two of three
    coco["annotations"][1]["num_keypoints"] = 1
    coco["annotations"][2]["keypoints"][6] = 90  # right_eye beyond the image
    path.write_text(json.dumps(coco))
    report = check_data(path, min_images=1)
    assert report.task == "pose"
    found = dict(kinds(report)["keypoints"])
    assert "expected 3 x 3 numbers" in found[f"{path}: annotations[0] (id 1) keypoints"]
    assert "num_keypoints is 1 but 3 are labelled" in found[f"{path}: annotations[1] (id 2)"]
    assert "'right_eye' at (90, 15) lies outside" in found[f"{path}: annotations[2] (id 3)"]
    assert "skeleton pairs [[2, 7]]" in found[f"{path}: category 'person'"]


def test_unreadable_missing_and_duplicate_images(tmp_path):
    path, _ = coco_set(tmp_path, 5)
    (tmp_path / "images" / "im1.png").write_bytes(b"not a picture at all")
    (tmp_path / "images" / "im2.png").unlink()
    shutil.copy(tmp_path / "images" / "im0.png", tmp_path / "images" / "im3.png")
    found = kinds(check_data(path, min_images=1))
    unreadable = dict(found["unreadable_image"])
    assert "not an image" in unreadable[f"{path}: images[1]"]
    assert "image not found" in unreadable[f"{path}: images[2]"]
    ((where, message),) = found["duplicate_image"]
    assert where == f"{path}: images[3]" and f"is the same bytes as {tmp_path / 'images' / 'im0.png'}" in message


def yolo_set(root: Path, train: str = "train", val: str = "val") -> Path:
    """A YOLO folder with train and val splits (in folders of these names): two classes, good lines, a bad class
    index, a box outside 0..1."""
    root.mkdir()
    (root / "data.yaml").write_text(f"train: images/{train}\nval: images/{val}\nnames: [cat, dog]\n")
    for split, seeds in ((train, range(4)), (val, range(10, 12))):
        for s in seeds:
            picture(root / "images" / split / f"im{s}.png", seed=s)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"im{s}.txt").write_text(f"{s % 2} 0.5 0.5 0.25 0.25\n")
    (root / "labels" / train / "im1.txt").write_text("1 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n0 1.4 0.5 0.2 0.2\n")
    return root


# the split of an image is the data.yaml entry naming it, whatever its folder is called (ultralytics' COCO: *2017)
@pytest.mark.parametrize("train, val", [("train", "val"), ("train2017", "val2017")])
def test_yolo_lines_are_named_by_file_and_line_and_leakage_across_its_splits(tmp_path, train, val):
    root = yolo_set(tmp_path / "yolo", train, val)
    shutil.copy(root / "images" / train / "im2.png", root / "images" / val / "im12.png")
    report = check_data(root, min_images=1)
    assert report.format == "yolo" and report.task == "detect" and (report.images, report.val_images) == (4, 3)
    found = kinds(report)
    label = root / "labels" / train / "im1.txt"
    assert [w for w, _ in found["bad_annotation"]] == [f"{label}:2"]
    assert [w for w, _ in found["box_outside_image"]] == [f"{label}:3"]
    ((where, message),) = found["leakage"]
    assert where == str(root / "images" / val / "im12.png") and "(val) has the same bytes as" in message
    assert "im2.png (train)" in message and "duplicate_image" not in found


def test_voc_box_past_the_image_names_the_xml_line(tmp_path):
    picture(tmp_path / "JPEGImages" / "a.png", (64, 48))
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "a.xml").write_text(
        "<annotation>\n<filename>a.png</filename>\n<size><width>64</width><height>48</height></size>\n"
        "<object>\n<name>cat</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>90</xmax><ymax>40</ymax></bndbox>\n"
        "</object>\n</annotation>\n"
    )
    found = kinds(check_data(tmp_path, min_images=1))
    assert [w for w, _ in found["box_outside_image"]] == [f"{tmp_path / 'Annotations' / 'a.xml'}:4"]


def class_folders(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            picture(root / name / f"{i}.png", seed=seed + 100 * c + i)
    return root


def test_class_folders_small_empty_imbalanced_and_leaking_into_val(tmp_path):
    class_folders(tmp_path / "d" / "train", {"a": 24, "b": 2})
    (tmp_path / "d" / "train" / "c").mkdir()
    class_folders(tmp_path / "d" / "val", {"a": 2, "b": 2}, seed=5000)
    shutil.copy(tmp_path / "d" / "train" / "a" / "3.png", tmp_path / "d" / "val" / "b" / "9.png")
    report = check_data(tmp_path / "d", min_images=5)
    assert report.task == "classify" and report.format == "folders" and report.val_source == str(tmp_path / "d" / "val")
    found = kinds(report)
    assert found["empty_class"] == [(str(tmp_path / "d" / "train" / "c"), "class folder with no images")]
    assert [w for w, _ in found["too_few_images"]] == [str(tmp_path / "d" / "train" / "b")]
    assert "'a' has 24 images, smallest 'b' 2: 12x" in found["class_imbalance"][0][1]
    ((where, message),) = found["leakage"]
    assert where == str(tmp_path / "d" / "val" / "b" / "9.png") and "(val) has the same bytes as" in message
    assert report.imbalance == 12
    counts = {c.name: (c.images, c.val_images) for c in report.classes}
    assert counts == {"a": (24, 2), "b": (2, 3), "c": (0, 0)}


def test_csv_rows_are_named_by_line_and_same_image_two_labels(tmp_path):
    picture(tmp_path / "x.png", seed=1)
    picture(tmp_path / "y.png", seed=2)
    shutil.copy(tmp_path / "x.png", tmp_path / "z.png")
    (tmp_path / "labels.csv").write_text("path,label\nx.png,cat\ny.png\nz.png,dog\nmissing.png,dog\n")
    found = kinds(check_data(tmp_path / "labels.csv", min_images=1))
    assert [w for w, _ in found["bad_annotation"]] == [f"{tmp_path / 'labels.csv'}:3"]
    assert [w for w, _ in found["unreadable_image"]] == [f"{tmp_path / 'labels.csv'}:5"]
    ((where, message),) = found["duplicate_image"]
    assert where == f"{tmp_path / 'labels.csv'}:4" and "(labelled 'dog' here, 'cat' there)" in message


def test_a_csv_rows_missing_image_makes_no_class_as_in_training(tmp_path):
    """Training leaves the row out when the CSV is read, so its label alone is no class: the check counts what
    training reads (it counted the image and a class 'bird' of one image)."""
    from cnnapps.datasets.folders import read_labeled

    picture(tmp_path / "x.png", seed=1)
    picture(tmp_path / "y.png", seed=2)
    (tmp_path / "labels.csv").write_text("filename,label\nx.png,cat\ny.png,dog\ngone.png,bird\n")
    report = check_data(tmp_path / "labels.csv", min_images=1)
    assert {c.name: c.images for c in report.classes} == {"cat": 1, "dog": 1}
    assert kinds(report)["unreadable_image"] == [
        (f"{tmp_path / 'labels.csv'}:4", f"image not found: {tmp_path / 'gone.png'}")
    ]
    assert read_labeled(tmp_path / "labels.csv").class_names == ["cat", "dog"]


def test_a_multi_label_csv_counts_each_image_under_each_of_its_labels(tmp_path):
    """The ``path,labels`` header and ``cat|dog`` rows training reads as multi-label data: two classes, no error
    (they were read as a class 'cat|dog', and the header as an image 'path' of a class 'labels')."""
    for i, name in enumerate(("a", "b", "c")):
        picture(tmp_path / f"{name}.png", seed=i)
    (tmp_path / "tags.csv").write_text("path,labels\na.png,cat|dog\nb.png,cat\nc.png,dog; cat\n")
    report = check_data(tmp_path / "tags.csv", min_images=1)
    assert {c.name: c.images for c in report.classes} == {"cat": 3, "dog": 2}
    assert not kinds(report)
    # saved by Excel as "CSV UTF-8" (a byte-order mark first): the header is still the header, as training reads it
    (tmp_path / "tags.csv").write_bytes("path,labels\na.png,cat|dog\nb.png,cat\n".encode("utf-8-sig"))
    report = check_data(tmp_path / "tags.csv", min_images=1)
    assert {c.name: c.images for c in report.classes} == {"cat": 2, "dog": 1} and not kinds(report)


def test_near_duplicates_only_when_asked(tmp_path):
    root = class_folders(tmp_path / "d", {"a": 3, "b": 3})
    rgb = np.asarray(Image.open(root / "a" / "0.png")).astype(int)
    Image.fromarray(np.clip(rgb + 6, 0, 255).astype(np.uint8)).save(root / "b" / "brighter.png")
    assert "near_duplicate" not in kinds(check_data(root, min_images=1))
    found = kinds(check_data(root, min_images=1, near_duplicates=4))
    ((where, message),) = found["near_duplicate"]
    assert where == str(root / "b" / "brighter.png") and f"looks like {root / 'a' / '0.png'}" in message


def test_semantic_masks_that_do_not_fit_or_are_empty(tmp_path):
    (tmp_path / "classes.txt").write_text("background\nroad\n")
    for i in range(3):
        picture(tmp_path / "images" / f"m{i}.png", (32, 24), seed=i)
    (tmp_path / "masks").mkdir()
    mask = np.zeros((24, 32), np.uint8)
    mask[5:10, 5:10] = 1
    Image.fromarray(mask).save(tmp_path / "masks" / "m0.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "masks" / "m1.png")  # wrong size
    Image.fromarray(np.full((24, 32), 255, np.uint8)).save(tmp_path / "masks" / "m2.png")  # all ignored
    report = check_data(tmp_path, min_images=1)
    assert report.task == "semantic"
    found = kinds(report)
    assert found["bad_mask"] == [(str(tmp_path / "masks" / "m1.png"), "mask is 10x10 but its image is 32x24")]
    assert [w for w, _ in found["empty_mask"]] == [str(tmp_path / "masks" / "m2.png")]
    assert {c.name: c.images for c in report.classes} == {"background": 1, "road": 1}


def test_empty_captions(tmp_path):
    for i in range(2):
        picture(tmp_path / "images" / f"c{i}.png", seed=i)
    data = {
        "images": [{"id": 1, "file_name": "c0.png"}, {"id": 2, "file_name": "c1.png"}],
        "annotations": [{"id": 1, "image_id": 1, "caption": "a red square"}, {"id": 2, "image_id": 2, "caption": " "}],
    }
    (tmp_path / "captions.json").write_text(json.dumps(data))
    report = check_data(tmp_path / "captions.json")
    assert report.task == "caption" and report.images == 1
    where = f"{tmp_path / 'captions.json'}: annotations[1]"
    assert kinds(report)["empty_caption"] == [(where, "empty caption of image 2")]


def test_exit_codes_strict_and_json_with_every_item(tmp_path, run_cli):
    root = class_folders(tmp_path / "d", {"a": 3, "b": 3})
    code, out, _ = run_cli("data", "check", root)  # two small classes: warnings only
    assert code == 0 and "warning too_few_images (2)" in out
    code, _, _ = run_cli("data", "check", root, "--strict")
    assert code == 1
    for i in range(8):
        shutil.copy(root / "a" / "0.png", root / "a" / f"copy{i}.png")
    code, out, _ = run_cli("data", "check", root, "--examples", "2")
    assert code == 1 and "error duplicate_image (8)" in out and "... and 6 more" in out
    code, out, _ = run_cli("data", "check", root, "--json")
    data = json.loads(out)
    assert code == 1 and data["exit_code"] == 1 and data["problems"]["duplicate_image"]["count"] == 8
    assert len(data["problems"]["duplicate_image"]["items"]) == 8
    assert data["classes"]["a"]["images"] == 11
    code, _, err = run_cli("data", "check", tmp_path / "nothing-here")
    assert code == 2 and "no such file or folder" in err
    code, _, err = run_cli("data", "check", root, "--task", "clasify")
    assert code == 2 and "did you mean classify" in err


def test_unusable_input_raises(tmp_path):
    (tmp_path / "notes.bin").write_bytes(b"?")
    with pytest.raises(DataCheckError, match="cannot tell what data this is"):
        check_data(tmp_path / "notes.bin")


def test_train_and_test_class_folders_are_splits_not_classes(tmp_path, run_cli):
    for split, seed in (("train", 0), ("test", 10)):
        for k, name in enumerate(("cat", "dog")):
            for i in range(2):
                picture(tmp_path / "cls" / split / name / f"{i}.png", seed=seed + 2 * k + i)
    report = check_data(tmp_path / "cls", min_images=0)
    assert report.task == "classify" and report.val_source == str(tmp_path / "cls" / "test")
    assert {c.name: (c.images, c.val_images) for c in report.classes} == {"cat": (2, 2), "dog": (2, 2)}
    picture(tmp_path / "only" / "train" / "cat" / "0.png")
    code, _, err = run_cli("data", "check", tmp_path / "only", "--task", "classify")
    assert code == 2 and "are splits, not classes" in err


def test_with_val_given_each_file_is_the_split_it_was_given_as(tmp_path):
    """A file_name's first folder tells the split only of a source that holds its own splits."""
    for i in range(4):
        picture(tmp_path / "images" / "train" / f"{i}.png", seed=i)
    files = [[0, 1, 2], [3]]
    for name, ids in zip(("train", "val"), files, strict=True):
        images = [{"id": i + 1, "file_name": f"train/{i}.png", "width": 64, "height": 48} for i in ids]
        anns = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [5, 5, 20, 20]} for i in ids]
        coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cat"}]}
        (tmp_path / f"{name}.json").write_text(json.dumps(coco))
    report = check_data(tmp_path / "train.json", val=tmp_path / "val.json", min_images=0)
    assert (report.images, report.val_images) == (3, 1)
    assert [(c.images, c.val_images) for c in report.classes] == [(3, 1)]
