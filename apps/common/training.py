"""What every task's training shares: one skeleton (run folder, plan, fit, finish, metrics and curves), loaders,
the Lightning trainer, optimisers and schedules, and a per-epoch history that survives ``--resume``.

Training only: nothing on an inference path imports this module.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from cnnapps.apps.common.config import ConfigError, TrainConfig, write_config
from cnnapps.errors import CnnappsError

log = logging.getLogger("cnnapps")

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
    """The backbone to train on and its preprocessing.

    With ``config.trunk`` (a registry name, seeded with ``config.weights``, or a model file whose trunk is taken as
    it is) the whole trunk is frozen and keeps its own preprocessing, so heads trained on it can share one pass.
    Otherwise ``config.backbone`` with ``config.weights``, frozen as asked, resized when ``input_size`` is set."""
    if config.trunk:
        from cnnapps.apps.modelfile import load_trunk

        if config.input_size:
            raise ConfigError("input_size: a --trunk brings its own preprocessing; leave input_size out")
        backbone, spec = load_trunk(config.trunk, config.weights)
        return backbone.freeze_all(), spec
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


def trunk_identity(config: TrainConfig) -> tuple[str, dict[str, Any]]:
    """The registry name and constructor arguments of the trunk a run trains (what its model file records)."""
    if config.trunk:
        from cnnapps.bundle import is_bundle_path

        if is_bundle_path(config.trunk):
            from cnnapps.apps.modelfile import read_model_file

            model_file = read_model_file(config.trunk)
            return model_file.trunk["name"], dict(model_file.trunk.get("kwargs", {}))
        return config.trunk, {}
    return config.backbone, dict(config.backbone_kwargs)


def loader_args(config: TrainConfig, device: torch.device, collate_fn: Any = None) -> dict[str, Any]:
    """DataLoader settings from the config: batch size, up to 4 worker processes kept alive between epochs,
    pinned memory on CUDA."""
    workers = min(4, os.cpu_count() or 1) if config.workers is None else config.workers
    args = {"batch_size": config.batch_size, "num_workers": workers, "persistent_workers": workers > 0}
    args["pin_memory"] = device.type == "cuda"
    if collate_fn is not None:
        args["collate_fn"] = collate_fn
    return args


def make_loaders(config: TrainConfig, train_set: Any, val_set: Any, device: torch.device,
                 collate_fn: Any = None) -> tuple[Any, Any]:  # fmt: skip
    """The training loader (shuffled) and a loader over the whole validation set in order.

    In a distributed run Lightning would give each process a shard of the validation set (padded with repeats
    to equal length); a sampler that is already a ``DistributedSampler`` is left alone, so one over a single
    replica keeps the whole set. Every rank then computes the same, exact validation figures, and checkpoint
    choice and early stopping agree across ranks without gathering predictions."""
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    args = loader_args(config, device, collate_fn)
    train = DataLoader(train_set, shuffle=True, **args)
    whole = DistributedSampler(val_set, num_replicas=1, rank=0, shuffle=False)
    return train, DataLoader(val_set, sampler=whole, **args)


@dataclass
class Plan:
    """A task's part of a training run: the module to fit, its data, and how epochs are judged."""

    module: Any  # a TaskModule
    train_loader: Any
    val_loader: Any
    describe: str  # the first line the run logs
    best: str  # the history value the best epoch maximises (also what the best checkpoint keeps)
    train_images: int
    val_images: int
    curves: tuple[str, ...] = ()  # history values drawn in curves.png beside the losses
    logged: str | None = None  # the name the module logs ``best`` under, when it differs
    stop_on: tuple[str, str] = ("val_loss", "min")  # early stopping: a logged value and "min" or "max"
    extra: dict[str, Any] = field(default_factory=dict)  # anything the task's finish step needs


@dataclass
class FitResult:
    module: Any
    best_path: str
    seconds: float
    precision: str
    global_rank: int = 0  # in a distributed run, only rank 0 writes the run folder
    facts: dict[str, Any] = field(default_factory=dict)  # how the run ran, for metrics.json

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.module.history


