"""What commands print and how they exit, with user text that looks like markup, missing inputs, odd models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest


@pytest.fixture(scope="module")
def model_file(trained) -> Path:
    return trained[0] / "model.safetensors"


def _png(path: Path, colour: tuple[int, int, int] = (220, 40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((40, 40, 3), 128, np.uint8)
    image[8:32, 8:32] = colour
    cv2.imwrite(str(path), image[:, :, ::-1])
    return path


def test_paths_and_labels_are_printed_as_they_are(run_cli, model_file, tmp_path) -> None:
    bracketed = _png(tmp_path / "x[" / "y].jpg.png")  # a path holding "[/" (Rich's closing tag)
    styled = _png(tmp_path / "[red]cat.png")
    code, out, err = run_cli("classify", bracketed, styled, "--model", model_file, "--top-k", "2")
    assert code == 0, err
    assert "x[/y].jpg.png" in out.replace("\n", "") or "y].jpg.png" in out
    assert "[red]cat.png" in out


def test_a_run_folder_with_brackets_trains_and_reports(run_cli, colour_set, tmp_path) -> None:
    out_dir = tmp_path / "m[" / "x]"
    code, out, err = run_cli("train", "classify", "--data", colour_set, "--backbone", "lenet5", "--weights", "none",
                             "--epochs", "1", "--batch-size", "8", "--workers", "0", "--augment", "none",
                             "--out", out_dir)  # fmt: skip
    assert code == 0, err
    assert (out_dir / "model.safetensors").is_file() and f"wrote {out_dir}/model.safetensors" in out


def test_nothing_to_read_exits_2_and_a_missing_file_among_others_exits_1(run_cli, model_file, tmp_path) -> None:
    code, _, err = run_cli("classify", str(tmp_path / "nothing-*.jpg"), "--model", model_file)
    assert code == 2 and "no file matches" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("classify", tmp_path / "nosuchdir", "--model", model_file)
    assert code == 2 and "no such file or folder" in err
    good = _png(tmp_path / "good.png")
    code, out, err = run_cli("classify", good, tmp_path / "gone.png", "--model", model_file, "--json")
    assert code == 1 and "gone.png: no such file" in err and len(json.loads(out)) == 2


def test_scores_that_are_not_numbers_print_as_null(run_cli, model_file, tmp_path) -> None:
    from cnnapps.apps.classify.model import load_classifier
    from cnnapps.apps.modelfile import save_model

    loaded = load_classifier(model_file)
    with __import__("torch").no_grad():  # finite weights (NaN ones are refused at load) whose scores overflow
        loaded.model.fc.weight.fill_(3e38)
    save_model(tmp_path / "nan.safetensors", "classify", loaded.model, "lenet5", {"in_channels": 3},
               loaded.preprocess.to_dict())  # fmt: skip
    code, out, err = run_cli("classify", _png(tmp_path / "a.png"), "--model", tmp_path / "nan.safetensors", "--json")
    assert code == 0, err
    assert "NaN" not in out and json.loads(out)[0]["predictions"][0]["score"] is None


def test_an_exported_file_whose_classes_do_not_fit_its_graph_is_refused_at_load(model_file, tmp_path) -> None:
    import onnx

    from cnnapps.api import load
    from cnnapps.errors import CnnappsError
    from cnnapps.export import export_model

    export_model(model_file, "onnx", tmp_path / "m.onnx")
    graph = onnx.load(str(tmp_path / "m.onnx"))
    prop = next(p for p in graph.metadata_props if p.key == "cnnapps")
    prop.value = json.dumps({**json.loads(prop.value), "class_names": ["a", "b"]})
    onnx.save(graph, str(tmp_path / "two.onnx"))
    with pytest.raises(CnnappsError, match="its graph gives 3 class scores, its metadata names 2 classes"):
        load(tmp_path / "two.onnx")


def test_one_class_and_an_empty_class_folder_are_named(run_cli, tmp_path) -> None:
    for name in ("red", "green"):
        for i in range(4):
            _png(tmp_path / "two" / name / f"{i}.png")
    (tmp_path / "two" / "blue").mkdir()
    args = ("--backbone", "lenet5", "--weights", "none", "--epochs", "1", "--workers", "0", "--out")
    code, _, err = run_cli("train", "classify", "--data", tmp_path / "two", *args, tmp_path / "r1")
    assert code == 2 and f"{tmp_path / 'two' / 'blue'}: a class folder with no images" in err
    for i in range(4):
        _png(tmp_path / "one" / "red" / f"{i}.png")
    code, _, err = run_cli("train", "classify", "--data", tmp_path / "one", *args, tmp_path / "r2")
    assert code == 2 and "only one class (red)" in err


def test_importing_cnnapps_keeps_albumentations_off_the_network() -> None:
    code = "import os, cnnapps; print(os.environ.get('NO_ALBUMENTATIONS_UPDATE'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={}).stdout
    assert out.strip() == "1"
