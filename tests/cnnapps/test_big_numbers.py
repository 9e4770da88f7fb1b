"""A number of more digits than Python converts (4,300) in a model file's header or an exported file's metadata is
a one-line error naming the file, like any other damaged header."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnnapps.bundle import BundleError, read_metadata
from cnnapps.exported import ExportError, read_onnx_metadata

BIG = "9" * 5000


def _safetensors(path: Path, header: bytes) -> Path:
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    return path


def test_a_huge_number_in_the_cnnapps_metadata(tmp_path: Path) -> None:
    meta = '{"format": "cnnapps-model/2", "epochs": ' + BIG + "}"
    path = _safetensors(tmp_path / "m.safetensors", json.dumps({"__metadata__": {"cnnapps": meta}}).encode())
    with pytest.raises(BundleError) as caught:
        read_metadata(path)
    assert str(caught.value) == f"{path}: its cnnapps metadata is not valid JSON (a damaged model file)"


def test_a_huge_number_in_the_safetensors_header(tmp_path: Path) -> None:
    header = '{"x": ' + BIG + ', "__metadata__": {"cnnapps": "{}"}}'
    path = _safetensors(tmp_path / "m.safetensors", header.encode())
    with pytest.raises(BundleError) as caught:
        read_metadata(path)
    assert str(caught.value) == f"{path}: not a safetensors model file (its header is not JSON)"


def test_a_huge_number_in_an_exported_file_s_metadata(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["outputs"])], "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("outputs", TensorProto.FLOAT, [1])],
    )  # fmt: skip
    model = helper.make_model(graph)
    model.metadata_props.add(key="cnnapps", value='{"task": "classify", "x": ' + BIG + "}")
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ExportError) as caught:
        read_onnx_metadata(path)
    assert str(caught.value) == f"{path}: its cnnapps metadata is not valid JSON"
