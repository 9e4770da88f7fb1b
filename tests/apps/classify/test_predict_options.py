"""Prediction options given in Python are checked as the command line checks them: one line, nothing clamped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cnnapps
from cnnapps.apps.multitask import MultiTaskPredictor
from cnnapps.errors import CnnappsError

LENET = str(Path(__file__).parents[2] / "fixtures" / "model_files_v1" / "classify.safetensors")


@pytest.mark.parametrize("top_k", [0, -1, 1.5, "3", None, True])
def test_a_top_k_that_is_not_a_whole_number_of_at_least_1_is_one_line(top_k) -> None:
    """0 and -1 gave one class and 1.5, "3" and None a TypeError; the command line refuses --top-k 0."""
    image = np.zeros((32, 32, 3), np.uint8)
    for predictor in (cnnapps.load(LENET), MultiTaskPredictor(LENET)):  # one head, and the shared-trunk predictor
        with pytest.raises(CnnappsError, match=rf"^top_k={top_k!r}: classes per image, a whole number of at least 1$"):
            predictor.predict([image], top_k=top_k)
    assert len(cnnapps.load(LENET).predict([image], top_k=2)[0].predictions) == 2
