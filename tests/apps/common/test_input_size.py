"""An ``--input-size`` too small for the backbone's kernels and pools is refused at set-up in one line (it was a raw
torch error in the first training step), by one image's pass through the backbone."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from cnnapps.apps.classify.config import ClassifyConfig
from cnnapps.apps.common.config import ConfigError
from cnnapps.apps.common.training import backbone_for


def config(backbone: str, size: int) -> ClassifyConfig:
    return ClassifyConfig(data="x", backbone=backbone, weights="none", input_size=size)


@pytest.mark.parametrize(("backbone", "size", "smallest"), [("lenet5", 16, 32), ("alexnet", 32, 63)])
def test_a_size_too_small_for_the_backbone_is_refused_with_the_smallest_it_takes(
    backbone: str, size: int, smallest: int
) -> None:
    with pytest.raises(ConfigError) as caught:
        backbone_for(config(backbone, size))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"input_size {size}: {backbone} cannot take images this small (")
    assert message.endswith(f"); the smallest size it takes is {smallest}")
    backbone_for(config(backbone, smallest))  # which it does
    with pytest.raises(ConfigError):
        backbone_for(config(backbone, smallest - 1))


def test_a_size_the_backbone_takes_is_kept_and_leaves_the_backbone_as_it_was() -> None:
    backbone, spec = backbone_for(config("resnet18", 16))
    assert spec.input_size == (3, 16, 16) and backbone.training
    frozen = ClassifyConfig(data="x", backbone="resnet18", weights="none", input_size=16, freeze=2)
    backbone, _ = backbone_for(frozen)
    assert backbone.frozen_stages == 2


def test_the_command_line_refuses_it_before_any_training_output(run_cli, tmp_path: Path) -> None:
    import cv2

    data = tmp_path / "data"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        for i in range(4):
            pixels = np.random.default_rng(i).integers(0, 255, (20, 20, 3), dtype=np.uint8)
            cv2.imwrite(str(data / label / f"{i}.png"), pixels)
    out = tmp_path / "run"
    options = ["--backbone", "lenet5", "--weights", "none", "--input-size", 16, "--epochs", 1, "--workers", 0]
    code, stdout, err = run_cli("train", "classify", "--data", data, *options, "--device", "cpu", "--out", out)
    assert code == 2 and stdout == "" and not out.exists()
    assert re.fullmatch(r"error: input_size 16: lenet5 cannot take images this small \(.+\); the smallest size it "
                        r"takes is 32\n", err), err  # fmt: skip
