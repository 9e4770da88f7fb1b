"""What ``cnnapps export --int8 / --fp16`` checks and stores, exported files that do not match their metadata, and
the files that are told apart as ONNX whatever their name."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import cnnapps
from cnnapps.errors import CnnappsError
from cnnapps.export import ExportError, export_model, read_onnx_metadata

FIXTURES = Path(__file__).parents[1] / "fixtures" / "model_files_v1"
LENET = str(FIXTURES / "classify.safetensors")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    return folder


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The LeNet-5 classifier of the model-file fixtures, exported."""
    path = tmp_path_factory.mktemp("graph") / "lenet.onnx"
    export_model(LENET, "onnx", path)
    return path


def _with_meta(graph: Path, out: Path, **changes: object) -> Path:
    """``graph`` written to ``out`` with only its cnnapps metadata changed."""
    import onnx

    model = onnx.load(str(graph))
    for prop in model.metadata_props:
        if prop.key == "cnnapps":
            prop.value = json.dumps({**json.loads(prop.value), **changes})
    onnx.save(model, str(out))
    return out


def test_a_multilabel_check_compares_label_sets_and_sigmoid_changes() -> None:
    from cnnapps.quantize import _labels, describe_check

    # top-1 is class 0 in both graphs, but class 1 crosses its threshold in the second image
    fp32 = np.array([[4.0, -2.0, -4.0], [4.0, 0.01, -4.0]], np.float32)
    smaller = np.array([[4.0, -2.0, -4.0], [4.0, -0.01, -4.0]], np.float32)
    check = _labels([([fp32[i : i + 1]], [smaller[i : i + 1]]) for i in range(2)], (0.5, 0.5, 0.5))
    assert check["metric"] == "label_set_agreement" and check["value"] == 0.5
    assert check["max_probability_diff"] == pytest.approx(0.005, abs=1e-4)
    said = describe_check({**check, "images": 2}, "int8")
    assert said == "int8 check on 2 images: label sets agree with fp32's on 50.0% (largest probability change 0.005)"
    # a class's own threshold decides: at 0.6 neither image has class 1
    assert _labels([([fp32], [smaller])], (0.5, 0.6, 0.5))["value"] == 1.0


def test_a_multilabel_classifier_export_stores_the_label_set_check(images: Path, tmp_path: Path) -> None:
    import torch

    from cnnapps.apps.classify.model import Classifier
    from cnnapps.apps.modelfile import save_model
    from cnnapps.backbones import create_backbone

    torch.manual_seed(0)
    trunk = create_backbone("lenet5", weights="none")
    model = Classifier(trunk, 3, class_names=["a", "b", "c"], multilabel=True, thresholds=[0.5, 0.4, 0.7])
    source = tmp_path / "ml.safetensors"
    save_model(source, "classify", model, "lenet5", {}, trunk.preprocess.to_dict())
    written = export_model(source, "onnx", tmp_path / "ml16.onnx", fp16=True, check=images)
    check = read_onnx_metadata(tmp_path / "ml16.onnx")["check"]
    assert check == written["check"] and check["metric"] == "label_set_agreement" and check["images"] == 3
    assert 0.0 <= check["max_probability_diff"] < 0.05 and "clear_images" not in check


def test_a_box_check_without_any_box_compares_nothing() -> None:
    from cnnapps.quantize import BOX_SCORE, _boxes, describe_check

    low = (np.array([[0, 0, 10, 10]], np.float32), np.array([1]), np.array([BOX_SCORE / 2], np.float32))
    none = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))
    check = _boxes([(list(low), list(none)), (list(none), list(none))])
    assert check["value"] is None and check["fp32_boxes"] == 0 and check["metric"] == "box_f1"
    said = describe_check({**check, "images": 2, "held_out": True}, "fp16")
    assert said == "fp16 check on 2 held-out images: nothing to compare: neither graph found a box with score >= 0.5"
    found = (np.array([[0, 0, 10, 10]], np.float32), np.array([1]), np.array([0.9], np.float32))
    assert _boxes([(list(found), list(none))])["value"] == 0.0  # a box fp32 found and the other missed still counts


