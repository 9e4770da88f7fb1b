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


@pytest.mark.parametrize("suffix", [".png", "", ".jpg", ".JPG", ".bmp", ".ppm", ".tif", ".webp", ".jp2"])
def test_free_picture_takes_a_name_a_colour_picture_can_be_written_as(suffix: str, tmp_path) -> None:
    from cnnapps.terminal import free_picture

    assert free_picture(tmp_path / f"p{suffix}") == tmp_path / f"p{suffix}"


@pytest.mark.parametrize(
    ("suffix", "why"),
    [(".txt", "no picture format is written as .txt"), (".pgm", "a colour picture cannot be written as .pgm"),
     (".pbm", "a colour picture cannot be written as .pbm")],
)  # fmt: skip
def test_free_picture_refuses_a_name_no_colour_picture_is_written_as(suffix: str, why: str, tmp_path) -> None:
    """OpenCV has writers for .pgm and .pbm, but of grey pictures only: a colour one failed after the work."""
    from cnnapps.errors import CnnappsError
    from cnnapps.terminal import free_picture

    with pytest.raises(CnnappsError) as caught:
        free_picture(tmp_path / f"p{suffix}", "--save-grid")
    assert str(caught.value) == f"--save-grid {tmp_path / f'p{suffix}'}: {why}; use .png or .jpg"


def test_one_line_escapes_what_breaks_a_line_or_talks_to_the_terminal() -> None:
    from cnnapps.terminal import one_line

    assert one_line("a\nb\r\tc\x1b[31md\u2028e") == "a\\nb\\r\\tc\\x1b[31md\\u2028e"
    assert one_line("café [red]x\udcff.jpg") == "café [red]x\udcff.jpg"  # printable text, and a non-UTF-8 byte, kept
