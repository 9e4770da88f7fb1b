"""MOTChallenge text files (ground truth and results) and the CLEAR-MOT and identity metrics over them.

A MOTChallenge line is ``frame,id,x,y,w,h,conf,class,visibility`` (frames 1-based, boxes top-left and size
in pixels; columns after h are optional; commas or whitespace between values). :func:`read_mot` reads one into
``{frame: [(id, (x0, y0, x1, y1)), ...]}``, :func:`mot_lines` writes tracker output in the results format and
:func:`evaluate` scores results against ground truth with motmetrics (MOTA, MOTP, IDF1, id switches, ...).

HOTA is not computed: no maintained package computes it without pulling the GUI build of OpenCV (trackeval 1.3.0
and trackers 2.6 both require opencv-python, which clashes with the opencv-python-headless this project ships).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cnnapps.apps.track.tracker import box_iou
from cnnapps.errors import CnnappsError

Box = tuple[float, float, float, float]
MotFrames = dict[int, list[tuple[int, Box]]]

_SPLIT = re.compile(r"[,\s]+")


def read_mot(path: str | Path, *, gt: bool | None = None) -> MotFrames:
    """``{frame: [(id, (x0, y0, x1, y1)), ...]}`` from a MOTChallenge file, frames 1-based as written.

    In a ground-truth file (``gt=True``; by default a file named ``gt.txt``) lines whose conf column is 0 are
    left out, as MOTChallenge does (they mark objects not to be scored). Blank lines and ``#`` comments are
    skipped; any other line that is not at least six numbers, or that repeats the frame and id of a line kept
    before (an id is one object, seen at most once a frame), raises :class:`CnnappsError` naming file and line.
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
    return parse_mot_lines(text.splitlines(), gt=gt, name=str(path))


def parse_mot_lines(lines: Sequence[str], *, gt: bool = False, name: str = "tracks") -> MotFrames:
    """:func:`read_mot` of lines already in memory (errors name ``name`` and the line number)."""
    path = name
    frames: MotFrames = {}
    seen: dict[tuple[int, int], int] = {}  # (frame, id) -> the line that gave it
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
        if gt and len(values) > 6 and values[6] == 0:
            continue
        earlier = seen.setdefault((int(frame), int(ident)), number)
        if earlier != number:
            raise CnnappsError(
                f"{where}: frame {int(frame)} has id {int(ident)} twice (also line {earlier}); an id is one object"
            )
        frames.setdefault(int(frame), []).append((int(ident), (x, y, x + w, y + h)))
    return frames


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
    gt: MotFrames | str | Path, hyp: MotFrames | str | Path, iou: float = 0.5
) -> dict[str, float | int | None]:
    """MOT metrics of tracker output ``hyp`` against ground truth ``gt`` (dicts as :func:`read_mot` returns, or
    paths to MOTChallenge files). A hypothesis box matches a ground-truth box when their IoU is at least ``iou``.

    Returns mota, idf1, idp, idr, motp (mean IoU of matched pairs, higher is better), id_switches,
    false_positives, misses, mostly_tracked, mostly_lost, fragmentations, frames (frames in either) and objects
    (ground-truth ids). Ratios that are undefined (nothing to score) are None.
    """
    import motmetrics as mm  # pulls pandas: only here

    if not 0 < iou <= 1:
        raise CnnappsError(f"iou: must be in (0, 1], got {iou}")
    if not isinstance(gt, dict):
        gt = read_mot(gt, gt=True)
    if not isinstance(hyp, dict):
        hyp = read_mot(hyp, gt=False)
    acc = mm.MOTAccumulator(auto_id=False)
    for frame in sorted(set(gt) | set(hyp)):
        g = gt.get(frame, [])
        h = hyp.get(frame, [])
        g_boxes = np.array([b for _, b in g], dtype=np.float64).reshape(-1, 4)
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
