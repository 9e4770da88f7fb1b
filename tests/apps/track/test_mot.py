"""MOTChallenge files and MOT metrics: hand-checked values on tiny sequences, a round trip, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cnnapps.apps.track.mot import MOT_DISTRACTORS, evaluate, mot_lines, read_mot
from cnnapps.errors import CnnappsError

# two objects far apart, ten frames
BOX = {1: (10.0, 10.0, 50.0, 90.0), 2: (300.0, 10.0, 340.0, 90.0)}


def truth(frames: int = 10) -> dict:
    return {f: [(k, BOX[k]) for k in (1, 2)] for f in range(1, frames + 1)}


def test_perfect_hypothesis():
    gt = truth()
    m = evaluate(gt, {f: [(k + 100, b) for k, b in objs] for f, objs in gt.items()})  # id names do not matter
    assert m["mota"] == 1.0 and m["idf1"] == 1.0 and m["motp"] == 1.0
    assert (m["id_switches"], m["false_positives"], m["misses"]) == (0, 0, 0)
    assert (m["frames"], m["objects"], m["mostly_tracked"], m["mostly_lost"]) == (10, 2, 2, 0)
    assert all(isinstance(v, (int, float)) and not isinstance(v, np.generic) for v in m.values())


def test_swapped_ids_halfway():
    gt = truth()
    hyp = {f: [(k if f <= 5 else 3 - k, BOX[k]) for k in (1, 2)] for f in range(1, 11)}
    m = evaluate(gt, hyp)
    assert m["id_switches"] == 2  # each object once
    # by hand: the best one-to-one id mapping keeps 5 of each object's 10 boxes -> IDTP 10 of 20 + 20
    assert m["idf1"] == pytest.approx(2 * 10 / (20 + 20))
    assert m["mota"] == pytest.approx(1 - 2 / 20)
    assert (m["false_positives"], m["misses"]) == (0, 0)


def test_missing_frame_and_shifted_box():
    gt = truth()
    hyp = {f: objs for f, objs in truth().items() if f != 3}
    m = evaluate(gt, hyp)
    assert m["misses"] == 2 and m["frames"] == 10
    assert m["mota"] == pytest.approx(1 - 2 / 20)
    # a box shifted by a quarter of its width has IoU 0.6: a match at iou=0.5, a miss and a false positive at 0.7
    x0, y0, x1, y1 = BOX[1]
    shifted = {1: [(1, (x0 + 10, y0, x1 + 10, y1))]}
    one = {1: [(1, BOX[1])]}
    assert evaluate(one, shifted)["motp"] == pytest.approx(0.6)
    strict = evaluate(one, shifted, iou=0.7)
    assert (strict["misses"], strict["false_positives"], strict["motp"]) == (1, 1, None)


def test_round_trip(tmp_path: Path):
    boxes = np.array([[10.0, 20.0, 50.5, 100.25], [0.0, 0.0, 5.0, 5.0], [1.0, 1.0, 2.0, 2.0]])
    lines = mot_lines(0, [7, -1, 3], boxes, [0.91, 0.5, 0.8])
    assert lines == ["1,7,10.00,20.00,40.50,80.25,0.9100,-1,-1,-1", "1,3,1.00,1.00,1.00,1.00,0.8000,-1,-1,-1"]
    path = tmp_path / "results.txt"
    path.write_text("\n".join(lines + mot_lines(4, [7], boxes[:1] + 5, [0.9])) + "\n")
    read = read_mot(path)
    assert sorted(read) == [1, 5]
    assert read[1] == [(7, (10.0, 20.0, 50.5, 100.25)), (3, (1.0, 1.0, 2.0, 2.0))]
    assert read[5] == [(7, (15.0, 25.0, 55.5, 105.25))]
    assert evaluate(path, path)["idf1"] == 1.0


def test_gt_file_drops_ignored_lines_and_takes_whitespace(tmp_path: Path):
    gt = tmp_path / "gt.txt"
    gt.write_text("# frame id x y w h conf class vis\n1 1 10 10 20 20 1 1 1.0\n1 2 50 50 20 20 0 1 1.0\n\n")
    with gt.open("a") as f:
        f.write("2,1,12,10,20,20\n")
    assert read_mot(gt) == {1: [(1, (10.0, 10.0, 30.0, 30.0))], 2: [(1, (12.0, 10.0, 32.0, 30.0))]}
    assert len(read_mot(gt, gt=False)[1]) == 2  # a results file keeps conf 0 lines


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,1,10,10,20\n", "results.txt:2: expected frame,id,x,y,w,h"),
        ("1,1,10,ten,20,20\n", "results.txt:2: 'ten' is not a number"),
        ("0,1,10,10,20,20\n", "results.txt:2: frame must be a whole number >= 1"),
        ("1,1,10,10,-20,20\n", "results.txt:2: width and height must be >= 0"),
    ],
)
def test_bad_lines(tmp_path: Path, text: str, message: str):
    path = tmp_path / "results.txt"
    path.write_text("1,1,10,10,20,20,1,-1,-1,-1\n" + text)
    with pytest.raises(CnnappsError, match=message) as info:
        read_mot(path)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path):
    with pytest.raises(CnnappsError, match=r"nope\.txt: no such file"):
        read_mot(tmp_path / "nope.txt")
    with pytest.raises(CnnappsError, match="no such file"):
        evaluate(tmp_path / "nope.txt", {})


def test_an_id_twice_in_a_frame_is_an_error(tmp_path: Path):
    path = tmp_path / "results.txt"
    path.write_text("1,1,10,10,20,20,1,-1,-1,-1\n1,2,50,50,20,20,1,-1,-1,-1\n2,1,12,10,20,20\n1,2,60,50,20,20\n")
    with pytest.raises(CnnappsError, match=r"results\.txt:4: frame 1 has id 2 twice \(also line 2\)") as info:
        read_mot(path)
    assert "\n" not in str(info.value)
    gt = tmp_path / "gt.txt"  # a line left out of the ground truth (conf 0) takes no id
    gt.write_text("1,1,10,10,20,20,0,1,1\n1,1,12,10,20,20,1,1,1\n1,1,14,10,20,20,0,1,1\n")
    assert read_mot(gt) == {1: [(1, (12.0, 10.0, 32.0, 30.0))]}
    with pytest.raises(CnnappsError, match=r"gt\.txt:2: frame 1 has id 1 twice \(also line 1\)"):
        read_mot(gt, gt=False)


@pytest.mark.parametrize("twice", ["gt", "results"])
def test_eval_track_stops_at_an_id_twice_in_a_frame(run_cli, tmp_path: Path, twice: str):
    files = {name: tmp_path / f"{name}.txt" for name in ("gt", "results")}
    for name, path in files.items():
        again = "2,1,40,10,20,20,1,1,1\n" if name == twice else ""
        path.write_text("1,1,10,10,20,20,1,1,1\n2,1,12,10,20,20,1,1,1\n" + again)
    code, out, err = run_cli("eval", "track", "--gt", files["gt"], "--results", files["results"])
    assert code == 2 and out == ""
    message = f"{files[twice]}:3: frame 2 has id 1 twice (also line 2); an id is one object"
    assert err.strip().splitlines() == [f"error: {message}"]


#: one object in frames 1-4 and an ignored box in frame 2 (conf 0, class CLASS); tracks 7, 7, 8, 8 on the object
#: (an id switch) and 9 on the ignored box
HAND_GT = "1,1,10,10,20,20,1,1,1\n2,1,12,10,20,20,1,1,1\n3,1,14,10,20,20,1,1,1\n4,1,16,10,20,20,1,1,1\n"
HAND_RESULTS = "".join(f"{f},{i},{8 + 2 * f},10,20,20,0.9,-1,-1,-1\n" for f, i in ((1, 7), (2, 7), (3, 8), (4, 8)))


@pytest.mark.parametrize(("kind", "distractors", "mota"), [(1, True, 0.5), (7, False, 0.5), (7, True, 0.75)])
def test_a_track_box_on_a_distractor_is_dropped_as_motchallenge_drops_it(tmp_path: Path, kind, distractors, mota):
    """TrackEval's MotChallenge2DBox: a tracker box matched to a distractor (class 2, 7, 8 or 12; here a static
    person, 7) is dropped; on an ignored box of another class (conf 0, class 1) it stays a false positive. Without
    --mot-distractors the class column is not read (other ground truth numbers its own classes there)."""
    gt, results = tmp_path / "gt.txt", tmp_path / "results.txt"
    gt.write_text(HAND_GT + f"2,2,100,100,20,20,0,{kind},1\n")
    results.write_text(HAND_RESULTS + "2,9,100,100,20,20,0.9,-1,-1,-1\n")
    m = evaluate(gt, results, distractors=MOT_DISTRACTORS if distractors else ())
    assert m["mota"] == pytest.approx(mota)
    assert (m["id_switches"], m["false_positives"], m["misses"]) == (1, 0 if mota == 0.75 else 1, 0)


def test_a_distractor_takes_only_the_box_the_matching_gives_it(run_cli, tmp_path: Path):
    """The matching is against every ground-truth box at once: a track box on a scored object next to a distractor
    (a shown, conf 1, class 7 box too) is the object's, and the distractor's own box is dropped."""
    gt, results = tmp_path / "gt.txt", tmp_path / "results.txt"
    gt.write_text("1,1,10,10,20,20,1,1,1\n1,2,14,10,20,20,1,7,1\n")
    results.write_text("1,5,10,10,20,20,0.9,-1,-1,-1\n1,6,14,10,20,20,0.9,-1,-1,-1\n")
    code, out, err = run_cli("eval", "track", "--gt", gt, "--results", results, "--mot-distractors", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["mota"], report["false_positives"], report["objects"]) == (1.0, 0, 1)
    code, out, err = run_cli("eval", "track", "--gt", gt, "--results", results, "--json")
    assert (json.loads(out)["objects"], json.loads(out)["false_positives"]) == (2, 0)  # read as two classes


def test_a_detections_file_given_as_tracks_says_what_id_minus_one_means(tmp_path: Path):
    path = tmp_path / "det.txt"  # MOTChallenge's det.txt: every line id -1
    path.write_text("1,-1,10,10,20,20,0.9\n1,-1,50,10,20,20,0.8\n")
    with pytest.raises(CnnappsError, match=r"det\.txt:2: frame 1 has id -1 twice \(also line 1\); id -1 marks "
                                           r"detections not in a track") as info:  # fmt: skip
        read_mot(path)
    assert "an id is one object" not in str(info.value)
