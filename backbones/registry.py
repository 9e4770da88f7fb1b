"""One table of backbone names, one door to build them: :func:`create_backbone`.

The table is plain data (no torch import), so listing names is instant; each entry
names the function that builds it, imported only when that backbone is created.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from cnnapps.errors import UnknownModelError, did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    from cnnapps.backbones.features import Backbone

#: What ``weights=`` accepts: "imagenet" (or a torchvision enum / timm tag name), None, or a local file.
WeightsArg = str | os.PathLike | None

TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: its name, where its code comes from, and which function builds it."""

    name: str
    family: str
    source: str  # "torchvision", "timm" or "cnnapps" (written here)
    builder: str  # "module:function"
    description: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _specs() -> dict[str, BackboneSpec]:
    tv = "cnnapps.backbones.torchvision_nets:build"
    specs = []
    for depth in (11, 13, 16, 19):
        for bn in ("", "_bn"):
            norm = " with batch norm" if bn else ""
            specs.append(BackboneSpec(f"vgg{depth}{bn}", "vgg", "torchvision", tv, f"VGG-{depth}{norm} (2014)"))
    for depth in (18, 34, 50, 101, 152):
        specs.append(BackboneSpec(f"resnet{depth}", "resnet", "torchvision", tv, f"ResNet-{depth} (2015)"))
    specs += [
        BackboneSpec(
            "alexnet", "alexnet", "torchvision", tv, "AlexNet, torchvision's one-GPU variant (64 CONV1 filters)"
        ),
        BackboneSpec("googlenet", "googlenet", "torchvision", tv, "GoogLeNet / Inception v1 (2014)"),
        BackboneSpec(
            "alexnet2012",
            "alexnet",
            "cnnapps",
            "cnnapps.backbones.seed:build_alexnet2012",
            "AlexNet as in the 2012 paper: 227x227 input, 96 CONV1 filters, LRN, overlapping pools",
        ),
        BackboneSpec(
            "lenet5",
            "lenet",
            "cnnapps",
            "cnnapps.backbones.seed:build_lenet5",
            "LeNet-5 (1998): CONV-POOL-CONV-POOL-CONV-FC on 32x32 grey input",
        ),
        BackboneSpec(
            "efficientnet_lite0",
            "efficientnet",
            "timm",
            "cnnapps.backbones.timm_nets:build_efficientnet_lite0",
            "EfficientNet-Lite0 with bundled ImageNet weights (works offline; the default model)",
        ),
    ]
    return {s.name: s for s in specs}


BACKBONES: dict[str, BackboneSpec] = _specs()

#: The embedded default: pretrained weights ship with the package, so it works with no network.
DEFAULT_BACKBONE = "efficientnet_lite0"

#: the constructor settings of model files that record none, where a builder's default changed after such files were
#: written: Lite0 ran in symmetric padding until it ran in the TensorFlow padding its bundled weights were trained in
UNRECORDED_SETTINGS: dict[str, dict[str, Any]] = {"efficientnet_lite0": {"padding": "symmetric"}}


def explicit_settings(name: str, weights: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with the settings of :data:`UNRECORDED_SETTINGS` that the builder would choose by itself made
    explicit (Lite0's padding: "symmetric" for a local weights file, else "same"), so a run's settings (its
    config.yaml) say which network it trains, and a resume rebuilds that one."""
    if name != "efficientnet_lite0" or "padding" in kwargs:
        return kwargs
    return {**kwargs, "padding": lite0_padding(weights)}


def lite0_padding(weights: Any) -> str:
    """The padding Lite0 takes with ``weights`` when none is named: "symmetric" for a local file (timm's PyTorch
    checkpoints), else "same" (the bundled TensorFlow weights, and random init)."""
    from cnnapps.backbones.weights import as_local_file

    return "symmetric" if as_local_file(weights) is not None else "same"


def file_trunk_settings(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A model file's trunk settings with those it was built with but does not record (:data:`UNRECORDED_SETTINGS`)."""
    return {**UNRECORDED_SETTINGS.get(name, {}), **kwargs}


def list_backbones() -> list[BackboneSpec]:
    """All registered backbones (any timm model is also available as ``timm:<name>``)."""
    return list(BACKBONES.values())


def get_spec(name: str) -> BackboneSpec:
    """The registry entry for ``name``; ``timm:<model>`` names get a spec made on the fly."""
    if name.startswith(TIMM_PREFIX):
        model = name[len(TIMM_PREFIX) :]
        if not model:
            raise UnknownModelError("timm: needs a model name, e.g. timm:resnet18")
        return BackboneSpec(name, "timm", "timm", "cnnapps.backbones.timm_nets:build", f"timm model {model}")
    try:
        return BACKBONES[name]
    except KeyError:
        hint = did_you_mean(name, BACKBONES) or "; see `cnnapps models`, or use timm:<name>"
        raise UnknownModelError(f"{name}: unknown backbone{hint}") from None


def create_backbone(name: str, weights: WeightsArg = None, **kwargs: Any) -> Backbone:
    """Build a registered backbone.

    ``weights``: ``None`` (random init), ``"imagenet"`` (the default pretrained weights:
    torchvision's DEFAULT enum, timm's default pretrained tag, or the bundled file),
    a torchvision weights enum name such as ``"IMAGENET1K_V1"``, or a local
    ``.pth``/``.safetensors`` file with the original model's state dict.
    """
    spec = get_spec(name)
    module_name, func_name = spec.builder.split(":")
    build = getattr(importlib.import_module(module_name), func_name)
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    return build(name, weights, **kwargs)
