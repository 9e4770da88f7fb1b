"""The classifier: any registry backbone plus a linear head, and how it sits in model files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cnnapps.apps.modelfile import HeadInfo
from cnnapps.backbones import create_backbone
from cnnapps.backbones.features import Backbone
from cnnapps.backbones.preprocess import Preprocess
from cnnapps.bundle import BundleError, is_bundle_path
from cnnapps.errors import CnnappsError

TASK = "classify"


class Classifier(nn.Module):
    """A backbone whose original head is replaced by dropout + linear on its pooled embedding."""

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float = 0.0,
                 class_names: list[str] | None = None) -> None:  # fmt: skip
        super().__init__()
        self.backbone = backbone.drop_head() if backbone.has_head else backbone
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(backbone.embedding_dim, num_classes)
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.backbone.forward_embedding(features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ClassifyHead:
    """The classification head in model files: dropout + linear on the trunk's pooled last feature map."""

    trunk_path = "backbone"

    def describe(self, model: Classifier) -> HeadInfo:
        return HeadInfo(TASK, "linear", {"dropout": float(model.dropout.p)}, list(model.class_names))

    def build(self, trunk: Backbone, info: HeadInfo, preprocess: dict[str, Any], model_file: Any) -> Classifier:
        return Classifier(trunk, len(info.labels), float(info.kwargs.get("dropout", 0.0)), info.labels)

    def from_v1(self, meta: dict[str, Any]) -> tuple[dict[str, Any], HeadInfo, dict[str, Any]]:
        trunk = {"name": meta["backbone"], "kwargs": meta.get("backbone_kwargs", {})}
        head = HeadInfo(TASK, "linear", {"dropout": float(meta.get("head", {}).get("dropout", 0.0))},
                        list(meta["class_names"]))  # fmt: skip
        return trunk, head, meta["preprocess"]

    def predict_shared(self, model: Classifier, shared: Any, options: dict[str, Any]) -> list[Any]:
        """Top-k results from a trunk pass shared with other heads."""
        from cnnapps.apps.classify.predictor import top_k_result

        probabilities = torch.softmax(model.forward_head(shared.features).float(), dim=1).cpu().numpy()
        return [top_k_result("", row, model.class_names, options.get("top_k", 5)) for row in probabilities]


HEAD = ClassifyHead()


@dataclass
class LoadedClassifier:
    """A ready model: logits from ``model(x)``, with the labels and preprocessing it needs."""

    spec: str
    model: nn.Module  # a Classifier, or a Backbone with its pretrained head
    class_names: list[str]
    preprocess: Preprocess
    meta: dict[str, Any] = field(default_factory=dict)  # an exported file's metadata, or the model file's head

    @property
    def backbone(self) -> Backbone:
        return self.model.backbone if isinstance(self.model, Classifier) else self.model


def load_classifier(spec: str | os.PathLike, head: str | None = None) -> LoadedClassifier:
    """A model file's classification head on its trunk, an exported ONNX file, or a registry name with
    pretrained weights."""
    if str(spec).endswith(".onnx"):  # written by `cnnapps export`: runs in onnxruntime
        from cnnapps.exported import OnnxRunner, read_onnx_metadata

        meta = read_onnx_metadata(spec, task=TASK)
        names = meta.get("class_names")
        if not isinstance(names, list) or not names:
            raise CnnappsError(f"{spec}: class_names: expected a list of names in its cnnapps metadata")
        try:
            preprocess = Preprocess.from_dict(meta["preprocess"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CnnappsError(f"{spec}: preprocess: {exc}") from None
        runner = OnnxRunner(spec)
        width = runner.outputs[0][-1] if runner.outputs and runner.outputs[0] else None
        if isinstance(width, int) and width != len(names):
            raise CnnappsError(f"{spec}: its graph gives {width} class scores, its metadata names {len(names)} classes")
        return LoadedClassifier(str(spec), runner, names, preprocess, meta)  # type: ignore[arg-type]
    if is_bundle_path(spec):
        from cnnapps.apps.modelfile import build_model, read_model_file

        model_file = read_model_file(spec)
        name = model_file.head_named(head, TASK)
        model = build_model(model_file, name)
        info = model_file.heads[name]
        meta = {"trunk": model_file.trunk, "head": name, **info.to_dict()}
        return LoadedClassifier(str(spec), model, info.labels, preprocess_of(model_file), meta)
    backbone = create_backbone(str(spec), weights="imagenet")
    if not backbone.has_head or not backbone.class_names:
        raise CnnappsError(f"{spec}: its weights carry no class names; fine-tune it with `cnnapps train classify`")
    return LoadedClassifier(str(spec), backbone.eval(), backbone.class_names, backbone.preprocess,
                            {"trunk": {"name": str(spec)}})  # fmt: skip


def preprocess_of(model_file: Any) -> Preprocess:
    """A model file's preprocessing as a :class:`Preprocess`, or a one-line error naming the file."""
    try:
        return Preprocess.from_dict(model_file.preprocess)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{model_file.path}: preprocess: {exc}") from None


def exportable(spec: str | os.PathLike, task: str = TASK, **options: Any) -> Any:
    """The classifier of ``spec`` for ``cnnapps export``: preprocessed images (N, C, H, W) -> logits (N, classes)."""
    from cnnapps.exported import Exportable
    from cnnapps.quantize import Calibration, preprocessed_batch

    loaded = load_classifier(spec, options.get("head"))
    meta = {"task": TASK, "class_names": loaded.class_names, "preprocess": loaded.preprocess.to_dict()}
    keeps = "ops onnxruntime has no int8 form for (the softmax is not in the graph)"
    calibration = Calibration(preprocessed_batch(loaded.preprocess), "top1", fp32=keeps)
    return Exportable(loaded.model.eval(), meta, torch.zeros(1, *loaded.preprocess.input_size), calibration=calibration)
