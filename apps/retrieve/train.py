"""Metric learning on a class-per-folder set: the same run folder as classification, with a retrieval model file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnapps.apps.common.training import ConfigError, TrainConfig
from cnnapps.errors import CnnappsError


@dataclass
class RetrieveConfig(TrainConfig):
    loss: str = "arcface"
    embedding_size: int | None = 128
    pooling: str = "avg"
    out: str = "runs/retrieve"

    def validate(self) -> RetrieveConfig:
        from cnnapps.apps.retrieve.embedder import POOLINGS
        from cnnapps.apps.retrieve.module import LOSSES

        super().validate()
        if self.loss not in LOSSES:
            raise ConfigError(f"loss: {self.loss!r} is not one of {', '.join(LOSSES)}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling: {self.pooling!r} is not one of {', '.join(POOLINGS)}")
        if self.embedding_size is not None and self.embedding_size < 2:
            raise ConfigError(f"embedding_size: must be at least 2, not {self.embedding_size}")
        return self


def train_retrieval(config: RetrieveConfig) -> dict[str, Any]:
    """Train, then write model.safetensors (task "retrieve"), metrics.json and curves.png into ``config.out``."""
    import lightning as L
    import torch

    from cnnapps.apps.common.training import backbone_for, check_run_folder, fit, loaders
    from cnnapps.apps.retrieve.embedder import EmbeddingModel, save_embedding_model
    from cnnapps.apps.retrieve.module import MetricLearningModule
    from cnnapps.datasets.folders import train_val_split
    from cnnapps.runtime import select_device

    config.validate()
    check_run_folder(config)
    L.seed_everything(config.seed, verbose=False)
    train_set, val_set = train_val_split(config.data, config.val_split, config.seed)
    if len(val_set) < 2:
        raise CnnappsError(f"{config.data}: the validation split needs at least 2 images; raise --val-split")
    backbone, spec = backbone_for(config)
    model = EmbeddingModel(backbone, config.pooling, config.embedding_size)
    device = select_device(config.device)
    train_loader, val_loader, _ = loaders(config, train_set, val_set, spec, device)
    module = MetricLearningModule(model, config, config.loss, len(train_set.class_names))
    describe = (
        f"training {config.backbone} embeddings ({config.loss} loss) on {len(train_set)} images of "
        f"{len(train_set.class_names)} classes, validating on {len(val_set)}"
    )
    result = fit(config, module, train_loader, val_loader, device, "val_recall_at_1", describe)
    if result.global_rank:  # the other processes of a distributed run: rank 0 writes the run folder
        return {"global_rank": result.global_rank}
    model = result.module.model.float().to(memory_format=torch.contiguous_format).cpu().eval()
    out = Path(config.out)
    history = result.module.history
    final = history[-1] if history else {}
    best = max(history, key=lambda h: h.get("val_recall@1", 0.0)) if history else {}
    metrics = {
        "val_recall@1": best.get("val_recall@1"),
        "val_recall@5": best.get("val_recall@5"),
        "val_recall@10": best.get("val_recall@10"),
        "val_map@r": best.get("val_map@r"),
        "val_loss": final.get("val_loss"),
        "epochs": len(history),
        "best_epoch": best.get("epoch"),
        "train_images": len(train_set),
        "val_images": len(val_set),
        **result.facts,
        "history": history,
    }
    save_embedding_model(
        out / "model.safetensors",
        model,
        backbone_name=config.backbone,
        preprocess=spec,
        backbone_kwargs=config.backbone_kwargs,
        extra={"metrics": {k: metrics[k] for k in ("val_recall@1", "val_map@r", "epochs")}},
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if history:
        from cnnapps.apps.common.plots import plot_curves

        plot_curves(history, out / "curves.png", metrics=("val_recall@1", "val_map@r"))
    return metrics
