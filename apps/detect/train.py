"""Train a detector, instance segmenter or keypoint model on a COCO-format set; same run folder as classification.

The run folder holds ``model.safetensors`` (best validation AP), ``metrics.json`` (COCO AP of the best
model on the validation images), ``curves.png``, ``config.yaml``, ``checkpoints/`` and ``logs/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnapps.apps.common.training import ConfigError, TrainConfig
from cnnapps.errors import CnnappsError


@dataclass
class DetectConfig(TrainConfig):
    """``data``: a COCO JSON; ``images``: its image folder; without ``val_data`` a ``val_split`` is held out."""

    task: str = "segment"
    images: str = ""
    val_data: str | None = None
    val_images: str | None = None
    backbone: str = "resnet50"
    batch_size: int = 4
    epochs: int = 12
    trainable_stages: int | None = None
    fpn: bool | None = None
    fpn_channels: int = 256
    heads: str = "v1"
    min_size: int = 800
    max_size: int = 1333
    options: dict[str, Any] = field(default_factory=dict)  # torchvision R-CNN keyword arguments
    out: str = ""

    def validate(self) -> DetectConfig:
        from cnnapps.apps.detect.model import HEAD_STYLES
        from cnnapps.apps.detect.zoo import TASKS
        from cnnapps.datasets.transforms import DETECTION_PRESETS

        if self.task not in TASKS:
            raise ConfigError(f"task: {self.task!r} is not one of {', '.join(TASKS)}")
        if not self.data:
            raise ConfigError("data: required (a COCO annotation JSON)")
        if not self.images:
            raise ConfigError("images: required (the folder the COCO file's file_name entries are relative to)")
        super().validate()
        if self.augment not in DETECTION_PRESETS:
            raise ConfigError(f"augment: {self.augment!r} is not one of {', '.join(DETECTION_PRESETS)}")
        if self.heads not in HEAD_STYLES:
            raise ConfigError(f"heads: {self.heads!r} is not one of {', '.join(HEAD_STYLES)}")
        if self.min_size < 32 or self.max_size < self.min_size:
            raise ConfigError(
                f"min_size/max_size: need 32 <= min_size <= max_size, not {self.min_size}/{self.max_size}"
            )
        self.out = self.out or f"runs/{self.task}"
        return self

    def default_lr(self) -> float:
        return 0.02 * self.batch_size / 16 if self.optimizer == "sgd" else 1e-4


def train_detector(config: DetectConfig) -> dict[str, Any]:
    """Train, then write the run folder; returns the metrics written to ``metrics.json``."""
    import lightning as L
    import numpy as np
    from torch.utils.data import DataLoader

    from cnnapps.apps.common.plots import plot_curves
    from cnnapps.apps.common.training import check_run_folder, fit, loader_args, validation_loader
    from cnnapps.apps.detect.evaluate import MAIN_METRIC
    from cnnapps.apps.detect.model import create_detector, save_detector
    from cnnapps.apps.detect.module import DetectionModule
    from cnnapps.apps.detect.zoo import flip_index
    from cnnapps.datasets.coco import CocoDataset
    from cnnapps.datasets.training import DetectionDataset, collate_detection
    from cnnapps.datasets.transforms import detection_transform
    from cnnapps.runtime import select_device

    config.validate()
    check_run_folder(config)
    L.seed_everything(config.seed, verbose=False)
    train_coco = CocoDataset(config.data, config.images, config.task)
    if config.val_data:
        val_coco = CocoDataset(config.val_data, config.val_images or config.images, config.task)
        if val_coco.class_names != train_coco.class_names:
            raise CnnappsError(f"{config.val_data}: its categories differ from {config.data}'s")
        train_idx, val_idx = list(range(len(train_coco))), list(range(len(val_coco)))
    else:
        val_coco = train_coco
        order = np.random.default_rng(config.seed).permutation(len(train_coco))
        n_val = max(1, round(config.val_split * len(order)))
        val_idx, train_idx = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())
    if not train_idx:
        raise CnnappsError(f"{config.data}: no training images left after the validation split")

    from_coco = isinstance(config.weights, str) and config.weights.lower() == "coco"
    model = create_detector(
        config.task,
        config.backbone,
        num_classes=len(train_coco.class_names),
        class_names=train_coco.class_names,
        keypoint_names=train_coco.keypoint_names or None,
        num_keypoints=len(train_coco.keypoint_names) or None,
        skeleton=train_coco.skeleton or None,
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
    device = select_device(config.device)
    args = loader_args(config, device, collate_detection)
    flips = flip_index(train_coco.keypoint_names) if config.task == "pose" else None
    transform = detection_transform(config.augment, flips)
    train_loader = DataLoader(DetectionDataset(train_coco, train_idx, transform), shuffle=True, **args)
    val_loader = validation_loader(DetectionDataset(val_coco, val_idx), args)
    module = DetectionModule(model, config, val_coco)
    monitor = f"val_{MAIN_METRIC[config.task]}"
    describe = (
        f"training a {config.task} model on {config.backbone} ({len(train_coco.class_names) - 1} classes) with "
        f"{len(train_idx)} images, validating on {len(val_idx)}"
    )
    result = fit(config, module, train_loader, val_loader, device, monitor, describe, stop_on=(monitor, "max"))
    if result.global_rank:  # the other processes of a distributed run: rank 0 writes the run folder
        return {"global_rank": result.global_rank}
    model = result.module.model.float().cpu().eval()
    history = result.module.history
    best = max(history, key=lambda h: h.get(monitor, 0.0)) if history else {}
    metrics = {
        **{k: v for k, v in best.items() if k.startswith("val_")},
        "epochs": len(history),
        "best_epoch": best.get("epoch"),
        "train_images": len(train_idx),
        "val_images": len(val_idx),
        **result.facts,
        "history": history,
        "class_names": train_coco.class_names,
    }
    out = Path(config.out)
    save_detector(out / "model.safetensors", model, extra={"metrics": {monitor: best.get(monitor)}})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if history:
        main = MAIN_METRIC[config.task]
        plot_curves(history, out / "curves.png", metrics=(f"val_{main}", f"val_{main}50", f"val_{main}75"))
    return metrics
