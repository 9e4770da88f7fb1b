"""The Lightning module for metric learning (training only): pytorch-metric-learning losses."""

from __future__ import annotations

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
    """Trains an :class:`EmbeddingModel`; validation reports recall@1/5/10 and mAP@R of the val set."""

    def __init__(self, model: EmbeddingModel, config: TrainConfig, loss: str, num_classes: int) -> None:
        super().__init__(config)
        self.model = model.train()  # Lightning keeps each module's mode; frozen stages keep BN in eval
        size = model.projection.out_features if model.projection is not None else model.backbone.embedding_dim
        self.loss, self.miner = make_loss(loss, num_classes, size)
        # validation embeddings, labels and losses, kept on the device and read once at the end of the epoch
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

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
        self._val.append((embeddings.detach().float(), y.detach(), self._loss(embeddings, y).detach().float()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        vectors = torch.cat([v for v, _, _ in self._val]).cpu().numpy()
        labels = torch.cat([y for _, y, _ in self._val]).cpu().numpy()
        val_loss = float(torch.stack([loss for _, _, loss in self._val]).mean())
        self._val.clear()
        try:  # set-up refused a split with no class of two images; unreadable images (or the sanity check's two
            metrics = retrieval_metrics(vectors, labels)  # batches) may still leave none here: nothing to score
        except CnnappsError:
            metrics = {"recall@1": 0.0, "map@r": 0.0}
        self.log("val_loss", val_loss, prog_bar=True)
        self.log("val_recall_at_1", metrics["recall@1"], prog_bar=True)
        self.log("val_map_at_r", metrics["map@r"])
        if not self.trainer.sanity_checking:
            self.record_epoch({"val_loss": val_loss, **{f"val_{k}": v for k, v in metrics.items()}})
