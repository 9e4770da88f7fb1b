"""Panoptic segmentation from two heads on one trunk (Panoptic FPN, Kirillov et al. 2019): things from a Mask R-CNN
head, stuff from a semantic head, merged into one segment per pixel.

The merge is Panoptic FPN's (detectron2's ``combine_semantic_and_instance_outputs``): instances in order of score,
above a score threshold, each keeping the pixels no earlier instance took unless more than ``overlap`` of it is
already taken; then each stuff class of the semantic map on the pixels left, when it covers at least ``stuff_area``
pixels; pixels of neither stay void (id 0).

A panoptic model file holds the trunk and one ``panoptic`` head whose tensors are both heads' (``things.*``,
``stuff.*``); ``cnnapps train panoptic`` joins two files trained on one trunk (the semantic model itself, or
``--trunk`` heads) and chooses the merge thresholds by PQ on a COCO panoptic set.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnapps.apps.semantic.result import PanopticResult, PanopticSegment
from cnnapps.datasets.io import DEFAULT_MAX_PIXELS
from cnnapps.errors import CnnappsError
from cnnapps.runtime import check_batch_size, one_at_a_time

TASK = "panoptic"
#: Panoptic FPN's merge settings (``stuff_area`` is for COCO-sized images: 4096 pixels at 800 px)
DEFAULT_MERGE = {"score_threshold": 0.5, "overlap": 0.5, "stuff_area": 4096}
_BACKGROUND = ("background", "__background__")


class PanopticError(CnnappsError):
    """A panoptic model that cannot be made or loaded as asked."""


def _without(module: nn.Module, path: str) -> nn.Module:
    """A module tree holding every part of ``module`` except the one at ``path`` (the trunk): the same layer objects,
    so a state dict of it is the head's own tensors."""
    first, _, rest = path.partition(".")
    mirror = nn.Module()
    for name, child in module.named_children():
        if name == first:
            if rest:
                mirror.add_module(name, _without(child, rest))
            continue
        mirror.add_module(name, child)
    for name, param in module.named_parameters(recurse=False):
        mirror.register_parameter(name, param)
    for name, buffer in module.named_buffers(recurse=False):
        mirror.register_buffer(name, buffer, persistent=name not in module._non_persistent_buffers_set)
    return mirror


@dataclass
class Instances:
    """One image's instances in its own frame: masks (N, H, W) bool, scores (N,), class indices (N,)."""

    masks: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


