"""The Lightning module that fine-tunes a :class:`Classifier` (training only)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from cnnapps.apps.classify.model import Classifier
from cnnapps.apps.common.training import TaskModule, TrainConfig


class ClassificationModule(TaskModule):
    """Cross-entropy training with top-1/top-5 validation accuracy.

    Validation batches may carry each image's index in the validation set (``LabeledImageDataset(with_index=
    True)``): the class probabilities of the best epoch so far are then kept (:attr:`best_outputs`), so the
    report written at the end needs no second pass over the validation images."""

    def __init__(self, model: Classifier, config: TrainConfig) -> None:
        super().__init__(config)
        self.model = model.train()  # Lightning keeps each module's mode; frozen stages keep BN in eval
        self.loss = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        num_classes = model.fc.out_features
        # validate_args=False: the checks call torch.unique and read its size, a host sync on every step
        self.train_top1 = MulticlassAccuracy(num_classes, top_k=1, validate_args=False)
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1, validate_args=False)
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), validate_args=False)
        self._val_loss_sum: torch.Tensor | None = None  # summed on the device, read once per epoch
        self._val_count = 0
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        #: the best epoch's validation outputs, by image index: {"epoch", "probs", "labels", "indices"}
        self.best_outputs: dict[str, Any] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        self.train_top1(logits, y)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True)
        self.log("train_top1", self.train_top1, on_step=False, on_epoch=True)
        self.track_train_loss(loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        x, y, *index = batch
        logits = self(x)
        loss = self.loss(logits, y)
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
        self.record_epoch({"val_loss": val_loss, "val_top1": top1, "val_top5": float(self.val_top5.compute())})
        # the best checkpoint is replaced only by a strictly higher val_top1 (ModelCheckpoint, mode "max")
        if outputs and (self.best_outputs is None or top1 > self.best_outputs["val_top1"]):
            probs, labels, indices = (torch.cat(parts).cpu().numpy() for parts in zip(*outputs, strict=True))
            self.best_outputs = {"epoch": self.current_epoch + 1, "val_top1": top1, "probs": probs,
                                 "labels": labels, "indices": indices}  # fmt: skip

    def outputs_of_best(self, epoch: int | None, size: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(probabilities, labels) of the validation set in order, from epoch ``epoch``'s validation, when this
        run kept them and every image of the set was read (an unreadable one's place was taken by another)."""
        kept = self.best_outputs
        if kept is None or kept["epoch"] != epoch or len(kept["indices"]) != size:
            return None
        order = np.argsort(kept["indices"], kind="stable")
        if not np.array_equal(kept["indices"][order], np.arange(size)):
            return None
        return kept["probs"][order], kept["labels"][order]
