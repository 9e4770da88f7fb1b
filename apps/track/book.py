"""What a run over a video reports about its tracks, in memory bounded over long streams.

:class:`TrackBook` keeps, per track id, its class votes, when it was first and last seen and a thinned path of
its box centre; :meth:`TrackBook.retire` sets aside the summaries of tracks not seen for a while (the latest
:data:`KEEP_FINISHED` of them, with exact totals of every track), so a stream of any length holds only the tracks
still around. :class:`LineCounter` counts ids whose centre crosses a segment, each way; :class:`ZoneCounter` counts
ids that entered a polygon and how many are in it now. Their ``frame`` arguments are the frames tracked (the
tracker's count, not the source's frame numbers): with a stride or dropped live frames, an id is forgotten only
once the tracker can no longer bring it back.
:func:`parse_line` and :func:`parse_zone` read their geometry from text, in pixels or as fractions of the frame.
"""

from __future__ import annotations

import math
import re
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cnnapps.errors import CnnappsError


@dataclass
class _Entry:
    first_frame: int
    first_time: float
    last_frame: int
    last_time: float
    frames: int = 0
    votes: Counter = field(default_factory=Counter)
    path: list[list[float]] = field(default_factory=list)  # kept points
    last: list[float] | None = None  # the latest point, kept or not
    last_step: int = 0  # the frame it was last seen, in the steps ``add`` was given


#: finished tracks whose summaries a :class:`TrackBook` keeps (the most recent ones); its totals count every track
KEEP_FINISHED = 1000


