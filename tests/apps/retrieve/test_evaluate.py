"""Retrieval scores where a class has a single image: such an image is searched among, never scored as a query
(as mAP@R and pytorch-metric-learning do); a set or a validation split with no class of 2 is refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnnapps.apps.retrieve.evaluate import evaluate_retrieval, retrieval_metrics
from cnnapps.errors import CnnappsError


def _unit(rows: list[list[float]]) -> np.ndarray:
    v = np.array(rows, np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# two classes of two images, perfectly separated, and two images alone in their class
SEPARATED = _unit([[1, 0, 0, 0], [0.99, 0.1, 0, 0], [0, 1, 0, 0], [0.1, 0.99, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])


@pytest.mark.parametrize("labels", [[0, 0, 1, 1, 2, 3], ["a", "a", "b", "b", "c", "d"], [-1, -1, 5, 5, 7, 9]])
def test_an_image_alone_in_its_class_is_not_scored_as_a_query(labels: list) -> None:
    metrics = retrieval_metrics(SEPARATED, np.array(labels))
    assert metrics == {"recall@1": 1.0, "recall@5": 1.0, "recall@10": 1.0, "map@r": 1.0}  # was recall@k 0.667


def test_an_image_alone_in_its_class_is_still_searched_among() -> None:
    # the singleton (label 2) sits between the two images of class 0: their nearest other image is it
    vectors = _unit([[1, 0.2], [1, -0.2], [1, 0], [0, 1], [0.1, 1]])
    metrics = retrieval_metrics(vectors, np.array([0, 0, 2, 1, 1]), ks=(1, 2))
    assert metrics["recall@1"] == pytest.approx(0.5) and metrics["recall@2"] == 1.0


def test_no_class_of_two_images_is_a_one_line_error() -> None:
    with pytest.raises(CnnappsError) as caught:
        retrieval_metrics(SEPARATED, np.arange(6))  # was recall@k 0.0 without a word
    assert str(caught.value) == (
        "no class has 2 or more of the 6 images: recall and mAP@R score queries with another image of their class"
    )


def test_the_report_says_how_many_queries_were_left_out(stand_ins, tmp_path: Path) -> None:
    from cnnapps.datasets.folders import LabeledImages

    paths = [stand_ins.write_png(tmp_path / f"{i}.png", seed=i, size=8) for i in range(4)]
    report = evaluate_retrieval(stand_ins.PixelEmbedder(), LabeledImages(paths, [0, 0, 1, 2], ["a", "b", "c"]))
    assert (report["n"], report["queries"], report["left_out"]) == (4, 2, 2)


def test_eval_retrieve_prints_the_queries_left_out(run_cli, stand_ins, tmp_path: Path) -> None:
    from tests.apps.retrieve.conftest import TINY_MODEL

    for cls, n in (("a", 2), ("b", 1)):
        for i in range(n):
            stand_ins.write_png(tmp_path / "set" / cls / f"{i}.png", seed=10 * n + i, size=16)
    code, out, err = run_cli("eval", "retrieve", "--model", TINY_MODEL, "--data", tmp_path / "set", "--device", "cpu")
    assert code == 0, err
    assert out.startswith("3 images: recall@1 ")
    assert "left out as queries (alone in their class, still searched among): 1 image" in out


def test_eval_retrieve_counts_a_row_whose_image_is_missing_as_a_failed_input(run_cli, stand_ins, tmp_path: Path):
    """The row was logged and dropped, and eval exited 0 with "failed": []: it is an input that failed (exit 1)."""
    import json

    from tests.apps.retrieve.conftest import TINY_MODEL

    for i in range(3):
        stand_ins.write_png(tmp_path / f"{i}.png", seed=i, size=16)
    table = tmp_path / "list.csv"
    table.write_text("path,label\n0.png,a\n1.png,a\ngone.png,b\n2.png,b\n")
    code, out, err = run_cli("eval", "retrieve", "--model", TINY_MODEL, "--data", table, "--device", "cpu", "--json")
    assert code == 1, err
    report = json.loads(out)
    assert report["n"] == 3 and report["failed"] == [
        {"path": str(tmp_path / "gone.png"), "error": f"no such file (line 4 of {table})"}
    ]


def _classes(root: Path, stand_ins, per_class: int) -> Path:
    for c in range(3):
        for i in range(per_class):
            stand_ins.write_png(root / f"class{c}" / f"{i}.png", seed=100 * c + i, size=8)
    return root


@pytest.mark.parametrize("layout", ["one tree", "train and val folders"])
def test_training_refuses_a_validation_split_with_no_class_of_two(stand_ins, tmp_path: Path, layout: str) -> None:
    from cnnapps.apps.common.config import load_config
    from cnnapps.apps.retrieve.config import RetrieveConfig
    from cnnapps.apps.retrieve.train import train_retrieval

    data = tmp_path / "data"
    if layout == "one tree":  # 3 images a class: the stratified 20% split takes one of each
        _classes(data, stand_ins, 3)
        fix = "raise --val-split, or give train/ and val/ folders with 2 or more images of a class in val/"
    else:
        _classes(data / "train", stand_ins, 3)
        _classes(data / "val", stand_ins, 1)
        fix = f"put 2 or more images of a class in {data / 'val'}"
    config = load_config(
        None, RetrieveConfig,
        data=str(data), backbone="lenet5", weights="none", epochs=1, batch_size=4, workers=0, progress=False,
        augment="none", out=str(tmp_path / "run"), val_split=0.2, device="cpu",
    )  # fmt: skip
    with pytest.raises(CnnappsError) as caught:
        train_retrieval(config)  # was: every epoch validated to recall@1 0
    assert str(caught.value) == (
        f"{data}: no class has 2 or more of the validation split's 3 images, so retrieval cannot be scored; {fix}"
    )
    assert not (tmp_path / "run").exists()
