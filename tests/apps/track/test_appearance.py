"""The learned appearance (cnnapps train track): the fit, the model file that keeps it, the command and its errors."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import cnnapps
from cnnapps.apps.detect.model import create_detector, save_detector
from cnnapps.apps.track.appearance import AppearanceError, fit_projection, identity_boxes

NUISANCE = np.random.default_rng(9).normal(size=(6, 120)) * 2.0


def _views(rng, identities: int, per: int):
    """Unit vectors of ``identities`` objects seen ``per`` times each: a small part says which object it is, a large
    part changes from view to view alike for every object (where in the box, how covered), as RoI embeddings do."""
    nuisance = NUISANCE
    centres = rng.normal(size=(identities, nuisance.shape[1]))
    x = np.repeat(centres, per, 0) + rng.normal(size=(identities * per, 6)) @ nuisance
    x += rng.normal(scale=0.3, size=x.shape)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.repeat(np.arange(identities), per)


def _rank1(x: np.ndarray, ids: np.ndarray, per: int) -> float:
    """How often a later view is nearest (cosine) to its own object's mean of the first half of its views."""
    first = np.tile(np.arange(per) < per // 2, len(x) // per)
    means = np.stack([x[(ids == i) & first].mean(0) for i in np.unique(ids)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    later = ~first
    return float(((x[later] @ means.T).argmax(1) == ids[later]).mean())


def test_the_fit_separates_objects_it_never_saw():
    rng = np.random.default_rng(0)
    train_x, train_ids = _views(rng, 40, 12)
    mean, matrix = fit_projection(train_x, train_ids, components=16)
    assert mean.shape == (120,) and matrix.shape == (120, 16)
    test_x, test_ids = _views(np.random.default_rng(1), 20, 12)  # new objects, the same kind of changes
    projected = (test_x - mean) @ matrix
    projected /= np.linalg.norm(projected, axis=1, keepdims=True)
    raw, learned = _rank1(test_x, test_ids, 12), _rank1(projected, test_ids, 12)
    assert raw < 0.6 and learned > 0.9, (raw, learned)


def test_the_fit_needs_two_objects_seen_twice():
    x = np.random.default_rng(0).normal(size=(5, 8))
    with pytest.raises(AppearanceError, match="1 identities with 2 or more boxes"):
        fit_projection(x, np.array([0, 0, 1, 2, 3]))  # one object seen twice, three once
    _, matrix = fit_projection(x, np.array([0, 0, 1, 1, 3]), components=8)
    assert matrix.shape == (8, 1)  # at most one direction tells two objects apart


def test_fewer_components_than_asked_are_said_with_the_reason(caplog):
    x = np.random.default_rng(0).normal(size=(40, 8))
    with caplog.at_level("WARNING", logger="cnnapps"):
        _, matrix = fit_projection(x, np.repeat(np.arange(4), 10), components=32)
    assert matrix.shape == (8, 3)
    assert [r.getMessage() for r in caplog.records] == [
        "learned appearance of 3 numbers, not the 32 asked: 4 identities with 2 or more boxes are told apart along "
        "at most 3 directions (one fewer than the identities)"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="cnnapps"):
        _, matrix = fit_projection(x, np.repeat(np.arange(20), 2), components=16)
    assert matrix.shape == (8, 8)
    assert caplog.records[0].getMessage().endswith("not the 16 asked: the embedding has 8 numbers")
    caplog.clear()
    with caplog.at_level("WARNING", logger="cnnapps"):
        fit_projection(x, np.repeat(np.arange(20), 2), components=8)  # as many as asked: nothing to say
    assert not caplog.records


@pytest.mark.parametrize(
    ("names", "keys", "categories", "evidence"),
    [
        (["v3_00000.png", "v3_00005.png", "v4_00000.png"], {}, [1, 1, 1],
         "file names of 2 sequences, such as v3_* and v4_*"),
        (["a/000001.jpg", "a/000002.jpg", "b/000001.jpg"], {}, [1, 1, 1],
         "file names of 2 sequences, such as a/* and b/*"),
        (["f1.png", "f2.png", "f3.png"], {"video_seed": [5, 5, 6]}, [1, 1, 1], "2 values of video_seed"),
        (["f1.png", "f2.png", "f3.png"], {}, [1, 2, 1], "track_id 1 has boxes of categories 1, 2"),
        (["frame_0001.jpg", "frame_0002.jpg", "frame_0003.jpg"], {}, [1, 1, 1], None),  # one video
        (["v3_00000.png", "v4_00000.png", "v5_00000.png"], {"video_id": [3, 4, 5]}, [1, 2, 1], None),  # told apart
    ],
)  # fmt: skip
def test_images_without_video_id_that_look_like_several_videos_are_warned_of(
    tmp_path, caplog, names, keys, categories, evidence
):
    """Three frames with one box of track_id 1 each (of the given category)."""
    images = [{"id": i + 1, "file_name": name, "width": 64, "height": 64} for i, name in enumerate(names)]
    for key, values in keys.items():
        for image, value in zip(images, values, strict=True):
            image[key] = value
    annotations = [{"id": i + 1, "image_id": i + 1, "category_id": category, "iscrowd": 0, "bbox": [1, 1, 20, 20],
                    "track_id": 1} for i, category in enumerate(categories)]  # fmt: skip
    path = tmp_path / "frames.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1}, {"id": 2}]}))
    with caplog.at_level("WARNING", logger="cnnapps"):
        identity_boxes(path)
    said = [r.getMessage() for r in caplog.records]
    if evidence is None:
        assert not said
    else:
        assert said == [
            f"{path}: 3 images without a video_id look like frames of several videos ({evidence}): objects of "
            "different videos with one track_id are then merged into one identity; an image's video_id tells them "
            "apart"
        ]


@pytest.fixture(scope="module")
def tracked_set(tmp_path_factory):
    """Six 96x128 frames of two short videos, two coloured squares in each, boxes with video_id and track_id."""
    import cv2

    root = tmp_path_factory.mktemp("appearance")
    (root / "frames").mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for video in (7, 8):
        colours = {1: (220, 40, 40), 2: (40, 40, 220)} if video == 7 else {1: (40, 200, 40), 2: (230, 200, 30)}
        for frame in range(3):
            image = rng.integers(90, 140, (96, 128, 3), dtype=np.uint8)
            images.append({"id": len(images) + 1, "file_name": f"v{video}_{frame}.png", "width": 128, "height": 96,
                           "video_id": video})  # fmt: skip
            for track, colour in colours.items():
                x, y = 10 + 60 * (track - 1) + 6 * frame, 20 + 4 * frame
                image[y : y + 30, x : x + 30] = colour
                annotations.append({"id": len(annotations) + 1, "image_id": len(images), "category_id": 1,
                                    "bbox": [x, y, 30, 30], "area": 900, "iscrowd": 0, "track_id": track})  # fmt: skip
            cv2.imwrite(str(root / "frames" / images[-1]["file_name"]), image[:, :, ::-1])
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]}
    (root / "train.json").write_text(json.dumps(coco))
    model = create_detector("detect", "resnet18", num_classes=2, class_names=["__background__", "a"],
                            backbone_weights=None, fpn_channels=16, min_size=96, max_size=128)  # fmt: skip
    save_detector(root / "det.safetensors", model)
    return root


def test_train_track_writes_the_detector_with_its_learned_appearance(run_cli, tracked_set, tmp_path):
    detector, out = tracked_set / "det.safetensors", tmp_path / "reid.safetensors"
    before = hashlib.sha256(detector.read_bytes()).hexdigest()
    (tracked_set / "frames" / "v8_1.png").rename(tracked_set / "frames" / "keep.png")
    (tracked_set / "frames" / "v8_1.png").write_bytes(b"not an image")  # skipped, the rest fitted
    try:
        code, printed, err = run_cli("train", "track", "--model", str(detector), "--data",
                                     str(tracked_set / "train.json"), "--images", str(tracked_set / "frames"),
                                     "--out", str(out), "--json")  # fmt: skip
    finally:
        (tracked_set / "frames" / "keep.png").replace(tracked_set / "frames" / "v8_1.png")
    assert code == 0, err
    fitted = json.loads(printed)
    # 4 objects (two per video: the same track_id in two videos is two objects), 10 boxes of the 5 readable frames
    assert fitted["identities"] == 4 and fitted["boxes"] == 10 and fitted["images"] == 5
    assert fitted["components"] == 3 and fitted["skipped"] == [str(tracked_set / "frames" / "v8_1.png")]
    assert fitted["components_asked"] == 32
    assert hashlib.sha256(detector.read_bytes()).hexdigest() == before  # the detector's own file is untouched

    image = np.random.default_rng(3).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    raw = cnnapps.load(detector, score_threshold=0.0, embed=True).predict([image])[0]
    learned = cnnapps.load(out, score_threshold=0.0, embed=True)
    assert learned.spec.appearance["identities"] == 4 and learned.spec.appearance["dims"] == 16 * 49
    result = learned.predict([image])[0]
    assert np.allclose([i.box for i in raw.instances], [i.box for i in result.instances], atol=1e-4)  # same boxes
    vectors = np.stack([i.embedding for i in result.instances])
    assert vectors.shape == (len(result.instances), 3) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    projection = learned.model.appearance
    mean, matrix = projection.mean.cpu().numpy(), projection.matrix.cpu().numpy()
    expected = (np.stack([i.embedding for i in raw.instances]) - mean) @ matrix
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(vectors, expected, atol=1e-4)  # the raw RoI embedding, projected

    code, _, err = run_cli("train", "track", "--model", str(detector), "--data", str(tracked_set / "train.json"),
                           "--images", str(tracked_set / "frames"), "--out", str(out))  # fmt: skip
    assert code != 0 and "already exists" in err and len(err.strip().splitlines()) == 1


def test_train_track_refuses_boxes_without_identities(run_cli, tracked_set, tmp_path):
    coco = json.loads((tracked_set / "train.json").read_text())
    for ann in coco["annotations"]:
        del ann["track_id"]
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(coco))
    code, _, err = run_cli("train", "track", "--model", str(tracked_set / "det.safetensors"), "--data", str(plain),
                           "--images", str(tracked_set / "frames"), "--out",
                           str(tmp_path / "x.safetensors"))  # fmt: skip
    assert code != 0 and "no annotation has a track_id" in err and str(plain) in err
    assert not (tmp_path / "x.safetensors").exists()


