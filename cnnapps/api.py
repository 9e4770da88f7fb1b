"""``cnnapps.load``: one door from a model spec to a ready predictor, for every task of the task table."""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from cnnapps.apps.tasks import TASKS, get_task
from cnnapps.bundle import is_bundle_path
from cnnapps.errors import CnnappsError, UnknownModelError, did_you_mean
from cnnapps.exported import is_onnx_file


def task_of(spec: str | os.PathLike) -> str | None:
    """The task a spec serves: a named ready model's, an exported file's, a model file's one head's (None for a
    file with several heads); registry names classify with their pretrained head (``task="retrieve"`` embeds)."""
    name = str(spec)
    for task in TASKS.values():
        if name in task.zoo_models():
            return task.name
    if is_onnx_file(name):
        from cnnapps.exported import read_onnx_metadata

        return str(read_onnx_metadata(spec).get("task", "classify"))
    if is_bundle_path(spec):
        from cnnapps.apps.modelfile import read_model_file

        tasks = read_model_file(spec).tasks
        return tasks[0] if len(tasks) == 1 else None
    return "classify"


def load(
    spec: str | os.PathLike | Sequence[str | os.PathLike] | None = None, task: str | None = None, **kwargs: Any
) -> Any:
    """A predictor for ``spec`` (several specs make an ensemble where the task allows one).

    ``task`` picks what to do with the spec (default: what the spec says). Every predictor's ``predict(inputs)``
    returns one result per input, in order: ``ClassificationResult`` (classify), ``EmbeddingResult`` (retrieve),
    ``DetectionResult`` (detect, segment, pose), ``CaptionResult`` (caption). A model file with several heads and
    no ``task`` gives a ``MultiTaskPredictor``, whose ``predict`` runs the trunk once per batch and returns, per
    input, every head's result. ``kwargs``: the options the task's predictor takes (``device``, ``head=NAME`` to pick
    one head of a multi-head file, and the task's ``load_options`` in the task table): ``engine``, ``batch_size`` and
    ``workers`` for classify and retrieve; ``score_threshold``, ``tile``, ``engine``, ``embed``, ... for detect,
    segment and pose; ``beam``, ``max_len``, ``engine`` for caption; ``tile``, ``batch_size`` for semantic. Any
    other option is a one-line error naming what the task takes; ``engine="auto"`` or ``"eager"`` is taken by every
    task's model files (semantic and panoptic models run only in PyTorch, as they are), and an exported semantic
    graph runs on onnxruntime (``engine="auto"`` or ``"onnxruntime"``; any other engine is a one-line error).

    Predictors are safe to call from several threads (calls take turns), are ready to run when returned
    (graphs compiled at load), batch their inputs, and loading the same spec with the same options again
    returns the same predictor while it is in use.

    >>> predictor = cnnapps.load()                 # the bundled EfficientNet-Lite0, offline
    >>> predictor.predict("cat.jpg")[0].to_dict()  # {"path": "cat.jpg", "predictions": [...]}
    """
    if spec is None:
        record = get_task(task or "classify")
        if record.default_model is None:
            raise CnnappsError(f"{record.name} needs a trained model file (--model)")
        spec = record.default_model
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not specs:
        raise CnnappsError("no model given")
    for one in specs:
        _check_file(one)
    if "batch_size" in kwargs:
        from cnnapps.runtime import check_batch_size

        check_batch_size(kwargs["batch_size"])
    key = _cache_key(specs, task, kwargs)
    if key is None:
        return _load(specs, task, **kwargs)
    cached = _LOADED.get(key)
    if cached is not None:
        return cached
    with _LOADING_GUARD:
        lock = _LOADING.setdefault(key, threading.Lock())
    try:
        with lock:  # threads loading the same model wait for the first one's predictor
            cached = _LOADED.get(key)
            if cached is None:
                cached = _load(specs, task, **kwargs)
                _LOADED[key] = cached
    finally:
        with _LOADING_GUARD:
            if _LOADING.get(key) is lock:
                del _LOADING[key]
    return cached


