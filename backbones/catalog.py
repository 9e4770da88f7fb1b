"""What ``cnnapps models`` lists of the backbones: every registered one, with the state of its pretrained weights.
(Tasks add their own named ready models, such as torchvision's COCO detectors, through the task table.)"""

from __future__ import annotations

from typing import Any

from cnnapps.backbones.registry import TIMM_PREFIX, get_spec, list_backbones
from cnnapps.backbones.weights import status_of


def list_models(timm_pattern: str | None = None) -> list[dict[str, Any]]:
    """Registered backbones, plus timm models with pretrained weights matching ``timm_pattern``.

    Each entry: name, family, source, description and ``weights``: {state, url, path}, where
    state is ``bundled``, ``cached``, ``downloadable`` or ``none``.
    """
    specs = list_backbones()
    if timm_pattern:
        from cnnapps.backbones.timm_nets import import_timm

        timm = import_timm()

        names = sorted({n.split(".")[0] for n in timm.list_models(timm_pattern, pretrained=True)})
        specs += [get_spec(TIMM_PREFIX + n) for n in names]
    return [{**spec.to_dict(), "weights": status_of(spec.name).to_dict()} for spec in specs]
