"""The Lightning module that trains a semantic segmentation model and scores it with mIoU each epoch (training only)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cnnapps.apps.common.training import TaskModule, TrainConfig
from cnnapps.apps.semantic.evaluate import confusion_matrix, scores
from cnnapps.apps.semantic.predictor import to_image_frame

#: the weight of the auxiliary head's loss (torchvision's reference training)
AUX_WEIGHT = 0.5


class SemanticModule(TaskModule):
    """Per-pixel cross-entropy (ignore index left out; plus the auxiliary head's); validation in each image's own
    frame, as the model will answer: mIoU, pixel accuracy, mean accuracy, frequency-weighted IoU."""

    def __init__(self, model: torch.nn.Module, config: TrainConfig, preprocess: Any) -> None:
        super().__init__(config)
        self.model = model
        self.preprocess = preprocess
        self.ignore_index = int(getattr(config, "ignore_index", 255))
        self.label_smoothing = config.label_smoothing
        self._confusion: torch.Tensor | None = None
        self._val_loss: torch.Tensor | float = 0.0
        self._val_pixels: torch.Tensor | int = 0

    def stage_readers(self) -> list[torch.nn.Module]:
        """The trunk: every head reads its stage maps."""
        return [self.model.backbone]

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # The mean over the pixels that count, written as sum / count so that a batch whose pixels are all
        # ignored gives 0 rather than NaN without asking the device (no host sync per step).
        total = F.cross_entropy(
            logits, target, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing, reduction="sum"
        )
        return total / (target != self.ignore_index).sum().clamp(min=1)

    def training_step(self, batch: tuple[torch.Tensor, list[torch.Tensor]], batch_idx: int) -> torch.Tensor:
        images, masks = batch
        target = torch.stack(masks)
        out = self.model.forward_train(images)
        loss = self._loss(out["out"], target)
        if "aux" in out:
            loss = loss + AUX_WEIGHT * self._loss(out["aux"], target)
        # each process's mean over its shard, averaged over the processes (as the history's train_loss)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(images),
                 sync_dist=True)  # fmt: skip
        self.track_train_loss(loss)
        return loss

    def validate_batch(self, batch: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
        images, masks = batch
        k = self.model.spec.num_classes
        if self._confusion is None:
            self._confusion = torch.zeros((k, k), dtype=torch.int64, device=masks[0].device)
        # whole images of different shapes come as a list (a head trained on crops), each run alone
        logits = self.model(images) if torch.is_tensor(images) else [self.model(x[None])[0] for x in images]
        for row, mask in zip(logits, masks, strict=True):
            size = (int(mask.shape[0]), int(mask.shape[1]))
            frame = to_image_frame(row.float(), size, self.preprocess.geometry(*size))
            # summed on the device; read once at the epoch's end
            self._val_loss = self._val_loss + F.cross_entropy(
                frame[None], mask[None], ignore_index=self.ignore_index, reduction="sum"
            )
            self._val_pixels = self._val_pixels + (mask != self.ignore_index).sum()
            self._confusion += confusion_matrix(frame.argmax(0), mask, k, self.ignore_index)

    def on_validation_epoch_end(self) -> None:
        confusion = self._confusion.cpu().numpy() if self._confusion is not None else np.zeros((1, 1), np.int64)
        found = scores(confusion)
        loss = float(self._val_loss) / max(1, int(self._val_pixels))
        self._confusion, self._val_loss, self._val_pixels = None, 0.0, 0
        if self.trainer.sanity_checking:
            return
        values = {f"val_{k}": found[k] for k in ("miou", "pixel_acc", "mean_acc", "fwiou")}
        values["val_loss"] = loss
        self.log("val_miou", values["val_miou"] or 0.0, prog_bar=True)
        self.log("val_loss", loss)
        self.record_epoch(values)
