"""Model files as trunk + heads: writing them, reading them (files of the first format through a migration),
rebuilding a task's model from the trunk and one head, and taking a trunk to train new heads on.

The container and its checks are ``cnnapps.bundle``'s; what a head is for each task is the task's head adapter
(the task table's ``head`` part), so this module names no task.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnapps.apps.tasks import TASKS
from cnnapps.bundle import (
    FORMAT_V1,
    MAX_LABELS,
    BundleError,
    load_tensors,
    read_header,
    save_bundle,
    tensor_fingerprint,
)
from cnnapps.errors import UnknownModelError, in_one_line

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from cnnapps.backbones.features import Backbone


@dataclass
class HeadInfo:
    """One head of a model file: its task, its kind (how it is built), its settings and labels."""

    task: str
    kind: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)  # class names, or a captioner's vocabulary
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "kind": self.kind, "kwargs": self.kwargs, "labels": self.labels,
                "metrics": self.metrics}  # fmt: skip


@dataclass
class ModelFile:
    """What a model file says about itself (read from its header; tensors are read when a model is built)."""

    path: Path
    trunk: dict[str, Any]  # name, kwargs, fingerprint
    heads: dict[str, HeadInfo]
    preprocess: dict[str, Any]
    format: str
    version: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return [h.task for h in self.heads.values()]

    def head_named(self, name: str | None = None, task: str | None = None) -> str:
        """The name of the head asked for by name or task (the only head when neither is given)."""
        if name is not None:
            if name not in self.heads:
                raise BundleError(f"{self.path}: no head named {name!r} (heads: {', '.join(self.heads)})")
            if task is not None and self.heads[name].task != task:
                raise BundleError(f"{self.path}: its head {name!r} is a {self.heads[name].task} head, not a {task} one")
            return name
        matching = [n for n, h in self.heads.items() if task is None or h.task == task]
        if len(matching) == 1:
            return matching[0]
        if not matching:
            have = ", ".join(f"{n} ({h.task})" for n, h in self.heads.items())
            raise BundleError(f"{self.path}: has no {task} head (heads: {have})")
        raise BundleError(f"{self.path}: has several heads ({', '.join(matching)}); name the one to use (--head NAME; "
                         "in Python head=NAME)")  # fmt: skip

    def trunk_tensors(self) -> dict[str, torch.Tensor]:
        if self.format == FORMAT_V1:
            return _v1_split(self)[0]
        return load_tensors(self.path, "trunk.")

    def head_tensors(self, name: str) -> dict[str, torch.Tensor]:
        if self.format == FORMAT_V1:
            return _v1_split(self)[1]
        return load_tensors(self.path, f"heads.{name}.")


def refuse_head(head: str | None, spec: str | os.PathLike, kind: str) -> None:
    """A one-line error when a head is named (``head``) for a spec that is not a model file; ``kind`` says what the
    spec is ("an exported graph", "a registry name", ...)."""
    if head is not None:
        raise BundleError(f"head {head!r}: {spec} is {kind} (a head is one of a model file's heads)")


def adapter(task: str) -> Any:
    """The head adapter of ``task`` (from the task table)."""
    return TASKS[task].part("head")


def read_model_file(path: str | os.PathLike) -> ModelFile:
    """The checked description of a model file of either format; one-line errors name the file and the key.

    A current file's tensors are ``trunk.*`` and ``heads.<a head its header declares>.*``: another tensor (a head
    the header does not declare, a stray name) is refused here, from the file header alone."""
    path = Path(path)
    meta, names = read_header(path)
    if meta["format"] == FORMAT_V1:
        return _migrate_v1(path, meta)
    trunk, heads, preprocess = meta.get("trunk"), meta.get("heads"), meta.get("preprocess")
    _check_trunk(path, trunk)
    if not isinstance(heads, dict) or not heads:
        raise BundleError(f"{path}: heads: expected a mapping of one or more heads, found {_short(heads)}")
    if not isinstance(preprocess, dict):
        raise BundleError(f"{path}: preprocess: expected a mapping, found {_short(preprocess)}")
    infos = {}
    for name, head in heads.items():
        infos[name] = _head_info(path, name, head)
    _check_tensor_names(path, names, infos)
    extra = {k: v for k, v in meta.items() if k not in ("format", "version", "trunk", "heads", "preprocess")}
    return ModelFile(path, _settled(trunk), infos, preprocess, meta["format"], str(meta.get("version")), extra)


#: a trunk setting read from a model file is a plain value (no mapping: library settings that load other files or
#: fetch weights are mappings or paths), under a name that names no file, download or pretrained weights
#: (drop_path_rate is a plain setting)
_FILE_LIKE_SETTING = re.compile(r"checkpoint|pretrained|cache|cfg|overlay|weights|url|file|(^|_)(path|dir)$", re.I)
#: the largest number a trunk setting may hold (channels, classes, sizes): a file cannot ask for unbounded memory
MAX_TRUNK_SETTING = 100_000
#: the most a head setting that sizes its layers or its decoding may be, whichever head holds it (a caption head's
#: grid and words, an embedding's projection, a detector's FPN): checked when the header is read, before anything
#: is allocated (a crafted grid of 100,000 asked for 51 TB, a max_len of 10**9 decoded for minutes). Training
#: refuses more: caption's max_len is 1..200, its grid at most 64 (a 2,048-pixel image's stride-32 map), detection's
#: fpn_channels at most 2,048 (torchvision's is 256)
HEAD_SETTING_LIMITS = {"grid": 64, "max_len": 200, "embedding_size": 16_384, "fpn_channels": 2_048}


def _settled(trunk: dict[str, Any]) -> dict[str, Any]:
    """The trunk as read, its settings completed with those of files that recorded none (so it rebuilds as written)."""
    from cnnapps.backbones.registry import file_trunk_settings

    return {**trunk, "kwargs": file_trunk_settings(trunk["name"], trunk.get("kwargs", {}))}


def _check_trunk(path: Path, trunk: Any) -> None:
    """A trunk's description (a registry name and the settings its constructor takes), else a one-line error."""
    if not isinstance(trunk, dict) or not isinstance(trunk.get("name"), str):
        raise BundleError(f"{path}: trunk: expected {{name, kwargs, fingerprint}}, found {_short(trunk)}")
    _check_trunk_kwargs(path, trunk.get("kwargs", {}))


