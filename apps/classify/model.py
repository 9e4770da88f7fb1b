"""The classifier: any registry backbone plus a linear head, and how it sits in model files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cnnapps.apps.classify.multilabel import DEFAULT_THRESHOLD, checked_flag, checked_thresholds
from cnnapps.apps.modelfile import HeadInfo, refuse_head
from cnnapps.backbones import create_backbone
from cnnapps.backbones.features import Backbone
from cnnapps.backbones.preprocess import Preprocess
from cnnapps.bundle import BundleError, is_bundle_path
from cnnapps.errors import CnnappsError

TASK = "classify"


class Classifier(nn.Module):
    """A backbone whose original head is replaced by dropout + linear on its pooled embedding.

    ``multilabel``: each class is a yes/no of its own (sigmoid of its logit, a label when it reaches its entry of
    ``thresholds``) instead of one class among all (softmax)."""

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float = 0.0,
                 class_names: list[str] | None = None, multilabel: bool = False,
                 thresholds: list[float] | None = None) -> None:  # fmt: skip
        super().__init__()
        self.backbone = backbone.drop_head() if backbone.has_head else backbone
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(backbone.embedding_dim, num_classes)
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])
        self.multilabel = bool(multilabel)
        self.thresholds = list(thresholds) if thresholds is not None else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.backbone.forward_embedding(features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ClassifyHead:
    """The classification head in model files: dropout + linear on the trunk's pooled last feature map."""

    trunk_path = "backbone"
    kinds = ("linear",)  # the head kinds it builds (a file naming another is refused)

    def describe(self, model: Classifier) -> HeadInfo:
        kwargs: dict[str, Any] = {"dropout": float(model.dropout.p)}
        if getattr(model, "multilabel", False):  # single-label heads are written as before
            thresholds = model.thresholds or [DEFAULT_THRESHOLD] * len(model.class_names)
            kwargs.update(multilabel=True, thresholds=[float(t) for t in thresholds])  # not rounded: 0.9999998 is no 1
        return HeadInfo(TASK, "linear", kwargs, list(model.class_names))

    def build(self, trunk: Backbone, info: HeadInfo, preprocess: dict[str, Any], model_file: Any) -> Classifier:
        where = f"{getattr(model_file, 'path', 'model file')}: heads.{TASK}.kwargs"
        multilabel = checked_flag(info.kwargs.get("multilabel", False), f"{where}.multilabel")  # none: single-label
        thresholds = None
        if multilabel:
            thresholds = checked_thresholds(info.kwargs.get("thresholds"), len(info.labels), where)
        return Classifier(trunk, len(info.labels), float(info.kwargs.get("dropout", 0.0)), info.labels,
                          multilabel, thresholds)  # fmt: skip

    def from_v1(self, meta: dict[str, Any]) -> tuple[dict[str, Any], HeadInfo, dict[str, Any]]:
        trunk = {"name": meta["backbone"], "kwargs": meta.get("backbone_kwargs", {})}
        head = HeadInfo(TASK, "linear", {"dropout": float(meta.get("head", {}).get("dropout", 0.0))},
                        list(meta["class_names"]))  # fmt: skip
        return trunk, head, meta["preprocess"]

    def predict_shared(self, model: Classifier, shared: Any, options: dict[str, Any]) -> list[Any]:
        """Top-k results (and a multi-label head's labels over their thresholds) from a trunk pass shared with
        other heads."""
        from cnnapps.apps.classify.predictor import top_k_result

        logits = model.forward_head(shared.features).float()
        multilabel = getattr(model, "multilabel", False)
        probabilities = (torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)).cpu().numpy()
        limits = None
        if multilabel:
            limits = model.thresholds if options.get("threshold") is None else options["threshold"]
        return [top_k_result("", row, model.class_names, options.get("top_k", 5), limits) for row in probabilities]


HEAD = ClassifyHead()


@dataclass
class LoadedClassifier:
    """A ready model: logits from ``model(x)``, with the labels and preprocessing it needs."""

    spec: str
    model: nn.Module  # a Classifier, or a Backbone with its pretrained head
    class_names: list[str]
    preprocess: Preprocess
    meta: dict[str, Any] = field(default_factory=dict)  # an exported file's metadata, or the model file's head
    multilabel: bool = False  # sigmoid per class, labels over ``thresholds`` (see Classifier)
    thresholds: list[float] | None = None

    @property
    def backbone(self) -> Backbone:
        return self.model.backbone if isinstance(self.model, Classifier) else self.model


def load_classifier(spec: str | os.PathLike, head: str | None = None) -> LoadedClassifier:
    """A model file's classification head on its trunk, an exported ONNX file, or a registry name with
    pretrained weights. ``head``: one classify head of a model file (a one-line error for any other spec)."""
    from cnnapps.exported import is_onnx_file

    graph = is_onnx_file(spec)
    if graph or not is_bundle_path(spec):  # (any existing file is a bundle path: an exported graph is told first)
        refuse_head(head, spec, "an exported graph" if graph else "a registry name")
    if graph:  # written by `cnnapps export`: runs in onnxruntime
        from cnnapps.exported import OnnxRunner, check_graph_input, read_onnx_metadata

        meta = read_onnx_metadata(spec, task=TASK)
        names = meta.get("class_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise CnnappsError(f"{spec}: class_names: expected a list of names (strings) in its cnnapps metadata")
        try:
            preprocess = Preprocess.from_dict(meta["preprocess"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CnnappsError(f"{spec}: preprocess: {exc}") from None
        runner = OnnxRunner(spec)
        check_graph_input(runner, preprocess.input_size, spec)
        width = runner.outputs[0][-1] if runner.outputs and runner.outputs[0] else None
        if isinstance(width, int) and width != len(names):
            raise CnnappsError(f"{spec}: its graph gives {width} class scores, its metadata names {len(names)} classes")
        multilabel = checked_flag(meta.get("multilabel", False), f"{spec}: metadata multilabel")
        thresholds = checked_thresholds(meta.get("thresholds"), len(names), str(spec)) if multilabel else None
        return LoadedClassifier(str(spec), runner, names, preprocess, meta, multilabel,  # type: ignore[arg-type]
                                thresholds)  # fmt: skip
    if is_bundle_path(spec):
        from cnnapps.apps.modelfile import build_model, read_model_file

        model_file = read_model_file(spec)
        name = model_file.head_named(head, TASK)
        model = build_model(model_file, name)
        info = model_file.heads[name]
        meta = {"trunk": model_file.trunk, "head": name, **info.to_dict()}
        return LoadedClassifier(str(spec), model, info.labels, preprocess_of(model_file), meta, model.multilabel,
                                model.thresholds)  # fmt: skip
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
    if isinstance(loaded.meta.get("head"), str):  # a model file's head: which one was written, as retrieve says
        meta["head"] = loaded.meta["head"]
    if loaded.multilabel:  # the graph gives logits: the runner applies the sigmoid and the thresholds
        meta.update(multilabel=True, thresholds=loaded.thresholds)
    keeps = "ops onnxruntime has no int8 form for (the softmax is not in the graph)"
    check, thresholds = "top1", None
    if loaded.multilabel:  # a label per class over its threshold: the check compares label sets
        check, thresholds = "labels", tuple(loaded.thresholds or [DEFAULT_THRESHOLD] * len(loaded.class_names))
    calibration = Calibration(preprocessed_batch(loaded.preprocess), check, fp32=keeps, thresholds=thresholds)
    return Exportable(loaded.model.eval(), meta, torch.zeros(1, *loaded.preprocess.input_size), calibration=calibration)
