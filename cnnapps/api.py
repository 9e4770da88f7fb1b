"""``cnnapps.load``: one door from a model spec to a ready predictor."""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from typing import Any

from cnnapps.backbones.registry import DEFAULT_BACKBONE
from cnnapps.bundle import is_bundle_path, read_metadata
from cnnapps.errors import CnnappsError

TASKS = ("classify", "retrieve", "detect", "segment", "pose", "caption")


def task_of(spec: str | os.PathLike) -> str:
    """The task a spec serves: a model file says so; registry names classify with their pretrained head
    (pass ``task="retrieve"`` to embed with one instead)."""
    from cnnapps.apps.detect.zoo import ZOO

    if str(spec) in ZOO:
        return ZOO[str(spec)][0]
    if str(spec).endswith(".onnx"):
        from cnnapps.export import read_onnx_metadata

        return read_onnx_metadata(spec).get("task", "classify")
    return read_metadata(spec).get("task", "classify") if is_bundle_path(spec) else "classify"


def load(
    spec: str | os.PathLike | Sequence[str | os.PathLike] | None = None, task: str | None = None, **kwargs: Any
) -> Any:
    """A predictor for ``spec`` (several specs make an ensemble). ``kwargs``: device, engine, batch_size, workers.

    Classification models give a ``ClassificationPredictor``; retrieval models (or ``task="retrieve"``)
    an ``Embedder`` whose ``embed(inputs)`` returns L2-normalised vectors; detection, segmentation and
    pose models (trained files, or torchvision's COCO zoo names such as ``maskrcnn_resnet50_fpn``) a
    ``DetectionPredictor`` (kwargs: device, score_threshold, tile, overlap, batch_size); captioners a
    ``CaptionPredictor`` (kwargs: device, beam, max_len, batch_size).

    Predictors are safe to call from several threads (calls take turns), are ready to run when returned
    (graphs compiled at load), batch their inputs, and loading the same spec with the same options again
    returns the same predictor while it is in use.

    >>> predictor = cnnapps.load()                 # the bundled EfficientNet-Lite0, offline
    >>> predictor.predict("cat.jpg")[0].to_dict()  # {"path": "cat.jpg", "predictions": [...]}
    """
    if spec is None:
        from cnnapps.apps.detect.zoo import DEFAULT_MODELS

        spec = DEFAULT_MODELS.get(task or "classify", DEFAULT_BACKBONE)
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    key = _cache_key(specs, task, kwargs)
    cached = _LOADED.get(key) if key is not None else None
    if cached is None:
        cached = _load(specs, task, **kwargs)
        if key is not None:
            _LOADED[key] = cached
    return cached


# Predictors alive somewhere in the process, by what they were loaded from: loading the same model with the
# same options again returns the same (thread-safe) predictor instead of a second copy of its weights.
_LOADED: weakref.WeakValueDictionary[tuple, Any] = weakref.WeakValueDictionary()


def _cache_key(specs: list[Any], task: str | None, kwargs: dict[str, Any]) -> tuple | None:
    """Specs (files with their size and mtime, so a rewritten file loads anew), task and options."""
    try:
        parts = []
        for s in specs:
            path = os.fspath(s)
            stat = os.stat(path) if os.path.isfile(path) else None
            parts.append((os.path.abspath(path), stat.st_size, stat.st_mtime_ns) if stat else (path,))
        key = (tuple(parts), task, tuple(sorted(kwargs.items())))
        hash(key)
        return key
    except TypeError:  # an unhashable option: no sharing
        return None


def _load(specs: list[Any], task: str | None, **kwargs: Any) -> Any:
    tasks = {task_of(s) for s in specs}
    if task is not None and len(specs) == 1 and tasks != {task} and not (task == "retrieve" and tasks == {"classify"}):
        raise CnnappsError(f"{specs[0]}: a {next(iter(tasks))} model, not a {task} model")
    if task == "retrieve" and tasks <= {"classify", "retrieve"}:  # any classifier's backbone can embed
        tasks = {"retrieve"}
    elif task is not None:
        tasks.add(task)
    if len(tasks) != 1:
        raise CnnappsError(f"models serve different tasks ({', '.join(sorted(tasks))}); load them separately")
    (chosen,) = tasks
    if chosen == "classify":
        from cnnapps.apps.classify.predictor import load_predictor

        return load_predictor(specs, **kwargs)
    if chosen == "retrieve":
        if len(specs) != 1:
            raise CnnappsError("retrieval takes one model, not an ensemble")
        from cnnapps.apps.retrieve.embedder import Embedder

        return Embedder(specs[0], **kwargs)
    if chosen in ("detect", "segment", "pose"):
        if len(specs) != 1:
            raise CnnappsError(f"{chosen} takes one model, not an ensemble")
        from cnnapps.apps.detect.predictor import DetectionPredictor

        return DetectionPredictor(specs[0], task=chosen, **kwargs)
    if chosen == "caption":
        if len(specs) != 1:
            raise CnnappsError("captioning takes one model, not an ensemble")
        from cnnapps.apps.caption.predictor import CaptionPredictor

        return CaptionPredictor(specs[0], **kwargs)
    raise CnnappsError(f"task {chosen!r} is not available (available: {', '.join(TASKS)})")
