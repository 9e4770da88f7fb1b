"""What commands print: tables, JSON, progress, failures, and output files that never replace anything.

Base layer, shared by the front (``cnnapps.cli``) and the tasks' own commands. User text (paths, labels) is never
read as Rich markup: consoles are made with ``markup=False`` and colours are given as styles.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from cnnapps.errors import CnnappsError

# Exit codes: every input done; some failed (the others done); nothing ran (bad input to the command); an
# unexpected failure (a fault of the program, told apart from the others so that a pipeline never reads it as them).
EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR, EXIT_UNEXPECTED = 0, 1, 2, 3


def head_option(task: str) -> Any:
    """``--head NAME``: which of a model file's heads of ``task`` a command runs (a file made by ``cnnapps compose``
    may hold several of one task); its only one when not given."""
    import typer

    return typer.Option(None, "--head", help=f"The {task} head of a multi-head model file [default: its only one].")


def console(stderr: bool = False) -> Any:
    """A Rich console that prints user text as it is; pipes and CI get 120 columns so tables stay unwrapped."""
    from rich.console import Console

    made = Console(markup=False, highlight=False, stderr=stderr)
    if not made.is_terminal:
        made = Console(markup=False, highlight=False, stderr=stderr, width=max(made.width, 120))
    return made


def styled(text: str, style: str) -> Any:
    """A table cell in a colour, whatever characters ``text`` holds."""
    from rich.text import Text

    return Text(text, style=style)


def json_safe(data: Any) -> Any:
    """``data`` with NaN and infinities as null: JSON has no NaN, and strict parsers refuse it."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


def echo_json(data: Any) -> None:
    """Print ``data`` as valid JSON on stdout (NaN as null; file names that are not UTF-8 escaped, not lost)."""
    print(json.dumps(json_safe(data), indent=2, allow_nan=False, ensure_ascii=_surrogates(data)))


def _surrogates(data: Any) -> bool:
    """Whether ``data`` holds a string with undecodable bytes kept as surrogates (a non-UTF-8 file name)."""
    if isinstance(data, str):
        return any("\udc80" <= ch <= "\udcff" for ch in data)
    if isinstance(data, dict):
        return any(_surrogates(k) or _surrogates(v) for k, v in data.items())
    if isinstance(data, (list, tuple)):
        return any(_surrogates(v) for v in data)
    return False


def echo(text: str = "", err: bool = False) -> None:
    """Print a line (a file name that is not UTF-8 is printed with its bytes escaped, never an error)."""
    stream = sys.stderr if err else sys.stdout
    try:
        print(text, file=stream, flush=err)
    except UnicodeEncodeError:
        print(text.encode("utf-8", "backslashreplace").decode("utf-8"), file=stream, flush=err)


@contextmanager
def progress(total: int | None, label: str, minimum: int = 16) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr for long jobs (only on a terminal); yields an ``advance(n)`` callback.
    ``total=None`` (a live stream): a count that goes on."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    err = console(stderr=True)
    if (total is not None and total < minimum) or not err.is_terminal:
        yield lambda n: None
        return
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


#: batches of images per call of a predictor in :func:`predict_images`: Ctrl-C keeps the answers of the calls done,
#: and a GPU's decode threads wait between two calls only once per this many batches
PART_BATCHES = 8

#: where :func:`predict_images` says that Ctrl-C stopped it, for the command that runs it (:func:`image_run`)
_stops: ContextVar[list[str] | None] = ContextVar("cnnapps_image_stops", default=None)


@contextmanager
def image_run() -> Iterator[list[str]]:
    """Around a command over images: yields the list :func:`predict_images` adds a line to when Ctrl-C stopped it,
    so that the command, having printed the answers so far, ends saying how far it got (exit 130)."""
    said: list[str] = []
    token = _stops.set(said)
    try:
        yield said
    finally:
        _stops.reset(token)


def predict_images(predictor: Any, inputs: list[str], label: str, minimum: int = 16, **options: Any) -> list[Any]:
    """``predictor.predict(inputs, **options)`` under a progress bar, a few batches at a time. Ctrl-C under
    :func:`image_run` returns the answers of the calls done (the command prints them as it would all) and notes
    ``stopped by Ctrl-C after N of M images``; without one, KeyboardInterrupt goes on as it came."""
    part = max(1, int(getattr(predictor, "batch_size", None) or 1)) * PART_BATCHES
    results: list[Any] = []
    with progress(len(inputs), label, minimum) as advance:
        try:
            for start in range(0, len(inputs), part):
                results += predictor.predict(inputs[start : start + part], progress=advance, **options)
        except KeyboardInterrupt:
            said = _stops.get()
            if said is None:
                raise
            said.append(f"stopped by Ctrl-C after {len(results)} of {plural(len(inputs), 'image')} (their answers "
                        "printed)")  # fmt: skip
    return results


def images(paths: list[str]) -> list[str]:
    """The image files that files, folders (recursively) and globs name. None at all is an error (exit 2): no
    path exists, every glob matches nothing, or the folders hold no image. A missing file among others is kept,
    so that it is reported as that input's failure while the rest are processed (exit 1)."""
    import os

    from cnnapps.datasets.folders import expand_inputs

    found = expand_inputs(paths)
    existing = [f for f in found if os.path.lexists(f)]
    if not existing:
        missing = [p for p in paths if not os.path.lexists(p)]
        if missing:
            what = "no file matches" if all(any(c in p for c in "*?[") for p in missing) else "no such file or folder"
            raise CnnappsError(f"{' '.join(missing)}: {what}")
        raise CnnappsError(f"{' '.join(paths)}: no images found")
    return found


