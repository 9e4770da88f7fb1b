"""Training pictures (curves, confusion matrix): written exactly at the path given, in the format its suffix names,
never over a file that is there unless told."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnnapps.apps.common.plots import plot_confusion, plot_curves
from cnnapps.datasets.io import read_image, sniff_format
from cnnapps.files import OutputExistsError

HISTORY = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.2, "val_top1": 0.5, "val_top5": 0.9},
           {"epoch": 2, "train_loss": 0.6, "val_loss": 0.8, "val_top1": 0.7, "val_top5": None}]  # fmt: skip


def _confusion(path: Path, **kwargs: object) -> None:
    plot_confusion([[5, 1], [2, 4]], ["cat", "dog"], path, **kwargs)


def _curves(path: Path, **kwargs: object) -> None:
    plot_curves(HISTORY, path, **kwargs)


@pytest.mark.parametrize("draw", [_confusion, _curves])
def test_a_name_without_a_suffix_is_written_as_png_under_that_name(draw, tmp_path: Path) -> None:
    """matplotlib would add ``.png`` to the name, writing another file than the one asked for."""
    theirs = tmp_path / "confusion.png"
    theirs.write_bytes(b"the user's own picture")
    draw(tmp_path / "confusion")
    assert theirs.read_bytes() == b"the user's own picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion", "confusion.png"]
    assert sniff_format((tmp_path / "confusion").read_bytes()) == "PNG"


@pytest.mark.parametrize("draw", [_confusion, _curves])
@pytest.mark.parametrize(
    ("suffix", "magic"),
    [(".bmp", b"BM"), (".ppm", b"P6"), (".jpg", b"\xff\xd8\xff"), (".tif", b"II*\x00"), (".webp", b"RIFF"),
     (".JPG", b"\xff\xd8\xff")],
)  # fmt: skip
def test_every_suffix_a_picture_is_written_as_works(draw, suffix: str, magic: bytes, tmp_path: Path) -> None:
    """The formats ``free_picture`` accepts (OpenCV's), not only matplotlib's own (which has no BMP or PPM)."""
    path = tmp_path / f"picture{suffix}"
    draw(path)
    assert path.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left beside it
    if suffix != ".ppm":  # a format read_image does not read
        rgb = read_image(path)
        assert rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) > 100


@pytest.mark.parametrize("draw", [_confusion, _curves])
def test_an_existing_file_is_kept_unless_overwriting_is_asked(draw, tmp_path: Path) -> None:
    path = tmp_path / "picture.png"
    path.write_bytes(b"mine")
    with pytest.raises(OutputExistsError, match="already exists"):
        draw(path, overwrite=False)
    assert path.read_bytes() == b"mine" and [p.name for p in tmp_path.iterdir()] == ["picture.png"]
    draw(path, overwrite=True)  # a training run's own picture, drawn again by a resumed run
    assert sniff_format(path.read_bytes()) == "PNG"


def test_a_symlink_at_the_path_is_never_written_through(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.png"
    target.write_bytes(b"mine")
    (tmp_path / "link.png").symlink_to(target)
    with pytest.raises(OutputExistsError):
        _confusion(tmp_path / "link.png", overwrite=False)
    _confusion(tmp_path / "link.png", overwrite=True)
    assert target.read_bytes() == b"mine" and not (tmp_path / "link.png").is_symlink()


def test_the_picture_is_the_drawing_itself(tmp_path: Path) -> None:
    """Row-normalised rates in blues: the diagonal cells are darker than the off-diagonal ones."""
    _confusion(tmp_path / "c.png")
    rgb = read_image(tmp_path / "c.png").astype(int)
    blue = (rgb[..., 2] - rgb[..., 0]) > 60
    assert blue.sum() > 1000 and np.ptp(rgb) > 200


def test_the_curves_mark_whole_epochs_only(tmp_path: Path, monkeypatch) -> None:
    # two epochs were ticked 1.0, 1.2, 1.4, ...: epochs are whole
    import cnnapps.apps.common.plots as plots

    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, overwrite: drawn.append(fig))
    _curves(tmp_path / "curves.png")
    for ax in drawn[0].axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 2]
        assert ticks and all(float(t).is_integer() for t in ticks)
