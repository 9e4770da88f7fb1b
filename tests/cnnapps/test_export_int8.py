"""Smaller exports (``cnnapps export --int8 / --fp16``) answer like fp32 and carry their check; the engines behind
``--engine`` run what they say or refuse in one line."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import cnnapps
from cnnapps.engines import ENGINES, EngineError, why_unavailable
from cnnapps.export import ExportError, export_model, read_onnx_metadata

PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "rocket")
requires_openvino = pytest.mark.skipif(why_unavailable("openvino") is not None, reason="needs openvino")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five real photos (scikit-image's), as JPEG files in one folder."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        cv2.imwrite(str(folder / f"{name}.jpg"), getattr(data, name)()[:, :, ::-1])
    return folder


def paths(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir())


def clear(probabilities: np.ndarray, margin: float) -> np.ndarray:
    """The rows whose best class leads the next by more than ``margin`` (near-ties may flip at lower precision:
    the astronaut's two best classes are 0.0600 and 0.0603)."""
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0] > margin


@pytest.fixture(scope="module")
def lite0(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled EfficientNet-Lite0 as fp32, int8 (calibrated on the photos) and fp16 ONNX files."""
    folder = tmp_path_factory.mktemp("lite0")
    export_model("efficientnet_lite0", "onnx", folder / "fp32.onnx")
    export_model("efficientnet_lite0", "onnx", folder / "int8.onnx", int8=True, calibrate=photos)
    export_model("efficientnet_lite0", "onnx", folder / "fp16.onnx", fp16=True, check=photos)
    return folder


def test_int8_efficientnet_is_smaller_agrees_with_fp32_and_carries_its_check(lite0: Path, photos: Path) -> None:
    fp32, int8 = lite0 / "fp32.onnx", lite0 / "int8.onnx"
    assert int8.stat().st_size < 0.55 * fp32.stat().st_size  # 8-bit convolutions, the fp32 classifier (1280 x 1000)
    meta = read_onnx_metadata(int8, task="classify")
    check = meta["check"]
    assert meta["precision"] == "int8" and meta["quantization"]["format"] == "QDQ"
    assert meta["quantization"]["calibration_images"] == 4  # five photos, the fifth held out for the check
    assert check["metric"] == "top1_agreement" and check["images"] == 1 and check["held_out"] is True
    assert check["value"] == 1.0 and 0 <= check["max_probability_diff"] < 0.2
    _, expected, _ = cnnapps.load(str(fp32), device="cpu").predict_proba(paths(photos))
    quantized = cnnapps.load(str(int8), device="cpu")
    _, got, errors = quantized.predict_proba(paths(photos))
    assert errors == [None] * 5 and quantized.engine == "onnxruntime"
    # where fp32 is clear, int8 agrees (coffee 0.955 / 0.013, rocket 0.362 / 0.234); near-ties swap (the astronaut's
    # 0.135 / 0.129, chelsea's 0.387 / 0.361), and the space photo's 0.165 / 0.069 went to another class
    sure = clear(expected, 0.12)
    assert sure.sum() >= 2 and (got.argmax(1) == expected.argmax(1))[sure].all()
    assert np.abs(got - expected)[sure].max() < 0.1  # 0.02 measured
    assert np.abs(got - expected).max() < 0.3  # the space photo's swap moved one class by 0.14


def test_fp16_file_loads_and_answers_close_to_fp32(lite0: Path, photos: Path) -> None:
    fp32, fp16 = lite0 / "fp32.onnx", lite0 / "fp16.onnx"
    assert 0.4 < fp16.stat().st_size / fp32.stat().st_size < 0.6
    meta = read_onnx_metadata(fp16)
    assert meta["precision"] == "fp16" and meta["check"]["images"] == 5 and meta["check"]["value"] >= 0.8
    import onnxruntime as ort

    session = ort.InferenceSession(str(fp16), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == session.get_outputs()[0].type == "tensor(float)"  # callers see fp32
    _, expected, _ = cnnapps.load(str(fp32), device="cpu").predict_proba(paths(photos))
    _, got, _ = cnnapps.load(str(fp16), device="cpu").predict_proba(paths(photos))
    np.testing.assert_allclose(got, expected, atol=7.5e-3)  # the rocket's top two move by 0.005
    assert (got.argmax(1) == expected.argmax(1))[clear(expected, 0.01)].all()


def test_int8_tiny_classifier_and_embedding(trained, colour_set: Path, tmp_path: Path, run_cli) -> None:
    model = trained[0] / "model.safetensors"
    code, out, err = run_cli("export", model, "--int8", "--calibrate", colour_set, "--out", tmp_path / "c8.onnx")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"wrote {tmp_path / 'c8.onnx'} (onnx int8, classify, ")
    assert lines[1].startswith("int8 check on 6 held-out images: top-1 agrees with fp32 on ")  # 30 images, 1 in 5
    export_model(model, "onnx", tmp_path / "c32.onnx")
    assert (tmp_path / "c8.onnx").stat().st_size < (tmp_path / "c32.onnx").stat().st_size
    assert read_onnx_metadata(tmp_path / "c8.onnx")["check"]["value"] >= 5 / 6
    images = sorted(str(p) for p in colour_set.rglob("*.png"))
    _, expected, _ = cnnapps.load(str(tmp_path / "c32.onnx"), device="cpu").predict_proba(images)
    _, got, _ = cnnapps.load(str(tmp_path / "c8.onnx"), device="cpu").predict_proba(images)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.9

    written = export_model(model, "onnx", tmp_path / "e8.onnx", task="retrieve", int8=True, calibrate=colour_set,
                           check=colour_set / "red")  # fmt: skip
    check = read_onnx_metadata(tmp_path / "e8.onnx", task="retrieve")["check"]
    assert written["check"] == check and check["metric"] == "cosine" and check["images"] == 10
    assert check["held_out"] is False  # the check folder's images calibrated too: the metadata says so
    assert check["min"] > 0.9
    embedder = cnnapps.load(str(tmp_path / "e8.onnx"), device="cpu")
    reference = cnnapps.load(model, task="retrieve", engine="eager", device="cpu")
    cosine = (embedder.embed(images[:6])[1] * reference.embed(images[:6])[1]).sum(1)
    assert embedder.fingerprint == reference.fingerprint and cosine.min() > 0.9

    even = tmp_path / "even"  # a count onnxruntime's calibration chunks (16) divide: its last fold is empty
    even.mkdir()
    for k, path in enumerate(images[:16] * 2):
        (even / f"{k}.png").write_bytes(Path(path).read_bytes())
    written = export_model(model, "onnx", tmp_path / "s8.onnx", int8=True, calibrate=even, check=colour_set)
    assert written["check"]["images"] == 30 and written["check"]["value"] >= 0.8


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cnnapps.apps.detect.model import create_detector, save_detector

    torch.manual_seed(0)
    model = create_detector("segment", "resnet18", num_classes=3, class_names=["__background__", "circle", "square"],
                            backbone_weights=None, fpn_channels=16, min_size=64, max_size=96)  # fmt: skip
    path = tmp_path_factory.mktemp("detector") / "seg.safetensors"
    save_detector(path, model)
    return path


def test_detector_int8_and_fp16_keep_box_decisions_in_fp32(detector: Path, photos: Path, tmp_path: Path) -> None:
    import onnx

    calibrate = tmp_path / "calibrate"
    calibrate.mkdir()
    for k, name in enumerate(PHOTOS[:4]):  # small images: the graph resizes them to 64-96 pixels anyway
        rgb = cv2.imread(str(photos / f"{name}.jpg"))  # sizes differ: so do the trunk's and the heads' tensors
        cv2.imwrite(str(calibrate / f"{name}.png"), cv2.resize(rgb, (96 - 8 * k, 72 + 4 * k)))
    fp32 = export_model(detector, "onnx", tmp_path / "seg.onnx")
    int8 = export_model(detector, "onnx", tmp_path / "seg8.onnx", int8=True, calibrate=calibrate)
    assert int8["bytes"] < 0.4 * fp32["bytes"] and int8["check"]["metric"] == "box_f1"
    assert int8["check"]["images"] == 1 and 0 <= int8["check"]["value"] <= 1
    graph = onnx.load(str(tmp_path / "seg8.onnx"))
    quantized = {n.input[0] for n in graph.graph.node if n.op_type == "DequantizeLinear"}
    kinds = {n.op_type for n in graph.graph.node}
    assert quantized and {"RoiAlign", "TopK"} <= kinds  # RoI Align and the top-k picking run as they did
    dequantized = {o for n in graph.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    gemm = [n for n in graph.graph.node if n.op_type == "Gemm"]
    assert gemm and not any(i in dequantized for n in gemm for i in n.input)  # the box head stays fp32
    meta = read_onnx_metadata(tmp_path / "seg8.onnx", task="segment")
    assert meta["precision"] == "int8" and "NMS" in meta["quantization"]["fp32"]

    fp16 = export_model(detector, "onnx", tmp_path / "seg16.onnx", fp16=True, check=calibrate)
    assert 0.4 < fp16["bytes"] / fp32["bytes"] < 0.6
    assert fp16["check"]["images"] == 4 and fp16["check"]["fp32_boxes"] > 0
    assert fp16["check"]["value"] == 1.0  # the same boxes as fp32


def test_bad_folders_and_kinds_are_one_line_errors_and_write_nothing(run_cli, tmp_path: Path, photos: Path) -> None:
    empty, broken = tmp_path / "empty", tmp_path / "broken"
    empty.mkdir()
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (empty / "notes.txt").write_text("no images here")
    out = tmp_path / "x.onnx"
    cases = [
        (("--int8", "--calibrate", empty), f"--calibrate {empty}: no readable images"),
        (("--int8", "--calibrate", broken), "(1 image files, none could be read)"),
        (("--int8", "--calibrate", tmp_path / "missing"), "no such folder"),
        (("--int8",), "--int8 needs --calibrate DIR"),
        (("--int8", "--fp16", "--calibrate", photos), "--int8 and --fp16: choose one"),
        (("--fp16", "--format", "torchscript"), "--fp16: for --format onnx, not torchscript"),
        (("--check", photos), "--check DIR: for --int8 or --fp16"),
        (("--int8", "--calibrate", photos, "--check", empty), f"--check {empty}: no readable images"),
    ]
    for args, said in cases:
        code, stdout, err = run_cli("export", "efficientnet_lite0", *args, "--out", out)
        assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1, (args, err)
        assert said in err, (args, err)
        assert not out.exists()
    with pytest.raises(ExportError, match=r"--int8: semantic models cannot be written in int8 \(classify, retrieve"):
        export_model("deeplabv3_resnet50", "onnx", out, int8=True, calibrate=photos)
    assert not out.exists()
    out.write_bytes(b"mine")  # the existing-output rule holds for int8 too
    code, _, err = run_cli("export", "efficientnet_lite0", "--int8", "--calibrate", photos, "--out", out)
    assert code == 2 and "already exists" in err and out.read_bytes() == b"mine"


# -- engines ---------------------------------------------------------------------------------------------------------


@requires_openvino
def test_openvino_answers_like_onnxruntime_and_says_so(photos: Path, lite0: Path) -> None:
    images = paths(photos)
    reference = cnnapps.load(engine="onnxruntime", device="cpu")
    _, expected, _ = reference.predict_proba(images)
    for batch_size in (1, 4):  # each compiled for its batch size (a static shape)
        openvino = cnnapps.load(engine="openvino", batch_size=batch_size)
        _, got, errors = openvino.predict_proba(images)
        assert errors == [None] * 5 and openvino.engine == "openvino" and openvino.device.type == "cpu"
        np.testing.assert_allclose(got, expected, atol=1e-3)
        assert openvino.predict(images[0])[0].engine == "openvino"  # each result says what gave it
    exported = cnnapps.load(str(lite0 / "fp32.onnx"), engine="openvino")  # an exported file on OpenVINO too
    assert exported.engine == "openvino"
    np.testing.assert_allclose(exported.predict_proba(images)[1], expected, atol=1e-3)
    embedder = cnnapps.load(task="retrieve", engine="openvino")
    vectors = embedder.embed(images[:2])[1]
    np.testing.assert_allclose(vectors, cnnapps.load(task="retrieve", engine="onnxruntime").embed(images[:2])[1],
                               atol=1e-3)  # fmt: skip
    assert embedder.engine == "openvino"


def test_onnxruntime_threads_sleep_between_runs() -> None:
    from cnnapps.exported import OnnxRunner, onnx_bytes

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()  # fmt: skip
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 does: onnxruntime took every core, OpenVINO torch's count
        runner = OnnxRunner(onnx_bytes(net, (3, 16, 16)))
    finally:
        torch.set_num_threads(threads)
    options = runner.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 1
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(runner(x), net(x), atol=1e-5, rtol=1e-4)


@requires_openvino
def test_openvino_throughput_requests_answer_like_one_request() -> None:
    from cnnapps.exported import OpenVinoRunner, onnx_bytes

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()  # fmt: skip
    data = onnx_bytes(net, (3, 16, 16))
    x = torch.randn(7, 3, 16, 16)
    latency, throughput = OpenVinoRunner(data, "latency"), OpenVinoRunner(data, "throughput", threads=2)
    with torch.no_grad():
        torch.testing.assert_close(throughput(x), net(x), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(latency(x), net(x), atol=1e-5, rtol=1e-4)


@requires_openvino
def test_openvino_compiles_each_batch_size_as_a_static_shape_up_to_a_limit() -> None:
    from cnnapps.exported import OpenVinoRunner, onnx_bytes

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()  # fmt: skip
    runner = OpenVinoRunner(onnx_bytes(net, (3, 16, 16)), "latency", batch_size=4)
    assert list(runner._compiled) == [4]  # the caller's batch, compiled at once
    x = torch.randn(9, 3, 16, 16)
    with torch.no_grad():
        for size in (4, 1, 3, 4, 2, 9, 5):
            torch.testing.assert_close(runner(x[:size]), net(x[:size]), atol=1e-5, rtol=1e-4)
    # four static sizes (4, 1, 3, 2); the later sizes ran on the graph compiled with its dynamic batch
    assert sorted(k for k in runner._compiled if k is not None) == [1, 2, 3, 4] and None in runner._compiled
    shapes = {k: tuple(c.inputs[0].get_partial_shape().to_shape()) for k, c in runner._compiled.items() if k}
    assert shapes == {b: (b, 3, 16, 16) for b in (1, 2, 3, 4)}


@requires_openvino
def test_detector_trunk_runs_on_the_engine_asked_for(detector: Path, photos: Path) -> None:
    from cnnapps.apps.detect.predictor import DetectionPredictor

    image = cv2.resize(cv2.imread(str(photos / "chelsea.jpg"))[:, :, ::-1], (96, 64))
    eager = DetectionPredictor(detector, score_threshold=0.0, engine="eager").predict([image])[0]
    predictor = DetectionPredictor(detector, score_threshold=0.0, engine="openvino")
    found = predictor.predict([image])[0]
    assert predictor.engine == found.engine == "openvino"  # compiled for the first shape at once
    assert len(found.instances) == len(eager.instances) > 0
    np.testing.assert_allclose([i.box for i in found.instances], [i.box for i in eager.instances], atol=0.05)
    with pytest.raises(EngineError, match="--engine openvino: tiled detection runs its trunk in PyTorch"):
        DetectionPredictor(detector, engine="openvino", tile=64, overlap=16)


def test_unavailable_engines_are_one_line_errors_never_another_engine(run_cli, photos: Path) -> None:
    image = paths(photos)[0]
    for engine in ("onnx-cuda", "tensorrt"):
        why = why_unavailable(engine)
        if why is None:  # a GPU with onnxruntime-gpu: the CUDA tests below run it
            continue
        code, out, err = run_cli("classify", image, "--engine", engine)
        assert code == 2 and out == "" and err.strip() == f"error: --engine {engine}: {why}"
        assert "no CUDA GPU here" in why or "ExecutionProvider" in why or "TensorRT libraries" in why
    code, _, err = run_cli("classify", image, "--engine", "openvino", "--device", "cuda")
    assert code == 2 and "--engine openvino runs on the CPU, not on --device cuda" in err
    code, _, err = run_cli("classify", image, "--engine", "tensorrt", "--device", "cpu")
    assert code == 2 and "--engine tensorrt runs on a CUDA GPU, not on --device cpu" in err
    code, _, err = run_cli("classify", image, "--engine", "fast")
    assert code == 2 and f"--engine fast: choose one of {', '.join(ENGINES)}" in err
    from cnnapps.api import load_heads

    with pytest.raises(EngineError, match="--engine openvino: deeplabv3_resnet50 is a semantic model, which runs as"):
        load_heads("deeplabv3_resnet50", engine="openvino")  # refused before its weights are looked for


def test_models_engines_lists_every_engine_with_why_not(run_cli) -> None:
    code, out, err = run_cli("models", "--engines", "--json")
    assert code == 0, err
    rows = {row["engine"]: row for row in json.loads(out)}
    assert list(rows) == list(ENGINES)
    for name, row in rows.items():
        assert row["available"] == (why_unavailable(name) is None) and (row["why_not"] is None) == row["available"]
    assert rows["eager"]["available"] and rows["onnxruntime"]["available"]
    if not torch.cuda.is_available():
        assert "no CUDA GPU here" in rows["tensorrt"]["why_not"] and not rows["onnx-cuda"]["available"]
    code, out, _ = run_cli("models", "--engines")
    assert code == 0 and "tensorrt" in out and "openvino" in out
    code, _, err = run_cli("models", "--engines", "--timm", "res*")  # the pattern was ignored without a word
    said = "error: --engines and --timm: choose one (--engines lists engines, --timm models)"
    assert code == 2 and err.strip() == said


@requires_openvino
def test_server_lists_the_engine_of_each_model(trained) -> None:
    from fastapi.testclient import TestClient

    from cnnapps.serve.app import create_app

    app = create_app([str(trained[0] / "model.safetensors")], engine="openvino", device="cpu", warm_up=False)
    with TestClient(app, base_url="http://localhost") as client:
        (model,) = client.get("/v1/models").json()["models"]
    assert model["engine"] == "openvino" and model["task"] == "classify"


@pytest.mark.cuda
@pytest.mark.skipif(why_unavailable("onnx-cuda") is not None, reason=f"onnx-cuda: {why_unavailable('onnx-cuda')}")
def test_onnx_cuda_answers_like_pytorch_on_the_gpu(photos: Path) -> None:
    images = paths(photos)
    # the same images resized on the GPU both ways (a CPU resizes otherwise: up to 0.01 apart in probability)
    _, expected, _ = cnnapps.load(engine="eager", device="cuda").predict_proba(images)
    predictor = cnnapps.load(engine="onnx-cuda")
    _, got, _ = predictor.predict_proba(images)
    assert predictor.engine == "onnx-cuda" and predictor.device.type == "cuda"
    np.testing.assert_allclose(got, expected, atol=3e-3)  # both may run their convolutions in TF32


@pytest.mark.cuda
@pytest.mark.skipif(why_unavailable("tensorrt") is not None, reason=f"tensorrt: {why_unavailable('tensorrt')}")
def test_tensorrt_answers_like_the_cpu(photos: Path) -> None:
    images = paths(photos)
    _, expected, _ = cnnapps.load(engine="onnxruntime", device="cpu").predict_proba(images)
    predictor = cnnapps.load(engine="tensorrt")
    _, got, _ = predictor.predict_proba(images)
    assert predictor.engine == "tensorrt"
    np.testing.assert_allclose(got, expected, atol=5e-3)


def test_check_images_spelled_otherwise_than_the_calibration_ones_are_not_held_out(tmp_path: Path, monkeypatch) -> None:
    from cnnapps.quantize import split_held_out

    (tmp_path / "cal").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "cal" / name).write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    absolute = [str(tmp_path / "cal" / n) for n in ("a.png", "b.png")]
    assert split_held_out(absolute, ["cal/a.png"])[2] is False  # the same file, named from here
    assert split_held_out(absolute[:1], ["cal/b.png"])[2] is True


def test_top1_check_also_scores_the_images_where_fp32_is_clear() -> None:
    from cnnapps.quantize import _top1, describe_check

    fp32 = np.log(np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.41, 0.40, 0.19], [0.2, 0.5, 0.3]]))
    int8 = fp32.copy()
    int8[2] = np.log([0.40, 0.41, 0.19])  # a near-tie swaps
    check = _top1([([fp32[i : i + 1]], [int8[i : i + 1]]) for i in range(4)])
    assert check["value"] == 0.75 and check["clear_images"] == 3 and check["clear_agreement"] == 1.0
    said = describe_check({**check, "images": 4, "held_out": True}, "int8")
    assert "on 75.0%" in said and "on 100.0% of the 3 whose fp32 top two probabilities are 0.05 or more apart" in said