class PanopticModel(nn.Module):
    """The trunk, a shared Mask R-CNN head (``things``) and a semantic head (``stuff``), with the merge settings."""

    def __init__(self, trunk: nn.Module, things: nn.Module, stuff: nn.Module, merge: dict[str, float]) -> None:
        super().__init__()
        self.trunk = trunk
        self.things = _without(things, "backbone.body")
        self.stuff = _without(stuff, "backbone")
        self.parts = (things, stuff)  # the whole models (a tuple: not registered twice)
        self.merge = {**DEFAULT_MERGE, **merge}
        thing_names = [n for n in things.spec.class_names[1:]]
        stuff_names = [n for n in stuff.spec.class_names if n not in thing_names and n not in _BACKGROUND]
        self.class_names = [*stuff_names, *thing_names]
        colours = {n: c for n, c in zip(stuff.spec.class_names, stuff.spec.colours, strict=False)}
        from cnnapps.datasets.semantic import voc_colormap

        spare = iter(voc_colormap(len(self.class_names) + 32)[len(colours) + 1 :])
        self.colours = [list(colours[n]) if n in colours else list(next(spare)) for n in self.class_names]
        self.is_thing = [n in thing_names for n in self.class_names]
        index = {n: i for i, n in enumerate(self.class_names)}
        self.thing_index = np.array([-1, *(index[n] for n in thing_names)])  # detector label -> category
        self.stuff_index = np.array([index.get(n, -1) if n in stuff_names else -1 for n in stuff.spec.class_names])

    def raw(self, shared: Any) -> list[tuple[Instances, np.ndarray]]:
        """Each image's instances (above 0.5 mask probability) and semantic class map, from a shared trunk pass."""
        import torch.nn.functional as F

        from cnnapps.apps.detect.model import detect_on_stages
        from cnnapps.apps.semantic.predictor import to_image_frame, warn_outside

        things, stuff = self.parts
        found = detect_on_stages(things, shared.stages, shared.images, shared.sizes, shared.geometries)
        logits = F.interpolate(stuff.head_logits(shared.stages), size=shared.images.shape[-2:], mode="bilinear",
                               align_corners=False)  # fmt: skip
        out = []
        for detections, row, size, geometry in zip(found, logits, shared.sizes, shared.geometries, strict=True):
            warn_outside(stuff.backbone, "panoptic head", size, geometry, tuple(shared.images.shape[-2:]))
            labels = to_image_frame(row.float(), size, geometry).argmax(0).cpu().numpy()
            masks = (detections["masks"][:, 0] > 0.5).cpu().numpy()
            instances = Instances(masks, detections["scores"].float().cpu().numpy(), detections["labels"].cpu().numpy())
            out.append((instances, labels))
        return out

    def combine(self, instances: Instances, semantic: np.ndarray, merge: dict[str, float] | None = None,
                source: str = "") -> PanopticResult:  # fmt: skip
        """Panoptic FPN's merge of one image's instances and semantic map (see the module's help)."""
        settings = {**self.merge, **(merge or {})}
        ids = np.zeros(semantic.shape, np.int32)
        segments: list[PanopticSegment] = []
        for i in np.argsort(-instances.scores, kind="stable"):
            if instances.scores[i] < settings["score_threshold"]:
                break
            mask = instances.masks[i]
            area = int(mask.sum())
            if area == 0:
                continue
            taken = mask & (ids > 0)
            if taken.sum() / area > settings["overlap"]:
                continue
            mask = mask & (ids == 0)
            if not mask.any():  # wholly under earlier instances (an overlap threshold of 1 lets it through)
                continue
            category = int(self.thing_index[int(instances.labels[i])])
            segments.append(self._segment(len(segments) + 1, category, mask, float(instances.scores[i])))
            ids[mask] = len(segments)
        for label in np.unique(semantic):
            category = int(self.stuff_index[label]) if label < len(self.stuff_index) else -1
            if category < 0:
                continue
            mask = (semantic == label) & (ids == 0)
            if mask.sum() < max(1, settings["stuff_area"]):
                continue
            segments.append(self._segment(len(segments) + 1, category, mask, None))
            ids[mask] = len(segments)
        return PanopticResult(source, ids=ids, segments=segments, colours=self.colours)

    def _segment(self, segment_id: int, category: int, mask: np.ndarray, score: float | None) -> PanopticSegment:
        ys, xs = np.nonzero(mask)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        return PanopticSegment(segment_id, self.class_names[category], category, self.is_thing[category],
                               int(mask.sum()), score, box)  # fmt: skip


class PanopticHead:
    """The panoptic head in model files: a shared Mask R-CNN head and a semantic head, with the merge settings."""

    trunk_path = "trunk"
    kinds = ("panoptic-fpn",)

    def describe(self, model: PanopticModel) -> Any:
        from cnnapps.apps.modelfile import HeadInfo, adapter

        things, stuff = model.parts
        parts = {
            "things": adapter("segment").describe(things).to_dict(),
            "stuff": adapter("semantic").describe(stuff).to_dict(),
        }
        return HeadInfo(TASK, "panoptic-fpn", {**parts, "merge": dict(model.merge)}, list(model.class_names))

    def build(self, trunk: nn.Module, info: Any, preprocess: dict[str, Any], model_file: Any) -> PanopticModel:
        from cnnapps.apps.modelfile import HeadInfo, adapter
        from cnnapps.apps.semantic.model import true_stages

        try:
            things_info, stuff_info = (HeadInfo(**info.kwargs[part]) for part in ("things", "stuff"))
        except (KeyError, TypeError) as exc:
            raise PanopticError(f"{model_file.path}: its panoptic head lacks a usable {exc} entry") from None
        true_stages(trunk, dict(model_file.trunk.get("kwargs", {})))
        stuff = adapter("semantic").build(trunk, stuff_info, preprocess, model_file)
        things = adapter("segment").build(trunk, things_info, preprocess, model_file)
        return PanopticModel(trunk, things, stuff, dict(info.kwargs.get("merge", {})))

    def from_v1(self, meta: dict[str, Any]) -> Any:
        raise KeyError("panoptic")  # panoptic files were never written in the first format

    def predict_shared(self, model: PanopticModel, shared: Any, options: dict[str, Any]) -> list[PanopticResult]:
        """Segments in each image's frame from a trunk pass shared with other heads."""
        return [model.combine(instances, semantic) for instances, semantic in model.raw(shared)]


