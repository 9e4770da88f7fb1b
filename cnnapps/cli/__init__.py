"""The ``cnnapps`` command: a thin layer over the Python API, one verb per task of the task table.

Importing this package loads typer and plain-data modules only; each command imports what it needs, so
``cnnapps --help`` answers without loading torch. Task commands come from the task table: each task registers its
own prediction and evaluation commands, and ``cnnapps train <task>`` is built from the task's config dataclass.
"""

from __future__ import annotations

import sys

import typer

from cnnapps import __version__
from cnnapps.apps.tasks import resolve
from cnnapps.cli.data import data_app
from cnnapps.cli.helpformat import plain_help
from cnnapps.errors import CnnappsError, Interrupted
from cnnapps.terminal import EXIT_UNEXPECTED, console, echo, echo_json, one_line, styled

plain_help()
app = typer.Typer(
    name="cnnapps",
    help="Conv backbones as working applications: classify, retrieve, detect, segment, pose, caption, semantic, "
    "panoptic.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[default: ...]" stays as written
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)

_state = {"debug": False}


def _print_version(value: bool) -> None:
    if value:
        echo(f"cnnapps {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    _state["debug"] = debug
    import logging

    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    logging.getLogger("cnnapps").setLevel(logging.INFO)
    # Lightning's banners (accelerator lines, tips) are noise here; its warnings still show.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)


@app.command()
def models(
    timm_pattern: str = typer.Option(
        None, "--timm", help="Also list timm models with pretrained weights matching PATTERN."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    engines: bool = typer.Option(
        False, "--engines", help="List the inference engines (--engine): available here, or why not."
    ),
) -> None:
    """List backbones, pretrained task models or engines.

    Each with whether its weights are bundled, cached or downloadable; with --engines, the inference engines."""
    if engines:
        if timm_pattern:
            raise CnnappsError("--engines and --timm: choose one (--engines lists engines, --timm models)")
        _engines(as_json)
        return
    from cnnapps.api import list_models

    rows = list_models(timm_pattern)
    if as_json:
        echo_json(rows)
        return
    if timm_pattern and not any(row["source"] == "timm" and row["name"].startswith("timm:") for row in rows):
        echo(f"no timm model with pretrained weights matches {timm_pattern!r} (patterns are globs: 'resnet*')",
             err=True)  # fmt: skip
    from rich.table import Table

    table = Table(title="Backbones (any timm model also works as timm:<name>) and COCO detectors")
    for column in ("name", "from", "weights", "description"):
        table.add_column(column)
    colours = {"bundled": "green", "cached": "green", "downloadable": "yellow", "none": "dim", "missing": "red"}
    for row in rows:
        state = row["weights"]["state"]
        table.add_row(row["name"], row["source"], styled(state, colours.get(state, "white")), row["description"])
    console().print(table)


def _engines(as_json: bool) -> None:
    """The inference engines, whether each can run here and why not."""
    from cnnapps.engines import list_engines

    rows = list_engines()
    if as_json:
        echo_json(rows)
        return
    from rich.table import Table

    table = Table(title="Inference engines (--engine)")
    for column in ("engine", "available", "what it runs, or why not here"):
        table.add_column(column)
    for row in rows:
        yes = styled("yes", "green") if row["available"] else styled("no", "red")
        table.add_row(row["engine"], yes, row["description"] if row["available"] else row["why_not"])
    console().print(table)


@app.command()
def summary(
    model: str = typer.Argument(..., help="Backbone name, e.g. vgg16, lenet5, timm:resnet18."),
    input_size: int = typer.Option(
        None, "--input", min=1, max=2048, help="Input side in pixels, up to 2048 (default: the model's own)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Per-layer table of a backbone: volumes, parameters, memory.

    Output volume, parameters and activations per layer; then totals and forward memory."""
    from cnnapps.backbones import create_backbone, summarize

    result = summarize(create_backbone(model, weights=None), input_size, name=model)
    if as_json:
        echo_json(result.to_dict())
        return
    from rich.table import Table

    c, h, w = result.input_size
    table = Table(title=f"{model}: {h}x{w}x{c} input")
    for column, justify in (
        ("layer", "left"),
        ("type", "left"),
        ("output volume", "right"),
        ("params", "right"),
        ("activations", "right"),
    ):
        table.add_column(column, justify=justify)
    table.add_row("input", "", f"{h}x{w}x{c}", "0", f"{result.input_activations:,}")
    for row in result.rows:
        volume = row.volume if row.activations else "-"
        table.add_row(row.name, row.kind, volume, f"{row.params:,}", f"{row.activations:,}")
    out = console()
    out.print(table)
    out.print(
        f"total params: {result.total_params:,} ({result.params_memory_mb:.3g} MB at fp32)\n"
        f"total activations: {result.total_activations:,}\n"
        f"forward memory per image: {result.forward_memory_mb:.3g} MB at fp32 (about twice that with the backward pass)"
    )


train_app = typer.Typer(help="Fine-tune a backbone (or a head on a shared trunk) for a task.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate a trained model on labelled data.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(data_app, name="data")


def _register_tasks() -> None:
    """Every task of the table: its own commands, and its ``train`` command made from its config dataclass."""
    from cnnapps.apps.tasks import TASKS
    from cnnapps.cli.train import train_command
    from cnnapps.cli.video import task_loader, with_video

    for task in TASKS.values():
        task.part("cli")(app, eval_app, task.name)
        verb = next(c for c in app.registered_commands if c.name == task.command)
        verb.callback = with_video(verb.callback, task_loader(task.name), task.trackable, task.takes)  # and video
        train_app.command(task.name, help=f"{task.summary} Train: writes model.safetensors, metrics.json, "
                          "curves.png.")(train_command(task))  # fmt: skip


_register_tasks()
eval_app.command("track")(resolve("cnnapps.apps.track.cli:eval_track"))  # tracks of any detection task
train_app.command("track")(resolve("cnnapps.apps.track.cli:train_track"))  # a detector's learned appearance
from cnnapps.cli import batch, multitask, service, tune  # noqa: E402, F401  (their commands)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: user errors print one line and exit non-zero; ``--debug`` shows the traceback
    first and keeps the exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        app(args=args, prog_name="cnnapps")
    except CnnappsError as exc:
        _traceback_if(debug)
        echo(one_line(f"error: {exc}"), err=True)  # one line, whatever the paths it names hold
        sys.exit(exc.exit_code)
    except Interrupted as exc:  # a run that says what it kept (typer makes a bare Ctrl-C a silent exit 130)
        if exc.message:
            echo(exc.message, err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # unexpected: still one line, the traceback is behind --debug
        if _traceback_if(debug):
            echo(f"error: {type(exc).__name__}: {exc}", err=True)
        else:
            echo(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        sys.exit(EXIT_UNEXPECTED)


def _traceback_if(debug: bool) -> bool:
    """Print the exception being handled with its traceback when ``--debug`` was given (or set by the callback)."""
    if not (debug or _state["debug"]):
        return False
    import traceback

    traceback.print_exc()
    return True


if __name__ == "__main__":  # pragma: no cover
    main()
