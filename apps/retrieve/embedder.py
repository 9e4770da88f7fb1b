"""Image embeddings for retrieval: a backbone's pooled features (average or GeM), L2-normalised.

Cosine similarity of two images is then the inner product of their embeddings.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
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
from cnnapps.runtime import prepare_for_inference, select_device

POOLINGS = ("avg", "gem")


class EmbeddingModel(nn.Module):
    """backbone -> last feature map -> average or GeM pooling -> L2 normalisation."""

    def __init__(self, backbone: Backbone, pooling: str = "avg", gem_p: float = 3.0) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise CnnappsError(f"--pooling {pooling}: choose one of {', '.join(POOLINGS)}")
        self.backbone = backbone
        self.pooling = pooling
        self.gem_p = gem_p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_features(x)
        if self.pooling == "gem":  # generalised mean (Radenović et al.): between average and max pooling
            pooled = features.clamp_min(1e-6).pow(self.gem_p).mean(dim=(2, 3)).pow(1.0 / self.gem_p)
        else:
            pooled = self.backbone.forward_embedding(features)
        return F.normalize(pooled.float(), dim=1)


def _load_backbone(spec: str | os.PathLike) -> tuple[Backbone, Preprocess, str]:
    """A backbone with its preprocessing and a fingerprint that changes whenever its weights do."""
    from cnnapps.bundle import is_bundle_path

    if is_bundle_path(spec):
        from cnnapps.apps.classify.model import load_classifier

        loaded = load_classifier(spec)
        digest = hashlib.sha256()
        with open(spec, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return loaded.backbone, loaded.preprocess, f"sha256:{digest.hexdigest()}"
    from cnnapps.backbones import create_backbone

    backbone = create_backbone(str(spec), weights="imagenet")
    return backbone, backbone.preprocess, f"{spec}:{backbone.weights}"


class Embedder:
    """``embed(inputs)`` -> names, (N, dim) float32 unit vectors (NaN rows for failed inputs), errors."""

    def __init__(
        self,
        spec: str | os.PathLike = DEFAULT_BACKBONE,
        pooling: str = "avg",
        device: str = "auto",
        engine: str = "auto",
        batch_size: int | None = None,
        workers: int | None = None,
    ) -> None:
        backbone, preprocess, fingerprint = _load_backbone(spec)
        self.spec = str(spec)
        self.pooling = pooling
        self.fingerprint = f"{fingerprint}:{pooling}"
        self.device = select_device(device)
        self.batch_size = batch_size or (32 if self.device.type == "cuda" else 4)
        self.preprocess = preprocess
        model = EmbeddingModel(backbone, pooling).eval()
        example = torch.zeros(self.batch_size, *preprocess.input_size)
        with torch.no_grad():
            self.dim = int(model(example[:1]).shape[1])
        self._run = prepare_for_inference(model, example, self.device, engine)
        self._runner = BatchRunner([preprocess], self.device, self.batch_size, workers)

    def describe(self) -> dict[str, Any]:
        return {"model": self.spec, "fingerprint": self.fingerprint, "pooling": self.pooling, "dim": self.dim}

    def embed(
        self, inputs: Any, progress: Callable[[int], None] | None = None
    ) -> tuple[list[str], np.ndarray, list[str | None]]:
        def forward(batch: dict[Preprocess, torch.Tensor]) -> np.ndarray:
            return self._run(batch[self.preprocess]).float().cpu().numpy()

        return self._runner.run(inputs, forward, self.dim, progress=progress)
