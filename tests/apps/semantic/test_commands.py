"""A small semantic model trained on synthetic scenes, through every door: the run folder, ``cnnapps semantic``,
``cnnapps eval semantic``, ``cnnapps.load``, ONNX export, the HTTP route, sliding windows; bad inputs reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import cnnapps


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from cnnapps.apps.semantic.synthetic import main

    root = tmp_path_factory.mktemp("scenes") / "voc"
    main([str(root), "--train", "6", "--val", "3", "--size", "64"])
    return root


@pytest.fixture(scope="module")
def run(scenes, tmp_path_factory) -> Path:
    from cnnapps.apps.common.config import load_config
    from cnnapps.apps.semantic.config import SemanticConfig
    from cnnapps.apps.semantic.train import train_semantic

    out = tmp_path_factory.mktemp("runs") / "scenes"
    config = load_config(None, SemanticConfig, data=str(scenes), backbone="timm:test_resnet", weights="none",
                         head="fpn", head_channels=16, input_size=64, epochs=1, batch_size=3, workers=0,
                         progress=False, out=str(out))  # fmt: skip
    train_semantic(config)
    return out


@pytest.fixture(scope="module")
def photos(scenes) -> list[str]:
    return sorted(str(p) for p in (scenes / "JPEGImages").glob("val_*.jpg"))


def test_run_folder_and_eval_agree_with_the_masks_the_model_writes(run, scenes, photos, run_cli, tmp_path):
    metrics = json.loads((run / "metrics.json").read_text())
    assert (run / "confusion_matrix.png").is_file() and (run / "curves.png").is_file()
    assert set(metrics["per_class"]) == {"sky", "water", "grass", "circle", "square", "triangle"}
    code, out, err = run_cli("eval", "semantic", "--model", run / "model.safetensors", "--data", scenes, "--json",
                             "--save-confusion", tmp_path / "confusion.png")  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["images"] == 3 and (tmp_path / "confusion.png").is_file()
    assert report["miou"] == pytest.approx(metrics["val_miou"], abs=1e-9)
    code, _, err = run_cli("semantic", *photos, "--model", run / "model.safetensors", "--save-masks", tmp_path / "m")
    assert code == 0, err
    from PIL import Image

    confusion = np.zeros((6, 6), np.int64)
    for photo in photos:
        stem = Path(photo).stem
        pred = np.array(Image.open(tmp_path / "m" / f"{stem}.png"))
        truth = np.array(Image.open(scenes / "SegmentationClass" / f"{stem}.png"))
        np.add.at(confusion, (truth.reshape(-1), pred.reshape(-1)), 1)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    assert report["miou"] == pytest.approx(float(np.mean(tp[union > 0] / union[union > 0])), abs=1e-9)
    assert report["pixel_acc"] == pytest.approx(tp.sum() / confusion.sum(), abs=1e-9)
    assert report["confusion"] == confusion.tolist()


def test_semantic_command_writes_json_overlays_and_reports_bad_inputs(run, photos, run_cli, tmp_path):
    missing = tmp_path / "missing.png"
    code, out, err = run_cli("semantic", photos[0], missing, "--model", run / "model.safetensors", "--json",
                             "--save-dir", tmp_path / "drawn")  # fmt: skip
    assert code == 1 and str(missing) in err
    good, bad = json.loads(out)
    assert bad == {"path": str(missing), "error": bad["error"]} and "no such file" in bad["error"]
    assert (good["width"], good["height"]) == (64, 64)
    assert sum(c["pixels"] for c in good["classes"]) == 64 * 64
    assert {c["label"] for c in good["classes"]} <= {"sky", "water", "grass", "circle", "square", "triangle"}
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 1
    code, out, _ = run_cli("semantic", photos[0], "--model", run / "model.safetensors")
    assert code == 0 and "64x64" in out


def test_python_api_results_and_drawing(run, photos):
    from cnnapps.api import task_of
    from cnnapps.apps.semantic.result import SemanticResult

    assert task_of(run / "model.safetensors") == "semantic"
    predictor = cnnapps.load(run / "model.safetensors")
    image = np.asarray(__import__("cv2").imread(photos[1]))[:, :, ::-1].copy()
    result, bad = predictor.predict([image, b"not an image"])
    assert isinstance(result, SemanticResult) and result.labels.shape == (64, 64) and result.labels.dtype == np.uint8
    assert result.to_dict()["classes"][0]["fraction"] >= result.to_dict()["classes"][-1]["fraction"]
    picture = result.draw(image)
    assert picture.shape[1] == 240 and picture.shape[0] > 240  # widened to show the legend under the image
    assert not bad.ok and "not an image" in bad.error


def test_onnx_export_answers_like_pytorch(run, photos, run_cli, tmp_path):
    onnx_file = tmp_path / "scenes.onnx"
    code, out, err = run_cli("export", "--model", run / "model.safetensors", "--out", onnx_file)
    assert code == 0, err
    from cnnapps.apps.semantic.model import load_semantic
    from cnnapps.exported import OnnxRunner

    model, fit = load_semantic(run / "model.safetensors")
    from cnnapps.datasets.io import read_image

    batch = torch.stack([torch.from_numpy(fit(read_image(p))) for p in photos[:2]])
    with torch.no_grad():
        expected = model(batch)
    got = OnnxRunner(onnx_file)(batch)
    assert got.shape == expected.shape and float((got - expected).abs().max()) < 1e-4
    larger = torch.nn.functional.interpolate(batch, size=(80, 96))  # any input size
    with torch.no_grad():
        assert float((OnnxRunner(onnx_file)(larger) - model(larger)).abs().max()) < 1e-4
    code, out, err = run_cli("semantic", *photos, "--model", onnx_file, "--json", "--device", "cpu")
    assert code == 0, err
    _, torch_out, _ = run_cli("semantic", *photos, "--model", run / "model.safetensors", "--json", "--device", "cpu")
    answers = {"onnxruntime": json.loads(out), "eager": json.loads(torch_out)}
    for engine, found in answers.items():  # the same answers; each names the engine that gave it
        assert [a.pop("engine") for a in found] == [engine] * len(photos)
    assert answers["onnxruntime"] == answers["eager"]


def test_the_http_route_answers_as_python_does(run, photos):
    from fastapi.testclient import TestClient

    from cnnapps.serve.app import create_app

    app = create_app([str(run / "model.safetensors")], warm_up=False, device="cpu")  # exact: fp32 both ways
    with TestClient(app, base_url="http://localhost") as client:
        listed = client.get("/v1/models").json()["models"]
        assert [m["route"] for m in listed] == ["/v1/semantic"]
        image = {"files": {"image": ("x.jpg", Path(photos[0]).read_bytes(), "image/jpeg")}}
        answer = client.post("/v1/semantic?draw=true", **image).json()
        assert answer["overlay"].startswith("data:image/png;base64,")
        bad = client.post("/v1/semantic", files={"image": ("x.png", b"junk", "image/png")})
        assert bad.status_code == 422
    expected = cnnapps.load(run / "model.safetensors", device="cpu").predict(photos[0])[0].to_dict()
    assert answer["classes"] == expected["classes"] and answer["width"] == 64


def test_sliding_windows_sum_each_window_where_they_fall():
    """A per-pixel model whose windows are not resized: the tiled map must equal the model applied to every pixel."""
    from cnnapps.apps.semantic.model import SemanticSpec
    from cnnapps.apps.semantic.predictor import SemanticPredictor
    from cnnapps.backbones.preprocess import Preprocess

    class PerPixel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)
            self.spec = SemanticSpec("fcn", "x", 4, list("abcd"), [[0, 0, 0]] * 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    torch.manual_seed(0)
    model = PerPixel().eval()
    fit = Preprocess(input_size=(3, 32, 32), resize=32, resize_mode="squash", mean=(0.5,) * 3, std=(0.25,) * 3)
    image = np.random.default_rng(0).integers(0, 256, (90, 77, 3), dtype=np.uint8)
    tiled = SemanticPredictor(model=model, preprocess=fit, tile=32, overlap=9, device="cpu").predict(image)[0]
    x = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        expected = model(x[None])[0].argmax(0).numpy()
    assert tiled.labels.shape == (90, 77) and np.array_equal(tiled.labels, expected)
    with pytest.raises(cnnapps.errors.CnnappsError, match="--tile 32 must be larger than --overlap 32"):
        SemanticPredictor(model=model, preprocess=fit, tile=32, overlap=32)


def test_no_model_means_torchvisions_deeplabv3_and_offline_says_where_its_file_goes(run_cli, photos):
    code, _, err = run_cli("semantic", photos[0])
    assert code == 2
    assert "deeplabv3_resnet50_coco-cd0a2569.pth: cannot download https://download.pytorch.org/models/" in err
    assert "place the file at" in err and "hub/checkpoints/deeplabv3_resnet50_coco-cd0a2569.pth" in err


def test_predict_shows_a_semantic_head_as_classes_and_their_shares(run, photos, run_cli):
    """The multi-head table's cell for a semantic head is what `cnnapps semantic` shows, not a Python dict."""
    import cnnapps

    (result,) = cnnapps.load(run / "model.safetensors", device="cpu").predict([photos[0]])
    code, out, err = run_cli("predict", run / "model.safetensors", photos[0], "--device", "cpu")
    assert code == 0, err
    expected = result.summary()
    assert expected.split(", ")[0] in out and "%" in expected and "fraction" not in out
    assert expected == ", ".join(f"{a.label} {a.fraction:.0%}" for a in result.areas()[:6])


