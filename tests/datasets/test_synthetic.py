"""Synthetic captions read as English: the article follows the colour's first sound."""

from __future__ import annotations

import numpy as np

from cnnapps.datasets.synthetic import captioned_scene


def test_captions_say_an_orange_and_a_red() -> None:
    rng = np.random.default_rng(3)
    captions = [c for _ in range(80) for c in captioned_scene(rng, 96)[1]]
    orange = [c for c in captions if "orange" in c and "single" not in c]
    assert orange and all("an orange" in c and "a orange" not in c for c in orange)
    assert any(c.startswith("a red") for c in captions)
