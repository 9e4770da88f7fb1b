"""``cnnapps.load`` checks its options against the task table: an option the task's predictor does not take is a
one-line error naming the model, the option and what the task takes (it was a raw TypeError from the predictor)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import cnnapps
from cnnapps.errors import CnnappsError


@pytest.fixture(scope="module")
def semantic_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cnnapps.apps.semantic.model import create_semantic, save_semantic
    from cnnapps.backbones.preprocess import Preprocess

    path = tmp_path_factory.mktemp("semantic") / "scenes.safetensors"
    model = create_semantic("fpn", "timm:test_resnet", class_names=["a", "b"], backbone_weights=None, head_channels=8)
    save_semantic(path, model.eval(), Preprocess(input_size=(3, 64, 64), resize=64))
    return path


def test_an_engine_a_task_does_not_run_on_is_refused_in_one_line(semantic_file: Path) -> None:
    from cnnapps.engines import EngineError

    with pytest.raises(EngineError) as caught:
        cnnapps.load(semantic_file, engine="jit")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{semantic_file}: engine='jit'")
    assert "semantic models run as they are (engine auto or eager)" in message
    assert "semantic takes device, head, batch_size, tile, overlap, max_pixels" in message
    with pytest.raises(EngineError, match=re.escape("deeplabv3_resnet50: engine='onnxruntime'")):
        cnnapps.load("deeplabv3_resnet50", engine="onnxruntime")  # refused before its weights are looked for


def test_an_option_a_task_does_not_take_is_refused_in_one_line(semantic_file: Path) -> None:
    with pytest.raises(CnnappsError) as caught:
        cnnapps.load(semantic_file, workers=1)
    assert str(caught.value) == (
        f"{semantic_file}: workers=1 is not an option of semantic models "
        "(semantic takes device, head, batch_size, tile, overlap, max_pixels)"
    )
    with pytest.raises(CnnappsError, match=r"^efficientnet_lite0: score_threshold=0\.3 is not an option of classify "):
        cnnapps.load("efficientnet_lite0", score_threshold=0.3)


@pytest.mark.parametrize("engine", ["auto", "eager"])
def test_auto_and_eager_load_a_model_that_only_runs_eagerly(semantic_file: Path, engine: str) -> None:
    predictor = cnnapps.load(semantic_file, engine=engine, device="cpu", batch_size=2)
    assert predictor.task == "semantic" and predictor.engine == "eager" and predictor.batch_size == 2


@pytest.fixture(scope="module")
def semantic_onnx(semantic_file: Path) -> Path:
    from cnnapps.export import export_model

    out = semantic_file.with_suffix(".onnx")
    export_model(semantic_file, "onnx", out)
    return out


@pytest.mark.parametrize("engine", ["eager", "jit", "compile", "openvino", "tensorrt"])
def test_an_exported_semantic_graph_refuses_engines_it_does_not_run_on(semantic_onnx: Path, engine: str) -> None:
    """It ran on onnxruntime whatever was asked (eager) or was refused as a model that runs "as it is"."""
    from cnnapps.api import load_heads
    from cnnapps.engines import EngineError

    expected = f"{semantic_onnx}: engine={engine!r}: an exported semantic graph runs on onnxruntime (engine auto or "
    for load in (cnnapps.load, load_heads):
        with pytest.raises(EngineError) as caught:
            load(semantic_onnx, engine=engine, device="cpu")
        assert "\n" not in str(caught.value) and str(caught.value).startswith(expected)


@pytest.mark.parametrize("engine", ["auto", "onnxruntime"])
def test_an_exported_semantic_graph_runs_on_onnxruntime(semantic_onnx: Path, engine: str) -> None:
    from cnnapps.api import load_heads

    predictor = cnnapps.load(semantic_onnx, engine=engine, device="cpu")
    assert predictor.task == "semantic" and predictor.engine == "onnxruntime"
    assert load_heads(semantic_onnx, engine=engine, device="cpu").engine == "onnxruntime"


def test_load_heads_refuses_an_engine_a_named_model_does_not_run_on_in_its_own_words() -> None:
    from cnnapps.api import load_heads
    from cnnapps.engines import EngineError

    with pytest.raises(EngineError) as caught:
        load_heads("deeplabv3_resnet50", engine="jit")  # refused before its weights are looked for
    assert (
        str(caught.value)
        == "--engine jit: deeplabv3_resnet50 is a semantic model, which runs as it is (use --engine auto)"
    )
