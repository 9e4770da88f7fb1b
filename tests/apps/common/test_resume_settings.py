"""A --resume continues a run with its own settings: those not given are the run's (a finished run trains nothing
more), one given otherwise that changes what is trained is a one-line error, a larger --epochs trains on."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import yaml

from cnnapps.apps.classify.train import train_classifier
from cnnapps.apps.common.config import ConfigError

TINY = ("--backbone", "lenet5", "--weights", "none", "--batch-size", "8", "--workers", "0", "--device", "cpu")


def _settings(out: Path) -> dict:
    return yaml.safe_load((out / "config.yaml").read_text())


def test_a_resume_takes_the_settings_it_is_not_given_from_the_run(
    run_cli, colour_set: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1 epoch with creative augmentation, then --resume without --epochs and --augment: the finished run trains
    nothing more (not the command line's default of 10 epochs, with the default augmentation)."""
    out = tmp_path / "run"
    code, _, err = run_cli("train", "classify", "--data", colour_set, *TINY, "--input-size", "32", "--epochs", "1",
                           "--augment", "creative", "--out", out)  # fmt: skip
    assert code == 0, err
    model = (out / "model.safetensors").read_bytes()
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with caplog.at_level(logging.INFO, logger="cnnapps"):
        code, printed, err = run_cli("train", "classify", "--data", colour_set, "--input-size", "32", "--resume",
                                     "--out", out)  # fmt: skip
    assert code == 0, err
    assert f"{out}: the run has trained its 1 epoch; it is finished, nothing more to train" in caplog.text
    # the folder stays as it was: no metrics.json or curves rewritten, no new logs/version_N
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["version_0"]
    assert f"{out}: finished before; nothing written" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and [h["epoch"] for h in metrics["history"]] == [1]
    settings = _settings(out)
    assert (settings["epochs"], settings["augment"], settings["backbone"]) == (1, "creative", "lenet5")
    assert (out / "model.safetensors").read_bytes() == model


def test_a_resume_given_other_settings_of_what_is_trained_is_one_line(run_cli, colour_set, tmp_path) -> None:
    out = tmp_path / "run"
    code, _, err = run_cli("train", "classify", "--data", colour_set, *TINY, "--epochs", "1", "--augment", "creative",
                           "--out", out)  # fmt: skip
    assert code == 0, err
    before = (out / "config.yaml").read_text()
    refused = [("--augment", "default", "augment", "'creative'"), ("--lr", "0.5", "lr", "the default (0.001)"),
               ("--input-size", "48", "input_size", "the default")]  # fmt: skip
    for option, given, name, run in refused:
        code, _, err = run_cli("train", "classify", option, given, "--resume", "--out", out)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert f"{name}: the run in {out} trains with {run}, not " in lines[0]
        assert given in lines[0] and "--resume keeps the run's settings" in lines[0]
    assert (out / "config.yaml").read_text() == before and len(list((out / "logs").iterdir())) == 1
    # a larger --epochs trains on, with the run's other settings
    code, _, err = run_cli("train", "classify", "--epochs", "2", "--resume", "--out", out, "--json")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert (_settings(out)["epochs"], _settings(out)["augment"]) == (2, "creative")


def test_training_a_config_of_other_settings_on_resume_is_refused(colour_set: Path, tmp_path: Path,
                                                                  tiny_config) -> None:  # fmt: skip
    """Every value of a config made otherwise than by load_config counts as given: training checks it too."""
    out = tmp_path / "run"
    train_classifier(tiny_config(colour_set, out, epochs=1))
    config = dataclasses.replace(tiny_config(colour_set, out, epochs=1, resume=True), augment="default")
    with pytest.raises(ConfigError) as caught:
        train_classifier(config)
    assert str(caught.value).startswith(f"augment: the run in {out} trains with 'none', not 'default'")
    assert len(list((out / "logs").iterdir())) == 1


def test_settings_as_python_gives_them_resume_as_written(colour_set: Path, tmp_path: Path, tiny_config) -> None:
    """Paths and tuples (config.yaml holds text and lists) are the same settings on a resume from Python."""
    from cnnapps.apps.common.config import resumed_settings, write_config

    out = tmp_path / "run"
    out.mkdir()
    config = dataclasses.replace(tiny_config(colour_set, out), data=Path(colour_set), out=out,
                                 backbone_kwargs={"in_channels": 3, "sizes": (1, 2)})  # fmt: skip
    write_config(config, out / "config.yaml")
    assert _settings(out)["data"] == str(colour_set) and _settings(out)["backbone_kwargs"]["sizes"] == [1, 2]
    again = resumed_settings(dataclasses.replace(config, resume=True))
    assert again.backbone_kwargs == {"in_channels": 3, "sizes": (1, 2)}  # nothing refused, nothing taken


