"""The classification losses' settings: class weights above 0, the weights a resumed run trains with (its own,
not its checkpoint's), and a validation loss without label smoothing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from cnnapps.apps.classify.balance import class_weights
from cnnapps.apps.common.config import ConfigError
from tests.apps.classify.test_training_options import classify_config


@pytest.mark.parametrize("text", ["red: 0\n", "red: -1\n"])
def test_a_class_weight_of_zero_or_less_is_refused_naming_file_and_class(tmp_path: Path, text: str) -> None:
    """A batch of weight-0 images alone makes the weighted cross-entropy 0/0 (NaN), and the NaN spreads."""
    path = tmp_path / "w.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        class_weights(str(path), [0, 1, 2], ["blue", "green", "red"])
    message = str(caught.value)
    assert message.startswith(f"class_weights: {path}: red: expected a weight above 0") and "\n" not in message
    assert "leave its images out of the data" in message


def test_a_resumed_run_trains_with_the_class_weights_its_settings_give(
    colour_set: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The weights given at --resume are the ones trained with (not the checkpoint's, as the loss's weight buffer
    used to be), and the run says they changed; so does a checkpoint of an older version that holds them."""
    import lightning as L

    from cnnapps.apps.classify.train import train_classifier
    from cnnapps.apps.common.training import extra_callbacks

    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("red: 0.5\n")
    second.write_text("red: 5\nblue: 3\n")
    out = tmp_path / "run"
    train_classifier(classify_config(colour_set, out, class_weights=str(first), logger="none"))
    last = out / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert "loss.weight" not in saved["state_dict"] and saved["cnnapps_loss"]["class weights"] == [1, 1, 0.5]
    # as an older version saved it: the weights in the state dict, no record of the settings
    saved["state_dict"]["loss.weight"] = torch.tensor([1.0, 1.0, 0.5])
    del saved["cnnapps_loss"]
    torch.save(saved, last)

    seen: list[list[float]] = []

    class FirstBatch(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if not seen:
                seen.append(module.loss.weight.tolist())

    with caplog.at_level(logging.INFO, logger="cnnapps"), extra_callbacks(lambda plan: FirstBatch()):
        train_classifier(
            classify_config(colour_set, out, epochs=2, class_weights=str(second), resume=True, logger="none")
        )
    assert seen == [[3.0, 1.0, 5.0]]
    assert ("--resume: training on with the class weights the settings give now (blue 3, green 1, red 5), "
            "not the checkpoint's (blue 1, green 1, red 0.5)") in caplog.text  # fmt: skip
    assert torch.load(last, weights_only=True)["cnnapps_loss"] == {"class weights": [3, 1, 5], "logit adjust": 0}


def test_the_logit_adjustment_of_a_resumed_run_is_its_settings_and_a_change_is_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from types import SimpleNamespace

    from tests.apps.classify.test_training_options import tiny_module

    prior = torch.tensor([10.0, 20.0, 70.0])
    before, _ = tiny_module(class_prior=prior, logit_adjust=1.0)
    checkpoint = {"state_dict": before.state_dict()}
    before.on_save_checkpoint(checkpoint)
    assert "logit_offset" not in checkpoint["state_dict"] and checkpoint["cnnapps_loss"]["logit adjust"] == 1.0
    after, _ = tiny_module(class_prior=prior, logit_adjust=2.0)
    callback = SimpleNamespace(dirpath="unused")
    after.trainer = SimpleNamespace(is_global_zero=True, checkpoint_callback=callback)  # what on_load reads
    with caplog.at_level(logging.INFO, logger="cnnapps"):
        after.on_load_checkpoint(checkpoint)
    after.load_state_dict(checkpoint["state_dict"])
    assert after.logit_offset.tolist() == pytest.approx((2 * (prior / 100).log()).tolist())
    assert "training on with the logit adjust the settings give now (2), not the checkpoint's (1)" in caplog.text


def test_the_validation_loss_is_unsmoothed_and_agrees_with_the_report(colour_set: Path, tmp_path: Path) -> None:
    """With label smoothing the epoch history's val_loss is the plain cross-entropy, as metrics.json's is (and
    as runs with other smoothing, e.g. the trials of a search, are compared by)."""
    from cnnapps.apps.classify.train import train_classifier

    metrics = train_classifier(classify_config(colour_set, tmp_path / "run", label_smoothing=0.3))
    assert metrics["history"][0]["val_loss"] == pytest.approx(metrics["val_loss"], rel=1e-4, abs=1e-6)
