"""The self-describing model file: safetensors tensors plus JSON metadata in the same file.

Every model file has one schema (format ``cnnapps-model/2``)::

    {"format": "cnnapps-model/2", "version": "0.2.0",
     "trunk": {"name": "efficientnet_lite0", "kwargs": {"padding": "same"}, "fingerprint": "sha256:..."},
     "heads": {"classify": {"task": "classify", "kind": "linear", "kwargs": {...}, "labels": [...],
                            "metrics": {...}}},
     "preprocess": {...}}

with tensors named ``trunk.<key>`` and ``heads.<head name>.<key>``. A single-task file is a file with one head.
This module reads and writes that container and checks its shape; rebuilding the modules is the apps' work
(``cnnapps.apps.modelfile``), and files of the first format (``cnnapps-model/1``) are read there through a
migration. Loading never unpickles: safetensors holds only tensors and strings.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnapps.errors import CnnappsError

if TYPE_CHECKING:  # pragma: no cover
    import torch

FORMAT = "cnnapps-model/2"
FORMAT_V1 = "cnnapps-model/1"
FORMATS = (FORMAT, FORMAT_V1)
_META_KEY = "cnnapps"
#: the most labels (classes, words) a head may carry: more means a damaged or hostile file
MAX_LABELS = 100_000
#: the largest metadata header read (safetensors' own limit is 100 MB)
MAX_HEADER_BYTES = 16 * 2**20


class BundleError(CnnappsError):
    """A model file that is missing, not a cnnapps model, or damaged."""


def save_bundle(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                overwrite: bool = True) -> Path:  # fmt: skip
    """Write tensors and metadata atomically (a temp file in the same folder, renamed into place)."""
    from safetensors.torch import save_file

    from cnnapps import __version__
    from cnnapps.files import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "version": __version__, **meta}
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, str(tmp), metadata={_META_KEY: json.dumps(header)}),
                 overwrite=overwrite)  # fmt: skip
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata alone (reads only the file header), checked to be a known format."""
    return read_header(path)[0]


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], list[str]]:
    """The JSON metadata, checked to be a known format, and the names of the tensors the file holds (both from the
    file header: no tensor is read)."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: model file not found")
    raw, names = _header_text(path)
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError):  # ValueError: also a number of more digits than Python converts
        raise BundleError(f"{path}: its cnnapps metadata is not valid JSON (a damaged model file)") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{path}: its cnnapps metadata is not a JSON object (a damaged model file)")
    if meta.get("format") not in FORMATS:
        raise BundleError(
            f"{path}: unsupported model file format {meta.get('format')!r} (this cnnapps reads {', '.join(FORMATS)}; "
            "a newer cnnapps may have written it)"
        )
    return meta, names


def _header_text(path: Path) -> tuple[str, list[str]]:
    """The metadata string of a safetensors file and its tensors' names, read from its header without loading any
    tensor."""
    try:
        with open(path, "rb") as fh:
            size_bytes = fh.read(8)
            if len(size_bytes) < 8:
                raise BundleError(f"{path}: not a safetensors model file (too short)")
            size = int.from_bytes(size_bytes, "little")
            if size > MAX_HEADER_BYTES:
                raise BundleError(_what_else(path, size))
            header = fh.read(size)
    except OSError as exc:
        raise BundleError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        parsed = json.loads(header)
    except (ValueError, RecursionError):  # bad JSON or text, or a number of more digits than Python converts
        raise BundleError(f"{path}: not a safetensors model file (its header is not JSON)") from None
    metadata = parsed.get("__metadata__") if isinstance(parsed, dict) else None
    raw = metadata.get(_META_KEY) if isinstance(metadata, dict) else None
    if not isinstance(raw, str):
        raise BundleError(f"{path}: a safetensors file without cnnapps metadata (not written by cnnapps)")
    return raw, [name for name in parsed if name != "__metadata__"]


def _what_else(path: Path, size: int) -> str:
    """Why a file whose header is too large is no model file: what it is instead, and what runs."""
    import zipfile

    runs = "cnnapps runs model files (.safetensors) and the ONNX files `cnnapps export` writes"
    from cnnapps.exported import is_onnx_file

    if is_onnx_file(path):  # it may well be one cnnapps exported: it runs, but holds no trunk to build on
        return (
            f"{path}: an ONNX file, not a model file: an exported graph answers (--model FILE.onnx) but has no "
            "trunk or heads to train, compose or export from; use the model file (.safetensors) it came from"
        )
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any("/code/" in name for name in archive.namelist()):
                return f"{path}: a TorchScript file; {runs}; use the model file it was exported from"
        return f"{path}: a zip archive (a PyTorch checkpoint or a NumPy .npz?), not a model file; {runs}"
    return f"{path}: not a safetensors model file (its header claims {size:,} bytes)"


def load_tensors(path: str | os.PathLike, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix``, with the prefix taken off; a floating tensor holding NaN or an
    infinity is a one-line error naming the file and the tensor (it would make every prediction NaN)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys() if k.startswith(prefix)}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for damaged data
        raise BundleError(f"{path}: damaged tensor data ({str(exc).splitlines()[0]})") from None
    for name, tensor in tensors.items():
        if not _all_finite(tensor):
            raise BundleError(f"{path}: {name} holds NaN or infinite values (damaged weights, or weights saved "
                              "from a training run that diverged)")  # fmt: skip
    return {k[len(prefix) :]: v for k, v in tensors.items()}


def _all_finite(tensor: torch.Tensor) -> bool:
    """No NaN and no infinity in a floating tensor (NumPy's check: a few milliseconds for a few million weights, some
    times faster than torch's on a CPU)."""
    import numpy as np
    import torch

    if not tensor.is_floating_point():
        return True
    if tensor.dtype == torch.bfloat16:  # no NumPy dtype
        return bool(torch.isfinite(tensor).all())
    return bool(np.isfinite(tensor.numpy()).all())


def load_bundle(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a model file, as stored."""
    meta = read_metadata(path)
    return load_tensors(path), meta


def tensor_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """A sha256 over names, dtypes, shapes and bytes: equal for equal weights, whatever file they sit in."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().contiguous().cpu()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(_bytes_dtype()).numpy().tobytes() if t.numel() else b"")
    return f"sha256:{digest.hexdigest()}"


def _bytes_dtype() -> Any:
    import torch

    return torch.uint8


def is_bundle_path(spec: str | os.PathLike) -> bool:
    """Whether a model spec names a file rather than a registry name."""
    return str(spec).endswith(".safetensors") or os.path.isfile(spec)
