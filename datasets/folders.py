"""Finding images on disk: command-line paths, class-per-folder trees, CSV lists, splits.

Plain Python only (no torch, no albumentations), so the inference path can use it.
"""

from __future__ import annotations

import csv
import errno
import glob
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

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

    def subset(self, indices: list[int]) -> LabeledImages:
        return LabeledImages([self.paths[i] for i in indices], [self.labels[i] for i in indices], self.class_names)


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
                elif os.path.islink(match) and not os.path.exists(match):
                    _skip(match, _dangling(match))
            found += matches or [arg]
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


def labeled_csv(path: str | os.PathLike, class_names: list[str] | None = None) -> LabeledImages:
    """A CSV with ``path,label`` columns (header optional); relative paths resolve from the CSV's folder."""
    path = Path(path)
    rows = []
    with open(path, newline="") as fh:
        for i, row in enumerate(csv.reader(fh)):
            if not row or row[0].startswith("#"):
                continue
            if i == 0 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
                continue
            if len(row) < 2:
                raise DatasetError(f"{path}:{i + 1}: expected 'path,label', got {','.join(row)!r}")
            rows.append((row[0].strip(), row[1].strip()))
    if not rows:
        raise DatasetError(f"{path}: no rows")
    names = class_names or sorted({label for _, label in rows})
    index = {name: i for i, name in enumerate(names)}
    missing = sorted({label for _, label in rows} - set(index))
    if missing:
        raise DatasetError(f"{path}: labels {', '.join(missing)} are not among the training classes")
    paths = [str(p if Path(p).is_absolute() else path.parent / p) for p, _ in rows]
    return LabeledImages(paths, [index[label] for _, label in rows], list(names))


def read_labeled(data: str | os.PathLike, class_names: list[str] | None = None) -> LabeledImages:
    """A class-per-folder tree or a CSV file."""
    data = Path(data)
    if data.is_file() and data.suffix.lower() in (".csv", ".txt"):
        return labeled_csv(data, class_names)
    if data.is_dir():
        return class_folders(data, class_names)
    raise DatasetError(f"{data}: no such folder or CSV file")


def train_val_split(
    data: str | os.PathLike, val_split: float = 0.2, seed: int = 0
) -> tuple[LabeledImages, LabeledImages]:
    """``DIR/train`` + ``DIR/val`` when both exist; otherwise a stratified split of one tree or CSV."""
    data = Path(data)
    if (data / "train").is_dir() and (data / "val").is_dir():
        train = class_folders(data / "train")
        return train, class_folders(data / "val", train.class_names)
    if not 0.0 < val_split < 1.0:
        raise DatasetError(f"{data}: has no train/ and val/ folders, so --val-split must be between 0 and 1")
    from cnnapps.datasets.splits import split_indices

    full = read_labeled(data)
    train_idx, val_idx = split_indices(len(full), val_split, seed, groups=full.labels)
    return full.subset(train_idx), full.subset(val_idx)