def _check_trunk_kwargs(path: Path, kwargs: Any) -> None:
    """The trunk's settings (passed to the network's constructor) as a model file may hold them, else a one-line
    error naming the file and the key: a crafted file must not make the constructor read a file it names, fetch
    weights or allocate without bound."""
    where = f"{path}: trunk.kwargs"
    if not isinstance(kwargs, dict):
        raise BundleError(f"{where}: expected a mapping, found {_short(kwargs)}")
    for key, value in kwargs.items():
        if not isinstance(key, str) or _FILE_LIKE_SETTING.search(key):
            raise BundleError(f"{where}.{key}: a model file may not set where or whether weights are loaded")
        values = value if isinstance(value, list) else [value]
        for v in values:
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            if not (v is None or isinstance(v, (bool, str)) or (number and math.isfinite(v))):
                raise BundleError(f"{where}.{key}: expected a number, text, true/false or a list of them, found "
                                  f"{_short(value)}")  # fmt: skip
            if number and abs(v) > MAX_TRUNK_SETTING:
                raise BundleError(f"{where}.{key}: {v} is beyond the {MAX_TRUNK_SETTING:,} a setting may hold")


def _check_tensor_names(path: Path, names: list[str], heads: dict[str, HeadInfo]) -> None:
    """Every tensor of a current file belongs to its trunk or to a head its header declares, else a one-line error
    naming the first other one (it was ignored: a head left out of the header, or a damaged name)."""
    for name in sorted(names):
        part, _, rest = name.partition(".")
        head, dot, key = rest.partition(".")
        if (part == "trunk" and rest) or (part == "heads" and head in heads and dot and key):
            continue
        raise BundleError(f"{path}: tensor {name} is outside the trunk and the heads its header declares "
                          f"(trunk.*, {', '.join(f'heads.{h}.*' for h in heads)})")  # fmt: skip


