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