def run_training(
    config: TrainConfig,
    prepare: Callable[[Any, torch.device], Plan],
    finish: Callable[[Any, Plan, FitResult, torch.device], dict[str, Any]],
) -> dict[str, Any]:
    """The one training skeleton: check the run folder, ``prepare`` the task's plan, fit, then ``finish`` (the
    task saves its model file and returns its metrics) and write metrics.json and curves.png.

    Returns the metrics written to metrics.json (``{"global_rank": n}`` on the other processes of a distributed
    run, which write nothing)."""
    from cnnapps.runtime import select_device

    config.validate()
    check_run_folder(config)
    L.seed_everything(config.seed, verbose=False)
    device = select_device(config.device)
    plan = prepare(config, device)
    result = fit(config, plan, device)
    if result.global_rank:
        return {"global_rank": result.global_rank}
    history = result.history
    best = max(history, key=lambda h: h.get(plan.best) or 0.0) if history else {}
    metrics = {
        **finish(config, plan, result, device),
        "epochs": len(history),
        "best_epoch": best.get("epoch"),
        "train_images": plan.train_images,
        "val_images": plan.val_images,
        **result.facts,
        "history": history,
    }
    out = Path(config.out)
    from cnnapps.files import atomic_write

    atomic_write(out / "metrics.json", json.dumps(metrics, indent=2).encode(), overwrite=True)
    if history and plan.curves:
        from cnnapps.apps.common.plots import plot_curves

        plot_curves(history, out / "curves.png", metrics=plan.curves)
    return metrics


def best_epoch_values(history: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The validation values of the epoch with the highest ``key`` (what the best checkpoint holds)."""
    best = max(history, key=lambda h: h.get(key) or 0.0) if history else {}
    return {k: v for k, v in best.items() if k.startswith("val_")}


def fit(config: TrainConfig, plan: Plan, device: torch.device) -> FitResult:
    """Train with checkpoints (best on the plan's value, and last), optional early stopping (on ``plan.stop_on``
    after ``config.patience`` epochs without improvement), CSV + TensorBoard logs.

    With ``config.devices``/``num_nodes`` above 1 this is Lightning's DDP: one process per device, each
    training on its shard of every global batch, gradients averaged; launched by Lightning itself, by
    ``torchrun`` or by SLURM's ``srun`` (Lightning reads their environment)."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    module, train_loader, val_loader = plan.module, plan.train_loader, plan.val_loader
    monitor = plan.logged or plan.best
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
        callbacks.append(EarlyStopping(monitor=plan.stop_on[0], patience=config.patience, mode=plan.stop_on[1]))
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
        log.info("%s; %s%s, %s, %d epochs", plan.describe, device, processes, precision, config.epochs)
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
        self._loss_sum: torch.Tensor | None = None  # on the training device: no host sync per step
        self._loss_steps = 0

    def track_train_loss(self, loss: torch.Tensor) -> None:
        """Add a step's loss to the epoch's mean (kept on the device; read once per epoch)."""
        value = loss.detach().float()
        self._loss_sum = value if self._loss_sum is None else self._loss_sum + value
        self._loss_steps += 1

    def record_epoch(self, values: dict[str, float]) -> None:
        """Append this epoch's validation values with the mean training loss and current learning rate."""
        steps = max(1, self._loss_steps)
        mean = self._loss_sum / steps if self._loss_sum is not None else torch.zeros((), device=self.device)
        # each process saw its own shard: the mean over processes (every rank calls this, so the collective
        # matches); the tensor stays on the module's device, which NCCL needs
        train_loss = float(self.trainer.strategy.reduce(mean.to(self.device), reduce_op="mean"))
        self.history.append(
            {
                "epoch": self.current_epoch + 1,
                "train_loss": train_loss,
                **values,
                "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]),
            }
        )
        self._loss_sum, self._loss_steps = None, 0

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
