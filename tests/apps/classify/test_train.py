from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cnnapps.apps.classify.model import load_classifier
from cnnapps.apps.classify.train import train_classifier
from cnnapps.apps.common.config import ConfigError, load_config
from cnnapps.errors import CnnappsError


def test_run_folder_has_everything(trained) -> None:
    out, metrics = trained
    for name in ("model.safetensors", "metrics.json", "curves.png", "confusion_matrix.png", "config.yaml"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert len(list((out / "logs").rglob("metrics.csv"))) == 1
    assert any((out / "logs").rglob("events.out.tfevents*"))
    written = json.loads((out / "metrics.json").read_text())
    for key in ("val_top1", "val_top5", "val_loss", "epochs"):
        assert key in written
    assert written["epochs"] == 4 and len(written["history"]) == 4
    assert metrics["val_top1"] >= 0.9  # three colours are easy
    assert metrics["val_top5"] == 1.0
    assert sorted(written["per_class"]) == ["blue", "green", "red"]


def test_model_file_describes_itself(trained, colour_set: Path) -> None:
    out, _ = trained
    loaded = load_classifier(out / "model.safetensors")
    assert loaded.class_names == ["blue", "green", "red"]
    assert loaded.meta["trunk"]["name"] == "lenet5"
    assert loaded.preprocess.input_size == (3, 32, 32)
    assert loaded.meta["trunk"]["kwargs"] == {"in_channels": 3}
    assert loaded.meta["trunk"]["fingerprint"].startswith("sha256:")
    assert loaded.meta["task"] == "classify" and loaded.meta["kind"] == "linear"
    assert loaded.meta["metrics"]["val_top1"] >= 0.9
    from cnnapps.api import load

    results = load(out / "model.safetensors").predict(sorted((colour_set / "red").glob("*.png"))[:3])
    assert [r.top1.label for r in results] == ["red"] * 3


def test_existing_run_is_not_overwritten(trained, colour_set: Path, tiny_config) -> None:
    out, _ = trained
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(CnnappsError, match="already holds a training run"):
        train_classifier(tiny_config(colour_set, out))
    assert (out / "model.safetensors").read_bytes() == before


def test_resume_continues_from_the_last_checkpoint(colour_set: Path, tmp_path: Path, tiny_config) -> None:
    out = tmp_path / "run"
    first = train_classifier(tiny_config(colour_set, out, epochs=1))
    assert first["epochs"] == 1
    second = train_classifier(tiny_config(colour_set, out, epochs=2, resume=True))
    assert [h["epoch"] for h in second["history"]] == [1, 2]
    assert len(list((out / "logs").rglob("metrics.csv"))) == 2  # the first run's log is kept
    settings = (out / "config.yaml").read_text()
    assert "epochs: 2" in settings  # the resumption's settings, once its checkpoint loaded
    with pytest.raises(CnnappsError, match="nothing to resume"):
        train_classifier(tiny_config(colour_set, tmp_path / "empty", resume=True))
    with pytest.raises(ConfigError) as caught:  # another backbone: one line naming it, not torch's list of tensors
        train_classifier(tiny_config(colour_set, out, epochs=3, resume=True, backbone="timm:test_resnet"))
    assert str(caught.value).startswith(f"backbone: the run in {out} trains with 'lenet5', not 'timm:test_resnet'")
    assert "\n" not in str(caught.value)
    assert (out / "config.yaml").read_text() == settings  # the file the error points to keeps the run's settings


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_a_resume_given_more_epochs_follows_the_longer_schedule(colour_set, tmp_path, tiny_config, schedule) -> None:
    """1 epoch, then --resume with --epochs 4: the epochs added train at the lrs of a 4-epoch run (the schedule
    was kept at 1 epoch: cosine trained them at 0, 0.01, 0), and each epoch's history lr is the one it trained at."""
    fresh = train_classifier(tiny_config(colour_set, tmp_path / "fresh", epochs=4, schedule=schedule))
    want = {"cosine": [0.01, 0.01 * (1 + math.cos(math.pi / 4)) / 2, 0.005, 0.01 * (1 + math.cos(3 * math.pi / 4)) / 2],
            "step": [0.01, 0.001, 0.0001, 0.00001]}[schedule]  # fmt: skip
    assert [h["lr"] for h in fresh["history"]] == pytest.approx(want)
    train_classifier(tiny_config(colour_set, tmp_path / "run", epochs=1, schedule=schedule))
    longer = train_classifier(tiny_config(colour_set, tmp_path / "run", epochs=4, schedule=schedule, resume=True))
    assert [h["lr"] for h in longer["history"]] == pytest.approx(want)


def test_csv_and_train_val_layouts(colour_set: Path, tmp_path: Path, tiny_config) -> None:
    rows = ["path,label"] + [f"{p},{p.parent.name}" for p in sorted(colour_set.rglob("*.png"))]
    (tmp_path / "list.csv").write_text("\n".join(rows))
    metrics = train_classifier(tiny_config(tmp_path / "list.csv", tmp_path / "csv_run", epochs=1))
    assert metrics["class_names"] == ["blue", "green", "red"]
    assert metrics["train_images"] + metrics["val_images"] == 30


def test_sgd_plateau_and_freeze(colour_set: Path, tmp_path: Path, tiny_config) -> None:
    config = tiny_config(colour_set, tmp_path / "sgd", epochs=2, optimizer="sgd", schedule="plateau", freeze=1)
    metrics = train_classifier(config)
    assert len(metrics["history"]) == 2 and metrics["history"][0]["lr"] == pytest.approx(0.01)


def test_config_files_and_their_errors(tmp_path: Path) -> None:
    config = tmp_path / "recipe.yaml"
    config.write_text("data: somewhere\nepochs: 3\noptimizer: sgd\n")
    loaded = load_config(config, epochs=5)
    assert (loaded.data, loaded.epochs, loaded.optimizer, loaded.learning_rate) == ("somewhere", 5, "sgd", 0.01)
    config.write_text("data: somewhere\nepoch: 3\n")
    with pytest.raises(ConfigError, match="unknown settings epoch \\(did you mean epochs\\?\\)"):
        load_config(config)
    with pytest.raises(ConfigError, match="schedule"):
        load_config(None, data="x", schedule="linear")
    with pytest.raises(ConfigError, match="data: required"):
        load_config(None)


@pytest.mark.parametrize("name", ["default.yaml", "alexnet_recipe.yaml", "digits.yaml"])
def test_shipped_recipes_are_valid(name: str) -> None:
    root = Path(__file__).resolve().parents[3]
    config = load_config(root / "configs" / "classify" / name, data="anything")
    assert config.epochs >= 1


def test_a_run_without_a_terminal_logs_a_line_per_epoch(colour_set: Path, tmp_path: Path, tiny_config, caplog) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="cnnapps"):
        train_classifier(tiny_config(colour_set, tmp_path / "logged", epochs=2))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1 of 2", "epoch 2 of 2"]
    assert all("train_loss" in line and "val_top1" in line for line in lines)


def test_the_epochs_top1_is_the_share_of_images_right_as_in_metrics_json(tmp_path: Path, tiny_config) -> None:
    """Validation classes of 3, 3 and 1 images: the top-1 each epoch is logged with (and the best epoch chosen by)
    is the share of images right, the number metrics.json reports, not the mean over classes."""
    from tests.conftest import write_colour_set

    write_colour_set(tmp_path / "data" / "train", per_class=6, seed=0)
    write_colour_set(tmp_path / "data" / "val", per_class=3, seed=1)
    for name in ("01.png", "02.png"):
        (tmp_path / "data" / "val" / "red" / name).unlink()
    metrics = train_classifier(tiny_config(tmp_path / "data", tmp_path / "run", epochs=2, lr=1e-4))
    best = metrics["history"][metrics["best_epoch"] - 1]
    assert metrics["val_images"] == 7
    assert best["val_top1"] == pytest.approx(metrics["val_top1"], abs=1e-6)
    assert metrics["selected_by"]["value"] == pytest.approx(metrics["val_top1"], abs=1e-6)
