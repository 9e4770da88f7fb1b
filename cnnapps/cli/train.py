"""``cnnapps train <task>``: one command per task of the table, its options made from the task's config dataclass.

Each field of the dataclass (with its help text, choices and panel in the field's metadata) becomes an option
named after it (``batch_size`` -> ``--batch-size``); ``--config FILE.yaml`` reads a recipe and the options given
override it. Nothing here declares a training option by hand.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Any, Optional

import typer

from cnnapps.terminal import console, echo_json

#: options every train command takes besides the config's fields
_CONFIG = inspect.Parameter(
    "config",
    inspect.Parameter.KEYWORD_ONLY,
    default=typer.Option(None, "--config", help="YAML recipe (configs/<task>/*.yaml); options given override it."),
    annotation=Optional[Path],  # noqa: UP045  (typer reads the annotation at run time)
)
_JSON = inspect.Parameter(
    "as_json",
    inspect.Parameter.KEYWORD_ONLY,
    default=typer.Option(False, "--json", help="Print the final metrics as JSON."),
    annotation=bool,
)
_KFOLD = inspect.Parameter(
    "kfold",
    inspect.Parameter.KEYWORD_ONLY,
    default=typer.Option(
        None,
        "--kfold",
        metavar="K",
        help="k-fold cross-validation: K runs on stratified folds of all the images (training and validation "
        "sets pooled), "
        "in OUT/fold-i; the summary (mean and std) in OUT/kfold.json, the best fold's model as OUT/model.safetensors.",
    ),
    annotation=Optional[int],  # noqa: UP045
)


def _option(f: dataclasses.Field, kind: Any, config_type: type) -> inspect.Parameter:
    """The typer option of one config field: ``--name`` (a flag for booleans), help with the default."""
    base = next((k for k in typing.get_args(kind) if k is not type(None)), kind)
    flag = "--" + f.name.replace("_", "-")
    default = f.default if f.default is not dataclasses.MISSING else None
    text = f.metadata.get("help", "")
    if base is bool:
        decls = [flag] if default is False else [f"{flag}/--no-{flag[2:]}"]
    else:
        decls = [flag]
        if default not in (None, "") and "[default:" not in text:
            text = f"{text} [default: {default}]"
    # a number that may be None takes the word none too (as a YAML null): embedding_size defaults to 128, not None
    parser = _number_or_none(base) if base in (int, float) and type(None) in typing.get_args(kind) else None
    option = typer.Option(None, *decls, help=text, rich_help_panel=f.metadata.get("panel"), show_default=False,
                          parser=parser)  # fmt: skip
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=Optional[base])  # noqa: UP045


def _number_or_none(kind: type) -> Any:
    """The parser of a number option whose setting may be None: ``none`` is passed on as the word (load_config reads
    it as None; an option left out is None here, which keeps the recipe's value or the default)."""

    def parse(text: str) -> Any:
        if text.strip().lower() == "none":
            return "none"
        try:
            return kind(text)
        except ValueError:
            word = "an integer" if kind is int else "a number"
            raise typer.BadParameter(f"expected {word} or none, not {text!r}") from None

    return parse


def train_command(task: Any) -> Any:
    """The ``cnnapps train <task>`` command of a task record."""
    config_type = task.part("config")
    hints = typing.get_type_hints(config_type)
    fields = [f for f in dataclasses.fields(config_type) if f.metadata.get("cli", True)]
    params = [_option(f, hints[f.name], config_type) for f in fields]

    def command(**values: Any) -> None:
        from cnnapps.apps.common.config import check_run_folder, load_config

        path, as_json, kfold = values.pop("config"), values.pop("as_json"), values.pop("kfold", None)
        if "task" in {f.name for f in dataclasses.fields(config_type)}:
            values["task"] = task.name  # one config type serves several tasks (detect, segment, pose)
        if as_json:
            values["progress"] = False  # a progress bar would mix with the JSON on stdout
        config = load_config(path, config_type, **values)
        if kfold is not None:
            _cross_validate(task.name, config, kfold, as_json)
            return
        check_run_folder(config)  # before the training code (and torch) is imported: an existing run fails at once
        metrics = task.part("train")(config)
        if metrics.get("global_rank"):  # another process of a distributed run; rank 0 reports
            return
        # the validation scores (counts such as val_images are not scores)
        report = {k: v for k, v in metrics.items() if k.startswith("val_") and isinstance(v, float)}
        report.update({k: metrics.get(k) for k in ("epochs", "best_epoch", "train_seconds")})
        merge = metrics.get("merge")  # panoptic: the merge settings its grid chose, not epochs
        if merge:
            report["merge"] = merge
        if as_json:
            echo_json(report)
            return
        scores = ", ".join(f"{k[4:]} {v:.4f}" for k, v in report.items() if k.startswith("val_") and v is not None)
        chose = (f"merge chosen: {', '.join(f'{k} {v:g}' for k, v in merge.items())} ({metrics['train_seconds']:.0f} s)"
                 if merge else f"best epoch {metrics.get('best_epoch')} of {metrics['epochs']} "
                 f"({metrics['train_seconds']:.0f} s of training)")  # fmt: skip
        console().print(
            f"{scores}\n{chose}\n"
            + (f"{config.out}: finished before; nothing written" if metrics.get("unchanged") else
               f"wrote {config.out}/model.safetensors, metrics.json, curves.png")
        )  # fmt: skip

    extra = [_CONFIG, _JSON, *([_KFOLD] if task.folds else [])]  # --kfold where the table says how to fold
    command.__signature__ = inspect.Signature([*params, *extra])  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in [*params, *extra]}
    command.__name__ = f"train_{task.name}"
    return command


def _cross_validate(task_name: str, config: Any, k: int, as_json: bool) -> None:
    """``--kfold K``: train the folds, then print the per-fold table with the mean and std of each score."""
    from cnnapps.apps.common.kfold import cross_validate

    summary = cross_validate(task_name, config, k)
    if summary.get("global_rank"):
        return
    if as_json:
        echo_json(summary)
        return
    from rich.table import Table

    metric, folds = summary["metric"], summary["folds"]
    scores = list(summary["mean"])
    table = Table(title=f"{k}-fold cross-validation of {task_name} (best epoch of each fold by {metric})")
    for column in ("fold", *scores, "best epoch", "train", "val"):
        table.add_column(column, justify="right")
    for row in folds:
        table.add_row(str(row["fold"]), *(f"{row[s]:.4f}" for s in scores), str(row.get("best_epoch")),
                      str(row["train_images"]), str(row["val_images"]))  # fmt: skip
    table.add_row("mean ± std", *(f"{summary['mean'][s]:.4f} ± {summary['std'][s]:.4f}" for s in scores), "", "", "")
    console().print(table)
    kept = f", kept as {summary['model']}" if summary.get("model") else ""
    console().print(f"best fold {summary['best_fold']}{kept}; wrote {Path(config.out) / 'kfold.json'}")
