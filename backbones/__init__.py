"""Backbones: one registry, one weights resolver, one interface (:class:`Backbone`)."""

from __future__ import annotations

from typing import Any

from cnnapps.backbones.registry import (
    BACKBONES,
    DEFAULT_BACKBONE,
    BackboneSpec,
    create_backbone,
    list_backbones,
)

__all__ = [
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "Backbone",
    "BackboneSpec",
    "Preprocess",
    "StageInfo",
    "create_backbone",
    "list_backbones",
    "summarize",
]

_LAZY = {
    "Backbone": "cnnapps.backbones.features",
    "StageInfo": "cnnapps.backbones.features",
    "Preprocess": "cnnapps.backbones.preprocess",
    "summarize": "cnnapps.backbones.summary",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cnnapps.backbones' has no attribute {name!r}")
