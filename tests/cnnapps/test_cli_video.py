"""Video through the prediction verbs: JSON Lines per frame, strides, annotated copies, event frames, tracking,
counting and MOT output, failures mid-way that keep what was read, and the misuse of video options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cnnapps.apps.detect.model import create_detector, save_detector
from cnnapps.datasets.video import VideoSource, VideoWriter


def write_clip(path: Path, frames: int, source: np.ndarray, fps: float = 10.0, size: tuple[int, int] = (96, 128)):
    """A clip panning over ``source`` (RGB), ``size`` (height, width) per frame."""
    height, width = size
    with VideoWriter(path, fps) as writer:
        for i in range(frames):
            x = (7 * i) % max(1, source.shape[1] - width)
            writer.write(np.ascontiguousarray(source[:height, x : x + width]))
    return path


def lines_of(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def cat_clip(tmp_path_factory, chelsea) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "cat.mp4", 12, chelsea, size=(224, 256))


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    """An untrained detector made sure of itself (class "a" everywhere): its boxes are confident enough to start
    tracks, which is what the plumbing needs."""
    import torch

    path = tmp_path_factory.mktemp("det") / "det.safetensors"
    torch.manual_seed(0)
    model = create_detector("detect", "resnet18", num_classes=3, class_names=["__background__", "a", "b"],
                            backbone_weights=None, fpn_channels=16, min_size=96, max_size=128)  # fmt: skip
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1] = 8.0
    save_detector(path, model)
    return path


def test_classify_takes_a_video_and_prints_a_json_line_per_frame(run_cli, cat_clip):
    code, out, err = run_cli("classify", str(cat_clip), "--json", "--top-k", "2", "--vid-stride", "3")
    assert code == 0, err
    lines = lines_of(out)
    frames, summary = lines[:-1], lines[-1]
    assert [f["frame"] for f in frames] == [0, 3, 6, 9]
    assert [f["time"] for f in frames] == pytest.approx([0.0, 0.3, 0.6, 0.9], abs=1e-3)
    assert all(f["source"] == str(cat_clip) and len(f["predictions"]) == 2 for f in frames)
    assert all("cat" in f["predictions"][0]["label"] for f in frames)  # chelsea is a tabby: a real photo
    assert summary["summary"]["frames"] == 4 and summary["summary"]["fps"] > 0


def test_the_annotated_video_and_the_event_frames_are_written_never_over_a_file(run_cli, cat_clip, tmp_path):
    copy, events = tmp_path / "out.mp4", tmp_path / "events"
    code, _, err = run_cli("classify", str(cat_clip), "--save-video", str(copy), "--save-frames", str(events))
    assert code == 0, err
    written = VideoSource(str(copy))
    assert written.frames == 12 and (written.width, written.height) == (640, 640 * 224 // 256 + 28 * 5 + 12)
    pictures = sorted(events.glob("cat-*.jpg"))
    assert pictures and pictures[0].name == "cat-000000.jpg"  # the first answer is an event
    before = copy.read_bytes()
    code, _, err = run_cli("classify", str(cat_clip), "--save-video", str(copy))
    assert code == 2 and "already exists" in err and copy.read_bytes() == before
    plain = tmp_path / "notes"  # no suffix: taken for a folder, but a file is there
    plain.write_text("mine")
    code, _, err = run_cli("classify", str(cat_clip), "--save-video", str(plain))
    assert code == 2 and f"{plain}: a file, not a folder" in err and len(err.strip().splitlines()) == 1
    assert plain.read_text() == "mine"


def test_the_annotated_copy_of_every_third_frame_plays_at_the_source_pace(run_cli, cat_clip, tmp_path):
    copy = tmp_path / "strided.mp4"
    code, _, err = run_cli("classify", str(cat_clip), "--vid-stride", "3", "--save-video", str(copy))
    assert code == 0, err
    with VideoSource(str(copy)) as written:
        times = [frame.time for frame in written]
        assert written.duration == pytest.approx(1.2, abs=0.05)  # 12 frames at 10 fps, not 4 at 10 fps
    assert times == pytest.approx([0.0, 0.3, 0.6, 0.9], abs=1e-3)


@pytest.fixture
def loaded(monkeypatch) -> list:
    """The predictors the commands load."""
    import cnnapps.api

    predictors, load = [], cnnapps.api.load
    monkeypatch.setattr(cnnapps.api, "load", lambda *a, **kw: predictors.append(load(*a, **kw)) or predictors[-1])
    return predictors


def test_detect_tracks_counts_and_writes_mot_lines(run_cli, detector, tmp_path, chelsea, loaded):
    from cnnapps.cli.video import VIDEO_BATCH

    clip = write_clip(tmp_path / "scene.mp4", 8, chelsea)
    mot, annotated = tmp_path / "tracks.txt", tmp_path / "tracked.mp4"
    code, out, err = run_cli("detect", str(clip), "--model", str(detector), "--score-threshold", "0.0", "--track",
                             "--line", "0.5,0,0.5,1", "--zone", "0,0,0.5,0,0.5,1,0,1", "--save-mot", str(mot),
                             "--save-video", str(annotated), "--json")  # fmt: skip
    assert code == 0, err
    lines = lines_of(out)
    frames, summary = lines[:-1], lines[-1]["summary"]
    assert len(frames) == 8
    ids = {i["id"] for f in frames for i in f["instances"] if "id" in i}
    assert ids and all(t["id"] in ids for t in summary["tracks"])
    first = summary["tracks"][0]
    assert {"label", "votes", "first_frame", "last_frame", "path", "frames"} <= set(first)
    assert [c["kind"] for c in summary["counts"]] == ["line", "zone"]
    assert summary["counts"][0]["line"] == [64.0, 0.0, 64.0, 96.0]  # fractions of the frame became pixels
    rows = [r.split(",") for r in mot.read_text().splitlines()]
    assert rows and {int(r[1]) for r in rows} <= ids and {int(r[0]) for r in rows} <= set(range(1, 9))
    assert VideoSource(str(annotated)).frames == 8
    assert loaded[-1].batch_size == (VIDEO_BATCH if loaded[-1].device.type == "cpu" else 4)  # frames batch


def test_eval_track_scores_mot_files(run_cli, tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text("1,1,10,10,20,20,1,1,1\n2,1,12,10,20,20,1,1,1\n1,2,50,50,10,10,1,1,1\n2,2,52,50,10,10,1,1,1\n")
    found = tmp_path / "found.txt"
    found.write_text("1,7,10,10,20,20,1,-1,-1,-1\n2,7,12,10,20,20,1,-1,-1,-1\n1,8,50,50,10,10,1,-1,-1,-1\n")
    code, out, err = run_cli("eval", "track", "--gt", str(gt), "--results", str(found), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["misses"] == 1 and report["id_switches"] == 0 and report["mota"] == pytest.approx(0.75)


def test_eval_track_of_a_model_scores_what_detect_track_writes(run_cli, detector, tmp_path, chelsea, loaded):
    clip, mot = write_clip(tmp_path / "scene.mp4", 10, chelsea), tmp_path / "tracks.txt"
    code, _, err = run_cli("detect", str(clip), "--model", str(detector), "--score-threshold", "0.0", "--track",
                           "--save-mot", str(mot), "--batch-size", "3", "--device", "cpu")  # fmt: skip
    assert code == 0, err
    assert loaded[-1].batch_size == 3
    rows = [r.split(",") for r in mot.read_text().splitlines()]
    gt = tmp_path / "gt.txt"  # the first track's boxes as the ground truth: its frames match, the others do not
    first = [r for r in rows if r[1] == rows[0][1]]
    gt.write_text("".join(f"{r[0]},1,{','.join(r[2:6])},1,1,1\n" for r in first))
    scored = {}
    # on a CPU both ways: on a GPU, fp16 batches of other sizes move scores near 0.0 by their last digits
    for way in (
        ["--results", str(mot)],
        ["--model", str(detector), "--video", str(clip), "--score-threshold", "0.0", "--device", "cpu"],
    ):
        code, out, err = run_cli("eval", "track", "--gt", str(gt), *way, "--json")
        assert code == 0, err
        scored[way[0]] = json.loads(out)
    assert scored["--model"] == scored["--results"]  # the same tracks, run the way the verb runs a video
    assert scored["--model"]["misses"] == 0 and scored["--model"]["idf1"] > 0


def test_a_video_cut_short_keeps_the_frames_read_and_exits_1(run_cli, tmp_path, chelsea):
    clip = write_clip(tmp_path / "long.mkv", 40, chelsea)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size * 2 // 3])
    copy = tmp_path / "kept.mp4"
    code, out, err = run_cli("classify", str(cut), "--json", "--save-video", str(copy))
    assert code == 1 and str(cut) in err and "error" in err
    frames = lines_of(out)[:-1]
    assert 5 < len(frames) < 40
    assert VideoSource(str(copy)).frames == len(frames)  # what was read is written


def test_video_options_on_images_and_mixed_inputs_are_refused(run_cli, cat_clip, tmp_path, chelsea):
    import cv2

    image = tmp_path / "cat.jpg"
    cv2.imwrite(str(image), chelsea[:, :, ::-1])
    code, _, err = run_cli("classify", str(image), "--vid-stride", "2")
    assert code == 2 and "--vid-stride: for video" in err
    code, _, err = run_cli("classify", str(image), str(cat_clip))
    assert code == 2 and "give images and videos in separate commands" in err
    code, _, err = run_cli("detect", str(cat_clip), "--line", "0,0,1,1")
    assert code == 2 and "add --track" in err
    # an image's outputs are not a video's: refused, not ignored (nothing written); --threshold reaches the frames
    for verb, option in (("caption", "--save-attention"), ("semantic", "--save-dir"), ("predict", "--save-dir")):
        model = ["efficientnet_lite0"] if verb == "predict" else ["--model", str(tmp_path / "any.safetensors")]
        code, _, err = run_cli(verb, *model, str(cat_clip), option, str(tmp_path / "drawn"))
        assert code == 2 and err.strip().startswith(f"error: {option}: for images, not for video"), err
        assert err.count("\n") == 1 and not (tmp_path / "drawn").exists()
    code, _, err = run_cli("classify", str(cat_clip), "--threshold", "0.3", "--end", "0.1")
    assert code == 2 and "the model is single-label" in err
    code, _, err = run_cli("classify", str(tmp_path / "missing.mp4"))  # an input that failed: exit 1
    assert code == 1 and err.strip() == f"error: {tmp_path / 'missing.mp4'}: no such file"


def test_embed_and_caption_verbs_take_video_too(run_cli, cat_clip):
    code, out, err = run_cli("embed", str(cat_clip), "--json", "--end", "0.25")
    assert code == 0, err
    frames = lines_of(out)[:-1]
    assert [f["frame"] for f in frames] == [0, 1, 2]
    vectors = np.array([f["embedding"] for f in frames])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert float(vectors[0] @ vectors[1]) > 0.9  # neighbouring frames of one pan look alike


def test_the_multi_head_verb_takes_video(run_cli, cat_clip):
    code, out, err = run_cli("predict", "efficientnet_lite0", str(cat_clip), "--json", "--end", "0.15", "--top-k", "1")
    assert code == 0, err
    frames = lines_of(out)[:-1]
    assert [f["frame"] for f in frames] == [0, 1] and "cat" in frames[0]["classify"]["predictions"][0]["label"]


@pytest.fixture
def signal_at(monkeypatch):
    """``signal_at(module, name, frames)``: the progress bar of ``module`` sends this process the signal ``name`` once
    ``frames`` frames were taken (in the middle of the run); SIGINT and SIGTERM at Python's defaults meanwhile, as
    in a command (a test runner's workers set their own; the run takes over only the defaults: were it not to,
    SIGTERM would end the test process, a loud failure)."""
    import contextlib
    import os
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler), signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def arm(module, name: str, frames: int) -> None:
        @contextlib.contextmanager
        def progress(total, label, minimum=16):
            done = [0]

            def advance(n: int) -> None:
                done[0] += n
                if done[0] >= frames > done[0] - n:
                    os.kill(os.getpid(), getattr(signal, name))

            yield advance

        monkeypatch.setattr(module, "progress", progress)

    yield arm
    signal.signal(signal.SIGINT, before[0])
    signal.signal(signal.SIGTERM, before[1])


@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_ctrl_c_or_sigterm_stops_the_run_with_every_output_finished(run_cli, detector, tmp_path, chelsea, signal_at,
                                                                    name, code):  # fmt: skip
    import cnnapps.cli.video

    clip, out = write_clip(tmp_path / "long.mp4", 60, chelsea), tmp_path / "out"
    signal_at(cnnapps.cli.video, name, 8)
    got, printed, err = run_cli("detect", clip, "--model", detector, "--score-threshold", "0.0", "--track",
                                "--save-video", out / "a.mp4", "--save-mot", out / "t.txt", "--json")  # fmt: skip
    assert got == code, err
    lines = lines_of(printed)
    frames, summary = [line["frame"] for line in lines[:-1]], lines[-1]["summary"]
    assert summary["interrupted"] is True and summary["signal"] == name
    assert frames == list(range(len(frames))) and summary["frames"] == len(frames) and 8 <= len(frames) < 60
    assert f"interrupted by {name} after {len(frames)} frames" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "t.txt"]  # in place, no temporary file left
    assert VideoSource(str(out / "a.mp4")).frames == len(frames)
    assert max(int(row.split(",")[0]) for row in (out / "t.txt").read_text().splitlines()) == len(frames)


def test_eval_track_of_a_model_interrupted_gives_no_score(run_cli, detector, tmp_path, chelsea, signal_at):
    import cnnapps.apps.track.cli

    clip, gt = write_clip(tmp_path / "long.mp4", 40, chelsea), tmp_path / "gt.txt"
    gt.write_text("1,1,10,10,20,20,1,1,1\n")
    signal_at(cnnapps.apps.track.cli, "SIGINT", 8)
    code, out, err = run_cli("eval", "track", "--gt", str(gt), "--model", str(detector), "--video", str(clip),
                             "--device", "cpu", "--json")  # fmt: skip
    assert code == 130 and out == "" and "no score for a video not read to its end" in err
    assert len(err.strip().splitlines()) == 1


def test_a_bad_first_source_does_not_stop_the_others(run_cli, detector, tmp_path, chelsea):
    clip, missing = write_clip(tmp_path / "good.mp4", 3, chelsea), tmp_path / "missing.mp4"
    code, out, err = run_cli("detect", str(missing), str(clip), "--model", str(detector), "--json")
    assert code == 1 and err.strip() == f"error: {missing}: no such file"
    lines = lines_of(out)
    assert [line["frame"] for line in lines[:-1]] == [0, 1, 2] and lines[-1]["summary"]["frames"] == 3
    code, out, err = run_cli("detect", str(missing), str(tmp_path / "gone.mkv"), "--model", str(detector))
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 2


def test_an_unknown_video_suffix_is_refused_before_the_model_loads(run_cli, detector, tmp_path, chelsea, loaded):
    clip = write_clip(tmp_path / "scene.mp4", 3, chelsea)
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_cli("detect", str(clip), "--model", str(detector), "--track", "--save-video",
                           str(out / "a.gif"), "--save-mot", str(out / "t.txt"))  # fmt: skip
    assert code == 2 and err.strip().startswith(f"error: {out / 'a.gif'}: unknown video suffix .gif")
    assert len(err.strip().splitlines()) == 1 and not loaded and list(out.iterdir()) == []


def test_a_quoted_glob_of_videos_is_expanded_and_each_json_line_names_its_engine(run_cli, cat_clip, tmp_path):
    """'clips/*.mp4' was read as one video of that name ("no such file", exit 1); and the frames' lines had no
    "engine", which every other answer of --json has (and the server's video lines too)."""
    import shutil

    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("b.mp4", "a.mp4"):
        shutil.copy(cat_clip, clips / name)
    code, out, err = run_cli("classify", str(clips / "*.mp4"), "--json", "--top-k", "1", "--end", "0.15")
    assert code == 0, err
    lines = lines_of(out)
    assert [line["source"] for line in lines if "summary" in line] == [str(clips / "a.mp4"), str(clips / "b.mp4")]
    frames = [line for line in lines if "frame" in line]
    assert len(frames) == 4 and {f["engine"] for f in frames} == {"jit"}
