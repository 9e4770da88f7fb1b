"""The attention picture (``caption --save-attention``): each word's attention grid is drawn over the part of the
photo the network saw in each cell, for a preprocessing that crops (resize, then centre crop) as for one that
squashes the whole photo."""

from __future__ import annotations

import numpy as np
import pytest

from cnnapps.backbones.preprocess import Preprocess
from cnnapps.results import CaptionResult

PANEL = 224
CROP = Preprocess(input_size=(3, 224, 224), resize=256, resize_mode="crop")  # EfficientNet-Lite0's
SQUASH = Preprocess(input_size=(3, 64, 64), resize=64, resize_mode="squash")
RED = (230, 20, 20)


def _panel(picture: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-th panel (0: the image, 1: the first word) of a one-row attention picture, without its title."""
    left = k * (PANEL + 4) + 2
    return picture[-PANEL - 2 : -2, left : left + PANEL].astype(int)


def _picture(pre: Preprocess, photo: np.ndarray, grid: np.ndarray) -> np.ndarray:
    height, width = photo.shape[:2]
    result = CaptionResult("x.png", caption="a red square", words=["red"], attention=[grid],
                           geometry=pre.geometry(height, width), input_size=pre.input_size[1:])  # fmt: skip
    return result.draw(photo, panel=PANEL)


def _is_red(rgb: np.ndarray) -> bool:
    return bool(rgb[0] > 180 and rgb[1] < 90 and rgb[2] < 90)


def test_a_lit_cell_of_a_cropping_network_lands_on_what_it_saw_there() -> None:
    """EfficientNet-Lite0 on a 400x300 photo: resized to 341x256, cropped at x 58, y 16 to 224x224. Its cell (0, 0)
    of 7x7 is that view's 32x32 corner: the photo's x 68..105, y 19..56, painted red here. The old picture squashed
    the whole photo into the panel and lit its corner (photo x 0..57), where the network did not look."""
    photo = np.full((300, 400, 3), 255, np.uint8)
    photo[19:56, 69:105] = RED  # the photo under the view's cell (0, 0), worked out by hand (docstring)
    grid = np.zeros((7, 7), np.float32)
    grid[0, 0] = 1
    picture = _picture(CROP, photo, grid)
    image, word = _panel(picture, 0), _panel(picture, 1)
    assert all(_is_red(image[y, x]) for y in (4, 16, 27) for x in (4, 16, 27))  # what the network saw there
    assert not _is_red(image[16, 60]) and not _is_red(image[60, 16])
    assert _is_red(word[16, 16])  # lit (a dimmed red is darker than 180), and red: the cell over the red square
    assert word[120, 120].sum() < 0.4 * 3 * 255  # the rest dimmed


@pytest.mark.parametrize(("pre", "size", "side", "cell"), [(CROP, (400, 300), 7, (6, 3)), (CROP, (300, 400), 7, (3, 6)),
                                                           (SQUASH, (300, 400), 4, (1, 2)),
                                                           (SQUASH, (90, 500), 4, (3, 0))])  # fmt: skip
def test_each_lit_cell_lands_on_the_photo_under_that_cell(pre, size, side, cell) -> None:
    """Any cell, a tall or a wide photo: the part of the photo under the cell (from the preprocessing's geometry,
    ``x_in = x * sx - ox``) is red in the word's panel where the panel is lit, and nowhere else."""
    height, width = size
    sx, sy, ox, oy = pre.geometry(height, width)
    in_h, in_w = pre.input_size[1:]
    row, col = cell
    x0, x1 = (col * in_w / side + ox) / sx, ((col + 1) * in_w / side + ox) / sx
    y0, y1 = (row * in_h / side + oy) / sy, ((row + 1) * in_h / side + oy) / sy
    photo = np.full((height, width, 3), 255, np.uint8)
    photo[round(y0) : round(y1), round(x0) : round(x1)] = RED
    grid = np.zeros((side, side), np.float32)
    grid[row, col] = 1
    word = _panel(_picture(pre, photo, grid), 1)
    step = PANEL / side
    centre = (round((row + 0.5) * step), round((col + 0.5) * step))
    assert _is_red(word[centre])  # lit (a dimmed red is darker than 180), and red
    reds = np.argwhere((word[..., 0] > 120) & (word[..., 1] < 60))
    assert reds.min(0).tolist() >= [row * step - 3, col * step - 3]
    assert reds.max(0).tolist() <= [(row + 1) * step + 3, (col + 1) * step + 3]


def test_the_image_panel_is_what_the_network_saw(chelsea) -> None:
    """The first panel is the network's own input (resized and centre-cropped), not the whole photo squashed."""
    view = CROP(chelsea).transpose(1, 2, 0) * np.asarray(CROP.std) + np.asarray(CROP.mean)
    view = np.clip(view * 255 + 0.5, 0, 255)
    image = _panel(_picture(CROP, chelsea, np.ones((7, 7), np.float32)), 0)
    assert np.abs(image - view).mean() < 4


def test_a_result_without_the_preprocessing_squashes_the_photo_as_before() -> None:
    photo = np.zeros((30, 60, 3), np.uint8)
    photo[:, 30:] = 255
    picture = CaptionResult("x.png", caption="w", words=["w"], attention=[np.ones((2, 2))]).draw(photo, panel=PANEL)
    image = _panel(picture, 0)
    assert image[:, : PANEL // 2 - 2].max() == 0 and image[:, PANEL // 2 + 2 :].min() == 255


def test_the_predictor_keeps_how_it_preprocessed_each_image() -> None:
    import torch

    from cnnapps.apps.caption.model import build_captioner
    from cnnapps.apps.caption.predictor import CaptionPredictor
    from cnnapps.apps.caption.vocab import Vocabulary

    torch.manual_seed(0)
    vocab = Vocabulary.build(["a red circle", "a blue square"])
    model = build_captioner("resnet18", vocab, "lstm", grid=3, max_len=4, weights=None, embed_dim=16, hidden_dim=24,
                            attention_dim=8)  # fmt: skip
    images = [np.zeros((48, 64, 3), np.uint8), np.zeros((90, 30, 3), np.uint8)]
    results = CaptionPredictor(model=model, device="cpu").predict(images)
    pre = model.preprocess
    assert [r.geometry for r in results] == [pre.geometry(48, 64), pre.geometry(90, 30)]
    assert all(tuple(r.input_size) == tuple(pre.input_size[1:]) for r in results)
