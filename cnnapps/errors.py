"""User-facing errors: each one says which input failed and why, in one line."""

from __future__ import annotations

from collections.abc import Iterable


class CnnappsError(Exception):
    """Base class for errors the CLI prints as one line (no traceback)."""

    exit_code = 2


class Interrupted(BaseException):
    """A run a signal stopped part way, saying what it kept (``message``, printed as it is; empty: nothing to say,
    another process says it); the command exits 128 + the signal (130 for Ctrl-C, 143 for SIGTERM), as a shell
    reports a process the signal ended. Not an ``Exception``, as ``SystemExit`` and ``KeyboardInterrupt`` are not:
    what catches errors lets it through (a hyper-parameter search does not take it for a failed trial and go on),
    and not a ``KeyboardInterrupt``, which the command-line layer turns into a silent exit 130."""

    def __init__(self, message: str, signal_name: str = "SIGINT") -> None:
        super().__init__(message)
        self.message, self.signal_name = message, signal_name

    @property
    def exit_code(self) -> int:
        import signal

        return 128 + int(getattr(signal, self.signal_name, signal.SIGINT))


class UnknownModelError(CnnappsError, KeyError):
    """A model or backbone name that is neither registered nor a timm model."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def in_one_line(exc: BaseException) -> str:
    """``"Kind: first line of the message"`` (200 characters at most): a library's own error inside a one-line one."""
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}"


def did_you_mean(name: str, known: Iterable[str], cutoff: float = 0.6) -> str:
    """``"; did you mean a, b?"`` with up to three of ``known`` closest to ``name``, or ``""`` when none is close."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=3, cutoff=cutoff)
    return f"; did you mean {', '.join(close)}?" if close else ""


def repeated_name(names: Iterable[str]) -> tuple[str, int, int] | None:
    """The first name given twice in ``names``, with its two indices (``None`` when each is given once): classes
    meet by name, so two of one name would become one class."""
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            return name, first[name], i
        first[name] = i
    return None


def none_read(failed: list[dict[str, str]]) -> CnnappsError:
    """The error of an evaluation none of whose images could be read (``failed``: each image's path and error)."""
    path, error = failed[0]["path"], failed[0]["error"]
    return CnnappsError(f"none of the {len(failed)} images could be read (the first, {path}: {error})")


class WeightsError(CnnappsError):
    """Weights could not be found, downloaded, verified or loaded."""


class WeightsUnavailableError(WeightsError):
    """No network and no cached file: the message names the file, its URL and where to put it."""


class WeightsIntegrityError(WeightsError):
    """A weights file whose sha256 does not match the expected one."""


class ImageError(CnnappsError):
    """An input that is not a usable image. Carries the input's name in ``source``."""

    reason = "unreadable image"

    def __init__(self, source: str, detail: str | None = None) -> None:
        self.source = source
        self.detail = detail or self.reason
        super().__init__(f"{source}: {self.detail}")


class ImageNotFoundError(ImageError):
    reason = "no such file"


class EmptyImageError(ImageError):
    reason = "file is empty"


class NotAnImageError(ImageError):
    reason = "not an image (expected JPEG, PNG, WebP, BMP or TIFF)"


class TruncatedImageError(ImageError):
    reason = "image data is truncated"


class ImageTooLargeError(ImageError):
    reason = "image is larger than the pixel limit"


class UnsupportedInputError(ImageError):
    reason = "unsupported input type"
