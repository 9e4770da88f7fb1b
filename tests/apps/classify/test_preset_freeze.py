"""``--preset more-data`` freezes the first half of the stages unless a freeze is given beside it (0 included)."""

from __future__ import annotations

import pytest

from cnnapps.apps.classify.config import ClassifyConfig
from cnnapps.apps.common.config import load_config


@pytest.mark.parametrize("given", [{}, {"freeze": 0}, {"freeze": 1}])
def test_a_freeze_given_beside_more_data_wins(given: dict[str, int]) -> None:
    from cnnapps.apps.classify.train import _apply_preset
    from cnnapps.apps.common.training import backbone_for

    config = load_config(None, ClassifyConfig, data="x", backbone="lenet5", weights="none", preset="more-data",
                         backbone_kwargs={"in_channels": 3}, **given)  # fmt: skip
    backbone, _ = backbone_for(config)
    line = _apply_preset(config, backbone)[0]
    stages = backbone.stage_parameters()
    frozen = given.get("freeze", len(stages) // 2)
    assert backbone.frozen_stages == frozen
    assert [all(not p.requires_grad for p in group) for group in stages] == [i < frozen for i in range(len(stages))]
    if frozen:
        assert line == f"preset more-data: stem and {frozen} of {len(stages)} stages frozen, llrd 0.5 on the rest"
    else:
        assert line == "preset more-data: nothing frozen (freeze 0), llrd 0.5 on every stage"
    assert config.freeze == given.get("freeze")  # what config.yaml records: given, or left to the preset
    assert load_config(None, ClassifyConfig, data="x").freeze == 0  # without the preset, not given is 0