class TrackBook:
    """Per-track summaries of a run.

    Args:
        min_step: a path point is kept only when the centre moved at least this many pixels since the last kept
            point (the first and the latest point are always in the path).
        max_points: when a path grows past this many points every other point is dropped (the first stays), so
            a track that jitters for hours stays small.
        keep_finished: the summaries of this many tracks set aside by :meth:`retire` are kept, the most recent
            ones; older ones are let go (counted in :meth:`totals`, which stay exact).
    """

    def __init__(self, min_step: float = 4.0, max_points: int = 1000, keep_finished: int = KEEP_FINISHED) -> None:
        self.min_step = float(min_step)
        self.max_points = max(int(max_points), 2)
        self.keep_finished = max(int(keep_finished), 0)
        self._tracks: dict[int, _Entry] = {}
        self._finished: deque[dict] = deque()
        self._finished_labels: Counter = Counter()  # label of every track retired, kept or not
        self.dropped = 0  # summaries of retired tracks let go past keep_finished

    def __len__(self) -> int:
        """The tracks held (still around: not retired)."""
        return len(self._tracks)

    def add(
        self,
        frame: int,
        time: float,
        ids: Iterable[int],
        boxes: np.ndarray,
        labels: Sequence[str],
        step: int | None = None,
    ) -> None:
        """Record one frame: ``ids`` from the tracker (-1 is ignored), ``boxes`` (N, 4) x0 y0 x1 y1, one label
        name per box. ``step`` counts the frames tracked (``frame`` when not given): :meth:`retire` and
        :meth:`pop_finished` measure idleness in it."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        ids = [int(i) for i in ids]
        if not len(ids) == len(boxes) == len(labels):
            raise CnnappsError(
                f"track book: ids, boxes and labels must have the same length, got {len(ids)}, {len(boxes)}, "
                f"{len(labels)}"
            )
        for ident, box, label in zip(ids, boxes, labels, strict=True):
            if ident < 0:
                continue
            entry = self._tracks.get(ident)
            if entry is None:
                entry = self._tracks[ident] = _Entry(frame, float(time), frame, float(time))
            entry.last_frame, entry.last_time = frame, float(time)
            entry.last_step = frame if step is None else int(step)
            entry.frames += 1
            entry.votes[str(label)] += 1
            point = [frame, round(float(box[0] + box[2]) / 2, 1), round(float(box[1] + box[3]) / 2, 1)]
            entry.last = point
            if not entry.path or math.dist(point[1:], entry.path[-1][1:]) >= self.min_step:
                entry.path.append(point)
                if len(entry.path) > self.max_points:
                    entry.path = entry.path[::2]

    @staticmethod
    def _summary(ident: int, entry: _Entry) -> dict:
        path = list(entry.path)
        if entry.last is not None and entry.last is not path[-1]:
            path.append(entry.last)
        return {
            "id": ident,
            "label": entry.votes.most_common(1)[0][0],
            "votes": dict(entry.votes.most_common()),
            "first_frame": entry.first_frame,
            "last_frame": entry.last_frame,
            "first_time": round(entry.first_time, 3),
            "last_time": round(entry.last_time, 3),
            "frames": entry.frames,
            "path": path,
        }

    def summary(self) -> list[dict]:
        """A summary per track held and per retired track kept, by id: id, label (the majority of the class votes;
        ties go to the label seen first), votes {label: n}, first_frame, last_frame, first_time, last_time
        (seconds), frames (how many frames it was seen in) and path ([frame, cx, cy] rounded to 0.1 pixel)."""
        held = [self._summary(i, self._tracks[i]) for i in self._tracks]
        return sorted([*self._finished, *held], key=lambda track: track["id"])

    def totals(self) -> dict:
        """Every track recorded, retired ones included: ``tracks``, ``by_label`` (by each track's label) and
        ``summaries_dropped`` (retired tracks whose summaries were let go past ``keep_finished``)."""
        labels = self._finished_labels + Counter(e.votes.most_common(1)[0][0] for e in self._tracks.values())
        return {"tracks": sum(labels.values()), "by_label": dict(sorted(labels.items())),
                "summaries_dropped": self.dropped}  # fmt: skip

    def pop_finished(self, frame: int, idle: int = 300) -> list[dict]:
        """Summaries of the tracks not seen for more than ``idle`` frames before ``frame`` (in the steps ``add``
        was given), which the book then forgets (tracker ids are never reused, so such a track does not come
        back)."""
        done = sorted(i for i, e in self._tracks.items() if frame - e.last_step > idle)
        return [self._summary(i, self._tracks.pop(i)) for i in done]

    def retire(self, step: int, idle: int) -> list[int]:
        """Set aside the tracks not seen for more than ``idle`` steps before ``step`` (:meth:`pop_finished`): their
        summaries stay in :meth:`summary` (the latest ``keep_finished``) and in :meth:`totals`; returns their
        ids."""
        done = self.pop_finished(step, idle)
        for track in done:
            self._finished_labels[track["label"]] += 1
            self._finished.append(track)
        while len(self._finished) > self.keep_finished:
            self._finished.popleft()
            self.dropped += 1
        return [track["id"] for track in done]


def _side(x0: float, y0: float, x1: float, y1: float, px: float, py: float) -> float:
    """> 0 when (px, py) is right of the directed line (x0, y0) -> (x1, y1) as seen in an image (y down)."""
    return (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)


def _check(ids: Iterable[int], centres: np.ndarray, labels: Sequence[str], what: str) -> tuple[list[int], np.ndarray]:
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    ids = [int(i) for i in ids]
    if not len(ids) == len(centres) == len(labels):
        raise CnnappsError(
            f"{what}: ids, centres and labels must have the same length, got {len(ids)}, {len(centres)}, {len(labels)}"
        )
    return ids, centres


class LineCounter:
    """Counts the ids whose box centre crosses the segment (x0, y0) -> (x1, y1), each way and per label.

    "in" is a crossing from the left of the directed line to its right as it looks on the image (y grows
    downwards): for a line drawn left to right, "in" is moving down across it; for a line drawn top to bottom,
    "in" is moving right to left. "out" is the other way. An id counts at most once per direction (crossing
    back counts "out"; crossing in again after that counts nothing more). Ids not seen for ``forget`` frames
    are forgotten, so memory follows the ids around now (frames as :meth:`update` is given them: in a run, the
    frames tracked, and ``forget`` at least as long as the tracker can bring a lost id back).
    """

    kind = "line"

    def __init__(self, name: str, x0: float, y0: float, x1: float, y1: float, forget: int = 300) -> None:
        self.name = name
        self.x0, self.y0, self.x1, self.y1 = (float(v) for v in (x0, y0, x1, y1))
        self.forget = forget
        self.counts = {"in": 0, "out": 0}
        self.by_label: dict[str, Counter] = {"in": Counter(), "out": Counter()}
        self._state: dict[int, tuple[float, float, float, int]] = {}  # id -> (x, y, side, last frame)
        self._counted: dict[int, set[str]] = {}

    @property
    def fractional(self) -> bool:
        """Whether the coordinates are fractions of the frame (all of them at most 1)."""
        return all(abs(v) <= 1.0 for v in (self.x0, self.y0, self.x1, self.y1))

    def scaled(self, width: int, height: int) -> LineCounter:
        """This line in pixels of a ``width`` x ``height`` frame (itself when already in pixels)."""
        if not self.fractional:
            return self
        return LineCounter(
            self.name, self.x0 * width, self.y0 * height, self.x1 * width, self.y1 * height, forget=self.forget
        )

    def _crosses(self, ax: float, ay: float, bx: float, by: float) -> bool:
        """Whether the move (ax, ay) -> (bx, by), whose ends lie on either side of the line, passes through the
        segment rather than beside it."""
        s0 = _side(ax, ay, bx, by, self.x0, self.y0)
        s1 = _side(ax, ay, bx, by, self.x1, self.y1)
        return s0 == 0 or s1 == 0 or (s0 > 0) != (s1 > 0)

    def update(self, frame: int, ids: Iterable[int], centres: np.ndarray, labels: Sequence[str]) -> None:
        """One frame's tracked centres (N, 2), with their ids (-1 ignored) and label names."""
        ids, centres = _check(ids, centres, labels, f"line {self.name}")
        for ident, (x, y), label in zip(ids, centres, labels, strict=True):
            if ident < 0:
                continue
            side = _side(self.x0, self.y0, self.x1, self.y1, x, y)
            before = self._state.get(ident)
            if side == 0:  # on the line: wait for it to leave one side
                if before is not None:
                    self._state[ident] = (*before[:3], frame)
                continue
            if before is not None and (before[2] > 0) != (side > 0) and self._crosses(before[0], before[1], x, y):
                way = "in" if side > 0 else "out"
                done = self._counted.setdefault(ident, set())
                if way not in done:
                    done.add(way)
                    self.counts[way] += 1
                    self.by_label[way][str(label)] += 1
            self._state[ident] = (float(x), float(y), side, frame)
        for ident in [i for i, s in self._state.items() if frame - s[3] > self.forget]:
            del self._state[ident]
            self._counted.pop(ident, None)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "line": [self.x0, self.y0, self.x1, self.y1],
            "in": self.counts["in"],
            "out": self.counts["out"],
            "in_by_label": dict(sorted(self.by_label["in"].items())),
            "out_by_label": dict(sorted(self.by_label["out"].items())),
        }


