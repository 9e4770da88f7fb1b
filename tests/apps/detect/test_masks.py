"""Masks of segmentation models: pasted into a window around each box, never at the image's size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnapps.apps.detect.model import create_detector, create_shared_detector, run_detector
from cnnapps.apps.detect.predictor import DetectionPredictor, to_detections, to_result


def _sharpened(model: torch.nn.Module) -> torch.nn.Module:
    """An untrained segmenter whose mask logits are spread wide: masks with edges inside their boxes to compare."""
    with torch.no_grad():
        model.roi_heads.mask_predictor.mask_fcn_logits.weight.mul_(50.0)
    return model.eval()


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return _sharpened(create_detector("segment", "resnet18", num_classes=3, backbone_weights=None, fpn_channels=16,
                                      min_size=96, max_size=160))  # fmt: skip


@pytest.fixture()
def no_full_size_paste(monkeypatch):
    """torchvision's paste of every mask into an image-sized tensor (N x H x W floats) made to fail."""
    from torchvision.models.detection import roi_heads, transform

    def refused(masks, boxes, img_shape, padding=1):
        raise AssertionError(f"{len(masks)} masks pasted at the image's size {tuple(img_shape)}")

    monkeypatch.setattr(transform, "paste_masks_in_image", refused)
    monkeypatch.setattr(roi_heads, "paste_masks_in_image", refused)


def test_the_predictor_never_builds_an_image_sized_mask_per_instance(segmenter, no_full_size_paste):
    """A 4000 x 3000 photo with 100 instances built 4.6 GB of full-size masks (10 GB at its peak) before each was cut
    to its box's window; each mask is now pasted into that window alone."""
    image = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    result = DetectionPredictor(model=segmenter, score_threshold=0.0, device="cpu").predict([image])[0]
    assert result.ok and result.instances and all(i.mask["size"] == [150, 200] for i in result.instances)
    tiled = DetectionPredictor(model=segmenter, score_threshold=0.0, device="cpu", tile=96, overlap=16)
    assert tiled.predict([image])[0].instances


def test_a_shared_trunk_s_masks_are_pasted_into_their_windows_too(no_full_size_paste):
    from cnnapps.backbones import create_backbone

    torch.manual_seed(0)
    trunk = create_backbone("resnet18", weights=None)
    model = _sharpened(create_shared_detector("segment", trunk, "resnet18", trunk.preprocess, num_classes=2,
                                              fpn_channels=16))  # fmt: skip
    image = np.random.default_rng(1).integers(0, 255, (120, 90, 3), dtype=np.uint8)
    result = DetectionPredictor(model=model, score_threshold=0.0, device="cpu").predict([image])[0]
    assert result.ok and result.instances and all(i.mask["size"] == [120, 90] for i in result.instances)


@pytest.mark.parametrize("size", [(90, 120), (61, 157), (200, 47), (128, 128)])
def test_masks_pasted_in_windows_equal_the_full_size_paste(segmenter, size):
    """The same pixels as torchvision's full-size paste cut to the window: the same padded mask, integer box and
    bilinear resize, only where the window is."""
    image = np.random.default_rng(sum(size)).integers(0, 255, (*size, 3), dtype=np.uint8)
    tensor = [torch.from_numpy(image).permute(2, 0, 1).float().div(255.0)]
    with torch.inference_mode():
        full = to_detections(segmenter(tensor)[0], *size)
        windowed = to_detections(run_detector(segmenter, tensor, full_masks=False)[0], *size)
    spec = segmenter.spec
    expected = to_result("", full, *size, spec).instances
    found = DetectionPredictor(model=segmenter, score_threshold=segmenter.roi_heads.score_thresh,
                               device="cpu").predict([image])[0].instances  # fmt: skip
    assert len(found) == len(expected) > 0
    assert [i.mask for i in found] == [i.mask for i in expected]
    pixels = 0
    for (a, ax, ay), (b, bx, by) in zip(full.masks, windowed.masks, strict=True):
        assert (ax, ay) == (bx, by) and np.array_equal(a, b)
        pixels += int(a.sum())
    assert 0 < pixels < sum(a.size for a, _, _ in full.masks)  # masks with edges, not all or nothing