def test_semantic_commands_take_the_head_of_a_file_with_two(run, scenes, photos, run_cli, tmp_path):
    """``--head`` on ``semantic`` and ``eval semantic`` (before, a file with two semantic heads could not be run)."""
    from cnnapps.apps.modelfile import compose

    two = compose([run / "model.safetensors"] * 2, tmp_path / "two.safetensors", names=["coast", "fields"])
    code, _, err = run_cli("semantic", photos[0], "--model", two)
    assert code == 2 and "several heads (coast, fields)" in err
    code, out, err = run_cli("semantic", photos[0], "--model", two, "--head", "fields", "--json")
    assert code == 0, err
    _, alone, _ = run_cli("semantic", photos[0], "--model", run / "model.safetensors", "--json")
    assert json.loads(out) == json.loads(alone)
    code, out, err = run_cli("eval", "semantic", "--model", two, "--head", "coast", "--data", scenes, "--json")
    assert code == 0 and json.loads(out)["images"] == 3, err
    code, _, err = run_cli("eval", "semantic", "--model", two, "--head", "nope", "--data", scenes)
    assert code == 2 and "no head named 'nope'" in err


def test_eval_takes_the_overlap_its_tile_needs(run, scenes, run_cli):
    """``eval semantic --tile`` below the default overlap named ``--overlap``, which only ``semantic`` took."""
    model = run / "model.safetensors"
    code, _, err = run_cli("eval", "semantic", "--model", model, "--data", scenes, "--tile", "48")
    assert code == 2 and "--tile 48 must be larger than --overlap 64" in err
    code, out, err = run_cli("eval", "semantic", "--model", model, "--data", scenes, "--tile", "48", "--overlap", "16",
                             "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["images"] == 3, err
