"""Tiled inference: the grid, RLE from crops, and merging tiles back into one image's detections."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from cnnapps.apps.detect.tiling import Detections, crop_to_rle, detect_tiled, mask_window, tile_grid


def test_tile_grid_covers_the_image_with_the_overlap():
    tiles = tile_grid(2500, 3000, 1024, 128)
    covered = np.zeros((2500, 3000), bool)
    for x0, y0, x1, y1 in tiles:
        assert x1 - x0 == 1024 and y1 - y0 == 1024
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    xs = sorted({t[0] for t in tiles})
    assert xs == [0, 896, 1792, 1976] and all(b - a <= 1024 - 128 for a, b in itertools.pairwise(xs))
    assert tile_grid(300, 200, 1024, 128) == [(0, 0, 200, 300)]
    with pytest.raises(ValueError, match="larger than overlap"):
        tile_grid(10, 10, 64, 64)


def test_crop_to_rle_matches_pycocotools_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(300):
        height, width = (int(v) for v in rng.integers(5, 60, 2))
        box = np.zeros(4)
        box[[0, 2]] = np.sort(rng.uniform(0, width, 2))
        box[[1, 3]] = np.sort(rng.uniform(0, height, 2))
        x0, y0, x1, y1 = mask_window(box, height, width)
        crop = rng.random((y1 - y0, x1 - x0)) < rng.uniform(0.1, 1.0)
        full = np.zeros((height, width), np.uint8)
        full[y0:y1, x0:x1] = crop
        expected = mask_utils.encode(np.asfortranarray(full))["counts"].decode()
        assert crop_to_rle(crop, x0, y0, height, width)["counts"] == expected


def _blob_detector(tile: np.ndarray) -> Detections:
    """Stands in for a network: every connected non-black blob is an object with its exact mask."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats((tile.max(2) > 0).astype(np.uint8))
    boxes, masks = [], []
    for i in range(1, n):
        x, y, w, h = stats[i, :4]
        boxes.append([x, y, x + w, y + h])
        masks.append((labels[y : y + h, x : x + w] == i, int(x), int(y)))
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    return Detections(boxes, np.full(len(boxes), 0.9, np.float32), np.ones(len(boxes), np.int64), masks)


def test_tiled_detection_finds_each_object_once_with_its_full_mask():
    height, width = 1500, 2100
    image = np.zeros((height, width, 3), np.uint8)
    truth = []
    # discs placed on and across tile borders (tiles of 600 with 200 overlap start at 0, 400, 800, ...)
    # and one disc of 600 px that no tile holds whole: its pieces must be joined
    discs = [(590, 300, 45), (400, 600, 50), (1000, 1000, 55), (1210, 210, 60), (2040, 1440, 65), (60, 1450, 70)]
    for i, (cx, cy, r) in enumerate([*discs, (1500, 700, 300)]):
        mask = np.zeros((height, width), np.uint8)
        cv2.circle(mask, (cx, cy), r, 1, -1)
        image[mask.astype(bool)] = (200, 40 + 30 * i, 40)
        truth.append(mask)
    found = detect_tiled(image, _blob_detector, tile=600, overlap=200)
    assert len(found) == len(truth)
    for mask in truth:
        ys, xs = np.nonzero(mask)
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        (match,) = np.flatnonzero(np.abs(found.boxes - box).max(1) < 0.5)
        crop, x0, y0 = found.masks[match]
        rle = crop_to_rle(crop, x0, y0, height, width)
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert np.array_equal(decoded, mask)


def _unsure_detector(labels_per_call: list[list[int]]):
    """A detector that finds the marked pixels as one box per label it is given for that call (tile)."""
    calls = iter(labels_per_call)

    def detect(tile: np.ndarray) -> Detections:
        labels = next(calls)
        ys, xs = np.nonzero(tile[..., 0])
        if not len(xs) or not labels:
            return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
        box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        scores = [0.9 - 0.1 * k for k in range(len(labels))]
        return Detections(np.array([box] * len(labels), np.float32), np.array(scores, np.float32), np.array(labels))

    return detect


