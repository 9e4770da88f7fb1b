"""``data convert`` with the images left where they are (``--image-files none``, the default for every format but
YOLO): VOC files name each image by a ``<path>`` from where their reader looks, so reading them back (and
``data check``, and training) finds every image; CVAT and COCO files keep their tools' way, names under the images
folder the summary gives (``--images``: CVAT matches frames by those names); copied or linked images are named
inside the output as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from cnnapps.datasets.formats import convert, read

NAMES = ["a/x.png", "b/x.png", "c d/y.png"]  # two files of one name in two folders, a folder with a space


def coco_set(tmp_path: Path) -> Path:
    """``data/train.json`` naming three images below ``data/`` (where a COCO reader finds them)."""
    images = []
    for i, name in enumerate(NAMES):
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40 + i, 30), (60 * i, 0, 0)).save(tmp_path / "data" / name)
        images.append({"id": i + 1, "file_name": name, "width": 40 + i, "height": 30})
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [2, 3, 10, 12], "area": 120, "iscrowd": 0}
            for i in (1, 2, 3)]  # fmt: skip
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cat"}]}
    (tmp_path / "data" / "train.json").write_text(json.dumps(coco))
    return tmp_path / "data" / "train.json"


def found_images(path: Path, images: str | None = None) -> list[Path]:
    """The image files the project's reader finds for the annotations at ``path``, in image order."""
    data, report, _ = read(path, images=images)
    assert report.skipped == [], report.skipped
    return [data.files[im["id"]] for im in data.coco["images"]]


def same_images(files: list[Path], tmp_path: Path) -> bool:
    return [f.resolve() for f in files] == [(tmp_path / "data" / n).resolve() for n in NAMES]


@pytest.mark.parametrize(
    ("fmt", "out"),
    [("voc", "out_voc")],
)
def test_outputs_without_their_images_name_them_where_they_are(tmp_path, fmt, out):
    done = convert(coco_set(tmp_path), tmp_path / out, to=fmt)
    assert done.ok and done.notes == [] and done.written["images"] == str(tmp_path / "data")
    assert same_images(found_images(tmp_path / out), tmp_path)  # before: out/a/x.png, out/Annotations/a/x.png...
    back = convert(tmp_path / out, tmp_path / "back.json", to="coco")  # and onwards to COCO, with its images folder
    assert back.ok and same_images(found_images(tmp_path / "back.json", back.written["images"]), tmp_path)


def test_the_names_lead_from_the_files_folder(tmp_path):
    """What VOC writes: a relative path that survives moving the images and annotations together; CVAT keeps the
    source's names, by which CVAT matches its frames."""
    path = coco_set(tmp_path)
    convert(path, tmp_path / "voc", to="voc")
    convert(path, tmp_path / "cvat", to="cvat")
    xml = (tmp_path / "voc" / "Annotations" / "c d" / "y.xml").read_text()
    assert "<folder>../../../data/c d</folder>" in xml and "<filename>y.png</filename>" in xml
    assert "<path>../../../data/c d/y.png</path>" in xml
    assert 'name="a/x.png"' in (tmp_path / "cvat" / "annotations.xml").read_text()
    (tmp_path / "moved").mkdir()
    for name in ("data", "voc"):
        (tmp_path / name).rename(tmp_path / "moved" / name)
    assert all(f.is_file() for f in found_images(tmp_path / "moved" / "voc"))
    data, _, _ = read(tmp_path / "moved" / "voc")
    assert [im["file_name"] for im in data.coco["images"]] == NAMES  # VOC keeps the names; <path> finds the file
    assert data.images_root == tmp_path / "moved" / "data"


def test_names_climb_real_folders_and_keep_symlinked_ones(tmp_path):
    """The output in a symlinked folder (``..`` climbs from where it really is), the images in another (named by the
    link, as the source names them, not by where it points)."""
    coco_set(tmp_path)
    (tmp_path / "store" / "x" / "y").mkdir(parents=True)
    (tmp_path / "data").rename(tmp_path / "store" / "deep")
    try:
        (tmp_path / "data").symlink_to(tmp_path / "store" / "deep", target_is_directory=True)
        (tmp_path / "outs").symlink_to(tmp_path / "store" / "x" / "y", target_is_directory=True)
    except OSError:
        pytest.skip("no symlinks here")
    convert(tmp_path / "data" / "train.json", tmp_path / "outs" / "voc", to="voc")
    assert same_images(found_images(tmp_path / "outs" / "voc"), tmp_path)
    xml = (tmp_path / "outs" / "voc" / "Annotations" / "a" / "x.xml").read_text()  # in store/x/y/voc/Annotations/a
    assert "<path>../../../../../../data/a/x.png</path>" in xml


@pytest.mark.parametrize("fmt", ["voc", "cvat", "coco"])
def test_copied_images_are_named_inside_the_output(tmp_path, fmt):
    done = convert(coco_set(tmp_path), tmp_path / "out", to=fmt, image_files="copy")
    assert done.ok and Path(done.written["images"]).parent == tmp_path / "out"
    files = found_images(tmp_path / "out")
    assert all(f.is_file() and (tmp_path / "out") in f.parents for f in files)
    assert "<path>" not in "".join(p.read_text() for p in (tmp_path / "out").rglob("*.xml"))


def test_images_that_are_nowhere_keep_the_sources_names(tmp_path):
    path = coco_set(tmp_path)
    (tmp_path / "data" / "b" / "x.png").unlink()
    done = convert(path, tmp_path / "out", to="voc")
    assert (
        done.notes[-1] == "1 image not found where the source names it (b/x.png): written with the source's file names"
    )
    text = "".join(p.read_text() for p in (tmp_path / "out").rglob("*.*") if p.suffix in (".xml", ".json"))
    assert "../data/a/x.png" in text and "../data/b/x.png" not in text


def test_a_voc_path_of_another_machine_falls_back_to_the_images_folder(tmp_path):
    """LabelImg writes ``<path>`` absolute: used when the image is there, else the image is looked for as before."""
    (tmp_path / "voc" / "Annotations").mkdir(parents=True)
    (tmp_path / "voc" / "JPEGImages").mkdir()
    Image.new("RGB", (20, 10)).save(tmp_path / "voc" / "JPEGImages" / "im0.png")
    Image.new("RGB", (20, 10)).save(tmp_path / "elsewhere.png")
    box = "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
    for stem, path in (("im0", "C:\\Users\\me\\im0.png"), ("im1", str(tmp_path / "elsewhere.png"))):
        (tmp_path / "voc" / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.png</filename><path>{path}</path>{box}</annotation>"
        )
    assert found_images(tmp_path / "voc") == [tmp_path / "voc" / "JPEGImages" / "im0.png", tmp_path / "elsewhere.png"]


def test_data_check_finds_every_image_of_a_converted_voc_set(run_cli, tmp_path):
    convert(coco_set(tmp_path), tmp_path / "voc", to="voc")
    code, out, _ = run_cli("data", "check", tmp_path / "voc", "--min-images", "0")
    assert code == 0 and "image not found" not in out, out
