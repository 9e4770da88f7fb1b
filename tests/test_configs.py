"""Every YAML recipe in configs/ loads and validates with its task's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnapps.apps.common.config import load_config
from cnnapps.apps.tasks import TASKS

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*/*.yaml"))


def _config_type(task: str) -> type:
    return TASKS[task].part("config")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_loads(recipe):
    import yaml

    task = recipe.parent.name
    given = yaml.safe_load(recipe.read_text())
    # recipes without data are used with --data on the command line
    config = load_config(recipe, _config_type(task), data=None if "data" in given else "DIR")
    assert config.data and config.epochs >= 1
    assert config.task_name == task


def test_there_are_recipes_for_the_tasks():
    assert {p.parent.name for p in RECIPES} >= {"classify", "segment", "pose", "caption"}
    assert {p.parent.name for p in RECIPES} <= set(TASKS)
