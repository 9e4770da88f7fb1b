"""Exported graphs: ONNX bytes from a module, the ``cnnapps`` metadata of exported files, and onnxruntime runs.

Base layer: the predictors of every task use these to run files that ``cnnapps export`` wrote. Importing it loads
no torch, so that ``cnnapps export`` can refuse what it cannot write before torch is loaded.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cnnapps.errors import CnnappsError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

OPSET = 17


@dataclass
class Exportable:
    """What ``cnnapps export`` writes for one model: the module, its metadata, an example input and the graph's
    input/output names and dynamic axes (an image batch -> one output, unless a task says otherwise)."""

    module: nn.Module
    meta: dict[str, Any]
    example: Any
    inputs: list[str] = field(default_factory=lambda: ["images"])
    outputs: list[str] = field(default_factory=lambda: ["outputs"])
    dynamic: dict[str, dict[int, str]] = field(
        default_factory=lambda: {"images": {0: "batch"}, "outputs": {0: "batch"}}
    )


class ExportError(CnnappsError):
    """A model that cannot be exported as asked, or an exported file that cannot be used."""


def to_onnx(model: nn.Module, example: Any, inputs: list[str], outputs: list[str], dynamic: dict) -> bytes:
    """``model`` traced on ``example`` as ONNX bytes (opset 17) with the given input/output names and dynamic axes."""
    import warnings

    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python values in the graph
        torch.onnx.export(model, example, buffer, dynamo=False, opset_version=OPSET, input_names=inputs,
                          output_names=outputs, dynamic_axes=dynamic)  # fmt: skip
    return buffer.getvalue()


def onnx_bytes(model: nn.Module, input_size: tuple[int, int, int]) -> bytes:
    """An image-batch model (N, 3, H, W) -> (N, K) as ONNX with a dynamic batch size."""
    import torch

    example = torch.zeros(1, *input_size)
    dynamic = {"images": {0: "batch"}, "outputs": {0: "batch"}}
    return to_onnx(model.eval().cpu(), example, ["images"], ["outputs"], dynamic)


def read_onnx_metadata(path: str | os.PathLike, task: str | None = None) -> dict[str, Any]:
    """The ``cnnapps`` metadata of an exported ONNX file (without loading the weights into a session);
    with ``task``, a file exported for another task is refused."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ExportError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
    found = [prop.value for prop in graph.metadata_props if prop.key == "cnnapps"]
    if not found:
        raise ExportError(f"{path}: an ONNX file without cnnapps metadata; export it with `cnnapps export`")
    try:
        meta = json.loads(found[0])
    except (json.JSONDecodeError, RecursionError):
        raise ExportError(f"{path}: its cnnapps metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise ExportError(f"{path}: its cnnapps metadata is not a JSON object")
    if task is not None and meta.get("task") != task:
        raise ExportError(f"{path}: exported as a {meta.get('task')} model, not a {task} model")
    return meta


class OnnxRunner:
    """``runner(images)`` -> torch tensor: an ONNX image-batch graph in onnxruntime.

    On a CUDA device the CUDA execution provider is required: an onnxruntime without it is an error, not a quiet
    run on the CPU."""

    def __init__(self, model: bytes | str | os.PathLike, device: torch.device | str = "cpu") -> None:
        import onnxruntime as ort
        import torch

        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ExportError(
                    "--engine onnxruntime on cuda: the installed onnxruntime has no CUDA provider "
                    "(install onnxruntime-gpu, or use --device cpu)"
                )
            providers.insert(0, "CUDAExecutionProvider")
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, providers=providers)
        self.providers = self.session.get_providers()
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.shape for o in self.session.get_outputs()]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        import numpy as np
        import torch

        array = np.ascontiguousarray(images.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run(None, {self.input: array})[0]).to(images.device)
