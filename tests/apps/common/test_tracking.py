"""Experiment trackers (``--logger``): MLflow records the settings, the epochs and the final files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnnapps.apps.common.config import ConfigError


def test_mlflow_run_has_params_metrics_and_artifacts(colour_set: Path, tmp_path: Path, tiny_config,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from mlflow.tracking import MlflowClient

    from cnnapps.apps.classify.train import train_classifier

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    metrics = train_classifier(tiny_config(colour_set, out, epochs=1, logger="csv,mlflow", experiment="colours"))
    client = MlflowClient((out / "mlruns").resolve().as_uri())  # the default store: under the run folder
    experiment = client.get_experiment_by_name("colours")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["backbone"] == "lenet5" and float(run.data.params["lr"]) == 0.01
    assert run.data.params["epochs"] == "1" and run.data.params["logger"] == "csv,mlflow"
    (epoch,) = client.get_metric_history(run.info.run_id, "val_top1")  # one value per epoch
    assert epoch.value == pytest.approx(metrics["history"][0]["val_top1"])
    assert run.data.metrics["final_val_top1"] == pytest.approx(metrics["val_top1"])
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.safetensors", "metrics.json"} <= files
    local = Path(client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path)))
    assert json.loads(local.read_text())["val_top1"] == metrics["val_top1"]
    assert list((out / "logs").rglob("metrics.csv")) and not list((out / "logs").rglob("events.out.tfevents*"))


def test_logger_names_are_checked(colour_set: Path, tmp_path: Path, tiny_config) -> None:
    with pytest.raises(ConfigError, match=r"^logger: neptune is not one of csv, tensorboard, mlflow, wandb"):
        tiny_config(colour_set, tmp_path, logger="csv,neptune")
    assert tiny_config(colour_set, tmp_path, logger="none").loggers == ()
    assert tiny_config(colour_set, tmp_path).loggers == ("csv", "tensorboard")


def test_wandb_asked_for_but_not_installed(colour_set: Path, tmp_path: Path, tiny_config,
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^logger: wandb is not installed \(pip install wandb\)"):
        tiny_config(colour_set, tmp_path, logger="wandb")