def test_exporting_an_exported_file_is_a_one_line_refusal(graph: Path, images: Path, tmp_path: Path, run_cli) -> None:
    for extra in ([], ["--int8", "--calibrate", images]):
        code, _, err = run_cli("export", graph, "--out", tmp_path / "again.onnx", *extra)
        assert code == 2 and err.strip() == f"error: {graph}: an exported ONNX file: export the model file it came from"
        assert not (tmp_path / "again.onnx").exists()
    unnamed = shutil.copy(graph, tmp_path / "graph")
    with pytest.raises(ExportError, match="graph: an exported ONNX file"):
        export_model(unnamed, "onnx", tmp_path / "again.onnx")


def test_metadata_that_does_not_fit_the_graph_is_refused_at_load(graph: Path, tmp_path: Path, run_cli) -> None:
    meta = read_onnx_metadata(graph)
    size = meta["preprocess"]["input_size"]
    wrong = {**meta["preprocess"], "input_size": [size[0], size[1] + 32, size[2] + 32]}
    bigger = _with_meta(graph, tmp_path / "bigger.onnx", preprocess=wrong)
    with pytest.raises(CnnappsError, match=r"bigger\.onnx: preprocess\.input_size \[.*\] in its cnnapps metadata, but "
                                           rf"its graph takes {size[0]}x{size[1]}x{size[2]}"):  # fmt: skip
        cnnapps.load(str(bigger), device="cpu")
    numbers = _with_meta(graph, tmp_path / "numbers.onnx", class_names=list(range(len(meta["class_names"]))))
    with pytest.raises(CnnappsError, match=r"numbers\.onnx: class_names: expected a list of names \(strings\)"):
        cnnapps.load(str(numbers), device="cpu")
    picture = tmp_path / "x.png"
    cv2.imwrite(str(picture), np.full((40, 40, 3), 128, np.uint8))
    code, _, err = run_cli("classify", picture, "--model", bigger)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "input_size" in err


def test_onnx_files_are_told_apart_whatever_their_name(graph: Path, tmp_path: Path) -> None:
    from cnnapps.api import task_of

    picture = tmp_path / "x.png"
    cv2.imwrite(str(picture), np.full((40, 40, 3), 128, np.uint8))
    expected = cnnapps.load(str(graph), device="cpu").predict(str(picture))[0].to_dict()
    copies = [shutil.copy(graph, tmp_path / name) for name in ("UPPER.ONNX", "no-suffix", "renamed.safetensors")]
    for copy in copies:
        got = cnnapps.load(str(copy), device="cpu").predict(str(picture))[0].to_dict()
        assert got["predictions"] == expected["predictions"] and task_of(copy) == "classify"
    from cnnapps.exported import is_onnx_file

    assert all(is_onnx_file(copy) for copy in copies) and not is_onnx_file(LENET)
    assert not is_onnx_file(shutil.copy(LENET, tmp_path / "model"))
    assert not is_onnx_file(tmp_path / "missing") and not is_onnx_file(picture)


def test_known_notes_of_detector_exports_are_filtered_and_only_those() -> None:
    """In a process of its own (pytest puts its own warning filters in place for each test)."""
    script = """
import warnings
import cnnapps.runtime
copy = "To copy construct from a tensor, it is recommended to use sourceTensor.detach().clone()"
notes = [
    (copy, "torchvision.ops.boxes"),
    (copy, "torch.nn.functional"),
    ("Constant folding - Only steps=1 can be constant folded for opset >= 10 onnx::Slice op.",
     "torch.onnx._internal.torchscript_exporter.utils"),
    ("Exporting aten::index operator of advanced indexing in opset 17 is achieved by combination of multiple ONNX",
     "torch.onnx._internal.torchscript_exporter.symbolic_opset11"),
    (copy, "cnnapps.mine"),
]
for message, module in notes:
    warnings.warn_explicit(message, UserWarning, module.replace(".", "/") + ".py", 1, module=module, registry={})
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shown = [line for line in done.stderr.splitlines() if "UserWarning" in line]
    assert len(shown) == 1 and shown[0].startswith("cnnapps/mine.py:1: UserWarning: To copy construct"), shown
