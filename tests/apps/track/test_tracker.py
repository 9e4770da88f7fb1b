"""ByteTracker on a generated scene: four objects crossing, occlusions, a turn while hidden, low-score boxes."""

from __future__ import annotations

import numpy as np
import pytest

from cnnapps.apps.track.mot import evaluate
from cnnapps.apps.track.tracker import ByteTracker, KalmanFilter, box_iou
from cnnapps.errors import CnnappsError

DIM = 32
TURNER = 4  # the object that reverses direction while hidden


def scene(seed: int = 0, n_frames: int = 120) -> list[tuple[np.ndarray, ...]]:
    """Per frame: (true boxes, detected boxes, scores, object ids, embeddings) of four objects in straight lines.

    A and B cross head on (B scores 0.3 while behind A), C crosses their lane downwards at the same time, the
    turner is hidden for 15 frames (40-54) and reverses direction half way; A and C each miss single frames and
    frame 100 has no detections at all.
    """
    rng = np.random.default_rng(seed)
    objects = {  # id: (start centre, velocity per frame, size)
        1: ((60.0, 200.0), (4.0, 0.0), (40.0, 80.0)),
        2: ((580.0, 215.0), (-4.0, 0.0), (40.0, 80.0)),
        3: ((320.0, 20.0), (0.0, 3.0), (50.0, 50.0)),
        TURNER: ((100.0, 400.0), (5.0, -1.0), (40.0, 80.0)),
    }
    looks = {k: v / np.linalg.norm(v) for k, v in ((k, rng.normal(size=DIM)) for k in objects)}
    frames = []
    for f in range(n_frames):
        true, dets, scores, ids, embs = [], [], [], [], []
        for k, ((x, y), (vx, vy), (w, h)) in objects.items():
            t = f if k != TURNER or f < 47 else 94 - f
            cx, cy = x + vx * t, y + vy * t
            hidden = (k == TURNER and 40 <= f < 55) or (k == 1 and f in (20, 85)) or (k == 3 and f == 30)
            if hidden or f == 100:
                continue
            box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
            true.append(box)
            dets.append(box + rng.normal(0, 1.0, 4))
            scores.append(0.3 if k == 2 and 60 <= f < 70 else 0.9)
            ids.append(k)
            e = looks[k] + rng.normal(0, 0.03, DIM)
            embs.append(e / np.linalg.norm(e))
        frames.append(
            (
                np.array(true).reshape(-1, 4),
                np.array(dets).reshape(-1, 4),
                np.array(scores),
                np.array(ids, dtype=np.int64),
                np.array(embs).reshape(-1, DIM),
            )
        )
    return frames


def run(tracker: ByteTracker, frames, embeddings: bool):
    """(ground truth, hypothesis) as read_mot dicts, and the track ids each object got, in order."""
    gt, hyp, got = {}, {}, {}
    for f, (true, dets, scores, ids, embs) in enumerate(frames, start=1):
        out = tracker.update(dets, scores, np.zeros(len(dets), dtype=np.int64), embs if embeddings else None)
        assert out.dtype == np.int64 and out.shape == (len(dets),)
        gt[f] = [(int(k), tuple(b)) for k, b in zip(ids, true, strict=True)]
        hyp[f] = [(int(i), tuple(b)) for i, b in zip(out, dets, strict=True) if i >= 0]
        for k, i in zip(ids, out, strict=True):
            if i >= 0:
                got.setdefault(int(k), []).append(int(i))
    return gt, hyp, got


def test_reid_keeps_every_object_on_one_id():
    gt, hyp, got = run(ByteTracker(), scene(), embeddings=True)
    assert {k: sorted(set(v)) for k, v in got.items()} == {1: [1], 2: [2], 3: [3], 4: [4]}
    metrics = evaluate(gt, hyp)
    assert metrics["id_switches"] == 0
    assert metrics["idf1"] >= 0.95
    assert metrics["mota"] >= 0.95
    # every detection of the crossing B, low-scored behind A, was kept on its track
    assert len(got[2]) == 120 - 1