def one_line(text: str) -> str:
    """``text`` with its control characters and line separators escaped as Python writes them (a newline as
    ``\\n``, ESC as ``\\x1b``): a file name holding one still prints on one line, and sends the terminal nothing."""
    import unicodedata

    return "".join(repr(ch)[1:-1] if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in text)


def report_failed(failed: list[dict[str, str]]) -> None:
    """The inputs that could not be used, one line each, on stderr."""
    if failed:
        echo(f"{plural(len(failed), 'image')} could not be read:", err=True)
        for item in failed:
            echo(one_line(f"  {item['path']}: {item['error']}"), err=True)


def free(path: Path, option: str = "--out") -> Path:
    """Refuse, before any work is done, an output path that exists (nothing the user has is overwritten) or that
    cannot be written (a file where one of its folders should be, a folder this process may not write in)."""
    from cnnapps.files import why_unwritable

    if path.exists() or path.is_symlink():
        raise CnnappsError(f"{path}: already exists; choose another {option}")
    why = why_unwritable(path)
    if why is not None:
        raise CnnappsError(f"{path}: {why}; choose another {option}")
    return path


def free_picture(path: Path, option: str = "--out") -> Path:
    """:func:`free`, and a name whose suffix a colour picture can be written as (none: PNG), asked before any work.
    Every picture a command writes (matplotlib's figures too) is written by ``write_image``, so what is accepted
    here is what is written."""
    from cnnapps.datasets.io import writes_images

    if not writes_images(path):
        raise CnnappsError(f"{option} {path}: no picture format is written as {path.suffix}; use .png or .jpg")
    if not _encodes_colour(path.suffix or ".png"):  # OpenCV's .pgm and .pbm writers take grey pictures only
        raise CnnappsError(f"{option} {path}: a colour picture cannot be written as {path.suffix}; use .png or .jpg")
    return free(path, option)


def _encodes_colour(suffix: str) -> bool:
    """Whether OpenCV encodes a small colour picture as ``suffix`` (its own complaint, if not, left unprinted)."""
    import cv2
    import numpy as np

    logging = cv2.utils.logging
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        return bool(cv2.imencode(suffix, np.zeros((64, 64, 3), np.uint8))[0])
    except cv2.error:
        return False
    finally:
        logging.setLogLevel(level)


def free_name(folder: Path, stem: str, suffix: str = ".png") -> Path:
    """``folder/stem.png``, or ``stem-1.png``, ``stem-2.png``... when that exists: nothing is overwritten."""
    path, n = folder / f"{stem}{suffix}", 0
    while path.exists() or path.is_symlink():
        n += 1
        path = folder / f"{stem}-{n}{suffix}"
    return path


def output_folder(path: Path | None, option: str) -> Path | None:
    """``path``, a folder outputs go into (made when they are written), checked before any work: a file there or
    in the way of it, or a folder this process may not write in, is refused in one line."""
    from cnnapps.files import why_unwritable

    if path is None:
        return None
    why = why_unwritable(path, folder=True)
    if why is not None:
        raise CnnappsError(f"{path}: {why}; choose another {option}")
    return path


def save_drawings(results: list[Any], folder: Path, suffix: str = "") -> None:
    """Each readable input's result drawn over its image (``result.draw``) into ``folder``, named after the input
    (plus ``suffix``), never over an existing file; one line on stderr per picture."""
    from cnnapps.datasets.io import read_image, write_image
    from cnnapps.files import made_folder

    made_folder(folder)
    for result in results:
        if result.ok:
            target = free_name(folder, f"{Path(result.source).stem}{suffix}")
            write_image(target, result.draw(read_image(result.source, max_pixels=None)))
            echo(f"wrote {target}", err=True)


def saved(path: Path, rgb: Any) -> None:
    """Write a picture (never over an existing file) and say so."""
    from cnnapps.datasets.io import write_image

    write_image(path, rgb)
    echo(f"wrote {path} ({rgb.shape[1]}x{rgb.shape[0]})")


def first_few(names: Iterable[str], shown: int = 5) -> str:
    """``a, b, c and 4 more``: the first ``shown`` of ``names`` and how many are left out, for a one-line message."""
    names = list(names)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def plural(n: int, word: str) -> str:
    """``1 image``, ``2 images``, ``1 class``, ``2 classes``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word.endswith(('s', 'x', 'sh', 'tch')) else 's'}"


#: consonant pairs that begin English words; a name beginning with another pair is said letter by letter (lstm, fpn)
_ONSETS = {"bl", "br", "ch", "cl", "cr", "dr", "fl", "fr", "gl", "gr", "kn", "ph", "pl", "pr", "sc", "sh", "sk", "sl",
           "sm", "sn", "sp", "st", "sw", "th", "tr", "tw", "wh", "wr"}  # fmt: skip


def article(word: str) -> str:
    """``word`` after "a" or "an" by its first sound: ``an orange``, ``an lstm`` (el-es-tee-em), ``a transformer``."""
    low = word.lower()
    spelled = len(low) > 1 and not set(low[:2]) & set("aeiouy") and low[:2] not in _ONSETS
    vowel = low[:1] in set("fhlmnrsx") if spelled else low[:1] in set("aeio")  # "u" as in unet: "a unet"
    return f"{'an' if vowel else 'a'} {word}"
