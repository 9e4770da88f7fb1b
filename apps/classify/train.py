"""Fine-tune a backbone on a labelled image set and write a run folder.

The run folder holds ``model.safetensors`` (the self-describing model file, best validation
top-1), ``metrics.json``, ``curves.png``, ``confusion_matrix.png``, ``config.yaml``,
``checkpoints/`` (best and last, for ``--resume``) and ``logs/`` (CSV and TensorBoard).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnapps.apps.classify.config import ClassifyConfig
from cnnapps.apps.common.config import TrainConfig
from cnnapps.errors import CnnappsError

__all__ = ["ClassifyConfig", "train_classifier"]


def train_classifier(config: TrainConfig) -> dict[str, Any]:
    """Run training and write the run folder; returns the metrics written to ``metrics.json``."""
    from cnnapps.apps.common.training import run_training

    return run_training(config, _prepare, _finish)


def _prepare(config: TrainConfig, device: Any) -> Any:
    import torch

    from cnnapps.apps.classify.model import Classifier
    from cnnapps.apps.classify.module import ClassificationModule
    from cnnapps.apps.common.training import Plan, backbone_for, make_loaders
    from cnnapps.datasets.folders import train_val_split
    from cnnapps.datasets.training import LabeledImageDataset
    from cnnapps.datasets.transforms import train_transform

    train_set, val_set = train_val_split(config.data, config.val_split, config.seed)
    if len(train_set.class_names) < 2:
        only = train_set.class_names[0]
        raise CnnappsError(f"{config.data}: only one class ({only}); a classifier needs two or more")
    if len(val_set) == 0:
        raise CnnappsError(f"{config.data}: the validation split is empty; add images or raise --val-split")
    backbone, spec = backbone_for(config)
    model = Classifier(backbone, len(train_set.class_names), config.dropout, train_set.class_names)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    train = LabeledImageDataset(train_set, train_transform(config.augment, spec))
    train_loader, val_loader = make_loaders(config, train, LabeledImageDataset(val_set, spec), device)
    trunk = f"trunk {config.trunk}" if config.trunk else f"{config.backbone} ({backbone.weights})"
    describe = (
        f"training {trunk} on {len(train_set)} images of {len(train_set.class_names)} classes, "
        f"validating on {len(val_set)}"
    )
    return Plan(ClassificationModule(model, config), train_loader, val_loader, describe, "val_top1",
                len(train_set), len(val_set), curves=("val_top1", "val_top5"),
                extra={"val_set": val_set, "spec": spec, "class_names": train_set.class_names})  # fmt: skip


def _finish(config: TrainConfig, plan: Any, result: Any, device: Any) -> dict[str, Any]:
    """Evaluate the best model on the validation set (on the training device), save it, draw its confusion."""
    from cnnapps.apps.classify.evaluate import evaluate
    from cnnapps.apps.classify.model import LoadedClassifier
    from cnnapps.apps.classify.predictor import ClassificationPredictor
    from cnnapps.apps.common.plots import plot_confusion
    from cnnapps.apps.common.training import trunk_identity
    from cnnapps.apps.modelfile import save_model

    out = Path(config.out)
    names, spec = plan.extra["class_names"], plan.extra["spec"]
    model = result.module.model.float().eval()
    member = LoadedClassifier(str(out), model, names, spec)
    report = evaluate(ClassificationPredictor([member], device=str(device), engine="eager"), plan.extra["val_set"])
    metrics = {"val_top1": report.top1, "val_top5": report.top5, "val_loss": report.loss}
    save_model(out / "model.safetensors", "classify", model, *trunk_identity(config), spec.to_dict(),
               {**metrics, "epochs": len(result.history)})  # fmt: skip
    plot_confusion(report.confusion, names, out / "confusion_matrix.png")
    return {**metrics, "per_class": report.to_dict()["per_class"], "confusion_matrix": report.confusion,
            "class_names": names}  # fmt: skip