def test_an_object_two_tiles_label_differently_is_counted_once():
    image = np.zeros((100, 300, 3), np.uint8)
    image[10:30, 100:120, 0] = 1  # whole in the overlap of the tiles [0, 128) and [96, 224)
    found = detect_tiled(image, _unsure_detector([[1], [2], []]), 128, 32)
    assert found.labels.tolist() == [1] and found.boxes.tolist() == [[100, 10, 120, 30]]
    # two labels from one tile are the detector's own answer (class-wise, as without tiles): both stay
    found = detect_tiled(image, _unsure_detector([[1, 2], [], []]), 128, 32)
    assert sorted(found.labels.tolist()) == [1, 2]
    # both tiles give it both labels: both stay, once each
    found = detect_tiled(image, _unsure_detector([[1, 2], [2, 1], []]), 128, 32)
    assert sorted(found.labels.tolist()) == [1, 2]


def test_a_person_cut_by_tiles_keeps_each_keypoint_its_best_tile_saw():
    """Tiles [0, 600) and [400, 1000) each see part of a person at x 300..800 (wider than the overlap): the joined
    person takes each keypoint (x, y, score) from the piece that scored it highest, not all from the best piece."""
    image = np.zeros((300, 1000, 3), np.uint8)
    left = Detections(
        np.array([[300, 50, 600, 250]], np.float32),
        np.array([0.9], np.float32),
        np.array([1]),
        keypoints=np.array([[[350, 100, 5.0], [590, 100, -2.0], [500, 150, 1.0]]], np.float32),
    )
    right = Detections(
        np.array([[0, 50, 400, 250]], np.float32),
        np.array([0.8], np.float32),
        np.array([1]),
        keypoints=np.array([[[5, 100, -1.5], [350, 100, 4.0], [102, 150, 3.0]]], np.float32),
    )
    pieces = iter([left, right])  # in tile coordinates, one call per tile
    found = detect_tiled(image, lambda tile: next(pieces), 600, 200)
    assert found.boxes.tolist() == [[300, 50, 800, 250]] and found.scores.tolist() == pytest.approx([0.9])
    assert found.keypoints.tolist() == [[[350, 100, 5.0], [750, 100, 4.0], [502, 150, 3.0]]]


def test_predictor_tiles_large_images(tmp_path):
    from cnnapps.apps.detect.model import create_detector
    from cnnapps.apps.detect.predictor import DetectionPredictor

    model = create_detector("segment", "resnet18", num_classes=2, backbone_weights=None, fpn_channels=16,
                            min_size=128, max_size=128, box_score_thresh=0.0)  # fmt: skip
    predictor = DetectionPredictor(model=model, score_threshold=0.0, tile=256, overlap=64)
    calls = []
    forward = predictor._forward
    predictor._forward = lambda images: calls.append(images[0].shape) or forward(images)
    image = np.random.default_rng(0).integers(0, 255, (700, 900, 3), dtype=np.uint8)
    (result,) = predictor.predict([image])
    assert result.ok and (result.width, result.height) == (900, 700)
    assert len(calls) == 20 and all(s[:2] == (256, 256) for s in calls)  # rows at 0 192 384 444, 5 columns
    assert result.instances and all(i.mask["size"] == [700, 900] for i in result.instances)
    assert all(0 <= i.box[0] <= i.box[2] <= 900 and 0 <= i.box[1] <= i.box[3] <= 700 for i in result.instances)


