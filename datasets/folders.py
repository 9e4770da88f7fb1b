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
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnapps.datasets.io import IMAGE_SUFFIXES
from cnnapps.errors import CnnappsError, did_you_mean

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


def class_folders(
    root: str | os.PathLike, class_names: list[str] | None = None, *, more_classes: bool = False
) -> LabeledImages:
    """A tree with one sub-folder per class; ``class_names`` fixes the label order (e.g. from train/). A folder not
    among them is refused, or with ``more_classes`` a class of its own after them (in the order of the names)."""
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
    if unknown and more_classes:
        class_names = [*class_names, *unknown]
    elif unknown:
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


#: a CSV's first row is its header when its cells name the columns so (any case) and its first cell names no file: a
#: first row whose image exists is always data
PATH_HEADERS = frozenset(("path", "file", "filename", "file_name", "filepath", "image", "images", "img", "image_path",
                          "image_id", "id"))  # fmt: skip
LABEL_HEADERS = frozenset(("label", "labels", "class", "classes", "class_name", "category", "tag", "tags", "target"))


def csv_rows(path: Path, split: bool, skipped: list[tuple[int, str]] | None = None) -> list[tuple[int, str, list[str]]]:
    """(line, path, labels) of a ``path,label(s)`` CSV, its header (:data:`PATH_HEADERS`) left out; a row that cannot
    be used, or that lists an image listed before with the same labels, is logged (file:line and why) and skipped, or
    with ``skipped`` added to it as (line, why). ``split``: the label column holds several labels separated by ``|`` or
    ``;``. Refused (:class:`DatasetError`, naming the line): a third column (its labels would be lost) and an image
    listed again with other labels. Read as UTF-8, with or without the byte-order mark that Excel's "CSV UTF-8"
    writes."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            table = list(csv.reader(fh))
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text; save it as CSV UTF-8") from None
    except (OSError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read this CSV ({getattr(exc, 'strerror', None) or exc})") from None
    table = [(i + 1, row) for i, row in enumerate(table) if any(c.strip() for c in row) and not row[0].startswith("#")]
    for line, row in table:
        if any(c.strip() for c in row[2:]):
            why = f"{len(row)} columns; expected path,label (join several labels with | or ;)"
            raise DatasetError(f"{path}:{line}: {why}")
    if table and _is_header(path, table[0][1]):
        table = table[1:]
    rows = []
    first_bad = None
    listed: dict[str, tuple[int, list[str]]] = {}  # each image by its absolute path: its line and labels
    for line, row in table:
        why = None
        if len(row) < 2 or not row[0].strip():
            why = f"expected 'path,label', got {','.join(row)!r}"
        else:
            image, text = row[0].strip(), row[1].strip()
            labels = [t.strip() for t in LABEL_SEPARATORS.split(text)] if split else [text]
            labels = list(dict.fromkeys(t for t in labels if t))
            if not labels and not split:
                why = f"no label for {image!r}"
            else:
                first, before = listed.setdefault(os.path.abspath(image_path(path, image)), (line, labels))
                if first != line and set(before) != set(labels):
                    there, here = ("|".join(found) or "no label" for found in (before, labels))
                    raise DatasetError(
                        f"{path}:{line}: {image} already listed at line {first} with other labels ({there!r} there, "
                        f"{here!r} here); give each image one row (join several labels with | or ;)"
                    )
                if first != line:
                    why = f"{image} already listed at line {first}"
        if why is not None:
            if skipped is None:
                log.warning("%s:%d: %s; row skipped", path, line, why)
            else:
                skipped.append((line, why))
            first_bad = first_bad or f"{path}:{line}: {why}"
            continue
        rows.append((line, image, labels))
    if not rows:
        raise DatasetError(f"{path}: no usable rows" + (f" ({first_bad})" if first_bad else ""))
    return rows


def _is_header(path: Path, row: list[str]) -> bool:
    """Whether ``path``'s first row names its columns (:data:`PATH_HEADERS`)."""
    names = [c.strip().lower() for c in row]
    return (
        len(names) > 1 and names[0] in PATH_HEADERS and names[1] in LABEL_HEADERS
        and not image_path(path, row[0].strip()).exists()
    )  # fmt: skip


