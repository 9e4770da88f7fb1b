"""Training settings as dataclasses: YAML recipes and ``cnnapps train`` options are both made from them.

Each field's ``metadata`` holds its help text (and, for a field with a fixed set of values, ``choices``), so the
command line is built from the dataclass instead of declaring every option again. Plain Python only: building
``cnnapps --help`` imports this module, and it must not import torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnapps.errors import CnnappsError
from cnnapps.yamltext import load_yaml

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step", "plateau", "none")
#: classification augmentation presets (described in cnnapps.datasets.transforms.PRESETS)
AUGMENT_PRESETS = ("default", "alexnet", "creative", "randaugment", "trivialaugment", "none")
# Lightning strategies offered for several processes (one per GPU, or CPU processes with the gloo backend)
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true")
# values once offered, and what to use instead
RETIRED_CHOICES = {
    # spawned processes get the run pickled, which its closures cannot be, and send no history back
    ("strategy", "ddp_spawn"): "; use ddp (one process per device, started for you)",
}
# how the learning rate follows the number of processes: "linear" (Goyal et al. 2017) or "sqrt" (for Adam-like
# optimisers); "none" keeps the given rate for the larger global batch
LR_SCALING = ("none", "linear", "sqrt")
PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed")
# where colour jitter and normalisation run: on the training device, on uint8 batches ("device"), or in the
# DataLoader workers, which then send float32 batches ("workers"); "auto": the device when it is a GPU
AUGMENT_PLACES = ("auto", "device", "workers")
#: experiment trackers (Lightning loggers) a run can write to; ``--logger`` takes a comma-separated list of them
LOGGERS = ("csv", "tensorboard", "mlflow", "wandb")

#: the help panel of the options for several processes (README: Scaling out)
SCALE_PANEL = "Scaling out"
#: the help panel of the options most runs never change
MORE_PANEL = "More training options"


class ConfigError(CnnappsError):
    """A training configuration with an unknown key or a bad value."""


def option(default: Any = None, help: str = "", *, choices: tuple[str, ...] = (), panel: str | None = None,
           cli: bool = True, factory: Any = None) -> Any:  # fmt: skip
    """A config field with its command-line help; ``cli=False`` keeps it to YAML recipes."""
    meta = {"help": help, "choices": choices, "panel": panel, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a run needs; YAML files in configs/<task>/ set the same fields, flags override them."""

    data: str = option("", "Class-per-folder tree (with train/ and val/, or split), or a path,label CSV.")
    backbone: str = option("efficientnet_lite0", "Registry name, e.g. resnet50 or timm:convnext_tiny.")
    weights: str | None = option("imagenet", "imagenet, none, or a weights file for the backbone.")
    trunk: str | None = option(
        None,
        "Train only a new head on this frozen trunk: a registry name or a model file (its trunk is taken as it "
        "is); heads trained on one trunk can be joined by `cnnapps compose`.",
    )
    freeze: int | None = option(None, "Freeze the stem and this many stages [default: 0].")
    epochs: int = option(10, "Passes over the training set.")
    batch_size: int = option(32, "Images per step on each process.")
    lr: float | None = option(None, "Learning rate [default: 1e-3 for adamw, 1e-2 for sgd].")
    optimizer: str = option("adamw", "adamw or sgd (momentum 0.9).", choices=OPTIMIZERS)
    momentum: float = option(0.9, "SGD momentum.", panel=MORE_PANEL)
    weight_decay: float = option(1e-4, "Weight decay.", panel=MORE_PANEL)
    schedule: str = option("cosine", "cosine, step, plateau (divide by 10 on a plateau) or none.", choices=SCHEDULES)
    label_smoothing: float = option(0.0, "Label smoothing of the cross-entropy.", panel=MORE_PANEL)
    dropout: float = option(0.2, "Dropout before the head.", panel=MORE_PANEL)
    augment: str = option(
        "default", "default, alexnet, creative, randaugment, trivialaugment (torchvision's RandAugment / "
        "TrivialAugmentWide after a random resized crop and flip) or none.", choices=AUGMENT_PRESETS,
    )  # fmt: skip
    input_size: int | None = option(None, "Train and predict at this side length.")
    val_split: float = option(0.2, "Validation fraction when the data has no separate validation set.")
    patience: int | None = option(None, "Stop after this many epochs without improvement.")
    out: str = option("runs/classify", "Run folder (an earlier run there is never overwritten).")
    resume: bool = option(
        False, "Continue the run in --out from its last checkpoint, with its own settings for those not given (a "
        "larger --epochs trains on).",
    )  # fmt: skip
    workers: int | None = option(None, "Data-loading processes [default: up to 4].")
    device: str = option("auto", "auto, cpu or cuda.")
    devices: int = option(1, "Processes per node: GPUs, or CPU processes.", panel=SCALE_PANEL)
    num_nodes: int = option(1, "Machines.", panel=SCALE_PANEL)
    strategy: str = option(
        "auto", "auto, ddp or ddp_find_unused_parameters_true.", choices=STRATEGIES, panel=SCALE_PANEL
    )
    sync_batchnorm: bool = option(False, "Batch-norm statistics over all GPUs.", panel=SCALE_PANEL)
    lr_scaling: str = option(
        "none", "none, linear or sqrt in the number of processes.", choices=LR_SCALING, panel=SCALE_PANEL
    )
    precision: str = option(
        "auto", "auto (16-mixed on a GPU, 32-true on a CPU), 32-true, 16-mixed or bf16-mixed.", choices=PRECISIONS,
        panel=MORE_PANEL,
    )  # fmt: skip
    seed: int = option(0, "Random seed (split, initialisation, order, augmentation draws).", panel=MORE_PANEL)
    compile: bool = option(
        False, "torch.compile the model (the first steps take longer while it compiles; the time is logged).",
        panel=MORE_PANEL,
    )  # fmt: skip
    augment_on: str = option(
        "auto", "Where colour jitter and normalisation run: auto (the GPU when training on one), device or workers.",
        choices=AUGMENT_PLACES, panel=MORE_PANEL,
    )  # fmt: skip
    accumulate: int = option(
        1, "Average the gradients of this many batches per optimiser step (effective batch: batch size x processes x "
        "this).", panel=MORE_PANEL,
    )  # fmt: skip
    logger: str = option(
        "csv,tensorboard", "Experiment trackers, comma-separated: csv, tensorboard, mlflow (a file store in "
        "OUT/mlruns unless --mlflow-uri or $MLFLOW_TRACKING_URI names a server), wandb (when installed; offline "
        "without an API key), or none.", panel=MORE_PANEL,
    )  # fmt: skip
    mlflow_uri: str | None = option(
        None, "MLflow tracking URI [default: $MLFLOW_TRACKING_URI, else OUT/mlruns].", panel=MORE_PANEL
    )
    experiment: str | None = option(
        None, "Experiment (MLflow) or project (W&B) name [default: cnnapps-<task>].", panel=MORE_PANEL
    )
    progress: bool = option(True, cli=False)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})

    #: the task a config trains (subclasses set it; detection configs carry it as a field)
    task_name = "classify"

    def validate(self) -> TrainConfig:
        """Check values; raises :class:`ConfigError` naming the setting and what it takes."""
        if not self.data:
            what = fields_of(type(self))["data"].metadata["help"].rstrip(".")
            raise ConfigError(f"data: required ({what[0].lower()}{what[1:]})")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                hint = RETIRED_CHOICES.get((f.name, value), "")
                raise ConfigError(f"{f.name}: {value!r} is not one of {', '.join(choices)}{hint}")
        checks = [
            (self.epochs >= 1, f"epochs: must be at least 1, not {self.epochs}"),
            (self.batch_size >= 1, f"batch_size: must be at least 1, not {self.batch_size}"),
            (self.lr is None or self.lr > 0, f"lr: must be positive, not {self.lr}"),
            (0 <= self.dropout < 1, f"dropout: must be in [0, 1), not {self.dropout}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing: must be in [0, 1), not {self.label_smoothing}"),
            (self.freeze is None or self.freeze >= 0, f"freeze: must be 0 or more, not {self.freeze}"),
            (not (self.trunk and self.freeze), "freeze: a --trunk is frozen whole; leave freeze out"),
            (0 < self.val_split < 1, f"val_split: must be between 0 and 1, not {self.val_split}"),
            (self.input_size is None or 8 <= self.input_size <= 4096,
             f"input_size: must be between 8 and 4096 pixels, not {self.input_size}"),
            (self.patience is None or self.patience >= 1, f"patience: must be at least 1, not {self.patience}"),
            (self.workers is None or self.workers >= 0, f"workers: must be 0 or more, not {self.workers}"),
            (self.devices >= 1, f"devices: must be at least 1, not {self.devices}"),
            (self.num_nodes >= 1, f"num_nodes: must be at least 1, not {self.num_nodes}"),
            (self.accumulate >= 1, f"accumulate: must be at least 1, not {self.accumulate}"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.freeze is None and not self.preset_decides_freeze:
            self.freeze = 0  # not given: nothing frozen
        self.loggers  # noqa: B018  (checks the names)
        from cnnapps.backbones.registry import explicit_settings

        self.backbone_kwargs = explicit_settings(self.backbone, self.weights, dict(self.backbone_kwargs or {}))
        return self

    @property
    def preset_decides_freeze(self) -> bool:
        """Whether a freeze not given is left to a preset of the task's (else it is 0: nothing frozen)."""
        return False

    @classmethod
    def settings_as_now(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """A run's saved settings as this version reads them (a task's config reads its older formats here)."""
        return settings

    @property
    def loggers(self) -> tuple[str, ...]:
        """The trackers ``logger`` names, checked: known names, and installed where they are optional."""
        names = tuple(dict.fromkeys(n.strip().lower() for n in self.logger.split(",") if n.strip()))
        if names == ("none",):
            return ()
        unknown = [n for n in names if n not in LOGGERS]
        if unknown or not names:
            raise ConfigError(f"logger: {', '.join(unknown) or 'nothing'} is not one of {', '.join(LOGGERS)} (or none)")
        import importlib.util

        for name, package in (("mlflow", "mlflow"), ("wandb", "wandb")):
            if name in names and importlib.util.find_spec(package) is None:
                raise ConfigError(f"logger: {name} is not installed (pip install {package}); leave it out of --logger")
        return names

    def default_lr(self) -> float:
        """The learning rate for one process when ``lr`` is not set."""
        return 1e-2 if self.optimizer == "sgd" else 1e-3

    @property
    def world_size(self) -> int:
        """Training processes in all: ``devices`` per node times ``num_nodes``."""
        return self.devices * self.num_nodes

    @property
    def global_batch_size(self) -> int:
        """Images per optimiser step: ``batch_size`` is per process, gradients are averaged over all of them and
        over ``accumulate`` batches."""
        return self.batch_size * self.world_size * self.accumulate

    @property
    def learning_rate(self) -> float:
        """``lr`` (or the default) scaled by the ``lr_scaling`` rule for ``world_size`` processes."""
        base = self.lr if self.lr is not None else self.default_lr()
        factor = {"none": 1.0, "linear": float(self.world_size), "sqrt": self.world_size**0.5}[self.lr_scaling]
        return base * factor

    def scaling_report(self) -> str:
        """One line on the effective batch and the learning rate rule, printed when training starts."""
        base = self.lr if self.lr is not None else self.default_lr()
        nodes = f"{self.num_nodes} node{'s' if self.num_nodes > 1 else ''}"
        batch = f"batch {self.global_batch_size} = {self.batch_size} per process x {self.devices} per node x {nodes}"
        if self.accumulate > 1:
            batch += f" x {self.accumulate} accumulated batches"
        if self.lr_scaling == "none":
            hint = f"; --lr-scaling linear would use {base * self.world_size:g}" if self.world_size > 1 else ""
            return f"{batch}; lr {base:g} (no scaling{hint})"
        return f"{batch}; lr {self.learning_rate:g} ({self.lr_scaling} scaling of {base:g} by {self.world_size})"


def fields_of(config_type: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(config_type)}


def load_config(path: str | os.PathLike | None = None, config_type: type = TrainConfig, **overrides: Any) -> Any:
    """Fields from a YAML file, then ``overrides`` (None values are ignored); unknown keys and values of the
    wrong type are errors that name the setting. With ``resume``, the settings neither gives are the run's own
    (:func:`resumed_settings`)."""
    values: dict[str, Any] = {}
    source = str(path) if path is not None else "config"
    known = fields_of(config_type)
    if path is not None:
        values.update(_read_settings(Path(path)))
        task = values.pop("task", None) if "task" not in known else None  # a run's config.yaml names its task
        values.pop(SETTINGS_FORMAT, None)
        if task is not None and task != config_type.task_name:
            raise ConfigError(f"{source}: the settings of a {task} run, not of a {config_type.task_name} one")
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(str(k) for k in set(values) - set(known))
    if unknown:
        import difflib

        hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, known, 1)) else k for k in unknown]
        raise ConfigError(f"{source}: unknown settings {', '.join(hints)}")
    if isinstance(values.get("weights"), str) and values["weights"].lower() == "none":
        values["weights"] = None
    hints = typing.get_type_hints(config_type)
    checked = {name: _checked(source, name, value, hints[name]) for name, value in values.items()}
    config = config_type(**checked)
    if config.resume:
        config = resumed_settings(config, given=set(checked))
    return config.validate()


