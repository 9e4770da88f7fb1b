"""A ``path,label(s)`` CSV read as written or refused with its line: repeated images, extra columns, other headers,
labels that are not among the training classes; ``data check`` says what training says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnapps.datasets.check import check_data
from cnnapps.datasets.folders import DatasetError, labeled_csv, read_labeled, train_val_split


def pictures(folder: Path, n: int) -> list[str]:
    """``n`` distinct noise images 0.png.. in ``folder``: their names."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return [f"{i}.png" for i in range(n)]


def problems(report) -> dict[str, list[tuple[str, str]]]:
    return {kind: [(p.where, p.message) for p in found] for kind, found in report.by_kind().items()}


def test_a_repeated_image_is_read_once_and_said_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Written again (the same path, ``./`` before it or absolute), an image is kept at its first line: a split
    cannot put one copy in training and the other in validation."""
    names = pictures(tmp_path, 20)
    rows = [f"{name},{'ab'[i % 2]}" for i, name in enumerate(names)]
    rows += [f"./{names[0]},a", f"{tmp_path / names[1]},b"] + [f"{name},{'ab'[i % 2]}" for i, name in enumerate(names)]
    table = tmp_path / "list.csv"
    table.write_text("path,label\n" + "\n".join(rows) + "\n")
    with caplog.at_level("WARNING", logger="cnnapps"):
        found = read_labeled(table)
    assert len(found) == 20 and len(set(found.paths)) == 20
    said = [r.getMessage() for r in caplog.records]
    assert said[:2] == [
        f"{table}:22: ./0.png already listed at line 2; row skipped",
        f"{table}:23: {tmp_path / '1.png'} already listed at line 3; row skipped",
    ]
    assert len(said) == 22
    train, val = train_val_split(table, 0.25, 0, None)
    assert len(train) + len(val) == 20 and not set(train.paths) & set(val.paths)
    # data check: the repeated rows, each at its line, and no image counted twice
    report = check_data(table, min_images=1)
    found = problems(report)
    assert [where for where, _ in found["bad_annotation"]] == [f"{table}:{line}" for line in range(22, 44)]
    assert "duplicate_image" not in found and report.images == 20


def test_an_image_listed_again_with_other_labels_is_refused(tmp_path: Path) -> None:
    pictures(tmp_path, 2)
    (tmp_path / "list.csv").write_text("0.png,cat\n1.png,dog\n0.png,dog\n")
    with pytest.raises(DatasetError, match=r"list\.csv:3: 0\.png already listed at line 1 with other labels "
                       r"\('cat' there, 'dog' here\); give each image one row"):  # fmt: skip
        labeled_csv(tmp_path / "list.csv")
    (tmp_path / "tags.csv").write_text("path,labels\n0.png,cat|dog\n1.png,dog\n0.png,dog;cat\n1.png,\n")
    with pytest.raises(DatasetError, match=r"tags\.csv:5: 1\.png already listed at line 3 with other labels "
                       r"\('dog' there, 'no label' here\)"):  # fmt: skip
        read_labeled(tmp_path / "tags.csv", multilabel=None)
    with pytest.raises(DatasetError, match=r"list\.csv:3: 0\.png already listed"):
        check_data(tmp_path / "list.csv", min_images=1)


def test_a_third_column_is_refused_unless_empty(tmp_path: Path) -> None:
    """``a.png,even,small`` was read as the label 'even', 'small' lost."""
    pictures(tmp_path, 2)
    (tmp_path / "cols.csv").write_text("# tags\n0.png,even\n1.png,odd,small,prime\n")
    expected = r"cols\.csv:3: 4 columns; expected path,label \(join several labels with \| or ;\)$"
    for multilabel in (False, None, True):
        with pytest.raises(DatasetError, match=expected):
            read_labeled(tmp_path / "cols.csv", multilabel=multilabel)
    with pytest.raises(DatasetError, match=expected):
        check_data(tmp_path / "cols.csv")
    (tmp_path / "cols.csv").write_text("path,label,,\n0.png,even,,\n1.png,odd, \n")  # as spreadsheets save them
    assert read_labeled(tmp_path / "cols.csv").class_names == ["even", "odd"]


@pytest.mark.parametrize("header", ["filename,label", "Image,Class", "file,tags", "image_path,target", "id,category"])
def test_a_header_of_other_column_names(tmp_path: Path, header: str, caplog: pytest.LogCaptureFixture) -> None:
    pictures(tmp_path, 2)
    (tmp_path / "list.csv").write_text(f"{header}\n0.png,cat\n1.png,dog\n")
    with caplog.at_level("WARNING", logger="cnnapps"):
        found = labeled_csv(tmp_path / "list.csv")
    assert found.class_names == ["cat", "dog"] and [Path(p).name for p in found.paths] == ["0.png", "1.png"]
    assert not caplog.records
    report = check_data(tmp_path / "list.csv", min_images=1)
    assert [c.name for c in report.classes] == ["cat", "dog"] and not report.problems


def test_a_first_row_whose_image_exists_is_data(tmp_path: Path) -> None:
    """A header is never taken from a row that lists an image there is."""
    pictures(tmp_path, 1)
    (tmp_path / "image").write_bytes((tmp_path / "0.png").read_bytes())
    (tmp_path / "list.csv").write_text("image,label\n0.png,cat\n")
    found = labeled_csv(tmp_path / "list.csv")
    assert found.paths == [str(tmp_path / "image"), str(tmp_path / "0.png")] and found.class_names == ["cat", "label"]


def test_labels_not_among_the_training_classes_are_named_with_their_line(tmp_path: Path) -> None:
    for part, text in (("train", "0.png,even\n1.png,odd\n"), ("val", "0.png,odd\n1.png,Even\n")):
        pictures(tmp_path / part, 2)
        (tmp_path / part / "labels.csv").write_text("path,labels\n" + text)
    with pytest.raises(DatasetError, match=r"val/labels\.csv:3: labels Even are not among the training classes; "
                       r"did you mean even\?$"):  # fmt: skip
        train_val_split(tmp_path, multilabel=None)
    (tmp_path / "val" / "labels.csv").write_text("0.png,Even|odd\n1.png,Odd\n")
    with pytest.raises(DatasetError, match=r"val/labels\.csv:1: labels Even, Odd \(line 2\) are not among"):
        train_val_split(tmp_path, multilabel=True)


def test_a_missing_image_is_named_with_its_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An image the CSV lists that is not there is left out when the CSV is read, said with the CSV's line; its
    label alone makes no class."""
    pictures(tmp_path, 4)
    table = tmp_path / "list.csv"
    table.write_text("path,label\n0.png,a\n1.png,b\ngone.png,c\n2.png,a\n3.png,b\n")
    with caplog.at_level("WARNING", logger="cnnapps"):
        found = read_labeled(table)
    assert [Path(p).name for p in found.paths] == ["0.png", "1.png", "2.png", "3.png"]
    assert found.class_names == ["a", "b"]
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"{table}:4: {tmp_path / 'gone.png'}: no such file; row skipped"]
    table.write_text("gone.png,a\nalso-gone.png,b\n")
    with pytest.raises(DatasetError, match=r"list\.csv: none of the images it lists is there \(the first: gone\.png, "
                       r"line 1;"):  # fmt: skip
        read_labeled(table)


