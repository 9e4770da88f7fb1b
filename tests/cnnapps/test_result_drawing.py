"""Every result draws on whatever ``predict`` takes: a grey, RGBA, float or 16-bit array, a PIL image, a path, as the
RGB uint8 picture its docstring promises (grey and PIL pictures raised, a float one came back float)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnnapps.apps.semantic.result import SemanticResult
from cnnapps.results import (
    CaptionResult,
    ClassificationResult,
    DetectionResult,
    Instance,
    MultiTaskResult,
    Prediction,
)

RGB = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def _mask() -> dict:
    from pycocotools import mask as mask_utils

    m = np.zeros((48, 64), np.uint8, order="F")
    m[10:30, 10:40] = 1
    rle = mask_utils.encode(m)
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _results() -> list:
    detection = DetectionResult("x", instances=[Instance("box", 1, 0.9, (10, 10, 40, 30), mask=_mask())])
    classification = ClassificationResult("x", predictions=[Prediction("cat", 0, 0.8)])
    labels = np.zeros((48, 64), np.uint8)
    labels[:, 32:] = 1
    return [
        classification,
        detection,
        CaptionResult("x", caption="a box"),
        SemanticResult("x", labels=labels, class_names=["background", "thing"]),
        MultiTaskResult("x", results={"classify": classification, "detect": detection}),
    ]


@pytest.mark.parametrize(
    "image",
    [RGB[..., 0], RGB[..., :1], np.dstack([RGB, np.full((48, 64), 255, np.uint8)]), RGB / 255.0,
     RGB.astype(np.uint16) * 257, Image.fromarray(RGB)],
    ids=["grey", "hw1", "rgba", "float", "uint16", "pil"],
)  # fmt: skip
def test_every_result_draws_on_every_input_predict_takes(image) -> None:
    for result in _results():
        for drawn in (result.draw(image), result.overlay(image)):
            assert drawn.dtype == np.uint8 and drawn.ndim == 3 and drawn.shape[2] == 3, type(result).__name__


def test_a_colour_frame_is_drawn_as_it_is() -> None:
    detection = _results()[1]
    assert np.array_equal(detection.draw(RGB[..., 0])[:5, :5], np.repeat(RGB[:5, :5, :1], 3, axis=2))
    assert np.array_equal(detection.draw(RGB)[:5, :5], RGB[:5, :5])  # outside the box and mask: the frame's pixels
