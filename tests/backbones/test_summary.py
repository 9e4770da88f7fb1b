from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnapps.backbones import create_backbone, summarize


@pytest.mark.parametrize("name", ["vgg16", "lenet5", "alexnet2012", "resnet18", "timm:resnet18", "googlenet"])
def test_parameter_totals_equal_the_real_count(name: str) -> None:
    model = create_backbone(name)
    result = summarize(model, 64 if name not in ("lenet5", "alexnet2012") else None)
    assert result.total_params == sum(p.numel() for p in model.parameters())
    assert sum(r.params for r in result.rows) == result.total_params


def test_vgg16_matches_the_lecture_table() -> None:
    result = summarize(create_backbone("vgg16"))
    assert result.total_params == 138_357_544
    rows = {r.name.split(".")[-1]: r for r in result.rows}
    assert rows["conv1_1"].output == (224, 224, 64) and rows["conv1_1"].params == 1_792
    assert rows["conv1_1"].activations == 224 * 224 * 64
    assert rows["pool1"].output == (112, 112, 64) and rows["pool1"].params == 0
    assert rows["conv5_3"].output == (14, 14, 512) and rows["conv5_3"].params == 2_359_808
    assert rows["fc6"].output == (1, 1, 4096) and rows["fc6"].params == 7 * 7 * 512 * 4096 + 4096
    assert rows["fc8"].output == (1, 1, 1000)
    assert not any("relu" in r.name for r in result.rows)  # element-wise layers add no row
    conv_and_pool = sum(r.activations for r in result.rows)
    assert result.total_activations == 224 * 224 * 3 + conv_and_pool
    assert result.forward_memory_mb == pytest.approx(result.total_activations * 4 / 1e6)
    assert 60 < result.forward_memory_mb < 62


def test_input_size_option_changes_volumes() -> None:
    result = summarize(create_backbone("resnet18"), 128)
    assert result.input_size == (3, 128, 128)
    assert result.rows[0].output == (64, 64, 64)


def test_parameters_unused_in_forward_are_still_counted() -> None:
    class WithSpare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.spare = nn.Linear(10, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    result = summarize(WithSpare(), (3, 8, 8))
    assert result.total_params == 3 * 4 * 9 + 4 + 110
    assert result.rows[-1].name == "(not used in forward)" and result.rows[-1].params == 110


def test_to_dict_is_json_ready() -> None:
    import json

    data = json.loads(json.dumps(summarize(create_backbone("lenet5")).to_dict()))
    assert data["total_params"] == 61_706
    assert data["layers"][0]["output"] == [28, 28, 6]
