"""Hyper-parameter search over any task's training settings with Optuna (``cnnapps tune TASK``).

A TPE sampler proposes settings, each trial is a short training run in DIR/trial-N, and a median pruner stops
trials whose per-epoch validation score falls below the median of earlier trials at the same epoch (the
:class:`PruneOnEpoch` callback reports each epoch to the trial). The study lives in DIR/study.jsonl (Optuna's
journal file, JSON lines), so ``resume`` continues it; the best settings are written as a recipe, DIR/best.yaml,
that ``cnnapps train TASK --config DIR/best.yaml`` reads.

The search space is made from the task's config dataclass: the fields below that it has and shows on the command
line; a space file (YAML: field -> {low, high, log} or a list of choices) replaces it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import typing
from pathlib import Path
from typing import Any

import lightning as L
import torch

from cnnapps.apps.common.config import HOW_IT_RUNS, ConfigError, TrainConfig, check_out_folder, fields_of
from cnnapps.errors import CnnappsError, Interrupted
from cnnapps.terminal import plural
from cnnapps.yamltext import load_yaml

log = logging.getLogger("cnnapps")

STUDY_NAME = "cnnapps-tune"
#: the study's user attribute that records the space it searches (setting -> Optuna distribution, as JSON)
SPACE_ATTR = "cnnapps_space"
#: the study's user attribute that records the base recipe its trials share (setting -> value, as JSON)
BASE_ATTR = "cnnapps_base"
#: what fails one trial but not the search: settings the task refuses, a batch too large for the GPU
FAILURES: tuple[type[BaseException], ...] = (CnnappsError, torch.cuda.OutOfMemoryError)


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched setting: a range (``low``..``high``, on a log scale when ``log``) or a list of ``choices``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    integer: bool = False

    def suggest(self, trial: Any) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def distribution(self) -> Any:
        """The Optuna distribution :meth:`suggest` draws from (what the study records for each trial)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices:
            return CategoricalDistribution(list(self.choices))
        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(self.low, self.high, log=self.log)

    def contains(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.choices:
            return f"{self.name} in {{{', '.join(str(c) for c in self.choices)}}}"
        return f"{self.name} {self.low:g}..{self.high:g}{' (log)' if self.log else ''}"


def _searchable(config_type: type) -> dict[str, dataclasses.Field]:
    """The fields a user can set on the command line (fields kept to YAML are not the task's to tune)."""
    return {n: f for n, f in fields_of(config_type).items() if f.metadata.get("cli", True)}


def default_space(base: TrainConfig) -> list[Dimension]:
    """The search space for ``base``'s task: lr (log, a decade either side of the optimiser's default), weight
    decay (log), batch size (half, as given, double), the augmentation presets, label smoothing, dropout, freeze
    and llrd, where the config has them and the base recipe leaves them free (no trunk, no small-data preset)."""
    fields = _searchable(type(base))
    lr = base.lr if base.lr is not None else base.default_lr()
    space = [Dimension("lr", lr / 10, lr * 10, log=True), Dimension("weight_decay", 1e-6, 1e-2, log=True)]
    space.append(Dimension("batch_size", choices=tuple(sorted({max(1, base.batch_size // 2), base.batch_size,
                                                                 base.batch_size * 2}))))  # fmt: skip
    if "augment" in fields and fields["augment"].metadata.get("choices"):
        space.append(Dimension("augment", choices=tuple(fields["augment"].metadata["choices"])))
    space += [Dimension("label_smoothing", 0.0, 0.2), Dimension("dropout", 0.0, 0.5)]
    trunk_free = not getattr(base, "trunk", None) and getattr(base, "preset", "none") == "none"
    if trunk_free:
        space.append(Dimension("freeze", 0, 2, integer=True))
        space.append(Dimension("llrd", 0.5, 1.0))
    return [d for d in space if d.name in fields]


def read_space(path: str | Path, config_type: type) -> list[Dimension]:
    """A space file: ``field: {low: .., high: .., log: true}`` or ``field: [choice, ...]`` per searched setting;
    unknown fields and bad ranges are errors naming the setting."""
    import difflib

    import yaml

    try:
        loaded = load_yaml(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such space file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read it as YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, dict) or not loaded:
        raise ConfigError(f"{path}: expected a mapping of setting -> {{low, high, log}} or a list of choices")
    fields = _searchable(config_type)
    hints = typing.get_type_hints(config_type)
    space = []
    for name, spec in loaded.items():
        where = f"{path}: {name}"
        if name in HOW_IT_RUNS:
            raise ConfigError(f"{where}: where and how the trials run (the same for every trial), not a setting to "
                              "search")  # fmt: skip
        if name not in fields:
            close = difflib.get_close_matches(str(name), fields, 1)
            raise ConfigError(f"{where}: not a setting of this task{f' (did you mean {close[0]}?)' if close else ''}")
        kinds = typing.get_args(hints[name]) or (hints[name],)
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{where}: an empty list of choices")
            space.append(Dimension(name, choices=tuple(spec)))
            continue
        if not isinstance(spec, dict) or set(spec) - {"low", "high", "log"} or not {"low", "high"} <= set(spec):
            raise ConfigError(f"{where}: expected {{low, high}} (and log: true) or a list of choices, not {spec!r}")
        low, high, log_scale = spec["low"], spec["high"], spec.get("log", False)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
            raise ConfigError(f"{where}: low and high must be numbers, not {low!r} and {high!r}")
        if int not in kinds and float not in kinds:
            raise ConfigError(f"{where}: not a number setting; give a list of choices")
        if low >= high:
            raise ConfigError(f"{where}: low ({low}) must be below high ({high})")
        if log_scale is not True and log_scale is not False:
            raise ConfigError(f"{where}: log must be true or false, not {log_scale!r}")
        if log_scale and low <= 0:
            raise ConfigError(f"{where}: a log range must start above 0, not at {low}")
        integer = float not in kinds
        if integer and not (float(low).is_integer() and float(high).is_integer()):
            raise ConfigError(f"{where}: an integer setting takes whole low and high, not {low} and {high}")
        space.append(Dimension(name, float(low), float(high), log=log_scale, integer=integer))
    return space


class PruneOnEpoch(L.Callback):
    """Reports the epoch's ``metric`` (from the module's history) to an Optuna trial and stops the run, raising
    ``optuna.TrialPruned``, when the trial's pruner says so."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:  # after the epoch's validation
        history = getattr(module, "history", None)
        if not history or history[-1].get(self.metric) is None:
            return
        epoch, value = history[-1]["epoch"], float(history[-1][self.metric])
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            import optuna

            raise optuna.TrialPruned(f"{self.metric} {value:.4g} at epoch {epoch}")


def check_same_space(study: Any, space: list[Dimension], out: str | Path) -> None:
    """Refuse to go on with ``study`` over another ``space`` than the one it was made with (recorded in its user
    attributes; for a study of an older version, the distributions of its trials): a base recipe with another
    batch size or lr, or another space file, gives other ranges and choices than its trials were drawn from."""
    from optuna.distributions import json_to_distribution

    recorded = study.user_attrs.get(SPACE_ATTR)
    if recorded is not None:
        before = {name: json_to_distribution(text) for name, text in recorded.items()}
    else:
        before = {}
        for trial in study.get_trials(deepcopy=False):
            before.update(trial.distributions)
        if not before:  # no trial drew anything yet: nothing to compare with
            return
    now = {d.name: d.distribution() for d in space}
    for name in [*before, *(n for n in now if n not in before)]:
        if before.get(name) != now.get(name):
            raise ConfigError(
                f"{out}: --resume: {name}: the study searched {_described(before.get(name))}, the settings now "
                f"give {_described(now.get(name))} (the base recipe or space changed); resume with the ones it "
                "was made with, or start a new study in another --out"
            )


def base_settings(base: TrainConfig, space: list[Dimension], epochs: int | None) -> dict[str, Any]:
    """What every trial of a study trains with: ``base``'s settings (``epochs`` where given) but the searched ones
    and those of where and how a run runs, as JSON holds them."""
    from cnnapps.apps.common.config import HOW_IT_RUNS, _as_saved

    searched = {d.name for d in space}
    settings = dataclasses.asdict(dataclasses.replace(base, epochs=epochs) if epochs else base)
    kept = {k: v for k, v in settings.items() if k not in searched and k not in HOW_IT_RUNS}
    return json.loads(json.dumps(_as_saved(kept)))


def check_same_base(study: Any, settings: dict[str, Any], out: str | Path) -> None:
    """Refuse to go on with ``study`` from another base recipe (other data, task options or epochs) than its trials
    ran with: their scores and the new ones could not be compared. A study of an older version records none."""
    recorded = study.user_attrs.get(BASE_ATTR) or {}
    for name, before in recorded.items():
        if name in settings and settings[name] != before:
            raise ConfigError(
                f"{out}: --resume: {name}: the study's trials ran with {before!r}, the settings now give "
                f"{settings[name]!r} (the base recipe changed); resume with the one it was made with, or start a "
                "new study in another --out"
            )


def _described(distribution: Any) -> str:
    """A space's range or list of choices as the run header shows it."""
    if distribution is None:
        return "nothing (not searched)"
    if hasattr(distribution, "choices"):
        return f"{{{', '.join(str(c) for c in distribution.choices)}}}"
    return f"{distribution.low:g}..{distribution.high:g}{' (log)' if distribution.log else ''}"


def apply(base: TrainConfig, values: dict[str, Any], out: str | Path) -> TrainConfig:
    """``base`` with the trial's ``values`` (each checked against its field's type) and run folder, validated."""
    from cnnapps.apps.common.config import _checked

    hints = typing.get_type_hints(type(base))
    checked = {name: _checked("space", name, value, hints[name]) for name, value in values.items()}
    return dataclasses.replace(base, **checked, out=str(out), resume=False).validate()


def tune(
    task_name: str,
    base: TrainConfig,
    trials: int,
    out: str | Path,
    *,
    timeout: float | None = None,
    space: list[Dimension] | None = None,
    epochs: int | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Search ``space`` (default: :func:`default_space`) with ``trials`` short runs of ``base`` (``epochs`` each,
    default the base's) in ``out``/trial-N; writes ``out``/best.yaml and ``out``/trials.json and returns
    ``{"metric", "best", "trials", "best_yaml"}``. With ``resume``, the study in ``out``/study.jsonl continues
    until it holds ``trials`` finished trials."""
    import optuna
    from optuna.distributions import distribution_to_json

    from cnnapps.apps.common.training import extra_callbacks
    from cnnapps.apps.tasks import get_task

    task = get_task(task_name)
    if trials < 1:
        raise ConfigError(f"trials: must be at least 1, not {trials}")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"timeout: must be positive seconds, not {timeout}")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"epochs: must be at least 1, not {epochs}")
    base = base.validate()
    if base.world_size > 1:
        raise ConfigError("tune: trials run one after another in one process; leave devices and num_nodes at 1")
    space = default_space(base) if space is None else space
    if not space:
        raise ConfigError(f"space: {task_name} has no training settings to search; give --space FILE.yaml")
    out = check_out_folder(out)
    for dimension in space:  # every choice and both ends of a range, as a trial would take them: here, not a trial
        values = dimension.choices or (dimension.low, dimension.high)  # failing after others ran, or every trial
        for value in values:
            value = int(value) if dimension.integer else value
            try:
                apply(base, {dimension.name: value}, out)
            except ConfigError as exc:
                raise ConfigError(f"space: {dimension.name} {value!r} is refused ({exc})") from None
    journal = out / "study.jsonl"
    if journal.exists() and not resume:
        raise CnnappsError(f"{out}: already holds a study; pass another --out, or --resume to continue it")
    if resume and not journal.exists():
        raise CnnappsError(f"{out}: nothing to resume (no study.jsonl)")
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own line per trial instead
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(journal)))  # a text file: no database to set up
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    try:  # read, not created again (creating writes to the journal even when the study is there)
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage, pruner=pruner) if resume else None
    except KeyError:  # a journal the stopped run had not written its study to yet
        study = None
    settings = base_settings(base, space, epochs)
    if study is not None:  # checked before anything in the study changes
        check_same_space(study, space, out)
        check_same_base(study, settings, out)
    else:
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage, load_if_exists=True,
                                    direction="maximize", pruner=pruner)  # fmt: skip
    if SPACE_ATTR not in study.user_attrs:  # a new study, or one of an older version (its trials agreed)
        study.set_user_attr(SPACE_ATTR, {d.name: distribution_to_json(d.distribution()) for d in space})
    if BASE_ATTR not in study.user_attrs:
        study.set_user_attr(BASE_ATTR, settings)
    # a resumed study draws on from where it stopped instead of proposing its first trials again
    study.sampler = optuna.samplers.TPESampler(seed=base.seed + len(study.trials))
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for cut in [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]:  # a run stopped mid-trial
        study.tell(cut.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(cut.params)  # its settings run again, first
        log.info("trial %d was cut short by the run that stopped: failed, and its settings run again", cut.number)
    left = trials - len([t for t in study.trials if t.state in finished])
    log.info("tuning %s: %s; %d trials (%d to run) in %s", task_name, "; ".join(d.describe() for d in space),
             trials, max(0, left), out)  # fmt: skip
    metric_box: dict[str, str] = {}

    def objective(trial: Any) -> float:
        values = {d.name: d.suggest(trial) for d in space}
        config = apply(base, {**values, "progress": False, **({"epochs": epochs} if epochs else {})},
                       out / f"trial-{trial.number}")  # fmt: skip
        shown = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        done = sum(t.state in finished for t in study.get_trials(deepcopy=False))
        log.info("trial %d (%d of %d): %s", trial.number, done + 1, trials, shown)
        started = time.perf_counter()

        def pruning(plan: Any) -> Any:
            metric_box["metric"] = plan.best
            return PruneOnEpoch(trial, plan.best)

        try:
            with extra_callbacks(pruning):
                metrics = task.part("train")(config)
        except optuna.TrialPruned as exc:
            log.info("trial %d pruned: %s (%.0f s)", trial.number, exc, time.perf_counter() - started)
            raise
        except Interrupted as exc:  # the search's own words: a resume runs the trial's settings again, from the start
            said = f"{out}: the search stopped by {exc.signal_name} in trial {trial.number}; the same command with " \
                   "--resume continues it (that trial's settings run again)"  # fmt: skip
            raise Interrupted(said if exc.message else "", exc.signal_name) from None
        except FAILURES as exc:  # recorded as failed; the search goes on
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("trial %d failed: %s", trial.number, why)
            raise
        selected = metrics["selected_by"]
        value = selected["value"]
        if value is None or math.isnan(value):
            raise CnnappsError(f"trial {trial.number}: no {selected['metric']} to compare")
        trial.set_user_attr("metric", selected["metric"])
        log.info("trial %d: %s %.4f (%.0f s)", trial.number, selected["metric"], value, time.perf_counter() - started)
        return float(value)

    if left > 0:
        study.optimize(objective, n_trials=left, timeout=timeout, catch=FAILURES)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    rows = [{"trial": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
             "seconds": round(t.duration.total_seconds(), 1) if t.duration else None}
            for t in study.trials]  # fmt: skip
    metric = metric_box.get("metric") or next((t.user_attrs["metric"] for t in complete), "score")
    _write(out / "trials.json", json.dumps({"metric": metric, "trials": rows}, indent=2, default=str))
    if not complete:
        raise CnnappsError(f"{out}: no trial finished (see trials.json); widen the space or raise --trials")
    best = study.best_trial
    recipe = apply(base, best.params, out / "best")
    searched = epochs or base.epochs
    longer = f"; this recipe trains {plural(recipe.epochs, 'epoch')}" if recipe.epochs != searched else ""
    _write_recipe(recipe, best.params, out / "best.yaml",
                  f"best of {len(complete)} finished trials of `cnnapps tune {task_name}`: trial {best.number}, "
                  f"{metric} {best.value:.4f} after {plural(searched, 'epoch')}{longer}")  # fmt: skip
    return {"metric": metric, "best": {"trial": best.number, "value": best.value, "params": best.params},
            "trials": rows, "best_yaml": str(out / "best.yaml")}  # fmt: skip


def _write(path: Path, text: str) -> Path:
    from cnnapps.files import atomic_write

    return atomic_write(path, text.encode(), overwrite=True)


def _write_recipe(config: TrainConfig, tuned: dict[str, Any], path: Path, comment: str) -> None:
    """The settings that differ from the task's defaults, the tuned ones, data and out, as a YAML recipe."""
    import yaml

    defaults = {
        f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        for f in dataclasses.fields(config)
    }
    values = dataclasses.asdict(config)
    kept = {k: v for k, v in values.items() if k in tuned or k in ("data", "out") or defaults.get(k, v) != v}
    kept = {k: v for k, v in kept.items() if k not in ("progress", "resume")}
    _write(path, f"# {comment}\n" + yaml.safe_dump(kept, sort_keys=False))
