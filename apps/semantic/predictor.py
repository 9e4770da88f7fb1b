"""Run a semantic segmentation model over images: one :class:`SemanticResult` (a class for every pixel) per input.

Large images can run as a sliding window (``tile=512, overlap=64``): overlapping windows are classified one by
one and their logits summed where they overlap; windows are taken a row at a time and finished rows leave memory,
so memory grows with one row of windows and the class map, not with the image times the classes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cnnapps.apps.common.batching import map_images
from cnnapps.apps.semantic.result import SemanticResult
from cnnapps.datasets.io import DEFAULT_MAX_PIXELS
from cnnapps.errors import CnnappsError
from cnnapps.exported import is_onnx_file
from cnnapps.runtime import check_batch_size, one_at_a_time, select_device

log = logging.getLogger("cnnapps")


def to_image_frame(logits: torch.Tensor, size: tuple[int, int], geometry: tuple[float, float, float, float]
                   ) -> torch.Tensor:  # fmt: skip
    """Logits (K, h, w) of a preprocessed input moved into the image's own frame (K, H, W).

    A whole-image resize (squash, or the shorter side) is a bilinear resize back; a centre crop is undone through
    its geometry (``x_in = x * sx - ox``), pixels outside the crop taking the nearest predicted ones."""
    height, width = size
    sx, sy, ox, oy = geometry
    if ox == 0 and oy == 0 and abs(sx * width - logits.shape[-1]) < 1 and abs(sy * height - logits.shape[-2]) < 1:
        return F.interpolate(logits[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    h_in, w_in = logits.shape[-2:]
    xs = ((torch.arange(width, device=logits.device) + 0.5) * sx - ox) / w_in * 2 - 1
    ys = ((torch.arange(height, device=logits.device) + 0.5) * sy - oy) / h_in * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1)[None].to(logits.dtype)
    return F.grid_sample(logits[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]


def warn_outside(owner: Any, what: str, size: tuple[int, int], geometry: tuple[float, float, float, float],
                 input_hw: tuple[int, int]) -> None:  # fmt: skip
    """One warning per ``owner`` (the shared trunk: one line for all its heads) when its centre crop leaves pixels of
    an image outside what a dense head saw: those pixels are guessed from the crop's edge."""
    (height, width), (sx, sy, ox, oy), (h_in, w_in) = size, geometry, input_hw
    seen_w = min(width, (w_in + ox) / sx) - max(0.0, ox / sx)
    seen_h = min(height, (h_in + oy) / sy) - max(0.0, oy / sy)
    outside = 1 - max(0.0, seen_w) * max(0.0, seen_h) / (width * height)
    if outside < 0.005 or getattr(owner, "_warned_outside", False):
        return
    owner._warned_outside = True
    log.warning("%s: the shared trunk's centre crop leaves %.0f %% of a %dx%d image's pixels unseen (they take the "
                "crop's edge)", what, 100 * outside, width, height)  # fmt: skip


def _index_dtype(num_classes: int) -> torch.dtype:
    return torch.uint8 if num_classes <= 256 else torch.int32


