from __future__ import annotations

from pathlib import Path

import pytest

from cnnapps.datasets.folders import (
    DatasetError,
    class_folders,
    expand_inputs,
    labeled_csv,
    read_labeled,
    train_val_split,
)


def make_tree(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / name / f"{i}.jpg").write_bytes(b"x")
    return root


def test_expand_inputs_keeps_order_and_walks_folders(tmp_path: Path) -> None:
    make_tree(tmp_path, {"b": 2, "a": 1})
    (tmp_path / "a" / "readme.md").write_text("skip me")
    found = expand_inputs(
        [str(tmp_path / "b" / "1.jpg"), str(tmp_path / "a"), str(tmp_path / "b" / "*.jpg"), "gone.png"]
    )
    names = [str(Path(p).relative_to(tmp_path)) if p != "gone.png" else p for p in found]
    assert names == ["b/1.jpg", "a/0.jpg", "b/0.jpg", "b/1.jpg", "gone.png"]


def test_class_folders_and_errors(tmp_path: Path) -> None:
    data = class_folders(make_tree(tmp_path / "d", {"dog": 2, "cat": 3}))
    assert data.class_names == ["cat", "dog"] and data.labels == [0, 0, 0, 1, 1]
    with pytest.raises(DatasetError, match="not among the training classes"):
        class_folders(make_tree(tmp_path / "v", {"cow": 1}), ["cat", "dog"])
    with pytest.raises(DatasetError, match="cat: a class folder with no images"):
        class_folders(make_tree(tmp_path / "e", {"cat": 0}))
    with pytest.raises(DatasetError, match="no images found"):  # evaluation data: classes given, none has images
        class_folders(make_tree(tmp_path / "f", {"cat": 0}), ["cat", "dog"])


