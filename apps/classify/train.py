"""Fine-tune a backbone on a labelled image set and write a run folder.

The run folder holds ``model.safetensors`` (the self-describing model file, best validation
top-1), ``metrics.json``, ``curves.png``, ``confusion_matrix.png``, ``config.yaml``,
``checkpoints/`` (best and last, for ``--resume``) and ``logs/`` (CSV and TensorBoard).

Multi-label data (``multilabel``, or found in the data: see :func:`cnnapps.datasets.folders.labeled_csv`) trains
the same trunk and linear head with a sigmoid per class; the best epoch is the one of the highest validation mAP,
each class's threshold is tuned for its F1 on the validation set and written in the model file beside the class
names, and ``metrics.json`` holds the mAP, the F1s and the thresholds (no confusion matrix).
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

    return run_training(ClassifyConfig.of(config), _prepare, _finish)


def _prepare(config: ClassifyConfig, device: Any) -> Any:
    import torch

    from cnnapps.apps.classify.balance import balanced_sampler, class_counts, class_weights
    from cnnapps.apps.classify.model import Classifier
    from cnnapps.apps.classify.module import ClassificationModule
    from cnnapps.apps.common.training import Plan, backbone_for, labelled_loaders
    from cnnapps.datasets.folders import train_val_split
    from cnnapps.terminal import plural

    train_set, val_set = train_val_split(config.data, config.val_split, config.seed,
                                         True if config.multilabel else None)  # fmt: skip
    if train_set.multilabel:
        return _prepare_multilabel(config, device, train_set, val_set)
    if len(train_set.class_names) < 2:
        only = train_set.class_names[0]
        raise CnnappsError(f"{config.data}: only one class ({only}); a classifier needs two or more")
    if len(val_set) == 0:
        raise CnnappsError(f"{config.data}: the validation split is empty; add images or raise --val-split")
    names = train_set.class_names
    weights = class_weights(config.class_weights, train_set.labels, names) if config.class_weights else None
    backbone, spec = backbone_for(config)
    header = _apply_preset(config, backbone)
    model = Classifier(backbone, len(names), config.dropout, names)
    prior = torch.as_tensor(class_counts(train_set.labels, len(names))) if config.logit_adjust else None
    module = ClassificationModule(model, config, None if weights is None else torch.as_tensor(weights), prior)
    sampler = balanced_sampler(train_set.labels, len(names), config.seed) if config.sampler == "balanced" else None
    train_loader, val_loader = labelled_loaders(config, model, module, train_set, val_set, spec, device, True,
                                                sampler=sampler)  # fmt: skip
    header += _option_lines(config, module, names, weights)
    trunk = f"trunk {config.trunk}" if config.trunk else f"{config.backbone} ({backbone.weights})"
    describe = (
        f"training {trunk} on {plural(len(train_set), 'image')} of {plural(len(train_set.class_names), 'class')}, "
        f"validating on {len(val_set)}"
    )
    curves = ("val_top1", "val_ema_top1", "val_top5") if config.ema else ("val_top1", "val_top5")
    return Plan(module, train_loader, val_loader, describe, module.best_key,
                len(train_set), len(val_set), curves=curves,
                extra={"val_set": val_set, "spec": spec, "class_names": train_set.class_names},
                header=tuple(header))  # fmt: skip


def _prepare_multilabel(config: ClassifyConfig, device: Any, train_set: Any, val_set: Any) -> Any:
    import torch

    from cnnapps.apps.classify.balance import positive_weights
    from cnnapps.apps.classify.model import Classifier
    from cnnapps.apps.classify.module import MultiLabelModule
    from cnnapps.apps.common.training import Plan, backbone_for, labelled_loaders
    from cnnapps.terminal import plural

    found = "multilabel" if config.multilabel else f"{config.data} has images with several labels"
    config.check_multilabel(found)
    names = train_set.class_names
    if not names:
        raise CnnappsError(f"{config.data}: no labels; a multi-label classifier needs one or more classes")
    if len(val_set) == 0:
        raise CnnappsError(f"{config.data}: the validation split is empty; add images or raise --val-split")
    weights = positive_weights(config.class_weights, train_set.labels, names) if config.class_weights else None
    backbone, spec = backbone_for(config)
    header = _apply_preset(config, backbone)
    model = Classifier(backbone, len(names), config.dropout, names, multilabel=True)
    module = MultiLabelModule(model, config, None if weights is None else torch.as_tensor(weights))
    train_loader, val_loader = labelled_loaders(config, model, module, train_set, val_set, spec, device, True)
    header += _option_lines(config, module, names, weights)
    mean = sum(len(labels) for labels in train_set.labels) / max(1, len(train_set))
    header.insert(0, f"multi-label ({'--multilabel' if config.multilabel else 'found in the data'}): "
                     f"{mean:.2f} labels per training image, a sigmoid per class")  # fmt: skip
    trunk = f"trunk {config.trunk}" if config.trunk else f"{config.backbone} ({backbone.weights})"
    describe = (
        f"training {trunk} on {plural(len(train_set), 'image')} with {plural(len(names), 'label')}, "
        f"validating on {len(val_set)}"
    )
    curves = ("val_map", *(("val_ema_map",) if config.ema else ()), "val_f1_micro", "val_f1_macro")
    return Plan(module, train_loader, val_loader, describe, module.best_key, len(train_set), len(val_set),
                curves=curves, extra={"val_set": val_set, "spec": spec, "class_names": names, "multilabel": True},
                header=tuple(header))  # fmt: skip


def _apply_preset(config: ClassifyConfig, backbone: Any) -> list[str]:
    """Freeze the backbone as the transfer-learning ``preset`` says; returns the header line saying so."""
    if config.preset == "small-data":
        backbone.freeze_all()
        return ["preset small-data: the whole trunk frozen (batch norm included); only the new head trains"]
    if config.preset == "more-data":
        if config.freeze is None:  # a freeze given beside the preset (0 included) wins
            backbone.freeze(len(backbone.stages) // 2)
        frozen = backbone.frozen_stages
        if not frozen:
            return [f"preset more-data: nothing frozen (freeze 0), llrd {config.layer_decay:g} on every stage"]
        return [f"preset more-data: stem and {frozen} of {len(backbone.stages)} stages frozen, "
                f"llrd {config.layer_decay:g} on the rest"]  # fmt: skip
    return []


def _option_lines(config: ClassifyConfig, module: Any, names: list[str], weights: Any) -> list[str]:
    """Header lines for the training options in force (llrd, class weights, sampler, logit adjustment, mix, EMA)."""
    lines = []
    if module.layer_decay is not None:
        groups = module.parameter_groups()
        lrs = ", ".join(f"{g['name']} {g['lr']:.3g}" for g in groups)
        lines.append(f"llrd {module.layer_decay:g}: lr {lrs}")
    if weights is not None:
        shown = ", ".join(f"{n} {w:.3g}" for n, w in list(zip(names, weights, strict=True))[:12])
        more = f", ... ({len(names)} classes)" if len(names) > 12 else ""
        what = "positive weights" if getattr(module.model, "multilabel", False) else "class weights"
        lines.append(f"{what} ({config.class_weights}): {shown}{more}")
    if config.sampler == "balanced":
        lines.append("sampler balanced: training images drawn by inverse class frequency")
    if config.logit_adjust:
        offsets = module.logit_offset.tolist()
        shown = ", ".join(f"{n} {o:+.2f}" for n, o in list(zip(names, offsets, strict=True))[:12])
        more = f", ... ({len(names)} classes)" if len(names) > 12 else ""
        lines.append(f"logit adjust {config.logit_adjust:g}: training logits shifted by {shown}{more}")
    if config.mix != "none":
        lines.append(f"mix {config.mix} on each training batch (soft targets)")
    if config.ema:
        lines.append(f"ema: decay {config.ema_decay:g} (with warm-up), validated beside the raw weights")
    return lines


def _finish(config: TrainConfig, plan: Any, result: Any, device: Any) -> dict[str, Any]:
    """Evaluate the best model on the validation set (on the training device), save it, draw its confusion."""
    from cnnapps.apps.classify.evaluate import evaluate, report_from_probs
    from cnnapps.apps.classify.model import LoadedClassifier
    from cnnapps.apps.classify.predictor import ClassificationPredictor
    from cnnapps.apps.common.plots import plot_confusion
    from cnnapps.apps.common.training import best_epoch, trunk_identity
    from cnnapps.apps.modelfile import save_model

    if plan.extra.get("multilabel"):
        return _finish_multilabel(config, plan, result, device)
    out = Path(config.out)
    names, spec = plan.extra["class_names"], plan.extra["spec"]
    module = result.module
    best_entry = best_epoch(result.history, plan.best)
    best = best_entry.get("epoch")
    chosen = _keep_better_weights(config, module, best_entry, "top1")
    model = module.model.float().eval()
    val_set = plan.extra["val_set"]
    kept = module.outputs_of_best(best, len(val_set))
    if kept is not None:  # the best epoch's validation already scored every image with these weights
        report = report_from_probs(*kept, names)
    else:  # e.g. resumed after the best epoch: score the validation set again
        member = LoadedClassifier(str(out), model, names, spec)
        report = evaluate(ClassificationPredictor([member], device=str(device), engine="eager"), val_set)
    metrics = {"val_top1": report.top1, "val_top5": report.top5, "val_loss": report.loss}
    save_model(out / "model.safetensors", "classify", model, *trunk_identity(config), spec.to_dict(),
               {**metrics, "epochs": len(result.history)})  # fmt: skip
    plot_confusion(report.confusion, names, out / "confusion_matrix.png")
    return {**metrics, **chosen, "per_class": report.to_dict()["per_class"], "confusion_matrix": report.confusion,
            "class_names": names}  # fmt: skip


def _keep_better_weights(config: ClassifyConfig, module: Any, best_entry: dict[str, Any], score: str) -> dict:
    """With an EMA: put the better of the raw and the averaged weights of the best epoch (:func:`ema_won`) in the
    model that is saved; returns metrics.json's ``ema`` entry saying which."""
    from cnnapps.apps.classify.module import ema_won

    if module.ema is None or not best_entry:
        return {}
    raw, averaged = best_entry[f"val_{score}"], best_entry[f"val_ema_{score}"]
    won = ema_won(best_entry, score)
    if won:  # model.safetensors holds the better of the raw and the averaged weights
        module.model.load_state_dict(module.ema.module.state_dict())
    return {"ema": {"weights": "ema" if won else "raw", f"raw_val_{score}": raw,
                    f"ema_val_{score}": averaged, "decay": config.ema_decay}}  # fmt: skip


