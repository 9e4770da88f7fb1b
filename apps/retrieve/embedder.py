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
from cnnapps.apps.retrieve.config import POOLINGS
from cnnapps.backbones.features import Backbone
from cnnapps.backbones.preprocess import Preprocess
from cnnapps.backbones.registry import DEFAULT_BACKBONE
from cnnapps.errors import CnnappsError
from cnnapps.exported import is_onnx_file
from cnnapps.results import EmbeddingResult
from cnnapps.runtime import (
    check_batch_size,
    example_batch,
    memory_for_input,
    one_at_a_time,
    prepare_runner,
    select_device,
)


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
        return self.embed_features(self.backbone.forward_features(x))

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """The embedding of a last feature map already computed (a trunk pass shared with other heads)."""
        if self.pooling == "gem":  # generalised mean (Radenović et al.): between average and max pooling
            pooled = features.clamp_min(1e-6).pow(self.gem_p).mean(dim=(2, 3)).pow(1.0 / self.gem_p)
        else:
            pooled = self.backbone.forward_embedding(features)
        if self.projection is not None:
            pooled = self.projection(pooled)
        return F.normalize(pooled.float(), dim=1)


class EmbeddingHead:
    """The embedding head in model files: pooling (average or GeM), an optional projection, L2 normalisation."""

    trunk_path = "backbone"
    kinds = ("embedding",)

    def describe(self, model: EmbeddingModel) -> Any:
        from cnnapps.apps.modelfile import HeadInfo

        size = model.projection.out_features if model.projection is not None else None
        return HeadInfo("retrieve", "embedding", {"pooling": model.pooling, "embedding_size": size,
                                                  "gem_p": model.gem_p})  # fmt: skip

    def build(self, trunk: Backbone, info: Any, preprocess: dict[str, Any], model_file: Any) -> EmbeddingModel:
        kw = info.kwargs
        pooling = kw.get("pooling", "avg")
        if pooling not in POOLINGS:  # the file's setting, not a --pooling the user gave: said as the header's
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
        return EmbeddingModel(trunk, pooling, kw.get("embedding_size"), float(kw.get("gem_p", 3)))

    def from_v1(self, meta: dict[str, Any]) -> tuple[dict[str, Any], Any, dict[str, Any]]:
        from cnnapps.apps.modelfile import HeadInfo

        trunk = {"name": meta["backbone"], "kwargs": meta.get("backbone_kwargs", {})}
        kwargs = {"pooling": meta["pooling"], "embedding_size": meta.get("embedding_size")}
        head = HeadInfo("retrieve", "embedding", kwargs)
        return trunk, head, meta["preprocess"]

    def predict_shared(self, model: EmbeddingModel, shared: Any, options: dict[str, Any]) -> list[EmbeddingResult]:
        """Unit vectors from a trunk pass shared with other heads."""
        vectors = model.embed_features(shared.features).float().cpu().numpy()
        return [EmbeddingResult("", vector=v) for v in vectors]


HEAD = EmbeddingHead()


