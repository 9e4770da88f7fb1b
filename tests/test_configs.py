"""Every YAML recipe in configs/ loads and validates with its task's settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cnnapps.apps.common.config import ConfigError, load_config
from cnnapps.apps.tasks import TASKS
from cnnapps.yamltext import load_yaml

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


def test_a_setting_given_twice_in_a_config_is_refused(tmp_path: Path) -> None:
    # YAML keeps the last of a repeated key: a recipe with epochs: 3 and, further down, epochs: 8 trained 8
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 3\nlr: 0.01\nepochs: 8\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: not valid YAML \('epochs' is given twice \(line 3\)\)"):
        load_config(path)
    path.write_text("epochs: 3\nlr: 0.01\n")
    assert load_config(path, data=str(tmp_path)).epochs == 3


def test_a_key_of_its_own_over_a_merged_one_is_not_given_twice() -> None:
    text = "defaults: &d {lr: 0.01, epochs: 3}\nrun:\n  <<: *d\n  epochs: 8\n"
    assert load_yaml(text)["run"] == {"lr": 0.01, "epochs": 8}  # what a merge is for
    assert load_yaml("0: a\n00: b\n", strings=True) == {"0": "a", "00": "b"}  # as strings, two keys
    with pytest.raises(yaml.YAMLError, match=r"^0 is given twice \(line 2\)"):
        load_yaml("0: a\n00: b\n")  # as numbers, one
