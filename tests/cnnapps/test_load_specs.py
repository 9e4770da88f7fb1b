"""``cnnapps.load``: a spec that names a missing file or a folder is one line saying so, and threads loading the
same model at once share one predictor."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import cnnapps
from cnnapps import api
from cnnapps.errors import CnnappsError


@pytest.mark.parametrize("spec", ["missing.pt", "missing.pth", "missing.onnx", "runs/missing", "missing.safetensors"])
def test_a_missing_file_is_one_line_saying_so(spec: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CnnappsError) as caught:
        cnnapps.load(spec)
    assert str(caught.value) == f"{spec}: model file not found"


def test_a_folder_is_one_line_naming_the_model_file_in_it(tmp_path: Path) -> None:
    with pytest.raises(CnnappsError) as caught:
        cnnapps.load(tmp_path)
    assert str(caught.value) == f"{tmp_path}: a folder, not a model file; pass {tmp_path / 'model.safetensors'}"


def test_registry_names_are_still_names() -> None:
    with pytest.raises(CnnappsError, match="efficientnet_lite9: unknown backbone; did you mean efficientnet_lite0"):
        cnnapps.load("efficientnet_lite9")
    with pytest.raises(CnnappsError, match="timm:nonexistent_net: not a timm model"):
        cnnapps.load("timm:nonexistent_net")


def test_threads_loading_the_same_model_at_once_share_one_predictor(monkeypatch) -> None:
    built, start = [], threading.Barrier(6)

    def slow_load(specs, task, **kwargs):
        built.append(object())
        threading.Event().wait(0.2)  # long enough for every thread to ask while the first one loads
        return type("Predictor", (), {})()

    monkeypatch.setattr(api, "_load", slow_load)
    got = []

    def ask(spec: str) -> None:
        start.wait()
        got.append((spec, cnnapps.load(spec, device="cpu")))

    threads = [threading.Thread(target=ask, args=(s,)) for s in ["model_a"] * 4 + ["model_b"] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 2  # one per model
    assert len({id(p) for s, p in got if s == "model_a"}) == 1 and len({id(p) for s, p in got if s == "model_b"}) == 1
    assert api._LOADING == {}


@pytest.mark.parametrize(("name", "task"), [("efficientnet_lite0", "detect"), ("resnet50", "semantic")])
def test_a_backbone_named_for_a_task_of_heads_is_called_a_backbone(name: str, task: str) -> None:
    # "unknown detect model": the name is known, as a trunk to train that task's heads on
    with pytest.raises(CnnappsError, match=rf"^{name}: a backbone, not a {task} model \(one of .* train {task} "
                                           rf"--backbone {name}\)$"):  # fmt: skip
        cnnapps.load(name, task=task)


@pytest.mark.parametrize("task", ["caption", "panoptic"])
def test_a_backbone_named_for_a_task_of_model_files_only_is_called_a_backbone(task: str) -> None:
    # it was "lenet5: model file not found": a task without named ready models says what its models are
    with pytest.raises(CnnappsError) as caught:
        cnnapps.load("lenet5", task=task)
    assert str(caught.value) == f"lenet5: a backbone, not a {task} model (its models are model files, made by " \
                                f"cnnapps train {task})"  # fmt: skip