def image_path(table: Path, image: str) -> Path:
    """An image a CSV lists, as given when absolute, else from the CSV's folder."""
    return Path(image) if Path(image).is_absolute() else table.parent / image


#: why a row with no label is dropped from data found single-label (``no_label_hint``: a command with no
#: --multilabel option gives its own)
NO_LABEL_HINT = "every row has one label or none: give --multilabel to keep images with no label"


def labeled_csv(
    path: str | os.PathLike,
    class_names: list[str] | None = None,
    multilabel: bool | None = False,
    *,
    no_label_hint: str = NO_LABEL_HINT,
    more_classes: bool = False,
    missing: list[dict[str, str]] | None = None,
) -> LabeledImages | MultiLabeledImages:
    """A CSV with ``path,label`` columns (header optional); relative paths resolve from the CSV's folder.

    ``multilabel``: False reads one label per row as it is written; True reads the label column as labels
    separated by ``|`` or ``;`` (``a.jpg,cat|dog``; empty for an image with none of the classes) and gives
    :class:`MultiLabeledImages`; None decides by the rows: multi-label when one of them has several labels.
    Rows that cannot be used are logged with their line and skipped (with None and single-label rows, those with
    no label too, saying ``no_label_hint``); with ``missing``, a row whose image is not there is added to it instead
    (``{"path", "error"}``, as a failed input: an evaluation reports it)."""
    path = Path(path)
    rows = csv_rows(path, split=multilabel is not False)
    if multilabel is None:
        multilabel = _has_several_labels(rows)
    return _images_of_rows(path, rows, class_names, multilabel, no_label_hint, more_classes, missing)


def _has_several_labels(rows: list[tuple[int, str, list[str]]]) -> bool:
    return any(len(labels) > 1 for _, _, labels in rows)


def _images_of_rows(
    path: Path, rows: list[tuple[int, str, list[str]]], class_names: list[str] | None, multilabel: bool,
    no_label_hint: str, more_classes: bool = False, missing: list[dict[str, str]] | None = None,
) -> LabeledImages | MultiLabeledImages:  # fmt: skip
    """The images of ``path``'s rows (:func:`csv_rows`); a row whose image is not there, and single-label a row with
    no label, is logged with its line and dropped (one whose image is not there added to ``missing`` instead, when
    given). A label not among ``class_names`` is refused, or with ``more_classes`` a class of its own after them."""
    if not multilabel and any(not labels for _, _, labels in rows):
        for line, image, _ in (r for r in rows if not r[2]):
            log.warning("%s:%d: no label for %r; row skipped (%s)", path, line, image, no_label_hint)
        rows = [r for r in rows if r[2]]
        if not rows:
            raise DatasetError(f"{path}: no row has a label")
    there = [r for r in rows if image_path(path, r[1]).is_file()]
    if len(there) < len(rows):
        for line, image, _ in (r for r in rows if not image_path(path, r[1]).is_file()):
            if missing is None:
                log.warning("%s:%d: %s: no such file; row skipped", path, line, image_path(path, image))
            else:
                missing.append({"path": str(image_path(path, image)), "error": f"no such file (line {line} of {path})"})
        if not there:
            raise DatasetError(f"{path}: none of the images it lists is there (the first: {rows[0][1]}, line "
                               f"{rows[0][0]}; relative paths are read from the CSV's folder)")  # fmt: skip
        rows = there
    seen = {label for _, _, labels in rows for label in labels}
    names = class_names or sorted(seen)
    if more_classes and class_names:
        names = [*class_names, *sorted(seen - set(class_names))]
    index = {name: i for i, name in enumerate(names)}
    unknown: dict[str, int] = {}  # each label not among the classes: its first line
    for line, _, labels in rows:
        for label in labels:
            if label not in index:
                unknown.setdefault(label, line)
    if unknown:
        (label, line), *more = unknown.items()
        also = "".join(f", {x} (line {n})" for x, n in more)
        raise DatasetError(
            f"{path}:{line}: labels {label}{also} are not among the training classes{did_you_mean(label, names)}"
        )
    paths = [str(image_path(path, p)) for _, p, _ in rows]
    if multilabel:
        return MultiLabeledImages(paths, [tuple(index[x] for x in labels) for _, _, labels in rows], list(names))
    return LabeledImages(paths, [index[labels[0]] for _, _, labels in rows], list(names))