def _head_info(path: Path, name: str, head: Any) -> HeadInfo:
    where = f"{path}: heads.{name}"
    fault = name_fault(name, new=False)
    if fault:
        raise BundleError(f"{path}: heads: {_short(name)} is not a head name ({fault})")
    if not isinstance(head, dict):
        raise BundleError(f"{where}: expected a mapping, found {_short(head)}")
    task = head.get("task")
    if task not in TASKS:
        raise BundleError(f"{where}.task: {task!r} is not a task this cnnapps knows ({', '.join(TASKS)})")
    labels = head.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels[:MAX_LABELS]):
        raise BundleError(f"{where}.labels: expected a list of names, found {_short(labels)}")
    if len(labels) > MAX_LABELS:
        raise BundleError(f"{where}.labels: {len(labels):,} names, more than the {MAX_LABELS:,} a head may have")
    kwargs, metrics = head.get("kwargs", {}), head.get("metrics", {})
    if not isinstance(kwargs, dict) or not isinstance(metrics, dict):
        raise BundleError(f"{where}: kwargs and metrics must be mappings")
    for key, most in HEAD_SETTING_LIMITS.items():
        value = kwargs.get(key)  # None (or no key): the head's default
        number = isinstance(value, int) and not isinstance(value, bool)
        if value is not None and not (number and 1 <= value <= most):
            raise BundleError(f"{where}.kwargs.{key}: expected a whole number from 1 to {most:,}, found "
                              f"{_short(value)}")  # fmt: skip
    return HeadInfo(task, str(head.get("kind", "")), kwargs, labels, metrics)


def name_fault(name: Any, new: bool = True) -> str | None:
    """Why ``name`` cannot name a head (None when it can): a head's name is a part of its tensors' names and a key
    of the multi-task answer beside the answer's own keys. A ``new`` one (``--names``, a clash renamed) must also be
    none of those keys, and one every command can select, an item of ``--tasks a,b`` and of serve's
    ``model=NAME/HEAD``; a header is read with the dot check alone, so a file written before the others still loads
    (a multi-task answer refuses such a head where it would answer beside others: :func:`answered_beside_others`)."""
    from cnnapps.results import MultiTaskResult

    if not isinstance(name, str) or not name or "." in name:
        return "a head's name is not empty and holds no dot (the dot separates the parts of its tensors' names)"
    if new and name in MultiTaskResult.OWN_KEYS:
        return (f"{name!r} is a key every multi-task answer holds itself ({', '.join(MultiTaskResult.OWN_KEYS)}): "
                "the head's answer would overwrite it")  # fmt: skip
    if new and name != name.strip():
        return "a head's name has no space at either end (no command could select it)"
    if new and ("/" in name or "," in name):
        return "a head's name holds no / or , (serve's model=NAME/HEAD and --tasks a,b would split it)"
    return None


def answered_beside_others(path: str | os.PathLike, names: list[str]) -> None:
    """Refuse, in one line, heads answered together (a multi-task answer) one of which is named for a key of the
    answer itself: a file written before such names were refused (its head's answer would overwrite that key)."""
    from cnnapps.results import MultiTaskResult

    clash = next((name for name in names if name in MultiTaskResult.OWN_KEYS), None)
    if clash is not None:
        raise BundleError(f"{path}: its head {clash!r} is named for a key of the answer itself; load it alone "
                          f"(head={clash!r}), or name the heads anew with cnnapps compose {path} "
                          "--names ...")  # fmt: skip


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _migrate_v1(path: Path, meta: dict[str, Any]) -> ModelFile:
    """A file of the first format as a one-head file: its task's adapter says which tensors are the trunk."""
    task = meta.get("task", "classify")
    if task not in TASKS:
        raise BundleError(f"{path}: task: {task!r} is not a task this cnnapps knows ({', '.join(TASKS)})")
    try:
        trunk, head, preprocess = adapter(task).from_v1(meta)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"{path}: a {FORMAT_V1} {task} file without a usable {exc} entry") from None
    head.metrics = meta.get("metrics", {}) if isinstance(meta.get("metrics"), dict) else {}
    _check_trunk(path, trunk)  # the same checks as for the current format
    _head_info(path, task, head.to_dict())
    return ModelFile(path, _settled(trunk), {task: head}, preprocess, FORMAT_V1, str(meta.get("version")))


def _v1_split(model_file: ModelFile) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(trunk, head) tensors of a first-format file, whose keys are its model's whole state dict."""
    (info,) = model_file.heads.values()
    prefix = adapter(info.task).trunk_path + "."
    tensors = load_tensors(model_file.path)
    trunk = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return trunk, {k: v for k, v in tensors.items() if not k.startswith(prefix)}