def test_without_embeddings_the_turner_gets_a_new_id():
    frames = scene()
    _, _, with_reid = run(ByteTracker(), frames, embeddings=True)
    gt, hyp, plain = run(ByteTracker(), frames, embeddings=False)
    assert len(set(plain[TURNER])) == 2  # the Kalman prediction went on the other way
    assert all(len(set(plain[k])) == 1 for k in (1, 2, 3))
    assert len(set(with_reid[TURNER])) == 1
    plain_idf1 = evaluate(gt, hyp)["idf1"]
    assert plain_idf1 < 0.95
    # reid=False ignores embeddings: plain ByteTrack again
    _, _, off = run(ByteTracker(reid=False), frames, embeddings=True)
    assert off == plain


def test_reid_after_longer_than_lost_frames():
    """An object hidden for 60 frames (more than lost_frames) comes back on its id only through appearance."""
    look = np.eye(DIM)[0]
    box = np.array([[100.0, 100.0, 140.0, 180.0]])
    for reid, expected in ((True, 1), (False, 2)):
        tracker = ByteTracker(reid=reid)
        ids = [int(tracker.update(box, [0.9], [0], look[None])[0]) for _ in range(5)]
        for _ in range(60):
            assert tracker.update(np.zeros((0, 4)), [], []).tolist() == []
        back = box + 20.0
        ids += [int(tracker.update(back, [0.9], [0], look[None])[0]) for _ in range(3)]
        assert len({i for i in ids if i >= 0}) == expected
    # past reid_frames the lost track is gone for good
    tracker = ByteTracker(reid_frames=50)
    tracker.update(box, [0.9], [0], look[None])
    for _ in range(51):
        tracker.update([], [], [])
    assert tracker.tracks == []


def test_appearance_does_not_pull_a_distant_lookalike_out_of_the_gate():
    look = np.eye(DIM)[0]
    tracker = ByteTracker()
    tracker.update([[100.0, 100.0, 140.0, 180.0]], [0.9], [0], look[None])
    tracker.update([], [], [])
    far = [[600.0, 100.0, 640.0, 180.0]]  # 500 px away after 1 frame: beyond 2.1 box diagonals
    assert tracker.update(far, [0.9], [0], look[None]).tolist() == [-1]


def test_appearance_gate_refuses_a_motion_match_that_looks_like_another_object():
    a, b = np.eye(DIM)[0], np.eye(DIM)[1]
    box = np.array([[100.0, 100.0, 140.0, 180.0]])
    for gate, expected in ((0.65, -1), (2.0, 1)):
        tracker = ByteTracker(appearance_gate=gate)
        assert tracker.update(box, [0.9], [0], a[None]).tolist() == [1]
        # another object where the track was predicted: it overlaps fully but looks nothing alike
        assert tracker.update(box, [0.9], [0], b[None]).tolist() == [expected]
    with pytest.raises(CnnappsError, match="appearance_gate"):
        ByteTracker(appearance_gate=0.0)


def test_appearance_learns_only_from_detections_that_overlap_no_other():
    a, b = np.eye(DIM)[0], np.eye(DIM)[1]
    mixed = (a + b) / np.sqrt(2)
    tracker = ByteTracker()
    left, right = [100.0, 100.0, 140.0, 180.0], [150.0, 100.0, 190.0, 180.0]
    assert tracker.update([left, right], [0.9, 0.9], [0, 0], np.stack([a, b])).tolist() == [1, 2]
    before = {t.id: t.feature.copy() for t in tracker.tracks}
    # the two touch: each one's embedding mixes both; matched by motion, neither appearance changes
    ids = tracker.update([left, [138.0, 100.0, 178.0, 180.0]], [0.9, 0.9], [0, 0], np.stack([mixed, mixed]))
    assert ids.tolist() == [1, 2]
    assert {t.id: t.feature.tolist() for t in tracker.tracks} == {k: v.tolist() for k, v in before.items()}
    # apart again: the appearance moves towards what is seen
    tracker.update([left, right], [0.9, 0.9], [0, 0], np.stack([mixed, b]))
    assert not np.array_equal(next(t for t in tracker.tracks if t.id == 1).feature, before[1])


