"""Settings of ``cnnapps train retrieve`` (plain data: the command line is built from them)."""

from __future__ import annotations

from dataclasses import dataclass

from cnnapps.apps.common.config import ConfigError, TrainConfig, option

#: metric-learning losses (pytorch-metric-learning)
LOSSES = ("arcface", "multisimilarity", "triplet")
#: how a feature map becomes one vector: average, or generalised mean (GeM)
POOLINGS = ("avg", "gem")


@dataclass
class RetrieveConfig(TrainConfig):
    """Metric learning: embeddings whose cosine similarity ranks images of one class first."""

    loss: str = option("arcface", "arcface, multisimilarity or triplet.", choices=LOSSES)
    embedding_size: int | None = option(128, "Size of the learned projection (none: the backbone's own).")
    pooling: str = option("avg", "avg or gem (generalised mean).", choices=POOLINGS)
    label_smoothing: float = option(0.0, cli=False)  # not used by the metric losses
    dropout: float = option(0.0, cli=False)  # no dropout before the projection
    out: str = option("runs/retrieve", "Run folder (an earlier run there is never overwritten).")

    task_name = "retrieve"

    def validate(self) -> RetrieveConfig:
        super().validate()
        from cnnapps.apps.modelfile import HEAD_SETTING_LIMITS

        most = HEAD_SETTING_LIMITS["embedding_size"]  # what a model file may hold: a larger one would not load
        if self.embedding_size is not None and not 2 <= self.embedding_size <= most:
            raise ConfigError(f"embedding_size: must be from 2 to {most:,}, not {self.embedding_size}")
        return self
