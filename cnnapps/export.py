"""``cnnapps export``: a model as ONNX or TorchScript, for any task of the table that can be exported.

The exported file carries what a predictor needs besides the graph (task, class names, preprocessing,
embedding size) as JSON: ONNX metadata property ``cnnapps``, or the TorchScript extra file ``cnnapps.json``.
Each task says what its graph is (``Task.exporter``): classification and embedding graphs take preprocessed
batches (N, 3, H, W); detection graphs one RGB image (3, H, W) in [0, 1].
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cnnapps.exported import ExportError, read_onnx_metadata, to_onnx

__all__ = ["FORMATS", "ExportError", "export_model", "read_onnx_metadata"]

FORMATS = ("onnx", "torchscript")


def export_model(spec: str | os.PathLike, fmt: str, out: str | os.PathLike, task: str | None = None,
                 pooling: str = "avg", head: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Write ``spec`` as ``fmt`` to ``out`` (never over an existing file); returns what was written.

    ``task`` picks what to export (default: the spec's own task; a multi-head file needs it, or ``head``)."""
    from cnnapps.api import task_of
    from cnnapps.apps.tasks import TASKS, get_task
    from cnnapps.files import atomic_write

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise ExportError(f"{out}: already exists; choose another --out")
    if not out.parent.is_dir():
        raise ExportError(f"{out}: its folder {out.parent} does not exist")
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
    exportable = record.part("exporter")(spec, task, pooling=pooling, head=head)
    meta = {**exportable.meta, "source": str(spec), "format": fmt}
    if fmt == "onnx":
        import onnx

        data = to_onnx(exportable.module.eval(), exportable.example, exportable.inputs, exportable.outputs,
                       exportable.dynamic)  # fmt: skip
        graph = onnx.load_from_string(data)
        graph.metadata_props.add(key="cnnapps", value=json.dumps(meta))
        atomic_write(out, graph.SerializeToString())
    else:
        import warnings

        import torch

        extra = {"cnnapps.json": json.dumps(meta)}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notes (trace and save)
            traced = torch.jit.freeze(torch.jit.trace(exportable.module.eval(), exportable.example))
            atomic_write(out, lambda tmp: torch.jit.save(traced, str(tmp), _extra_files=extra))
    return {"path": str(out), "format": fmt, "task": meta["task"], "bytes": out.stat().st_size, "source": str(spec)}