def test_a_resume_of_another_tasks_run_is_refused_up_front(run_cli, colour_set: Path, tmp_path: Path) -> None:
    """The run's config.yaml names its task (an older version's names none: its model file's head tells): a
    resume as another task is one line naming the folder and both tasks, and leaves the folder as it was."""
    from cnnapps.apps.classify.config import ClassifyConfig
    from cnnapps.apps.common.config import load_config
    from cnnapps.apps.retrieve.config import RetrieveConfig

    out = tmp_path / "run"
    code, _, err = run_cli("train", "classify", "--data", colour_set, *TINY, "--epochs", "1", "--out", out)
    assert code == 0, err
    written = _settings(out)
    older = {k: v for k, v in written.items() if k != "task"}
    message = (f"error: {out}: holds a classify run, not a retrieve one; resume it with `cnnapps train classify "
               f"--resume --out {out}`, or pass another --out")  # fmt: skip
    for settings in (older, written):
        (out / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
        files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        for given in ((), ("--data", colour_set)):
            code, _, err = run_cli("train", "retrieve", *given, "--resume", "--out", out)
            assert code == 2 and [line for line in err.splitlines() if line.strip()] == [message], err
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    assert written["task"] == "classify"
    # as a recipe, the run's config.yaml serves its own task (its task: is no setting), not another
    assert load_config(out / "config.yaml", ClassifyConfig).backbone == "lenet5"
    with pytest.raises(ConfigError, match=r"config.yaml: the settings of a classify run, not of a retrieve one$"):
        load_config(out / "config.yaml", RetrieveConfig)


def test_a_resume_may_give_a_semantic_runs_class_list_anew(tmp_path: Path) -> None:
    """The class list is a file of the data, as --data is a folder: where the data moved, a resume gives both anew
    (a list of another length is refused by the checkpoint, whose head does not fit it)."""
    from cnnapps.apps.common.config import load_config, write_config
    from cnnapps.apps.semantic.config import SemanticConfig

    out = tmp_path / "run"
    out.mkdir()
    old = tmp_path / "old"
    write_config(SemanticConfig(data=str(old), classes=str(old / "classes.txt"), backbone="lenet5", epochs=1,
                                out=str(out)), out / "config.yaml")  # fmt: skip
    moved = {"data": str(tmp_path / "new"), "classes": str(tmp_path / "new" / "classes.txt")}
    again = load_config(None, SemanticConfig, **moved, out=str(out), resume=True)
    assert (again.data, again.classes, again.backbone, again.epochs) == (*moved.values(), "lenet5", 1)


def test_a_lite0_run_records_its_padding_and_one_from_before_resumes_in_its_own(tmp_path: Path) -> None:
    """A run's settings name the network it trains: Lite0's padding is made explicit ("same"; "symmetric" from a local
    weights file), and a run whose config.yaml records none (written before) resumes in the symmetric network it
    began in, not in the new default (its checkpoint's tensors fit both)."""
    from cnnapps.apps.classify.config import ClassifyConfig
    from cnnapps.apps.common.config import resumed_settings

    assert ClassifyConfig(data="d").validate().backbone_kwargs == {"padding": "same"}
    own = ClassifyConfig(data="d", weights=str(tmp_path / "timm-lite0.safetensors")).validate()
    assert own.backbone_kwargs == {"padding": "symmetric"}
    assert ClassifyConfig(data="d", backbone="resnet18").validate().backbone_kwargs == {}
    out = tmp_path / "run"
    out.mkdir()
    settings = {"task": "classify", "data": "d", "backbone": "efficientnet_lite0", "backbone_kwargs": {}}
    (out / "config.yaml").write_text(yaml.safe_dump(settings))
    resumed = resumed_settings(ClassifyConfig(data="d", out=str(out), resume=True), given={"data", "out", "resume"})
    assert resumed.validate().backbone_kwargs == {"padding": "symmetric"}