def _read_settings(path: Path) -> dict[str, Any]:
    """The settings a YAML file holds, or a ConfigError naming the file."""
    import yaml

    try:
        loaded = load_yaml(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, not a {type(loaded).__name__}")
    return loaded


#: settings that say where a run's data lies: a --resume may give them anew (the data moved); a k-fold run's folds
#: point them at their own copies of it (OUT/fold-i/data)
_DATA_PLACES = ("data", "images", "masks", "val_data", "val_images", "val_masks")
#: settings of where and how a run runs (its folder, processes, devices, trackers), not of what it trains
HOW_IT_RUNS = frozenset({
    "out", "resume", "progress", "workers", "device", "devices", "num_nodes", "strategy", "sync_batchnorm",
    "precision", "compile", "augment_on", "logger", "mlflow_uri", "experiment",
})  # fmt: skip
#: settings a --resume may give otherwise than the run it continues: where and how it runs, how long it trains (a
#: larger epochs trains on), where its data lies (a semantic run's class list too: a list of another length does not
#: fit the checkpoint), and the loss settings a resumed classification run trains with as given (its module says
#: where they differ from the checkpoint's); every other setting changes what is trained
RESUME_MAY_CHANGE = HOW_IT_RUNS | {"epochs", "patience", *_DATA_PLACES, "classes", "class_weights", "logit_adjust"}
#: the key of a run's config.yaml that says how its settings are read (2: a freeze not given is saved as null)
SETTINGS_FORMAT = "settings_format"
#: settings of the resumption itself, never the run's: the folder it was found in, and the progress display
_OF_THE_RESUMPTION = ("out", "resume", "progress")


def resumed_settings(config: Any, given: set[str] | None = None) -> Any:
    """``config`` of a --resume, held to the settings of the run it continues (:func:`_run_settings`): the settings
    not ``given`` (None: every one is) are the run's, and one given otherwise that changes what is trained (not in
    :data:`RESUME_MAY_CHANGE`) is a ConfigError naming it with both values. The run of another task is a ConfigError
    too. A folder without the run's settings is left to the checks of its checkpoint."""
    out = Path(config.out or f"runs/{config.task_name}")
    path, settings = _run_settings(out, type(config))
    _check_task(out, settings, config.task_name)
    if isinstance(settings.get("backbone"), str):  # a run written before its trunk's settings were recorded in full
        from cnnapps.backbones.registry import file_trunk_settings

        settings["backbone_kwargs"] = file_trunk_settings(settings["backbone"], settings.get("backbone_kwargs") or {})
    known, hints = fields_of(type(config)), typing.get_type_hints(type(config))
    taken: dict[str, Any] = {}
    for name, value in settings.items():
        if name not in known or name in _OF_THE_RESUMPTION:  # a setting of an older version, or of this call
            continue
        run = _checked(str(path), name, value, hints[name])
        if given is not None and name not in given:
            taken[name] = run
        elif name not in RESUME_MAY_CHANGE and _as_saved(getattr(config, name)) != _as_saved(run):
            if run is None:  # the setting's default, as config.yaml writes it (null)
                shown = f"the default ({config.default_lr():g})" if name == "lr" else "the default"
            else:
                shown = repr(run)
            raise ConfigError(
                f"{name}: the run in {out} trains with {shown}, not {getattr(config, name)!r}; --resume keeps the "
                f"run's settings ({path}): leave {name} out, or pass another --out to train anew"
            )
    return dataclasses.replace(config, **taken) if taken else config


def _run_settings(out: Path, config_type: type) -> tuple[Path, dict[str, Any]]:
    """The settings of the run in ``out`` and the file holding them: OUT/config.yaml or, for a k-fold run of an
    older version (which wrote none beside its folds), its first fold's but where that fold's data lies; no
    settings where neither is there. Both as ``config_type`` reads them now (:meth:`TrainConfig.settings_as_now`)."""
    path = out / "config.yaml"
    if path.is_file():
        return path, config_type.settings_as_now(_read_settings(path))
    fold = out / "fold-1" / "config.yaml"
    if fold.is_file():
        settings = config_type.settings_as_now(_read_settings(fold))
        return fold, {k: v for k, v in settings.items() if k not in _DATA_PLACES}
    return path, {}


def _check_task(out: Path, settings: dict[str, Any], task: str) -> None:
    """A ConfigError when the run in ``out`` is of another task than ``task``: its settings name its task (those an
    older version wrote did so for detection runs alone; else the task of its model file's head, once it has one)."""
    ran = settings.get("task")
    if ran is None and (out / "model.safetensors").is_file():
        from cnnapps.apps.modelfile import read_model_file

        with contextlib.suppress(CnnappsError):  # a damaged model file says nothing; training writes it anew
            tasks = read_model_file(out / "model.safetensors").tasks
            ran = tasks[0] if len(tasks) == 1 else None
    if ran is not None and ran != task:
        raise ConfigError(f"{out}: holds a {ran} run, not a {task} one; resume it with `cnnapps train {ran} --resume "
                          f"--out {out}`, or pass another --out")  # fmt: skip


def _checked(source: str, name: str, value: Any, annotation: Any) -> Any:
    """``value`` as the type the field declares (YAML's "1e-3" is a string; 3 fits a float), or a ConfigError."""
    kinds = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if isinstance(value, str) and value.strip().lower() == "none" and type(None) in kinds and str not in kinds:
        value = None  # the word for None on the command line (a setting that takes no string has no other use for it)
    if value is None:
        if type(None) in kinds:
            return None
        raise ConfigError(f"{source}: {name}: a value is required")
    for kind in kinds:
        origin = typing.get_origin(kind) or kind
        if origin is bool and isinstance(value, bool):
            return value
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is float and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if origin is str and isinstance(value, str):
            return value
        if origin is dict and isinstance(value, dict):
            return value
    wanted = " or ".join(_type_word(k) for k in kinds if k is not type(None))
    raise ConfigError(f"{source}: {name}: expected {wanted}, not {value!r}")


def _type_word(kind: Any) -> str:
    origin = typing.get_origin(kind) or kind
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}.get(
        origin, getattr(origin, "__name__", str(origin))
    )


