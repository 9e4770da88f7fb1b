"""MOTChallenge text files (ground truth and results) and the CLEAR-MOT and identity metrics over them.

A MOTChallenge line is ``frame,id,x,y,w,h,conf,class,visibility`` (frames 1-based, boxes top-left and size
in pixels; columns after h are optional; commas or whitespace between values). :func:`read_mot` reads one into
``{frame: [(id, (x0, y0, x1, y1)), ...]}``, :func:`mot_lines` writes tracker output in the results format and
:func:`evaluate` scores results against ground truth with motmetrics (MOTA, MOTP, IDF1, id switches, ...).
Ground-truth lines of conf 0 are not scored, and a tracker box on one is a false positive, as MOTChallenge's
evaluation (TrackEval) counts it; with MOTChallenge's distractor classes asked for (:data:`MOT_DISTRACTORS`), a
tracker box on a distractor is dropped instead, as TrackEval does. The class column is not read otherwise: other
ground truth numbers its own classes there (``synthetic_video`` its shapes).

HOTA is not computed: no maintained package computes it without pulling the GUI build of OpenCV (trackeval 1.3.0
and trackers 2.6 both require opencv-python, which clashes with the opencv-python-headless this project ships).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import numpy as np

from cnnapps.apps.track.tracker import box_iou
from cnnapps.errors import CnnappsError

Box = tuple[float, float, float, float]
MotFrames = dict[int, list[tuple[int, Box]]]

_SPLIT = re.compile(r"[,\s]+")


#: MOTChallenge's distractor classes (person on vehicle, static person, distractor, reflection): a tracker box on
#: one is dropped, not counted as a false positive (TrackEval's MotChallenge2DBox, py-motmetrics' preprocessResult)
MOT_DISTRACTORS = (2, 7, 8, 12)


def read_mot(path: str | Path, *, gt: bool | None = None, distractors: Collection[int] = ()) -> MotFrames:
    """``{frame: [(id, (x0, y0, x1, y1)), ...]}`` from a MOTChallenge file, frames 1-based as written.

    In a ground-truth file (``gt=True``; by default a file named ``gt.txt``) lines whose conf column is 0 are
    left out, as MOTChallenge's evaluation does (they mark objects not to be scored: a tracker box on one is a false
    positive there too, unless the line's class is one of ``distractors``), and so are lines of the ``distractors``
    classes (see :func:`read_ignored`). Blank lines and ``#`` comments are skipped; any other line that is not at
    least six numbers, or that repeats the frame and id of a line kept before (an id is one object, seen at most
    once a frame), raises :class:`CnnappsError` naming file and line.
    """
    path = Path(path)
    if gt is None:
        gt = path.name == "gt.txt"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CnnappsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CnnappsError(f"{path}: is a folder, expected a MOTChallenge text file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CnnappsError(f"{path}: unreadable ({exc.__class__.__name__})") from None
    return parse_mot_lines(text.splitlines(), gt=gt, name=str(path), distractors=distractors)


def read_ignored(path: str | Path, distractors: Collection[int]) -> dict[int, list[tuple[Box, bool]]]:
    """The ground-truth boxes :func:`read_mot` leaves out (conf 0, or a class of ``distractors``), by frame, each
    with whether it is a distractor: :func:`evaluate` matches tracker boxes to them as MOTChallenge does."""
    ignored: dict[int, list[tuple[Box, bool]]] = {}
    text = Path(path).read_text(encoding="utf-8")  # read_mot has read it already: its errors are said
    for _, frame, _, box, values in _rows(text.splitlines(), str(path)):
        zero, distractor = _unscored(values, distractors)
        if zero or distractor:
            ignored.setdefault(frame, []).append((box, distractor))
    return ignored


def parse_mot_lines(lines: Sequence[str], *, gt: bool = False, name: str = "tracks",
                    distractors: Collection[int] = ()) -> MotFrames:  # fmt: skip
    """:func:`read_mot` of lines already in memory (errors name ``name`` and the line number)."""
    frames: MotFrames = {}
    seen: dict[tuple[int, int], int] = {}  # (frame, id) -> the line that gave it
    for number, frame, ident, box, values in _rows(lines, name):
        if gt and any(_unscored(values, distractors)):
            continue
        earlier = seen.setdefault((frame, ident), number)
        if earlier != number:
            why = ("id -1 marks detections not in a track (a detections file?): eval track scores tracks"
                   if ident == -1 else "an id is one object")  # fmt: skip
            raise CnnappsError(f"{name}:{number}: frame {frame} has id {ident} twice (also line {earlier}); {why}")
        frames.setdefault(frame, []).append((ident, box))
    return frames


def _unscored(values: list[float], distractors: Collection[int]) -> tuple[bool, bool]:
    """Whether a ground-truth line's conf is 0, and whether its class is one of ``distractors``."""
    zero = len(values) > 6 and values[6] == 0
    return zero, len(values) > 7 and math.isfinite(values[7]) and int(values[7]) in distractors