def read_labeled(
    data: str | os.PathLike,
    class_names: list[str] | None = None,
    multilabel: bool | None = False,
    *,
    no_label_hint: str = NO_LABEL_HINT,
    more_classes: bool = False,
    missing: list[dict[str, str]] | None = None,
) -> LabeledImages | MultiLabeledImages:
    """A class-per-folder tree or a CSV file; with ``multilabel`` True or None (decide by the data, see
    :func:`labeled_csv`) also a folder holding a ``labels.csv`` of its images (the multi-label layout).
    ``more_classes``: classes not among ``class_names`` are taken after them, not refused. ``missing``: see
    :func:`labeled_csv`."""
    data = Path(data)
    table = _labels_table(data, multilabel)
    if table is not None:
        return labeled_csv(table, class_names, multilabel, no_label_hint=no_label_hint, more_classes=more_classes,
                           missing=missing)  # fmt: skip
    if data.is_dir():
        found = class_folders(data, class_names, more_classes=more_classes)
        return as_multilabel(found) if multilabel else found
    raise DatasetError(f"{data}: {'not a folder or a CSV file' if data.exists() else 'no such folder or CSV file'}")


def _labels_table(data: Path, multilabel: bool | None) -> Path | None:
    """The CSV :func:`read_labeled` reads for ``data``: ``data`` itself, or with ``multilabel`` True or None a
    folder's labels.csv; None for a class-per-folder tree."""
    if data.is_file() and data.suffix.lower() in (".csv", ".txt"):
        return data
    if multilabel is not False and data.is_dir() and (data / TAGS_FILE).is_file():
        return data / TAGS_FILE
    return None


def train_val_split(
    data: str | os.PathLike, val_split: float = 0.2, seed: int = 0, multilabel: bool | None = False,
    *, more_classes: bool = False,
) -> tuple[LabeledImages | MultiLabeledImages, LabeledImages | MultiLabeledImages]:  # fmt: skip
    """``DIR/train`` + ``DIR/val`` when both exist (see :func:`split_folders`); otherwise a stratified split of one
    tree or CSV.

    ``multilabel`` as for :func:`read_labeled` (None: the two folders are multi-label when either is); a multi-label
    set is stratified by each image's rarest label. ``more_classes``: val/ may hold classes train/ has not (metric
    learning scores classes never trained on), numbered after the training classes; else they are refused."""
    data = Path(data)
    folders = split_folders(data)
    if folders:
        return _train_and_val(*folders, multilabel, more_classes)
    if not 0.0 < val_split < 1.0:
        raise DatasetError(f"{data}: has no train/ and val/ folders, so --val-split must be between 0 and 1")
    from cnnapps.datasets.splits import split_indices

    full = read_labeled(data, None, multilabel)
    groups = rarest_labels(full) if isinstance(full, MultiLabeledImages) else full.labels
    record = SPLIT_RECORD.get()
    earlier = read_split_record(record.path) if record is not None and record.resume else None
    keys = [_split_key(path, data) for path in full.paths]
    if earlier is None:
        train_idx, val_idx = split_indices(len(full), val_split, seed, groups=groups)
    else:
        train_idx, val_idx = keep_split(data, keys, groups, earlier, val_split, seed)
    if record is not None:  # written once training starts: a run refused before then writes nothing
        record.split = {"training": [keys[i] for i in train_idx], "validation": [keys[i] for i in val_idx]}
    return full.subset(train_idx), full.subset(val_idx)


#: the name of a run folder's record of its split
SPLIT_FILE = "val_split.json"


@dataclass
class SplitRecord:
    """A --val-split run's record of its split (OUT/val_split.json): ``resume`` keeps the one there; ``split`` is the
    one made, for :meth:`write` once training starts."""

    path: Path
    resume: bool
    split: dict[str, list[str]] | None = None

    def write(self) -> None:
        import json

        from cnnapps.files import atomic_write

        if self.split is not None:
            atomic_write(self.path, json.dumps(self.split, indent=0).encode(), overwrite=True)


