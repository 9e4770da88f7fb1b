"""The self-describing model file: safetensors tensors plus JSON metadata in the same file.

The metadata says everything needed to rebuild and run the model (task, backbone name,
class names, preprocessing, head config, library version), so ``--model my.safetensors``
needs nothing else. Loading never unpickles: safetensors holds only tensors and strings.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnapps.errors import CnnappsError

if TYPE_CHECKING:  # pragma: no cover
    import torch

FORMAT = "cnnapps-model/1"
_META_KEY = "cnnapps"


class BundleError(CnnappsError):
    """A model file that is missing, not a cnnapps model, or damaged."""


def save_bundle(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write tensors and metadata atomically: a temp file in the same folder, renamed into place."""
    from safetensors.torch import save_file

    from cnnapps import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "version": __version__, **meta}
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(contiguous, tmp, metadata={_META_KEY: json.dumps(header)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata alone (reads only the file header)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(_META_KEY)
    except Exception as exc:
        raise BundleError(f"{path}: not a safetensors model file ({str(exc).splitlines()[0]})") from None
    if raw is None:
        raise BundleError(f"{path}: a safetensors file without cnnapps metadata (not written by cnnapps)")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise BundleError(f"{path}: unsupported model file format {meta.get('format')!r} (expected {FORMAT})")
    return meta


def load_bundle(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a model file."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    return load_file(str(path)), meta


def is_bundle_path(spec: str | os.PathLike) -> bool:
    """Whether a model spec names a file rather than a registry name."""
    return str(spec).endswith(".safetensors") or os.path.isfile(spec)
