"""Hyper-parameter search (``cnnapps tune``): the space, the pruning callback, a two-trial study."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from cnnapps.apps.classify.config import ClassifyConfig
from cnnapps.apps.common.config import ConfigError, TrainConfig, load_config
from cnnapps.apps.common.tune import PruneOnEpoch, default_space, read_space


class FakeTrial:
    def __init__(self, prune: bool) -> None:
        self.prune, self.reports = prune, []

    def report(self, value: float, step: int) -> None:
        self.reports.append((step, value))

    def should_prune(self) -> bool:
        return self.prune


def test_pruning_callback_reports_each_epoch_and_prunes() -> None:
    import optuna

    module = SimpleNamespace(history=[{"epoch": 1, "val_top1": 0.5}, {"epoch": 2, "val_top1": 0.25}])
    keep = FakeTrial(prune=False)
    PruneOnEpoch(keep, "val_top1").on_train_epoch_end(None, module)
    assert keep.reports == [(2, 0.25)]
    with pytest.raises(optuna.TrialPruned, match=r"val_top1 0\.25 at epoch 2"):
        PruneOnEpoch(FakeTrial(prune=True), "val_top1").on_train_epoch_end(None, module)


def test_median_pruner_stops_a_trial_below_the_others() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    first = study.ask()
    first.report(0.9, 1)
    study.tell(first, 0.9)
    good, bad = study.ask(), study.ask()
    PruneOnEpoch(good, "val_top1").on_train_epoch_end(None, SimpleNamespace(history=[{"epoch": 1, "val_top1": 0.95}]))
    with pytest.raises(optuna.TrialPruned):
        PruneOnEpoch(bad, "val_top1").on_train_epoch_end(None, SimpleNamespace(history=[{"epoch": 1, "val_top1": 0.1}]))


def test_default_space_follows_the_config_fields() -> None:
    names = [d.name for d in default_space(ClassifyConfig(data="x", lr=0.01, batch_size=8))]
    assert names == ["lr", "weight_decay", "batch_size", "augment", "label_smoothing", "dropout", "freeze", "llrd"]
    space = {d.name: d for d in default_space(ClassifyConfig(data="x", lr=0.01, batch_size=8))}
    assert space["lr"].low == pytest.approx(0.001) and space["lr"].log and space["batch_size"].choices == (4, 8, 16)
    assert "llrd" not in {d.name for d in default_space(TrainConfig(data="x"))}  # only classify has llrd
    assert not {"freeze", "llrd"} & {d.name for d in default_space(ClassifyConfig(data="x", preset="small-data"))}
    from cnnapps.apps.detect.config import DetectConfig
    from cnnapps.apps.retrieve.config import RetrieveConfig

    for config in (DetectConfig(data="x", images="y"), RetrieveConfig(data="x")):  # settings their losses do not use
        assert not {"label_smoothing", "dropout"} & {d.name for d in default_space(config)}, type(config).__name__


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lrr: {low: 0.1, high: 1}", "lrr: not a setting of this task (did you mean lr?)"),
        ("lr: {low: 0.1, high: 0.01}", "lr: low (0.1) must be below high (0.01)"),
        ("lr: {low: 0, high: 0.1, log: true}", "lr: a log range must start above 0"),
        ("augment: {low: 0, high: 1}", "augment: not a number setting"),
        ("dropout: []", "dropout: an empty list of choices"),
        ("epochs: {low: 1.5, high: 3}", "epochs: an integer setting takes whole low and high"),
        # it gave a TypeError of dataclasses.replace, with the study's journal left behind
        ("out: [a, b]", "out: where and how the trials run (the same for every trial), not a setting to search"),
        ("resume: [true, false]", "resume: where and how the trials run"),
    ],
)
def test_bad_space_files_name_the_setting(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="^" + re.escape(f"{path}: {message}")):
        read_space(path, ClassifyConfig)


def test_two_trials_write_a_loadable_best_recipe(colour_set: Path, tmp_path: Path, run_cli,
                                                 caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    base, space_file, out = tmp_path / "base.yaml", tmp_path / "space.yaml", tmp_path / "study"
    base.write_text(yaml.safe_dump(dict(
        data=str(colour_set), backbone="lenet5", weights="none", epochs=3, batch_size=8, lr=0.01, workers=0,
        augment="none", val_split=0.3, backbone_kwargs={"in_channels": 3},
    )))  # fmt: skip
    space_file.write_text(
        "lr: {low: 0.001, high: 0.05, log: true}\ndropout: {low: 0.0, high: 0.3}\nbatch_size: [4, 8]\n"
    )
    args = ("tune", "classify", "--config", base, "--trials", 2, "--epochs", 1, "--space", space_file, "--out", out)
    code, stdout, stderr = run_cli(*args)
    assert code == 0, stderr
    assert "best: trial" in stdout and "trial 1 (2 of 2)" in caplog.text
    assert (out / "trial-0" / "metrics.json").is_file() and (out / "trial-1" / "metrics.json").is_file()
    best = load_config(out / "best.yaml", ClassifyConfig)
    assert 0.001 <= best.lr <= 0.05 and 0.0 <= best.dropout <= 0.3 and best.batch_size in (4, 8)
    assert best.epochs == 3 and best.out == str(out / "best") and best.data == str(colour_set)
    assert (out / "best.yaml").read_text().splitlines()[0].endswith("after 1 epoch; this recipe trains 3 epochs")
    assert best.weights is None and best.backbone_kwargs == {"in_channels": 3}  # the base recipe kept
    trials = json.loads((out / "trials.json").read_text())
    assert trials["metric"] == "val_top1" and [t["state"] for t in trials["trials"]] == ["complete", "complete"]
    winner = max(trials["trials"], key=lambda t: t["value"])
    assert best.lr == pytest.approx(winner["params"]["lr"])
    code, _, stderr = run_cli(*args)  # the study is there: continue it with --resume, or choose another --out
    assert code != 0 and "already holds a study" in stderr

    # a run killed mid-trial leaves that trial running in the study: a resume fails it and runs its settings again
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from cnnapps.apps.common.tune import STUDY_NAME

    study = optuna.load_study(
        study_name=STUDY_NAME, storage=JournalStorage(JournalFileBackend(str(out / "study.jsonl")))
    )
    cut = study.ask()
    cut_params = {"lr": cut.suggest_float("lr", 0.001, 0.05, log=True), "dropout": cut.suggest_float("dropout", 0, 0.3),
                  "batch_size": cut.suggest_categorical("batch_size", [4, 8])}  # fmt: skip
    caplog.clear()
    code, _, stderr = run_cli(*args[:5], 3, *args[6:], "--resume")
    assert code == 0, stderr
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert [t["state"] for t in trials][:3] == ["complete", "complete", "fail"]
    assert trials[3]["state"] in ("complete", "pruned")  # the median pruner may stop it (both happen here)
    assert trials[3]["params"] == pytest.approx(cut_params)
    assert "trial 2 was cut short" in caplog.text and "trial 3 (3 of 3)" in caplog.text


def test_a_pruned_trial_stops_its_training_run(colour_set: Path, tmp_path: Path, tiny_config) -> None:
    import optuna

    from cnnapps.apps.classify.train import train_classifier
    from cnnapps.apps.common.training import extra_callbacks

    trial = FakeTrial(prune=True)
    with extra_callbacks(lambda plan: PruneOnEpoch(trial, plan.best)), pytest.raises(optuna.TrialPruned):
        train_classifier(tiny_config(colour_set, tmp_path / "run", epochs=3))
    assert [step for step, _ in trial.reports] == [1]  # stopped after the first epoch's validation
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("augment: [foo, default]", "space: augment 'foo' is refused (augment: 'foo' is not one of"),
        ("batch_size: ['8', 16]", "space: batch_size '8' is refused (space: batch_size: expected an integer"),
        ("dropout: {low: 0.5, high: 2}", "space: dropout 2.0 is refused (dropout:"),
    ],
)
def test_values_no_trial_could_train_with_are_refused_before_the_study(colour_set: Path, tmp_path: Path, text: str,
                                                                       message: str) -> None:  # fmt: skip
    """A choice or an end of a range that the task refuses failed its trials one by one (or every trial, ending in
    "no trial finished"): refused before the study is made, nothing written."""
    from cnnapps.apps.common.tune import tune

    path = tmp_path / "space.yaml"
    path.write_text(text)
    base = ClassifyConfig(data=str(colour_set), backbone="lenet5", weights="none", epochs=1, workers=0)
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        tune("classify", base, 2, tmp_path / "study", space=read_space(path, ClassifyConfig))
    assert not (tmp_path / "study").exists()
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(Exception, match="afile"):
        tune("classify", base, 2, tmp_path / "afile", space=read_space(path, ClassifyConfig))
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_search_a_signal_stops_says_a_resume_runs_the_trial_again(
    colour_set: Path, tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial's training stopped by SIGTERM: the search ends with 143 and its own line (the trial's said to resume
    its checkpoint, which a search's resume does not read), and a --resume runs that trial's settings again."""
    import cnnapps.apps.classify.train as classify_train
    from cnnapps.errors import Interrupted

    base, out = tmp_path / "base.yaml", tmp_path / "study"
    base.write_text(yaml.safe_dump(dict(data=str(colour_set), backbone="lenet5", weights="none", epochs=1,
                                        batch_size=8, workers=0, augment="none", val_split=0.3,
                                        backbone_kwargs={"in_channels": 3})))  # fmt: skip

    def stopped(config: object) -> None:
        raise Interrupted(f"{out}/trial-0: training stopped by SIGTERM after 1 of 3 epochs, ...", "SIGTERM")

    args = ("tune", "classify", "--config", base, "--trials", 1, "--out", out)
    with monkeypatch.context() as patched:
        patched.setattr(classify_train, "train_classifier", stopped)
        code, _, stderr = run_cli(*args)
    assert code == 143
    said = f"{out}: the search stopped by SIGTERM in trial 0; the same command with --resume continues it (that "
    assert stderr.strip().splitlines()[-1] == said + "trial's settings run again)"
    code, _, stderr = run_cli(*args, "--resume")
    assert code == 0, stderr
    states = [t["state"] for t in json.loads((out / "trials.json").read_text())["trials"]]
    assert states == ["fail", "complete"]
