"""Masks are written atomically: never over an existing file unless told, never through a symlink."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnapps.apps.semantic.result import SemanticResult
from cnnapps.datasets.semantic import write_mask
from cnnapps.files import OutputExistsError

LABELS = np.array([[0, 1], [2, 1]], np.int64)


def test_a_mask_reads_back_as_its_indices(tmp_path: Path) -> None:
    path = write_mask(tmp_path / "m.png", LABELS, [(0, 0, 0), (255, 0, 0), (0, 255, 0)])
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "P" and img.getpalette()[:9] == [0, 0, 0, 255, 0, 0, 0, 255, 0]
        assert np.array_equal(np.asarray(img), LABELS)
    wide = write_mask(tmp_path / "wide.png", LABELS * 300)
    with Image.open(wide) as img:
        assert np.array_equal(np.asarray(img), LABELS * 300)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png", "wide.png"]  # no temporary file left


def test_an_existing_file_is_refused_unless_overwrite(tmp_path: Path) -> None:
    kept = tmp_path / "holiday.png"
    kept.write_bytes(b"my only copy")
    with pytest.raises(OutputExistsError, match=r"holiday\.png: already exists"):
        write_mask(kept, LABELS)
    with pytest.raises(OutputExistsError):
        SemanticResult("x.jpg", labels=LABELS, class_names=["a", "b", "c"], colours=[[0, 0, 0]] * 3).save_mask(kept)
    assert kept.read_bytes() == b"my only copy"
    write_mask(kept, LABELS, overwrite=True)
    with Image.open(kept) as img:
        assert np.array_equal(np.asarray(img), LABELS)


def test_a_symlink_is_never_written_through(tmp_path: Path) -> None:
    target, link = tmp_path / "elsewhere.txt", tmp_path / "link.png"
    target.write_text("a file the link points at\n")
    os.symlink(target, link)
    with pytest.raises(OutputExistsError):
        write_mask(link, LABELS)
    write_mask(link, LABELS, overwrite=True)  # the link is replaced by the mask, its target left alone
    assert not link.is_symlink() and target.read_text() == "a file the link points at\n"
