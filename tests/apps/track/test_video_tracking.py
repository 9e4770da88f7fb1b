"""Tracking over a run: counters and the book measure idleness in frames tracked (a stride does not make them
forget an id the tracker brings back), and memory stays bounded over a long stream with exact totals."""

from __future__ import annotations

import numpy as np

from cnnapps.apps.common.video import Tracking, VideoReport
from cnnapps.apps.track.book import parse_line, parse_zone
from cnnapps.datasets.video import Frame
from cnnapps.results import DetectionResult, Instance

RGB = np.zeros((240, 320, 3), np.uint8)


def test_an_object_hidden_past_the_counters_source_frames_but_reidentified_counts_once():
    stride = 5  # --vid-stride 5: frame numbers grow by 5 per frame tracked
    zone, line = parse_zone("zone=0,0,160,0,160,240,0,240"), parse_line("line=100,0,100,240")
    tracking = Tracking(0.5, counters=[zone, line])
    look = np.zeros(64, np.float32)
    look[3] = 1.0
    # right to left across the line into the zone, hidden 70 frames tracked (350 frames of the source, past the
    # counters' 300), then back at the right of the line and across it again: re-identified by its look
    xs = [200, 180, 160, 140, 120, 100, 80, 60] + [None] * 70 + [200, 170, 140, 110, 80, 60]
    ids = set()
    for k, x in enumerate(xs):
        found = [] if x is None else [Instance("person", 1, 0.95, (x, 100.0, x + 30, 130.0), embedding=look.copy())]
        tracking.update(
            Frame(k * stride, k * stride / 25, RGB), DetectionResult(source="s", instances=found, width=320, height=240)
        )
        ids |= {i.track_id for i in found if i.track_id is not None}
    assert ids == {1}  # one object, one id
    assert zone.to_dict()["entered"] == 1
    assert line.to_dict()["in"] == 1  # crossed right to left twice: counted once


class _Stream:
    """Objects that come and go: one starts every 4 frames at the left and moves 8 px a frame right for 20 frames,
    each in its row; label "a" or "b" in turn."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def frame(self, f: int) -> list[Instance]:
        found = []
        for start in range(max(0, f - 19) // 4 * 4, f + 1, 4):
            if f - start < 20:
                x, y, label = 8 * (f - start), 10 + (start // 4 % 10) * 20, "ab"[start // 4 % 2]
                if f == start:
                    self.started.append(label)
                found.append(Instance(label, "ab".index(label) + 1, 0.9, (x, y, x + 16, y + 16)))
        return found


def test_a_long_stream_holds_only_the_tracks_still_around_and_counts_every_track():
    from cnnapps.apps.common.video import RETIRE_EVERY

    tracking, stream, held = Tracking(0.5, reid=False, keep_finished=20), _Stream(), []
    ids: dict[int, str] = {}
    for f in range(800):
        found = stream.frame(f)
        tracking.update(Frame(f, f / 25, RGB), DetectionResult(source="s", instances=found, width=320, height=240))
        ids |= {i.track_id: i.label for i in found if i.track_id is not None}
        held.append((len(tracking.book), len(tracking.seen)))
    assert len(ids) == len(stream.started) == 200  # one id each
    # live objects (5), those lost since (horizon 30 frames tracked), and up to RETIRE_EVERY frames of them more
    bound = 5 + (tracking.horizon + RETIRE_EVERY) // 4 + 2
    assert max(book for book, _ in held) <= bound and max(seen for _, seen in held) <= bound
    assert min(book for book, _ in held[400:]) >= 5  # those still around are there
    report = VideoReport("s")
    tracking.finish(report)
    totals = report.track_totals
    assert totals["tracks"] == len(ids) and totals["by_label"] == {"a": 100, "b": 100}
    live = len(tracking.book)
    assert len(report.tracks) == 20 + live and totals["summaries_dropped"] == len(ids) - 20 - live
    listed = [t["id"] for t in report.tracks]
    assert listed == sorted(ids)[-len(listed) :]  # the latest finished and those still around, by id
    assert report.to_dict()["track_totals"] == totals


def test_a_file_with_fewer_tracks_than_kept_lists_every_one():
    tracking, stream = Tracking(0.5, reid=False), _Stream()
    for f in range(300):
        tracking.update(
            Frame(f, f / 25, RGB), DetectionResult(source="s", instances=stream.frame(f), width=320, height=240)
        )
    report = VideoReport("s")
    tracking.finish(report)
    assert len(report.tracks) == report.track_totals["tracks"] == 75 and report.track_totals["summaries_dropped"] == 0
    assert len(tracking.book) < 20  # retired all the same
