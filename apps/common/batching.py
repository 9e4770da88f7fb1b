"""Decode, preprocess and batch many inputs for a forward function; bad inputs become per-item errors."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from cnnapps.backbones.preprocess import Preprocess
from cnnapps.datasets.io import DEFAULT_MAX_PIXELS, read_for_batch
from cnnapps.runtime import batched, prefetch_map

#: forward(inputs per preprocessing spec) -> (batch, width) numpy array
Forward = Callable[[dict[Preprocess, torch.Tensor]], np.ndarray]


def default_decode_workers(device: torch.device) -> int:
    """Decode threads only on cores the forward pass leaves free.

    On a CPU the forward pass already uses every core torch was given; threads decoding beside it
    slowed a 2-core machine from 195 to 155 images/s, so decoding runs between batches there.
    """
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return min(4, cores)
    return max(0, min(4, cores - torch.get_num_threads()))


class BatchRunner:
    """Runs inputs (paths, bytes, arrays, PIL images) through ``forward`` in batches, keeping input order."""

    def __init__(
        self,
        specs: Sequence[Preprocess],
        device: torch.device,
        batch_size: int,
        workers: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.specs = list(dict.fromkeys(specs))  # distinct preprocessing, in order
        self.device = device
        self.batch_size = batch_size
        self.workers = default_decode_workers(device) if workers is None else workers
        self.max_pixels = max_pixels

    def _load(self, item: Any) -> tuple[str, list[np.ndarray] | None, str | None]:
        name, rgb, error = read_for_batch(item, self.max_pixels)
        return name, None if rgb is None else [spec(rgb) for spec in self.specs], error

    def run(
        self,
        inputs: Any,
        forward: Forward,
        width: int,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[list[str], np.ndarray, list[str | None]]:
        """Names, outputs (N, width; NaN rows where an input failed) and per-input errors (None when fine)."""
        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        size = batch_size or self.batch_size
        names: list[str] = []
        errors: list[str | None] = []
        outputs = np.full((len(items), width), np.nan, dtype=np.float32)
        loaded = prefetch_map(self._load, items, self.workers, depth=2 * size + self.workers)
        offset = 0
        for batch in batched(loaded, size):
            good = [i for i, (_, arrays, _) in enumerate(batch) if arrays is not None]
            if good:
                stacked = {
                    spec: torch.from_numpy(np.stack([batch[i][1][k] for i in good])).to(self.device)
                    for k, spec in enumerate(self.specs)
                }
                with torch.inference_mode():
                    outputs[[offset + i for i in good]] = forward(stacked)
            for name, _, error in batch:
                names.append(name)
                errors.append(error)
            offset += len(batch)
            if progress is not None:
                progress(len(batch))
        return names, outputs, errors


def map_images(
    inputs: Any,
    run: Callable[[list[np.ndarray]], Sequence[Any]],
    batch_size: int,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[str, np.ndarray | None, Any, str | None]]:
    """Decode inputs batch by batch and ``run`` each batch's readable RGB images (one output per image).

    Returns ``(name, rgb, output, None)`` per input in order, or ``(name, None, None, reason)`` for one
    that could not be read: the predictors of tasks whose outputs are not fixed-width vectors use this."""
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    out: list[tuple[str, np.ndarray | None, Any, str | None]] = []
    for batch in batched(items, batch_size):
        loaded = [read_for_batch(item, max_pixels) for item in batch]
        good = [rgb for _, rgb, _ in loaded if rgb is not None]
        outputs = iter(run(good) if good else [])
        out.extend((name, rgb, None if rgb is None else next(outputs), error) for name, rgb, error in loaded)
        if progress is not None:
            progress(len(batch))
    return out
