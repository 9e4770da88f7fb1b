"""Train a semantic segmentation model; same run folder as the other tasks.

The run folder holds ``model.safetensors`` (best validation mIoU), ``metrics.json`` (mIoU, pixel accuracy, mean
accuracy, frequency-weighted IoU and per-class IoU of the best model on the validation images), ``curves.png``,
``confusion_matrix.png``, ``config.yaml``, ``checkpoints/`` and ``logs/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnapps.apps.semantic.config import SemanticConfig
from cnnapps.errors import CnnappsError
from cnnapps.terminal import article, plural

__all__ = ["SemanticConfig", "train_semantic"]


def train_semantic(config: SemanticConfig) -> dict[str, Any]:
    """Train, then write the run folder; returns the metrics written to ``metrics.json``."""
    from cnnapps.apps.common.training import run_training

    return run_training(config, _prepare, _finish)


def read_data(config: SemanticConfig) -> tuple[Any, Any]:
    """The training and validation sets the config names (VOC's val list, a validation set, or a held-out split).
    A validation set finds its masks as the training set does (``--val-masks``, or its own VOC or images/ + masks/
    layout), never in the training ``--masks`` folder."""
    from cnnapps.datasets.semantic import SemanticDataError, own_masks, read_semantic_data, split_set

    for name in ("val_masks", "val_images"):  # said of --val-data: without it they would be left unused, unsaid
        if getattr(config, name) and not config.val_data:
            raise SemanticDataError(f"--{name.replace('_', '-')} {getattr(config, name)}: it belongs to --val-data, "
                                    "which is not given (the validation images)")  # fmt: skip
    common = {"classes": config.classes, "ignore_index": config.ignore_index}
    train = read_semantic_data(config.data, masks=config.masks, images=config.images, split="train", **common)
    if config.val_data:
        if config.val_masks is None and Path(config.val_data).is_dir() and own_masks(config.val_data) is None:
            raise SemanticDataError(f"{config.val_data}: no masks for the validation images (not a VOC root nor "
                                    "images/ + masks/); give their folder with --val-masks")  # fmt: skip
        val = read_semantic_data(config.val_data, masks=config.val_masks, images=config.val_images or config.images,
                                 split="val", **common)  # fmt: skip
    elif Path(config.data, "ImageSets", "Segmentation", "val.txt").is_file() and config.masks is None:
        val = read_semantic_data(config.data, split="val", **common)
    else:
        train, val = split_set(train, config.val_split, config.seed)
    if val.class_names != train.class_names:
        raise CnnappsError(f"{config.val_data or config.data}: its classes differ from the training data's")
    return train, val


def model_preprocess(config: SemanticConfig, trunk_preprocess: Any) -> Any:
    """What a model trained with its trunk reads: the whole image squashed to a square of ``input_size`` (or the
    trunk's own input size), normalised as the trunk's weights expect."""
    from cnnapps.backbones.preprocess import Preprocess

    channels, height, _ = trunk_preprocess.input_size
    side = config.input_size or height
    return Preprocess(input_size=(channels, side, side), resize=side, resize_mode="squash",
                      interpolation=trunk_preprocess.interpolation, mean=trunk_preprocess.mean,
                      std=trunk_preprocess.std)  # fmt: skip


def _prepare(config: SemanticConfig, device: Any) -> Any:
    from cnnapps.apps.common.training import Plan, make_loaders
    from cnnapps.apps.semantic.model import whole_image
    from cnnapps.apps.semantic.module import SemanticModule
    from cnnapps.datasets.semantic import semantic_transform
    from cnnapps.datasets.training import SemanticDataset, collate_semantic

    train, val = read_data(config)
    names = train.class_names
    colours = [list(c) for c in train.classes.colours] if train.classes.colours else None
    if config.trunk:  # a new head on a frozen trunk, reading its pass over its own preprocessing
        from cnnapps.apps.common.training import backbone_for, trunk_identity
        from cnnapps.apps.semantic.model import create_shared_semantic

        trunk, fit = backbone_for(config)
        model = create_shared_semantic(trunk, trunk_identity(config)[0], config.head, names,
                                       head_channels=config.head_channels, aux_loss=config.aux_loss,
                                       ignore_index=config.ignore_index, colours=colours)  # fmt: skip
    else:
        from cnnapps.apps.semantic.model import create_semantic

        coco = isinstance(config.weights, str) and config.weights.lower() == "coco"
        model = create_semantic(config.head, config.backbone, class_names=names, weights="coco" if coco else None,
                                backbone_weights=None if coco else config.weights, output_stride=config.output_stride,
                                aux_loss=config.aux_loss, head_channels=config.head_channels,
                                ignore_index=config.ignore_index, colours=colours,
                                **config.backbone_kwargs)  # fmt: skip
        if colours:
            model.spec.colours = colours
        if config.freeze:
            model.backbone.freeze(config.freeze)
        fit = model_preprocess(config, model.backbone.preprocess)
    seen = whole_image(fit)  # trained on crops, scored on whole images in their own frames, as it will answer
    train_set = SemanticDataset(train, semantic_transform(config.augment, fit, config.ignore_index))
    val_set = SemanticDataset(val, preprocess=seen)
    collate = collate_semantic if seen is fit else collate_whole
    train_loader, val_loader = make_loaders(config, train_set, val_set, device, collate)
    head = f"{config.head} head{' (shared trunk)' if config.trunk else ''}"
    describe = (f"training {article(head)} on {config.trunk or config.backbone} ({plural(len(names), 'class')}) with "
                f"{plural(len(train), 'image')}, validating on {len(val)}")  # fmt: skip
    return Plan(SemanticModule(model, config, seen), train_loader, val_loader, describe, "val_miou", len(train),
                len(val), curves=("val_miou", "val_pixel_acc", "val_fwiou"), stop_on=("val_miou", "max"),
                extra={"val": val, "preprocess": fit})  # fmt: skip


def collate_whole(batch: list[Any]) -> tuple[Any, list[Any]]:
    """Like ``collate_semantic``, but whole validation images of different shapes stay a list (each is run alone)."""
    import torch

    images, masks = zip(*batch, strict=True)
    same = len({tuple(image.shape) for image in images}) == 1
    return (torch.stack(images) if same else list(images)), list(masks)


def _finish(config: SemanticConfig, plan: Any, result: Any, device: Any) -> dict[str, Any]:
    """Score the best model on the validation set as it will answer, save it, draw its confusion matrix."""
    from cnnapps.apps.common.plots import plot_confusion
    from cnnapps.apps.common.training import best_epoch_values, trunk_identity
    from cnnapps.apps.semantic.evaluate import evaluate_semantic
    from cnnapps.apps.semantic.model import save_semantic, whole_image
    from cnnapps.apps.semantic.predictor import SemanticPredictor

    out = Path(config.out)
    model = result.module.model.float().eval()
    fit = plan.extra["preprocess"]
    predictor = SemanticPredictor(model=model, preprocess=whole_image(fit), device=str(device))
    report = evaluate_semantic(predictor, plan.extra["val"])
    found = report.to_dict()
    kwargs = trunk_identity(config)[1] if config.trunk else model.trunk_kwargs
    metrics = best_epoch_values(result.history, plan.best)
    save_semantic(out / "model.safetensors", model.cpu(), fit, {plan.best: found["miou"]}, kwargs)
    plot_confusion(report.confusion, report.class_names, out / "confusion_matrix.png")
    return {**metrics, "val_miou": found["miou"], "val_pixel_acc": found["pixel_acc"],
            "val_mean_acc": found["mean_acc"], "val_fwiou": found["fwiou"], "per_class": found["per_class"],
            "confusion_matrix": report.confusion, "class_names": report.class_names,
            "val_failed": report.failed}  # fmt: skip
