"""What ``cnnapps models`` lists: every registered backbone, and torchvision's COCO detectors, with the
state of their pretrained weights."""

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
        import timm

        names = sorted({n.split(".")[0] for n in timm.list_models(timm_pattern, pretrained=True)})
        specs += [get_spec(TIMM_PREFIX + n) for n in names]
    rows = [{**spec.to_dict(), "weights": status_of(spec.name).to_dict()} for spec in specs]
    return rows + detector_rows()


def detector_rows() -> list[dict[str, Any]]:
    """torchvision's COCO detectors that ``cnnapps detect|segment|pose --model NAME`` load."""
    import os

    import torchvision.models.detection as detection

    from cnnapps.apps.detect.zoo import ZOO
    from cnnapps.backbones.weights import WeightsStatus, hub_checkpoint_path

    rows = []
    for name, (task, heads, enum_name, member) in ZOO.items():
        url = getattr(detection, enum_name)[member].url
        path = hub_checkpoint_path(os.path.basename(url))
        state = WeightsStatus("cached" if path.is_file() else "downloadable", url=url, path=str(path))
        rows.append({"name": name, "family": "rcnn", "source": "torchvision", "task": task,
                     "description": f"{task}: COCO-trained R-CNN on ResNet-50-FPN, {heads} heads",
                     "weights": state.to_dict()})  # fmt: skip
    return rows