def build_trunk(model_file: ModelFile, tensors: dict[str, torch.Tensor] | None = None) -> Backbone:
    """The file's trunk (registry net without its original head) with the file's trunk tensors."""
    from cnnapps.backbones import create_backbone

    name, kwargs = model_file.trunk["name"], model_file.trunk.get("kwargs", {})
    try:
        trunk = create_backbone(name, weights=None, **kwargs)
    except UnknownModelError as exc:
        raise BundleError(f"{model_file.path}: trunk.name: {in_one_line(exc).split(': ', 1)[1]}") from None
    except _CONSTRUCTOR_ERRORS as exc:
        raise BundleError(f"{model_file.path}: trunk.kwargs do not fit {name} ({in_one_line(exc)})") from None
    if trunk.has_head:
        trunk.drop_head()
    _check_channels(model_file, trunk)
    return trunk


#: what a network's constructor raises for settings it cannot take (timm asserts, looks names up, reads attributes)
_CONSTRUCTOR_ERRORS = (TypeError, ValueError, RuntimeError, MemoryError, AssertionError, KeyError, AttributeError,
                       IndexError, NotImplementedError)  # fmt: skip


def _check_channels(model_file: ModelFile, trunk: Backbone) -> None:
    """The file's preprocessing gives as many channels as the trunk's first convolution takes, else a one-line
    error (a raw convolution error at the first image otherwise). torchvision's and the seed nets' first convolution
    reads the image; a timm net may rearrange it first (TResNet's space-to-depth: 48 channels), so it is not asked."""
    from torch import nn

    from cnnapps.backbones.features import SequentialBackbone

    if not isinstance(trunk, SequentialBackbone):
        return
    size = model_file.preprocess.get("input_size") if isinstance(model_file.preprocess, dict) else None
    channels = size[0] if isinstance(size, list) and size and isinstance(size[0], int) else None  # else Preprocess's
    first = next((m for m in trunk.modules() if isinstance(m, nn.Conv2d)), None)
    if channels is None or first is None or channels == first.in_channels:
        return
    plural = "" if channels == 1 else "s"
    raise BundleError(f"{model_file.path}: preprocess.input_size: {channels} channel{plural}, its trunk takes "
                      f"{first.in_channels}")  # fmt: skip


def build_model(model_file: ModelFile, head: str | None = None, task: str | None = None) -> nn.Module:
    """The task model of one head (e.g. a Classifier), on the file's trunk, with the file's weights."""
    name = model_file.head_named(head, task)
    info = model_file.heads[name]
    task_adapter = adapter(info.task)
    trunk_state = model_file.trunk_tensors()
    trunk = build_trunk(model_file)
    model = build_head(model_file, name, trunk)
    prefix = task_adapter.trunk_path + "."
    state = {prefix + k: v for k, v in trunk_state.items()}
    state.update(model_file.head_tensors(name))
    load_exactly(model, state, f"{model_file.path} ({name} head)")
    trunk.stored_tensors = frozenset(trunk_state)  # written again as stored (see save_model)
    return model.eval()


def build_head(model_file: ModelFile, name: str, trunk: nn.Module) -> nn.Module:
    """The task model of head ``name`` around ``trunk`` (weights not loaded); a kind its task does not build and
    settings it cannot take are one line."""
    info = model_file.heads[name]
    kinds = head_kinds(info.task)
    if info.kind not in kinds:
        raise BundleError(f"{model_file.path}: heads.{name}.kind: {info.kind!r} is not a kind of {info.task} head "
                          f"this cnnapps builds ({', '.join(kinds)})")  # fmt: skip
    try:
        return adapter(info.task).build(trunk, info, model_file.preprocess, model_file)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as exc:  # settings a head cannot take
        raise BundleError(f"{model_file.path}: heads.{name}: its settings do not build a {info.task} head "
                          f"({in_one_line(exc)})") from None  # fmt: skip


def head_kinds(task: str) -> tuple[str, ...]:
    """The kinds of head ``task``'s adapter builds (its ``kinds``)."""
    return tuple(adapter(task).kinds)