def _finish_multilabel(config: TrainConfig, plan: Any, result: Any, device: Any) -> dict[str, Any]:
    """Tune each class's threshold on the best epoch's validation probabilities, report mAP and F1s at those
    thresholds (tuned and measured on the same images: optimistic), and save the model with its thresholds."""
    from cnnapps.apps.classify.model import LoadedClassifier
    from cnnapps.apps.classify.multilabel import multilabel_report, scores_of, tune_thresholds
    from cnnapps.apps.classify.predictor import ClassificationPredictor
    from cnnapps.apps.common.training import best_epoch, trunk_identity
    from cnnapps.apps.modelfile import save_model

    out = Path(config.out)
    names, spec, val_set = plan.extra["class_names"], plan.extra["spec"], plan.extra["val_set"]
    module = result.module
    best_entry = best_epoch(result.history, plan.best)
    chosen = _keep_better_weights(config, module, best_entry, "map")
    model = module.model.float().eval()
    kept = module.outputs_of_best(best_entry.get("epoch"), len(val_set))
    if kept is not None:  # the best epoch's validation already scored every image with these weights
        probs, targets = kept
    else:  # e.g. resumed after the best epoch: score the validation set again
        member = LoadedClassifier(str(out), model, names, spec, multilabel=True)
        predictor = ClassificationPredictor([member], device=str(device), engine="eager")
        probs, targets, _ = scores_of(predictor, val_set)
    model.thresholds = tune_thresholds(probs, targets)
    report = multilabel_report(probs, targets, names, model.thresholds)
    # the loss of the weights kept (the history's val_loss is the raw weights' even when the averaged ones win)
    import numpy as np

    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(targets, dtype=np.float64)
    val_loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if y.size else float("nan")
    metrics = {"val_map": report.map, "val_f1_micro": report.f1_micro, "val_f1_macro": report.f1_macro,
               "val_loss": val_loss}  # fmt: skip
    save_model(out / "model.safetensors", "classify", model, *trunk_identity(config), spec.to_dict(),
               {**metrics, "epochs": len(result.history)})  # fmt: skip
    return {**metrics, **chosen, "multilabel": True, "thresholds": report.thresholds,
            "per_class": report.to_dict()["per_class"], "class_names": names}  # fmt: skip
