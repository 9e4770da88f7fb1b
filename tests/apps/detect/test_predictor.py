"""DetectionPredictor through cnnapps.load: results, drawing, bad inputs, and a light import footprint."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import cnnapps
from cnnapps.apps.detect.model import create_detector, save_detector
from cnnapps.errors import CnnappsError


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("det") / "seg.safetensors"
    model = create_detector("segment", "resnet18", num_classes=3, class_names=["__background__", "a", "b"],
                            backbone_weights=None, fpn_channels=16, min_size=96, max_size=128)  # fmt: skip
    save_detector(path, model)
    return path


def test_load_gives_results_with_rle_masks_and_a_drawing(model_file):
    predictor = cnnapps.load(model_file, score_threshold=0.0)
    assert predictor.task == "segment" and predictor.class_names == ["__background__", "a", "b"]
    image = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    result, bad = predictor.predict([image, b"not an image"])
    assert result.ok and (result.width, result.height) == (120, 90) and result.instances
    d = result.to_dict()["instances"][0]
    assert d["label"] in ("a", "b") and d["mask"]["size"] == [90, 120] and len(d["box"]) == 4
    assert not bad.ok and bad.to_dict() == {"path": bad.source, "error": bad.error}
    picture = result.draw(image)
    assert picture.shape == image.shape and not np.array_equal(picture, image)


def test_load_refuses_the_wrong_task(model_file):
    with pytest.raises(CnnappsError, match="a segment model, not a pose model"):
        cnnapps.load(model_file, task="pose")
    assert cnnapps.api.task_of("keypointrcnn_resnet50_fpn") == "pose"


def test_inference_imports_neither_lightning_nor_albumentations(model_file, tmp_path):
    code = (
        "import sys, numpy as np, cnnapps\n"
        f"r = cnnapps.load({str(model_file)!r}).predict([np.zeros((64, 64, 3), np.uint8)])\n"
        "assert r[0].ok\n"
        "heavy = ('lightning', 'pytorch_lightning', 'albumentations')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
