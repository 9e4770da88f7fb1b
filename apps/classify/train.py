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
    from cnnapps.apps.classify.model import Classifier
    from cnnapps.apps.classify.module import ClassificationModule
    from cnnapps.apps.common.training import Plan, backbone_for, labelled_loaders
    from cnnapps.datasets.folders import train_val_split
    from cnnapps.terminal import plural

    train_set, val_set = train_val_split(config.data, config.val_split, config.seed)
    if len(train_set.class_names) < 2:
        only = train_set.class_names[0]
        raise CnnappsError(f"{config.data}: only one class ({only}); a classifier needs two or more")
    if len(val_set) == 0:
        raise CnnappsError(f"{config.data}: the validation split is empty; add images or raise --val-split")
    backbone, spec = backbone_for(config)
    model = Classifier(backbone, len(train_set.class_names), config.dropout, train_set.class_names)
    module = ClassificationModule(model, config)
    train_loader, val_loader = labelled_loaders(config, model, module, train_set, val_set, spec, device, True)
    trunk = f"trunk {config.trunk}" if config.trunk else f"{config.backbone} ({backbone.weights})"
    describe = (
        f"training {trunk} on {plural(len(train_set), 'image')} of {plural(len(train_set.class_names), 'class')}, "
        f"validating on {len(val_set)}"
    )
    return Plan(module, train_loader, val_loader, describe, "val_top1",
                len(train_set), len(val_set), curves=("val_top1", "val_top5"),
                extra={"val_set": val_set, "spec": spec, "class_names": train_set.class_names})  # fmt: skip


def _finish(config: TrainConfig, plan: Any, result: Any, device: Any) -> dict[str, Any]:
    """Evaluate the best model on the validation set (on the training device), save it, draw its confusion."""
    from cnnapps.apps.classify.evaluate import evaluate, report_from_probs
    from cnnapps.apps.classify.model import LoadedClassifier
    from cnnapps.apps.classify.predictor import ClassificationPredictor
    from cnnapps.apps.common.plots import plot_confusion
    from cnnapps.apps.common.training import trunk_identity
    from cnnapps.apps.modelfile import save_model

    out = Path(config.out)
    names, spec = plan.extra["class_names"], plan.extra["spec"]
    model = result.module.model.float().eval()
    val_set = plan.extra["val_set"]
    best = max(result.history, key=lambda h: h.get(plan.best) or 0.0)["epoch"] if result.history else None
    kept = result.module.outputs_of_best(best, len(val_set))
    if kept is not None:  # the best epoch's validation already scored every image with these weights
        report = report_from_probs(*kept, names)
    else:  # e.g. resumed after the best epoch: score the validation set again
        member = LoadedClassifier(str(out), model, names, spec)
        report = evaluate(ClassificationPredictor([member], device=str(device), engine="eager"), val_set)
    metrics = {"val_top1": report.top1, "val_top5": report.top5, "val_loss": report.loss}
    save_model(out / "model.safetensors", "classify", model, *trunk_identity(config), spec.to_dict(),
               {**metrics, "epochs": len(result.history)})  # fmt: skip
    plot_confusion(report.confusion, names, out / "confusion_matrix.png")
    return {**metrics, "per_class": report.to_dict()["per_class"], "confusion_matrix": report.confusion,
            "class_names": names}  # fmt: skip
