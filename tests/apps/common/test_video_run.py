"""run_video: lanes give the answers of one lane in frame order and give the CPU's threads back; a failing
source ends the run with what was read; live sources go frame by frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import cnnapps
from cnnapps.apps.common.video import run_video
from cnnapps.apps.detect.model import create_detector, save_detector
from cnnapps.datasets.video import Frame, VideoError, VideoSource, VideoWriter


@pytest.fixture(scope="module")
def clip(tmp_path_factory, chelsea) -> Path:
    path = tmp_path_factory.mktemp("clip") / "pan.mp4"
    with VideoWriter(path, 10) as writer:
        for i in range(20):
            writer.write(np.ascontiguousarray(chelsea[:96, 6 * i : 6 * i + 128]))
    return path


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("det") / "det.safetensors"
    torch.manual_seed(0)
    model = create_detector("detect", "resnet18", num_classes=3, class_names=["__background__", "a", "b"],
                            backbone_weights=None, fpn_channels=16, min_size=96, max_size=128)  # fmt: skip
    save_detector(path, model)
    return path


def test_lanes_answer_as_one_lane_in_frame_order(clip, detector):
    predictor = cnnapps.load(detector, score_threshold=0.0)
    threads = torch.get_num_threads()
    answers = {}
    for lanes in (1, 2):
        lines: list[dict] = []
        report = run_video(predictor, VideoSource(str(clip)), on_line=lines.append, batch_size=3, lanes=lanes)
        assert report.frames == 20 and report.error is None
        answers[lanes] = lines
        assert torch.get_num_threads() == threads  # the lanes' share given back
    assert [line["frame"] for line in answers[2]] == list(range(20))
    for one, two in zip(answers[1], answers[2], strict=True):
        assert len(one["instances"]) == len(two["instances"])
        assert np.allclose([i["box"] for i in one["instances"]], [i["box"] for i in two["instances"]], atol=1e-2)


class _Breaking:
    """A source that gives ``n`` frames, then fails as a truncated file does."""

    name, live, fps, dropped = "broken.mkv", False, 10.0, 0

    def __init__(self, n: int, rgb: np.ndarray) -> None:
        self.n, self.rgb, self.closed = n, rgb, False

    def __iter__(self):
        for i in range(self.n):
            yield Frame(i, i / 10, self.rgb)
        raise VideoError(f"{self.name}: the video stops at 0.5 s of 2 s after {self.n} frames")

    def close(self) -> None:
        self.closed = True


def test_a_source_that_breaks_ends_the_run_with_the_frames_read(chelsea):
    source = _Breaking(5, np.ascontiguousarray(chelsea[:64, :64]))
    lines: list[dict] = []
    report = run_video(cnnapps.load(), source, on_line=lines.append, batch_size=2)
    assert report.frames == 5 and [line["frame"] for line in lines] == [0, 1, 2, 3, 4]
    assert "stops at 0.5 s" in report.error and source.closed


def test_live_sources_go_frame_by_frame(chelsea):
    from cnnapps.results import ClassificationResult, Prediction

    class Counting:
        device = "cpu"

        def __init__(self) -> None:
            self.calls: list[int] = []

        def predict(self, images):
            self.calls.append(len(images))
            return [ClassificationResult("", predictions=[Prediction("cat", 0, 1.0)]) for _ in images]

    source = _Breaking(6, np.ascontiguousarray(chelsea[:32, :32]))
    source.live = True
    predictor = Counting()
    report = run_video(predictor, source, batch_size=4)
    assert predictor.calls == [1] * 6 and report.frames == 6
    source = _Breaking(6, np.ascontiguousarray(chelsea[:32, :32]))  # a file: batches
    predictor.calls.clear()
    run_video(predictor, source, batch_size=4)
    assert predictor.calls == [4, 2]
