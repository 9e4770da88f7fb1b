"""The Lightning module for metric learning (training only): pytorch-metric-learning losses."""

from __future__ import annotations

from typing import Any

import torch

from cnnapps.apps.common.training import TaskModule, TrainConfig
from cnnapps.apps.retrieve.embedder import EmbeddingModel
from cnnapps.apps.retrieve.evaluate import retrieval_metrics
from cnnapps.errors import CnnappsError

LOSSES = ("arcface", "multisimilarity", "triplet")


def make_loss(name: str, num_classes: int, embedding_size: int) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """(loss, miner): ArcFace learns class centres; the pair losses mine informative pairs in each batch."""
    from pytorch_metric_learning import losses, miners

    if name == "arcface":
        return losses.ArcFaceLoss(num_classes, embedding_size, margin=28.6, scale=64), None
    if name == "multisimilarity":
        return losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), miners.MultiSimilarityMiner(epsilon=0.1)
    if name == "triplet":
        return losses.TripletMarginLoss(margin=0.1), miners.TripletMarginMiner(margin=0.1, type_of_triplets="semihard")
    raise CnnappsError(f"--loss {name}: choose one of {', '.join(LOSSES)}")


class MetricLearningModule(TaskModule):
    """Trains an :class:`EmbeddingModel`; validation reports recall@1/5/10 and mAP@R of the val set.

    Validation labels may name classes never trained on (numbered from ``num_classes`` on): the retrieval scores need
    labels only to group images, and so do the pair losses; ArcFace's loss needs a class's learned centre, so its
    validation loss is of the images of trained classes, and left out of the history where there are none."""

    def __init__(self, model: EmbeddingModel, config: TrainConfig, loss: str, num_classes: int) -> None:
        super().__init__(config)
        self.model = model.train()  # Lightning keeps each module's mode; frozen stages keep BN in eval
        size = model.projection.out_features if model.projection is not None else model.backbone.embedding_dim
        self.loss, self.miner = make_loss(loss, num_classes, size)
        self.num_classes = num_classes
        self.centred = loss == "arcface"  # a loss of learned class centres: images of other classes have none
        #: whether validation has a loss to report (set by the plan: ArcFace's needs images of trained classes);
        #: without one, the plateau schedule follows recall@1
        self.has_val_loss = True
        # validation embeddings, labels, summed losses and the images they are of, kept on the device and read once
        # at the end of the epoch
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pairs = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, pairs)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self._loss(self(x), y)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)
        self.track_train_loss(loss)
        return loss

    def validate_batch(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, y = batch
        embeddings = self(x)
        trained = y < self.num_classes if self.centred else None  # the images whose class has a centre
        if trained is None or bool(trained.all()):
            loss, n = self._loss(embeddings, y), len(y)
        else:
            n = int(trained.sum())
            loss = self._loss(embeddings[trained], y[trained]) if n else embeddings.new_zeros(())
        self._val.append((embeddings.detach().float(), y.detach(), loss.detach().float() * n, n))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        vectors = torch.cat([v for v, _, _, _ in self._val]).cpu().numpy()
        labels = torch.cat([y for _, y, _, _ in self._val]).cpu().numpy()
        counted = sum(n for _, _, _, n in self._val)
        total = float(torch.stack([loss for _, _, loss, _ in self._val]).sum())
        val_loss = {"val_loss": total / counted} if counted else {}  # none: no image of a trained class (ArcFace)
        self._val.clear()
        try:  # set-up refused a split with no class of two images; unreadable images (or the sanity check's two
            metrics = retrieval_metrics(vectors, labels)  # batches) may still leave none here: nothing to score
        except CnnappsError:
            metrics = {"recall@1": 0.0, "map@r": 0.0}
        if val_loss:
            self.log("val_loss", val_loss["val_loss"], prog_bar=True)
        self.log("val_recall_at_1", metrics["recall@1"], prog_bar=True)
        self.log("val_map_at_r", metrics["map@r"])
        if not self.trainer.sanity_checking:
            self.record_epoch({**val_loss, **{f"val_{k}": v for k, v in metrics.items()}})

    def configure_optimizers(self) -> Any:
        setup = super().configure_optimizers()
        if self.has_val_loss or self.schedule != "plateau":
            return setup
        # no validation loss to follow: divide the lr by 10 when recall@1 stops rising
        optimizer = setup["optimizer"]
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.1, patience=2)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": "val_recall_at_1"}}