def _inside(polygon: np.ndarray, x: float, y: float) -> bool:
    """Even-odd rule: whether (x, y) is inside the polygon (N, 2)."""
    inside = False
    xs, ys = polygon[:, 0], polygon[:, 1]
    j = len(polygon) - 1
    for i in range(len(polygon)):
        if (ys[i] > y) != (ys[j] > y):
            cross_x = xs[i] + (y - ys[i]) * (xs[j] - xs[i]) / (ys[j] - ys[i])
            if x < cross_x:
                inside = not inside
        j = i
    return inside


class ZoneCounter:
    """Counts the ids whose box centre entered a polygon (each id once; a track that starts inside counts as
    having entered), per label, and how many are inside now: ids whose latest centre is inside and that were
    seen within the last ``hold`` frames (a short occlusion does not empty the zone). Ids not seen for
    ``forget`` frames are forgotten (frames as :class:`LineCounter` counts them).
    """

    kind = "zone"

    def __init__(self, name: str, polygon: Sequence[tuple[float, float]], hold: int = 30, forget: int = 300) -> None:
        self.name = name
        self.polygon = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        if len(self.polygon) < 3:
            raise CnnappsError(f"zone {name}: a polygon needs at least 3 points, got {len(self.polygon)}")
        self.hold = hold
        self.forget = forget
        self.entered = 0
        self.by_label: Counter = Counter()
        self._state: dict[int, tuple[bool, int]] = {}  # id -> (inside, last frame)
        self._counted: set[int] = set()
        self._frame = 0

    @property
    def fractional(self) -> bool:
        """Whether the coordinates are fractions of the frame (all of them at most 1)."""
        return bool(np.all(np.abs(self.polygon) <= 1.0))

    def scaled(self, width: int, height: int) -> ZoneCounter:
        """This zone in pixels of a ``width`` x ``height`` frame (itself when already in pixels)."""
        if not self.fractional:
            return self
        points = [(float(x) * width, float(y) * height) for x, y in self.polygon]
        return ZoneCounter(self.name, points, hold=self.hold, forget=self.forget)

    def contains(self, x: float, y: float) -> bool:
        return _inside(self.polygon, x, y)

    def update(self, frame: int, ids: Iterable[int], centres: np.ndarray, labels: Sequence[str]) -> None:
        """One frame's tracked centres (N, 2), with their ids (-1 ignored) and label names."""
        ids, centres = _check(ids, centres, labels, f"zone {self.name}")
        self._frame = frame
        for ident, (x, y), label in zip(ids, centres, labels, strict=True):
            if ident < 0:
                continue
            inside = self.contains(float(x), float(y))
            if inside and ident not in self._counted:
                self._counted.add(ident)
                self.entered += 1
                self.by_label[str(label)] += 1
            self._state[ident] = (inside, frame)
        for ident in [i for i, s in self._state.items() if frame - s[1] > self.forget]:
            del self._state[ident]
            self._counted.discard(ident)

    @property
    def inside(self) -> int:
        """How many ids are inside now."""
        return sum(1 for inside, last in self._state.values() if inside and self._frame - last <= self.hold)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "polygon": self.polygon.tolist(),
            "entered": self.entered,
            "entered_by_label": dict(sorted(self.by_label.items())),
            "inside": self.inside,
        }


