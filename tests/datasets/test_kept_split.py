"""A --val-split run resumed after images were added or removed keeps its validation images in validation."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from cnnapps.apps.classify.train import train_classifier
from tests.conftest import write_colour_set


@pytest.fixture()
def splits(monkeypatch: pytest.MonkeyPatch) -> list[tuple[set[str], set[str]]]:
    """The (training, validation) image paths of every split made while the fixture is in use."""
    from cnnapps.datasets import folders

    made: list[tuple[set[str], set[str]]] = []
    original = folders.train_val_split

    def record(*args, **kwargs):
        train, val = original(*args, **kwargs)
        made.append((set(train.paths), set(val.paths)))
        return train, val

    monkeypatch.setattr(folders, "train_val_split", record)
    return made


def test_a_resumed_run_keeps_its_validation_images(tmp_path: Path, tiny_config, splits, caplog) -> None:
    """Split anew from scratch, most of the first session's validation images became training images."""
    data = write_colour_set(tmp_path / "data", per_class=10)
    out = tmp_path / "run"
    train_classifier(tiny_config(data, out, epochs=1))
    (_, validated), *_ = splits
    write_colour_set(tmp_path / "more", per_class=12, seed=5)  # two new images a class (10.png, 11.png)
    for path in (tmp_path / "more").rglob("1[01].png"):
        shutil.copy(path, data / path.parent.name / path.name)
    gone = sorted(validated)[0]
    Path(gone).unlink()
    with caplog.at_level(logging.INFO, logger="cnnapps"):
        train_classifier(tiny_config(data, out, epochs=2, resume=True))
    training, validation = splits[-1]
    assert validated - {gone} <= validation and not training & validated
    new = {str(p) for p in data.rglob("1[01].png")}
    assert len(validation - validated) == 3 and validation - validated <= new and new - validation <= training
    said = caplog.text
    assert f"{data}: 6 images new since the run began: 3 to training, 3 to validation (the run's split is kept)" in said
    assert f"{data}: 1 image of the run's split gone since it began, 1 of them validation images: dropped" in said
