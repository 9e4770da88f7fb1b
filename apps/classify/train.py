"""Fine-tune a backbone on a labelled image set and write a run folder.

The run folder holds ``model.safetensors`` (the self-describing model file, best validation
top-1), ``metrics.json``, ``curves.png``, ``confusion_matrix.png``, ``config.yaml``,
``checkpoints/`` (best and last, for ``--resume``) and ``logs/`` (CSV and TensorBoard).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnnapps.apps.common.training import TrainConfig
from cnnapps.errors import CnnappsError


def train_classifier(config: TrainConfig) -> dict[str, Any]:
    """Run training and write the run folder; returns the metrics written to ``metrics.json``."""
    import lightning as L
    import torch

    from cnnapps.apps.classify.evaluate import evaluate
    from cnnapps.apps.classify.model import Classifier, LoadedClassifier, save_classifier
    from cnnapps.apps.classify.module import ClassificationModule
    from cnnapps.apps.classify.predictor import ClassificationPredictor
    from cnnapps.apps.common.plots import plot_confusion, plot_curves
    from cnnapps.apps.common.training import backbone_for, check_run_folder, fit, loaders
    from cnnapps.datasets.folders import train_val_split
    from cnnapps.runtime import select_device

    config.validate()
    check_run_folder(config)
    L.seed_everything(config.seed, verbose=False)
    train_set, val_set = train_val_split(config.data, config.val_split, config.seed)
    if len(val_set) == 0:
        raise CnnappsError(f"{config.data}: the validation split is empty; add images or raise --val-split")
    backbone, spec = backbone_for(config)
    model = Classifier(backbone, len(train_set.class_names), dropout=config.dropout)
    device = select_device(config.device)
    train_loader, val_loader, _ = loaders(config, train_set, val_set, spec, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    describe = (
        f"training {config.backbone} ({backbone.weights}) on {len(train_set)} images of "
        f"{len(train_set.class_names)} classes, validating on {len(val_set)}"
    )
    result = fit(config, ClassificationModule(model, config), train_loader, val_loader, device, "val_top1", describe)
    if result.global_rank:  # the other processes of a distributed run: rank 0 writes the run folder
        return {"global_rank": result.global_rank}
    module = result.module
    out = Path(config.out)
    model = module.model.float().to(memory_format=torch.contiguous_format).cpu().eval()

    predictor = ClassificationPredictor([LoadedClassifier(str(out), model, train_set.class_names, spec)], device="cpu")
    report = evaluate(predictor, val_set)
    history = module.history
    metrics = {
        "val_top1": report.top1,
        "val_top5": report.top5,
        "val_loss": report.loss,
        "epochs": len(history),
        "best_epoch": max(history, key=lambda h: h["val_top1"])["epoch"] if history else None,
        "train_images": len(train_set),
        "val_images": len(val_set),
        **result.facts,
        "history": history,
        "per_class": report.to_dict()["per_class"],
        "confusion_matrix": report.confusion,
        "class_names": train_set.class_names,
    }
    save_classifier(
        out / "model.safetensors",
        model,
        backbone_name=config.backbone,
        class_names=train_set.class_names,
        preprocess=spec,
        backbone_kwargs=config.backbone_kwargs,
        extra={"metrics": {k: metrics[k] for k in ("val_top1", "val_top5", "val_loss", "epochs")}},
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if history:
        plot_curves(history, out / "curves.png")
    plot_confusion(report.confusion, train_set.class_names, out / "confusion_matrix.png")
    return metrics
