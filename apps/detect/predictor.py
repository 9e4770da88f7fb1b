"""Run a detector over images: ``DetectionResult`` objects with boxes, COCO-RLE masks and keypoints.

Large images can run tiled (``tile="auto"``: tiles of the size the model was trained at, or ``tile=1024``;
``overlap=128``): tiles are detected one by one and merged with NMS, so memory is bounded by the tile, not by
the image. A tile far from the training size (objects shrunk or grown beyond what the model learned) is warned of.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from cnnapps.apps.common.batching import default_decode_workers, map_images
from cnnapps.apps.detect.tiling import Detections, crop_to_rle, detect_tiled, mask_window, resolve_tile, tile_advice
from cnnapps.datasets.io import DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS
from cnnapps.engines import EngineError
from cnnapps.errors import CnnappsError, ImageError
from cnnapps.results import DetectionResult, Instance
from cnnapps.runtime import check_batch_size, one_at_a_time, placed_for_inference, select_device

log = logging.getLogger("cnnapps")


class DetectionPredictor:
    """A loaded detector with its thresholds; ``predict(inputs)`` returns one result per input, in order.

    ``tile``: None (whole images), a size in pixels, or ``"auto"`` (the size the model was trained at);
    ``overlap``: pixels shared by neighbouring tiles [default: 128, at most half the tile]; ``embed``: give each
    instance its appearance (``Instance.embedding``, from the same forward pass; not with tiles), for trackers."""

    def __init__(
        self,
        spec: str | os.PathLike | None = None,
        *,
        task: str | None = None,
        device: str = "auto",
        score_threshold: float = 0.5,
        batch_size: int | None = None,
        tile: int | str | None = None,
        overlap: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        model: torch.nn.Module | None = None,
        head: str | None = None,
        engine: str = "auto",
        embed: bool = False,
    ) -> None:
        from cnnapps.apps.detect.model import load_detector

        owned = model is None  # a caller's model is never moved or changed: a copy is, when it must be
        if model is None:
            from cnnapps.apps.tasks import get_task

            spec = spec if spec is not None else get_task(task or "segment").default_model
            model = load_detector(spec, head, task)
        self.source = str(spec) if spec is not None else "<model>"
        self.spec = model.spec
        if task is not None and task != self.spec.task:
            raise CnnappsError(f"{self.source}: a {self.spec.task} model, not a {task} model")
        try:
            tile, overlap = resolve_tile(tile, overlap, self.spec.training_size)
        except ValueError as exc:
            raise CnnappsError(f"--tile: {exc}") from None
        if tile is not None and tile <= overlap:
            raise CnnappsError(f"--tile {tile} must be larger than --overlap {overlap}")
        advice = tile_advice(tile, self.spec.training_size) if tile else None
        if advice:
            log.warning("%s: %s", self.source, advice)
        self.task = self.spec.task
        self.device = select_device(device, engine)
        self.model = placed_for_inference(model, self.device, channels_last=False, owned=owned)
        if self.model.roi_heads.score_thresh != kept_from(score_threshold):
            if self.model is model and not owned:  # the caller's module, already in place: its threshold stays
                self.model = copy.deepcopy(model)
            self.model.roi_heads.score_thresh = kept_from(score_threshold)
        self.score_threshold = score_threshold
        self.batch_size = check_batch_size(batch_size) or (4 if self.device.type == "cuda" else 1)
        self.tile, self.overlap = tile, overlap
        self._trunk = None
        if self.spec.shared:  # heads on a shared trunk: its pass compiled as classifiers' are
            from cnnapps.apps.common.trunk import TrunkRunner

            pre = self.model.shared_preprocess
            mine = owned or self.model is not model
            self._trunk = TrunkRunner(self.model.backbone.body, pre.input_size, self.batch_size, self.device, engine,
                                      owned=mine, name=self.source)  # fmt: skip
        # a trunk of cnnapps' own detectors is compiled for a resized input shape once that shape keeps coming
        # (video frames, a camera's folder): the frozen graph folds batch norm into the convolutions; an engine
        # asked for by name compiles it for each shape at once, so that every image runs on that engine
        self._engine = engine
        self._owns_model = owned or self.model is not model  # a caller's module is copied before it is changed
        self._compiled: OrderedDict[tuple, Any] = OrderedDict()
        self._shapes_seen: Counter[tuple] = Counter()
        self._compile_lock = threading.Lock()
        self._compiles = (not self.spec.shared and engine != "eager" and not tile
                          and hasattr(getattr(self.model.backbone, "body", None), "forward_shared"))  # fmt: skip
        if engine not in ("auto", "eager") and not self.spec.shared and not self._compiles:
            why = ("tiled detection runs its trunk in PyTorch" if tile
                   else f"{self.source}: its backbone (torchvision's own) runs only in PyTorch")  # fmt: skip
            raise EngineError(f"--engine {engine}: {why}; use --engine auto or eager")
        # tiling exists for images beyond the usual limits: larger, or more elongated than a whole image may be
        self.max_pixels, self.max_aspect = (None, None) if tile else (max_pixels, DEFAULT_MAX_ASPECT)
        if embed and tile:
            raise CnnappsError("--tile: tiled detection gives no appearance embeddings; track without --tile")
        self.embed = embed

    @property
    def engine(self) -> str:
        """The engine the trunk runs on (the RPN, RoI heads and NMS run in PyTorch): a shared trunk's, else the one
        of the trunk compiled last (``eager`` until a shape has been compiled). Each result names the engine its own
        image's trunk ran on: an image whose shape has no compiled trunk (yet) runs eager."""
        if self._trunk is not None:
            return self._trunk.engine
        if self._compiled:
            return next(reversed(self._compiled.values())).engine
        return "eager"

    @property
    def class_names(self) -> list[str]:
        return self.spec.class_names

    @one_at_a_time
    def predict(self, inputs: Any, progress: Callable[[int], None] | None = None) -> list[DetectionResult]:
        """Detect in paths, bytes, arrays or PIL images; a bad input gets a result with ``error`` set."""
        return self.predict_in_lane(inputs, progress)

    def predict_in_lane(
        self, inputs: Any, progress: Callable[[int], None] | None = None, compile_now: bool = False
    ) -> list[DetectionResult]:
        """:meth:`predict` for callers that run several at once on purpose: the frames of one video in lanes, each
        lane a thread or a forked process with its share of the CPU's cores (the model is only read; compiling is
        locked). ``compile_now``: compile the trunk for these inputs' shape at once rather than once the shape keeps
        coming, so that lanes forked afterwards share the compiled graph."""
        workers = default_decode_workers(self.device)
        detect = functools.partial(self._detect_images, compile_now=compile_now)
        done = map_images(inputs, detect, self.batch_size, self.max_pixels, progress, workers, self.max_aspect)
        results = []
        for name, size, found, error in done:
            if size is None:  # no trunk ran: the predictor's engine
                results.append(DetectionResult(name, error=error, engine=self.engine))
                continue
            detections, engine = found
            result = to_result(name, detections, *size, self.spec)
            result.engine = engine  # the engine this image's trunk ran on (a shape not compiled runs eager)
            results.append(result)
        return results

    def _detect_images(self, images: Sequence[np.ndarray], compile_now: bool = False) -> list[Any]:
        """One output per image: its detections and the engine its trunk ran on, or an ``ImageError`` for an image the
        model cannot take. Images of one size run together: the model pads a batch to its largest image, and the
        padding would find objects of its own in the smaller ones (an image's answer must not depend on the others
        in its batch)."""
        if not images:
            return []
        if self.tile:  # tiles run their trunk in PyTorch, or on a shared trunk's engine
            engine = self._trunk.engine if self._trunk is not None else "eager"
            tiled = [detect_tiled(rgb, lambda t: self._forward([t])[0][0], self.tile, self.overlap) for rgb in images]
            return [(found, engine) for found in tiled]
        found: list[Any] = [None] * len(images)
        sizes: dict[tuple[int, int], list[int]] = {}
        for i, rgb in enumerate(images):
            reason = self._cannot_take(rgb)
            if reason:
                found[i] = ImageError("<input>", reason)
            else:
                sizes.setdefault(rgb.shape[:2], []).append(i)
        for members in sizes.values():
            detections, engine = self._forward([images[i] for i in members], compile_now)
            for i, one in zip(members, detections, strict=True):
                found[i] = (one, engine)
        return found

    def _cannot_take(self, rgb: np.ndarray) -> str | None:
        """Why the detector's own resize cannot take ``rgb`` (its short side would shrink under 1 px), or None."""
        transform = getattr(self.model, "transform", None)
        if self.spec.shared or transform is None:
            return None
        height, width = rgb.shape[:2]
        short, long = min(height, width), max(height, width)
        scale = min(float(transform.min_size[-1]) / short, float(transform.max_size) / long)
        if int(short * scale) >= 1:
            return None
        return (f"{width}x{height} image is more elongated than this detector takes ({transform.max_size}:1 at most: "
                f"it resizes the long side to {transform.max_size} px); use --tile")  # fmt: skip

    @torch.inference_mode()
    def _forward(self, images: list[np.ndarray], compile_now: bool = False) -> tuple[list[Detections], str]:
        """The detections of images of one size, and the engine their trunk ran on."""
        if self.spec.shared:  # heads on a shared trunk: the model file's preprocessing, then the trunk's pass
            from cnnapps.apps.detect.model import run_shared

            tensors = [torch.from_numpy(rgb).to(self.device).permute(2, 0, 1) for rgb in images]
            outputs = run_shared(self.model, tensors, self._trunk, embed=self.embed, full_masks=False)
            engine = self._trunk.engine
        else:
            from cnnapps.apps.detect.model import run_detector

            tensors = [torch.from_numpy(rgb).to(self.device).permute(2, 0, 1).float().div_(255.0) for rgb in images]
            ran: list[Any] = []  # the compiled trunk the batch's shape got, or None (eager)

            def trunk_for(shape: tuple) -> Any:
                ran.append(_compiled_trunk(self, shape, now=compile_now))
                return ran[-1]

            outputs = run_detector(self.model, tensors, self.embed, trunk_for if self._compiles else None,
                                   full_masks=False)  # fmt: skip
            engine = ran[-1].engine if ran and ran[-1] is not None else "eager"
        found = [to_detections(out, rgb.shape[0], rgb.shape[1]) for out, rgb in zip(outputs, images, strict=True)]
        return found, engine


