"""Exporting one head of a multi-head model file: the head asked for is the head written (its weights, its
fingerprint, its name in the metadata), an ambiguous or mismatched choice is a one-line error, and heads on a
shared trunk, whose graph would not answer as the model file does, are refused."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import cnnapps
from cnnapps.bundle import BundleError
from cnnapps.export import ExportError, export_model, read_onnx_metadata

EMBED_ATOL = 1e-5  # unit-vector components, onnxruntime against PyTorch in fp32


@pytest.fixture(scope="module")
def lenet_heads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One-head LeNet-5 files on one trunk (a classifier, an 8-d average and a 4-d GeM embedding, a segmentation
    head on the shared trunk), and ``multi``: all of them composed into one file."""
    from cnnapps.apps.classify.model import Classifier
    from cnnapps.apps.detect.model import create_shared_detector, save_detector
    from cnnapps.apps.modelfile import compose, save_model
    from cnnapps.apps.retrieve.embedder import EmbeddingModel
    from cnnapps.backbones import create_backbone

    torch.manual_seed(0)
    root, trunk = tmp_path_factory.mktemp("heads"), create_backbone("lenet5")
    trunk = trunk.drop_head() if trunk.has_head else trunk
    pre = trunk.preprocess
    files = {name: root / f"{name}.safetensors" for name in ("cls", "avg", "gem", "seg")}
    save_model(files["cls"], "classify", Classifier(trunk, 2, class_names=["x", "y"]), "lenet5", {}, pre.to_dict())
    save_model(files["avg"], "retrieve", EmbeddingModel(trunk, "avg", 8), "lenet5", {}, pre.to_dict())
    save_model(files["gem"], "retrieve", EmbeddingModel(trunk, "gem", 4), "lenet5", {}, pre.to_dict())
    seg = create_shared_detector("segment", trunk, "lenet5", pre, class_names=["tri", "circ"], fpn_channels=8)
    save_detector(files["seg"], seg.eval())
    files["multi"] = compose([files[n] for n in ("cls", "avg", "gem", "seg")], root / "multi.safetensors",
                             names=["cls", "avg", "gem", "seg"])  # fmt: skip
    return files


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(3):
        path = folder / f"{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (48 + 8 * i, 40, 3), dtype=np.uint8))
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_retrieve_head_asked_for_is_the_one_exported(lenet_heads, images, tmp_path, fmt) -> None:
    out = tmp_path / f"gem.{'onnx' if fmt == 'onnx' else 'pt'}"
    assert export_model(lenet_heads["multi"], fmt, out, head="gem")["task"] == "retrieve"
    expected = cnnapps.load(lenet_heads["multi"], task="retrieve", head="gem", engine="eager", device="cpu")
    assert expected.dim == 4 and expected.pooling == "gem"
    if fmt == "onnx":
        meta = read_onnx_metadata(out)
        got = cnnapps.load(out, device="cpu")
        assert got.fingerprint == expected.fingerprint and got.dim == 4
        np.testing.assert_allclose(got.embed(images)[1], expected.embed(images)[1], atol=EMBED_ATOL)
    else:
        files = {"cnnapps.json": ""}
        torch.jit.load(str(out), _extra_files=files)
        meta = json.loads(files["cnnapps.json"])
    assert (meta["head"], meta["dim"], meta["pooling"]) == ("gem", 4, "gem")
    assert meta["fingerprint"] == expected.fingerprint


def test_the_classify_head_asked_for_is_named_in_the_graph_s_metadata(lenet_heads, images, tmp_path) -> None:
    """A classify head's export did not say which head it wrote (an embedding's did), as the README promises."""
    export_model(lenet_heads["multi"], "onnx", tmp_path / "cls.onnx", head="cls")
    meta = read_onnx_metadata(tmp_path / "cls.onnx")
    assert (meta["task"], meta["head"], meta["class_names"]) == ("classify", "cls", ["x", "y"])
    expected = cnnapps.load(lenet_heads["multi"], head="cls", engine="eager", device="cpu").predict(images)
    got = cnnapps.load(tmp_path / "cls.onnx", device="cpu").predict(images)
    assert [r.top1.label for r in got] == [r.top1.label for r in expected]
    export_model(lenet_heads["cls"], "onnx", tmp_path / "alone.onnx")  # one head: named too
    assert read_onnx_metadata(tmp_path / "alone.onnx")["head"] == "classify"


def test_several_retrieve_heads_and_none_named_is_a_one_line_error(lenet_heads, images, tmp_path) -> None:
    several = (f"{lenet_heads['multi']}: has several heads (avg, gem); name the one to use (--head NAME; in Python "
               "head=NAME)")  # fmt: skip
    with pytest.raises(BundleError) as caught:
        export_model(lenet_heads["multi"], "onnx", tmp_path / "e.onnx", task="retrieve")
    assert str(caught.value) == several
    with pytest.raises(BundleError) as caught:
        export_model(lenet_heads["multi"], "onnx", tmp_path / "e.onnx", task="retrieve", head="cls")
    assert str(caught.value) == f"{lenet_heads['multi']}: its head 'cls' is a classify head, not a retrieve one"
    assert not list(tmp_path.iterdir())
    # the index commands name no head: they (and cnnapps.load without head=) embed with the first, as before
    assert cnnapps.load(lenet_heads["multi"], task="retrieve").embed([images[0]])[1].shape[1] == 8
    # a file with one embedding head still needs no name, and says which it exported
    export_model(lenet_heads["avg"], "onnx", tmp_path / "avg.onnx")
    assert read_onnx_metadata(tmp_path / "avg.onnx")["head"] == "retrieve"


@pytest.mark.parametrize(
    ("source", "head", "options"),
    [("seg", None, {}), ("multi", "seg", {}), ("multi", "seg", {"fp16": True}), ("multi", "seg", {"int8": True})],
)
def test_a_head_on_a_shared_trunk_is_not_exported(lenet_heads, images, tmp_path, source, head, options) -> None:
    """Its graph would resize images as torchvision's R-CNN does, not through the file's preprocessing that
    cnnapps runs it with (``run_shared``): it would answer differently, so it is refused in one line."""
    if options.get("int8"):
        options = {**options, "calibrate": Path(images[0]).parent}
    spec = lenet_heads[source]
    with pytest.raises(ExportError) as caught:
        export_model(spec, "onnx", tmp_path / "seg.onnx", head=head, **options)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{spec}: its segment head")
    assert "shared trunk" in message and f"cnnapps segment --model {spec}" in message
    assert not (tmp_path / "seg.onnx").exists()
