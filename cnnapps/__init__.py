"""cnnapps: conv backbones as shared parts behind task applications.

Importing this package is cheap: torch and friends load only when a function needs them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# albumentations (training augmentation) asks the network for a newer version when imported; offline that waits
# and warns. Set before any cnnapps code can import it; a value the user set stays.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

__all__ = ["__version__", "create_backbone", "list_backbones", "list_models", "load", "read_image"]

if TYPE_CHECKING:  # pragma: no cover
    from cnnapps.api import list_models, load
    from cnnapps.backbones import create_backbone, list_backbones
    from cnnapps.datasets.io import read_image

_LAZY = {
    "load": "cnnapps.api",
    "create_backbone": "cnnapps.backbones.registry",
    "list_backbones": "cnnapps.backbones.registry",
    "list_models": "cnnapps.api",
    "read_image": "cnnapps.datasets.io",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cnnapps' has no attribute {name!r}")