def kept_from(threshold: float) -> float:
    """The RoI heads' ``score_thresh`` that keeps scores >= ``threshold``: torchvision keeps float32 scores above it,
    so it is the float32 just below the smallest float32 at or above ``threshold`` (0 stays 0: scores above it)."""
    if threshold <= 0:
        return float(threshold)
    least = np.float32(threshold)
    if float(least) < threshold:
        least = np.nextafter(least, np.float32(np.inf))
    return float(np.nextafter(least, np.float32(-np.inf)))


#: how often a resized input shape is seen before the trunk is compiled for it, and how many compiled shapes are kept
COMPILE_AFTER, COMPILED_SHAPES = 3, 4


def _compiled_trunk(predictor: DetectionPredictor, shape: tuple, now: bool = False) -> Any:
    """The predictor's trunk compiled for ``shape`` (N, C, H, W) once that shape has come ``COMPILE_AFTER`` times
    (at once with ``now`` or an engine asked for by name), else None (eager); the last ``COMPILED_SHAPES`` shapes
    are kept."""
    from cnnapps.apps.common.trunk import TrunkRunner

    with predictor._compile_lock:  # lanes of one video ask at once: one compiles, the others wait for it
        if shape in predictor._compiled:
            predictor._compiled.move_to_end(shape)
            return predictor._compiled[shape]
        predictor._shapes_seen[shape] += 1
        if predictor._shapes_seen[shape] < (COMPILE_AFTER if predictor._engine == "auto" and not now else 1):
            return None
        body, owned = predictor.model.backbone.body, predictor._owns_model
        runner = TrunkRunner(body, shape[1:], shape[0], predictor.device, predictor._engine, owned=owned)
        predictor._compiled[shape] = runner
        if len(predictor._compiled) > COMPILED_SHAPES:
            predictor._compiled.popitem(last=False)
        if len(predictor._shapes_seen) > 64:  # a folder of many sizes: forget the counts, keep memory bounded
            predictor._shapes_seen.clear()
        return runner


