"""Finding images on disk: command-line paths, class-per-folder trees, CSV lists, splits.

Plain Python only (no torch, no albumentations), so the inference path can use it.
"""

from __future__ import annotations

import csv
import errno
import glob
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnapps.datasets.io import IMAGE_SUFFIXES
from cnnapps.errors import CnnappsError

log = logging.getLogger("cnnapps")

#: Image formats we recognise but do not decode: a folder walk says so when it skips one.
OTHER_IMAGE_SUFFIXES = (
    ".avif", ".heic", ".heif", ".jxl", ".jp2", ".j2k", ".ico", ".svg", ".psd", ".tga", ".pbm", ".pgm", ".ppm",
    ".exr", ".hdr", ".dng", ".raw", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2",
)  # fmt: skip


class DatasetError(CnnappsError):
    """A dataset path or layout that cannot be used; the message says which and why."""


@dataclass
class LabeledImages:
    """Image paths with integer labels into ``class_names``."""

    paths: list[str]
    labels: list[int]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    multilabel = False

    def subset(self, indices: list[int]) -> LabeledImages:
        return LabeledImages([self.paths[i] for i in indices], [self.labels[i] for i in indices], self.class_names)

    def target(self, i: int) -> int:
        """Image ``i``'s class index (what the training loss takes)."""
        return self.labels[i]


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def expand_inputs(args: list[str]) -> list[str]:
    """Files as given, folders walked recursively for image files (:func:`find_images`), globs expanded;
    order kept.

    A path that does not exist is kept as it is, so the caller reports it like any other bad input.
    """
    found: list[str] = []
    for arg in args:
        if os.path.isdir(arg):
            found += find_images(arg)
        elif any(ch in arg for ch in "*?[") and not os.path.lexists(arg):
            matches = []
            for match in sorted(glob.glob(arg, recursive=True)):
                if os.path.isfile(match):
                    matches.append(match)
                elif os.path.isdir(match):  # walked as a folder named by itself is
                    matches += find_images(match)
                elif os.path.islink(match) and not os.path.exists(match):
                    _skip(match, _dangling(match))
            found += list(dict.fromkeys(matches)) or [arg]  # data/** names a folder and the files in it
        else:
            found.append(arg)
    return found


def find_images(folder: str | os.PathLike) -> list[str]:
    """Image files under ``folder``, recursively and following symlinked folders (as torchvision's
    ImageFolder does), sorted. What is skipped that may have been meant as an image is logged as a warning
    on the ``cnnapps`` logger, one line per path with the reason: dangling symlinks, symlink loops (walked
    once, never forever), unreadable folders and image formats we do not decode. Other files pass silently.
    """
    root = os.fspath(folder)
    top = os.stat(root)
    walked = {(top.st_dev, top.st_ino): root}
    found: list[str] = []
    pending = [root]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError as exc:
            _skip(current, f"cannot read this folder ({exc.strerror or exc})")
            continue
        for entry in entries:
            try:
                info = entry.stat()  # follows symlinks
            except FileNotFoundError:
                _skip(entry.path, _dangling(entry.path))
                continue
            except OSError as exc:
                why = "symlink loop (it points back to itself)" if exc.errno == errno.ELOOP else exc.strerror
                _skip(entry.path, why or str(exc))
                continue
            if stat.S_ISDIR(info.st_mode):
                key = (info.st_dev, info.st_ino)
                if key in walked:
                    first = walked[key]
                    loop = entry.path.startswith(first.rstrip(os.sep) + os.sep)
                    why = f"symlink loop (it leads back to {first})" if loop else f"a folder already walked as {first}"
                    _skip(entry.path, why)
                    continue
                walked[key] = entry.path
                pending.append(entry.path)
            elif stat.S_ISREG(info.st_mode):
                if is_image_file(entry.name):
                    found.append(entry.path)
                elif entry.name.lower().endswith(OTHER_IMAGE_SUFFIXES):
                    _skip(entry.path, "image format not supported (expected JPEG, PNG, WebP, BMP, TIFF or GIF)")
    return sorted(found)


def _skip(path: str, reason: str) -> None:
    log.warning("skipping %s: %s", path, reason)


