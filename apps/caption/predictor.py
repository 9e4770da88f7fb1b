"""Caption images with a trained captioner: greedy (``beam=1``) or beam search, attention per word."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from cnnapps.apps.caption.decode import beam_search, greedy
from cnnapps.apps.common.batching import map_images
from cnnapps.errors import CnnappsError
from cnnapps.results import CaptionResult
from cnnapps.runtime import one_at_a_time, select_device


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
    ) -> None:
        from cnnapps.apps.caption.model import load_captioner

        if model is None:
            if spec is None:
                raise CnnappsError("captioning needs a trained model file (--model)")
            model = load_captioner(spec, head)
        if beam < 1:
            raise CnnappsError(f"--beam must be at least 1, not {beam}")
        self.device = select_device(device)
        self.model = model.eval().to(self.device)
        self.vocab, self.preprocess = model.vocab, model.preprocess
        self.beam, self.max_len = beam, max_len or model.spec.max_len
        self.batch_size = batch_size or (32 if self.device.type == "cuda" else 8)

    @one_at_a_time
    def predict(self, inputs: Any, progress: Callable[[int], None] | None = None) -> list[CaptionResult]:
        grid = self.model.spec.grid
        results: list[CaptionResult] = []
        for name, _, hyp, error in map_images(inputs, self._caption, self.batch_size, progress=progress):
            if hyp is None:
                results.append(CaptionResult(name, error=error))
                continue
            words = hyp.words(self.vocab)
            maps = [a.reshape(grid, grid) for a in hyp.attention]
            results.append(CaptionResult(name, caption=" ".join(words), words=words, score=hyp.score, attention=maps))
        return results

    @torch.inference_mode()
    def _caption(self, images: list[np.ndarray]) -> list[Any]:
        arrays = np.stack([self.preprocess(rgb) for rgb in images])
        features = self.model.encoder(torch.from_numpy(arrays).to(self.device))
        if self.beam == 1:
            return greedy(self.model.decoder, features, self.vocab, self.max_len)
        return [beam_search(self.model.decoder, f[None], self.vocab, self.beam, self.max_len) for f in features]


def load_predictor(specs: list[Any], task: str = "caption", **kwargs: Any) -> CaptionPredictor:
    """The task table's loader: one captioner model file."""
    if len(specs) != 1:
        raise CnnappsError("captioning takes one model, not an ensemble")
    return CaptionPredictor(specs[0], **kwargs)
