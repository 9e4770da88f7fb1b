"""``cnnapps tune TASK``: hyper-parameter search (Optuna) over a task's training settings, registered on the main
command. Optuna, torch and Lightning are imported only when a search runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from cnnapps.apps.tasks import TASKS
from cnnapps.cli import app
from cnnapps.terminal import console, echo_json


@app.command("tune")
def tune(
    task: str = typer.Argument(..., metavar="TASK", help=f"What to train: {', '.join(TASKS)}."),
    config: Path = typer.Option(None, "--config", help="The base recipe (YAML) each trial starts from."),
    data: str = typer.Option(None, "--data", help="The training data, if the recipe does not name it."),
    trials: int = typer.Option(20, "--trials", help="Trials in the study (with --resume: in all)."),
    timeout: float = typer.Option(None, "--timeout", metavar="S", help="Stop starting trials after S seconds."),
    space: Path = typer.Option(
        None,
        "--space",
        help="YAML of setting -> {low, high, log} or a list of choices; replaces the default space (lr, "
        "weight_decay, batch_size, augment, label_smoothing, dropout, freeze, llrd where the task has them).",
    ),
    epochs: int = typer.Option(None, "--epochs", help="Epochs per trial [default: the recipe's]."),
    out: Path = typer.Option(Path("runs/tune"), "--out", help="Study folder: trial-N/, study.jsonl, best.yaml."),
    resume: bool = typer.Option(False, "--resume", help="Continue the study in --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the trials and the best settings as JSON."),
) -> None:
    """Search training settings with Optuna (TPE, pruning).

    Median pruning stops a trial whose epoch score falls below the median of earlier trials at that epoch.

    Each trial is a short run in OUT/trial-N; the study is kept in OUT/study.jsonl (--resume continues it); the best
    settings are written to OUT/best.yaml, a recipe for `cnnapps train TASK --config OUT/best.yaml`."""
    from cnnapps.apps.common.config import load_config
    from cnnapps.apps.tasks import get_task

    record = get_task(task)
    config_type = record.part("config")
    values = {"data": data, "progress": False}
    if "task" in {f.name for f in dataclasses.fields(config_type)}:  # one config type serves several tasks
        values["task"] = record.name
    base = load_config(config, config_type, **values)
    from cnnapps.apps.common.tune import read_space
    from cnnapps.apps.common.tune import tune as run_tune

    dims = read_space(space, config_type) if space is not None else None
    result = run_tune(record.name, base, trials, out, timeout=timeout, space=dims, epochs=epochs, resume=resume)
    if as_json:
        echo_json(result)
        return
    from rich.table import Table

    names = sorted({k for row in result["trials"] for k in row["params"]})
    table = Table(title=f"cnnapps tune {task}: {len(result['trials'])} trials, {result['metric']} (higher is better)")
    for column in ("trial", "state", result["metric"], *names, "seconds"):
        table.add_column(column, justify="right")
    for row in result["trials"]:
        value = f"{row['value']:.4f}" if row["value"] is not None else ""
        params = [_shown(row["params"].get(n)) for n in names]
        table.add_row(str(row["trial"]), row["state"], value, *params, str(row["seconds"] or ""))
    console().print(table)
    best = result["best"]
    console().print(
        f"best: trial {best['trial']}, {result['metric']} {best['value']:.4f}\n"
        f"wrote {result['best_yaml']}: cnnapps train {task} --config {result['best_yaml']}"
    )


def _shown(value: object) -> str:
    if value is None:
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