def test_train_track_says_what_a_file_without_video_ids_and_a_small_fit_cost(run_cli, tracked_set, tmp_path, caplog):
    """Without video_id the two videos' track ids 1 and 2 are two objects, not four: said, as the 1 number of the 64
    asked is, and --json gives both numbers."""
    coco = json.loads((tracked_set / "train.json").read_text())
    for image in coco["images"]:
        del image["video_id"]
    merged = tmp_path / "merged.json"
    merged.write_text(json.dumps(coco))
    with caplog.at_level("WARNING", logger="cnnapps"):
        code, printed, err = run_cli("train", "track", "--model", str(tracked_set / "det.safetensors"), "--data",
                                     str(merged), "--images", str(tracked_set / "frames"), "--out",
                                     str(tmp_path / "reid.safetensors"), "--components", "64", "--json")  # fmt: skip
    assert code == 0, err
    fitted = json.loads(printed)
    assert fitted["identities"] == 2 and (fitted["components"], fitted["components_asked"]) == (1, 64)
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert said == [
        f"{merged}: 6 images without a video_id look like frames of several videos (file names of 2 sequences, such "
        "as v7_* and v8_*): objects of different videos with one track_id are then merged into one identity; an "
        "image's video_id tells them apart",
        "learned appearance of 1 number, not the 64 asked: 2 identities with 2 or more boxes are told apart along at "
        "most 1 direction (one fewer than the identities)",
    ]
