"""The Lightning module that fine-tunes a :class:`Classifier` (training only)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from cnnapps.apps.classify.model import Classifier

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step", "plateau", "none")


class ClassificationModule(L.LightningModule):
    """Cross-entropy training with top-1/top-5 validation accuracy and a per-epoch history.

    The history (loss and accuracy per epoch) is stored in checkpoints, so a resumed run's
    curves cover every epoch.
    """

    def __init__(
        self,
        model: Classifier,
        *,
        lr: float,
        optimizer: str = "adamw",
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        schedule: str = "cosine",
        epochs: int = 10,
        label_smoothing: float = 0.0,
        plateau_patience: int = 2,
    ) -> None:
        super().__init__()
        self.model = model.train()  # Lightning keeps each module's mode; frozen stages keep BN in eval
        self.lr, self.optimizer_name, self.momentum = lr, optimizer, momentum
        self.weight_decay, self.schedule, self.epochs = weight_decay, schedule, epochs
        self.plateau_patience = plateau_patience
        self.loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        num_classes = model.fc.out_features
        self.train_top1 = MulticlassAccuracy(num_classes, top_k=1)
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1)
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes))
        self.history: list[dict[str, float]] = []
        self._train_losses: list[float] = []
        self._val_losses: list[tuple[float, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        self.train_top1(logits, y)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True)
        self.log("train_top1", self.train_top1, on_step=False, on_epoch=True)
        self._train_losses.append(float(loss.detach()))
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
        self._val_losses.append((float(loss.detach()), len(y)))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._val_losses.clear()
            return
        n = sum(k for _, k in self._val_losses) or 1
        self.history.append(
            {
                "epoch": self.current_epoch + 1,
                "train_loss": sum(self._train_losses) / max(1, len(self._train_losses)),
                "val_loss": sum(v * k for v, k in self._val_losses) / n,
                "val_top1": float(self.val_top1.compute()),
                "val_top5": float(self.val_top5.compute()),
                "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]),
            }
        )
        self._train_losses.clear()
        self._val_losses.clear()

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
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
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=0.1, patience=self.plateau_patience
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}
        return opt

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cnnapps_history"] = list(self.history)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint.get("cnnapps_history", []))