class SemanticPredictor:
    """A loaded semantic model; ``predict(inputs)`` returns one result per input, in order.

    ``spec``: a model file, a torchvision model name (``deeplabv3_resnet50``...) or an exported ONNX file.
    ``tile``/``overlap``: sliding-window inference in windows of ``tile`` pixels of the image."""

    task = "semantic"

    def __init__(
        self,
        spec: str | os.PathLike | None = None,
        *,
        task: str | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        tile: int | None = None,
        overlap: int = 64,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        head: str | None = None,
        model: torch.nn.Module | None = None,
        preprocess: Any = None,
    ) -> None:
        from cnnapps.apps.semantic.model import load_semantic

        if task is not None and task != self.task:
            raise CnnappsError(f"{spec}: a semantic predictor does not do {task}")
        if tile is not None and tile <= overlap:
            raise CnnappsError(f"--tile {tile} must be larger than --overlap {overlap}")
        if tile is not None and tile < 16:
            raise CnnappsError(f"--tile {tile}: windows need at least 16 pixels")
        self.device = select_device(device)
        if spec is None and model is None:
            from cnnapps.apps.tasks import get_task

            spec = get_task(self.task).default_model
        self.source = str(spec) if spec is not None else "<model>"
        if model is not None:
            self.model, self.preprocess = model, preprocess
            self.class_names, self.colours = list(model.spec.class_names), list(model.spec.colours)
        elif is_onnx_file(spec):
            from cnnapps.apps.semantic.model import preprocessing
            from cnnapps.exported import OnnxRunner, read_onnx_metadata

            meta = read_onnx_metadata(spec, task=self.task)
            self.model, self.preprocess = OnnxRunner(spec, self.device), preprocessing(meta["preprocess"])
            self.class_names, self.colours = list(meta["class_names"]), list(meta.get("colours", []))
        else:
            self.model, self.preprocess = load_semantic(spec, head)
            self.class_names, self.colours = list(self.model.spec.class_names), list(self.model.spec.colours)
        if isinstance(self.model, torch.nn.Module):
            self.model = self.model.eval().to(self.device)
        #: the engine that runs the model: PyTorch as it is, or onnxruntime for an exported file
        self.engine = "eager" if isinstance(self.model, torch.nn.Module) else self.model.engine
        self.batch_size = check_batch_size(batch_size) or (8 if self.device.type == "cuda" else 2)
        self.tile, self.overlap = tile, overlap
        self.max_pixels = None if tile else max_pixels  # windows exist for images beyond the usual limit

    @one_at_a_time
    def predict(self, inputs: Any, progress: Callable[[int], None] | None = None) -> list[SemanticResult]:
        """Class maps for paths, bytes, arrays or PIL images; a bad input gets a result with ``error`` set."""
        done = map_images(inputs, self._label_images, self.batch_size, self.max_pixels, progress)
        return [
            SemanticResult(name, error=error, engine=self.engine)
            if size is None
            else SemanticResult(
                name, labels=labels, class_names=self.class_names, colours=self.colours, engine=self.engine
            )
            for name, size, labels, error in done
        ]

    def _label_images(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.tile:
            return [self._tiled(rgb) for rgb in images]
        return [labels.cpu().numpy() for labels in self._label(list(images))]

    @torch.inference_mode()
    def logits(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """Each image's class logits (K, H, W) in its own frame (inputs of one size run as one batch)."""
        tensors = [torch.from_numpy(rgb).to(self.device).permute(2, 0, 1) for rgb in images]
        inputs = [self.preprocess.apply_tensor(t) for t in tensors]
        out: list[torch.Tensor | None] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(tuple(x.shape), []).append(i)
        for members in groups.values():
            found = self.model(torch.stack([inputs[i] for i in members]))
            for i, row in zip(members, found, strict=True):
                size = (int(images[i].shape[0]), int(images[i].shape[1]))
                out[i] = to_image_frame(row.float(), size, self.preprocess.geometry(*size))
        return out  # type: ignore[return-value]

    def _label(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        dtype = _index_dtype(len(self.class_names))
        return [row.argmax(0).to(dtype) for row in self.logits(images)]

    def _tiled(self, rgb: np.ndarray) -> np.ndarray:
        """Sliding windows of ``tile`` pixels with ``overlap``, a row at a time: logits are summed where windows
        overlap, and rows no later window reaches are decided and let go."""
        height, width = rgb.shape[:2]
        step = self.tile - self.overlap
        ys = _starts(height, self.tile, step)
        xs = _starts(width, self.tile, step)
        labels = np.zeros((height, width), np.uint8 if len(self.class_names) <= 256 else np.int32)
        band: torch.Tensor | None = None  # summed logits of rows [top, top + band height)
        top = 0
        for k, y in enumerate(ys):
            bottom = min(height, y + self.tile)
            windows = [np.ascontiguousarray(rgb[y:bottom, x : min(width, x + self.tile)]) for x in xs]
            found = []
            for start in range(0, len(windows), self.batch_size):
                found += self.logits(windows[start : start + self.batch_size])
            rows = bottom - top
            if band is None or band.shape[1] < rows:
                grown = torch.zeros((found[0].shape[0], rows, width), device=found[0].device)
                if band is not None:
                    grown[:, : band.shape[1]] = band
                band = grown
            for x, window in zip(xs, found, strict=True):
                band[:, y - top : bottom - top, x : x + window.shape[-1]] += window
            done = ys[k + 1] if k + 1 < len(ys) else height
            labels[top:done] = band[:, : done - top].argmax(0).cpu().numpy()
            band, top = band[:, done - top :], done
        return labels


def _starts(length: int, tile: int, step: int) -> list[int]:
    """Window starts covering ``length``: every ``step``, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


def load_predictor(specs: list[Any], task: str = "semantic", **kwargs: Any) -> SemanticPredictor:
    """The task table's loader: one model file, torchvision model name or exported ONNX file."""
    if len(specs) != 1:
        raise CnnappsError(f"{task} takes one model, not an ensemble")
    return SemanticPredictor(specs[0], task=task, **kwargs)
