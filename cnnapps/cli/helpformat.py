"""Help pages in the usual command-line shape: arguments written as ``NAME`` or ``NAME...`` in capitals (not typer's
``{name}`` and ``<list[str]>``), options that repeat shown with the type of one value."""

from __future__ import annotations

from typing import Any


def _argument_name(param: Any) -> str:
    name = param.metavar or param.name.upper()
    if param.nargs != 1 and not name.endswith("..."):
        name += "..."
    return name


def _usage_name(param: Any) -> str:
    name = _argument_name(param)
    return name if param.required else f"[{name}]"


def _option_type(original: Any) -> Any:
    def display_type(param: Any, ctx: Any) -> str:
        shown = original(param, ctx)
        # a repeatable option takes one value each time it is given: show that value's type
        if shown.startswith("<list[") and shown.endswith("]>"):
            return f"<{shown[6:-2]}>"
        return shown

    return display_type


def plain_help() -> None:
    """Install the shapes above on typer's parameter classes (once; help output only, parsing is untouched)."""
    from typer.core import TyperArgument, TyperOption

    if getattr(TyperArgument, "_cnnapps_help", False):
        return
    TyperArgument._usage_display_name = _usage_name
    TyperArgument._rich_display_name = _argument_name
    TyperArgument.display_type_rich = lambda self, ctx: None  # an argument's help says what it takes
    TyperOption.display_type = _option_type(TyperOption.display_type)
    TyperArgument._cnnapps_help = True
