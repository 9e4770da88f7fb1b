"""Caption images with a trained captioner: greedy (``beam=1``) or beam search, attention per word."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from cnnapps.apps.caption.decode import beam_search, greedy
from cnnapps.apps.common.batching import map_images, preprocess_on_device
from cnnapps.errors import CnnappsError
from cnnapps.results import CaptionResult
from cnnapps.runtime import check_batch_size, check_count, one_at_a_time, placed_for_inference, select_device


class CaptionPredictor:
    """``predict(inputs)`` returns one :class:`CaptionResult` per input, in order; bad inputs carry ``error``."""

    task = "caption"

    def __init__(
        self,
        spec: str | os.PathLike | None = None,
        *,
        device: str = "auto",
        beam: int = 1,
        max_len: int | None = None,
        batch_size: int | None = None,
        model: torch.nn.Module | None = None,
        head: str | None = None,
        engine: str = "auto",
    ) -> None:
        from cnnapps.apps.caption.model import load_captioner

        owned = model is None  # a caller's model is never moved or changed: a copy is, when it must be
        if model is None:
            if spec is None:
                raise CnnappsError("captioning needs a trained model file (--model)")
            model = load_captioner(spec, head)
        max_len = decoding_length(model, beam, max_len)
        self.device = select_device(device, engine)
        self.model = placed_for_inference(model, self.device, channels_last=False, owned=owned)
        self.vocab, self.preprocess = model.vocab, model.preprocess
        self.beam, self.max_len = beam, max_len
        self.batch_size = check_batch_size(batch_size) or (32 if self.device.type == "cuda" else 8)
        from cnnapps.apps.common.trunk import TrunkRunner

        self._trunk = TrunkRunner(self.model.encoder.backbone, self.preprocess.input_size, self.batch_size,
                                  self.device, engine, owned=owned or self.model is not model)  # fmt: skip
        self.engine = self._trunk.engine  # the encoder's trunk; the decoder runs in PyTorch

    @one_at_a_time
    def predict(self, inputs: Any, progress: Callable[[int], None] | None = None) -> list[CaptionResult]:
        results = []
        for name, _, result, error in map_images(inputs, self._caption, self.batch_size, progress=progress):
            if result is None:
                result = CaptionResult(name, error=error)
            result.source, result.engine = name, self.engine
            results.append(result)
        return results

    @torch.inference_mode()
    def _caption(self, images: list[np.ndarray]) -> list[CaptionResult]:
        if self.device.type == "cuda":  # uint8 over PCIe, resized and normalised on the GPU
            batch = preprocess_on_device(images, [self.preprocess], self.device)[self.preprocess]
        else:
            batch = torch.from_numpy(np.stack([self.preprocess(rgb) for rgb in images]))
        _, features = self._trunk(batch)
        geometries = [self.preprocess.geometry(*rgb.shape[:2]) for rgb in images]
        return caption_grid(self.model, self.model.encoder.from_features(features), self.beam, self.max_len,
                            geometries, tuple(self.preprocess.input_size[1:]))  # fmt: skip


def decoding_length(model: Any, beam: int, max_len: int | None) -> int:
    """The most words per caption (``max_len``, or the model's own) after checking that ``model`` can decode with
    ``beam`` and ``max_len``; a one-line error when it cannot."""
    check_count("beam", beam, "captions kept at each step of the search")
    if max_len is None:
        return model.spec.max_len
    max_len = check_count("max_len", max_len, "the most words per caption")
    limit = getattr(model.decoder, "max_words", None)  # a Transformer has trained positions for so many words
    if limit is not None and max_len > limit:
        raise CnnappsError(f"--max-len must be at most {limit} for this Transformer captioner (it has trained "
                           f"positions for {limit} words), not {max_len}")  # fmt: skip
    return max_len


def caption_grid(
    model: Any,
    grid: torch.Tensor,
    beam: int,
    max_len: int,
    geometries: list[tuple[float, float, float, float]] | None = None,
    input_size: tuple[int, int] | None = None,
) -> list[CaptionResult]:
    """Captions (greedy when ``beam`` is 1) for encoded grids (N, cells, channels), as results whose ``source``
    the caller sets. ``geometries`` (each image's :meth:`Preprocess.geometry`) and ``input_size`` (the network's
    input height and width) let a result draw its attention over the part of the photo the network saw."""
    vocab, side = model.vocab, model.spec.grid
    if beam == 1:
        found = greedy(model.decoder, grid, vocab, max_len)
    else:
        found = [beam_search(model.decoder, g[None], vocab, beam, max_len) for g in grid]
    results = []
    for i, hyp in enumerate(found):
        words = hyp.words(vocab)
        maps = [a.reshape(side, side) for a in hyp.attention]
        geometry = geometries[i] if geometries is not None else None
        results.append(CaptionResult("", caption=" ".join(words), words=words, score=hyp.score, attention=maps,
                                     geometry=geometry, input_size=input_size))  # fmt: skip
    return results


def load_predictor(specs: list[Any], task: str = "caption", **kwargs: Any) -> CaptionPredictor:
    """The task table's loader: one captioner model file."""
    if len(specs) != 1:
        raise CnnappsError("captioning takes one model, not an ensemble")
    return CaptionPredictor(specs[0], **kwargs)