HEAD = PanopticHead()


def join(
    semantic_model: str | os.PathLike, segment_model: str | os.PathLike, merge: dict[str, float] | None = None
) -> tuple[Any, dict[str, torch.Tensor], Any, dict[str, torch.Tensor]]:
    """The trunk (model file), its tensors, a panoptic head record and its tensors, from a semantic head and a shared
    Mask R-CNN head on one trunk (the files may be one multi-head file). Refused in one line, naming the files, when
    trunks or preprocessing differ or the Mask R-CNN head resizes images itself."""
    from cnnapps.apps.modelfile import HeadInfo, read_model_file, trunk_difference

    stuff_file, things_file = read_model_file(semantic_model), read_model_file(segment_model)
    stuff_name = stuff_file.head_named(task="semantic")
    things_name = things_file.head_named(task="segment")
    things_info = things_file.heads[things_name]
    if not things_info.kwargs.get("shared"):
        raise PanopticError(f"{segment_model}: its segment head resizes images itself; train it with --trunk naming "
                            f"{semantic_model} (or the trunk both share)")  # fmt: skip
    trunk = stuff_file.trunk_tensors()
    differs = trunk_difference(stuff_file, things_file)  # other weights, or the same built otherwise
    if differs:
        raise PanopticError(f"{differs}; train the segment head with --trunk {semantic_model}")
    if json.dumps(stuff_file.preprocess, sort_keys=True) != json.dumps(things_file.preprocess, sort_keys=True):
        raise PanopticError(f"{segment_model}: its preprocessing differs from {semantic_model}'s")
    stuff_info = stuff_file.heads[stuff_name]
    tensors = {f"things.{k}": v for k, v in things_file.head_tensors(things_name).items()}
    tensors.update({f"stuff.{k}": v for k, v in stuff_file.head_tensors(stuff_name).items()})
    thing_names = things_info.labels[1:]
    labels = [n for n in stuff_info.labels if n not in thing_names and n not in _BACKGROUND] + thing_names
    kwargs = {
        "things": things_info.to_dict(),
        "stuff": stuff_info.to_dict(),
        "merge": {**DEFAULT_MERGE, **(merge or {})},
    }
    return stuff_file, trunk, HeadInfo(TASK, "panoptic-fpn", kwargs, labels), tensors


def build_joined(trunk_file: Any, trunk_state: dict[str, torch.Tensor], info: Any,
                 tensors: dict[str, torch.Tensor]) -> PanopticModel:  # fmt: skip
    from cnnapps.apps.modelfile import build_trunk, load_exactly

    model = HEAD.build(build_trunk(trunk_file), info, trunk_file.preprocess, trunk_file)
    state = {f"trunk.{k}": v for k, v in trunk_state.items()}
    load_exactly(model, {**state, **tensors}, f"{trunk_file.path} (panoptic head)")
    return model.eval()


