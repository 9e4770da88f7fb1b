"""Images more elongated than the general limit (100:1) run tiled: tiles are never that elongated."""

from __future__ import annotations

import cv2
import numpy as np

import cnnapps
from cnnapps.apps.detect.model import create_detector, save_detector


def test_tiles_take_an_image_more_elongated_than_the_general_limit(tmp_path, run_cli):
    path = tmp_path / "seg.safetensors"
    save_detector(path, create_detector("segment", "resnet18", num_classes=2, class_names=["__background__", "a"],
                                        backbone_weights=None, fpn_channels=16, min_size=96, max_size=128))  # fmt: skip
    strip = tmp_path / "strip.png"
    cv2.imwrite(str(strip), np.random.default_rng(0).integers(0, 255, (10, 1200, 3), dtype=np.uint8))
    whole = cnnapps.load(path, score_threshold=0.0, device="cpu").predict([strip])[0]
    assert not whole.ok and "more elongated than the limit of 100:1" in whole.error
    tiled = cnnapps.load(path, score_threshold=0.0, device="cpu", tile=96).predict([strip])[0]
    assert tiled.ok and (tiled.width, tiled.height) == (1200, 10)
    code, out, err = run_cli("segment", strip, "--model", path, "--device", "cpu", "--tile", "96", "--json")
    assert code == 0 and '"error"' not in out, err
