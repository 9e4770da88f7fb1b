"""TrackBook summaries (path thinning, votes, finished tracks), line and zone counting, their text forms."""

from __future__ import annotations

import numpy as np
import pytest

from cnnapps.apps.track.book import LineCounter, TrackBook, ZoneCounter, parse_line, parse_zone
from cnnapps.errors import CnnappsError


def box_at(cx: float, cy: float, size: float = 10.0) -> list[float]:
    return [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2]


def test_path_keeps_moves_of_min_step_and_both_ends():
    book = TrackBook(min_step=4)
    xs = [100, 101, 102, 103, 104, 110, 111, 111.5]  # moves of 1 px, then a jump of 6, then small again
    for frame, x in enumerate(xs):
        book.add(frame, frame / 25, [5], [box_at(x, 50.04)], ["car"])
    (track,) = book.summary()
    assert track["path"] == [[0, 100.0, 50.0], [4, 104.0, 50.0], [5, 110.0, 50.0], [7, 111.5, 50.0]]
    assert (track["first_frame"], track["last_frame"], track["frames"]) == (0, 7, 8)
    assert (track["first_time"], track["last_time"]) == (0.0, 0.28)


def test_path_stays_bounded():
    book = TrackBook(min_step=1, max_points=50)
    for frame in range(1000):
        book.add(frame, frame, [1], [box_at(frame * 5 % 600, 10)], ["person"])
    path = book.summary()[0]["path"]
    assert len(path) <= 51
    assert path[0] == [0, 0.0, 10.0] and path[-1] == [999, 195.0, 10.0]


def test_votes_and_minus_one_ignored():
    book = TrackBook()
    labels = ["car", "truck", "car", "car", "truck"]
    for frame, label in enumerate(labels):
        book.add(frame, 0.0, [3, -1], [box_at(10, 10), box_at(50, 50)], [label, "person"])
    (track,) = book.summary()
    assert track["id"] == 3 and track["label"] == "car"
    assert track["votes"] == {"car": 3, "truck": 2}
    with pytest.raises(CnnappsError, match="same length"):
        book.add(9, 0.0, [1, 2], [box_at(0, 0)], ["car"])


def test_pop_finished():
    book = TrackBook()
    book.add(0, 0.0, [1, 2], [box_at(10, 10), box_at(90, 90)], ["a", "b"])
    book.add(100, 4.0, [2], [box_at(95, 90)], ["b"])
    assert book.pop_finished(200, idle=200) == []
    done = book.pop_finished(200, idle=100)
    assert [d["id"] for d in done] == [1] and done[0]["last_frame"] == 0
    assert [s["id"] for s in book.summary()] == [2] and len(book) == 1
    assert [d["id"] for d in book.pop_finished(10_000)] == [2]
    assert book.summary() == []


def test_retired_tracks_stay_listed_up_to_a_cap_and_counted_in_the_totals():
    book = TrackBook(keep_finished=2)
    for ident in range(1, 5):  # frames 100 apart in the source, one step apart as tracked (a stride of 100)
        book.add(ident * 100, ident * 4.0, [ident], [box_at(10, 10)], ["car" if ident % 2 else "bus"], step=ident)
    book.add(1000, 40.0, [4], [box_at(12, 10)], ["bus"], step=10)
    assert book.retire(10, idle=6) == [1, 2, 3] and book.retire(10, idle=6) == []  # idle in steps, not frames
    assert len(book) == 1 and [t["id"] for t in book.summary()] == [2, 3, 4]  # the latest two retired, and 4
    assert book.summary()[0]["last_frame"] == 200
    assert book.totals() == {"tracks": 4, "by_label": {"bus": 2, "car": 2}, "summaries_dropped": 1}


