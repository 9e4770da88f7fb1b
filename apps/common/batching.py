"""Decode, preprocess and batch many inputs for a forward function; bad inputs become per-item errors."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch

from cnnapps.backbones.preprocess import Preprocess
from cnnapps.datasets import io
from cnnapps.datasets.io import DEFAULT_MAX_PIXELS, OpenedImage, decode_opened, open_for_batch
from cnnapps.errors import ImageError
from cnnapps.runtime import available_cores, check_batch_size

T = TypeVar("T")

#: forward(inputs per preprocessing spec) -> (batch, width) numpy array
Forward = Callable[[dict[Preprocess, torch.Tensor]], np.ndarray]


def default_decode_workers(device: torch.device) -> int:
    """Decode threads only on cores the forward pass leaves free.

    On a CPU the forward pass already uses every core torch was given; threads decoding beside it
    slowed a 2-core machine from 195 to 155 images/s, so decoding runs between batches there. With a
    GPU, decoding is the CPU's whole share of the work (the GPU resizes and normalises): every core but
    the one that feeds the GPU decodes.
    """
    cores = available_cores()
    if device.type == "cuda":
        return max(1, min(16, cores - 1))
    return max(0, min(4, cores - torch.get_num_threads()))


#: where inputs are resized, cropped and normalised: "auto" (on the GPU when the model runs on one, else on
#: the CPU), "cpu" (in the decode threads) or "device" (where the model runs, from uint8 images)
PREPROCESS_PLACES = ("auto", "cpu", "device")


class BatchRunner:
    """Runs inputs (paths, bytes, arrays, PIL images) through ``forward`` in batches, keeping input order.

    On a CPU the decode threads also preprocess (resize, crop, normalise to float32). With the model on a GPU
    the threads only decode: each image goes over as uint8 (a quarter of float32's bytes) and is resized,
    cropped and normalised there, by the same torchvision functions (:meth:`Preprocess.apply_tensor`)."""

    def __init__(
        self,
        specs: Sequence[Preprocess],
        device: torch.device,
        batch_size: int,
        workers: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        preprocess_on: str = "auto",
    ) -> None:
        if preprocess_on not in PREPROCESS_PLACES:
            raise ValueError(f"preprocess_on must be one of {PREPROCESS_PLACES}, not {preprocess_on!r}")
        self.specs = list(dict.fromkeys(specs))  # distinct preprocessing, in order
        self.device = device
        self.batch_size = batch_size
        self.workers = default_decode_workers(device) if workers is None else workers
        self.max_pixels = max_pixels
        self.on_device = preprocess_on == "device" or (preprocess_on == "auto" and device.type == "cuda")

    def _load(self, item: OpenedImage) -> tuple[str, Any, str | None]:
        name, rgb, error = decode_opened(item)
        if rgb is None or self.on_device:
            return name, rgb, error
        return name, [spec(rgb) for spec in self.specs], error

    def _inputs(self, loaded: list[Any]) -> dict[Preprocess, torch.Tensor]:
        if self.on_device:
            return preprocess_on_device(loaded, self.specs, self.device)
        return {
            spec: torch.from_numpy(np.stack([arrays[k] for arrays in loaded])).to(self.device)
            for k, spec in enumerate(self.specs)
        }

    def run(
        self,
        inputs: Any,
        forward: Forward,
        width: int,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[list[str], np.ndarray, list[str | None]]:
        """Names, outputs (N, width; NaN rows where an input failed) and per-input errors (None when fine).

        Preprocessed on the device, decoded images wait for their batch, which then holds at most
        :data:`~cnnapps.datasets.io.DEFAULT_MAX_PIXELS` of them (:func:`run_in_batches`); on the CPU each image is
        resized as it is decoded, so only ``batch_size`` cuts the batches."""
        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        size = check_batch_size(batch_size) or self.batch_size
        names: list[str] = []
        errors: list[str | None] = []
        outputs = np.full((len(items), width), np.nan, dtype=np.float32)

        def run_batch(batch: list[tuple[str, Any, str | None]]) -> None:
            offset = len(names)
            good = [i for i, (_, decoded, _) in enumerate(batch) if decoded is not None]
            if good:
                with torch.inference_mode():
                    outputs[[offset + i for i in good]] = forward(self._inputs([batch[i][1] for i in good]))
            for name, _, error in batch:
                names.append(name)
                errors.append(error)
            if progress is not None:
                progress(len(batch))

        budget = io.DEFAULT_MAX_PIXELS if self.on_device else None
        run_in_batches(items, size, self._load, run_batch, self.workers, self.max_pixels, budget)
        return names, outputs, errors


def run_in_batches(
    items: Sequence[Any],
    size: int,
    decode: Callable[[OpenedImage], T],
    run: Callable[[list[T]], None],
    workers: int = 0,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    budget: int | None = None,
    max_aspect: float | None = io.DEFAULT_MAX_ASPECT,
) -> None:
    """``run`` the inputs in order, in batches of at most ``size`` ``decode``\\ d inputs whose decoding costs at most
    ``budget`` pixels together (an image over it alone; None: no such bound), so that a batch of large images does not
    hold them all decoded at once while small images still share a batch.

    Each input is read as far as its header here (:func:`~cnnapps.datasets.io.open_for_batch`: a file's bytes once,
    checked against ``max_pixels`` and ``max_aspect``), before any of its batch is decoded. ``workers`` threads decode
    the next batch while one runs (none: each batch is decoded here, when its turn comes); a batch is let go when
    ``run`` returns."""
    batches = _cut((open_for_batch(item, max_pixels, max_aspect) for item in items), size, budget)
    if workers <= 0:
        for batch in batches:
            run([decode(item) for item in batch])
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cnnapps-decode") as pool:
        ahead: list[Future[T]] = []
        for batch in batches:
            decoding = [pool.submit(decode, item) for item in batch]
            if ahead:
                run([future.result() for future in ahead])
            ahead = decoding
        if ahead:
            run([future.result() for future in ahead])


def _cut(opened: Iterable[OpenedImage], size: int, budget: int | None) -> Iterator[list[OpenedImage]]:
    """Runs of at most ``size`` inputs whose :attr:`~cnnapps.datasets.io.OpenedImage.pixels` add up to at most
    ``budget``; an input over it alone makes a run."""
    batch: list[OpenedImage] = []
    total = 0
    for item in opened:
        if batch and budget is not None and total + item.pixels > budget:
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += item.pixels
        if len(batch) == size:
            yield batch
            batch, total = [], 0
    if batch:
        yield batch


def preprocess_on_device(
    images: Sequence[np.ndarray], specs: Sequence[Preprocess], device: torch.device
) -> dict[Preprocess, torch.Tensor]:
    """RGB uint8 images (H, W, 3) as one input batch per spec, preprocessed on ``device``.

    Each image goes over as it was decoded (uint8); images of the same size are resized and cropped together,
    then normalised, by :meth:`Preprocess.apply_tensor`, the function the CPU path runs per image."""
    tensors = [torch.from_numpy(rgb).to(device).permute(2, 0, 1) for rgb in images]
    sizes: dict[tuple[int, ...], list[int]] = {}
    for i, tensor in enumerate(tensors):
        sizes.setdefault(tuple(tensor.shape), []).append(i)
    out = {}
    for spec in specs:
        if len(sizes) == 1:  # one size (a folder of camera frames, a dataset): one batched call
            out[spec] = spec.apply_tensor(torch.stack(tensors))
            continue
        rows: list[Any] = [None] * len(tensors)
        for same in sizes.values():
            done = spec.apply_tensor(torch.stack([tensors[i] for i in same]))
            for row, i in zip(done, same, strict=True):
                rows[i] = row
        out[spec] = torch.stack(rows)
    return out


def map_images(
    inputs: Any,
    run: Callable[[list[np.ndarray]], Sequence[Any]],
    batch_size: int,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
    workers: int = 0,
    max_aspect: float | None = io.DEFAULT_MAX_ASPECT,
) -> list[tuple[str, tuple[int, int] | None, Any, str | None]]:
    """Decode inputs batch by batch and ``run`` each batch's readable RGB images (one output per image).

    Returns ``(name, (height, width), output, None)`` per input in order, or ``(name, None, None, reason)`` for one
    that could not be read, or whose output ``run`` gave as an :class:`~cnnapps.errors.ImageError` (an image the
    model cannot take): the predictors of tasks whose outputs are not fixed-width vectors use this. A batch's images
    are let go once it has run, and a batch holds at most :data:`~cnnapps.datasets.io.DEFAULT_MAX_PIXELS` decoded
    pixels (an image over it alone, :func:`run_in_batches`). ``workers`` threads decode ahead of the batch that runs
    (:func:`default_decode_workers`). ``max_pixels`` and ``max_aspect`` (None: no limit) bound each input's size."""
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    out: list[tuple[str, tuple[int, int] | None, Any, str | None]] = []

    def run_batch(loaded: list[tuple[str, np.ndarray | None, str | None]]) -> None:
        good = [rgb for _, rgb, _ in loaded if rgb is not None]
        outputs = iter(run(good) if good else [])
        for name, rgb, error in loaded:
            output = None if rgb is None else next(outputs)
            if isinstance(output, ImageError):
                rgb, output, error = None, None, output.detail
            out.append((name, None if rgb is None else (int(rgb.shape[0]), int(rgb.shape[1])), output, error))
        if progress is not None:
            progress(len(loaded))

    run_in_batches(items, batch_size, decode_opened, run_batch, workers, max_pixels, io.DEFAULT_MAX_PIXELS, max_aspect)
    return out