def load_exactly(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every tensor of ``state`` into ``model`` with matching names, shapes and dtypes, or a one-line error.

    Batch-norm step counters (``num_batches_tracked``) may be missing on either side: they do not change outputs.
    A stored dtype must be the model's own: cnnapps writes weights as the model holds them (float32; mixed-precision
    training keeps them so), and an integer tensor where the model holds floats (or float64) is a damaged file, not
    weights to convert silently.
    """
    ours = model.state_dict()
    harmless = "num_batches_tracked"
    missing = [k for k in ours if k not in state and not k.endswith(harmless)]
    unexpected = [k for k in state if k not in ours and not k.endswith(harmless)]
    if missing or unexpected:
        detail = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise BundleError(f"{source}: the weights do not fit the described model ({detail})")
    for key, value in state.items():
        if key in ours and tuple(ours[key].shape) != tuple(value.shape):
            raise BundleError(
                f"{source}: {key} has shape {tuple(value.shape)}, the described model needs {tuple(ours[key].shape)}"
            )
        if key in ours and ours[key].dtype != value.dtype:
            raise BundleError(f"{source}: {key} is stored as {_dtype_name(value)}, the described model holds "
                              f"{_dtype_name(ours[key])}")  # fmt: skip
    model.load_state_dict({k: v for k, v in state.items() if k in ours}, strict=False)


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def save_model(path: str | os.PathLike, task: str, model: nn.Module, trunk_name: str,
               trunk_kwargs: dict[str, Any] | None, preprocess: dict[str, Any],
               metrics: dict[str, Any] | None = None, head_name: str | None = None,
               overwrite: bool = True) -> Path:  # fmt: skip
    """Write a one-head model file for ``model`` (a task model whose trunk sits at its adapter's trunk path)."""
    task_adapter = adapter(task)
    info = task_adapter.describe(model)
    info.metrics = dict(metrics or {})
    prefix = task_adapter.trunk_path + "."
    state = model.state_dict()
    trunk = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    head = {k: v for k, v in state.items() if not k.startswith(prefix)}
    stored = getattr(model.get_submodule(task_adapter.trunk_path), "stored_tensors", None)
    if stored is not None:  # a trunk read from a file keeps its fingerprint: no batch-norm counter the file lacked
        trunk = {k: v for k, v in trunk.items() if k in stored or not k.endswith("num_batches_tracked")}
    kwargs = _trunk_settings(model.get_submodule(task_adapter.trunk_path), trunk_kwargs)
    return write_model_file(path, {"name": trunk_name, "kwargs": kwargs}, trunk, {head_name or task: (info, head)},
                            preprocess, overwrite=overwrite)  # fmt: skip


def _trunk_settings(trunk: nn.Module, trunk_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """The trunk's constructor settings as given, with those it was built with that no tensor holds (its
    ``settings``: Lite0's padding) and GoogLeNet's input transform when the trunk has it (torchvision's weights turn
    it on): a file that did not say so would rebuild another network."""
    from cnnapps.backbones.torchvision_nets import GoogLeNetInput

    kwargs = {**(trunk_kwargs or {}), **getattr(trunk, "settings", {})}
    if any(isinstance(m, GoogLeNetInput) for m in trunk.modules()):
        kwargs.setdefault("transform_input", True)
    return kwargs


def write_model_file(path: str | os.PathLike, trunk: dict[str, Any], trunk_state: dict[str, torch.Tensor],
                     heads: dict[str, tuple[HeadInfo, dict[str, torch.Tensor]]], preprocess: dict[str, Any],
                     overwrite: bool = True) -> Path:  # fmt: skip
    """Write the trunk, the heads (name: (info, tensors)) and the preprocessing as one model file."""
    tensors = {f"trunk.{k}": v for k, v in trunk_state.items()}
    for name, (_, state) in heads.items():
        tensors.update({f"heads.{name}.{k}": v for k, v in state.items()})
    meta = {
        "trunk": {**trunk, "fingerprint": tensor_fingerprint(trunk_state)},
        "heads": {name: info.to_dict() for name, (info, _) in heads.items()},
        "preprocess": _plain(preprocess),
    }
    return save_bundle(path, tensors, meta, overwrite=overwrite)


def _plain(value: Any) -> Any:
    """Tuples as lists, for JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def trunk_difference(first: ModelFile, other: ModelFile) -> str | None:
    """Why ``other``'s trunk is not ``first``'s, one line naming ``other`` (another net or other weights, by the
    fingerprints of the tensors; or the same weights built otherwise: Lite0's padding), or None: heads of the two
    join on one trunk."""
    first_print, other_print = tensor_fingerprint(first.trunk_tensors()), tensor_fingerprint(other.trunk_tensors())
    if other_print != first_print or other.trunk["name"] != first.trunk["name"]:
        return (f"{other.path}: its trunk ({other.trunk['name']}, {other_print[:19]}) is not the trunk of "
                f"{first.path} ({first.trunk['name']}, {first_print[:19]})")  # fmt: skip
    if other.trunk.get("kwargs", {}) != first.trunk.get("kwargs", {}):
        return (f"{other.path}: its trunk ({other.trunk['name']}, {_short(other.trunk.get('kwargs', {}))}) is built "
                f"otherwise than {first.path}'s ({_short(first.trunk.get('kwargs', {}))})")  # fmt: skip
    return None


def trunk_fingerprint(model_file: ModelFile) -> str:
    """The trunk's fingerprint, computed from its tensors; the one a current file's header stores must agree, else a
    one-line error (tensors changed after the file was written would otherwise pass for the trunk an index was built
    with). It names the weights of an embedding (``cnnapps.apps.retrieve``); joining heads (``compose``, a panoptic
    join) compares fingerprints computed from the tensors, never the stored ones."""
    computed = tensor_fingerprint(model_file.trunk_tensors())
    stored = model_file.trunk.get("fingerprint")
    if model_file.format != FORMAT_V1 and isinstance(stored, str) and stored != computed:
        raise BundleError(f"{model_file.path}: its trunk does not match the fingerprint in its header (its tensors "
                          "were changed after it was written)")  # fmt: skip
    return computed


def load_trunk(spec: str | os.PathLike, weights: str | None = "imagenet") -> tuple[Backbone, Any]:
    """A trunk to train new heads on, and its preprocessing: a registry name (seeded with ``weights``) or a model
    file, whose trunk is taken exactly as it is stored."""
    from cnnapps.backbones import create_backbone
    from cnnapps.bundle import is_bundle_path

    if not is_bundle_path(spec):
        trunk = create_backbone(str(spec), weights=weights)
        if trunk.has_head:
            trunk.drop_head()
        return trunk, trunk.preprocess
    model_file = read_model_file(spec)
    trunk = build_trunk(model_file)
    state = model_file.trunk_tensors()
    load_exactly(trunk, state, f"{spec} (trunk)")
    trunk.weights = f"trunk of {spec}"
    # a head's file stores the tensors this file stores: a detector trained with its trunk stores no batch-norm
    # counters (frozen batch norm), and writing them would give the very same weights another fingerprint
    trunk.stored_tensors = frozenset(state)
    return trunk, _trunk_preprocess(model_file, trunk)


def _trunk_preprocess(model_file: ModelFile, trunk: Backbone) -> Any:
    """A model file's preprocessing for its trunk; a detector's or a segmenter's own resizing (no
    :class:`Preprocess`) gives the trunk's registry sizes with the file's mean and std (cut to the trunk's
    channels): the normalisation the trunk was trained with."""
    import dataclasses

    from cnnapps.backbones.preprocess import Preprocess

    stored = model_file.preprocess
    try:
        if stored.get("resize_mode", "crop") in ("crop", "squash"):
            return Preprocess.from_dict(stored)
        channels = trunk.preprocess.input_size[0]
        mean, std = (tuple(stored[key])[:channels] for key in ("mean", "std"))
        return dataclasses.replace(trunk.preprocess, mean=mean, std=std)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{model_file.path}: preprocess: {in_one_line(exc)}") from None


def compose(paths: list[str | os.PathLike], out: str | os.PathLike, names: list[str] | None = None) -> Path:
    """Join the heads of model files trained on the same trunk into one file (never over an existing one).

    The trunks must hold the same weights (fingerprints computed from the tensors, not trusted from the headers)
    and the files the same preprocessing; heads keep their names, a clash is resolved by the file's name (the
    run folder for a ``model.safetensors``). ``names`` renames the heads in order: one distinct name per head."""
    from cnnapps.files import OutputExistsError

    out = Path(out)
    if os.path.lexists(out):
        raise OutputExistsError(out)
    if len(paths) < 2:
        raise BundleError("compose: give two or more model files to join")
    from cnnapps.exported import is_onnx_file

    for path in paths:
        if Path(path).is_file() and is_onnx_file(Path(path)):  # a graph holds no heads to join
            raise BundleError(f"{path}: an exported ONNX file; compose joins model files (.safetensors): give the "
                              "model file it was exported from, and export the composed file")  # fmt: skip
    seen: dict[str, str | os.PathLike] = {}
    for path in paths:
        earlier = seen.setdefault(os.path.realpath(path), path)
        if earlier is not path:  # its heads would be written twice, the second renamed after the file
            raise BundleError(f"{path}: given twice ({earlier} is the same file); give each model file once")
    files = [read_model_file(p) for p in paths]
    if names is not None:
        _check_names(files, names)
    first = files[0]
    for other in files[1:]:
        differs = trunk_difference(first, other)
        if differs:
            raise BundleError(f"{differs}; heads join only on one trunk: train each with --trunk naming the same trunk")
        if _plain(other.preprocess) != _plain(first.preprocess):
            raise BundleError(f"{other.path}: its preprocessing differs from {first.path}'s: "
                              f"{_differences(_plain(other.preprocess), _plain(first.preprocess))}")  # fmt: skip
    heads: dict[str, tuple[HeadInfo, dict[str, torch.Tensor]]] = {}
    wanted = list(names or [])
    for model_file in files:
        for name, info in model_file.heads.items():
            if not getattr(adapter(info.task), "shareable", lambda _: True)(info):
                raise BundleError(
                    f"{model_file.path}: its {name} head resizes images itself (trained with its trunk); only heads "
                    "trained with --trunk share a trunk pass"
                )
            label = wanted.pop(0) if names is not None else name
            if label in heads and names is None:
                label = f"{label}-{file_label(model_file.path).replace('.', '-')}"
            if label in heads:
                raise BundleError(f"{model_file.path}: a second head named {label!r}; name the heads with --names")
            fault = name_fault(label)  # a clash renamed after a file whose name no head may hold ("run 1 ")
            if fault:
                raise BundleError(f"{model_file.path}: its head would be named {label!r}: {fault}; name the heads "
                                  "with --names")  # fmt: skip
            heads[label] = (info, model_file.head_tensors(name))
    trunk = {"name": first.trunk["name"], "kwargs": first.trunk.get("kwargs", {})}
    return write_model_file(out, trunk, first.trunk_tensors(), heads, first.preprocess, overwrite=False)


def _differences(other: dict[str, Any], first: dict[str, Any]) -> str:
    """The keys of two preprocessing mappings whose values differ, each with both values (``other``'s first):
    ``mean [0.5, 0.5, 0.51] vs [0.5, 0.5, 0.5]`` (the whole mappings cut short looked alike)."""
    theirs, ours = ({k: _short(v) for k, v in values.items()} for values in (other, first))
    keys = [*first, *(k for k in other if k not in first)]
    return "; ".join(f"{k} {theirs.get(k, 'unset')} vs {ours.get(k, 'unset')}" for k in keys
                     if k not in other or k not in first or other[k] != first[k])  # fmt: skip


def _check_names(files: list[ModelFile], names: list[str]) -> None:
    """``--names``: one distinct name per head of ``files``, in order, each one a head may have (:func:`name_fault`),
    else a one-line error."""
    heads = [name for model_file in files for name in model_file.heads]
    if len(names) != len(heads):
        raise BundleError(f"--names: {len(names)} name{'' if len(names) == 1 else 's'} for {len(heads)} heads "
                          f"({', '.join(heads)}); give one name per head")  # fmt: skip
    for i, label in enumerate(names):
        fault = name_fault(label)
        if fault:
            raise BundleError(f"--names {label!r}: {fault}")
        if label in names[:i]:
            raise BundleError(f"--names: {label!r} twice; each head needs a name of its own")


def file_label(path: str | os.PathLike) -> str:
    """A short name for a model file: its run folder's for ``runs/x/model.safetensors``, else its stem."""
    path = Path(path)
    return path.parent.name if path.name == "model.safetensors" else path.stem