# Predictors alive somewhere in the process, by what they were loaded from: loading the same model with the
# same options again returns the same (thread-safe) predictor instead of a second copy of its weights.
_LOADED: weakref.WeakValueDictionary[tuple, Any] = weakref.WeakValueDictionary()
# A lock per model being loaded (by cache key): one load of it at a time, while other models load alongside.
_LOADING: dict[tuple, threading.Lock] = {}
_LOADING_GUARD = threading.Lock()

#: the suffixes of files of weights: a spec ending in one names a file, not a model of the registry
WEIGHTS_SUFFIXES = (".safetensors", ".onnx", ".pt", ".pth", ".ckpt", ".bin", ".pkl", ".h5", ".tflite")


def _check_file(spec: Any) -> None:
    """A one-line error for a spec that names a file (it has a folder separator or a weights suffix) which is not
    there, or names a folder (a run folder holds its model file)."""
    name = str(spec) if isinstance(spec, (str, os.PathLike)) else ""
    if not name or re.match(r"[\w.-]+:(?![\\/])", name):  # a registry name such as timm:NAME or hf-hub:ORG/NAME
        return
    if os.path.isdir(name):
        raise CnnappsError(f"{name}: a folder, not a model file; pass {os.path.join(name, 'model.safetensors')}")
    if ("/" in name or os.sep in name or name.lower().endswith(WEIGHTS_SUFFIXES)) and not os.path.exists(name):
        if any(name in task.zoo_models() for task in TASKS.values()):
            return
        from cnnapps.bundle import BundleError

        raise BundleError(f"{name}: model file not found")


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
    if task is None:
        found = [task_of(s) for s in specs]
        if None in found:  # a file with several heads: all of them, in one pass
            if len(specs) != 1:
                raise CnnappsError(f"{specs[found.index(None)]}: a multi-head file answers alone, not in an ensemble")
            if kwargs.get("head") is not None:  # one head, by name: its task's predictor
                from cnnapps.apps.modelfile import read_model_file

                model_file = read_model_file(specs[0])
                return _load(specs, model_file.heads[model_file.head_named(kwargs["head"])].task, **kwargs)
            from cnnapps.apps.multitask import MultiTaskPredictor

            _refuse_others(str(specs[0]), kwargs, "a file with several heads", ("heads", *MULTI_HEAD_OPTIONS))
            return MultiTaskPredictor(specs[0], **kwargs)
        if len(set(found)) != 1:
            raise CnnappsError(f"models serve different tasks ({', '.join(sorted(set(found)))}); load them separately")
        task = found[0]
    record = get_task(task)
    if len(specs) > 1 and not record.ensemble:
        raise CnnappsError(f"{task} takes one model, not an ensemble")
    label = ", ".join(str(s) for s in specs)
    options = task_options(label, record, kwargs, graph=all(is_onnx_file(s) for s in specs))
    for spec in specs:
        check_serves(spec, record.name)
    return record.part("predictor")(specs, task=record.name, **options)


#: what a predictor of several heads on one trunk pass (``MultiTaskPredictor``) takes when loaded
MULTI_HEAD_OPTIONS = ("device", "engine", "batch_size", "score_threshold", "beam", "max_len", "max_pixels")

#: the engines every task takes: those of a predictor that runs only in PyTorch, as it is
EAGER_ENGINES = (None, "auto", "eager")
#: the engines an exported graph takes where its task's predictor takes no engine (it runs the graph in onnxruntime)
GRAPH_AS_IT_IS = (None, "auto", "onnxruntime")


def task_options(label: str, record: Any, options: dict[str, Any], graph: bool = False) -> dict[str, Any]:
    """``options`` as the task's predictor takes them (the task table's ``load_options``, device and head): for a
    task whose predictor takes no engine, an engine that fits it (:func:`_runs_as_it_is`; ``graph``: the models are
    exported ONNX files) is dropped, as ``load_heads`` does; any other option it does not take is a one-line error
    naming the model (``label``), the option and what the task takes."""
    given = dict(options)
    if record.runs_as_it_is and _runs_as_it_is(label, record, given.get("engine"), graph):
        given.pop("engine", None)  # one that does not fit stays, to be refused with the rest
    _refuse_others(label, given, f"{record.name} models", record.takes, task=record.name)
    return given


