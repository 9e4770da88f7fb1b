"""The Lightning module that fine-tunes a :class:`Classifier` (training only)."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from cnnapps.apps.classify.model import Classifier
from cnnapps.apps.common.training import TaskModule, TrainConfig


class ClassificationModule(TaskModule):
    """Cross-entropy training with top-1/top-5 validation accuracy."""

    def __init__(self, model: Classifier, config: TrainConfig) -> None:
        super().__init__(config)
        self.model = model.train()  # Lightning keeps each module's mode; frozen stages keep BN in eval
        self.loss = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        num_classes = model.fc.out_features
        self.train_top1 = MulticlassAccuracy(num_classes, top_k=1)
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1)
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes))
        self._val_loss_sum: torch.Tensor | None = None  # summed on the device, read once per epoch
        self._val_count = 0

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

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
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

    def on_validation_epoch_end(self) -> None:
        val_loss = float(self._val_loss_sum) / max(1, self._val_count) if self._val_loss_sum is not None else 0.0
        self._val_loss_sum, self._val_count = None, 0
        if self.trainer.sanity_checking:
            return
        self.record_epoch(
            {
                "val_loss": val_loss,
                "val_top1": float(self.val_top1.compute()),
                "val_top5": float(self.val_top5.compute()),
            }
        )
