"""--score-threshold keeps scores at or above it, whole images, tiles and exported graphs alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnapps.apps.detect.model import create_detector
from cnnapps.apps.detect.predictor import DetectionPredictor


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.6710924506187439, 1.0, 1e-8, 0.05])
def test_the_heads_threshold_keeps_float32_scores_at_or_above_the_threshold(threshold):
    """torchvision keeps scores > ``score_thresh``: the threshold itself (a float32 score of 1.0, the highest) was
    dropped."""
    from cnnapps.apps.detect.predictor import kept_from

    below = np.nextafter(np.float32(threshold), np.float32(-np.inf))
    scores = torch.tensor(np.array([below, threshold, np.float32(threshold), 1.0], np.float32))
    kept = (scores > kept_from(threshold)).tolist()  # what the RoI heads compare
    assert kept == [float(s) >= threshold for s in scores.tolist()]
    assert kept[-1] and (scores > kept_from(0.0)).all()


@pytest.fixture(scope="module")
def confident():
    """An untrained detector whose class scores saturate: many boxes score exactly 1.0."""
    torch.manual_seed(0)
    model = create_detector("detect", "resnet18", num_classes=2, backbone_weights=None, fpn_channels=16, min_size=96,
                            max_size=128)  # fmt: skip
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(30.0)
    return model.eval()


@pytest.mark.parametrize("tile", [None, 64])
def test_a_score_equal_to_the_threshold_is_kept(confident, tile):
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    every = DetectionPredictor(model=confident, score_threshold=0.0, device="cpu", tile=tile).predict([image])[0]
    scores = sorted({i.score for i in every.instances})
    assert 1.0 in scores and len(scores) > 2
    for threshold in (scores[len(scores) // 2], 1.0):
        found = DetectionPredictor(model=confident, score_threshold=threshold, device="cpu",
                                   tile=tile).predict([image])[0]  # fmt: skip
        assert found.instances and min(i.score for i in found.instances) == threshold
        if tile is None:  # tiles merge what they keep: fewer pieces may join otherwise
            assert len(found.instances) == sum(s >= threshold for s in (i.score for i in every.instances))


def test_an_exported_graph_keeps_scores_at_its_threshold(tmp_path):
    from cnnapps.apps.detect.model import exportable, save_detector
    from cnnapps.apps.detect.predictor import kept_from

    torch.manual_seed(0)
    save_detector(tmp_path / "det.safetensors", create_detector("detect", "resnet18", num_classes=2,
                                                                backbone_weights=None, fpn_channels=16))  # fmt: skip
    graph = exportable(tmp_path / "det.safetensors")
    assert graph.module.roi_heads.score_thresh == kept_from(0.05) < 0.05