def _dangling(path: str) -> str:
    try:
        return f"dangling symlink (its target {os.readlink(path)} does not exist)"
    except OSError:
        return "no such file"


def class_folders(root: str | os.PathLike, class_names: list[str] | None = None) -> LabeledImages:
    """A tree with one sub-folder per class; ``class_names`` fixes the label order (e.g. from train/)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    folders = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            folders.append(entry.name)
        elif entry.is_symlink() and not entry.exists():
            _skip(str(entry), _dangling(str(entry)))
    defines_classes = class_names is None  # a training tree: each of its folders is a class to learn
    if class_names is None:
        refuse_split_names(root, folders)
        class_names = folders
    unknown = sorted(set(folders) - set(class_names))
    if unknown:
        raise DatasetError(f"{root}: class folders {', '.join(unknown)} are not among the training classes")
    paths, labels = [], []
    for index, name in enumerate(class_names):
        folder = root / name
        if folder.is_dir():
            files = find_images(folder)
            if not files and defines_classes:
                raise DatasetError(f"{folder}: a class folder with no images; add images to it or remove it")
            paths += files
            labels += [index] * len(files)
    if not paths:
        raise DatasetError(f"{root}: no images found in class sub-folders (expected {root}/<class>/<image>)")
    return LabeledImages(paths, labels, list(class_names))


#: what separates the labels of one image in a CSV's label column (``cat|dog`` or ``cat;dog``)
LABEL_SEPARATORS = re.compile(r"[|;]")
#: a folder holding this file is a multi-label set: the file lists ``path,labels`` of the images beside it
TAGS_FILE = "labels.csv"


@dataclass
class MultiLabeledImages:
    """Image paths with any number of labels each (indices into ``class_names``; an image may have none)."""

    paths: list[str]
    labels: list[tuple[int, ...]]
    class_names: list[str]
    multilabel = True

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: list[int]) -> MultiLabeledImages:
        return MultiLabeledImages([self.paths[i] for i in indices], [self.labels[i] for i in indices],
                                  self.class_names)  # fmt: skip

    def target(self, i: int) -> Any:
        """Image ``i``'s labels as a multi-hot float32 vector (what the training loss takes)."""
        import numpy as np

        vector = np.zeros(len(self.class_names), np.float32)
        vector[list(self.labels[i])] = 1.0
        return vector

    def counts(self) -> list[int]:
        """Images per class."""
        counts = [0] * len(self.class_names)
        for labels in self.labels:
            for k in labels:
                counts[k] += 1
        return counts


def as_multilabel(items: LabeledImages | MultiLabeledImages) -> MultiLabeledImages:
    """One label per image as a multi-label set (each image positive for its one class)."""
    if isinstance(items, MultiLabeledImages):
        return items
    return MultiLabeledImages(list(items.paths), [(y,) for y in items.labels], list(items.class_names))


