"""A training run's folder over its life: started, interrupted, resumed (in place or moved), finished, refused."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from cnnapps.apps.classify.train import train_classifier
from cnnapps.apps.common.config import ConfigError
from cnnapps.apps.common.kfold import cross_validate
from cnnapps.apps.common.training import SECONDS_KEY
from cnnapps.errors import CnnappsError
from tests.conftest import write_colour_set


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and exc.value.exit_code == 2
    return text


def _best_checkpoint_epoch(out: Path) -> int:
    return torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["epoch"] + 1


def test_a_moved_run_folder_resumes_as_it_would_in_place(colour_set: Path, tmp_path: Path, tiny_config) -> None:
    """The checkpoint keeps its folder's absolute path: a copy of the run resumed elsewhere keeps its best epoch
    (not the first resumed one), and leaves the original folder's files alone. The resumed run's training time is the
    whole run's, as its optimiser steps and history are: the checkpoint's seconds and this session's."""
    first = tmp_path / "first"
    started = train_classifier(tiny_config(colour_set, first, epochs=2))
    shutil.copytree(first, tmp_path / "copied")
    before = {p.name: p.read_bytes() for p in (first / "checkpoints").iterdir()}
    moved = train_classifier(tiny_config(colour_set, tmp_path / "copied", epochs=4, resume=True))
    assert {p.name: p.read_bytes() for p in (first / "checkpoints").iterdir()} == before
    trained = torch.load(first / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[SECONDS_KEY]
    assert 0 < trained <= started["train_seconds"]
    in_place = train_classifier(tiny_config(colour_set, first, epochs=4, resume=True))
    assert in_place["train_seconds"] >= trained + in_place["timing"]["epoch_seconds"]
    assert in_place["optimizer_steps"] == 2 * started["optimizer_steps"]
    assert moved["best_epoch"] == in_place["best_epoch"] == _best_checkpoint_epoch(tmp_path / "copied")
    assert _best_checkpoint_epoch(first) == in_place["best_epoch"]
    assert moved["selected_by"] == in_place["selected_by"]
    assert (tmp_path / "copied" / "model.safetensors").read_bytes() == (first / "model.safetensors").read_bytes()
    assert sorted(p.name for p in (tmp_path / "copied" / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    saved = torch.load(tmp_path / "copied" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    dirpaths = {state["dirpath"] for key, state in saved["callbacks"].items() if key.startswith("ModelCheckpoint")}
    assert dirpaths == {str((tmp_path / "copied" / "checkpoints").resolve())}


def test_retrieval_metrics_are_the_best_epochs(colour_set: Path, tmp_path: Path) -> None:
    from cnnapps.apps.common.config import load_config
    from cnnapps.apps.retrieve.config import RetrieveConfig
    from cnnapps.apps.retrieve.train import train_retrieval

    config = load_config(
        None, RetrieveConfig,
        data=str(colour_set), backbone="lenet5", weights="none", embedding_size=16, epochs=3, batch_size=8,
        workers=0, progress=False, augment="none", out=str(tmp_path / "run"), val_split=0.3, lr=0.1,
        device="cpu",  # the epochs' figures recorded on a CPU (a GPU's fp16 training takes another path)
    )  # fmt: skip
    metrics = train_retrieval(config)
    best = metrics["history"][metrics["best_epoch"] - 1]
    assert metrics["best_epoch"] != len(metrics["history"])  # otherwise the last epoch's values would do
    assert metrics["val_loss"] == best["val_loss"] and metrics["val_recall@1"] == best["val_recall@1"]


def test_a_tie_on_the_best_value_goes_to_the_lower_validation_loss(colour_set: Path, tmp_path: Path) -> None:
    """Three epochs of recall@1 1.0 (val_loss 64, 37, 31 on this seed): the best epoch is the third, the one the
    best checkpoint and metrics.json hold; the first of equals was kept before."""
    from cnnapps.apps.common.config import load_config
    from cnnapps.apps.retrieve.config import RetrieveConfig
    from cnnapps.apps.retrieve.train import train_retrieval

    config = load_config(
        None, RetrieveConfig,
        data=str(colour_set), backbone="lenet5", weights="none", embedding_size=16, epochs=3, batch_size=8,
        workers=0, progress=False, augment="none", out=str(tmp_path / "run"), val_split=0.3, lr=0.01, device="cpu",
    )  # fmt: skip
    metrics = train_retrieval(config)
    recalls = [h["val_recall@1"] for h in metrics["history"]]
    losses = [h["val_loss"] for h in metrics["history"]]
    assert len(set(recalls)) == 1 and losses == sorted(losses, reverse=True)  # the case: a tie, the loss falling
    assert metrics["best_epoch"] == 3 and metrics["val_loss"] == losses[-1]
    saved = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == 2  # Lightning counts from 0


def test_epoch_rank_orders_by_the_value_then_the_loss() -> None:
    from cnnapps.apps.common.training import best_epoch, newest_is_best

    history = [
        {"epoch": 1, "val_top1": 0.9, "val_loss": 0.3},
        {"epoch": 2, "val_top1": 0.9, "val_loss": 0.1},
        {"epoch": 3, "val_top1": 0.9, "val_loss": 0.1},
        {"epoch": 4, "val_top1": float("nan"), "val_loss": 0},
    ]
    assert best_epoch(history, "val_top1")["epoch"] == 2  # the lower loss; the earliest of full equals; NaN lowest
    assert not newest_is_best(history, "val_top1") and newest_is_best(history[:2], "val_top1")
    # where the run chose between two sets of weights, the chosen ones' loss breaks the tie
    chosen = [
        {"epoch": 1, "val_select_top1": 1.0, "val_select_loss": 0.05, "val_loss": 0.5},
        {"epoch": 2, "val_select_top1": 1.0, "val_select_loss": 0.2, "val_loss": 0.2},
    ]
    assert best_epoch(chosen, "val_select_top1")["epoch"] == 1
    assert best_epoch([{"epoch": 1}], "val_top1")["epoch"] == 1 and best_epoch([], "val_top1") == {}


def test_kfold_resume_refuses_a_folder_of_one_run(colour_set: Path, tmp_path: Path, tiny_config) -> None:
    out = tmp_path / "run"
    train_classifier(tiny_config(colour_set, out, epochs=1))
    model = (out / "model.safetensors").read_bytes()
    with pytest.raises(CnnappsError) as caught:
        cross_validate("classify", tiny_config(colour_set, out, epochs=1, resume=True), 2)
    assert "not a k-fold" in _one_line(caught)
    assert (out / "model.safetensors").read_bytes() == model and not (out / "fold-1").exists()
    (out / "model.safetensors").unlink()  # an interrupted run: only its checkpoints
    for resume in (True, False):
        with pytest.raises(CnnappsError):
            cross_validate("classify", tiny_config(colour_set, out, epochs=1, resume=resume), 2)
    assert not (out / "fold-1").exists() and not (out / "model.safetensors").exists()


def test_freeze_beyond_the_backbones_stages_is_one_line(colour_set: Path, tmp_path: Path, run_cli) -> None:
    code, _, stderr = run_cli("train", "classify", "--data", colour_set, "--backbone", "lenet5", "--weights", "none",
                              "--freeze", 9, "--workers", 0, "--out", tmp_path / "run")  # fmt: skip
    assert code == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "freeze" in lines[0] and "9" in lines[0] and "Traceback" not in stderr


def test_a_backbone_argument_it_does_not_take_is_a_config_error(colour_set: Path, tmp_path: Path,
                                                               tiny_config) -> None:  # fmt: skip
    config = tiny_config(colour_set, tmp_path / "run", backbone_kwargs={"in_channels": 3, "foo": 1})
    with pytest.raises(ConfigError) as caught:
        train_classifier(config)
    assert "backbone_kwargs" in _one_line(caught) and "foo" in str(caught.value)


def test_resume_with_other_trained_parameters_is_one_line(colour_set: Path, tmp_path: Path, tiny_config) -> None:
    out = tmp_path / "run"
    train_classifier(tiny_config(colour_set, out, epochs=1))
    with pytest.raises(CnnappsError) as caught:  # --freeze changes what the optimiser's state is for
        train_classifier(tiny_config(colour_set, out, epochs=2, freeze=1, resume=True))
    assert _one_line(caught).startswith(f"freeze: the run in {out} trains with 0, not 1")
    (out / "config.yaml").unlink()  # without the run's settings, the checkpoint's tensors tell
    with pytest.raises(CnnappsError) as caught:
        train_classifier(tiny_config(colour_set, out, epochs=2, freeze=1, resume=True))
    assert "--resume with settings of another model" in _one_line(caught)


def test_resuming_a_run_that_stopped_early_trains_nothing_more(tmp_path: Path, tiny_config) -> None:
    data = write_colour_set(tmp_path / "data", per_class=6)
    files = sorted(data.rglob("*.png"))
    random.Random(0).shuffle(files)
    for i, path in enumerate(files):  # labels that mean nothing: validation stops improving after a few epochs
        path.rename(data / ["blue", "green", "red"][i % 3] / f"x{i:02d}.png")
    out = tmp_path / "run"
    # on a CPU: the finish's figures are measured again, and a GPU's fp16 gives other last digits in the file's header
    first = train_classifier(tiny_config(data, out, epochs=12, patience=1, device="cpu"))
    assert first["epochs"] < 12  # stopped early
    model, best = (out / "model.safetensors").read_bytes(), (out / "checkpoints" / "best.ckpt").read_bytes()
    again = train_classifier(tiny_config(data, out, epochs=12, patience=1, resume=True, device="cpu"))
    assert again["history"] == first["history"] and again["best_epoch"] == first["best_epoch"]
    assert (out / "model.safetensors").read_bytes() == model
    assert (out / "checkpoints" / "best.ckpt").read_bytes() == best
    assert json.loads((out / "metrics.json").read_text())["epochs"] == first["epochs"]


def test_out_naming_a_file_is_refused(colour_set: Path, tmp_path: Path, run_cli) -> None:
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    for out in (taken, taken / "run"):
        code, _, stderr = run_cli("train", "classify", "--data", colour_set, "--backbone", "lenet5", "--weights",
                                  "none", "--workers", 0, "--epochs", 1, "--out", out)  # fmt: skip
        assert code == 2, stderr
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "a file, not a folder" in lines[0] and "Traceback" not in stderr
    assert taken.read_text() == "mine"


def test_a_damaged_last_checkpoint_is_one_line(colour_set: Path, tmp_path: Path, tiny_config) -> None:
    out = tmp_path / "run"
    train_classifier(tiny_config(colour_set, out, epochs=1))
    last = out / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # cut short, as by a full disk
    damaged = last.read_bytes()
    with pytest.raises(CnnappsError) as caught:
        train_classifier(tiny_config(colour_set, out, epochs=2, resume=True))
    text = _one_line(caught)
    assert text.startswith(f"{last} is damaged") and text.endswith("cannot resume")
    assert last.read_bytes() == damaged


def test_the_epoch_training_loss_weights_steps_by_their_images(colour_set: Path, tmp_path: Path, tiny_config) -> None:
    """21 training images in batches of 8, 8 and 5: the history's train_loss is the logged epoch mean."""
    import csv

    metrics = train_classifier(tiny_config(colour_set, tmp_path / "run", epochs=2, logger="csv"))
    assert metrics["train_images"] == 21
    rows = [row for path in (tmp_path / "run" / "logs").rglob("metrics.csv") for row in csv.DictReader(path.open())]
    logged = [float(row["train_loss"]) for row in rows if row.get("train_loss")]
    assert [h["train_loss"] for h in metrics["history"]] == pytest.approx(logged, rel=1e-5)