class PanopticPredictor:
    """A panoptic model file; ``predict(inputs)`` returns one :class:`PanopticResult` per input, in order."""

    task = TASK

    def __init__(self, spec: str | os.PathLike | None = None, *, task: str | None = None, device: str = "auto",
                 batch_size: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS, head: str | None = None,
                 model: PanopticModel | None = None, preprocess: Any = None) -> None:  # fmt: skip
        from cnnapps.runtime import select_device

        if model is None:
            from cnnapps.apps.modelfile import build_model, read_model_file
            from cnnapps.backbones.preprocess import Preprocess
            from cnnapps.bundle import is_bundle_path

            if spec is None or not is_bundle_path(spec):
                raise PanopticError(f"{spec}: a panoptic model file is needed (made by `cnnapps train panoptic`)")
            model_file = read_model_file(spec)
            model = build_model(model_file, head, TASK)
            preprocess = Preprocess.from_dict(model_file.preprocess)
        self.source = str(spec) if spec is not None else "<model>"
        self.device = select_device(device)
        self.model, self.preprocess = model.eval().to(self.device), preprocess
        self.batch_size = check_batch_size(batch_size) or (8 if self.device.type == "cuda" else 2)
        self.max_pixels = max_pixels

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

    @one_at_a_time
    def predict(self, inputs: Any, progress: Callable[[int], None] | None = None) -> list[PanopticResult]:
        """Segments for paths, bytes, arrays or PIL images; a bad input gets a result with ``error`` set."""
        from cnnapps.apps.common.batching import map_images

        done = map_images(inputs, self.raw, self.batch_size, self.max_pixels, progress)
        return [PanopticResult(name, error=error) if raw is None else self.model.combine(*raw, source=name)
                for name, _, raw, error in done]  # fmt: skip

    @torch.inference_mode()
    def raw(self, images: list[np.ndarray]) -> list[tuple[Instances, np.ndarray]]:
        """The heads' outputs before the merge (instances and semantic map per image)."""
        from cnnapps.apps.multitask import SharedPass

        tensors = [torch.from_numpy(rgb).to(self.device).permute(2, 0, 1) for rgb in images]
        batch = torch.stack([self.preprocess.apply_tensor(t) for t in tensors])
        stages, features = self.model.trunk.forward_shared(batch)
        sizes = [(int(rgb.shape[0]), int(rgb.shape[1])) for rgb in images]
        return self.model.raw(SharedPass(batch, stages, features, sizes, [self.preprocess.geometry(*s) for s in sizes]))


def load_predictor(specs: list[Any], task: str = TASK, **kwargs: Any) -> PanopticPredictor:
    """The task table's loader: one panoptic model file."""
    if len(specs) != 1:
        raise CnnappsError(f"{task} takes one model, not an ensemble")
    return PanopticPredictor(specs[0], task=task, **kwargs)


# -- scoring ---------------------------------------------------------------------------------------------------------


def _category_ids(model_classes: list[str], panoptic: Any) -> dict[str, int]:
    by_name = {info["name"]: cid for cid, info in panoptic.categories.items()}
    unknown = [n for n in model_classes if n not in by_name]
    if unknown:
        raise PanopticError(f"{panoptic.path}: the model's classes {', '.join(unknown[:5])} are not among its "
                            f"categories ({', '.join(list(by_name)[:8])})")  # fmt: skip
    return {n: by_name[n] for n in model_classes}


def score(results: list[PanopticResult], panoptic: Any, indices: list[int], class_names: list[str]) -> dict[str, Any]:
    """PQ, SQ, RQ (all, things, stuff, per class) of results for the set's images ``indices``."""
    from cnnapps.apps.semantic.pq import PanopticQuality

    quality = PanopticQuality(panoptic.categories)
    category = _category_ids(class_names, panoptic)
    for result, i in zip(results, indices, strict=True):
        _add(quality, category, result, panoptic, i)
    return quality.summary()


def _add(quality: Any, category: dict[str, int], result: PanopticResult, panoptic: Any, i: int) -> None:
    """One image's result scored against the set's image ``i``."""
    gt_ids, gt_segments = panoptic.ground_truth(i)
    segments = [{"id": s.id, "category_id": category[s.label]} for s in result.segments]
    quality.add(gt_ids, gt_segments, result.ids, segments, str(panoptic.entries[i]["png"]))


def evaluate_panoptic(predictor: PanopticPredictor, panoptic: Any, progress: Callable[[int], None] | None = None,
                      chunk: int = 8) -> dict[str, Any]:  # fmt: skip
    """PQ, SQ and RQ of a panoptic predictor on a COCO panoptic set; unreadable images are listed, not scored.
    Each chunk's results are scored as they come (a set's segment maps are not all kept)."""
    from cnnapps.apps.semantic.pq import PanopticQuality

    category = _category_ids(predictor.class_names, panoptic)
    quality, failed = PanopticQuality(panoptic.categories), []
    for start in range(0, len(panoptic), chunk):
        part = list(range(start, min(len(panoptic), start + chunk)))
        for i, result in zip(part, predictor.predict([panoptic.entries[i]["image"] for i in part]), strict=True):
            if result.ok:
                _add(quality, category, result, panoptic, i)
            else:
                failed.append({"path": str(panoptic.entries[i]["image"]), "error": result.error})
        if progress is not None:
            progress(len(part))
    return {**quality.summary(), "failed": failed}