def _csv_rows(path: Path, split: bool) -> list[tuple[int, str, list[str]]]:
    """(line, path, labels) of a ``path,label(s)`` CSV; a row that cannot be used is logged (file:line and why)
    and skipped. ``split``: the label column holds several labels separated by ``|`` or ``;``. Read as UTF-8, with
    or without the byte-order mark that Excel's "CSV UTF-8" writes."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            table = list(csv.reader(fh))
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text; save it as CSV UTF-8") from None
    except (OSError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read this CSV ({getattr(exc, 'strerror', None) or exc})") from None
    rows = []
    first_bad = None
    for i, row in enumerate(table):
        if not row or not any(c.strip() for c in row) or row[0].startswith("#"):
            continue
        if i == 0 and [c.strip().lower() for c in row[:2]] in (["path", "label"], ["path", "labels"]):
            continue
        why = None
        if len(row) < 2 or not row[0].strip():
            why = f"expected 'path,label', got {','.join(row)!r}"
        else:
            text = row[1].strip()
            labels = [t.strip() for t in LABEL_SEPARATORS.split(text)] if split else [text]
            labels = list(dict.fromkeys(t for t in labels if t))
            if not labels and not split:
                why = f"no label for {row[0].strip()!r}"
        if why is not None:
            log.warning("%s:%d: %s; row skipped", path, i + 1, why)
            first_bad = first_bad or f"{path}:{i + 1}: {why}"
            continue
        rows.append((i + 1, row[0].strip(), labels))
    if not rows:
        raise DatasetError(f"{path}: no usable rows" + (f" ({first_bad})" if first_bad else ""))
    return rows


#: why a row with no label is dropped from data found single-label (``no_label_hint``: a command with no
#: --multilabel option gives its own)
NO_LABEL_HINT = "every row has one label or none: give --multilabel to keep images with no label"


def labeled_csv(
    path: str | os.PathLike,
    class_names: list[str] | None = None,
    multilabel: bool | None = False,
    *,
    no_label_hint: str = NO_LABEL_HINT,
) -> LabeledImages | MultiLabeledImages:
    """A CSV with ``path,label`` columns (header optional); relative paths resolve from the CSV's folder.

    ``multilabel``: False reads one label per row as it is written; True reads the label column as labels
    separated by ``|`` or ``;`` (``a.jpg,cat|dog``; empty for an image with none of the classes) and gives
    :class:`MultiLabeledImages`; None decides by the rows: multi-label when one of them has several labels.
    Rows that cannot be used are logged with their line and skipped (with None and single-label rows, those with
    no label too, saying ``no_label_hint``)."""
    path = Path(path)
    rows = _csv_rows(path, split=multilabel is not False)
    if multilabel is None:
        multilabel = _has_several_labels(rows)
    return _images_of_rows(path, rows, class_names, multilabel, no_label_hint)


def _has_several_labels(rows: list[tuple[int, str, list[str]]]) -> bool:
    return any(len(labels) > 1 for _, _, labels in rows)


def _images_of_rows(
    path: Path, rows: list[tuple[int, str, list[str]]], class_names: list[str] | None, multilabel: bool,
    no_label_hint: str,
) -> LabeledImages | MultiLabeledImages:  # fmt: skip
    """The images of ``path``'s rows (:func:`_csv_rows`); single-label, a row with no label is logged and dropped."""
    if not multilabel and any(not labels for _, _, labels in rows):
        for line, image, _ in (r for r in rows if not r[2]):
            log.warning("%s:%d: no label for %r; row skipped (%s)", path, line, image, no_label_hint)
        rows = [r for r in rows if r[2]]
        if not rows:
            raise DatasetError(f"{path}: no row has a label")
    seen = {label for _, _, labels in rows for label in labels}
    names = class_names or sorted(seen)
    index = {name: i for i, name in enumerate(names)}
    missing = sorted(seen - set(index))
    if missing:
        raise DatasetError(f"{path}: labels {', '.join(missing)} are not among the training classes")
    paths = [str(p if Path(p).is_absolute() else path.parent / p) for _, p, _ in rows]
    if multilabel:
        return MultiLabeledImages(paths, [tuple(index[x] for x in labels) for _, _, labels in rows], list(names))
    return LabeledImages(paths, [index[labels[0]] for _, _, labels in rows], list(names))


def read_labeled(
    data: str | os.PathLike,
    class_names: list[str] | None = None,
    multilabel: bool | None = False,
    *,
    no_label_hint: str = NO_LABEL_HINT,
) -> LabeledImages | MultiLabeledImages:
    """A class-per-folder tree or a CSV file; with ``multilabel`` True or None (decide by the data, see
    :func:`labeled_csv`) also a folder holding a ``labels.csv`` of its images (the multi-label layout)."""
    data = Path(data)
    table = _labels_table(data, multilabel)
    if table is not None:
        return labeled_csv(table, class_names, multilabel, no_label_hint=no_label_hint)
    if data.is_dir():
        found = class_folders(data, class_names)
        return as_multilabel(found) if multilabel else found
    raise DatasetError(f"{data}: no such folder or CSV file")