def load_predictor(specs: list[Any], task: str = "segment", **kwargs: Any) -> DetectionPredictor:
    """The task table's loader: one detector model file or torchvision COCO model name."""
    if len(specs) != 1:
        raise CnnappsError(f"{task} takes one model, not an ensemble")
    return DetectionPredictor(specs[0], task=task, **kwargs)


def to_result(name: str, found: Detections, height: int, width: int, spec: Any) -> DetectionResult:
    """Detections as a :class:`DetectionResult`: class names from ``spec``, masks as COCO RLE."""
    names = spec.class_names
    instances = []
    for i in range(len(found)):
        label = int(found.labels[i])
        mask = None
        if found.masks is not None:
            crop, x0, y0 = found.masks[i]
            mask = crop_to_rle(crop, x0, y0, height, width)
        keypoints = None
        if found.keypoints is not None:
            keypoints = [tuple(float(v) for v in k) for k in found.keypoints[i]]
        instances.append(
            Instance(
                label=names[label] if label < len(names) else str(label),
                label_index=label,
                score=float(found.scores[i]),
                box=tuple(float(v) for v in found.boxes[i]),
                mask=mask,
                keypoints=keypoints,
                embedding=None if found.embeddings is None else found.embeddings[i],
            )
        )
    return DetectionResult(name, instances=instances, width=width, height=height, skeleton=spec.skeleton)


