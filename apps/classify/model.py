"""The classifier: any registry backbone plus a linear head, and its model file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cnnapps.backbones import create_backbone
from cnnapps.backbones.features import Backbone
from cnnapps.backbones.preprocess import Preprocess
from cnnapps.backbones.weights import load_into
from cnnapps.bundle import BundleError, is_bundle_path, load_bundle, save_bundle
from cnnapps.errors import CnnappsError

TASK = "classify"


class Classifier(nn.Module):
    """A backbone whose original head is replaced by dropout + linear on its pooled embedding."""

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone.drop_head() if backbone.has_head else backbone
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(backbone.embedding_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.backbone.forward_embedding(features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@dataclass
class LoadedClassifier:
    """A ready model: logits from ``model(x)``, with the labels and preprocessing it needs."""

    spec: str
    model: nn.Module  # a Classifier, or a Backbone with its pretrained head
    class_names: list[str]
    preprocess: Preprocess
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def backbone(self) -> Backbone:
        return self.model.backbone if isinstance(self.model, Classifier) else self.model


def load_classifier(spec: str | os.PathLike) -> LoadedClassifier:
    """A model file written by ``cnnapps train classify``, or a registry name with pretrained weights."""
    if str(spec).endswith(".onnx"):  # written by `cnnapps export`: runs in onnxruntime
        from cnnapps.export import OnnxRunner, read_onnx_metadata

        meta = read_onnx_metadata(spec, task=TASK)
        preprocess = Preprocess.from_dict(meta["preprocess"])
        return LoadedClassifier(str(spec), OnnxRunner(spec), meta["class_names"], preprocess, meta)  # type: ignore[arg-type]
    if is_bundle_path(spec):
        tensors, meta = load_bundle(spec)
        if meta.get("task") != TASK:
            raise BundleError(f"{spec}: a {meta.get('task')} model, not a classification model")
        backbone = create_backbone(meta["backbone"], weights=None, **meta.get("backbone_kwargs", {}))
        model = Classifier(backbone, len(meta["class_names"]), **meta.get("head", {}))
        load_into(model, tensors, str(spec))
        return LoadedClassifier(
            str(spec), model.eval(), meta["class_names"], Preprocess.from_dict(meta["preprocess"]), meta
        )
    backbone = create_backbone(str(spec), weights="imagenet")
    if not backbone.has_head or not backbone.class_names:
        raise CnnappsError(f"{spec}: its weights carry no class names; fine-tune it with `cnnapps train classify`")
    return LoadedClassifier(
        str(spec), backbone.eval(), backbone.class_names, backbone.preprocess, {"backbone": str(spec)}
    )


def save_classifier(
    path: str | os.PathLike,
    model: Classifier,
    *,
    backbone_name: str,
    class_names: list[str],
    preprocess: Preprocess,
    backbone_kwargs: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the self-describing model file (tensors + metadata, atomically)."""
    meta = {
        "task": TASK,
        "backbone": backbone_name,
        "backbone_kwargs": backbone_kwargs or {},
        "class_names": list(class_names),
        "preprocess": preprocess.to_dict(),
        "head": {"dropout": float(model.dropout.p)},
        **(extra or {}),
    }
    save_bundle(path, model.state_dict(), meta)
