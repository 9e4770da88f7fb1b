"""Export to ONNX and TorchScript; the exported graphs answer like PyTorch on real photos."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

import cnnapps
from cnnapps.errors import CnnappsError
from cnnapps.export import ExportError, export_model, read_onnx_metadata

# Stated tolerances: ONNX Runtime and PyTorch sum in different orders, so fp32 results differ in the last bits.
# Both run on the CPU in fp32 (like with like: on a GPU PyTorch's convolutions would use TF32).
PROB_ATOL = 1e-4  # softmax probabilities
EMBED_ATOL = 1e-5  # unit-vector components
BOX_ATOL = 1e-2  # pixels


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        path = folder / f"{name}.jpg"
        cv2.imwrite(str(path), getattr(data, name)()[:, :, ::-1])
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("exported")
    export_model("efficientnet_lite0", "onnx", folder / "classify.onnx")
    export_model("efficientnet_lite0", "onnx", folder / "embed.onnx", task="retrieve")
    export_model("efficientnet_lite0", "torchscript", folder / "classify.pt")
    return folder


def test_onnx_classifier_matches_pytorch_on_photos(exported: Path, photos: list[str]) -> None:
    eager = cnnapps.load("efficientnet_lite0", engine="eager", device="cpu")
    _, expected, _ = eager.predict_proba(photos)
    onnx_file = cnnapps.load(str(exported / "classify.onnx"), device="cpu")
    for predictor in (onnx_file, cnnapps.load(engine="onnxruntime", device="cpu")):
        _, got, errors = predictor.predict_proba(photos)
        assert errors == [None] * 4
        np.testing.assert_allclose(got, expected, atol=PROB_ATOL)
        assert (got.argmax(1) == expected.argmax(1)).all()
    from cnnapps.apps.classify.model import load_classifier

    with pytest.raises(ExportError, match="exported as a retrieve model, not a classify model"):
        load_classifier(exported / "embed.onnx")
    meta = read_onnx_metadata(exported / "classify.onnx")
    assert meta["task"] == "classify" and len(meta["class_names"]) == 1000 and meta["source"] == "efficientnet_lite0"
    # a head named for an exported graph is refused, as embedding refuses it (classify ignored it)
    with pytest.raises(CnnappsError, match=r"^head 'foo': .*classify\.onnx is an exported graph \(a head is one of"):
        cnnapps.load(str(exported / "classify.onnx"), task="classify", head="foo")


@pytest.mark.parametrize(("task", "name"), [("segment", "maskrcnn_resnet50_fpn"), ("semantic", "fcn_resnet50")])
def test_a_head_named_for_a_torchvision_model_name_is_refused_before_any_download(task, name, monkeypatch) -> None:
    """``--head`` with a torchvision model name was ignored (and the weights fetched); now one line, nothing read."""
    import torch.hub

    def fetch(*args, **kwargs):
        raise AssertionError("weights fetched")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fetch)
    with pytest.raises(CnnappsError, match=f"^head 'foo': {name} is a torchvision model name"):
        cnnapps.load(name, task=task, head="foo")


def test_onnx_embedding_matches_and_searches_an_index_built_with_pytorch(exported: Path, photos: list[str],
                                                                         tmp_path: Path) -> None:  # fmt: skip
    from cnnapps.apps.retrieve.index import Index
    from cnnapps.apps.retrieve.search import retrieve

    torch_embedder = cnnapps.load("efficientnet_lite0", task="retrieve", engine="eager", device="cpu")
    onnx_embedder = cnnapps.load(str(exported / "embed.onnx"), device="cpu")
    assert onnx_embedder.fingerprint == torch_embedder.fingerprint and onnx_embedder.dim == 1280
    np.testing.assert_allclose(onnx_embedder.embed(photos)[1], torch_embedder.embed(photos)[1], atol=EMBED_ATOL)
    index = Index.create(tmp_path / "idx", torch_embedder.describe())
    index.add(photos, embedder=torch_embedder)
    results = retrieve(index, photos, k=1, embedder=onnx_embedder)
    assert [r.hits[0].path for r in results] == photos


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_matches_and_carries_metadata(exported: Path, photos: list[str]) -> None:
    extra = {"cnnapps.json": ""}
    graph = torch.jit.load(str(exported / "classify.pt"), _extra_files=extra)
    meta = json.loads(extra["cnnapps.json"])
    from cnnapps.backbones.preprocess import Preprocess
    from cnnapps.datasets.io import read_image

    spec = Preprocess.from_dict(meta["preprocess"])
    batch = torch.from_numpy(np.stack([spec(read_image(p)) for p in photos]))
    loaded = cnnapps.load("efficientnet_lite0", engine="eager", device="cpu")
    with torch.no_grad():
        got = torch.softmax(graph(batch), 1).numpy()
        expected = torch.softmax(loaded.members[0].model(batch), 1).numpy()
    np.testing.assert_allclose(got, expected, atol=PROB_ATOL)


def test_detector_exports_to_onnx_and_matches(tmp_path: Path, photos: list[str]) -> None:
    import onnxruntime as ort

    from cnnapps.apps.detect.model import create_detector, load_detector, save_detector
    from cnnapps.datasets.io import read_image

    torch.manual_seed(0)
    model = create_detector("segment", "resnet18", num_classes=3, class_names=["__background__", "circle", "square"],
                            backbone_weights=None, fpn_channels=16, min_size=96, max_size=128)  # fmt: skip
    save_detector(tmp_path / "seg.safetensors", model)
    written = export_model(tmp_path / "seg.safetensors", "onnx", tmp_path / "seg.onnx")
    assert written["task"] == "segment"
    session = ort.InferenceSession(str(tmp_path / "seg.onnx"), providers=["CPUExecutionProvider"])
    reference = load_detector(tmp_path / "seg.safetensors")
    for path in photos[:2]:
        image = torch.from_numpy(read_image(path)).permute(2, 0, 1).float() / 255
        boxes, labels, scores, masks = session.run(None, {"image": image.numpy()})
        with torch.no_grad():
            expected = reference([image])[0]
        assert len(boxes) == len(expected["boxes"]) > 0
        np.testing.assert_allclose(boxes, expected["boxes"].numpy(), atol=BOX_ATOL)
        np.testing.assert_allclose(scores, expected["scores"].numpy(), atol=1e-4)
        assert (labels == expected["labels"].numpy()).all() and masks.shape == tuple(expected["masks"].shape)
    with pytest.raises(ExportError, match="torchscript export takes classify, retrieve models, not segment"):
        export_model(tmp_path / "seg.safetensors", "torchscript", tmp_path / "seg.pt")
    # the graph resizes to the size eager PyTorch computes in doubles: 50 x 60 at min 96 is 96 rows (float32 made
    # 95 of floor(50 x 1.92); 294 of 1,809 sizes differed, a 375 x 500 photo at min 800 by half a pixel in its boxes)
    from onnx.utils import extract_model

    resize = next(n.output[0] for n in onnx.load(tmp_path / "seg.onnx").graph.node if n.op_type == "Resize")
    extract_model(str(tmp_path / "seg.onnx"), str(tmp_path / "resize.onnx"), ["image"], [resize])
    resized = ort.InferenceSession(str(tmp_path / "resize.onnx"), providers=["CPUExecutionProvider"])
    for height, width in ((50, 60), (50, 113), (87, 166), (124, 219), (77, 427), (300, 451)):
        image = torch.rand(3, height, width)
        with torch.no_grad():
            expected = reference.transform([image])[0].image_sizes[0]
        assert tuple(resized.run(None, {"image": image.numpy()})[0].shape[-2:]) == tuple(expected), (height, width)


def test_export_refuses_to_overwrite_and_unknown_formats(run_cli, exported: Path, tmp_path: Path) -> None:
    before = (exported / "classify.onnx").stat().st_mtime_ns
    code, _, err = run_cli("export", "--model", "efficientnet_lite0", "--out", exported / "classify.onnx")
    assert code == 2 and "already exists" in err
    assert (exported / "classify.onnx").stat().st_mtime_ns == before
    code, _, err = run_cli("export", "--model", "efficientnet_lite0", "--format", "tflite", "--out", tmp_path / "x")
    assert code == 2 and "--format tflite" in err
    code, out, _ = run_cli("export", "--model", "efficientnet_lite0", "--task", "retrieve", "--out",
                           tmp_path / "e.onnx", "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["task"] == "retrieve"


def test_files_cnnapps_cannot_run_are_named(run_cli, exported: Path, photos: list[str], tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["boxes"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [3, None, None])],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [3, None, None])])  # fmt: skip
    model = helper.make_model(graph)
    model.metadata_props.add(key="cnnapps", value=json.dumps({"task": "segment"}))
    onnx.save(model, str(tmp_path / "seg.onnx"))
    for args in (
        ("segment", photos[0], "--model", tmp_path / "seg.onnx"),
        ("predict", tmp_path / "seg.onnx", photos[0]),
    ):
        code, out, err = run_cli(*args)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
        assert err.startswith(f"error: {tmp_path / 'seg.onnx'}: an exported ONNX segment model; cnnapps runs ")
    code, out, err = run_cli("classify", photos[0], "--model", exported / "classify.pt")
    assert code == 2 and err.startswith(f"error: {exported / 'classify.pt'}: a TorchScript file;")