_NAME = re.compile(r"^\s*([A-Za-z_][\w\- ]*)\s*=(.*)$")


def _numbers(text: str, what: str) -> tuple[str | None, list[float]]:
    """(name, numbers) from ``[name=]v,v,...``."""
    name = None
    match = _NAME.match(text)
    body = text
    if match:
        name, body = match.group(1).strip(), match.group(2)
    parts = [p.strip() for p in body.split(",")]
    if not body.strip():
        raise CnnappsError(f"{what} {text!r}: no coordinates")
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise CnnappsError(f"{what} {text!r}: {part!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise CnnappsError(f"{what} {text!r}: coordinates must be finite and >= 0, got {part}")
        values.append(value)
    return name, values


def parse_line(text: str, name: str = "line") -> LineCounter:
    """A :class:`LineCounter` from ``"x0,y0,x1,y1"`` or ``"name=x0,y0,x1,y1"``: pixels, or fractions of the frame
    when every value is at most 1 (then call :meth:`LineCounter.scaled` with the frame's size)."""
    given, values = _numbers(text, "line")
    if len(values) != 4:
        raise CnnappsError(f"line {text!r}: expected 4 numbers x0,y0,x1,y1, got {len(values)}")
    if values[:2] == values[2:]:
        raise CnnappsError(f"line {text!r}: the two ends are the same point")
    return LineCounter(given or name, *values)


def parse_zone(text: str, name: str = "zone") -> ZoneCounter:
    """A :class:`ZoneCounter` from ``"x0,y0,x1,y1,x2,y2,..."`` (at least 3 points), optionally ``"name=..."``:
    pixels, or fractions of the frame when every value is at most 1 (then call :meth:`ZoneCounter.scaled`)."""
    given, values = _numbers(text, "zone")
    if len(values) % 2:
        raise CnnappsError(f"zone {text!r}: expected x,y pairs, got an odd count of {len(values)} numbers")
    if len(values) < 6:
        raise CnnappsError(f"zone {text!r}: a polygon needs at least 3 points, got {len(values) // 2}")
    points = list(zip(values[::2], values[1::2], strict=True))
    return ZoneCounter(given or name, points)
