"""``cnnapps export``: a model as ONNX or TorchScript, for any task of the table that can be exported.

The exported file carries what a predictor needs besides the graph (task, class names, preprocessing,
embedding size) as JSON: ONNX metadata property ``cnnapps``, or the TorchScript extra file ``cnnapps.json``.
Each task says what its graph is (``Task.exporter``): classification and embedding graphs take preprocessed
batches (N, 3, H, W); detection graphs one RGB image (3, H, W) in [0, 1].

``int8=True`` writes the ONNX graph quantized after training (static INT8, calibrated on a folder of images) and
``fp16=True`` in half precision (for GPUs), for the tasks whose record says ``quantize``; either is checked against
the fp32 graph on held-out images and the check is stored in the metadata (``precision``, ``check``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cnnapps.exported import ExportError, is_onnx_file, read_onnx_metadata, to_onnx

__all__ = ["FORMATS", "ExportError", "export_model", "read_onnx_metadata"]

FORMATS = ("onnx", "torchscript")


def export_model(spec: str | os.PathLike, fmt: str, out: str | os.PathLike, task: str | None = None,
                 pooling: str = "avg", head: str | None = None, *, int8: bool = False,
                 calibrate: str | os.PathLike | None = None, check: str | os.PathLike | None = None,
                 fp16: bool = False) -> dict[str, Any]:  # fmt: skip
    """Write ``spec`` as ``fmt`` to ``out`` (never over an existing file; its folder made if missing); returns what
    was written.

    ``task`` picks what to export (default: the spec's own task; a multi-head file needs it, or ``head``).
    ``int8``: static INT8 ONNX calibrated on the images of ``calibrate``; ``fp16``: fp16 ONNX with fp32 inputs and
    outputs. ``check``: a folder of images to compare the smaller graph with fp32 on (``int8`` default: every
    fifth calibration image, held out of calibration); the result is returned and stored in the metadata."""
    from cnnapps.api import task_of
    from cnnapps.apps.tasks import TASKS, get_task
    from cnnapps.files import atomic_write, why_unwritable

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    precision = _precision(fmt, int8, fp16, calibrate, check)
    if is_onnx_file(spec):  # its graph has no module to trace again
        raise ExportError(f"{spec}: an exported ONNX file: export the model file it came from")
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise ExportError(f"{out}: already exists; choose another --out")
    if (why := why_unwritable(out)) is not None:  # a missing folder is made when the file is written
        raise ExportError(f"{out}: {why}; choose another --out")
    if precision != "fp32":  # the folders are checked before any model is loaded or anything is written
        from cnnapps.quantize import readable_images, split_held_out

        calibration_images = readable_images(calibrate, "--calibrate") if calibrate is not None else []
        check_images = readable_images(check, "--check") if check is not None else None
        held_out = check_images is not None
        if precision == "int8":  # without --check, part of the calibration folder is held out to check on
            calibration_images, check_images, held_out = split_held_out(calibration_images, check_images)
    if task is None and head is not None:
        from cnnapps.apps.modelfile import read_model_file

        model_file = read_model_file(spec)
        task = model_file.heads[model_file.head_named(head)].task
    task = task or task_of(spec)
    if task is None:
        raise ExportError(f"{spec}: a model file with several heads; choose one with --task or --head")
    record = get_task(task)
    if fmt not in record.export_formats:
        can = [t.name for t in TASKS.values() if fmt in t.export_formats]
        also = f" ({task} exports as {', '.join(record.export_formats)})" if record.export_formats else ""
        raise ExportError(f"{spec}: {fmt} export takes {', '.join(can)} models, not {task}{also}")
    if precision != "fp32" and not record.quantize:
        can = [t.name for t in TASKS.values() if t.quantize]
        raise ExportError(f"--{precision}: {task} models cannot be written in {precision} ({', '.join(can)} can)")
    exportable = record.part("exporter")(spec, task, pooling=pooling, head=head)
    meta = {**exportable.meta, "source": str(spec), "format": fmt}
    written: dict[str, Any] = {}
    if fmt == "onnx":
        import onnx

        data = to_onnx(exportable.module.eval(), exportable.example, exportable.inputs, exportable.outputs,
                       exportable.dynamic)  # fmt: skip
        if precision != "fp32":
            if exportable.calibration is None:  # a record that says `quantize` must give its exporter a calibration
                raise ExportError(f"--{precision}: {spec}'s graph says nothing of how to feed it; it cannot be checked")
            fp32_bytes = len(data)
            data, meta["quantization"], meta["check"] = _smaller(
                exportable, data, precision, calibration_images, check_images, held_out
            )
            meta["precision"] = precision
            written = {"precision": precision, "fp32_bytes": fp32_bytes, "check": meta["check"]}
        graph = onnx.load_from_string(data)
        graph.metadata_props.add(key="cnnapps", value=json.dumps(meta))
        atomic_write(out, graph.SerializeToString())
    else:
        import torch

        import cnnapps.runtime  # noqa: F401  (its warning filters quiet TorchScript's deprecation notes)

        extra = {"cnnapps.json": json.dumps(meta)}
        with torch.no_grad():  # padding kept as computed from the input: a TorchScript file takes any size
            traced = torch.jit.freeze(torch.jit.trace(exportable.module.eval(), exportable.example))
            atomic_write(out, lambda tmp: torch.jit.save(traced, str(tmp), _extra_files=extra))
    return {
        "path": str(out),
        "format": fmt,
        "task": meta["task"],
        "bytes": out.stat().st_size,
        "source": str(spec),
        **written,
    }


def _precision(fmt: str, int8: bool, fp16: bool, calibrate: Any, check: Any) -> str:
    """``int8``, ``fp16`` or ``fp32`` from the options, or a one-line error for options that do not go together."""
    if int8 and fp16:
        raise ExportError("--int8 and --fp16: choose one")
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    if precision != "fp32" and fmt != "onnx":
        raise ExportError(f"--{precision}: for --format onnx, not {fmt}")
    if int8 and calibrate is None:
        raise ExportError("--int8 needs --calibrate DIR: a folder of images like those the model will see")
    if calibrate is not None and not int8:
        raise ExportError("--calibrate DIR: for --int8")
    if check is not None and precision == "fp32":
        raise ExportError("--check DIR: for --int8 or --fp16")
    return precision


def _smaller(exportable: Any, data: bytes, precision: str, calibrate: list[str], check: list[str] | None,
             held_out: bool) -> tuple[bytes, dict[str, Any], dict[str, Any] | None]:  # fmt: skip
    """The fp32 graph ``data`` in ``precision``, what was done, and how it compares with fp32 on ``check``."""
    from cnnapps.quantize import MAX_CALIBRATION_IMAGES, compare, quantize_int8, to_fp16, with_half_layers

    calibration = exportable.calibration
    if precision == "int8":
        smaller = quantize_int8(data, calibration, calibrate)
        done = {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                "weights": "int8 (7 bits), per channel",
                "activations": "uint8, per tensor, percentile calibration (99.999)",
                "fp32_layers": "fully connected (Gemm, MatMul)",
                "calibration_images": min(len(calibrate), MAX_CALIBRATION_IMAGES),
                "quantized_ops": list(calibration.op_types or ["all that onnxruntime quantizes"]),
                "fp32": calibration.fp32}  # fmt: skip
    elif calibration.half_modules:  # the learned layers in fp16 in PyTorch, exported with casts at their borders
        half = with_half_layers(exportable.module, calibration.half_modules)
        smaller = to_onnx(half, exportable.example, exportable.inputs, exportable.outputs, exportable.dynamic)
        done = {"tool": "torch.onnx (layers in fp16)", "fp16": list(calibration.half_modules),
                "inputs_outputs": "fp32", "fp32": calibration.fp32}  # fmt: skip
    else:
        smaller = to_fp16(data)
        done = {"tool": "onnxruntime.transformers.float16", "inputs_outputs": "fp32",
                "fp32": "ops on onnxruntime's float16 block list (NMS, RoI Align, TopK, ...)"}  # fmt: skip
    found = None
    if check is not None:
        found = {**compare(data, smaller, calibration, check), "held_out": held_out}
    return smaller, done, found