def _rows(lines: Sequence[str], path: str) -> Iterator[tuple[int, int, int, Box, list[float]]]:
    """Each line's number, frame, id, box (x0, y0, x1, y1) and all its values, checked (errors name ``path`` and
    the line)."""
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f for f in _SPLIT.split(line) if f]
        where = f"{path}:{number}"
        if len(fields) < 6:
            raise CnnappsError(f"{where}: expected frame,id,x,y,w,h[,conf,...], got {len(fields)} values")
        try:
            values = [float(f) for f in fields]
        except ValueError:
            bad = next(f for f in fields if not _is_number(f))
            raise CnnappsError(f"{where}: {bad!r} is not a number") from None
        if not all(math.isfinite(v) for v in values[:6]):
            raise CnnappsError(f"{where}: frame, id and box must be finite numbers")
        frame, ident, x, y, w, h = values[:6]
        if frame != int(frame) or frame < 1:
            raise CnnappsError(f"{where}: frame must be a whole number >= 1, got {fields[0]}")
        if ident != int(ident):
            raise CnnappsError(f"{where}: id must be a whole number, got {fields[1]}")
        if w < 0 or h < 0:
            raise CnnappsError(f"{where}: width and height must be >= 0, got {fields[4]}, {fields[5]}")
        yield number, int(frame), int(ident), (x, y, x + w, y + h), values


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def mot_lines(frame: int, ids: Sequence[int], boxes: np.ndarray, scores: Sequence[float]) -> list[str]:
    """MOTChallenge results lines for one frame: ``frame,id,x,y,w,h,conf,-1,-1,-1``.

    ``frame`` is the 0-based index of the frame in the video (the first frame is 0) and is written 1-based;
    ``boxes`` are x0 y0 x1 y1 and are written as x, y, w, h with two decimals. Detections with id -1 (not in a
    confirmed track) are left out.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    lines = []
    for ident, box, score in zip(ids, boxes, scores, strict=True):
        if int(ident) < 0:
            continue
        x0, y0, x1, y1 = (float(v) for v in box)
        box_text = f"{x0:.2f},{y0:.2f},{x1 - x0:.2f},{y1 - y0:.2f}"
        lines.append(f"{frame + 1},{int(ident)},{box_text},{float(score):.4f},-1,-1,-1")
    return lines


#: our key -> motmetrics' metric name
_METRICS = {
    "mota": "mota",
    "idf1": "idf1",
    "idp": "idp",
    "idr": "idr",
    "motp": "motp",
    "id_switches": "num_switches",
    "false_positives": "num_false_positives",
    "misses": "num_misses",
    "mostly_tracked": "mostly_tracked",
    "mostly_lost": "mostly_lost",
    "fragmentations": "num_fragmentations",
    "frames": "num_frames",
    "objects": "num_unique_objects",
}


def evaluate(
    gt: MotFrames | str | Path,
    hyp: MotFrames | str | Path,
    iou: float = 0.5,
    *,
    distractors: Collection[int] = (),
    ignored: dict[int, list[tuple[Box, bool]]] | None = None,
) -> dict[str, float | int | None]:
    """MOT metrics of tracker output ``hyp`` against ground truth ``gt`` (dicts as :func:`read_mot` returns, or
    paths to MOTChallenge files). A hypothesis box matches a ground-truth box when their IoU is at least ``iou``.

    With ``distractors`` (classes, e.g. :data:`MOT_DISTRACTORS`; a ``gt`` path) or ``ignored`` (what
    :func:`read_ignored` gives, with a ``gt`` dict), tracker boxes on distractors are dropped first, as
    MOTChallenge's evaluation does: see :func:`on_distractors`.

    Returns mota, idf1, idp, idr, motp (mean IoU of matched pairs, higher is better), id_switches,
    false_positives, misses, mostly_tracked, mostly_lost, fragmentations, frames (frames in either) and objects
    (ground-truth ids). Ratios that are undefined (nothing to score) are None.
    """
    import motmetrics as mm  # pulls pandas: only here

    if not 0 < iou <= 1:
        raise CnnappsError(f"iou: must be in (0, 1], got {iou}")
    if not isinstance(gt, dict):
        ignored = read_ignored(gt, distractors) if distractors else None
        gt = read_mot(gt, gt=True, distractors=distractors)
    if not isinstance(hyp, dict):
        hyp = read_mot(hyp, gt=False)
    acc = mm.MOTAccumulator(auto_id=False)
    for frame in sorted(set(gt) | set(hyp)):
        g = gt.get(frame, [])
        g_boxes = np.array([b for _, b in g], dtype=np.float64).reshape(-1, 4)
        h = hyp.get(frame, [])
        if ignored and frame in ignored:
            dropped = on_distractors(g_boxes, ignored[frame], np.array([b for _, b in h]).reshape(-1, 4))
            h = [x for j, x in enumerate(h) if j not in dropped]
        h_boxes = np.array([b for _, b in h], dtype=np.float64).reshape(-1, 4)
        overlap = box_iou(g_boxes, h_boxes)
        dists = np.where(overlap >= iou, 1.0 - overlap, np.nan)
        acc.update([i for i, _ in g], [i for i, _ in h], dists, frameid=frame)
    summary = mm.metrics.create().compute(acc, metrics=list(_METRICS.values()), name="all")
    result: dict[str, float | int | None] = {}
    for key, name in _METRICS.items():
        value = float(summary.loc["all", name])
        if not math.isfinite(value):
            result[key] = None
        elif name.startswith("num_") or name.startswith("mostly_"):
            result[key] = int(value)
        else:
            result[key] = value
    if result["motp"] is not None:
        result["motp"] = 1.0 - result["motp"]
    return result


def on_distractors(scored: np.ndarray, ignored: list[tuple[Box, bool]], boxes: np.ndarray) -> set[int]:
    """Which tracker ``boxes`` of a frame sit on a distractor, as TrackEval's MotChallenge2DBox (and the devkit)
    finds them: one Hungarian matching at IoU >= 0.5 against every ground-truth box of the frame, scored or not;
    a box matched to a distractor is no false positive, just not the tracker's to report."""
    from scipy.optimize import linear_sum_assignment

    if not len(boxes) or not any(distractor for _, distractor in ignored):
        return set()
    pool = np.concatenate([scored, np.array([b for b, _ in ignored], np.float64).reshape(-1, 4)])
    flags = [False] * len(scored) + [distractor for _, distractor in ignored]
    similarity = box_iou(pool, boxes.astype(np.float64))
    similarity[similarity < 0.5 - np.finfo(float).eps] = 0
    rows, cols = linear_sum_assignment(-similarity)
    return {int(c) for r, c in zip(rows, cols, strict=True) if similarity[r, c] > np.finfo(float).eps and flags[r]}