def save_embedding_model(
    path: str | os.PathLike,
    model: EmbeddingModel,
    *,
    trunk_name: str,
    preprocess: Preprocess,
    trunk_kwargs: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> None:
    """The retrieval model file: the trunk, the pooling and projection head, the preprocessing."""
    from cnnapps.apps.modelfile import save_model

    save_model(path, "retrieve", model, trunk_name, trunk_kwargs, preprocess.to_dict(), metrics)


def load_embedding_model(spec: str | os.PathLike, pooling: str = "avg",
                         head: str | None = None) -> tuple[EmbeddingModel, Preprocess, str]:  # fmt: skip
    """An embedding model with a fingerprint that changes whenever its weights or its pooling do: a model file's
    embedding head (``head`` names one, a head of another task being a one-line error; else its first, as the
    index commands, which name no head, and indexes built with the file use it; for a file without one its trunk
    with ``pooling``), or a registry name with pretrained weights."""
    model, preprocess, fingerprint, _ = _embedding_model(spec, pooling, head)
    return model, preprocess, fingerprint


def _embedding_model(spec: str | os.PathLike, pooling: str, head: str | None,
                     one: bool = False) -> tuple[EmbeddingModel, Preprocess, str, str | None]:  # fmt: skip
    """:func:`load_embedding_model` and the name of the model file's head it built (None: a trunk or a name);
    ``one``: a file with several embedding heads and none named is a one-line error (what an export writes must be
    the head asked for)."""
    from cnnapps.apps.modelfile import refuse_head
    from cnnapps.backbones import create_backbone
    from cnnapps.bundle import FORMAT_V1, is_bundle_path, tensor_fingerprint

    if not is_bundle_path(spec):
        refuse_head(head, spec, "not a model file")
        backbone = create_backbone(str(spec), weights="imagenet")
        return EmbeddingModel(backbone, pooling), backbone.preprocess, f"{spec}:{backbone.weights}:{pooling}", None
    from cnnapps.apps.classify.model import preprocess_of
    from cnnapps.apps.modelfile import build_model, load_trunk, read_model_file, trunk_fingerprint

    model_file = read_model_file(spec)
    heads = [n for n, h in model_file.heads.items() if h.task == "retrieve"]
    if head is not None or (one and len(heads) > 1):  # a head of another task, or several and none: one line
        heads = [model_file.head_named(head, "retrieve")]
    if model_file.format == FORMAT_V1:  # as this file's embeddings were always fingerprinted: by its bytes
        from cnnapps.backbones.weights import sha256_of

        base = f"sha256:{sha256_of(Path(spec))}"
    elif heads:
        base = f"{trunk_fingerprint(model_file)}+{tensor_fingerprint(model_file.head_tensors(heads[0]))}"
    else:
        base = trunk_fingerprint(model_file)
    base += _built_otherwise(model_file.trunk)
    if heads:
        model = build_model(model_file, heads[0])
        return model, preprocess_of(model_file), f"{base}:{model.pooling}", heads[0]
    trunk, preprocess = load_trunk(spec)  # a detector's file resizes itself: the registry's sizes, the file's mean/std
    return EmbeddingModel(trunk, pooling), preprocess, f"{base}:{pooling}", None


def _built_otherwise(trunk: dict[str, Any]) -> str:
    """The trunk's settings that differ from what files which record none were built with (Lite0's "same" padding), as
    a fingerprint suffix: the same tensors in another network embed otherwise (an index built with the file of one
    must refuse the other), while files written before keep the fingerprint their indexes hold."""
    from cnnapps.backbones.registry import UNRECORDED_SETTINGS

    unrecorded = UNRECORDED_SETTINGS.get(trunk["name"], {})
    kwargs = trunk.get("kwargs", {})
    return "".join(
        f"+{key}={kwargs[key]}" for key in sorted(unrecorded) if kwargs.get(key, unrecorded[key]) != unrecorded[key]
    )


def exportable(spec: str | os.PathLike, task: str = "retrieve", **options: Any) -> Any:
    """The embedding of ``spec`` for ``cnnapps export``: preprocessed images -> unit vectors (N, dim), with the
    fingerprint of its source, so an exported embedding queries indexes built with the PyTorch model (``head``: a
    model file's embedding head, named in the metadata)."""
    from cnnapps.exported import Exportable
    from cnnapps.quantize import Calibration, preprocessed_batch

    model, preprocess, fingerprint, head = _embedding_model(
        spec, options.get("pooling", "avg"), options.get("head"), one=True
    )
    example = torch.zeros(1, *preprocess.input_size)
    with torch.no_grad():
        dim = int(model.eval()(example).shape[1])
    meta = {"task": "retrieve", "preprocess": preprocess.to_dict(), "dim": dim, "pooling": model.pooling,
            "fingerprint": fingerprint, **({"head": head} if head else {})}  # fmt: skip
    keeps = "the pooling and L2 normalisation, and ops onnxruntime has no int8 form for"
    calibration = Calibration(preprocessed_batch(preprocess), "cosine", fp32=keeps)
    return Exportable(model, meta, example, calibration=calibration)


def load_embedder(specs: list[Any], task: str = "retrieve", **kwargs: Any) -> Embedder:
    """The task table's loader: one model (a retrieval model, any classifier's trunk, or a registry name)."""
    if len(specs) != 1:
        raise CnnappsError("retrieval takes one model, not an ensemble")
    return Embedder(specs[0], **kwargs)


class Embedder:
    """``predict(inputs)`` -> one :class:`EmbeddingResult` (an L2-normalised vector) per input;
    ``embed(inputs)`` -> names, the vectors as one (N, dim) array, errors."""

    task = "retrieve"

    def __init__(
        self,
        spec: str | os.PathLike = DEFAULT_BACKBONE,
        pooling: str = "avg",
        device: str = "auto",
        engine: str = "auto",
        batch_size: int | None = None,
        workers: int | None = None,
        head: str | None = None,
    ) -> None:
        # a model file by its absolute path: an index records it, and is searched from other folders
        self.spec = os.path.abspath(spec) if os.path.isfile(spec) else str(spec)
        exported = is_onnx_file(self.spec)
        #: the model file's embedding head named when loading (None: its first, or no model file)
        self.head: str | None = None
        self.device = select_device(device, engine, graph=exported)
        self.batch_size = check_batch_size(batch_size) or (32 if self.device.type == "cuda" else 4)
        if exported:
            from cnnapps.apps.modelfile import refuse_head

            refuse_head(head, spec, "an exported graph")
        if exported:  # written by `cnnapps export`: same fingerprint as the model it came from
            from cnnapps.exported import OnnxRunner, read_onnx_metadata

            meta = read_onnx_metadata(spec, task="retrieve")  # an embedding: `cnnapps export --task retrieve`
            self.pooling, self.fingerprint, self.dim = meta["pooling"], meta["fingerprint"], int(meta["dim"])
            self.preprocess = Preprocess.from_dict(meta["preprocess"])
            example = example_batch(self.preprocess.input_size, self.batch_size)
            runner = OnnxRunner(spec, self.device if engine in ("auto", "onnxruntime") else "cpu")
            self._run, self.engine = prepare_runner(runner, example, self.device, engine)
        else:
            model, self.preprocess, self.fingerprint = load_embedding_model(spec, pooling, head)
            self.head = head
            self.pooling = model.pooling
            model = model.eval()
            example = example_batch(self.preprocess.input_size, self.batch_size)
            with memory_for_input(str(spec), self.preprocess.input_size, self.device), torch.no_grad():
                self.dim = int(model(example[:1]).shape[1])
                self._run, self.engine = prepare_runner(model, example, self.device, engine, owned=True)
        self._runner = BatchRunner([self.preprocess], self.device, self.batch_size, workers)

    def describe(self) -> dict[str, Any]:
        """What an index records of its embedder (``head``: only when one was named): enough to load it again."""
        described = {"model": self.spec, "fingerprint": self.fingerprint, "pooling": self.pooling, "dim": self.dim}
        return {**described, "head": self.head} if self.head is not None else described

    @one_at_a_time
    def embed(
        self, inputs: Any, progress: Callable[[int], None] | None = None
    ) -> tuple[list[str], np.ndarray, list[str | None]]:
        """Names, (N, dim) float32 unit vectors (NaN rows for failed inputs) and per-input errors: what an index
        stores. :meth:`predict` gives the same as result objects."""

        def forward(batch: dict[Preprocess, torch.Tensor]) -> np.ndarray:
            return self._run(batch[self.preprocess]).float().cpu().numpy()

        return self._runner.run(inputs, forward, self.dim, progress=progress)

    def predict(self, inputs: Any, progress: Callable[[int], None] | None = None) -> list[EmbeddingResult]:
        """One :class:`EmbeddingResult` per input, in order (a bad input's result carries ``error``)."""
        names, vectors, errors = self.embed(inputs, progress=progress)
        return [
            EmbeddingResult(name, error=error, engine=self.engine)
            if error
            else EmbeddingResult(name, vector=vector, engine=self.engine)
            for name, vector, error in zip(names, vectors, errors, strict=True)
        ]