#: what a k-fold run leaves in its folder (its plan, its summary, its folds): a run of one model is not written there
KFOLD_TRACES = ("kfold-plan.json", "kfold.json", "fold-*")
#: settings a --resume may give anew for a run of one model but not for a k-fold run's next folds: the folds are
#: averaged as one recipe (the finished ones trained with the run's)
FOLDS_ALIKE = ("epochs", "patience", "class_weights", "logit_adjust")


def check_run_folder(config: TrainConfig) -> Path:
    """The run folder, refusing to overwrite an earlier run (a k-fold one's too) unless resuming it; returns
    last.ckpt's path."""
    out = check_out_folder(config.out)
    check_out_outside_data(config, out)
    last = out / "checkpoints" / "last.ckpt"
    kfold = any(next(out.glob(pattern), None) for pattern in KFOLD_TRACES)
    if config.resume and not last.is_file():
        more = "; a k-fold run resumes with --kfold K" if kfold else ""
        raise CnnappsError(f"{out}: nothing to resume (no checkpoints/last.ckpt){more}")
    if not config.resume and ((out / "model.safetensors").exists() or last.exists() or kfold):
        raise CnnappsError(f"{out}: already holds a training run; pass another --out, or --resume to continue it")
    return last


def check_out_outside_data(config: Any, out: Path) -> None:
    """Refuse a run folder that is, or lies inside, a folder of the run's images (:data:`_DATA_PLACES`): its
    curves, confusion matrix and checkpoints would be read as images of a class, or stop the next run."""
    where = out.resolve()
    for name in _DATA_PLACES:
        place = getattr(config, name, None)
        if not place or not Path(place).is_dir():
            continue
        folder = Path(place).resolve()
        if where == folder or folder in where.parents:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"--out {config.out}: lies inside {flag} {place}, whose images the run reads (its "
                              f"files would be read as images); pass an --out outside it")  # fmt: skip


