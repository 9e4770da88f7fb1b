"""The inference engines ``--engine`` names, whether each can run here, and why not.

Base layer, and light: importing it loads neither torch nor onnxruntime nor openvino (``cnnapps --help`` lists
engines in its help texts); each check imports what it asks about. A requested engine that cannot run is a
one-line :class:`EngineError` naming what is missing, never a quiet run on another engine.
"""

from __future__ import annotations

import importlib.util
import shutil
from typing import Any

from cnnapps.errors import CnnappsError

#: every engine, in the order ``cnnapps models --engines`` lists them
ENGINES = ("auto", "eager", "jit", "compile", "onnxruntime", "onnx-cuda", "tensorrt", "openvino")
#: engines that run the model as an ONNX graph (exported in memory, or an exported file as it is)
GRAPH_ENGINES = ("onnxruntime", "onnx-cuda", "tensorrt", "openvino")
#: engines that need a CUDA GPU; ``openvino`` runs on the CPU only
GPU_ENGINES = ("onnx-cuda", "tensorrt")
CPU_ENGINES = ("openvino",)

DESCRIPTIONS = {
    "auto": "on a CPU jit (eager where a model cannot be traced), on a GPU fp16 autocast",
    "eager": "the PyTorch module as it is, fp32",
    "jit": "a frozen TorchScript graph (batch norm folded), fp32",
    "compile": "torch.compile, compiled once at load for the batch shape",
    "onnxruntime": "ONNX graph in onnxruntime (CPU; CUDA provider with --device cuda)",
    "onnx-cuda": "ONNX graph in onnxruntime's CUDAExecutionProvider (GPU only)",
    "tensorrt": "ONNX graph in onnxruntime's TensorrtExecutionProvider (GPU only)",
    "openvino": "ONNX graph compiled by OpenVINO for the CPU (fp32)",
}

#: the onnxruntime provider each ONNX engine runs on
PROVIDERS = {"onnx-cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class EngineError(CnnappsError):
    """An engine that cannot run here, or cannot run this model, as asked."""


def check_name(engine: str) -> None:
    if engine not in ENGINES:
        raise EngineError(f"--engine {engine}: choose one of {', '.join(ENGINES)}")


def _cuda_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def ort_providers() -> list[str]:
    """The execution providers the installed onnxruntime was built with ([] without onnxruntime)."""
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _tensorrt_libraries() -> bool:
    import ctypes.util

    return any(importlib.util.find_spec(m) is not None for m in ("tensorrt", "tensorrt_libs")) or bool(
        ctypes.util.find_library("nvinfer")
    )


def why_unavailable(engine: str) -> str | None:
    """None when ``engine`` can run here, else what is missing, in words a user can act on."""
    check_name(engine)
    if engine in ("auto", "eager", "jit"):
        return None
    if engine == "compile":
        if any(shutil.which(c) for c in ("g++", "c++", "clang++")) or _cuda_gpu():
            return None
        return "torch.compile needs a C++ compiler on a CPU (install g++) or a CUDA GPU"
    if engine == "openvino":
        if importlib.util.find_spec("openvino") is None:
            return "openvino is not installed (pip install openvino)"
        import openvino as ov

        devices = ov.Core().available_devices
        return (
            None if "CPU" in devices else f"OpenVINO sees no CPU device here (it sees {', '.join(devices) or 'none'})"
        )
    providers = ort_providers()
    if not providers:
        return "onnxruntime is not installed (pip install onnxruntime)"
    if engine == "onnxruntime":
        return None
    missing = []
    if not _cuda_gpu():
        missing.append("no CUDA GPU here")
    if PROVIDERS[engine] not in providers:
        what = "onnxruntime-gpu" if engine == "onnx-cuda" else "onnxruntime-gpu and TensorRT"
        missing.append(f"the installed onnxruntime has no {PROVIDERS[engine]} (install {what})")
    elif engine == "tensorrt" and not _tensorrt_libraries():
        missing.append("the TensorRT libraries are not installed (pip install tensorrt)")
    return "; ".join(missing) or None


def require(engine: str) -> None:
    """Refuse, in one line, an engine that cannot run here."""
    why = why_unavailable(engine)
    if why:
        raise EngineError(f"--engine {engine}: {why}")


def list_engines() -> list[dict[str, Any]]:
    """What ``cnnapps models --engines`` prints: every engine, whether it can run here, and why not."""
    rows = []
    for engine in ENGINES:
        why = why_unavailable(engine)
        rows.append({"engine": engine, "available": why is None, "why_not": why, "description": DESCRIPTIONS[engine]})
    return rows
