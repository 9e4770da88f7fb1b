"""Train a detector, instance segmenter or keypoint model on a COCO-format set; same run folder as classification.

The run folder holds ``model.safetensors`` (best validation AP), ``metrics.json`` (COCO AP of the best
model on the validation images), ``curves.png``, ``config.yaml``, ``checkpoints/`` and ``logs/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnapps.apps.detect.config import DetectConfig
from cnnapps.errors import CnnappsError
from cnnapps.terminal import plural

__all__ = ["DetectConfig", "train_detector"]


def train_detector(config: DetectConfig) -> dict[str, Any]:
    """Train, then write the run folder; returns the metrics written to ``metrics.json``."""
    from cnnapps.apps.common.training import run_training

    return run_training(config, _prepare, _finish)


def _prepare(config: DetectConfig, device: Any) -> Any:
    from cnnapps.apps.common.training import Plan, augment_on_device, make_loaders
    from cnnapps.apps.detect.evaluate import MAIN_METRIC
    from cnnapps.apps.detect.model import training_window
    from cnnapps.apps.detect.module import DetectionModule
    from cnnapps.apps.detect.zoo import data_flip_index
    from cnnapps.datasets.coco import CocoDataset
    from cnnapps.datasets.training import DetectionDataset, collate_detection
    from cnnapps.datasets.transforms import detection_transform

    train_coco = CocoDataset(config.data, config.images, config.task)
    if config.val_data:
        val_coco = CocoDataset(config.val_data, config.val_images or config.images, config.task)
        if val_coco.class_names != train_coco.class_names:
            named = [", ".join(c.class_names[1:6]) + (", ..." if len(c.class_names) > 6 else "")
                     for c in (val_coco, train_coco)]  # fmt: skip
            same = sorted(val_coco.class_names) == sorted(train_coco.class_names)
            raise CnnappsError(
                f"{config.val_data}: its categories ({named[0]}, in id order) differ from "
                f"{config.data}'s ({named[1]}){': the same names under other ids' if same else ''}"
            )
        if val_coco.keypoint_names != train_coco.keypoint_names:  # validation scores keypoints in the model's order
            raise CnnappsError(f"{config.val_data}: its keypoints ({', '.join(val_coco.keypoint_names[:5])}...) "
                               f"differ from {config.data}'s, or are in another order")  # fmt: skip
        train_idx, val_idx = list(range(len(train_coco))), list(range(len(val_coco)))
        source = f"the images of {config.val_data}"
    else:
        val_coco = train_coco
        train_idx, val_idx, source = _own_split(train_coco, config)
    if not train_idx:
        raise CnnappsError(f"{config.data}: no training images left ({source})")

    keypoints = train_coco.keypoint_names
    labels = {
        "num_classes": len(train_coco.class_names),
        "class_names": train_coco.class_names,
        "keypoint_names": keypoints or None,
        "num_keypoints": len(keypoints) or None,
        "skeleton": train_coco.skeleton or None,
    }
    flips = data_flip_index(train_coco) if config.task == "pose" else None
    fit = None
    if config.trunk:  # new heads on a frozen trunk, reading its pass over its own preprocessing
        from cnnapps.apps.common.training import backbone_for, trunk_identity
        from cnnapps.apps.detect.model import create_shared_detector

        trunk, fit = backbone_for(config)
        model = create_shared_detector(config.task, trunk, trunk_identity(config)[0], fit, fpn=config.fpn,
                                       fpn_channels=config.fpn_channels, heads=config.heads, **labels,
                                       **config.options)  # fmt: skip
    else:
        model = _detector(config, labels)
    model.spec.train_size = training_window(_image_sizes(train_coco, train_idx), model.spec)  # --tile auto
    if device.type == "cuda":  # the trunk and FPN: the convolutions over whole images
        from cnnapps.runtime import to_channels_last

        to_channels_last(model.backbone)
    uint8 = augment_on_device(config, device)  # images cross as uint8 and become float on the device
    train_set = DetectionDataset(train_coco, train_idx, detection_transform(config.augment, flips, fit), uint8)
    val_set = DetectionDataset(val_coco, val_idx, uint8=uint8)  # scored in each image's own frame
    train_loader, val_loader = make_loaders(config, train_set, val_set, device, collate_detection)
    main = MAIN_METRIC[config.task]
    trunk_name = config.trunk or config.backbone
    describe = (
        f"training a {config.task} model on {trunk_name} ({plural(len(train_coco.class_names) - 1, 'class')}) with "
        f"{plural(len(train_idx), 'image')}, validating on {len(val_idx)} ({source})"
    )
    return Plan(DetectionModule(model, config, val_coco), train_loader, val_loader, describe, f"val_{main}",
                len(train_idx), len(val_idx), curves=(f"val_{main}", f"val_{main}50", f"val_{main}75"),
                stop_on=(f"val_{main}", "max"), extra={"class_names": train_coco.class_names})  # fmt: skip


def _own_split(coco: Any, config: DetectConfig) -> tuple[list[int], list[int], str]:
    """``(train, val)`` indices and what they are: the data's own train and val images where its source names
    them (test images, and those in no split, left out), else ``--val-split`` of the images (of the train split,
    where that is the only one named) held out at random."""
    from cnnapps.datasets.splits import split_indices

    pool = coco.split("train") if coco.splits else list(range(len(coco)))
    val = coco.split("val") if coco.splits else []
    if val:
        train, source = pool, "the data's val split"
    else:
        held_train, held_val = split_indices(len(pool), config.val_split, config.seed)
        train, val = [pool[i] for i in held_train], [pool[i] for i in held_val]
        source = f"{config.val_split:.0%} of {'its train split' if coco.splits else 'them'} held out at random"
    left = len(coco) - len(train) - len(val)
    if left:
        test = len(coco.split("test"))
        source += f"; {plural(left, 'test image' if left == test else 'image')} left out"
        source += "" if left == test else f" ({test} of the test split, {left - test} in no split)"
    return train, val, source


def _image_sizes(coco: Any, indices: list[int]) -> list[tuple[int, int]]:
    """(height, width) of the dataset's images at ``indices``, as its annotation file states them."""
    infos = coco.coco.imgs
    return [(int(infos[coco.image_ids[i]]["height"]), int(infos[coco.image_ids[i]]["width"])) for i in indices]


def _detector(config: DetectConfig, labels: dict[str, Any]) -> Any:
    """A detector whose trunk trains with it (from ImageNet weights, or torchvision's COCO model)."""
    from cnnapps.apps.detect.model import create_detector

    from_coco = isinstance(config.weights, str) and config.weights.lower() == "coco"
    return create_detector(
        config.task,
        config.backbone,
        **labels,
        trainable_stages=config.trainable_stages,
        weights="coco" if from_coco else None,  # fine-tune torchvision's COCO model: new predictors for our labels
        backbone_weights=None if from_coco else config.weights,
        fpn=config.fpn,
        fpn_channels=config.fpn_channels,
        heads=config.heads,
        min_size=config.min_size,
        max_size=config.max_size,
        **config.options,
    )


def _finish(config: DetectConfig, plan: Any, result: Any, device: Any) -> dict[str, Any]:
    from cnnapps.apps.common.training import best_epoch_values, trunk_identity
    from cnnapps.apps.detect.model import save_detector

    metrics = best_epoch_values(result.history, plan.best)
    model = result.module.model.float().eval()
    save_detector(Path(config.out) / "model.safetensors", model, {plan.best: metrics.get(plan.best)},
                  trunk_identity(config)[1])  # fmt: skip
    return {**metrics, "class_names": plan.extra["class_names"]}