def _runs_as_it_is(label: str, record: Any, engine: str | None, graph: bool) -> bool:
    """Whether a predictor which takes no engine runs on ``engine``: for a model file only PyTorch as it is
    (``EAGER_ENGINES``; the caller refuses any other); for an exported ONNX file of a task that runs them only
    onnxruntime (``GRAPH_AS_IT_IS``): any other is refused here, in one line, rather than a quiet run on onnxruntime."""
    if not (graph and record.runs_onnx):
        return engine in EAGER_ENGINES
    if engine not in GRAPH_AS_IT_IS:
        from cnnapps.engines import EngineError

        pytorch = ", not on a PyTorch engine" if engine in ("eager", "jit", "compile") else ""
        raise EngineError(f"{label}: engine={engine!r}: an exported {record.name} graph runs on onnxruntime "
                          f"(engine auto or onnxruntime){pytorch}")  # fmt: skip
    return True


def _refuse_others(label: str, options: dict[str, Any], what: str, takes: Sequence[str], task: str = "it") -> None:
    """A one-line error for the first of ``options`` not among ``takes`` (an engine: an ``EngineError``)."""
    for name, value in options.items():
        if name in takes:
            continue
        listed = f"{task} takes {', '.join(takes)}"
        if name == "engine":
            from cnnapps.engines import EngineError

            raise EngineError(f"{label}: engine={value!r}: {what} run as they are (engine auto or eager); {listed}")
        raise CnnappsError(f"{label}: {name}={value!r} is not an option of {what} ({listed})")


def check_serves(spec: str | os.PathLike, task: str) -> None:
    """Refuse, in one line, a spec that cannot do ``task``: a file without such a head, another task's named
    model, or a name that is no model at all (with the closest names)."""
    name = str(spec)
    record = get_task(task)
    zoo = {n: t.name for t in TASKS.values() for n in t.zoo_models()}
    if name in zoo:
        if zoo[name] != task:
            raise CnnappsError(f"{name}: a {zoo[name]} model, not a {task} model")
        return
    graph = is_onnx_file(name)
    if graph or is_bundle_path(spec):
        tasks = set()
        if graph:
            from cnnapps.exported import read_onnx_metadata

            tasks = {str(read_onnx_metadata(spec).get("task", "classify"))}
            if task in tasks and not record.runs_onnx:
                from cnnapps.apps.tasks import runnable_files

                raise CnnappsError(f"{name}: an exported ONNX {task} model; {runnable_files()}; use the model file "
                                   "it was exported from")  # fmt: skip
        else:
            from cnnapps.apps.modelfile import read_model_file

            tasks = set(read_model_file(spec).tasks)
        any_trunk = record.any_trunk and not graph  # e.g. any trunk can embed
        if task not in tasks and not any_trunk:
            raise CnnappsError(f"{name}: a {', '.join(sorted(tasks))} model, not a {task} model")
        return
    if record.zoo or record.default_model is None:  # a task whose models are files or named ready models: neither
        named = list(record.zoo_models())
        hint = did_you_mean(name, named, cutoff=0.5)
        from cnnapps.backbones import list_backbones

        if name in {spec.name for spec in list_backbones()}:  # a trunk, not "unknown": a head is trained on it
            if not named:
                raise UnknownModelError(f"{name}: a backbone, not a {task} model (its models are model files, made by "
                                        f"cnnapps train {task})")  # fmt: skip
            raise UnknownModelError(f"{name}: a backbone, not a {task} model (one of {', '.join(named)}, or a model "
                                    f"file: train one on it with cnnapps train {task} --backbone {name})")  # fmt: skip
        if not named:  # a file that is not there says so where it is read
            return
        raise UnknownModelError(f"{name}: unknown {task} model (not a model file, nor one of {', '.join(named)}){hint}")