# -- making a panoptic model -----------------------------------------------------------------------------------------


def train_panoptic(config: Any) -> dict[str, Any]:
    """Join the two heads, choose the merge settings by PQ on ``config.data``, write the run folder
    (``model.safetensors``, ``metrics.json``, ``curves.png`` with PQ per setting, ``config.yaml``)."""
    from cnnapps.apps.common.config import write_config
    from cnnapps.apps.common.training import check_run_folder
    from cnnapps.apps.modelfile import write_model_file
    from cnnapps.apps.semantic.pq import read_panoptic
    from cnnapps.backbones.preprocess import Preprocess
    from cnnapps.datasets.io import read_image
    from cnnapps.files import atomic_write

    config.validate()
    check_run_folder(config)
    started = time.perf_counter()
    trunk_file, trunk_state, info, tensors = join(config.semantic_model, config.segment_model)
    model = build_joined(trunk_file, trunk_state, info, tensors)
    predictor = PanopticPredictor(model=model, preprocess=Preprocess.from_dict(trunk_file.preprocess),
                                  device=config.device)  # fmt: skip
    panoptic = read_panoptic(config.data, config.images)
    _category_ids(model.class_names, panoptic)
    raw, indices = [], []
    for start in range(0, len(panoptic), predictor.batch_size):
        part = list(range(start, min(len(panoptic), start + predictor.batch_size)))
        raw += predictor.raw([read_image(panoptic.entries[i]["image"]) for i in part])
        indices += part
    grid = []
    settings = (config.grid("score_thresholds"), config.grid("overlap_thresholds"), config.grid("stuff_areas"))
    for threshold, overlap, area in itertools.product(*settings):
        merge = {"score_threshold": threshold, "overlap": overlap, "stuff_area": area}
        found = score([model.combine(i, s, merge) for i, s in raw], panoptic, indices, model.class_names)
        grid.append(
            {"merge": merge, **{k: found[k] for k in ("all", "things", "stuff")}, "per_class": found["per_class"]}
        )
    best = max(grid, key=lambda g: g["all"]["pq"] or 0.0)
    info.kwargs["merge"] = dict(best["merge"])
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    trunk = {"name": trunk_file.trunk["name"], "kwargs": trunk_file.trunk.get("kwargs", {})}
    info.metrics = {"val_pq": best["all"]["pq"]}
    write_model_file(out / "model.safetensors", trunk, trunk_state, {TASK: (info, tensors)}, trunk_file.preprocess)
    write_config(config, out / "config.yaml")
    _plot_grid(grid, out / "curves.png")
    seconds = time.perf_counter() - started
    metrics = {"val_pq": best["all"]["pq"], "val_sq": best["all"]["sq"], "val_rq": best["all"]["rq"],
               "val_pq_things": best["things"]["pq"], "val_pq_stuff": best["stuff"]["pq"], "merge": best["merge"],
               "per_class": best["per_class"], "grid": [{k: g[k] for k in ("merge", "all")} for g in grid],
               "epochs": 1, "best_epoch": 1, "train_images": 0, "val_images": len(indices),
               "train_seconds": round(seconds, 2), "history": [],
               "selected_by": {"metric": "val_pq", "value": best["all"]["pq"]}}  # fmt: skip
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=2).encode(), overwrite=True)
    return metrics


def _plot_grid(grid: list[dict[str, Any]], path: Path) -> None:
    """PQ, SQ and RQ for each merge setting tried."""
    from cnnapps.apps.common.plots import pyplot, save_figure

    plt = pyplot()
    labels = [
        f"s{g['merge']['score_threshold']:g} o{g['merge']['overlap']:g} a{g['merge']['stuff_area']:g}" for g in grid
    ]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(grid) + 2), 4))
    x = np.arange(len(grid))
    for offset, key in ((-0.25, "pq"), (0.0, "sq"), (0.25, "rq")):
        ax.bar(x + offset, [g["all"][key] or 0.0 for g in grid], width=0.25, label=key.upper())
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set(ylim=(0, 1.02), title="panoptic quality per merge setting (score, overlap, stuff area)")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, overwrite=True)  # the run folder's own picture, drawn again by a rerun
