from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import cnnapps
from cnnapps.apps.classify.model import load_classifier
from cnnapps.apps.classify.predictor import ClassificationPredictor
from cnnapps.errors import CnnappsError

CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


@pytest.fixture(scope="module")
def predictor():
    return cnnapps.load()


@pytest.fixture(scope="module")
def chelsea_jpg(tmp_path_factory, chelsea) -> Path:
    path = tmp_path_factory.mktemp("img") / "chelsea.jpg"
    cv2.imwrite(str(path), chelsea[:, :, ::-1])
    return path


def test_every_input_kind_sees_the_cat(predictor, chelsea, chelsea_jpg: Path) -> None:
    inputs = [str(chelsea_jpg), chelsea_jpg.read_bytes(), chelsea, Image.fromarray(chelsea)]
    results = predictor.predict(inputs, top_k=3)
    assert [r.source for r in results] == [str(chelsea_jpg), "<bytes>", "<array>", "<PIL image>"]
    for r in results:
        assert r.ok and r.top1.label in CATS
        assert len(r.predictions) == 3
        scores = [p.score for p in r.predictions]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001


def test_bad_inputs_are_reported_and_skipped(predictor, chelsea, tmp_path: Path) -> None:
    (tmp_path / "junk.jpg").write_text("no pixels here")
    inputs = [chelsea, str(tmp_path / "missing.png"), str(tmp_path / "junk.jpg"), chelsea, b""]
    results = predictor.predict(inputs, batch_size=2)
    assert [r.ok for r in results] == [True, False, False, True, False]
    assert results[1].to_dict() == {"path": str(tmp_path / "missing.png"), "error": "no such file"}
    assert "not an image" in results[2].error and "empty" in results[4].error
    assert results[0].to_dict()["predictions"][0]["label"] in CATS


def test_engines_agree(chelsea) -> None:
    """fp32 against fp32 on the CPU: the fused graph folds batch norm into the convolutions, which moves the
    last bits only."""
    loaded = load_classifier("efficientnet_lite0")
    eager = ClassificationPredictor([loaded], device="cpu", engine="eager").predict_proba([chelsea])[1]
    fused = ClassificationPredictor([loaded], device="cpu", engine="jit").predict_proba([chelsea])[1]
    assert np.abs(eager - fused).max() < 1e-4


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_engines_agree_on_cuda(chelsea) -> None:
    """On a GPU: jit is a frozen fp32 TorchScript graph (TF32 convolutions), auto and compile run in fp16
    autocast. Stated tolerances: 2e-3 for fp32/TF32 probabilities, 2e-2 under fp16 (10 bits of mantissa); the
    top-1 must not move."""
    loaded = load_classifier("efficientnet_lite0")
    reference = ClassificationPredictor([loaded], device="cpu", engine="eager").predict_proba([chelsea])[1]
    for engine, atol in (("eager", 2e-3), ("jit", 2e-3), ("auto", 2e-2), ("compile", 2e-2)):
        got = ClassificationPredictor([loaded], device="cuda", engine=engine).predict_proba([chelsea])[1]
        assert np.abs(got - reference).max() < atol, engine
        assert got.argmax() == reference.argmax(), engine


def test_ensemble_averages_probabilities(trained, colour_set: Path, tmp_path: Path, tiny_config) -> None:
    from cnnapps.apps.classify.train import train_classifier

    first, _ = trained
    train_classifier(tiny_config(colour_set, tmp_path / "second", epochs=1, seed=1))
    files = sorted(colour_set.rglob("*.png"))[:5]
    a = cnnapps.load(first / "model.safetensors").predict_proba(files)[1]
    b = cnnapps.load(tmp_path / "second" / "model.safetensors").predict_proba(files)[1]
    pair = [first / "model.safetensors", tmp_path / "second" / "model.safetensors"]
    both = cnnapps.load(pair).predict_proba(files)[1]
    assert np.allclose(both, (a + b) / 2, atol=1e-5)
    with pytest.raises(CnnappsError, match="an ensemble needs the same classes"):
        cnnapps.load([first / "model.safetensors", "efficientnet_lite0"])


def test_results_serialise() -> None:
    from cnnapps.results import ClassificationResult, Prediction

    r = ClassificationResult("a.jpg", predictions=[Prediction("cat", 3, 0.91234567)])
    assert r.to_json() == '{"path": "a.jpg", "predictions": [{"label": "cat", "index": 3, "score": 0.912346}]}'
    picture = r.draw(np.zeros((50, 100, 3), np.uint8), width=200)
    assert picture.shape[1] == 200 and picture.shape[0] > 100


def test_pil_image_input_keeps_orientation(predictor, chelsea) -> None:
    buf = io.BytesIO()
    Image.fromarray(chelsea).save(buf, format="PNG")
    assert predictor.predict(buf.getvalue())[0].top1.label in CATS


def test_a_score_that_is_not_a_number_is_null_in_json_and_an_empty_bar_in_pictures() -> None:
    import json

    from cnnapps.results import ClassificationResult, Prediction

    result = ClassificationResult("x", predictions=[Prediction("a", 0, float("nan")), Prediction("b", 1, 0.25)])
    assert json.loads(result.to_json())["predictions"][0]["score"] is None  # "NaN" is not JSON
    picture = result.draw(np.zeros((20, 30, 3), np.uint8))  # int(NaN) failed
    assert picture.ndim == 3 and picture.dtype == np.uint8