def to_detections(output: dict[str, torch.Tensor], height: int, width: int) -> Detections:
    """A torchvision R-CNN output in numpy, masks thresholded at 0.5 and cut to a window around their box (masks
    at the RoI heads' resolution, ``"box_masks"``, are pasted into that window alone: :func:`paste_in_windows`)."""
    boxes = output["boxes"].float().cpu().numpy()
    found = Detections(boxes, output["scores"].float().cpu().numpy(), output["labels"].cpu().numpy())
    if "box_masks" in output:
        found.masks = paste_in_windows(output["box_masks"], output["boxes"], height, width)
    elif "masks" in output:
        crops = []
        for i, box in enumerate(boxes):
            x0, y0, x1, y1 = mask_window(box, height, width)
            crops.append(((output["masks"][i, 0, y0:y1, x0:x1] > 0.5).cpu().numpy(), x0, y0))
        found.masks = crops
    if "keypoints" in output:
        xy = output["keypoints"][..., :2].float().cpu().numpy()
        scores = output["keypoints_scores"].float().cpu().numpy()[..., None]
        found.keypoints = np.concatenate([xy, scores], -1)
    if "embeddings" in output:
        found.embeddings = output["embeddings"].float().cpu().numpy()
    return found


def paste_in_windows(
    masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int
) -> list[tuple[np.ndarray, int, int]]:
    """The RoI heads' masks (N, 1, M, M probabilities over their boxes, in an image of ``height`` x ``width``) as
    ``(crop, x0, y0)`` over the window :func:`to_detections` keeps (:func:`mask_window`), thresholded at 0.5: the
    pixels torchvision's ``paste_masks_in_image`` gives there (the same padded mask, integer box and bilinear
    resize), without an image-sized mask per instance."""
    import torch.nn.functional as F
    from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

    padded, scale = expand_masks(masks, padding=1)
    pasted = expand_boxes(boxes, scale).to(dtype=torch.int64).tolist()
    crops = []
    for mask, box, (px0, py0, px1, py1) in zip(padded, boxes.float().cpu().numpy(), pasted, strict=True):
        x0, y0, x1, y1 = mask_window(box, height, width)
        crop = np.zeros((y1 - y0, x1 - x0), bool)
        # the part of the pasted mask (its box's corners included) inside the window, which lies inside the image
        ax0, ay0, ax1, ay1 = max(px0, x0), max(py0, y0), min(px1 + 1, x1), min(py1 + 1, y1)
        if ax1 > ax0 and ay1 > ay0:
            size = (max(py1 - py0 + 1, 1), max(px1 - px0 + 1, 1))
            resized = F.interpolate(mask[None], size=size, mode="bilinear", align_corners=False)[0, 0]
            part = resized[ay0 - py0 : ay1 - py0, ax0 - px0 : ax1 - px0] > 0.5
            crop[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = part.cpu().numpy()
        crops.append((crop, x0, y0))
    return crops
