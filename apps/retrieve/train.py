"""Metric learning on a class-per-folder set: the same run folder as classification, with a retrieval model file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnapps.apps.retrieve.config import RetrieveConfig
from cnnapps.errors import CnnappsError

__all__ = ["RetrieveConfig", "train_retrieval"]


def train_retrieval(config: RetrieveConfig) -> dict[str, Any]:
    """Train, then write model.safetensors (a retrieve head), metrics.json and curves.png into ``config.out``."""
    from cnnapps.apps.common.training import run_training

    return run_training(config, _prepare, _finish)


def _prepare(config: RetrieveConfig, device: Any) -> Any:
    from cnnapps.apps.common.training import Plan, backbone_for, labelled_loaders
    from cnnapps.apps.retrieve.embedder import EmbeddingModel
    from cnnapps.apps.retrieve.module import MetricLearningModule
    from cnnapps.datasets.folders import train_val_split
    from cnnapps.terminal import plural

    # val/ may hold classes never trained on (metric learning's usual test), numbered after the training classes
    train_set, val_set = train_val_split(config.data, config.val_split, config.seed, more_classes=True)
    _check_val_classes(config, val_set.labels, len(val_set))
    backbone, spec = backbone_for(config)
    model = EmbeddingModel(backbone, config.pooling, config.embedding_size)
    trained = len(train_set.class_names)
    module = MetricLearningModule(model, config, config.loss, trained)
    # ArcFace's loss needs a trained class's centre: with no validation image of one there is no validation loss,
    # and early stopping and the plateau schedule follow recall@1 instead
    module.has_val_loss = config.loss != "arcface" or any(label < trained for label in val_set.labels)
    train_loader, val_loader = labelled_loaders(config, model, module, train_set, val_set, spec, device)
    trunk = f"trunk {config.trunk}" if config.trunk else config.backbone
    describe = (
        f"training {trunk} embeddings ({config.loss} loss) on {plural(len(train_set), 'image')} of "
        f"{plural(trained, 'class')}, validating on {len(val_set)}{_unseen(config, val_set.labels, trained)}"
    )
    stop_on = ("val_loss", "min") if module.has_val_loss else ("val_recall_at_1", "max")
    return Plan(module, train_loader, val_loader, describe, "val_recall@1", len(train_set), len(val_set),
                curves=("val_recall@1", "val_map@r"), logged="val_recall_at_1", stop_on=stop_on,
                extra={"spec": spec})  # fmt: skip


def _unseen(config: RetrieveConfig, labels: list[int], trained: int) -> str:
    """What the first line says of validation classes never trained on ("" when there are none)."""
    from cnnapps.terminal import plural

    unseen = {label for label in labels if label >= trained}
    if not unseen:
        return ""
    known = sum(label < trained for label in labels)
    if config.loss != "arcface":
        loss = ""
    elif known:
        loss = f"; the validation loss is of the {plural(known, 'image')} of trained classes"
    else:
        loss = "; no validation loss: ArcFace's needs images of trained classes"
    return f" ({plural(len(unseen), 'class')} not trained on{loss})"


def _check_val_classes(config: RetrieveConfig, labels: Any, n: int) -> None:
    """Refuse a validation split in which no class has 2 images: recall@k and mAP@R would have no query to score
    (a stratified split gives each class about --val-split of its images, so small classes give it one each)."""
    import numpy as np

    from cnnapps.apps.retrieve.evaluate import same_class_others

    if n and (same_class_others(np.asarray(labels)) > 0).any():
        return
    from cnnapps.datasets.folders import split_folders

    folders = split_folders(config.data)
    if folders:
        fix = f"put 2 or more images of a class in {folders[1]}"
    else:
        fix = "raise --val-split, or give train/ and val/ folders with 2 or more images of a class in val/"
    raise CnnappsError(
        f"{config.data}: no class has 2 or more of the validation split's {n} images, so retrieval cannot be "
        f"scored; {fix}"
    )


def _finish(config: RetrieveConfig, plan: Any, result: Any, device: Any) -> dict[str, Any]:
    from cnnapps.apps.common.training import best_epoch_values, trunk_identity
    from cnnapps.apps.modelfile import save_model

    history = result.history
    best = best_epoch_values(history, "val_recall@1")
    metrics = {k: best.get(f"val_{k}") for k in ("recall@1", "recall@5", "recall@10", "map@r")}
    metrics = {f"val_{k}": v for k, v in metrics.items()}
    metrics["val_loss"] = best.get("val_loss")  # the best epoch's, as every other value here
    model = result.module.model.float().eval()
    save_model(Path(config.out) / "model.safetensors", "retrieve", model, *trunk_identity(config),
               plan.extra["spec"].to_dict(), {k: metrics[k] for k in ("val_recall@1", "val_map@r")})  # fmt: skip
    return metrics
