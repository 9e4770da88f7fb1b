"""The Lightning module that fine-tunes a :class:`Classifier` (training only)."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from cnnapps.apps.classify.config import ClassifyConfig
from cnnapps.apps.classify.model import Classifier
from cnnapps.apps.common.training import TaskModule, TrainConfig, newest_is_best

log = logging.getLogger("cnnapps")

#: timm's Mixup settings per ``mix`` (the DeiT recipe's alphas; "both" picks MixUp or CutMix per batch)
MIX_SETTINGS = {
    "mixup": {"mixup_alpha": 0.8, "cutmix_alpha": 0.0},
    "cutmix": {"mixup_alpha": 0.0, "cutmix_alpha": 1.0},
    "both": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "switch_prob": 0.5},
}
#: the EMA decay's warm-up, ``min(ema_decay, 1 - (1 + t) ** -EMA_WARMUP_POWER)`` (timm's suggestion for short runs)
EMA_WARMUP_POWER = 0.75


def top_k_accuracy(num_classes: int, k: int) -> MulticlassAccuracy:
    """The share of images whose class is among the top ``k`` (at most every class), as metrics.json and
    ``eval`` report it: ``average="micro"`` (torchmetrics' default, macro, is the mean of the classes' recalls:
    another number whenever the classes differ in size). validate_args=False: the checks call torch.unique and
    read its size, a host sync on every step."""
    return MulticlassAccuracy(num_classes, top_k=min(k, num_classes), average="micro", validate_args=False)


class AveragedWeights:
    """An exponential moving average of the model's weights (timm's ModelEmaV3, with its warm-up), updated after
    each optimiser step; the task module validates it beside the raw weights and keeps the better."""

    ema: Any
    model: nn.Module
    trainer: Any
    score: str  # what validation scores the weights by: "top1" or "map"

    @property
    def best_key(self) -> str:
        """The history value the best epoch is chosen by: ``val_<score>``, or with an EMA the better weights'
        (``val_select_<score>``)."""
        return f"val_select_{self.score}" if self.ema is not None else f"val_{self.score}"

    def select_weights(self, values: dict[str, float]) -> bool:
        """Put the better of the raw and the averaged weights' score and loss in this epoch's ``values``
        (``val_select_<score>``, ``val_select_loss``, by :func:`ema_won`); returns whether the averaged ones won."""
        won = ema_won(values, self.score)
        values[f"val_select_{self.score}"] = values[f"val_ema_{self.score}" if won else f"val_{self.score}"]
        values["val_select_loss"] = values["val_ema_loss" if won else "val_loss"]
        self.log(f"val_select_{self.score}", values[f"val_select_{self.score}"])  # what the best checkpoint watches
        return won

    def make_ema(self, config: ClassifyConfig) -> None:
        self.ema = None
        self._ema_step = -1
        if config.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=config.ema_decay, use_warmup=True,
                                  warmup_power=EMA_WARMUP_POWER)  # fmt: skip
            self.ema.requires_grad_(False)  # averaged, never optimised

    def on_train_start(self) -> None:  # a resumed run's step is restored by now (at on_fit_start it still read 0)
        self._ema_step = self.trainer.global_step

    def on_fit_start(self) -> None:
        if self.ema is not None:  # the model may have been put in channels_last since the copy was made
            fmt = torch.channels_last if _is_channels_last(self.model) else torch.contiguous_format
            self.ema.module.to(memory_format=fmt)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.trainer.global_step  # optimiser steps: with --accumulate N, one per N batches
        if self.ema is not None and step != self._ema_step:
            self._ema_step = step
            self.update_ema(step)

    def update_ema(self, step: int) -> None:
        """Move the averaged weights towards the model's: ``ema += (1 - d) (model - ema)`` with
        ``d = min(ema_decay, 1 - (1 + t) ** -0.75)`` for ``t = step - 1`` (the first step copies the model)."""
        self.ema.update(self.model, step=step)


def ema_won(values: dict[str, Any], score: str) -> bool:
    """Whether an epoch's averaged weights beat its raw ones: a higher ``val_ema_<score>``, a tie by a lower loss
    (what the better weights of the best epoch, the ones saved, are chosen by)."""

    def rank(prefix: str) -> tuple[float, float]:
        loss = values.get(f"{prefix}loss")
        return values[f"{prefix}{score}"], -loss if isinstance(loss, float) and math.isfinite(loss) else -math.inf

    return rank("val_ema_") > rank("val_")


class LossOfThisRun:
    """The loss settings (class weights, logit adjustment) are the run's own, never a checkpoint's: the loss's
    weight buffers stay out of checkpoints (and out of older checkpoints that hold them, when they are loaded),
    so a ``--resume`` trains with the weights its settings give now. A checkpoint records the settings it was
    trained with (``cnnapps_loss``), and a resumed run whose settings differ says so."""

    model: Classifier
    trainer: Any

    def loss_settings(self) -> dict[str, Any]:
        """The loss settings in force, as a checkpoint records them (name -> value)."""
        raise NotImplementedError

    def loss_settings_in(self, state: dict[str, Any]) -> dict[str, Any]:
        """The settings a checkpoint of an older version, which recorded none, kept in its state dict."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        checkpoint["cnnapps_loss"] = self.loss_settings()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        before = checkpoint.get("cnnapps_loss") or self.loss_settings_in(checkpoint.get("state_dict") or {})
        now = self.loss_settings()
        if not self.trainer.is_global_zero:
            return
        for name, value in now.items():
            if name in before and not _same(before[name], value):
                names = self.model.class_names
                log.info("--resume: training on with the %s the settings give now (%s), not the checkpoint's (%s)",
                         name, _shown(value, names), _shown(before[name], names))  # fmt: skip