def test_auto_tiles_are_the_training_size_and_overlaps_fit_them():
    from cnnapps.apps.detect.tiling import resolve_tile

    assert resolve_tile("auto", None, 256) == (256, 128)
    assert resolve_tile("auto", None, 96) == (96, 48)  # at most half the tile, so small models tile too
    assert resolve_tile("AUTO", 16, 96) == (96, 16)
    assert resolve_tile(1024, None, 256) == (1024, 128)  # an explicit size keeps the usual overlap
    assert resolve_tile("512", None, 256) == (512, 128)
    assert resolve_tile(None, None, 256) == (None, 128)
    with pytest.raises(ValueError, match="number of pixels or auto"):
        resolve_tile("big", None, 256)


def test_tiles_far_from_the_training_size_are_warned_of():
    from cnnapps.apps.detect.tiling import tile_advice

    assert tile_advice(256, 256) is None and tile_advice(512, 256) is None and tile_advice(128, 256) is None
    advice = tile_advice(1024, 256)  # the case: 16 of 158 objects found
    assert "4x smaller" in advice and "--tile 256" in advice and "\n" not in advice
    assert "4x larger" in tile_advice(64, 256)


def _seen_parts(height: int, width: int, tile: int, overlap: int, objects: list[tuple]):
    """A detector that finds, in each tile, each object's visible part. An object is (x0, y0, x1, y1, label, score)
    in image coordinates, optionally with {tile's (x0, y0): [(label, score), ...]}: more labels that tile gives it."""
    grid = iter(tile_grid(height, width, tile, overlap))

    def detect(_: np.ndarray) -> Detections:
        x0, y0, x1, y1 = next(grid)
        boxes, scores, labels = [], [], []
        for obj in objects:
            box = np.clip(np.array(obj[:4], np.float32), [x0, y0, x0, y0], [x1, y1, x1, y1])
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            for said, sure in [obj[4:6], *(obj[6].get((x0, y0), []) if len(obj) > 6 else [])]:
                boxes.append(box - [x0, y0, x0, y0])
                scores.append(sure)
                labels.append(said)
        return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                          np.array(labels, np.int64))  # fmt: skip

    return detect


def test_an_object_of_another_class_inside_a_cut_ones_box_stays():
    """A person before a bus, both wider than the overlap: the person was dropped as a piece of the bus (it lay
    inside the bus's box); a piece the detector gave a second, weaker label in one tile is still dropped."""
    bus, person = (20, 20, 490, 240, 0, 0.9), (150, 60, 300, 200, 1, 0.8)
    found = detect_tiled(np.zeros((256, 512, 3), np.uint8), _seen_parts(256, 512, 256, 64, [bus, person]), 256, 64)
    assert sorted(zip(found.labels.tolist(), found.boxes.tolist(), strict=True)) == [
        (0, [20, 20, 490, 240]), (1, [150, 60, 300, 200])]  # fmt: skip
    # the tile at x 192..448 also calls its piece of the bus a truck (label 2): one bus still
    unsure = (*bus, {(192, 0): [(2, 0.5)]})
    found = detect_tiled(np.zeros((256, 512, 3), np.uint8), _seen_parts(256, 512, 256, 64, [unsure]), 256, 64)
    assert found.labels.tolist() == [0] and found.boxes.tolist() == [[20, 20, 490, 240]]
    # a weaker person whole in the middle tile is not the strong bus's part there: the bus is joined whole
    weak = (200, 30, 420, 240, 1, 0.3)
    found = detect_tiled(np.zeros((256, 512, 3), np.uint8), _seen_parts(256, 512, 256, 64, [bus, weak]), 256, 64)
    assert sorted(zip(found.labels.tolist(), found.boxes.tolist(), strict=True)) == [
        (0, [20, 20, 490, 240]), (1, [200, 30, 420, 240])]  # fmt: skip
    # a small object whole in one tile and cut, under another label, by the next: counted once
    box = (150, 60, 230, 120, 0, 0.9, {(192, 0): [(2, 0.5)]})
    found = detect_tiled(np.zeros((256, 512, 3), np.uint8), _seen_parts(256, 512, 256, 64, [box]), 256, 64)
    assert found.labels.tolist() == [0] and found.boxes.tolist() == [[150, 60, 230, 120]]