def test_csv_with_header_and_relative_paths(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "b.jpg"
    for image in (tmp_path / "imgs" / "a.jpg", elsewhere):
        image.parent.mkdir()
        image.write_bytes(b"")
    (tmp_path / "list.csv").write_text(f"path,label\nimgs/a.jpg,cat\n{elsewhere},dog\n")
    data = labeled_csv(tmp_path / "list.csv")
    assert data.paths == [str(tmp_path / "imgs" / "a.jpg"), str(elsewhere)] and data.labels == [0, 1]
    (tmp_path / "bad.csv").write_text("just-a-path.jpg\n")
    with pytest.raises(DatasetError, match=r"bad\.csv:1: expected 'path,label'"):
        labeled_csv(tmp_path / "bad.csv")


def test_split_is_stratified_and_uses_train_val_folders(tmp_path: Path) -> None:
    train, val = train_val_split(make_tree(tmp_path / "one", {"a": 10, "b": 5}), val_split=0.2)
    assert sorted(val.labels) == [0, 0, 1] and len(train) == 12
    assert not set(train.paths) & set(val.paths)
    make_tree(tmp_path / "two" / "train", {"a": 2, "b": 2})
    make_tree(tmp_path / "two" / "val", {"b": 1})
    train, val = train_val_split(tmp_path / "two")
    assert val.class_names == ["a", "b"] and val.labels == [1]


def test_val_classes_not_trained_on_follow_the_training_classes_when_asked(tmp_path: Path) -> None:
    """Metric learning validates on classes never trained on: val/ numbers them after train/'s (shared ones keep
    their training label, an empty folder is skipped); classification still refuses them."""
    make_tree(tmp_path / "train", {"a": 2, "b": 2})
    make_tree(tmp_path / "val", {"b": 1, "d": 2, "c": 1, "e": 0})
    with pytest.raises(DatasetError, match=r"val: class folders c, d, e are not among the training classes"):
        train_val_split(tmp_path)
    train, val = train_val_split(tmp_path, more_classes=True)
    assert train.class_names == ["a", "b"] and val.class_names == ["a", "b", "c", "d", "e"]
    assert val.labels == [1, 2, 3, 3]
    (tmp_path / "list.csv").write_text("path,label\nval/b/0.jpg,b\nval/d/0.jpg,d\nval/c/0.jpg,c\n")
    found = read_labeled(tmp_path / "list.csv", ["a", "b"], more_classes=True)
    assert found.class_names == ["a", "b", "c", "d"] and found.labels == [1, 3, 2]
    with pytest.raises(DatasetError, match=r"list\.csv:3: labels d, c \(line 4\) are not among the training classes"):
        read_labeled(tmp_path / "list.csv", ["a", "b"])


def test_train_and_val_labels_csv_are_multilabel_together(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Only val/ has a row with two labels: train/ is multi-label too, read so before any row is dropped, and its
    images with no label stay (they are the negatives), with no "row skipped" said of them."""
    for part, text in (("train", "a.png,red\nb.png,\nc.png,green\nd.png,\n"), ("val", "e.png,red|green\nf.png,\n")):
        (tmp_path / part).mkdir()
        (tmp_path / part / "labels.csv").write_text("path,labels\n" + text)
        for row in text.splitlines():
            (tmp_path / part / row.split(",")[0]).write_bytes(b"")
    with caplog.at_level("WARNING", logger="cnnapps"):
        train, val = train_val_split(tmp_path, multilabel=None)
    assert (train.multilabel, val.multilabel) == (True, True) and not caplog.records
    assert train.class_names == val.class_names == ["green", "red"]
    assert [Path(p).name for p in train.paths] == ["a.png", "b.png", "c.png", "d.png"]
    assert train.labels == [(1,), (), (0,), ()] and val.labels == [(1, 0), ()]
    # neither file has a row with two labels: single-label, rows with no label dropped and said so
    (tmp_path / "val" / "labels.csv").write_text("path,labels\ne.png,red\nf.png,\n")
    with caplog.at_level("WARNING", logger="cnnapps"):
        train, val = train_val_split(tmp_path, multilabel=None)
    assert (train.multilabel, val.multilabel) == (False, False) and (train.labels, val.labels) == ([1, 0], [1])
    assert sum("row skipped" in r.getMessage() for r in caplog.records) == 3


def test_csv_with_a_byte_order_mark(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts the file with a BOM: the header is still a header, not an image of class labels."""
    bom = b"\xef\xbb\xbf"
    for image in ("a.png", "b.png", "ml/a.png"):
        (tmp_path / image).parent.mkdir(exist_ok=True)
        (tmp_path / image).write_bytes(b"")
    (tmp_path / "tags.csv").write_bytes(bom + b"path,labels\na.png,red|green\nb.png,\n")
    tags = labeled_csv(tmp_path / "tags.csv", multilabel=None)
    assert tags.class_names == ["green", "red"] and tags.labels == [(1, 0), ()]
    (tmp_path / "one.csv").write_bytes(bom + "a.png,chat\nb.png,café\n".encode())  # no header: a path first
    one = labeled_csv(tmp_path / "one.csv")
    assert one.paths == [str(tmp_path / "a.png"), str(tmp_path / "b.png")] and one.class_names == ["café", "chat"]
    (tmp_path / "ml").mkdir(exist_ok=True)
    (tmp_path / "ml" / "labels.csv").write_bytes(bom + b"path,labels\na.png,red\n")
    assert read_labeled(tmp_path / "ml", multilabel=True).class_names == ["red"]
    (tmp_path / "latin1.csv").write_bytes("a.png,café\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin1\.csv: not UTF-8 text; save it as CSV UTF-8$"):
        labeled_csv(tmp_path / "latin1.csv")


def test_walks_say_what_they_skip_and_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_tree(tmp_path / "data", {"cat": 2, "dog": 1})
    (root / "cat" / "anim.gif").write_bytes(b"GIF89a")
    (root / "cat" / "photo.heic").write_bytes(b"x")
    (root / "cat" / "notes.txt").write_text("not an image: skipped without a word")
    (root / "cat" / "gone.jpg").symlink_to(root / "cat" / "deleted.jpg")
    (root / "cat" / "self").symlink_to(root / "cat" / "self")
    (root / "cat" / "sub").mkdir()
    (root / "cat" / "sub" / "up").symlink_to(root / "cat")  # a loop: walked once, never forever
    (root / "dog" / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    make_tree(tmp_path / "elsewhere", {"x": 1})
    (root / "ghost").symlink_to(tmp_path / "no-such-class")

    with caplog.at_level("WARNING", logger="cnnapps"):
        found = expand_inputs([str(root / "cat")])
    cat = root / "cat"
    assert found == [str(cat / "0.jpg"), str(cat / "1.jpg"), str(cat / "anim.gif")]
    assert sorted(r.getMessage() for r in caplog.records) == [
        f"skipping {cat / 'gone.jpg'}: dangling symlink (its target {cat / 'deleted.jpg'} does not exist)",
        f"skipping {cat / 'photo.heic'}: image format not supported (expected JPEG, PNG, WebP, BMP, TIFF or GIF)",
        f"skipping {cat / 'self'}: symlink loop (it points back to itself)",
        f"skipping {cat / 'sub' / 'up'}: symlink loop (it leads back to {cat})",
    ]
    assert all(r.name == "cnnapps" and r.levelname == "WARNING" for r in caplog.records)

    caplog.clear()
    with caplog.at_level("WARNING", logger="cnnapps"):
        data = class_folders(root)
    assert data.class_names == ["cat", "dog"]
    assert [Path(p).name for p in data.paths] == ["0.jpg", "1.jpg", "anim.gif", "0.jpg", "0.jpg"]
    assert str(root / "dog" / "more" / "x" / "0.jpg") in data.paths  # symlinked folders are followed
    messages = [r.getMessage() for r in caplog.records]
    assert f"skipping {root / 'ghost'}: dangling symlink (its target {tmp_path / 'no-such-class'} does not exist)" in (
        messages
    )
    assert len(messages) == 5


def test_a_glob_walks_the_folders_it_matches(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a": 1, "b": 2})
    (tmp_path / "top.jpg").write_bytes(b"")
    found = expand_inputs([str(tmp_path / "*")])  # quoted: the shell left it to us
    assert sorted(found) == sorted(
        [str(tmp_path / "top.jpg"), *expand_inputs([str(tmp_path / "a"), str(tmp_path / "b")])]
    )
    assert len(found) == 4
    everything = expand_inputs([str(tmp_path / "**")])  # the root, each folder and each file: every file once
    assert sorted(everything) == sorted(found)


def test_globs_report_dangling_links(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_tree(tmp_path, {"a": 1})
    (tmp_path / "a" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with caplog.at_level("WARNING", logger="cnnapps"):
        assert expand_inputs([str(tmp_path / "a" / "*.jpg")]) == [str(tmp_path / "a" / "0.jpg")]
    gone, nowhere = tmp_path / "a" / "gone.jpg", tmp_path / "nowhere.jpg"
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping {gone}: dangling symlink (its target {nowhere} does not exist)"
    ]


@pytest.mark.parametrize(("other", "val"), [("valid", "valid"), ("validation", "validation"), ("test", "test")])
def test_split_folders_of_ultralytics_and_roboflow_are_splits_not_classes(tmp_path: Path, other: str, val: str) -> None:
    make_tree(tmp_path / "train", {"cat": 2, "dog": 2})
    make_tree(tmp_path / other, {"cat": 1, "dog": 1})
    train, valid = train_val_split(tmp_path)
    assert train.class_names == ["cat", "dog"] and valid.class_names == ["cat", "dog"]
    assert len(train) == 4 and all(Path(p).parts[-3] == val for p in valid.paths)


def test_val_is_chosen_over_test(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        make_tree(tmp_path / split, {"cat": 1, "dog": 1})
    _, valid = train_val_split(tmp_path)
    assert {Path(p).parts[-3] for p in valid.paths} == {"val"}


def test_folders_that_are_all_split_names_are_refused_as_classes(tmp_path: Path) -> None:
    make_tree(tmp_path / "only" / "train", {"cat": 1})
    with pytest.raises(DatasetError, match=r"only: its folders \(train\) are splits, not classes"):
        train_val_split(tmp_path / "only")
    make_tree(tmp_path / "two" / "val", {"cat": 1})
    make_tree(tmp_path / "two" / "test", {"cat": 1})
    with pytest.raises(DatasetError, match=r"\(test, val\) are splits, not classes"):
        read_labeled(tmp_path / "two")