class ClassificationModule(LossOfThisRun, AveragedWeights, TaskModule):
    """Cross-entropy training with top-1/top-5 validation accuracy.

    Options of :class:`ClassifyConfig`: per-class loss weights (``class_weights``, given here as a tensor), the
    logit-adjusted loss (``logit_adjust``, with ``class_prior``: the training images of each class), MixUp /
    CutMix on the batch with soft targets (``mix``), an EMA of the weights validated beside them (``ema``) and
    layer-wise learning-rate decay (``llrd``).

    Validation batches may carry each image's index in the validation set (``LabeledImageDataset(with_index=
    True)``): the class probabilities of the best epoch so far are then kept (:attr:`best_outputs`), so the
    report written at the end needs no second pass over the validation images."""

    score = "top1"

    def __init__(self, model: Classifier, config: TrainConfig, class_weights: torch.Tensor | None = None,
                 class_prior: torch.Tensor | None = None) -> None:  # fmt: skip
        super().__init__(config)
        config = ClassifyConfig.of(config)
        self.model = model.train()  # Lightning keeps each module's mode; frozen stages keep BN in eval
        num_classes = model.fc.out_features
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        # logit adjustment (Menon et al., 2021): the training loss sees logits + tau log(prior)
        offset = torch.zeros(num_classes)
        if config.logit_adjust:
            if class_prior is None:
                raise ValueError("logit_adjust needs the class prior of the training set")
            prior = torch.as_tensor(class_prior, dtype=torch.float32).clamp_min(1e-12)
            offset = config.logit_adjust * (prior / prior.sum()).log()
        self.register_buffer("logit_offset", offset, persistent=False)
        self.logit_adjust = bool(config.logit_adjust)
        self.logit_tau = float(config.logit_adjust or 0.0)
        # the training loss; validation's stays unweighted and unsmoothed, so val_loss compares across settings
        # (and is the cross-entropy metrics.json reports)
        self.loss = _unsaved(nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing))
        self.val_loss_fn = nn.CrossEntropyLoss()
        self.mixer = None
        if config.mix != "none":
            from timm.data import Mixup

            self.mixer = Mixup(**MIX_SETTINGS[config.mix], label_smoothing=config.label_smoothing,
                               num_classes=num_classes)  # fmt: skip
            self.soft_loss = _unsaved(nn.CrossEntropyLoss(weight=weight))  # the smoothing is in the mixed targets
        self.layer_decay = config.layer_decay
        self.make_ema(config)
        if self.ema is not None:
            self.val_ema_top1 = top_k_accuracy(num_classes, 1)
            self.val_ema_top5 = top_k_accuracy(num_classes, 5)
        self._val_ema_loss_sum: torch.Tensor | None = None
        self._val_ema_count = 0
        self._val_ema_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.train_top1 = top_k_accuracy(num_classes, 1)
        self.val_top1 = top_k_accuracy(num_classes, 1)
        self.val_top5 = top_k_accuracy(num_classes, 5)
        self._val_loss_sum: torch.Tensor | None = None  # summed on the device, read once per epoch
        self._val_count = 0
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        #: the best epoch's validation outputs, by image index: {"epoch", "probs", "labels", "indices"}
        self.best_outputs: dict[str, Any] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def loss_settings(self) -> dict[str, Any]:
        weight = self.loss.weight
        return {"class weights": None if weight is None else weight.tolist(), "logit adjust": self.logit_tau}

    def loss_settings_in(self, state: dict[str, Any]) -> dict[str, Any]:
        weight = state.get("loss.weight")
        return {"class weights": None if weight is None else weight.tolist()}

    def adjusted(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits the training loss sees: with ``logit_adjust``, shifted by tau log(class prior)."""
        return logits + self.logit_offset.to(logits.dtype) if self.logit_adjust else logits

    def mix_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MixUp / CutMix of the batch (in place) and its soft targets (rows summing to 1, label smoothing in
        them). timm mixes even batches: an odd batch's last image keeps its own (smoothed) target."""
        from timm.data.mixup import mixup_target

        even = len(x) - len(x) % 2
        targets = mixup_target(y, self.mixer.num_classes, 1.0, self.mixer.label_smoothing)
        if even >= 2:
            x[:even], targets[:even] = self.mixer(x[:even], y[:even])
        return x, targets

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.mixer is not None:
            x, soft = self.mix_batch(x, y)
            logits = self(x)
            loss = self.soft_loss(self.adjusted(logits), soft)
        else:
            logits = self(x)
            loss = self.loss(self.adjusted(logits), y)
        self.train_top1(logits, y)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)
        self.log("train_top1", self.train_top1, on_step=False, on_epoch=True)
        self.track_train_loss(loss)
        return loss

    def validate_batch(self, batch: tuple[torch.Tensor, ...]) -> None:
        x, y, *index = batch
        if self.ema is not None:
            self._validate_ema(x, y, index)
        logits = self(x)
        loss = self.val_loss_fn(logits, y)
        self.val_top1(logits, y)
        self.val_top5(logits, y)
        self.log("val_loss", loss, prog_bar=True, on_step=False, on_epoch=True)
        self.log("val_top1", self.val_top1, prog_bar=True, on_step=False, on_epoch=True)
        self.log("val_top5", self.val_top5, on_step=False, on_epoch=True)
        total = loss.detach().float() * len(y)
        self._val_loss_sum = total if self._val_loss_sum is None else self._val_loss_sum + total
        self._val_count += len(y)
        if index:  # kept on the device; read once, at the end of the epoch
            self._val_outputs.append((logits.detach().float().softmax(1), y.detach(), index[0].detach()))

    def on_validation_epoch_end(self) -> None:
        val_loss = float(self._val_loss_sum) / max(1, self._val_count) if self._val_loss_sum is not None else 0.0
        self._val_loss_sum, self._val_count = None, 0
        outputs, self._val_outputs = self._val_outputs, []
        if self.trainer.sanity_checking:
            return
        top1 = float(self.val_top1.compute())
        values = {"val_loss": val_loss, "val_top1": top1, "val_top5": float(self.val_top5.compute())}
        if self.ema is not None:
            values.update(self._ema_epoch_values())
            if self.select_weights(values):  # the averaged weights are the better: theirs are the outputs kept
                outputs = self._val_ema_outputs
            self._val_ema_outputs = []
        self.record_epoch(values)
        if outputs and newest_is_best(self.history, self.best_key):  # as the best checkpoint is replaced
            probs, labels, indices = (torch.cat(parts).cpu().numpy() for parts in zip(*outputs, strict=True))
            self.best_outputs = {"epoch": self.current_epoch + 1, "probs": probs, "labels": labels,
                                 "indices": indices}  # fmt: skip

    # -- the averaged weights' validation -----------------------------------------------------------------------
    def _validate_ema(self, x: torch.Tensor, y: torch.Tensor, index: list[torch.Tensor]) -> None:
        logits = self.ema.module(x)
        self.val_ema_top1(logits, y)
        self.val_ema_top5(logits, y)
        total = self.val_loss_fn(logits, y).detach().float() * len(y)
        self._val_ema_loss_sum = total if self._val_ema_loss_sum is None else self._val_ema_loss_sum + total
        self._val_ema_count += len(y)
        if index:
            self._val_ema_outputs.append((logits.detach().float().softmax(1), y.detach(), index[0].detach()))

    def _ema_epoch_values(self) -> dict[str, float]:
        loss_sum = float(self._val_ema_loss_sum) if self._val_ema_loss_sum is not None else 0.0
        values = {
            "val_ema_top1": float(self.val_ema_top1.compute()),
            "val_ema_top5": float(self.val_ema_top5.compute()),
            "val_ema_loss": loss_sum / max(1, self._val_ema_count),
        }
        self.val_ema_top1.reset()
        self.val_ema_top5.reset()
        self._val_ema_loss_sum, self._val_ema_count = None, 0
        return values

    # -- layer-wise learning-rate decay ---------------------------------------------------------------------
    def parameter_groups(self) -> Any:
        """All trainable parameters at ``lr``, or with ``llrd`` one group per depth: the head at lr first, then the
        backbone's stages from the last (lr x llrd, with the trunk's layers after it) to the first with the stem
        (lr x llrd^n)."""
        if self.layer_decay is None:
            return super().parameter_groups()
        return layer_decay_groups(self.model, self.lr, self.layer_decay)

    def outputs_of_best(self, epoch: int | None, size: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(probabilities, labels) of the validation set in order, from epoch ``epoch``'s validation, when this
        run kept them and every image of the set was read (an unreadable one is left out of validation)."""
        kept = self.best_outputs
        if kept is None or kept["epoch"] != epoch or len(kept["indices"]) != size:
            return None
        order = np.argsort(kept["indices"], kind="stable")
        if not np.array_equal(kept["indices"][order], np.arange(size)):
            return None
        return kept["probs"][order], kept["labels"][order]


class MultiLabelModule(LossOfThisRun, AveragedWeights, TaskModule):
    """Multi-label training: binary cross-entropy on each class's logit (``class_weights`` weigh each class's
    positives, label smoothing pulls the targets towards 1/2), validated by the mAP (the best epoch's) and F1s at
    0.5. The validation probabilities of the best epoch so far are kept (:attr:`best_outputs`): the thresholds are
    tuned on them when the run ends, with no second pass. Layer-wise lr decay and the EMA of the weights (its mAP
    validated beside the raw weights', the better kept) as for single-label training."""

    score = "map"

    def __init__(self, model: Classifier, config: TrainConfig, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__(config)
        config = ClassifyConfig.of(config)
        self.model = model.train()
        weight = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
        self.loss = _unsaved(nn.BCEWithLogitsLoss(pos_weight=weight))
        self.val_loss_fn = nn.BCEWithLogitsLoss()  # unweighted, so val_loss compares across settings
        self.smoothing = config.label_smoothing
        self.layer_decay = config.layer_decay
        self.make_ema(config)
        self._val_loss_sum: torch.Tensor | None = None
        self._val_count = 0
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self._val_ema_probs: list[torch.Tensor] = []  # the averaged weights' sigmoids, batch by batch
        self._val_ema_losses: list[torch.Tensor] = []  # and their summed losses
        #: the best epoch's validation outputs: {"epoch", "probs", "labels", "indices"}
        self.best_outputs: dict[str, Any] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def loss_settings(self) -> dict[str, Any]:
        weight = self.loss.pos_weight
        return {"positive weights": None if weight is None else weight.tolist()}

    def loss_settings_in(self, state: dict[str, Any]) -> dict[str, Any]:
        weight = state.get("loss.pos_weight")
        return {"positive weights": None if weight is None else weight.tolist()}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        y = y.float()
        if self.smoothing:
            y = y * (1 - self.smoothing) + 0.5 * self.smoothing
        loss = self.loss(self(x), y)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)
        self.track_train_loss(loss)
        return loss

    def validate_batch(self, batch: tuple[torch.Tensor, ...]) -> None:
        x, y, *index = batch
        if self.ema is not None:
            averaged = self.ema.module(x).float().detach()
            self._val_ema_probs.append(averaged.sigmoid())
            self._val_ema_losses.append(self.val_loss_fn(averaged, y.float()) * len(y))
        logits = self(x).float()
        loss = self.val_loss_fn(logits, y.float())
        self.log("val_loss", loss, prog_bar=True, on_step=False, on_epoch=True)
        total = loss.detach() * len(y)
        self._val_loss_sum = total if self._val_loss_sum is None else self._val_loss_sum + total
        self._val_count += len(y)
        # kept on the device; read once, at the end of the epoch
        self._val_outputs.append((logits.detach().sigmoid(), y.detach(), index[0].detach() if index else None))

    def on_validation_epoch_end(self) -> None:
        from cnnapps.apps.classify.multilabel import multilabel_report

        val_loss = float(self._val_loss_sum) / max(1, self._val_count) if self._val_loss_sum is not None else 0.0
        self._val_loss_sum, self._val_count = None, 0
        outputs, self._val_outputs = self._val_outputs, []
        ema_parts, self._val_ema_probs = self._val_ema_probs, []
        ema_losses, self._val_ema_losses = self._val_ema_losses, []
        if self.trainer.sanity_checking or not outputs:
            return
        probs = torch.cat([p for p, _, _ in outputs]).cpu().numpy()
        labels = torch.cat([y for _, y, _ in outputs]).cpu().numpy()
        names = self.model.class_names
        at_half = multilabel_report(probs, labels, names)  # F1s at 0.5 (the mAP needs no threshold)
        values = {"val_loss": val_loss, "val_map": at_half.map, "val_f1_micro": at_half.f1_micro,
                  "val_f1_macro": at_half.f1_macro}  # fmt: skip
        self.log("val_map", at_half.map, prog_bar=True)
        if ema_parts:
            ema_probs = torch.cat(ema_parts).cpu().numpy()
            values["val_ema_map"] = multilabel_report(ema_probs, labels, names).map
            values["val_ema_loss"] = float(torch.stack(ema_losses).sum()) / max(1, len(labels))
            if self.select_weights(values):  # the averaged weights are the better: theirs are the outputs kept
                probs = ema_probs
        self.record_epoch(values)
        if outputs[0][2] is not None and newest_is_best(self.history, self.best_key):  # as the best checkpoint
            indices = torch.cat([i for _, _, i in outputs]).cpu().numpy()
            self.best_outputs = {"epoch": self.current_epoch + 1, "probs": probs, "labels": labels,
                                 "indices": indices}  # fmt: skip

    def parameter_groups(self) -> Any:
        if self.layer_decay is None:
            return super().parameter_groups()
        return layer_decay_groups(self.model, self.lr, self.layer_decay)

    def outputs_of_best(self, epoch: int | None, size: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(probabilities, multi-hot labels) of the validation set in order, from epoch ``epoch``'s validation
        (as :meth:`ClassificationModule.outputs_of_best`)."""
        return ClassificationModule.outputs_of_best(self, epoch, size)  # type: ignore[arg-type]


def layer_decay_groups(model: Classifier, lr: float, decay: float) -> list[dict[str, Any]]:
    """Optimiser parameter groups of layer-wise lr decay (trainable parameters only; empty groups left out)."""
    stages = [list(group) for group in model.backbone.stage_parameters()]
    in_stages = {id(p) for group in stages for p in group}
    # the trunk's layers after its last stage (e.g. EfficientNet's conv_head) go with the last stage
    stages[-1] += [p for p in model.backbone.parameters() if id(p) not in in_stages]
    in_trunk = {id(p) for p in model.backbone.parameters()}
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in in_trunk]
    groups = [{"params": head, "lr": lr, "name": "head"}]
    for k, group in enumerate(reversed(stages), start=1):
        params = [p for p in group if p.requires_grad]
        name = model.backbone.stages[len(stages) - k].name if len(model.backbone.stages) == len(stages) else str(k)
        groups.append({"params": params, "lr": lr * decay**k, "name": name})
    return [g for g in groups if g["params"]]


def _is_channels_last(model: nn.Module) -> bool:
    return any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in model.parameters())  # fmt: skip


def _unsaved(loss: nn.Module) -> nn.Module:
    """``loss`` with its buffers (class weights) out of its state dict: not saved in checkpoints, and left out
    when a checkpoint that holds them (saved by an older version) is loaded (:class:`LossOfThisRun`)."""
    names = [name for name, _ in loss.named_buffers(recurse=False)]
    for name in names:
        loss.register_buffer(name, getattr(loss, name), persistent=False)

    def drop_saved(module: nn.Module, state: dict[str, Any], prefix: str, *args: Any) -> None:
        for name in names:
            state.pop(prefix + name, None)

    loss.register_load_state_dict_pre_hook(drop_saved)
    return loss


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None or isinstance(a, (int, float)) or isinstance(b, (int, float)):
        return a == b
    return len(a) == len(b) and bool(np.allclose(a, b))


def _shown(value: Any, names: list[str]) -> str:
    """A loss setting as the run header shows it: each class's weight (the first 12), or a number."""
    if value is None:
        return "none"
    if isinstance(value, (int, float)):
        return f"{value:g}"
    shown = ", ".join(f"{n} {w:.3g}" for n, w in list(zip(names, value, strict=False))[:12])
    return shown + (f", ... ({len(value)} classes)" if len(value) > 12 else "")