def list_models(timm_pattern: str | None = None) -> list[dict[str, Any]]:
    """What ``cnnapps models`` lists: the registered backbones (and timm models matching ``timm_pattern``), then
    each task's named ready models, each with the state of its weights (bundled, cached, downloadable, none)."""
    from cnnapps.backbones.catalog import list_models as backbones

    rows = backbones(timm_pattern)
    for task in TASKS.values():
        rows += [{"name": name, **row} for name, row in task.zoo_models(weights=True).items()]
    return rows


def _trunk_task(spec: str | os.PathLike, heads: Sequence[str], graph: bool) -> str | None:
    """The task asked for when ``heads`` is one task that any model's trunk does (``any_trunk``) and ``spec`` has
    no head of that name or task: it runs on the trunk as ``load(spec, task=...)`` does. Such a task asked for
    beside others is a one-line error saying to ask for it alone."""
    if graph:
        return None
    if is_bundle_path(spec):
        from cnnapps.apps.modelfile import read_model_file

        has = {n for name, head in read_model_file(spec).heads.items() for n in (name, head.task)}
    else:
        has = {task_of(spec)}
    lacking = [h for h in heads if h in TASKS and TASKS[h].any_trunk and h not in has]
    if lacking and len(heads) > 1:
        from cnnapps.bundle import BundleError

        raise BundleError(f"{spec}: it has no {lacking[0]} head (any trunk can {lacking[0]}: ask for it alone, "
                          f"--tasks {lacking[0]})")  # fmt: skip
    return lacking[0] if lacking else None


def load_heads(spec: str | os.PathLike, heads: Sequence[str] | None = None, **options: Any) -> Any:
    """Whatever ``spec`` is, a predictor whose ``predict`` gives one :class:`MultiTaskResult` per input: a model
    file's heads in one trunk pass, or a one-task model (registry or zoo name, exported file, a detector with its
    own resizing) keyed by its task. ``options``: those of the tasks' predictors; each takes its own."""
    from cnnapps.apps.modelfile import adapter, read_model_file
    from cnnapps.apps.multitask import MultiTaskPredictor, OneHead, chosen_heads
    from cnnapps.bundle import BundleError

    graph = is_onnx_file(spec)
    heads = list(dict.fromkeys(heads)) if heads else None  # a task named twice is asked for once
    embeds = _trunk_task(spec, heads, graph) if heads else None
    if embeds:  # a task any trunk does without a head of its own, asked for alone (e.g. retrieve)
        record = get_task(embeds)
        return OneHead(load(spec, task=embeds, **record.options(options)), embeds)
    if is_bundle_path(spec) and not graph:
        model_file = read_model_file(spec)
        names = chosen_heads(model_file, heads)
        if all(getattr(adapter(model_file.heads[n].task), "shareable", lambda _: True)(model_file.heads[n])
               for n in names):  # fmt: skip
            chosen = {k: v for k, v in options.items() if k in MULTI_HEAD_OPTIONS}
            return MultiTaskPredictor(spec, heads=names, **chosen)
        if len(names) > 1:
            raise BundleError(f"{spec}: some of its heads resize images themselves; run them one at a time")
        task, head = model_file.heads[names[0]].task, names[0]
    else:
        task, head = task_of(spec) or "classify", None
        if heads and set(heads) != {task}:
            raise BundleError(f"{spec}: a {task} model; it has no {', '.join(h for h in heads if h != task)}")
    record = get_task(task)
    engine = options.get("engine") or "auto"
    if record.runs_as_it_is and not _runs_as_it_is(str(spec), record, engine, graph):  # not a quiet run elsewhere
        from cnnapps.engines import EngineError

        raise EngineError(f"--engine {engine}: {spec} is a {task} model, which runs as it is (use --engine auto)")
    chosen = {**options, **({"head": head} if head else {})}
    return OneHead(load(spec, task=task, **record.options(chosen)), head or task)