def test_a_missing_image_can_be_handed_back_as_a_failed_input(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An evaluation reports it with the images that could not be read (training logs it, as above); its row is
    left out of the data either way."""
    pictures(tmp_path, 2)
    table = tmp_path / "list.csv"
    table.write_text("path,label\n0.png,a\ngone.png,c\n1.png,b\n")
    missing: list[dict[str, str]] = []
    with caplog.at_level("WARNING", logger="cnnapps"):
        found = read_labeled(table, multilabel=None, missing=missing)
    assert [Path(p).name for p in found.paths] == ["0.png", "1.png"] and found.class_names == ["a", "b"]
    assert missing == [{"path": str(tmp_path / "gone.png"), "error": f"no such file (line 3 of {table})"}]
    assert caplog.records == []


def test_data_check_reads_train_and_val_folders_with_their_labels_csv(tmp_path: Path) -> None:
    """The multi-label layout training reads (train/ and val/, each its images and a labels.csv), and one such
    folder alone: checked as training reads them, a missing image and train/val leakage named at their lines."""
    for part, n in (("train", 6), ("val", 3)):
        names = pictures(tmp_path / part, n)
        rows = [f"{name},{'red|green' if i % 2 else 'red'}" for i, name in enumerate(names)]
        (tmp_path / part / "labels.csv").write_text("path,labels\n" + "\n".join(rows) + "\n")
    (tmp_path / "val" / "0.png").unlink()  # val/0.png is listed at line 2 and gone
    report = check_data(tmp_path, min_images=1)
    # val/0.png's row is left out, as training reads the CSV: 2 validation images
    assert (report.format, report.task, report.images, report.val_images) == ("csv", "classify", 6, 2)
    assert [c.name for c in report.classes] == ["green", "red"]
    found, val_csv = problems(report), tmp_path / "val" / "labels.csv"
    assert found["unreadable_image"] == [(f"{val_csv}:2", f"image not found: {tmp_path / 'val' / '0.png'}")]
    # the same noise pictures in both folders: val's 1.png and 2.png leak from train, named at their lines
    assert [where for where, _ in found["leakage"]] == [f"{val_csv}:3", f"{val_csv}:4"]
    alone = check_data(tmp_path / "train", min_images=1)
    assert (alone.task, alone.images, alone.val_images) == ("classify", 6, 0)
