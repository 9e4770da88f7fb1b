"""Experiment trackers (``--logger``): MLflow and W&B record the settings, the epochs and the final files."""

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


def test_a_second_run_in_one_process_logs_to_its_own_store(colour_set: Path, tmp_path: Path, tiny_config,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """MLflow set $MLFLOW_TRACKING_URI to the first run's store, and the second run (a k-fold's next fold, a search's
    next trial) logged there, its own OUT/mlruns left empty."""
    import os

    from cnnapps.apps.classify.train import train_classifier

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("first", "second"):
        train_classifier(tiny_config(colour_set, tmp_path / name, epochs=1, logger="mlflow"))
        assert list((tmp_path / name / "mlruns").glob("*/*/metrics/val_top1")), name
    assert "MLFLOW_TRACKING_URI" not in os.environ


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


def test_wandb_run_offline_has_params_metrics_and_files(colour_set: Path, tmp_path: Path, tiny_config,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """No API key: the W&B run is written offline to OUT/wandb (``wandb sync`` uploads it later) with the settings,
    the last epoch's metrics and the final scores in its summary, and the model file and metrics.json saved."""
    import wandb

    from cnnapps.apps.classify.train import train_classifier

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc from `wandb login`
    seen: dict = {}
    real_finish = wandb.finish

    def finish(*args, **kwargs):  # what the run holds when cnnapps closes it
        seen.update(summary=dict(wandb.run.summary), config=dict(wandb.run.config), offline=wandb.run.offline,
                    project=wandb.run.project)  # fmt: skip
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(wandb, "finish", finish)
    out = tmp_path / "run"
    metrics = train_classifier(tiny_config(colour_set, out, epochs=1, logger="csv,wandb", experiment="colours"))
    assert seen["offline"] and seen["project"] == "colours"
    assert seen["config"]["backbone"] == "lenet5" and float(seen["config"]["lr"]) == 0.01
    assert seen["summary"]["val_top1"] == pytest.approx(metrics["history"][0]["val_top1"])
    assert seen["summary"]["final_val_top1"] == pytest.approx(metrics["val_top1"])
    (run,) = (out / "wandb").glob("offline-run-*")
    assert list(run.glob("run-*.wandb"))
    saved = run / "files"
    assert json.loads((saved / "metrics.json").read_text())["val_top1"] == metrics["val_top1"]
    assert (saved / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
