"""Frames of an annotated video keep their source's size: semantic and panoptic results blend over the frame itself
(the legend is for still images); the copy's last frame ends with its source."""

from __future__ import annotations

import numpy as np
import pytest

from cnnapps.apps.semantic.result import PanopticResult, PanopticSegment, SemanticResult

NAMES = ["background", "sky", "grass", "road", "car", "tree"]


def _semantic(labels: np.ndarray) -> SemanticResult:
    return SemanticResult("f", labels=labels, class_names=NAMES)


def test_semantic_overlay_keeps_the_frame_size_whatever_the_classes():
    frame = np.full((112, 160, 3), 100, np.uint8)
    few = np.zeros((112, 160), np.int64)
    few[:40] = 1
    many = np.arange(112 * 160).reshape(112, 160) % len(NAMES)
    for labels in (few, many):
        out = _semantic(labels).overlay(frame)
        assert out.shape == frame.shape and out.dtype == np.uint8
    out = _semantic(few).overlay(frame)
    assert np.array_equal(out[60:], frame[60:])  # background left clear
    assert not np.array_equal(out[:40], frame[:40])  # sky painted
    assert _semantic(few).draw(frame).shape[0] > frame.shape[0]  # a still image keeps its legend


def test_panoptic_overlay_keeps_the_frame_size():
    frame = np.full((112, 160, 3), 100, np.uint8)
    ids = np.zeros((112, 160), np.int32)
    ids[10:50, 20:80], ids[60:, :] = 1, 2
    segments = [PanopticSegment(1, "car", 4, True, int((ids == 1).sum()), 0.9, (20, 10, 80, 50)),
                PanopticSegment(2, "road", 3, False, int((ids == 2).sum()))]  # fmt: skip
    result = PanopticResult("f", ids=ids, segments=segments)
    out = result.overlay(frame)
    assert out.shape == frame.shape
    assert np.array_equal(out[:5], frame[:5]) and not np.array_equal(out[70:], frame[70:])
    assert result.draw(frame).shape[0] > frame.shape[0]


def _length(path) -> tuple[int, float, tuple[int, int]]:
    """Frames, seconds to the end of the last frame, and (width, height) of a written video."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.pts is not None]
        end = max(p.pts + p.duration for p in packets) * stream.time_base
        return len(packets), float(end), (stream.width, stream.height)


def test_the_last_frame_ends_at_the_writers_end(tmp_path):
    from cnnapps.datasets.video import VideoWriter

    for name, end in (("a.mp4", None), ("b.mp4", 1.2), ("c.mp4", 5.0)):
        writer = VideoWriter(tmp_path / name, 25)
        writer.end = end
        for i in range(0, 30, 4):  # every fourth frame of 30 at 25 fps: 1.2 s
            writer.write(np.zeros((16, 16, 3), np.uint8), time=i / 25)
        writer.close()
    assert _length(tmp_path / "a.mp4")[:2] == (8, pytest.approx(1.28))  # no end known: the gap before it
    assert _length(tmp_path / "b.mp4")[:2] == (8, pytest.approx(1.2))
    assert _length(tmp_path / "c.mp4")[:2] == (8, pytest.approx(1.28))  # never longer than the gap before it


def test_an_annotated_copy_has_its_sources_size_and_length(tmp_path):
    from types import SimpleNamespace

    import cnnapps.apps.common.video as video

    source = SimpleNamespace(name="clip.mp4", fps=25.0, duration=1.2, end=None, live=False)
    sink = video._Sink(video.VideoReport("clip.mp4"), None, tmp_path / "a.mp4", None, None, source, None,
                       threaded=False)  # fmt: skip
    rng = np.random.default_rng(0)
    for i in range(0, 30, 4):  # --vid-stride 4: the classes present change from frame to frame
        labels = rng.integers(0, 1 + i // 4, (112, 160)) % len(NAMES)
        frame = SimpleNamespace(index=i, time=i / 25, rgb=np.full((112, 160, 3), 100, np.uint8))
        sink.put(frame, _semantic(labels), False, [])
    sink.close()
    assert _length(tmp_path / "a.mp4") == (8, pytest.approx(1.2), (160, 112))
