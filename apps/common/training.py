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
# Lightning strategies offered for several processes (one per GPU, or CPU processes with the gloo backend)
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true")
# how the learning rate follows the number of processes: "linear" (Goyal et al. 2017) or "sqrt" (for Adam-like
# optimisers); "none" keeps the given rate for the larger global batch
LR_SCALING = ("none", "linear", "sqrt")

# Lightning notices that say nothing to a user of this command: a resumed run's checkpoint folder is
# meant to exist, worker counts are chosen on purpose, frozen stages keep batch norm in eval mode.
_EXPECTED_LIGHTNING_WARNINGS = (
    r"Checkpoint directory .* exists and is not empty",
    r".*does not have many workers.*",
    r"Found \d+ module\(s\) in eval mode",
    r".*LeafSpec.*",
    # every rank validates on the whole validation set, so epoch values are the same on all of them
    r".*sync_dist=True.*",
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
    devices: int = 1  # processes per node: GPUs, or CPU processes
    num_nodes: int = 1
    strategy: str = "auto"
    sync_batchnorm: bool = False
    lr_scaling: str = "none"
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
            (self.devices >= 1, f"devices: must be at least 1, not {self.devices}"),
            (self.num_nodes >= 1, f"num_nodes: must be at least 1, not {self.num_nodes}"),
            (self.strategy in STRATEGIES, f"strategy: {self.strategy!r} is not one of {', '.join(STRATEGIES)}"),
            (self.lr_scaling in LR_SCALING, f"lr_scaling: {self.lr_scaling!r} is not one of {', '.join(LR_SCALING)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def default_lr(self) -> float:
        """The learning rate for one process when ``lr`` is not set."""
        return 1e-2 if self.optimizer == "sgd" else 1e-3

    @property
    def world_size(self) -> int:
        """Training processes in all: ``devices`` per node times ``num_nodes``."""
        return self.devices * self.num_nodes

    @property
    def global_batch_size(self) -> int:
        """Images per optimiser step: ``batch_size`` is per process, gradients are averaged over all of them."""
        return self.batch_size * self.world_size

    @property
    def learning_rate(self) -> float:
        """``lr`` (or the default) scaled by the ``lr_scaling`` rule for ``world_size`` processes."""
        base = self.lr if self.lr is not None else self.default_lr()
        factor = {"none": 1.0, "linear": float(self.world_size), "sqrt": self.world_size**0.5}[self.lr_scaling]
        return base * factor

    def scaling_report(self) -> str:
        """One line on the effective batch and the learning rate rule, printed when training starts."""
        base = self.lr if self.lr is not None else self.default_lr()
        nodes = f"{self.num_nodes} node{'s' if self.num_nodes > 1 else ''}"
        batch = f"batch {self.global_batch_size} = {self.batch_size} per process x {self.devices} per node x {nodes}"
        if self.lr_scaling == "none":
            hint = f"; --lr-scaling linear would use {base * self.world_size:g}" if self.world_size > 1 else ""
            return f"{batch}; lr {base:g} (no scaling{hint})"
        return f"{batch}; lr {self.learning_rate:g} ({self.lr_scaling} scaling of {base:g} by {self.world_size})"


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


def validation_loader(dataset: Any, args: dict[str, Any]) -> Any:
    """A loader over the whole validation set, in order, on every process of a distributed run.

    Lightning would give each process a shard (padded with repeats to equal length); a sampler that is
    already a ``DistributedSampler`` is left alone, so one over a single replica keeps the whole set.
    Every rank then computes the same, exact validation figures, and checkpoint choice and early stopping
    agree across ranks without gathering predictions.
    """
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    return DataLoader(dataset, sampler=DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=False), **args)


def loaders(config: TrainConfig, train_set: Any, val_set: Any, spec: Any, device: torch.device) -> tuple[Any, Any, int]:
    """Training loader (with the augmentation preset) and validation loader (the model's own preprocessing)."""
    from torch.utils.data import DataLoader

    from cnnapps.datasets.training import LabeledImageDataset
    from cnnapps.datasets.transforms import train_transform

    args = loader_args(config, device)
    workers = args["num_workers"]
    train = DataLoader(LabeledImageDataset(train_set, train_transform(config.augment, spec)), shuffle=True, **args)
    val = validation_loader(LabeledImageDataset(val_set, spec), args)
    return train, val, workers


@dataclass
class FitResult:
    module: Any
    best_path: str
    seconds: float
    precision: str
    global_rank: int = 0  # in a distributed run, only rank 0 writes the run folder
    facts: dict[str, Any] = field(default_factory=dict)  # how the run ran, for metrics.json


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
    metric and "min" or "max", after ``config.patience`` epochs without improvement), CSV + TensorBoard logs.

    With ``config.devices``/``num_nodes`` above 1 this is Lightning's DDP: one process per device, each
    training on its shard of every global batch, gradients averaged; launched by Lightning itself, by
    ``torchrun`` or by SLURM's ``srun`` (Lightning reads their environment)."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    # lightning sets its own loggers to INFO when imported; its banners and tips say nothing to our users
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)  # "Initializing distributed: ..." per rank
    out = Path(config.out)
    last = out / "checkpoints" / "last.ckpt"
    precision = config.precision if config.precision != "auto" else ("16-mixed" if device.type == "cuda" else "32-true")
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor=monitor, mode="max")
    # last.ckpt after every epoch, for --resume (ModelCheckpoint's own save_last follows only improving epochs)
    last_epoch = ModelCheckpoint(dirpath=out / "checkpoints", filename="last", enable_version_counter=False)
    callbacks: list[Any] = [checkpoint, last_epoch]
    if config.patience:
        callbacks.append(EarlyStopping(monitor=stop_on[0], patience=config.patience, mode=stop_on[1]))
    if config.sync_batchnorm and config.world_size > 1 and device.type != "cuda":
        raise CnnappsError("sync_batchnorm: torch's SyncBatchNorm runs on GPUs only; train on cuda or leave it off")
    out.mkdir(parents=True, exist_ok=True)
    version = next(n for n in range(10_000) if not (out / "logs" / f"version_{n}").exists())
    trainer = L.Trainer(
        max_epochs=config.epochs,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        sync_batchnorm=config.sync_batchnorm,
        precision=precision,
        callbacks=callbacks,
        # logs/version_N: each run or resumption gets its own folder (CSV and TensorBoard files together),
        # so no earlier log is replaced
        logger=[CSVLogger(out, name="logs", version=version), TensorBoardLogger(out, name="logs", version=version)],
        enable_progress_bar=config.progress,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(50, len(train_loader) // config.world_size)),
        num_sanity_val_steps=0,
    )
    if trainer.is_global_zero:
        processes = f", {trainer.world_size} processes" if trainer.world_size > 1 else ""
        log.info("%s; %s%s, %s, %d epochs", describe, device, processes, precision, config.epochs)
        log.info("%s", config.scaling_report())
        write_config(config, out / "config.yaml")
    started = time.perf_counter()
    with warnings.catch_warnings():
        for message in _EXPECTED_LIGHTNING_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if config.resume else None)
    seconds = time.perf_counter() - started
    best = checkpoint.best_model_path
    if trainer.is_global_zero and best and Path(best).is_file():
        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    facts = {
        "train_seconds": round(seconds, 2),
        "device": str(device),
        "precision": precision,
        "processes": trainer.world_size,
        "global_batch_size": config.batch_size * trainer.world_size,
        "lr": config.learning_rate,
    }
    return FitResult(module, best, seconds, precision, trainer.global_rank, facts)


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
        train_loss = sum(self._train_losses) / max(1, len(self._train_losses))
        # each process saw its own shard: the mean over processes (every rank calls this, so the collective matches)
        train_loss = float(self.trainer.strategy.reduce(torch.tensor(train_loss), reduce_op="mean"))
        self.history.append(
            {
                "epoch": self.current_epoch + 1,
                "train_loss": train_loss,
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
