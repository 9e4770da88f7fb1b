"""The synthetic tracking video: its files, ground truth that matches the pixels, pillars that hide and turn."""

from __future__ import annotations

import configparser
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cnnapps.datasets.synthetic import COLOURS, SHAPES
from cnnapps.datasets.synthetic_video import RADIUS_RANGE, frames_dataset, main, tracking_video
from cnnapps.datasets.video import VideoSource
from cnnapps.errors import CnnappsError
from cnnapps.files import OutputExistsError


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return tracking_video(tmp_path_factory.mktemp("synthetic") / "seq")  # the defaults: 300 frames, seed 0


def gt_rows(path: Path) -> np.ndarray:
    return np.array([[float(v) for v in line.split(",")] for line in path.read_text().splitlines()])


def test_files_and_ground_truth(made: dict) -> None:
    for key in ("video", "gt", "seqinfo", "labels"):
        assert made[key].is_file()
    info = configparser.ConfigParser()
    info.read(made["seqinfo"])
    seq = info["Sequence"]
    assert (seq["frameRate"], seq["seqLength"], seq["imWidth"], seq["imHeight"]) == ("25", "300", "320", "240")
    labels = json.loads(made["labels"].read_text())
    assert labels["classes"] == list(SHAPES) and len(labels["objects"]) == made["objects"] == 6
    pairs = {(o["shape"], o["colour"]) for o in labels["objects"]}
    assert len(pairs) == 6 and all(c in COLOURS for _, c in pairs)
    assert all(RADIUS_RANGE[0] <= o["radius"] <= RADIUS_RANGE[1] for o in labels["objects"])

    rows = gt_rows(made["gt"])
    assert rows.shape == (made["boxes"], 9)
    frame, ident, x, y, w, h, conf, cls, vis = rows.T
    assert frame.min() == 1 and frame.max() == 300 and set(ident) == set(range(1, 7))
    assert (x >= 0).all() and (y >= 0).all() and (x + w <= 320).all() and (y + h <= 240).all() and (w > 0).all()
    assert (conf == 1).all() and set(cls) <= {1, 2, 3}
    assert ((vis >= 0.25) & (vis <= 1)).all() and (vis < 1).any() and (vis == 1).any()
    by_id = {o["id"]: SHAPES.index(o["shape"]) + 1 for o in labels["objects"]}
    assert all(by_id[int(i)] == c for i, c in zip(ident, cls, strict=True))
    assert len({(f, i) for f, i in zip(frame, ident, strict=True)}) == len(rows)  # one line per object and frame


def test_pillars_hide_objects_and_some_turn_back(made: dict) -> None:
    labels = json.loads(made["labels"].read_text())
    rows = gt_rows(made["gt"])
    stretches = labels["hidden"]
    assert len(stretches) == made["hidden"] and sum(s["reversed"] for s in stretches) == made["reversals"] >= 1
    assert max(s["last"] - s["first"] + 1 for s in stretches) >= 5
    present = {(int(f), int(i)) for f, i in rows[:, :2]}
    for s in stretches:  # wholly hidden: no ground-truth line in those frames
        assert not any((f, s["id"]) in present for f in range(s["first"], s["last"] + 1))
    (pillar,) = labels["pillars"]
    middle = (pillar["x0"] + pillar["x1"]) / 2
    compared = 0
    for s in stretches:  # it comes out on the side it went in from exactly when it turned back
        mine = rows[rows[:, 1] == s["id"]]
        before = mine[(mine[:, 0] < s["first"]) & (mine[:, 0] >= s["first"] - 15)]
        after = mine[(mine[:, 0] > s["last"]) & (mine[:, 0] <= s["last"] + 15)]
        if len(before) and len(after):
            side_in = np.sign(before[-1, 2] + before[-1, 4] / 2 - middle)
            side_out = np.sign(after[0, 2] + after[0, 4] / 2 - middle)
            assert (side_in == side_out) == s["reversed"], s
            compared += 1
    assert compared >= 3


def test_video_matches_ground_truth(made: dict) -> None:
    labels = json.loads(made["labels"].read_text())
    colours = {o["id"]: np.array(o["rgb"]) for o in labels["objects"]}
    rows = gt_rows(made["gt"])
    source = VideoSource(str(made["video"]))
    assert (source.frames, source.fps, source.width, source.height) == (300, 25.0, 320, 240)
    count = 0
    with source:
        for frame in source:
            count += 1
            if frame.index % 50:
                continue
            for _, ident, x, y, w, h, _, _, vis in rows[rows[:, 0] == frame.index + 1]:
                if vis < 1:
                    continue
                cx, cy = int(x + w / 2), int(y + h / 2)  # the centre of a wholly visible shape has its colour
                patch = frame.rgb[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3).mean(0)
                assert np.abs(patch - colours[int(ident)]).max() < 30
    assert count == made["frames"] == 300


