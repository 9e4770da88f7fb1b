from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cnnapps
from cnnapps.apps.classify.evaluate import evaluate, report_from_probs
from cnnapps.datasets.folders import class_folders


def test_report_on_a_hand_computed_case() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])
    labels = np.array([0, 1, 1, 2])
    report = report_from_probs(probs, labels, ["a", "b", "c"])
    assert report.top1 == pytest.approx(0.75)
    assert report.top5 == pytest.approx(1.0)  # top-3 of 3 classes
    assert report.confusion == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert report.precision == pytest.approx([0.5, 1.0, 1.0])
    assert report.recall == pytest.approx([1.0, 0.5, 1.0])
    assert report.support == [1, 2, 1]
    expected_loss = -np.mean(np.log([0.7, 0.8, 0.3, 0.5]))
    assert report.loss == pytest.approx(expected_loss, rel=1e-5)


def test_evaluate_a_trained_model(trained, colour_set) -> None:
    out, _ = trained
    data = class_folders(colour_set)
    (colour_set / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    try:
        report = evaluate(cnnapps.load(out / "model.safetensors"), class_folders(colour_set))
    finally:
        (colour_set / "red" / "broken.png").unlink()
    assert report.n == len(data)
    assert report.top1 >= 0.9
    assert [f["path"].endswith("broken.png") for f in report.failed] == [True]
    assert sum(map(sum, report.confusion)) == len(data)


def test_the_text_confusion_matrix_has_a_header_row(capsys) -> None:
    from cnnapps.apps.classify.cli import _print_report

    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])
    report = report_from_probs(probs, np.array([0, 1, 1, 2]), ["cat", "dog", "tiger cat"])
    _print_report(report)
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("confusion matrix"))
    header, *rows = lines[start + 1 : start + 5]
    assert header.split() == ["true", "\\", "predicted", "cat", "dog", "tiger", "ca"]  # names cut to 8 characters
    assert [row.split()[-3:] for row in rows] == [["1", "0", "0"], ["1", "1", "0"], ["0", "0", "1"]]
    assert len({len(line) for line in (header, *rows)}) == 1  # columns line up under their names


class Unreadable:
    """A predictor that reads none of its images."""

    def __init__(self, multilabel: bool) -> None:
        self.class_names = ["a", "b"]
        self.multilabel = multilabel
        self.thresholds = [0.5, 0.5]

    def predict_proba(self, paths, batch_size=None, progress=None):
        return list(paths), np.zeros((0, 2), np.float32), ["not an image"] * len(paths)


@pytest.mark.parametrize("multilabel", [False, True])
def test_no_readable_image_is_one_line(multilabel: bool) -> None:
    """Nothing to score: one line naming the first failure (torchmetrics was given empty tensors: a traceback)."""
    from cnnapps.datasets.folders import LabeledImages, as_multilabel
    from cnnapps.errors import CnnappsError

    data = LabeledImages(["x.png", "y.png"], [0, 1], ["a", "b"])
    with pytest.raises(CnnappsError, match=r"^none of the 2 images could be read \(the first, x\.png: not an image\)$"):
        evaluate(Unreadable(multilabel), as_multilabel(data) if multilabel else data)


def test_classes_the_model_does_not_know_are_counted_past_the_first_five(tmp_path, run_cli) -> None:
    import cv2

    for name in ("red", "a", "b", "c", "d", "e", "f", "g"):
        (tmp_path / "data" / name).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "data" / name / "0.png"), np.full((8, 8, 3), 99, np.uint8))
    model = Path(__file__).parents[2] / "fixtures" / "model_files_v1" / "classify.safetensors"  # red, green, blue
    code, _, stderr = run_cli("eval", "classify", "--model", model, "--data", tmp_path / "data")
    assert code == 2
    assert stderr.strip().endswith("the data has classes the model does not know: a, b, c, d, e and 2 more"), stderr
