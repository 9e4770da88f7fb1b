"""Batched classification of any inputs (paths, bytes, arrays, PIL images); ensembles average probabilities.

This is the inference path: it imports neither Lightning nor albumentations.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from cnnapps.apps.classify.model import LoadedClassifier, load_classifier
from cnnapps.apps.common.batching import BatchRunner
from cnnapps.datasets.io import DEFAULT_MAX_PIXELS
from cnnapps.errors import CnnappsError
from cnnapps.results import ClassificationResult, Prediction
from cnnapps.runtime import (
    check_batch_size,
    check_count,
    example_batch,
    memory_for_input,
    one_at_a_time,
    prepare_runner,
    select_device,
)

# models that load_predictor read from files for its predictor: placed on the device in place (one copy of the
# weights); any other member's model belongs to the caller and is left as it is
_FROM_FILES: weakref.WeakSet[Any] = weakref.WeakSet()


class ClassificationPredictor:
    """``predict(inputs)`` -> one :class:`ClassificationResult` per input, in order.

    Several members make an ensemble: their softmax probabilities are averaged (they must
    share class names; each keeps its own preprocessing).

    Multi-label models (``multilabel``) give each class its own sigmoid probability, and each result's ``labels``
    are the classes over their thresholds (the model's per-class ones, averaged over an ensemble's members).
    """

    task = "classify"

    def __init__(
        self,
        members: Sequence[LoadedClassifier],
        device: str = "auto",
        engine: str = "auto",
        batch_size: int | None = None,
        workers: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        if not members:
            raise CnnappsError("no model given")
        names = members[0].class_names
        for member in members[1:]:
            if member.class_names != names:
                raise CnnappsError(
                    f"{member.spec}: its classes differ from {members[0].spec}'s; an ensemble needs the same classes"
                )
            if member.multilabel != members[0].multilabel:
                raise CnnappsError(f"{member.spec}: an ensemble of multi-label and single-label models; use one kind")
        self.members = list(members)
        #: each class its own sigmoid probability, labels over per-class thresholds (see :meth:`predict`)
        self.multilabel = members[0].multilabel
        self.thresholds: list[float] | None = None
        if self.multilabel:
            from cnnapps.apps.classify.multilabel import DEFAULT_THRESHOLD

            per_member = [m.thresholds or [DEFAULT_THRESHOLD] * len(names) for m in members]
            self.thresholds = [float(t) for t in np.mean(per_member, axis=0)]
        graphs = any(not isinstance(m.model, torch.nn.Module) for m in members)  # exported ONNX files
        self.device = select_device(device, engine, graph=graphs)
        # Small batches keep a CPU's caches warm: 4 images per call ran ~2.5x faster per image than 32.
        self.batch_size = check_batch_size(batch_size) or (32 if self.device.type == "cuda" else 4)
        self._runner = BatchRunner([m.preprocess for m in members], self.device, self.batch_size, workers, max_pixels)
        self._models = []
        used = []
        for member in members:
            example = example_batch(member.preprocess.input_size, self.batch_size)
            owned = isinstance(member.model, torch.nn.Module) and member.model in _FROM_FILES
            with memory_for_input(str(member.spec), member.preprocess.input_size, self.device):
                run, name = prepare_runner(member.model, example, self.device, engine, owned=owned)
            self._models.append(run)
            used.append(name)
        #: the engine that runs the members (``jit``, ``openvino``, ...; ``a+b`` for an ensemble run on two)
        self.engine = "+".join(dict.fromkeys(used))

    @property
    def class_names(self) -> list[str]:
        return self.members[0].class_names

    @one_at_a_time
    def predict_proba(
        self, inputs: Any, batch_size: int | None = None, progress: Callable[[int], None] | None = None
    ) -> tuple[list[str], np.ndarray, list[str | None]]:
        """Names, probabilities (N, classes; NaN rows for failed inputs; one sigmoid per class for a multi-label
        model) and per-input errors."""
        return self._runner.run(inputs, self._forward, len(self.class_names), batch_size, progress)

    def _forward(self, inputs: dict) -> np.ndarray:
        total = None
        for member, run in zip(self.members, self._models, strict=True):
            logits = run(inputs[member.preprocess]).float()
            p = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)
            total = p if total is None else total + p
        return (total / len(self.members)).cpu().numpy()

    def predict(
        self,
        inputs: Any,
        top_k: int = 5,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        threshold: float | None = None,
    ) -> list[ClassificationResult]:
        """Classify paths, arrays, PIL images or encoded bytes (one, or a list). Bad inputs get ``error``.

        A multi-label model's results also list every class whose probability reaches its threshold (``labels``);
        ``threshold`` replaces the model's per-class thresholds by one for all classes."""
        if threshold is not None:
            if not self.multilabel:
                raise CnnappsError("threshold: the model is single-label (one class per image); a threshold applies "
                                   "to multi-label models")  # fmt: skip
            if not 0 <= threshold <= 1:
                raise CnnappsError(f"threshold: must be between 0 and 1, not {threshold}")
        limits = (self.thresholds if threshold is None else threshold) if self.multilabel else None
        top_k = check_count("top_k", top_k, "classes per image")
        names, probs, errors = self.predict_proba(inputs, batch_size, progress)
        results = [
            ClassificationResult(name, error=error)
            if error is not None
            else top_k_result(name, row, self.class_names, top_k, limits)
            for name, row, error in zip(names, probs, errors, strict=True)
        ]
        for result in results:
            result.engine = self.engine
        return results


def top_k_result(name: str, probabilities: np.ndarray, class_names: list[str], top_k: int,
                 thresholds: list[float] | float | None = None) -> ClassificationResult:  # fmt: skip
    """The ``top_k`` classes of one probability row, best first (ties keep class order); with ``thresholds`` (a
    multi-label model's, per class or one for all) also the classes that reach theirs, as ``labels``."""
    k = max(1, min(top_k, len(class_names)))
    top = np.argsort(-probabilities, kind="stable")[:k]
    labels = None
    if thresholds is not None:
        from cnnapps.apps.classify.multilabel import labels_over

        labels = labels_over(probabilities, class_names, thresholds)
    return ClassificationResult(
        name, predictions=[Prediction(class_names[i], int(i), float(probabilities[i])) for i in top], labels=labels
    )


def load_predictor(
    specs: str | os.PathLike | Sequence[str | os.PathLike], task: str = "classify", **kwargs: Any
) -> ClassificationPredictor:
    """One spec or several (an ensemble): model files (their classify head), exported ONNX files, or registry
    names with pretrained weights."""
    spec_list = [specs] if isinstance(specs, (str, os.PathLike)) else list(specs)
    head = kwargs.pop("head", None)
    members = [load_classifier(s, head) for s in spec_list]
    _FROM_FILES.update(m.model for m in members if isinstance(m.model, torch.nn.Module))
    return ClassificationPredictor(members, **kwargs)
