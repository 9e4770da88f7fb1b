"""``cnnapps.load``: one door from a model spec to a ready predictor."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from cnnapps.backbones.registry import DEFAULT_BACKBONE
from cnnapps.bundle import is_bundle_path, read_metadata
from cnnapps.errors import CnnappsError

TASKS = ("classify", "retrieve")


def task_of(spec: str | os.PathLike) -> str:
    """The task a spec serves: a model file says so; registry names classify with their pretrained head
    (pass ``task="retrieve"`` to embed with one instead)."""
    return read_metadata(spec).get("task", "classify") if is_bundle_path(spec) else "classify"


def load(
    spec: str | os.PathLike | Sequence[str | os.PathLike] = DEFAULT_BACKBONE, task: str | None = None, **kwargs: Any
) -> Any:
    """A predictor for ``spec`` (several specs make an ensemble). ``kwargs``: device, engine, batch_size, workers.

    Classification models give a ``ClassificationPredictor``; retrieval models (or ``task="retrieve"``)
    an ``Embedder`` whose ``embed(inputs)`` returns L2-normalised vectors.

    >>> predictor = cnnapps.load()                 # the bundled EfficientNet-Lite0, offline
    >>> predictor.predict("cat.jpg")[0].to_dict()  # {"path": "cat.jpg", "predictions": [...]}
    """
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    tasks = {task_of(s) for s in specs}
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
    raise CnnappsError(f"task {chosen!r} is not available (available: {', '.join(TASKS)})")
