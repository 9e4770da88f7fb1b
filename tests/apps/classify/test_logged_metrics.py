"""The experiment trackers get every value of a run's epoch history (EMA, multi-label F1s, learning rate), once."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cnnapps.apps.classify.config import ClassifyConfig
from cnnapps.apps.common.config import load_config
from tests.apps.classify.test_multilabel import write_tagged_set


def _logged_epochs(out: Path) -> tuple[list[str], list[dict[str, float]]]:
    """metrics.csv's columns, and its values merged into one row per epoch."""
    with open(next((out / "logs").glob("version_*/metrics.csv"))) as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    epochs: dict[int, dict[str, float]] = {}
    for row in rows:
        epochs.setdefault(int(row["epoch"]), {}).update({k: float(v) for k, v in row.items() if v and k != "step"})
    return list(reader.fieldnames or []), [epochs[e] for e in sorted(epochs)]


@pytest.mark.parametrize("kind", ["single-label", "multi-label"])
def test_every_history_value_is_logged(kind: str, colour_set: Path, tmp_path: Path) -> None:
    from cnnapps.apps.classify.train import train_classifier

    data = colour_set if kind == "single-label" else write_tagged_set(tmp_path / "tagged")
    out = tmp_path / "run"
    config = load_config(None, ClassifyConfig, data=str(data), backbone="lenet5", weights="none", epochs=2,
                         batch_size=8, lr=0.01, workers=0, progress=False, augment="none", out=str(out),
                         val_split=0.3, ema=True, logger="csv", backbone_kwargs={"in_channels": 3})  # fmt: skip
    train_classifier(config)
    history = json.loads((out / "metrics.json").read_text())["history"]
    columns, logged = _logged_epochs(out)
    expected = {"lr", "val_ema_loss", "val_ema_top1", "val_ema_top5"} if kind == "single-label" else {
        "lr", "val_ema_map", "val_f1_micro", "val_f1_macro"}  # fmt: skip
    assert expected <= set(columns) and len(columns) == len(set(columns))
    assert set(history[0]) - {"epoch"} <= set(columns)
    assert len(logged) == len(history) == 2
    for row, epoch in zip(logged, history, strict=True):
        for key in expected:
            assert row[key] == pytest.approx(epoch[key], rel=1e-5), key
