"""Export a model to ONNX or TorchScript, and run exported ONNX graphs with onnxruntime.

The exported file carries what a predictor needs besides the graph (task, class names, preprocessing,
embedding size) as JSON: ONNX metadata property ``cnnapps``, or the TorchScript extra file ``cnnapps.json``.

Graphs:
- classify: preprocessed images (N, 3, H, W) float32 -> logits (N, classes)
- retrieve: preprocessed images -> unit embeddings (N, dim)
- detect / segment / pose (ONNX only): one RGB image (3, H, W) float in [0, 1] -> boxes, labels, scores
  (and masks or keypoints), as torchvision's R-CNN returns them
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnapps.errors import CnnappsError

FORMATS = ("onnx", "torchscript")
OPSET = 17


class ExportError(CnnappsError):
    """A model that cannot be exported as asked, or an exported file that cannot be used."""


def _to_onnx(model: nn.Module, example: Any, inputs: list[str], outputs: list[str], dynamic: dict) -> bytes:
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python values in the graph
        torch.onnx.export(model, example, buffer, dynamo=False, opset_version=OPSET, input_names=inputs,
                          output_names=outputs, dynamic_axes=dynamic)  # fmt: skip
    return buffer.getvalue()


def onnx_bytes(model: nn.Module, input_size: tuple[int, int, int]) -> bytes:
    """An image-batch model (N, 3, H, W) -> (N, K) as ONNX with a dynamic batch size."""
    example = torch.zeros(1, *input_size)
    dynamic = {"images": {0: "batch"}, "outputs": {0: "batch"}}
    return _to_onnx(model.eval().cpu(), example, ["images"], ["outputs"], dynamic)


def _exportable(spec: str | os.PathLike, task: str | None, pooling: str) -> tuple[nn.Module, dict[str, Any], Any]:
    """The module to export, its metadata, and an example input."""
    from cnnapps.api import task_of

    task = task or task_of(spec)
    if task == "classify":
        from cnnapps.apps.classify.model import load_classifier

        loaded = load_classifier(spec)
        meta = {"task": task, "class_names": loaded.class_names, "preprocess": loaded.preprocess.to_dict()}
        return loaded.model.eval(), meta, torch.zeros(1, *loaded.preprocess.input_size)
    if task == "retrieve":
        from cnnapps.apps.retrieve.embedder import load_embedding_model

        model, preprocess, fingerprint = load_embedding_model(spec, pooling)
        example = torch.zeros(1, *preprocess.input_size)
        with torch.no_grad():
            dim = int(model.eval()(example).shape[1])
        meta = {"task": task, "preprocess": preprocess.to_dict(), "dim": dim, "pooling": model.pooling,
                "fingerprint": fingerprint}  # fmt: skip
        return model, meta, example
    if task in ("detect", "segment", "pose"):
        from cnnapps.apps.detect.model import load_detector

        model = load_detector(spec)
        meta = {"task": task, "detector": model.spec.to_dict()}
        return model, meta, [torch.rand(3, 240, 320)]
    raise ExportError(f"{spec}: a {task} model; export takes classify, retrieve, detect, segment and pose models")


def export_model(spec: str | os.PathLike, fmt: str, out: str | os.PathLike, task: str | None = None,
                 pooling: str = "avg") -> dict[str, Any]:  # fmt: skip
    """Write ``spec`` as ``fmt`` to ``out`` (never over an existing file); returns what was written."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists():
        raise ExportError(f"{out}: already exists; choose another --out")
    model, meta, example = _exportable(spec, task, pooling)
    meta = {**meta, "source": str(spec), "format": fmt}
    detector = meta["task"] in ("detect", "segment", "pose")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    if fmt == "onnx":
        import onnx

        if detector:
            names = {"detect": [], "segment": ["masks"], "pose": ["keypoints", "keypoints_scores"]}[meta["task"]]
            outputs = ["boxes", "labels", "scores", *names]
            dynamic = {"image": {1: "height", 2: "width"}, **{n: {0: "detections"} for n in outputs}}
            data = _to_onnx(model, (example,), ["image"], outputs, dynamic)
        else:
            data = onnx_bytes(model, tuple(example.shape[1:]))
        graph = onnx.load_from_string(data)
        graph.metadata_props.add(key="cnnapps", value=json.dumps(meta))
        onnx.save(graph, str(tmp))
    else:
        if detector:
            raise ExportError(f"{spec}: detection models export to ONNX (--format onnx); TorchScript is not supported")
        import warnings

        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notes
            traced = torch.jit.freeze(torch.jit.trace(model.eval(), example))
            torch.jit.save(traced, str(tmp), _extra_files={"cnnapps.json": json.dumps(meta)})
    os.replace(tmp, out)
    return {"path": str(out), "format": fmt, "task": meta["task"], "bytes": out.stat().st_size, "source": str(spec)}


def read_onnx_metadata(path: str | os.PathLike, task: str | None = None) -> dict[str, Any]:
    """The ``cnnapps`` metadata of an exported ONNX file (without loading the weights into a session);
    with ``task``, a file exported for another task is refused."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ExportError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
    found = [json.loads(prop.value) for prop in graph.metadata_props if prop.key == "cnnapps"]
    if not found:
        raise ExportError(f"{path}: an ONNX file without cnnapps metadata; export it with `cnnapps export`")
    if task is not None and found[0].get("task") != task:
        raise ExportError(f"{path}: exported as a {found[0].get('task')} model, not a {task} model")
    return found[0]


class OnnxRunner:
    """``runner(images)`` -> torch tensor: an ONNX image-batch graph in onnxruntime (CPU, or CUDA when the
    installed onnxruntime has it and the device is CUDA)."""

    def __init__(self, model: bytes | str | os.PathLike, device: torch.device | str = "cpu") -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, providers=providers)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run(None, {self.input: array})[0]).to(images.device)
