"""Settings of ``cnnapps train detect|segment|pose`` that R-CNN training would not honour are refused up front."""

from __future__ import annotations

import pytest

from cnnapps.apps.common.config import ConfigError
from cnnapps.apps.detect.config import DetectConfig


@pytest.mark.parametrize("task", ["detect", "segment", "pose"])
def test_input_size_is_refused_pointing_to_the_resize_options(task, tmp_path):
    """R-CNN models resize images by --min-size and --max-size: --input-size trained at 800/1333 without a word."""
    config = DetectConfig(task=task, data=str(tmp_path / "train.json"), images=str(tmp_path), input_size=96)
    with pytest.raises(ConfigError) as caught:
        config.validate()
    assert str(caught.value) == (
        f"input_size: {task} models do not take it (--min-size and --max-size set the resize); leave input_size out"
    )
    trunk = DetectConfig(task=task, data=str(tmp_path / "train.json"), images=str(tmp_path), input_size=96,
                         trunk="resnet18")  # fmt: skip
    with pytest.raises(ConfigError, match=r"^input_size: .*a --trunk brings its own preprocessing"):
        trunk.validate()
    DetectConfig(task=task, data=str(tmp_path / "train.json"), images=str(tmp_path), min_size=96).validate()


def test_the_command_line_refuses_input_size_in_one_line(run_cli, tmp_path):
    code, _, err = run_cli("train", "segment", "--data", tmp_path / "train.json", "--images", tmp_path,
                           "--input-size", "96", "--out", tmp_path / "run")  # fmt: skip
    assert code == 2 and err.strip().count("\n") == 0 and "--min-size and --max-size" in err, err
    assert not (tmp_path / "run").exists()


def test_an_fpn_wider_than_a_model_file_may_hold_is_refused_before_training(tmp_path):
    """A file of more than 2,048 FPN channels is refused when read: training would write one no one could load."""
    config = DetectConfig(task="segment", data=str(tmp_path / "train.json"), images=str(tmp_path), fpn_channels=4096)
    with pytest.raises(ConfigError, match=r"^fpn_channels: must be between 1 and 2,048, not 4096$"):
        config.validate()
    DetectConfig(task="segment", data=str(tmp_path / "train.json"), images=str(tmp_path), fpn_channels=2048).validate()
