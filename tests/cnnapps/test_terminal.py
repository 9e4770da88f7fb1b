"""Words of the terminal output: counts with their nouns, "a" or "an"."""

from __future__ import annotations

import pytest

from cnnapps.terminal import article, plural


@pytest.mark.parametrize(
    ("n", "word", "said"),
    [(1, "class", "1 class"), (3, "class", "3 classes"), (1, "epoch", "1 epoch"), (8, "epoch", "8 epochs"),
     (1, "image", "1 image"), (0, "image", "0 images")],
)  # fmt: skip
def test_plural(n: int, word: str, said: str) -> None:
    assert plural(n, word) == said


@pytest.mark.parametrize(
    ("word", "said"),
    [("lstm", "an lstm"), ("transformer", "a transformer"), ("orange", "an orange"), ("fpn head", "an fpn head"),
     ("deeplabv3 head", "a deeplabv3 head"), ("red", "a red"), ("unet", "a unet"), ("stuff", "a stuff")],
)  # fmt: skip
def test_article_follows_the_first_sound(word: str, said: str) -> None:
    assert article(word) == said
