"""One trunk, many heads: a model file with several heads answers every task from one trunk pass per batch.

The trunk is built once; each head's task model is built around that same trunk object (so its weights are held
once), and every head reads what it needs from the shared pass: classification and embedding the last feature
map, captioning its grid, detection the stage maps (mapped back to each image's own frame).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cnnapps.apps.common.batching import map_images
from cnnapps.apps.common.trunk import TrunkRunner
from cnnapps.apps.modelfile import (
    adapter,
    answered_beside_others,
    build_head,
    build_trunk,
    load_exactly,
    read_model_file,
)
from cnnapps.bundle import BundleError
from cnnapps.datasets.io import DEFAULT_MAX_PIXELS
from cnnapps.results import MultiTaskResult
from cnnapps.runtime import check_batch_size, check_count, one_at_a_time, select_device


@dataclass
class SharedPass:
    """One trunk pass over a batch: what every head reads."""

    images: torch.Tensor  # the preprocessed batch (N, C, H, W)
    stages: dict[str, torch.Tensor]  # every stage's map
    features: torch.Tensor  # the last feature map
    sizes: list[tuple[int, int]]  # each image's own height and width
    geometries: list[tuple[float, float, float, float]]  # how the preprocessing moved each image's pixels


class MultiTaskPredictor:
    """``predict(inputs)`` -> one :class:`MultiTaskResult` per input: every head's result, from one trunk pass.

    ``heads``: names or tasks of the heads to run, one (a string) or several (default, or none listed: all).
    Options of the heads: ``top_k`` (classify, per call), ``score_threshold`` (detection), ``beam`` and ``max_len``
    (captioning). ``engine``: how the trunk runs (auto: a frozen TorchScript graph on a CPU, autocast on a GPU;
    eager; jit), as for classifiers."""

    task = "multi"

    def __init__(
        self,
        spec: str | os.PathLike,
        *,
        heads: Sequence[str] | str | None = None,
        device: str = "auto",
        engine: str = "auto",
        batch_size: int | None = None,
        score_threshold: float = 0.5,
        beam: int = 1,
        max_len: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        from cnnapps.apps.classify.model import preprocess_of

        self.spec = str(spec)
        self.model_file = read_model_file(spec)
        chosen = chosen_heads(self.model_file, heads)
        answered_beside_others(spec, chosen)
        for name in chosen:
            info = self.model_file.heads[name]
            if not getattr(adapter(info.task), "shareable", lambda _: True)(info):
                raise BundleError(
                    f"{spec}: its {name} head resizes images itself (trained with its trunk); load it alone with "
                    f"task={info.task!r}"
                )
        self.preprocess = preprocess_of(self.model_file)
        self.device = select_device(device, engine)
        self.trunk = build_trunk(self.model_file)
        load_exactly(self.trunk, self.model_file.trunk_tensors(), f"{spec} (trunk)")
        self.trunk.eval()
        self.heads: dict[str, tuple[Any, Any, torch.nn.Module]] = {}
        for name in chosen:
            info = self.model_file.heads[name]
            task_adapter = adapter(info.task)
            model = build_head(self.model_file, name, self.trunk)
            prefix = task_adapter.trunk_path + "."
            state = {prefix + k: v for k, v in self.trunk.state_dict().items()}
            state.update(self.model_file.head_tensors(name))
            load_exactly(model, state, f"{spec} ({name} head)")
            self.heads[name] = (info, task_adapter, model.eval())
        self.trunk.to(self.device)
        for _, _, model in self.heads.values():
            model.to(self.device)
        self.options = {"beam": beam, "max_len": max_len, "score_threshold": score_threshold}
        for _, task_adapter, model in self.heads.values():  # a head's own options (one line for one it cannot take)
            getattr(task_adapter, "apply_options", lambda *_: None)(model, self.options)
        self.batch_size = check_batch_size(batch_size) or (32 if self.device.type == "cuda" else 4)
        self.max_pixels = max_pixels
        self._trunk_pass = TrunkRunner(self.trunk, self.preprocess.input_size, self.batch_size, self.device, engine,
                                       name=str(self.model_file.path))  # fmt: skip
        self.engine = self._trunk_pass.engine  # the trunk's engine; the heads run in PyTorch on its maps

    @property
    def tasks(self) -> dict[str, str]:
        """Head name -> task, for the heads this predictor runs."""
        return {name: info.task for name, (info, _, _) in self.heads.items()}

    @one_at_a_time
    def predict(
        self,
        inputs: Any,
        top_k: int = 5,
        progress: Callable[[int], None] | None = None,
        heads: Sequence[str] | str | None = None,
    ) -> list[MultiTaskResult]:
        """Every head's answer (or those of ``heads``: one name or task, or several; none listed is all of them, as
        when loaded) for paths, arrays, PIL images or encoded bytes (one, or a list), in input order; an input that
        cannot be read gets a result with ``error``."""
        options = {**self.options, "top_k": check_count("top_k", top_k, "classes per image")}
        asked = set(self.heads) if not heads else set(pick_heads(self.tasks, heads, str(self.model_file.path)))
        chosen = [h for h in self.heads if h in asked]  # an unknown name is an error, never an empty answer
        done = map_images(inputs, lambda images: self._run(images, options, chosen), self.batch_size,
                          self.max_pixels, progress)  # fmt: skip
        results = []
        for name, _, answers, error in done:
            if answers is None:
                results.append(MultiTaskResult(name, error=error, engine=self.engine))
                continue
            for result in answers.values():
                result.source, result.engine = name, self.engine
            results.append(MultiTaskResult(name, results=answers, engine=self.engine))
        return results

    @torch.inference_mode()
    def _run(self, images: list[np.ndarray], options: dict[str, Any], chosen: list[str]) -> list[dict[str, Any]]:
        tensors = [torch.from_numpy(rgb).to(self.device).permute(2, 0, 1) for rgb in images]
        batch = torch.stack([self.preprocess.apply_tensor(t) for t in tensors])
        stages, features = self._trunk_pass(batch)
        sizes = [(int(rgb.shape[0]), int(rgb.shape[1])) for rgb in images]
        shared = SharedPass(batch, stages, features, sizes, [self.preprocess.geometry(*s) for s in sizes])
        per_head = {}
        for name in chosen:
            _, task_adapter, model = self.heads[name]
            per_head[name] = task_adapter.predict_shared(model, shared, options)
        return [{name: answers[i] for name, answers in per_head.items()} for i in range(len(images))]


def chosen_heads(model_file: Any, wanted: Sequence[str] | str | None) -> list[str]:
    """Head names from names or task names; an unknown one is a one-line error naming what the file has."""
    if not wanted:
        return list(model_file.heads)
    return pick_heads({n: h.task for n, h in model_file.heads.items()}, wanted, str(model_file.path))


def pick_heads(tasks: dict[str, str], wanted: Sequence[str] | str, where: str) -> list[str]:
    """The heads of ``tasks`` (head name -> task) that ``wanted`` (one name, or several) names by head or task name,
    in the order asked; an unknown name is a one-line error naming what there is."""
    chosen = []
    for item in [wanted] if isinstance(wanted, str) else wanted:  # "caption" is one name, not seven letters
        matches = [n for n, task in tasks.items() if item in (n, task)]
        if not matches:
            have = ", ".join(f"{n} ({task})" for n, task in tasks.items())
            raise BundleError(f"{where}: no head or task {item!r} (it has {have})")
        chosen += [m for m in matches if m not in chosen]
    return chosen


class OneHead:
    """A one-task predictor answering as a :class:`MultiTaskPredictor` does: one result per input, keyed by the
    task (for models that are not multi-head files: registry and zoo names, exported files, detectors that
    resize images themselves)."""

    def __init__(self, predictor: Any, name: str) -> None:
        import inspect

        self.predictor, self.name = predictor, name
        self.tasks = {name: predictor.task}
        self._takes_top_k = "top_k" in inspect.signature(predictor.predict).parameters

    @property
    def engine(self) -> str | None:
        """The engine the predictor runs on (None for a predictor that does not say)."""
        return getattr(self.predictor, "engine", None)

    def predict(self, inputs: Any, top_k: int = 5, progress: Callable[[int], None] | None = None,
                heads: Sequence[str] | None = None) -> list[MultiTaskResult]:  # fmt: skip
        extra = {"top_k": top_k} if self._takes_top_k else {}
        results = self.predictor.predict(inputs, progress=progress, **extra)
        return [MultiTaskResult(r.source, results={self.name: r}, engine=r.engine) if r.ok
                else MultiTaskResult(r.source, error=r.error, engine=r.engine) for r in results]  # fmt: skip
