"""Image embeddings for retrieval: a backbone's pooled features (average or GeM), L2-normalised.

Cosine similarity of two images is then the inner product of their embeddings.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnapps.apps.common.batching import BatchRunner
from cnnapps.backbones.features import Backbone
from cnnapps.backbones.preprocess import Preprocess
from cnnapps.backbones.registry import DEFAULT_BACKBONE
from cnnapps.errors import CnnappsError
from cnnapps.runtime import one_at_a_time, prepare_for_inference, select_device

POOLINGS = ("avg", "gem")


class EmbeddingModel(nn.Module):
    """backbone -> last feature map -> average or GeM pooling -> optional linear projection -> L2 norm."""

    def __init__(
        self, backbone: Backbone, pooling: str = "avg", embedding_size: int | None = None, gem_p: float = 3.0
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise CnnappsError(f"--pooling {pooling}: choose one of {', '.join(POOLINGS)}")
        self.backbone = backbone.drop_head() if backbone.has_head else backbone
        self.pooling = pooling
        self.gem_p = gem_p
        self.projection = nn.Linear(backbone.embedding_dim, embedding_size) if embedding_size else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_features(x)
        if self.pooling == "gem":  # generalised mean (Radenović et al.): between average and max pooling
            pooled = features.clamp_min(1e-6).pow(self.gem_p).mean(dim=(2, 3)).pow(1.0 / self.gem_p)
        else:
            pooled = self.backbone.forward_embedding(features)
        if self.projection is not None:
            pooled = self.projection(pooled)
        return F.normalize(pooled.float(), dim=1)


def save_embedding_model(
    path: str | os.PathLike,
    model: EmbeddingModel,
    *,
    backbone_name: str,
    preprocess: Preprocess,
    backbone_kwargs: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """The retrieval model file: tensors plus what rebuilding needs (backbone, pooling, projection)."""
    from cnnapps.bundle import save_bundle

    meta = {
        "task": "retrieve",
        "backbone": backbone_name,
        "backbone_kwargs": backbone_kwargs or {},
        "pooling": model.pooling,
        "embedding_size": model.projection.out_features if model.projection is not None else None,
        "preprocess": preprocess.to_dict(),
        **(extra or {}),
    }
    save_bundle(path, model.state_dict(), meta)


def load_embedding_model(spec: str | os.PathLike, pooling: str = "avg") -> tuple[EmbeddingModel, Preprocess, str]:
    """An embedding model from a retrieval or classification model file, or a registry name with
    pretrained weights; with a fingerprint that changes whenever the weights or the pooling do."""
    from cnnapps.backbones import create_backbone
    from cnnapps.backbones.weights import load_into, sha256_of
    from cnnapps.bundle import is_bundle_path, read_metadata

    if not is_bundle_path(spec):
        backbone = create_backbone(str(spec), weights="imagenet")
        return EmbeddingModel(backbone, pooling), backbone.preprocess, f"{spec}:{backbone.weights}:{pooling}"
    fingerprint = f"sha256:{sha256_of(Path(spec))}"
    meta = read_metadata(spec)
    if meta.get("task") == "retrieve":
        from cnnapps.bundle import load_bundle

        tensors, meta = load_bundle(spec)
        backbone = create_backbone(meta["backbone"], weights=None, **meta.get("backbone_kwargs", {}))
        model = EmbeddingModel(backbone, meta["pooling"], meta.get("embedding_size"))
        load_into(model, tensors, str(spec))
        return model, Preprocess.from_dict(meta["preprocess"]), f"{fingerprint}:{meta['pooling']}"
    from cnnapps.apps.classify.model import load_classifier

    loaded = load_classifier(spec)
    return EmbeddingModel(loaded.backbone, pooling), loaded.preprocess, f"{fingerprint}:{pooling}"


class Embedder:
    """``embed(inputs)`` -> names, (N, dim) float32 unit vectors (NaN rows for failed inputs), errors."""

    task = "retrieve"

    def __init__(
        self,
        spec: str | os.PathLike = DEFAULT_BACKBONE,
        pooling: str = "avg",
        device: str = "auto",
        engine: str = "auto",
        batch_size: int | None = None,
        workers: int | None = None,
    ) -> None:
        self.spec = str(spec)
        self.device = select_device(device)
        self.batch_size = batch_size or (32 if self.device.type == "cuda" else 4)
        if self.spec.endswith(".onnx"):  # written by `cnnapps export`: same fingerprint as the model it came from
            from cnnapps.export import OnnxRunner, read_onnx_metadata

            meta = read_onnx_metadata(spec, task="retrieve")  # an embedding: `cnnapps export --task retrieve`
            self.pooling, self.fingerprint, self.dim = meta["pooling"], meta["fingerprint"], int(meta["dim"])
            self.preprocess = Preprocess.from_dict(meta["preprocess"])
            self._run = OnnxRunner(spec, self.device)
        else:
            model, self.preprocess, self.fingerprint = load_embedding_model(spec, pooling)
            self.pooling = model.pooling
            model = model.eval()
            example = torch.zeros(self.batch_size, *self.preprocess.input_size)
            with torch.no_grad():
                self.dim = int(model(example[:1]).shape[1])
            self._run = prepare_for_inference(model, example, self.device, engine)
        self._runner = BatchRunner([self.preprocess], self.device, self.batch_size, workers)

    def describe(self) -> dict[str, Any]:
        return {"model": self.spec, "fingerprint": self.fingerprint, "pooling": self.pooling, "dim": self.dim}

    @one_at_a_time
    def embed(
        self, inputs: Any, progress: Callable[[int], None] | None = None
    ) -> tuple[list[str], np.ndarray, list[str | None]]:
        def forward(batch: dict[Preprocess, torch.Tensor]) -> np.ndarray:
            return self._run(batch[self.preprocess]).float().cpu().numpy()

        return self._runner.run(inputs, forward, self.dim, progress=progress)
