"""Batched classification of any inputs: decoding overlaps the forward pass; ensembles average probabilities.

This is the inference path: it imports neither Lightning nor albumentations.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from cnnapps.apps.classify.model import LoadedClassifier, load_classifier
from cnnapps.datasets.io import DEFAULT_MAX_PIXELS, describe_input, read_image
from cnnapps.errors import CnnappsError, ImageError
from cnnapps.results import ClassificationResult, Prediction
from cnnapps.runtime import batched, prefetch_map, prepare_for_inference, select_device


class ClassificationPredictor:
    """``predict(inputs)`` -> one :class:`ClassificationResult` per input, in order.

    Several members make an ensemble: their softmax probabilities are averaged (they must
    share class names; each keeps its own preprocessing).
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
        self.members = list(members)
        self.device = select_device(device)
        # Small batches keep a CPU's caches warm: 4 images per call ran ~2.5x faster per image than 32.
        self.batch_size = batch_size or (32 if self.device.type == "cuda" else 4)
        self.workers = default_decode_workers(self.device) if workers is None else workers
        self.max_pixels = max_pixels
        self._specs = list(dict.fromkeys(m.preprocess for m in members))  # distinct preprocessing, in order
        self._runners = []
        for member in members:
            example = torch.zeros(self.batch_size, *member.preprocess.input_size)
            self._runners.append(prepare_for_inference(member.model, example, self.device, engine))

    @property
    def class_names(self) -> list[str]:
        return self.members[0].class_names

    def _load(self, item: Any) -> tuple[str, list[np.ndarray] | None, str | None]:
        name = describe_input(item)
        try:
            rgb = read_image(item, max_pixels=self.max_pixels, name=name)
            return name, [spec(rgb) for spec in self._specs], None
        except ImageError as exc:
            return name, None, exc.detail
        except Exception as exc:  # a decoder crash on one file must not end the batch
            return name, None, f"{type(exc).__name__}: {exc}"

    def predict_proba(
        self, inputs: Any, batch_size: int | None = None, progress: Callable[[int], None] | None = None
    ) -> tuple[list[str], np.ndarray, list[str | None]]:
        """Names, probabilities (N, classes; NaN rows for failed inputs) and per-input errors."""
        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        size = batch_size or self.batch_size
        names: list[str] = []
        errors: list[str | None] = []
        probs = np.full((len(items), len(self.class_names)), np.nan, dtype=np.float32)
        loaded = prefetch_map(self._load, items, self.workers, depth=2 * size + self.workers)
        offset = 0
        for batch in batched(loaded, size):
            good = [i for i, (_, arrays, _) in enumerate(batch) if arrays is not None]
            if good:
                probs[[offset + i for i in good]] = self._forward([batch[i][1] for i in good])
            for name, _, error in batch:
                names.append(name)
                errors.append(error)
            offset += len(batch)
            if progress is not None:
                progress(len(batch))
        return names, probs, errors

    @torch.inference_mode()
    def _forward(self, arrays: list[list[np.ndarray]]) -> np.ndarray:
        inputs = {
            spec: torch.from_numpy(np.stack([a[k] for a in arrays])).to(self.device)
            for k, spec in enumerate(self._specs)
        }
        total = None
        for member, run in zip(self.members, self._runners, strict=True):
            p = torch.softmax(run(inputs[member.preprocess]).float(), dim=1)
            total = p if total is None else total + p
        return (total / len(self.members)).cpu().numpy()

    def predict(
        self,
        inputs: Any,
        top_k: int = 5,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[ClassificationResult]:
        """Classify paths, arrays, PIL images or encoded bytes (one, or a list). Bad inputs get ``error``."""
        names, probs, errors = self.predict_proba(inputs, batch_size, progress)
        k = max(1, min(top_k, len(self.class_names)))
        results = []
        for name, row, error in zip(names, probs, errors, strict=True):
            if error is not None:
                results.append(ClassificationResult(name, error=error))
                continue
            top = np.argsort(-row, kind="stable")[:k]
            preds = [Prediction(self.class_names[i], int(i), float(row[i])) for i in top]
            results.append(ClassificationResult(name, predictions=preds))
        return results


def default_decode_workers(device: torch.device) -> int:
    """Decode threads only on cores the forward pass leaves free.

    On a CPU the forward pass already uses every core torch was given; threads decoding beside it
    slowed a 2-core machine from 195 to 155 images/s, so decoding runs between batches there.
    """
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return min(4, cores)
    return max(0, min(4, cores - torch.get_num_threads()))


def load_predictor(specs: str | os.PathLike | Sequence[str | os.PathLike], **kwargs: Any) -> ClassificationPredictor:
    """One spec or several (an ensemble): model files or registry names with pretrained weights."""
    spec_list = [specs] if isinstance(specs, (str, os.PathLike)) else list(specs)
    return ClassificationPredictor([load_classifier(s) for s in spec_list], **kwargs)
