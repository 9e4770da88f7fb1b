"""Loading a classifier: a graph traced on one image, memory and batch sizes checked at load, in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cnnapps
from cnnapps.apps.classify.model import LoadedClassifier
from cnnapps.apps.classify.predictor import ClassificationPredictor
from cnnapps.backbones.preprocess import Preprocess
from cnnapps.errors import CnnappsError


def _member(side: int = 16) -> LoadedClassifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    pre = Preprocess(input_size=(3, side, side), resize=side, resize_mode="squash")
    return LoadedClassifier("tiny.safetensors", net.eval(), ["a", "b", "c"], pre)


def test_the_graph_is_traced_and_warmed_on_one_image_and_runs_every_batch_size(monkeypatch) -> None:
    seen = []
    trace = torch.jit.trace
    monkeypatch.setattr(torch.jit, "trace", lambda model, example, **kw: seen.append(example.shape) or trace(
        model, example, **kw))  # fmt: skip
    member = _member()
    predictor = ClassificationPredictor([member], device="cpu", engine="jit", batch_size=4)
    assert predictor.engine == "jit" and seen == [torch.Size([1, 3, 16, 16])]
    images = [np.random.default_rng(i).integers(0, 255, (20, 24, 3), np.uint8) for i in range(7)]
    eager = ClassificationPredictor([member], device="cpu", engine="eager", batch_size=4)
    for count in (1, 3, 4, 7):
        assert np.abs(predictor.predict_proba(images[:count])[1] - eager.predict_proba(images[:count])[1]).max() < 1e-5


def test_running_out_of_memory_at_load_is_one_line_naming_the_file(monkeypatch) -> None:
    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 3221225472 bytes.\nError code 12")  # fmt: skip

    monkeypatch.setattr("cnnapps.apps.classify.predictor.prepare_runner", no_memory)
    with pytest.raises(CnnappsError) as caught:
        ClassificationPredictor([_member()], device="cpu")
    text = str(caught.value)
    assert text.startswith("tiny.safetensors: not enough memory for its input size (3, 16, 16)") and "\n" not in text


def test_the_tracer_running_out_of_memory_is_not_a_quiet_eager_run(monkeypatch) -> None:
    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 3221225472 bytes.")

    monkeypatch.setattr(torch.jit, "trace", no_memory)
    with pytest.raises(CnnappsError, match=r"tiny\.safetensors: not enough memory"):
        ClassificationPredictor([_member()], device="cpu", engine="auto")


@pytest.mark.parametrize("batch_size", [0, -1, "4", 2.5, True])
def test_a_batch_size_that_is_not_a_whole_number_of_at_least_1_is_one_line(batch_size) -> None:
    with pytest.raises(CnnappsError) as caught:
        ClassificationPredictor([_member()], device="cpu", batch_size=batch_size)
    assert str(caught.value) == f"batch_size={batch_size!r}: images per forward pass, a whole number of at least 1"


def test_a_batch_size_given_to_one_call_is_checked_too() -> None:
    predictor = ClassificationPredictor([_member()], device="cpu", engine="eager")
    image = np.zeros((20, 24, 3), np.uint8)
    with pytest.raises(CnnappsError, match=r"batch_size=0: images per forward pass"):  # it ran at the default
        predictor.predict([image], batch_size=0)
    assert predictor.predict([image, image, image], batch_size=2)[2].ok


@pytest.mark.parametrize("task", ["classify", "retrieve"])
def test_load_refuses_a_bad_batch_size_before_loading(task) -> None:
    with pytest.raises(CnnappsError, match=r"batch_size=0: images per forward pass"):
        cnnapps.load(task=task, batch_size=0)
    assert cnnapps.load("efficientnet_lite0", task=task, batch_size=np.int64(2), engine="eager").batch_size == 2