def test_ids_increase_and_are_never_reused():
    rng = np.random.default_rng(1)
    tracker = ByteTracker()
    seen: list[int] = []
    for _ in range(3):  # objects appear for a few frames, vanish past lost_frames, new ones appear
        start = rng.uniform(0, 400, size=(3, 2))
        boxes = np.hstack([start, start + 40])
        for _ in range(4):
            out = tracker.update(boxes, np.full(3, 0.9), np.zeros(3, dtype=np.int64))
            seen.extend(int(i) for i in out if i >= 0)
        for _ in range(tracker.lost_frames + 2):
            tracker.update(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
    first_seen = list(dict.fromkeys(seen))
    assert first_seen == sorted(first_seen) == list(range(1, 10))
    tracker.reset()
    out = tracker.update([[0.0, 0.0, 10.0, 10.0]], [0.9], [0])
    assert out.tolist() == [10]  # still not reused after reset


def test_new_tracks_are_tentative_then_confirmed():
    tracker = ByteTracker()
    a = [[0.0, 0.0, 20.0, 40.0]]
    b = [[200.0, 0.0, 220.0, 40.0]]
    assert tracker.update(a, [0.9], [0]).tolist() == [1]  # first frame: confirmed at once
    assert tracker.update(a + b, [0.9, 0.9], [0, 0]).tolist() == [1, -1]  # b is tentative
    assert tracker.update(a + b, [0.9, 0.9], [0, 0]).tolist() == [1, 2]  # second consecutive match
    assert tracker.active_ids == [1, 2]
    assert tracker.update(a, [0.9], [0]).tolist() == [1]
    assert tracker.active_ids == [1]
    # 0.55 is a high-score detection (>= high) but below new_track: it starts nothing
    c = [[400.0, 0.0, 420.0, 40.0]]
    for _ in range(3):
        assert tracker.update(a + c, [0.9, 0.55], [0, 0]).tolist() == [1, -1]


def test_low_scores_extend_tracks_but_never_start_them():
    tracker = ByteTracker()
    box = np.array([[50.0, 50.0, 90.0, 130.0]])
    for _ in range(10):  # low-score only: nothing starts, even on the first frame
        assert tracker.update(box, [0.3], [0]).tolist() == [-1]
    assert tracker.tracks == [] and tracker.active_ids == []
    ids = [int(tracker.update(box + 2 * i, [0.9], [0])[0]) for i in range(3)]
    ids += [int(tracker.update(box + 2 * i, [0.3], [0])[0]) for i in range(3, 10)]  # occluded, low score
    assert ids[1:] == [ids[1]] * 9 and ids[1] > 0
    assert tracker.update(box, [0.05], [0]).tolist() == [-1]  # below low: ignored


def test_empty_frames_and_bad_input():
    tracker = ByteTracker()
    assert tracker.update(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros((0, 8))).shape == (0,)
    assert tracker.update([], [], []).dtype == np.int64
    assert tracker.active_ids == []
    with pytest.raises(CnnappsError, match="same length"):
        tracker.update([[0, 0, 1, 1]], [0.9, 0.8], [0])
    with pytest.raises(CnnappsError, match="finite"):
        tracker.update([[0, 0, np.nan, 1]], [0.9], [0])
    with pytest.raises(CnnappsError, match="low <= high"):
        ByteTracker(low=0.6, high=0.5)


def test_deterministic():
    frames = scene(seed=3)
    assert run(ByteTracker(), frames, True) == run(ByteTracker(), frames, True)


def test_kalman_follows_constant_velocity_and_iou():
    kf = KalmanFilter()
    mean, cov = kf.initiate(np.array([10.0, 20.0, 0.5, 40.0]))
    for step in range(1, 20):
        mean, cov = kf.predict(mean, cov)
        mean, cov = kf.update(mean, cov, np.array([10.0 + 3 * step, 20.0, 0.5, 40.0]))
    assert mean[4] == pytest.approx(3.0, abs=0.2) and abs(mean[5]) < 0.1
    predicted, _ = kf.predict(mean, cov)
    assert predicted[0] == pytest.approx(10.0 + 3 * 20, abs=0.5)
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]))
    assert iou[0].tolist() == pytest.approx([1.0, 1 / 3, 0.0])


