"""``cnnapps data show``: samples drawn before and after the task's own training augmentation, as a PNG grid of the
expected size that never replaces a file; the same seed gives the same picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnapps.apps.common.browse import PAD, TITLE, draw_samples
from cnnapps.datasets.synthetic import write_coco
from cnnapps.errors import CnnappsError


def picture_part(tile: np.ndarray, label: int = 0) -> np.ndarray:
    """A tile without its title line, frame and ``label`` band."""
    return tile[TITLE + PAD : tile.shape[0] - PAD - label, PAD:-PAD]


#: height of a one-line label under a picture (class labels, captions)
LABEL = 22


def grid_size(n: int, columns: int, cell: int, label: int = 0) -> tuple[int, int]:
    """(width, height) of the grid: pairs of framed cells under a title line (and over a ``label`` band),
    ``columns`` pairs to a row."""
    columns = min(columns, n)
    rows = -(-n // columns)
    return columns * 2 * (cell + 2 * PAD), rows * (TITLE + cell + 2 * PAD + label)


@pytest.fixture()
def shapes(tmp_path) -> Path:
    return write_coco("shapes", tmp_path, "train", 4, seed=0, size=64)


def test_detection_samples_before_and_after_the_training_augmentation(shapes):
    samples = draw_samples(shapes, n=3, columns=2, cell=64, seed=1)
    assert samples.task == "segment" and samples.augment == "default" and len(samples.pairs) == 3
    assert (samples.grid.shape[1], samples.grid.shape[0]) == grid_size(3, 2, 64)
    assert any(not np.array_equal(picture_part(a), picture_part(b)) for a, b in samples.pairs)
    again = draw_samples(shapes, n=3, columns=2, cell=64, seed=1)
    assert np.array_equal(again.grid, samples.grid) and again.sources == samples.sources
    plain = draw_samples(shapes, n=3, columns=2, cell=64, seed=1, augment="none")
    assert all(np.array_equal(picture_part(a), picture_part(b)) for a, b in plain.pairs)
    drawn = picture_part(plain.pairs[0][0])
    raw = np.asarray(Image.open(samples.sources[0]).convert("RGB"))
    assert not np.array_equal(drawn, raw)  # the boxes and masks are drawn on it


def test_class_folder_samples_and_presets_of_the_task(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    samples = draw_samples(tmp_path, n=4, columns=4, cell=48, augment="creative", input_size=32)
    assert samples.task == "classify" and (samples.grid.shape[1], samples.grid.shape[0]) == grid_size(4, 4, 48, LABEL)
    assert all(not np.array_equal(picture_part(a, LABEL), picture_part(b, LABEL)) for a, b in samples.pairs)
    with pytest.raises(CnnappsError, match="choose from default, alexnet, creative, randaugment, trivialaugment, none"):
        draw_samples(tmp_path, augment="mosaic")


def test_semantic_masks_are_painted(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "classes.txt").write_text("background\nroad\n")
    Image.new("RGB", (40, 30), (128, 128, 128)).save(tmp_path / "images" / "a.png")
    mask = np.zeros((30, 40), np.uint8)
    mask[10:20, 10:30] = 1
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    samples = draw_samples(tmp_path, n=1, cell=40, augment="none", input_size=40)
    before = picture_part(samples.pairs[0][0])
    assert samples.task == "semantic" and len(np.unique(before.reshape(-1, 3), axis=0)) >= 3  # grey, two classes


def test_a_sample_that_cannot_be_read_is_skipped_and_another_drawn(tmp_path, caplog):
    import logging

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "classes.txt").write_text("background\nroad\n")
    for i in range(3):
        Image.new("RGB", (8, 6)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(np.full((6, 8), 9 if i == 1 else 1, np.uint8)).save(tmp_path / "masks" / f"{i}.png")
    with caplog.at_level(logging.WARNING, logger="cnnapps"):
        samples = draw_samples(tmp_path, n=2, cell=32, augment="none", input_size=8, seed=0)
    assert sorted(Path(s).name for s in samples.sources) == ["0.png", "2.png"]  # two drawn, 1.png in neither
    assert len(samples.skipped) == 1 and "1.png: class index 9 at 48 pixels" in samples.skipped[0]
    assert "skipping " in caplog.text and "1.png: class index 9" in caplog.text
    for i in (0, 2):
        (tmp_path / "masks" / f"{i}.png").write_bytes(b"not a png")
    with pytest.raises(CnnappsError, match=r"nothing to draw \(3 samples skipped, the first: .*1\.png: class index 9"):
        draw_samples(tmp_path, n=2, cell=32, augment="none", input_size=8)


def test_the_command_writes_a_new_png_and_never_over_a_file(shapes, tmp_path, run_cli, monkeypatch):
    out = tmp_path / "grid.png"
    code, stdout, _ = run_cli("data", "show", shapes, "--n", "2", "--cell", "64", "--columns", "2", "--out", out)
    assert code == 0 and stdout.startswith(f"{out} (")
    assert Image.open(out).size == grid_size(2, 2, 64)
    before = out.read_bytes()
    code, _, err = run_cli("data", "show", shapes, "--n", "2", "--out", out)
    assert code == 2 and "already exists" in err and out.read_bytes() == before
    monkeypatch.chdir(tmp_path)
    for name in ("samples.png", "samples-1.png"):
        code, stdout, _ = run_cli("data", "show", shapes, "--n", "1", "--cell", "32")
        assert code == 0 and (tmp_path / name).is_file() and name in stdout


@pytest.mark.parametrize("task", [None, "detect"])
def test_an_image_of_another_size_than_its_annotations_say_is_skipped(shapes, task):
    """Its annotations are in another frame: drawn wrong (detect) or refused by the augmentation (segment, pose)."""
    resized = shapes.parent / "train" / "shapes_00001.png"
    Image.open(resized).resize((80, 48)).save(resized)
    samples = draw_samples(shapes, task=task, n=4, cell=32, augment="none", seed=0)
    assert len(samples.pairs) == 3 and str(resized) not in samples.sources
    assert samples.skipped == [f"{resized}: is 80x48 but its annotations say 64x64"]


def labels_drawn(monkeypatch) -> list[str]:
    """The labels drawn under the pictures, in order."""
    import cnnapps.apps.common.browse as browse

    drawn: list[str] = []
    title = browse.text_band
    monkeypatch.setattr(browse, "text_band", lambda text, *a, **k: drawn.append(text) or title(text, *a, **k))
    return drawn


def test_multi_label_folders_and_csv_files_are_drawn_with_all_their_labels(tmp_path, monkeypatch):
    drawn = labels_drawn(monkeypatch)
    for i in range(2):
        Image.new("RGB", (40, 30), (90, 90, 90)).save(tmp_path / f"{i}.png")
    (tmp_path / "labels.csv").write_text("path,labels\n0.png,animal|indoor\n1.png,\n")
    for path in (tmp_path, tmp_path / "labels.csv"):
        drawn.clear()
        samples = draw_samples(path, n=2, cell=32, augment="none", input_size=32)
        assert samples.task == "classify" and [Path(s).name for s in samples.sources] == ["0.png", "1.png"]
        assert drawn == ["animal, indoor", "animal, indoor", "no label", "no label"]  # before and after


def test_data_that_names_its_splits_is_drawn_from_its_training_split(tmp_path):
    for split, n in (("train", 2), ("val", 3)):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (32, 32)).save(tmp_path / "images" / split / f"{split}{i}.png")
            (tmp_path / "labels" / split / f"{split}{i}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [cat]\n")
    samples = draw_samples(tmp_path, n=5, cell=32, augment="none")
    assert sorted(Path(s).name for s in samples.sources) == ["train0.png", "train1.png"]


def test_a_label_is_drawn_under_the_fitted_picture_at_one_size_for_every_image(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("RGB", (16, 16), (200, 200, 200)).save(tmp_path / "a" / "small.png")
    Image.new("RGB", (256, 256), (200, 200, 200)).save(tmp_path / "b" / "large.png")
    samples = draw_samples(tmp_path, n=2, cell=48, augment="none", input_size=32)
    for before, after in samples.pairs:
        assert before.shape == after.shape == (TITLE + 48 + 2 * PAD + LABEL, 48 + 2 * PAD, 3)
        assert (picture_part(before, LABEL) == 200).all()  # the picture whole: no band over it
        assert (before[-LABEL:] < 128).any()  # the label, under it


def test_a_long_caption_is_wrapped_to_the_picture_width(tmp_path):
    import json

    (tmp_path / "caps").mkdir()
    Image.new("RGB", (40, 40), (120, 120, 120)).save(tmp_path / "caps" / "a.png")
    caption = "a grey square that fills the whole picture and has a caption far longer than the picture is wide"
    (tmp_path / "caps.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}],
                                                    "annotations": [{"image_id": 1, "caption": caption}]}))  # fmt: skip
    samples = draw_samples(tmp_path / "caps.json", n=1, cell=128, input_size=32)
    before, after = samples.pairs[0]
    band = before[TITLE + 128 + 2 * PAD :]
    assert before.shape == after.shape and len(band) >= LABEL + 3 * 20  # four lines at least
    assert (band[:, -6:] == 255).all()  # nothing cut at the picture's edge


def test_all_images_missing_suggests_the_image_folder(shapes):
    for image in (shapes.parent / "train").iterdir():
        image.unlink()
    with pytest.raises(CnnappsError, match=r"nothing to draw \(4 samples skipped, .*no such file; if they are in "
                                           r"another folder, give --images DIR\)$"):  # fmt: skip
        draw_samples(shapes, n=2, cell=32)


def test_show_takes_from_as_check_does(shapes, tmp_path, run_cli):
    """The hint of data a path does not tell the format of names --from: an option of data show too."""
    (tmp_path / "digits" / "0").mkdir(parents=True)
    code, _, err = run_cli("data", "show", tmp_path / "digits", "--task", "detect")
    assert code == 2 and "(coco, yolo, voc, labelme, cvat); name it with --from in cnnapps data" in err
    renamed = shapes.rename(shapes.with_suffix(".annotations"))
    code, stdout, err = run_cli("data", "show", renamed, "--from", "coco", "--n", "1", "--cell", "32", "--out",
                                tmp_path / "b.png")  # fmt: skip
    assert code == 0 and "(segment)" in stdout, err
    code, _, err = run_cli("data", "show", renamed, "--from", "coco", "--task", "classify")
    assert code == 2 and "--from coco: annotation formats are read for detect, segment and pose, not classify" in err


def test_a_file_that_is_neither_folder_nor_csv_is_named_so(shapes, run_cli):
    code, _, err = run_cli("data", "show", shapes, "--task", "classify")
    assert code == 2 and f"{shapes}: not a folder or a CSV file" in err


def test_yolo_data_without_class_names_is_told_where_to_write_them(tmp_path, run_cli):
    """Not "--names FILE": only data convert has it."""
    (tmp_path / "labels").mkdir()
    code, _, err = run_cli("data", "show", tmp_path)
    assert code == 2 and f"write the class names in {tmp_path / 'classes.txt'}, one per line" in err
    assert "(data convert also takes them as --names FILE)" in err


@pytest.mark.parametrize("command", ["show", "check"])
def test_a_folder_without_masks_is_not_told_of_masks_option(tmp_path, run_cli, command):
    """data show and data check have no --masks (semantic training has): they are told the layout they read."""
    code, _, err = run_cli("data", command, tmp_path, "--task", "semantic")
    assert code == 2 and "put the images in images/ and their masks in masks/" in err and "--masks" not in err
