"""Fine-tune a backbone on a labelled image set and write a run folder.

The run folder holds ``model.safetensors`` (the self-describing model file, best validation
top-1), ``metrics.json``, ``curves.png``, ``confusion_matrix.png``, ``config.yaml``,
``checkpoints/`` (best and last, for ``--resume``) and ``logs/`` (CSV and TensorBoard).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnapps.errors import CnnappsError

log = logging.getLogger("cnnapps")

# Lightning notices that say nothing to a user of this command: a resumed run's checkpoint folder is
# meant to exist, worker counts are chosen on purpose, frozen stages keep batch norm in eval mode.
_EXPECTED_LIGHTNING_WARNINGS = (
    r"Checkpoint directory .* exists and is not empty",
    r".*does not have many workers.*",
    r"Found \d+ module\(s\) in eval mode",
    r".*LeafSpec.*",
)


class ConfigError(CnnappsError):
    """A training configuration with an unknown key or a bad value."""


@dataclass
class TrainConfig:
    """Everything a classification run needs; YAML files in configs/classify/ set the same fields."""

    data: str = ""
    backbone: str = "efficientnet_lite0"
    weights: str | None = "imagenet"
    freeze: int = 0
    epochs: int = 10
    batch_size: int = 32
    lr: float | None = None  # default: 1e-3 for adamw, 1e-2 for sgd
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    dropout: float = 0.2
    augment: str = "default"
    input_size: int | None = None
    val_split: float = 0.2
    patience: int | None = None  # early stopping on val_loss
    out: str = "runs/classify"
    resume: bool = False
    workers: int | None = None
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    progress: bool = True
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TrainConfig:
        from cnnapps.apps.classify.module import OPTIMIZERS, SCHEDULES
        from cnnapps.datasets.transforms import PRESETS

        if not self.data:
            raise ConfigError("data: required (a class-per-folder tree, a folder with train/ and val/, or a CSV)")
        checks = [
            (self.optimizer in OPTIMIZERS, f"optimizer: {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"schedule: {self.schedule!r} is not one of {', '.join(SCHEDULES)}"),
            (self.augment in PRESETS, f"augment: {self.augment!r} is not one of {', '.join(PRESETS)}"),
            (self.epochs >= 1, f"epochs: must be at least 1, not {self.epochs}"),
            (self.batch_size >= 1, f"batch_size: must be at least 1, not {self.batch_size}"),
            (self.lr is None or self.lr > 0, f"lr: must be positive, not {self.lr}"),
            (0 <= self.dropout < 1, f"dropout: must be in [0, 1), not {self.dropout}"),
            (self.freeze >= 0, f"freeze: must be 0 or more, not {self.freeze}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-2 if self.optimizer == "sgd" else 1e-3)


def load_config(path: str | os.PathLike | None = None, **overrides: Any) -> TrainConfig:
    """Fields from a YAML file, then ``overrides`` (None values are ignored); unknown keys are errors."""
    values: dict[str, Any] = {}
    if path is not None:
        import yaml

        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        import difflib

        hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, known, 1)) else k for k in unknown]
        raise ConfigError(f"{path or 'config'}: unknown settings {', '.join(hints)}")
    if isinstance(values.get("weights"), str) and values["weights"].lower() == "none":
        values["weights"] = None
    return TrainConfig(**values).validate()


def train_classifier(config: TrainConfig) -> dict[str, Any]:
    """Run training and write the run folder; returns the metrics written to ``metrics.json``."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from torch.utils.data import DataLoader

    from cnnapps.apps.classify.evaluate import evaluate
    from cnnapps.apps.classify.model import Classifier, LoadedClassifier, save_classifier
    from cnnapps.apps.classify.module import ClassificationModule
    from cnnapps.apps.classify.plots import plot_confusion, plot_curves
    from cnnapps.apps.classify.predictor import ClassificationPredictor
    from cnnapps.backbones import create_backbone
    from cnnapps.datasets.folders import train_val_split
    from cnnapps.datasets.training import LabeledImageDataset
    from cnnapps.datasets.transforms import train_transform
    from cnnapps.runtime import select_device

    config.validate()
    out = Path(config.out)
    last_ckpt = out / "checkpoints" / "last.ckpt"
    if config.resume and not last_ckpt.is_file():
        raise CnnappsError(f"{out}: nothing to resume (no checkpoints/last.ckpt)")
    if not config.resume and ((out / "model.safetensors").exists() or last_ckpt.exists()):
        raise CnnappsError(f"{out}: already holds a training run; pass another --out, or --resume to continue it")

    L.seed_everything(config.seed, verbose=False)
    train_set, val_set = train_val_split(config.data, config.val_split, config.seed)
    if len(val_set) == 0:
        raise CnnappsError(f"{config.data}: the validation split is empty; add images or raise --val-split")

    backbone = create_backbone(config.backbone, weights=config.weights, **config.backbone_kwargs)
    spec = backbone.preprocess
    if config.input_size:
        s = config.input_size
        resize = s if spec.resize_mode == "squash" else round(s / 0.875)
        spec = dataclasses.replace(spec, input_size=(spec.input_size[0], s, s), resize=resize)
    if config.freeze:
        backbone.freeze(config.freeze)
    model = Classifier(backbone, len(train_set.class_names), dropout=config.dropout)

    device = select_device(config.device)
    workers = min(4, os.cpu_count() or 1) if config.workers is None else config.workers
    loader_args = {"batch_size": config.batch_size, "num_workers": workers, "persistent_workers": workers > 0}
    loader_args["pin_memory"] = device.type == "cuda"
    train_loader = DataLoader(
        LabeledImageDataset(train_set, train_transform(config.augment, spec)),
        shuffle=True,
        drop_last=False,
        **loader_args,
    )
    val_loader = DataLoader(LabeledImageDataset(val_set, spec), shuffle=False, **loader_args)

    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    module = ClassificationModule(
        model,
        lr=config.learning_rate,
        optimizer=config.optimizer,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        schedule=config.schedule,
        epochs=config.epochs,
        label_smoothing=config.label_smoothing,
    )
    precision = config.precision if config.precision != "auto" else ("16-mixed" if device.type == "cuda" else "32-true")
    checkpoint = ModelCheckpoint(
        dirpath=out / "checkpoints", filename="best", monitor="val_top1", mode="max", save_last=True
    )
    callbacks: list[Any] = [checkpoint]
    if config.patience:
        callbacks.append(EarlyStopping(monitor="val_loss", patience=config.patience, mode="min"))
    out.mkdir(parents=True, exist_ok=True)
    log.info(
        "training %s (%s) on %d images of %d classes, validating on %d; %s, %s, %d epochs",
        config.backbone, backbone.weights, len(train_set), len(train_set.class_names), len(val_set),
        device, precision, config.epochs,
    )  # fmt: skip
    trainer = L.Trainer(
        max_epochs=config.epochs,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        callbacks=callbacks,
        # logs/version_N: each run or resumption gets its own folder, so no earlier log is replaced
        logger=[CSVLogger(out, name="logs"), TensorBoardLogger(out, name="logs")],
        enable_progress_bar=config.progress,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(50, len(train_loader))),
        num_sanity_val_steps=0,
    )
    _write_config(config, out / "config.yaml")
    started = time.perf_counter()
    with warnings.catch_warnings():
        for message in _EXPECTED_LIGHTNING_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(last_ckpt) if config.resume else None)
    seconds = time.perf_counter() - started

    best_path = checkpoint.best_model_path
    if best_path and Path(best_path).is_file():
        state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    model = module.model.float().to(memory_format=torch.contiguous_format).cpu().eval()

    predictor = ClassificationPredictor(
        [LoadedClassifier(str(out), model, train_set.class_names, spec)], device="cpu", workers=workers
    )
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
        "train_seconds": round(seconds, 2),
        "device": str(device),
        "precision": precision,
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


def _write_config(config: TrainConfig, path: Path) -> None:
    import yaml

    data = dataclasses.asdict(config)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
