"""Augmentation keeps boxes, masks and keypoints together; flips rename left and right keypoints."""

from __future__ import annotations

import warnings

import albumentations as A
import numpy as np
import pytest

from cnnapps.apps.detect.zoo import COCO_KEYPOINTS
from cnnapps.datasets.coco import Target
from cnnapps.datasets.formats.hub import flip_index_from_names as flip_index
from cnnapps.datasets.formats.hub import is_left
from cnnapps.datasets.transforms import apply_detection_pipeline, detection_transform


def _pipeline(*steps):
    return A.Compose(
        list(steps),
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["instance"], min_visibility=0.3, clip=True),
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
        save_applied_params=True,
    )


def _target(width=100, height=80):
    masks = np.zeros((2, height, width), np.uint8)
    masks[0, 10:30, 5:25] = 1
    masks[1, 40:70, 60:95] = 1
    keypoints = np.zeros((2, 3, 3), np.float32)
    keypoints[0] = [[10, 15, 2], [20, 15, 2], [15, 25, 1]]  # left_x, right_x, centre
    keypoints[1] = [[70, 50, 2], [90, 50, 2], [80, 60, 0]]
    boxes = np.array([[5, 10, 25, 30], [60, 40, 95, 70]], np.float32)
    return Target(boxes, np.array([1, 2]), masks, keypoints)


def test_flip_index_from_names():
    assert flip_index(["left_eye", "right_eye", "nose"]) == [1, 0, 2]
    coco = flip_index(COCO_KEYPOINTS)
    assert coco[:5] == [0, 2, 1, 4, 3] and coco[15:] == [16, 15]
    # the same rule for every spelling (the YOLO export wrote a flip_idx for none of these before)
    assert flip_index(["Left Eye", "Right Eye", "Nose"]) == [1, 0, 2]
    assert flip_index(["eye_left", "eye_right", "hip_L", "hip_R", "l_knee", "r_knee"]) == [1, 0, 3, 2, 5, 4]
    assert flip_index(["left_hand", "right_foot", "leftover"]) == [0, 1, 2]  # no counterpart: stays
    sides = [is_left(n) for n in ("Left Eye", "eye_left", "hip_L", "l_knee", "right_eye", "nose")]
    assert sides == [True, True, True, True, False, False]  # data show draws the left side white


def test_horizontal_flip_moves_everything_and_swaps_left_right():
    image = np.zeros((80, 100, 3), np.uint8)
    target = _target()
    _, out = apply_detection_pipeline(_pipeline(A.HorizontalFlip(p=1)), image, target, [1, 0, 2])
    assert np.allclose(out.boxes, [[75, 10, 95, 30], [5, 40, 40, 70]])
    assert np.array_equal(out.masks, target.masks[:, :, ::-1])
    # the old right keypoint (x=20) is the new left one, mirrored: 100 - 20 = 80
    assert np.allclose(out.keypoints[0], [[80, 15, 2], [90, 15, 2], [85, 25, 1]])
    assert out.keypoints[1, 2, 2] == 0  # invisible stays invisible
    for box, mask in zip(out.boxes, out.masks, strict=True):  # boxes still frame their masks
        ys, xs = np.nonzero(mask)
        assert np.allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


@pytest.mark.parametrize("steps", [
    (A.Resize(320, 400),),  # x4
    (A.Resize(40, 50),),  # x0.5
    (A.SmallestMaxSize(max_size=160), A.PadIfNeeded(160, 160), A.CenterCrop(160, 160)),  # x2, cropped 20 px
    (A.HorizontalFlip(p=1), A.Resize(160, 200)),  # flipped, then x2
])  # fmt: skip
def test_keypoints_scale_with_their_boxes_through_resizes(steps):
    """Continuous coordinates scale as x * s, as boxes do: each keypoint keeps its place in its box, scaled (they
    moved (s - 1) / 2 px off, 1.5 px at x4, when albumentations' pixel-centre placement went through a resize)."""
    target = _target()
    _, out = apply_detection_pipeline(_pipeline(*steps), np.zeros((80, 100, 3), np.uint8), target, [1, 0, 2])
    scale = (out.boxes[1, 3] - out.boxes[1, 1]) / 30  # the second box: x 60..95, y 40..70
    old, new = target.keypoints[1], out.keypoints[1]
    if isinstance(steps[0], A.HorizontalFlip):  # mirrored in its box, left and right swapped
        expected_x = (95 - old[[1, 0, 2], 0]) * scale
    else:
        expected_x = (old[:, 0] - 60) * scale
    assert np.allclose(new[:2, 0] - out.boxes[1, 0], expected_x[:2], atol=1e-3)
    assert np.allclose(new[:2, 1] - out.boxes[1, 1], (old[:2, 1] - 40) * scale, atol=1e-3)


def test_boxes_leaving_the_image_are_clipped_or_dropped():
    image = np.zeros((80, 100, 3), np.uint8)
    target = _target()
    shift = A.Affine(translate_px={"x": -15, "y": 0}, p=1)  # move everything 15 px left
    _, out = apply_detection_pipeline(_pipeline(shift), image, target, [1, 0, 2])
    # the first box (x 5..25) keeps 10 of 20 px: clipped to 0..10; the second moves whole
    assert np.allclose(out.boxes, [[0, 10, 10, 30], [45, 40, 80, 70]], atol=1)
    assert out.keypoints[0, 0, 2] == 0 and out.keypoints[0, 1, 2] == 2  # x 10 -> -5 left the image
    far = A.Affine(translate_px={"x": -22, "y": 0}, p=1)  # the first box keeps 3 of 20 px: dropped
    _, out = apply_detection_pipeline(_pipeline(far), image, target, [1, 0, 2])
    assert list(out.labels) == [2] and len(out.masks) == 1 and out.keypoints.shape == (1, 3, 3)


def test_default_preset_keeps_targets_consistent():
    rng = np.random.default_rng(0)
    transform = detection_transform("default", [1, 0, 2])
    image = rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)
    for _ in range(20):
        out_image, out = transform(image, _target())
        assert out_image.shape == image.shape
        assert len(out.boxes) == len(out.labels) == len(out.masks) == len(out.keypoints)
        for box, mask in zip(out.boxes, out.masks, strict=True):
            ys, xs = np.nonzero(mask)
            assert abs(xs.min() - box[0]) <= 2 and abs(ys.max() + 1 - box[3]) <= 2


def test_no_augmentation_leaves_the_target_as_it_is_and_warns_nothing():
    image = np.zeros((80, 100, 3), np.uint8)
    target = _target()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # albumentations warned of processors without a transform on every run
        transform = detection_transform("none", [1, 0, 2])
        out_image, out = transform(image, target)
    assert out_image is image or np.array_equal(out_image, image)
    assert np.allclose(out.boxes, target.boxes) and np.array_equal(out.labels, target.labels)
    assert np.array_equal(out.masks, target.masks) and np.allclose(out.keypoints, target.keypoints, atol=1e-4)


@pytest.mark.parametrize("preset", ["none", "default"])
def test_an_image_without_people_keeps_an_empty_pose_target(preset):
    empty = Target(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), keypoints=np.zeros((0, 17, 3), np.float32))
    image, out = detection_transform(preset, list(range(17)))(np.zeros((40, 50, 3), np.uint8), empty)
    assert image.shape == (40, 50, 3) and out.boxes.shape == (0, 4) and out.keypoints.shape == (0, 17, 3)
