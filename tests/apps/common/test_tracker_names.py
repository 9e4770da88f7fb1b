"""Metric names with "@" (retrieval's val_recall@1) reach the trackers as names they take."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_a_retrieval_run_logs_to_mlflow(colour_set: Path, tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from cnnapps.apps.common.config import load_config
    from cnnapps.apps.retrieve.config import RetrieveConfig
    from cnnapps.apps.retrieve.train import train_retrieval

    out = tmp_path / "run"
    config = load_config(None, RetrieveConfig, data=str(colour_set), backbone="lenet5", weights="none", epochs=1,
                         batch_size=8, workers=0, progress=False, augment="none", out=str(out), val_split=0.3,
                         logger="mlflow", backbone_kwargs={"in_channels": 3})  # fmt: skip
    train_retrieval(config)
    metrics = {p.name for p in out.glob("mlruns/*/*/metrics/*")}
    assert {"val_recall_at_1", "val_map_at_r", "lr", "final_val_recall_at_1"} <= metrics
