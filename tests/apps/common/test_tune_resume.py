"""``cnnapps tune --resume`` goes on only over the search space its study was made with."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnnapps.apps.classify.config import ClassifyConfig
from cnnapps.apps.common.config import ConfigError
from cnnapps.apps.common.tune import STUDY_NAME, Dimension, default_space, tune


def _base(colour_set: Path, batch_size: int) -> ClassifyConfig:
    return ClassifyConfig(data=str(colour_set), backbone="lenet5", weights="none", epochs=1, batch_size=batch_size,
                          lr=0.01, workers=0, augment="none", val_split=0.3, logger="none",
                          backbone_kwargs={"in_channels": 3})  # fmt: skip


def test_a_resume_with_another_space_is_refused_before_any_trial(colour_set: Path, tmp_path: Path) -> None:
    """A base recipe with another batch size gives other batch-size choices: one line naming the setting and both
    lists of choices (not Optuna's "CategoricalDistribution does not support dynamic value space"), and the study
    is left as it was."""
    out = tmp_path / "study"
    space = [Dimension("batch_size", choices=(4, 8))]
    tune("classify", _base(colour_set, 8), 1, out, space=space)
    journal = (out / "study.jsonl").read_bytes()
    with pytest.raises(ConfigError) as caught:
        tune("classify", _base(colour_set, 8), 2, out, space=[Dimension("batch_size", choices=(8, 16))], resume=True)
    assert str(caught.value) == (
        f"{out}: --resume: batch_size: the study searched {{4, 8}}, the settings now give {{8, 16}} (the base recipe "
        "or space changed); resume with the ones it was made with, or start a new study in another --out"
    )
    added = "lr: the study searched nothing (not searched), the settings now give 0.001..0.1 (log)"
    with pytest.raises(ConfigError, match=re.escape(added)):
        tune("classify", _base(colour_set, 8), 2, out, space=[*space, Dimension("lr", 1e-3, 0.1, log=True)],
             resume=True)  # fmt: skip
    assert (out / "study.jsonl").read_bytes() == journal
    assert not (out / "trial-1").exists()


def test_a_study_without_a_recorded_space_is_compared_with_its_trials(colour_set: Path, tmp_path: Path) -> None:
    """A study of an older version (no space recorded): the distributions its trials were drawn from."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    out = tmp_path / "study"
    out.mkdir()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(out / "study.jsonl")))
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="maximize")
    trial = study.ask()
    trial.suggest_categorical("batch_size", [2, 4, 8])  # what a base recipe of batch size 4 gave
    study.tell(trial, 0.5)
    journal = (out / "study.jsonl").read_bytes()
    base = _base(colour_set, 8)
    batch = next(d for d in default_space(base) if d.name == "batch_size")
    changed = "batch_size: the study searched {2, 4, 8}, the settings now give {4, 8, 16}"
    with pytest.raises(ConfigError, match=re.escape(changed)):
        tune("classify", base, 2, out, space=[batch], resume=True)
    assert (out / "study.jsonl").read_bytes() == journal


def test_a_resume_with_another_base_recipe_is_refused_before_any_trial(colour_set: Path, tmp_path: Path) -> None:
    """Other data or task options than the study's trials ran with: one line naming the setting and both values,
    and the study is left as it was; where and how the trials run (workers, trackers) may change."""
    import dataclasses

    out = tmp_path / "study"
    space = [Dimension("lr", 1e-3, 0.1, log=True)]
    base = dataclasses.replace(_base(colour_set, 8), ema=True)
    tune("classify", base, 1, out, space=space)
    journal = (out / "study.jsonl").read_bytes()
    other = str(tmp_path / "other")
    with pytest.raises(ConfigError) as caught:
        tune("classify", dataclasses.replace(base, data=other), 2, out, space=space, resume=True)
    assert str(caught.value) == (
        f"{out}: --resume: data: the study's trials ran with {str(colour_set)!r}, the settings now give {other!r} "
        "(the base recipe changed); resume with the one it was made with, or start a new study in another --out"
    )
    with pytest.raises(ConfigError, match=re.escape("ema: the study's trials ran with True, the settings now give "
                                                    "False")):  # fmt: skip
        tune("classify", dataclasses.replace(base, ema=False), 2, out, space=space, resume=True)
    with pytest.raises(ConfigError, match=re.escape("epochs: the study's trials ran with 1, the settings now give 2")):
        tune("classify", base, 2, out, space=space, epochs=2, resume=True)
    assert (out / "study.jsonl").read_bytes() == journal
    assert not (out / "trial-1").exists()
    result = tune("classify", dataclasses.replace(base, workers=1, logger="csv"), 1, out, space=space, resume=True)
    assert [row["trial"] for row in result["trials"]] == [0]


def test_a_study_without_a_recorded_base_recipe_resumes_and_records_it(colour_set: Path, tmp_path: Path) -> None:
    """A study of an older version (no base recipe recorded) goes on; the recipe it goes on with is kept from then."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from cnnapps.apps.common.tune import BASE_ATTR

    out = tmp_path / "study"
    out.mkdir()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(out / "study.jsonl")))
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="maximize")
    trial = study.ask()
    trial.suggest_categorical("batch_size", [4, 8, 16])
    study.tell(trial, 0.5)
    space = [Dimension("batch_size", choices=(4, 8, 16))]
    result = tune("classify", _base(colour_set, 8), 2, out, space=space, resume=True)
    assert [row["state"] for row in result["trials"]] == ["complete", "complete"]
    recorded = optuna.load_study(study_name=STUDY_NAME, storage=storage).user_attrs[BASE_ATTR]
    assert recorded["data"] == str(colour_set) and "batch_size" not in recorded and "workers" not in recorded
