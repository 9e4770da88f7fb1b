"""What every task's training shares: the config, the run folder, loaders, the Lightning trainer,
optimisers and schedules, and a per-epoch history that survives ``--resume``.

Training only: nothing on an inference path imports this module.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from cnnapps.errors import CnnappsError

log = logging.getLogger("cnnapps")

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step", "plateau", "none")

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
    """Everything a run needs; YAML files in configs/<task>/ set the same fields."""

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


def load_config(path: str | os.PathLike | None = None, config_type: type = TrainConfig, **overrides: Any) -> Any:
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
    known = {f.name for f in dataclasses.fields(config_type)}
    unknown = sorted(set(values) - known)
    if unknown:
        import difflib

        hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, known, 1)) else k for k in unknown]
        raise ConfigError(f"{path or 'config'}: unknown settings {', '.join(hints)}")
    if isinstance(values.get("weights"), str) and values["weights"].lower() == "none":
        values["weights"] = None
    return config_type(**values).validate()


def write_config(config: Any, path: Path) -> None:
    import yaml

    path.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))


def check_run_folder(config: TrainConfig) -> Path:
    """The run folder, refusing to overwrite an earlier run unless resuming it; returns last.ckpt's path."""
    out = Path(config.out)
    last = out / "checkpoints" / "last.ckpt"
    if config.resume and not last.is_file():
        raise CnnappsError(f"{out}: nothing to resume (no checkpoints/last.ckpt)")
    if not config.resume and ((out / "model.safetensors").exists() or last.exists()):
        raise CnnappsError(f"{out}: already holds a training run; pass another --out, or --resume to continue it")
    return last


def backbone_for(config: TrainConfig) -> tuple[Any, Any]:
    """The configured backbone (frozen as asked) and its preprocessing, resized when ``input_size`` is set."""
    from cnnapps.backbones import create_backbone

    backbone = create_backbone(config.backbone, weights=config.weights, **config.backbone_kwargs)
    spec = backbone.preprocess
    if config.input_size:
        s = config.input_size
        resize = s if spec.resize_mode == "squash" else round(s / 0.875)
        spec = dataclasses.replace(spec, input_size=(spec.input_size[0], s, s), resize=resize)
    if config.freeze:
        backbone.freeze(config.freeze)
    return backbone, spec


def loader_args(config: TrainConfig, device: torch.device, collate_fn: Any = None) -> dict[str, Any]:
    """DataLoader settings from the config: batch size, up to 4 worker processes kept alive between epochs,
    pinned memory on CUDA."""
    workers = min(4, os.cpu_count() or 1) if config.workers is None else config.workers
    args = {"batch_size": config.batch_size, "num_workers": workers, "persistent_workers": workers > 0}
    args["pin_memory"] = device.type == "cuda"
    if collate_fn is not None:
        args["collate_fn"] = collate_fn
    return args


def loaders(config: TrainConfig, train_set: Any, val_set: Any, spec: Any, device: torch.device) -> tuple[Any, Any, int]:
    """Training loader (with the augmentation preset) and validation loader (the model's own preprocessing)."""
    from torch.utils.data import DataLoader

    from cnnapps.datasets.training import LabeledImageDataset
    from cnnapps.datasets.transforms import train_transform

    args = loader_args(config, device)
    workers = args["num_workers"]
    train = DataLoader(LabeledImageDataset(train_set, train_transform(config.augment, spec)), shuffle=True, **args)
    val = DataLoader(LabeledImageDataset(val_set, spec), shuffle=False, **args)
    return train, val, workers


@dataclass
class FitResult:
    module: Any
    best_path: str
    seconds: float
    precision: str


def fit(
    config: TrainConfig,
    module: L.LightningModule,
    train_loader: Any,
    val_loader: Any,
    device: torch.device,
    monitor: str,
    describe: str,
    stop_on: tuple[str, str] = ("val_loss", "min"),
) -> FitResult:
    """Train with checkpoints (best on ``monitor``, and last), optional early stopping (on ``stop_on``: a
    metric and "min" or "max", after ``config.patience`` epochs without improvement), CSV + TensorBoard logs."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    # lightning sets its own loggers to INFO when imported; its banners and tips say nothing to our users
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    out = Path(config.out)
    last = out / "checkpoints" / "last.ckpt"
    precision = config.precision if config.precision != "auto" else ("16-mixed" if device.type == "cuda" else "32-true")
    checkpoint = ModelCheckpoint(
        dirpath=out / "checkpoints", filename="best", monitor=monitor, mode="max", save_last=True
    )
    callbacks: list[Any] = [checkpoint]
    if config.patience:
        callbacks.append(EarlyStopping(monitor=stop_on[0], patience=config.patience, mode=stop_on[1]))
    out.mkdir(parents=True, exist_ok=True)
    log.info("%s; %s, %s, %d epochs", describe, device, precision, config.epochs)
    version = next(n for n in range(10_000) if not (out / "logs" / f"version_{n}").exists())
    trainer = L.Trainer(
        max_epochs=config.epochs,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        callbacks=callbacks,
        # logs/version_N: each run or resumption gets its own folder (CSV and TensorBoard files together),
        # so no earlier log is replaced
        logger=[CSVLogger(out, name="logs", version=version), TensorBoardLogger(out, name="logs", version=version)],
        enable_progress_bar=config.progress,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(50, len(train_loader))),
        num_sanity_val_steps=0,
    )
    write_config(config, out / "config.yaml")
    started = time.perf_counter()
    with warnings.catch_warnings():
        for message in _EXPECTED_LIGHTNING_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if config.resume else None)
    seconds = time.perf_counter() - started
    best = checkpoint.best_model_path
    if best and Path(best).is_file():
        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    return FitResult(module, best, seconds, precision)


class TaskModule(L.LightningModule):
    """Optimiser and schedule from the config, training-loss averaging, and an epoch history kept in
    checkpoints (so a resumed run's curves cover every epoch). Subclasses add steps and metrics."""

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.lr, self.optimizer_name, self.momentum = config.learning_rate, config.optimizer, config.momentum
        self.weight_decay, self.schedule, self.epochs = config.weight_decay, config.schedule, config.epochs
        self.history: list[dict[str, float]] = []
        self._train_losses: list[float] = []

    def record_epoch(self, values: dict[str, float]) -> None:
        """Append this epoch's validation values with the mean training loss and current learning rate."""
        self.history.append(
            {
                "epoch": self.current_epoch + 1,
                "train_loss": sum(self._train_losses) / max(1, len(self._train_losses)),
                **values,
                "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]),
            }
        )
        self._train_losses.clear()

    def parameter_groups(self) -> Any:
        """What the optimiser updates: the trainable parameters (subclasses may give groups with own lrs)."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        params = self.parameter_groups()
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.schedule == "cosine":
            return {
                "optimizer": opt,
                "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.epochs)),
            }
        if self.schedule == "step":
            step = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, self.epochs // 3), gamma=0.1)
            return {"optimizer": opt, "lr_scheduler": step}
        if self.schedule == "plateau":  # the lecture's recipe: divide by 10 when validation stops improving
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.1, patience=2)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}
        return opt

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cnnapps_history"] = list(self.history)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint.get("cnnapps_history", []))
