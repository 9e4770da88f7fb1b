from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnapps.bundle import BundleError, load_bundle, read_metadata, save_bundle


def test_round_trip_and_atomic_write(tmp_path: Path) -> None:
    path = save_bundle(
        tmp_path / "m.safetensors", {"w": torch.arange(6.0).view(2, 3)}, {"task": "classify", "x": [1, 2]}
    )
    tensors, meta = load_bundle(path)
    assert torch.equal(tensors["w"], torch.arange(6.0).view(2, 3))
    assert meta["task"] == "classify" and meta["x"] == [1, 2] and meta["format"] == "cnnapps-model/2"
    assert "version" in meta
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left behind


def test_foreign_and_missing_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(BundleError, match="without cnnapps metadata"):
        read_metadata(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(BundleError, match="not a safetensors model file"):
        read_metadata(tmp_path / "junk.safetensors")
    with pytest.raises(BundleError, match="model file not found"):
        read_metadata(tmp_path / "none.safetensors")


def test_other_model_formats_say_what_they_are(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "net.pt"))
    said = (
        r"net\.pt: a TorchScript file; cnnapps runs model files \(\.safetensors\) and the ONNX files `cnnapps export`"
    )
    with pytest.raises(BundleError, match=said + r" writes; use the model file it was exported from"):
        read_metadata(tmp_path / "net.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.pth")
    zip_archive = r"weights\.pth: a zip archive \(a PyTorch checkpoint or a NumPy \.npz\?\), not a model file"
    with pytest.raises(BundleError, match=zip_archive):
        read_metadata(tmp_path / "weights.pth")
    (tmp_path / "graph.onnx").write_bytes(b"\x08\x08\x12\x07pytorch" + b"\xff" * 64)
    with pytest.raises(BundleError, match=r"graph\.onnx: an ONNX file, not a model file: an exported graph answers "
                       r"\(--model FILE\.onnx\) but has no trunk"):  # fmt: skip
        read_metadata(tmp_path / "graph.onnx")
