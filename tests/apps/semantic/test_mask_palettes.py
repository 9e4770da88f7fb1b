"""Palette masks read by colour: palette index 255 is ignored whatever colour the palette gives it (Pascal VOC's
convention), an index beyond the stored palette is a one-line error, and evaluation scores masks that hold it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnnapps.apps.semantic.evaluate import evaluate_semantic
from cnnapps.apps.semantic.result import SemanticResult
from cnnapps.datasets.semantic import ClassList, MaskError, read_mask, read_semantic_data, write_mask

COLOURS = [(0, 0, 0), (70, 130, 180), (107, 142, 35)]
CLASSES = ClassList(["background", "sky", "grass"], COLOURS, None, "classes.txt")


def _indices() -> np.ndarray:
    a = np.zeros((40, 60), np.uint8)
    a[:20], a[20:30], a[30:, :30] = 1, 2, 255
    return a


def _palette_png(path, a: np.ndarray, palette: list[int]) -> None:
    img = Image.fromarray(a, mode="P")
    img.putpalette(palette)
    img.save(path)


def test_index_255_of_a_short_palette_is_ignored_not_black(tmp_path):
    _palette_png(tmp_path / "x.png", _indices(), [v for c in [*COLOURS, *[(9, 9, 9)] * 17] for v in c])  # 20 colours
    with Image.open(tmp_path / "x.png") as img:
        assert len(img.getpalette()) == 60 and int((np.array(img) == 255).sum()) == 300
    mask = read_mask(tmp_path / "x.png", CLASSES)
    assert int((mask == 255).sum()) == 300 and int((mask == 0).sum()) == 300
    assert int((mask == 1).sum()) == 1200 and int((mask == 2).sum()) == 600


@pytest.mark.parametrize("colour", [(224, 224, 192), (70, 130, 180)])
def test_index_255_is_ignored_whatever_its_colour(tmp_path, colour):
    palette = [*COLOURS, *[(9, 9, 9)] * 252, colour]
    _palette_png(tmp_path / "x.png", _indices(), [v for c in palette for v in c])
    mask = read_mask(tmp_path / "x.png", CLASSES)
    assert np.array_equal(mask, _indices().astype(np.int64))


def test_a_mask_written_by_write_mask_reads_back_with_its_ignored_pixels(tmp_path):
    write_mask(tmp_path / "x.png", _indices(), COLOURS)
    assert np.array_equal(read_mask(tmp_path / "x.png", CLASSES), _indices().astype(np.int64))


def test_an_index_beyond_the_stored_palette_is_an_error_naming_the_file(tmp_path):
    # three colours: PIL writes 2-bit indices, so index 255 is stored as 3, which the palette does not have
    _palette_png(tmp_path / "x.png", _indices(), [v for c in COLOURS for v in c])
    with pytest.raises(MaskError) as info:
        read_mask(tmp_path / "x.png", CLASSES)
    reason = "palette index 3 at 300 pixels is beyond the 3 colours of its palette"
    assert str(info.value) == f"{tmp_path / 'x.png'}: {reason}"


class _Predictor:
    class_names = CLASSES.names
    source = "model.safetensors"

    def predict(self, paths):
        return [SemanticResult(str(p), labels=_indices().astype(np.int64) % 3, class_names=self.class_names)
                for p in paths]  # fmt: skip


def _data(tmp_path, bad: bool = False):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "classes.txt").write_text("background 0 0 0\nsky 70 130 180\ngrass 107 142 35\n")
    for name in ("a", "b"):
        Image.new("RGB", (60, 40)).save(tmp_path / "images" / f"{name}.png")
        write_mask(tmp_path / "masks" / f"{name}.png", _indices(), COLOURS)  # index 255 in VOC's (224, 224, 192)
    if bad:
        rgb = np.zeros((40, 60, 3), np.uint8)
        rgb[0, 0] = (1, 2, 3)
        Image.fromarray(rgb).save(tmp_path / "masks" / "b.png")
    return read_semantic_data(tmp_path)


def test_evaluation_scores_palette_masks_with_ignored_pixels(tmp_path):
    report = evaluate_semantic(_Predictor(), _data(tmp_path))
    assert report.images == 2 and report.failed == []
    assert sum(map(sum, report.confusion)) == 2 * (40 * 60 - 300)


def test_a_failed_mask_is_reported_with_its_path_once(tmp_path):
    report = evaluate_semantic(_Predictor(), _data(tmp_path, bad=True))
    path = str(tmp_path / "masks" / "b.png")
    assert report.failed == [{"path": path, "error": "colour (1, 2, 3) at 1 pixels is not in " +
                              str(tmp_path / "classes.txt")}]  # fmt: skip
    assert path not in report.failed[0]["error"]