def test_deterministic_and_never_overwrites(tmp_path: Path) -> None:
    a = tracking_video(tmp_path / "a", frames=40, objects=4, seed=3)
    b = tracking_video(tmp_path / "b", frames=40, objects=4, seed=3)
    c = tracking_video(tmp_path / "c", frames=40, objects=4, seed=4)
    assert a["gt"].read_text() == b["gt"].read_text() != c["gt"].read_text()
    assert a["labels"].read_text() == b["labels"].read_text()
    with pytest.raises(OutputExistsError):
        tracking_video(tmp_path / "a", frames=5)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    main([str(out), "--frames", "12", "--objects", "3", "--seed", "1"])
    assert "12 frames, 3 objects" in capsys.readouterr().out
    assert gt_rows(out / "gt" / "gt.txt")[:, 0].max() == 12
    with pytest.raises(SystemExit) as caught:
        main([str(out), "--frames", "12"])
    assert caught.value.code == 2 and "not an empty folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("frames") / "data"
    return out, frames_dataset(out, videos=2, val_videos=1, frames=30, every=10, seed=1000)


def test_frames_dataset_is_coco_with_the_videos_ground_truth(frames: tuple[Path, dict], tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    out, made = frames
    assert (made["train"], made["val"]) == (out / "train.json", out / "val.json")
    assert (made["train_images"], made["val_images"]) == (6, 3)  # frames 0, 10 and 20 of each video
    train = json.loads(made["train"].read_text())
    assert [c["name"] for c in train["categories"]] == list(SHAPES) == ["circle", "square", "triangle"]
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(i["file_name"] for i in train["images"])
    assert {i["video_seed"] for i in train["images"]} == {1000, 1001}
    assert all(i["video_id"] == i["video_seed"] for i in train["images"])  # which video: train track's identities
    assert {i["video_seed"] for i in json.loads(made["val"].read_text())["images"]} == {1002}
    coco = COCO(str(made["train"]))  # pycocotools reads it
    assert len(coco.getAnnIds()) == made["train_boxes"] > 0

    video = tracking_video(tmp_path / "v1001", frames=30, seed=1001)  # the same video: the same boxes
    labels = json.loads(video["labels"].read_text())
    colours = {o["id"]: np.array(o["rgb"]) for o in labels["objects"]}
    rows = gt_rows(video["gt"])
    for image in (i for i in train["images"] if i["video_seed"] == 1001):
        assert (image["width"], image["height"]) == (320, 240)
        anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=image["id"])), key=lambda a: a["track_id"])
        truth = rows[rows[:, 0] == image["frame"] + 1]
        assert [a["track_id"] for a in anns] == truth[:, 1].astype(int).tolist()
        assert [a["bbox"] for a in anns] == truth[:, 2:6].tolist()
        assert [a["category_id"] for a in anns] == truth[:, 7].astype(int).tolist()
        assert all(a["visibility"] >= 0.25 for a in anns)
        pixels = cv2.imread(str(out / "train" / image["file_name"]))[:, :, ::-1]
        for a in anns:  # decoded from the video: a wholly visible shape has its colour at its centre
            if a["visibility"] == 1:
                x, y, w, h = a["bbox"]
                patch = pixels[int(y + h / 2) - 1 : int(y + h / 2) + 2, int(x + w / 2) - 1 : int(x + w / 2) + 2]
                assert np.abs(patch.reshape(-1, 3).mean(0) - colours[a["track_id"]]).max() < 30


def test_frames_dataset_keeps_off_evaluation_seeds_and_never_overwrites(frames: tuple[Path, dict]) -> None:
    out, _ = frames
    with pytest.raises(CnnappsError, match="held out"):
        frames_dataset(out.parent / "other", videos=2, seed=8)
    with pytest.raises(OutputExistsError):
        frames_dataset(out, videos=1, val_videos=0, frames=5)


def test_frames_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "coco"
    main([str(out), "--coco", "--videos", "1", "--val-videos", "1", "--frames", "8", "--every", "4"])
    said = capsys.readouterr().out
    assert "train.json: 2 frames" in said and "val.json: 2 frames" in said
    seeds = {i["video_seed"] for i in json.loads((out / "val.json").read_text())["images"]}
    assert seeds == {1001}
    with pytest.raises(SystemExit) as caught:
        main([str(tmp_path / "held"), "--coco", "--videos", "1", "--seed", "0", "--frames", "4"])
    assert caught.value.code == 2 and "held out" in capsys.readouterr().err
