"""Every YAML recipe in configs/ loads and validates with its task's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnapps.apps.common.training import load_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*/*.yaml"))


def _config_type(task: str) -> type:
    from cnnapps.apps.caption.train import CaptionConfig
    from cnnapps.apps.common.training import TrainConfig
    from cnnapps.apps.detect.train import DetectConfig
    from cnnapps.apps.retrieve.train import RetrieveConfig

    types = {"classify": TrainConfig, "retrieve": RetrieveConfig, "caption": CaptionConfig}
    return types.get(task, DetectConfig)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_loads(recipe):
    import yaml

    task = recipe.parent.name
    given = yaml.safe_load(recipe.read_text())
    # recipes without data are used with --data on the command line
    config = load_config(recipe, _config_type(task), data=None if "data" in given else "DIR")
    assert config.data and config.epochs >= 1
    if task in ("detect", "segment", "pose"):
        assert config.task == task


def test_there_are_recipes_for_the_tasks():
    assert {p.parent.name for p in RECIPES} >= {"classify", "segment", "pose", "caption"}