def _labels_table(data: Path, multilabel: bool | None) -> Path | None:
    """The CSV :func:`read_labeled` reads for ``data``: ``data`` itself, or with ``multilabel`` True or None a
    folder's labels.csv; None for a class-per-folder tree."""
    if data.is_file() and data.suffix.lower() in (".csv", ".txt"):
        return data
    if multilabel is not False and data.is_dir() and (data / TAGS_FILE).is_file():
        return data / TAGS_FILE
    return None


def train_val_split(
    data: str | os.PathLike, val_split: float = 0.2, seed: int = 0, multilabel: bool | None = False
) -> tuple[LabeledImages | MultiLabeledImages, LabeledImages | MultiLabeledImages]:
    """``DIR/train`` + ``DIR/val`` when both exist (see :func:`split_folders`); otherwise a stratified split of one
    tree or CSV.

    ``multilabel`` as for :func:`read_labeled` (None: the two folders are multi-label when either is); a multi-label
    set is stratified by each image's rarest label."""
    data = Path(data)
    folders = split_folders(data)
    if folders:
        return _train_and_val(*folders, multilabel)
    if not 0.0 < val_split < 1.0:
        raise DatasetError(f"{data}: has no train/ and val/ folders, so --val-split must be between 0 and 1")
    from cnnapps.datasets.splits import split_indices

    full = read_labeled(data, None, multilabel)
    groups = rarest_labels(full) if isinstance(full, MultiLabeledImages) else full.labels
    train_idx, val_idx = split_indices(len(full), val_split, seed, groups=groups)
    return full.subset(train_idx), full.subset(val_idx)


#: folders that hold a split of the data (``DIR/train/<class>/``), not a class; validation is the first of
#: val/, valid/, validation/ there is, else test/
SPLIT_FOLDERS = ("train", "val", "valid", "validation", "test")


def split_folders(data: str | os.PathLike) -> tuple[Path, Path] | None:
    """The training and validation folders of the train/ + val/ layout (also valid/ or validation/ as ultralytics
    and Roboflow name it, or test/ when there is no other split), or ``None`` when ``data`` is not laid out so."""
    data = Path(data)
    if not (data / "train").is_dir():
        return None
    return next(((data / "train", data / name) for name in SPLIT_FOLDERS[1:] if (data / name).is_dir()), None)


def refuse_split_names(root: Path, folders: list[str]) -> None:
    """Refuse class folders that are all split names (``DIR/train/`` alone, ``DIR/val/`` + ``DIR/test/``): their
    images would be learned as classes named after the splits."""
    if folders and set(folders) <= set(SPLIT_FOLDERS):
        raise DatasetError(
            f"{root}: its folders ({', '.join(folders)}) are splits, not classes; give train/ with val/ (or valid/, "
            f"test/) beside it, each holding <class>/<image>, or give the one split's folder"
        )


def _train_and_val(
    train_dir: Path, val_dir: Path, multilabel: bool | None
) -> tuple[LabeledImages | MultiLabeledImages, LabeledImages | MultiLabeledImages]:
    """Both folders read alike, the validation one with the training one's classes. With ``multilabel`` None the
    set is multi-label when a row of either labels.csv has several labels, decided before rows with no label are
    dropped: a validation file may be what makes it multi-label, and then the training images with no label stay."""
    if multilabel is not None:
        train = read_labeled(train_dir, None, multilabel)
        return train, read_labeled(val_dir, train.class_names, multilabel)
    folders = (train_dir, val_dir)
    tables = [_labels_table(folder, None) for folder in folders]
    rows = [None if table is None else _csv_rows(table, split=True) for table in tables]
    several = any(found is not None and _has_several_labels(found) for found in rows)

    def read(i: int, class_names: list[str] | None) -> LabeledImages | MultiLabeledImages:
        if tables[i] is None:  # a class-per-folder tree
            return read_labeled(folders[i], class_names, several)
        return _images_of_rows(tables[i], rows[i], class_names, several, NO_LABEL_HINT)

    train = read(0, None)
    return train, read(1, train.class_names)


def rarest_labels(items: MultiLabeledImages) -> list[int]:
    """Each image's rarest label (-1 for an image with none): the groups a multi-label split is stratified by."""
    counts = items.counts()
    return [min(labels, key=lambda k: (counts[k], k)) if labels else -1 for labels in items.labels]