def test_duplicate_boxes_of_other_classes_feed_one_track():
    """A detector's per-class NMS can leave a second box of another class on an object: it is dropped (id -1)."""
    box = np.array([[100.0, 100.0, 140.0, 140.0]])
    twin = box + np.array([1.0, 0.0, 1.0, 2.0])  # IoU about 0.9
    other = box + np.array([30.0, 0.0, 30.0, 0.0])  # IoU 0.14: a neighbour, kept
    boxes = np.vstack([box, twin, other])
    for nms_iou, expected in ((0.7, 2), (1.0, 3)):
        tracker = ByteTracker(nms_iou=nms_iou)
        for _ in range(5):
            out = tracker.update(boxes, [0.9, 0.8, 0.9], [0, 1, 0])
        assert len({int(i) for i in out if i >= 0}) == expected
        if nms_iou < 1:
            assert out[1] == -1 and out[0] >= 0 and out[2] >= 0
    with pytest.raises(CnnappsError, match="nms_iou"):
        ByteTracker(nms_iou=0.0)


def test_reid_waits_for_a_detection_confident_enough_to_start_a_track():
    look = np.eye(DIM)[0]
    box = np.array([[100.0, 100.0, 140.0, 180.0]])
    tracker = ByteTracker()
    for _ in range(3):
        (first,) = tracker.update(box, [0.9], [0], look[None]).tolist()
    for _ in range(40):  # hidden past lost_frames
        tracker.update([], [], [])
    back = box + 20.0
    # 0.55: a high-score box (>= high) but below new_track, as a half-hidden object scores: not re-identified yet
    assert tracker.update(back, [0.55], [0], look[None]).tolist() == [-1]
    assert tracker.update(back, [0.9], [0], look[None]).tolist() == [first]


@pytest.mark.parametrize(
    ("threshold", "tracked", "circle"),
    [(0.9, set(), 0.7), (0.5, {"circle"}, 0.7), (0.3, {"circle", "square"}, 0.7), (0.95, {"circle"}, 0.98)],
)
def test_the_score_threshold_decides_what_is_tracked(threshold: float, tracked: set[str], circle: float) -> None:
    """`--score-threshold` is the tracker's: an object that never reaches it gets no id and no MOT line; one above
    it gets an id whatever ByteTrack's own defaults (0.5 and 0.6) say."""
    from types import SimpleNamespace

    from cnnapps.apps.common.video import Tracking
    from cnnapps.results import DetectionResult, Instance

    tracking = Tracking(threshold, reid=False, keep_mot=True)
    for k in range(3):
        frame = SimpleNamespace(rgb=np.zeros((240, 320, 3), np.uint8), index=k, time=k / 25)
        found = [Instance(label="circle", label_index=1, score=circle, box=(10.0 + k, 10.0, 50.0 + k, 50.0)),
                 Instance(label="square", label_index=2, score=0.45, box=(100.0, 100.0, 140.0, 140.0))]  # fmt: skip
        result = DetectionResult("v", instances=found, width=320, height=240)
        _, lines = tracking.update(frame, result)
    assert {i.label for i in result.instances if i.track_id is not None} == tracked
    assert {i.label for i in result.instances} == tracked  # nothing under the threshold without a track
    assert len(lines) == len(tracked)