def test_line_counted_both_ways_once_each():
    line = LineCounter("door", 0, 100, 200, 100)  # drawn left to right: "in" is moving down
    track = [(1, 80), (1, 95), (1, 105), (1, 120), (1, 90), (1, 110)]  # down, up, down again
    other = [(50, 120), (50, 110), (50, 90)]  # up once
    beside = [(300, 80), (300, 120)]  # crosses the line's extension, not the segment
    for frame in range(6):
        ids, centres, labels = [1], [track[frame]], ["person"]
        if frame < 3:
            ids, centres, labels = [*ids, 2], [*centres, other[frame]], [*labels, "dog"]
        if frame < 2:
            ids, centres, labels = [*ids, 3], [*centres, beside[frame]], [*labels, "cat"]
        line.update(frame, ids, np.array(centres, dtype=float), labels)
    d = line.to_dict()
    assert (d["in"], d["out"]) == (1, 2)
    assert d["in_by_label"] == {"person": 1} and d["out_by_label"] == {"dog": 1, "person": 1}
    assert d["name"] == "door" and d["kind"] == "line"


def test_line_direction_for_a_vertical_line():
    line = LineCounter("gate", 100, 0, 100, 200)  # drawn top to bottom: "in" is moving right to left
    line.update(0, [1, 2], [(120, 50), (80, 60)], ["a", "a"])
    line.update(1, [1, 2], [(100, 50), (90, 60)], ["a", "a"])  # id 1 sits on the line
    line.update(2, [1, 2], [(90, 50), (110, 60)], ["a", "a"])
    assert (line.counts["in"], line.counts["out"]) == (1, 1)


def test_zone_entered_by_two_of_three():
    zone = ZoneCounter("bay", [(0, 0), (100, 0), (100, 100), (0, 100)], hold=2)
    walks = {
        1: [(150, 50), (90, 50), (50, 50), (50, 50)],  # walks in and stays
        2: [(50, -20), (50, 10), (50, 150), (60, 150)],  # passes through
        3: [(200, 200), (180, 190), (160, 180), (150, 150)],  # never enters
    }
    for frame in range(4):
        ids = list(walks)
        zone.update(frame, ids, np.array([walks[i][frame] for i in ids], dtype=float), ["car", "bike", "car"])
        if frame == 1:
            assert zone.inside == 2
    d = zone.to_dict()
    assert d["entered"] == 2 and d["entered_by_label"] == {"bike": 1, "car": 1}
    assert d["inside"] == 1
    for frame in range(4, 7):  # id 1 unseen: it still counts as inside for `hold` frames
        zone.update(frame, [], np.zeros((0, 2)), [])
        assert zone.inside == (1 if frame - 3 <= 2 else 0)
    assert zone.entered == 2


def test_parse_and_scale():
    line = parse_line("0.5,0,0.5,1")
    assert line.fractional and line.name == "line"
    px = line.scaled(640, 480)
    assert (px.x0, px.y0, px.x1, px.y1) == (320.0, 0.0, 320.0, 480.0) and not px.fractional
    assert px.scaled(10, 10) is px
    named = parse_line("door = 10, 20, 300, 20")
    assert named.name == "door" and (named.x1, named.y1) == (300.0, 20.0)
    zone = parse_zone("0,0,1,0,1,0.5", name="top")
    assert zone.name == "top" and zone.scaled(200, 100).polygon.tolist() == [[0, 0], [200, 0], [200, 50]]


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (parse_line, "1,2,3", "expected 4 numbers x0,y0,x1,y1, got 3"),
        (parse_line, "1,2,x,4", "'x' is not a number"),
        (parse_line, "1,2,1,2", "the two ends are the same point"),
        (parse_line, "", "no coordinates"),
        (parse_line, "1,-2,3,4", "must be finite and >= 0"),
        (parse_zone, "0,0,1,1", "at least 3 points, got 2"),
        (parse_zone, "0,0,1,1,2", "odd count of 5"),
        (parse_zone, "0,0,1,nan,2,2", "must be finite"),
    ],
)
def test_parse_errors(parse, text: str, message: str):
    with pytest.raises(CnnappsError, match=message) as info:
        parse(text)
    assert "\n" not in str(info.value) and repr(text) in str(info.value)