def check_folds_alike(config: TrainConfig) -> None:
    """A --resume of a k-fold run given a :data:`FOLDS_ALIKE` setting otherwise than the run's (its config.yaml) is a
    ConfigError naming both: its next folds would train another recipe than its finished ones, averaged together."""
    out = Path(config.out)
    path, settings = _run_settings(out, type(config))
    hints = typing.get_type_hints(type(config))
    for name in FOLDS_ALIKE:
        if name not in settings or name not in hints:
            continue
        run = _checked(str(path), name, settings[name], hints[name])
        if _as_saved(getattr(config, name)) != _as_saved(run):
            raise ConfigError(
                f"{name}: the k-fold run in {out} trains every fold with {run!r}, not {getattr(config, name)!r} (its "
                f"folds are averaged as one recipe); resume with {run!r}, or start another --out"
            )


def check_out_folder(out: str | os.PathLike) -> Path:
    """``out`` as a run folder's path, refusing one that is a file (or lies under a file)."""
    from cnnapps.terminal import output_folder

    return output_folder(Path(out), "--out")


def write_config(config: Any, path: Path) -> None:
    import yaml

    from cnnapps.files import atomic_write

    # the task: a --resume of another is refused; the format: how this version's settings are read back
    settings = {"task": config.task_name, SETTINGS_FORMAT: 2, **dataclasses.asdict(config)}
    atomic_write(path, yaml.safe_dump(_as_saved(settings), sort_keys=False).encode(), overwrite=True)


def _as_saved(value: Any) -> Any:
    """``value`` as config.yaml holds it: paths as text, tuples as lists, in dicts and lists too."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {k: _as_saved(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_saved(v) for v in value]
    return value
