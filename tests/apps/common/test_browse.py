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


def picture_part(tile: np.ndarray) -> np.ndarray:
    """A tile without its title line and frame."""
    return tile[TITLE + PAD : -PAD, PAD:-PAD]


def grid_size(n: int, columns: int, cell: int) -> tuple[int, int]:
    """(width, height) of the grid: pairs of framed cells under a title line, ``columns`` pairs to a row."""
    columns = min(columns, n)
    rows = -(-n // columns)
    return columns * 2 * (cell + 2 * PAD), rows * (TITLE + cell + 2 * PAD)


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
    assert samples.task == "classify" and (samples.grid.shape[1], samples.grid.shape[0]) == grid_size(4, 4, 48)
    assert all(not np.array_equal(picture_part(a), picture_part(b)) for a, b in samples.pairs)
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