#: the split record of the run being prepared: set by the training skeleton around a task's preparation, so that
#: every task's split of one tree is kept across a run's resumptions
SPLIT_RECORD: ContextVar[SplitRecord | None] = ContextVar("split_record", default=None)


@contextmanager
def recording_split(record: SplitRecord) -> Iterator[SplitRecord]:
    """Within it, :func:`train_val_split` keeps ``record``'s split (resuming) and leaves the split it made there."""
    token = SPLIT_RECORD.set(record)
    try:
        yield record
    finally:
        SPLIT_RECORD.reset(token)


def _split_key(path: str, data: Path) -> str:
    """An image's name in a split record: its path under the data's folder (the data may move between sessions)."""
    root = data if data.is_dir() else data.parent
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def read_split_record(path: Path) -> dict[str, list[str]] | None:
    """A run's split (``{"training": [...], "validation": [...]}``), None where the run has none (an older run)."""
    import json

    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return {part: [str(key) for key in record[part]] for part in ("training", "validation")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: not a record of the run's split ({exc}); delete it to split anew") from None


def keep_split(data: Path, keys: list[str], groups: list[int], earlier: dict[str, list[str]], fraction: float,
               seed: int) -> tuple[list[int], list[int]]:  # fmt: skip
    """``(train, val)`` indices that keep a resumed run's earlier split: its validation images stay in validation
    (reshuffled, they became training images: the scores then measured images the model had learned); images new
    since are split as the first session split its own, images gone since are dropped; each said in one line."""
    from cnnapps.datasets.splits import split_indices
    from cnnapps.terminal import plural

    validated, trained = set(earlier["validation"]), set(earlier["training"])
    val = [i for i, key in enumerate(keys) if key in validated]
    train = [i for i, key in enumerate(keys) if key in trained and key not in validated]
    new = [i for i, key in enumerate(keys) if key not in validated and key not in trained]
    lost = len(validated) - len(val)  # validation images gone since
    if new:
        to_train, to_val = split_indices(len(new), fraction, seed, groups=[groups[i] for i in new])
        train += [new[j] for j in to_train]
        val += [new[j] for j in to_val]
        log.info("%s: %s new since the run began: %d to training, %d to validation (the run's split is kept)", data,
                 plural(len(new), "image"), len(to_train), len(to_val))  # fmt: skip
    gone = len(validated | trained) - (len(keys) - len(new))
    if gone:
        log.info("%s: %s of the run's split gone since it began, %d of them validation images: dropped", data,
                 plural(gone, "image"), lost)  # fmt: skip
    return sorted(train), sorted(val)


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
    train_dir: Path, val_dir: Path, multilabel: bool | None, more_classes: bool = False
) -> tuple[LabeledImages | MultiLabeledImages, LabeledImages | MultiLabeledImages]:
    """Both folders read alike, the validation one with the training one's classes (with ``more_classes``, its own
    others after them). With ``multilabel`` None the set is multi-label when a row of either labels.csv has several
    labels, decided before rows with no label are dropped: a validation file may be what makes it multi-label, and
    then the training images with no label stay."""
    if multilabel is not None:
        train = read_labeled(train_dir, None, multilabel)
        return train, read_labeled(val_dir, train.class_names, multilabel, more_classes=more_classes)
    folders = (train_dir, val_dir)
    tables = [_labels_table(folder, None) for folder in folders]
    rows = [None if table is None else csv_rows(table, split=True) for table in tables]
    several = any(found is not None and _has_several_labels(found) for found in rows)

    def read(i: int, class_names: list[str] | None) -> LabeledImages | MultiLabeledImages:
        if tables[i] is None:  # a class-per-folder tree
            return read_labeled(folders[i], class_names, several, more_classes=more_classes)
        return _images_of_rows(tables[i], rows[i], class_names, several, NO_LABEL_HINT, more_classes)

    train = read(0, None)
    return train, read(1, train.class_names)


def rarest_labels(items: MultiLabeledImages) -> list[int]:
    """Each image's rarest label (-1 for an image with none): the groups a multi-label split is stratified by."""
    counts = items.counts()
    return [min(labels, key=lambda k: (counts[k], k)) if labels else -1 for labels in items.labels]
