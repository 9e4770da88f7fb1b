"""The Lightning module that trains an R-CNN detector and scores it with COCO AP each epoch (training only)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnnapps.apps.common.training import TaskModule, TrainConfig
from cnnapps.apps.detect.evaluate import IOU_TYPES, MAIN_METRIC, coco_evaluate, to_coco_results
from cnnapps.apps.detect.model import run_detector, run_shared
from cnnapps.apps.detect.predictor import to_detections, to_result
from cnnapps.datasets.training import to_unit_float


class DetectionModule(TaskModule):
    """Sum of torchvision's R-CNN losses for training; pycocotools AP on the validation images."""

    def __init__(self, model: nn.Module, config: TrainConfig, val_coco: Any) -> None:
        super().__init__(config)
        self.model = model.train()
        self.val_coco = val_coco
        self.category_of_label = {i + 1: c for i, c in enumerate(val_coco.category_ids)}
        self._results: list[dict[str, Any]] = []
        self._image_ids: list[int] = []

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Images that crossed as uint8 (``DetectionDataset(uint8=True)``) become floats in [0, 1] here."""
        images, targets = batch
        if images and images[0].dtype == torch.uint8:
            images = [to_unit_float(image) for image in images]
        return images, targets

    def stage_readers(self) -> list[nn.Module]:
        """The trunk, when an FPN reads its stage maps (without one the heads read its last feature map)."""
        return [self.model.backbone.body] if self.model.backbone.fpn is not None else []

    def compile_targets(self) -> list[nn.Module]:
        """The backbone (trunk and FPN); the proposal and RoI heads, with their data-dependent shapes, stay eager."""
        return [self.model.backbone]

    def training_step(self, batch: tuple[list[torch.Tensor], list[dict]], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(images, targets)
        loss = sum(losses.values())
        # each process's mean over its shard, averaged over the processes (as the history's train_loss)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(images),
                 sync_dist=True)  # fmt: skip
        self.track_train_loss(loss)
        return loss

    def validate_batch(self, batch: tuple[list[torch.Tensor], list[dict]]) -> None:
        images, targets = batch
        # masks pasted into a window around their box, as the predictor does (not one image-sized mask each)
        if self.model.spec.shared:  # scored as it will answer: through the trunk's preprocessing, in image frames
            outputs = run_shared(self.model, [image.mul(255).round_().to(torch.uint8) for image in images],
                                 full_masks=False)  # fmt: skip
        else:
            outputs = run_detector(self.model, images, full_masks=False)
        spec = self.model.spec
        for image, target, output in zip(images, targets, outputs, strict=True):
            height, width = image.shape[-2:]
            result = to_result("", to_detections(output, height, width), height, width, spec)
            image_id = int(target["image_id"])
            self._image_ids.append(image_id)
            self._results.extend(to_coco_results(image_id, result.instances, self.category_of_label))

    def on_validation_epoch_end(self) -> None:
        task = self.model.spec.task
        metrics = coco_evaluate(self.val_coco.coco, self._results, IOU_TYPES[task], self._image_ids,
                                self.val_coco.keypoint_names, sorted(set(self.category_of_label.values())))  # fmt: skip
        self._results, self._image_ids = [], []
        if self.trainer.sanity_checking:
            return
        values = {f"val_{k}": v for k, v in metrics.items()}  # None: no objects of that size
        self.log(f"val_{MAIN_METRIC[task]}", values[f"val_{MAIN_METRIC[task]}"] or 0.0, prog_bar=True)
        self.record_epoch(values)
