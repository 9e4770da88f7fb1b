"""Writing output files safely: one atomic-write helper for images, model files, exports and metrics.

Base layer: imports nothing from the apps.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from cnnapps.errors import CnnappsError


class OutputExistsError(CnnappsError, FileExistsError):
    """An output path that already exists and may not be replaced; the message names it (and ``kept``, where what
    was written went when the name was taken while it was being written)."""

    def __init__(self, path: str | os.PathLike, kept: str | os.PathLike | None = None) -> None:
        self.path = os.fspath(path)
        self.kept = os.fspath(kept) if kept is not None else None
        if self.kept is None:
            super().__init__(f"{self.path}: already exists; choose another output path")
        else:
            super().__init__(f"{self.path}: another file took this name while it was written; what was written is "
                             f"kept in {self.kept}")  # fmt: skip

    def __str__(self) -> str:  # FileExistsError would print its errno tuple
        return str(self.args[0])


def atomic_write(
    path: str | os.PathLike,
    data: bytes | bytearray | memoryview | Callable[[Path], object],
    *,
    overwrite: bool = False,
    mode: int = 0o644,
) -> Path:
    """Write ``path`` all at once: readers see the old file or the complete new one, never a part.

    ``data`` is the file's bytes, or a function that writes the file at the temporary path it is given
    (for libraries that save to a path themselves). The temporary file is created next to ``path`` with
    an unpredictable name and ``O_EXCL`` (``tempfile.mkstemp``), so a planted file or symlink is never
    followed; it is removed if anything fails (a full disk leaves no partial file behind), then renamed
    into place (:func:`publish`). An existing ``path`` is refused with :class:`OutputExistsError` unless
    ``overwrite=True``; a symlink at ``path`` is then replaced, never written through. The file gets ``mode``
    less the process umask (0644 under the usual umask 022). Missing parent folders are created (:func:`made_folder`:
    one that cannot be is a one-line error, as is a folder this process may not write in). Returns ``path``.
    """
    path = Path(path)
    if not overwrite and os.path.lexists(path):
        raise OutputExistsError(path)
    made_folder(path.parent, path)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # a folder this process may not write in: the output's fault, not the program's
        raise CnnappsError(f"{path}: cannot be written in {path.parent} ({exc.strerror or exc})") from None
    tmp = Path(tmp_name)
    try:
        if callable(data):
            os.close(fd)
            fd = -1
            data(tmp)
            _sync_file(tmp)  # the writer may have replaced the file: sync what is there now
        else:
            with os.fdopen(fd, "wb") as fh:
                fd = -1
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode & ~current_umask())
        if overwrite:
            os.replace(tmp, path)
        else:
            publish(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _sync_folder(path.parent)
    return path


def why_unwritable(path: str | os.PathLike, folder: bool = False) -> str | None:
    """Why the output ``path`` (a file, or with ``folder`` a folder to write into) cannot be written, or None: a file
    where it or one of its folders should be, or the nearest folder that exists not writable. Asked before any work,
    so that a run does not end by failing to write what it found."""
    path = Path(path)
    chain = (path, *path.parents) if folder else path.parents
    existing = next((p for p in chain if p.exists()), None)
    if existing is None:
        return None
    if not existing.is_dir():
        return "a file, not a folder" if existing == path else f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return "not writable" if existing == path else f"{existing} is not writable"
    return None


def made_folder(folder: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """``folder`` with its missing parents made; one that cannot be made is a one-line :class:`CnnappsError` naming
    ``output`` (what was to be written there; default: the folder), not a traceback after the work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = why_unwritable(folder, folder=True) or exc.strerror or str(exc)
        if output is None:
            raise CnnappsError(f"{folder}: cannot make this folder ({why})") from None
        raise CnnappsError(f"{output}: cannot make its folder {folder} ({why})") from None
    return folder


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Move the finished file ``tmp`` (written beside ``path``) to ``path``, never replacing what took that name
    while it was written: then it goes to the first free ``name-N.suffix`` beside ``path`` instead, and
    :class:`OutputExistsError` names both (nothing the user had is replaced, and nothing written is lost)."""
    from cnnapps.terminal import free_name

    tmp, path = Path(tmp), Path(path)
    if moved_if_free(tmp, path):
        return path
    while not moved_if_free(tmp, kept := free_name(path.parent, path.stem, path.suffix)):
        pass  # taken between the look and the link: the next free name
    raise OutputExistsError(path, kept)


def moved_if_free(tmp: Path, path: Path) -> bool:
    """``tmp`` renamed to ``path`` if nothing is there (True), else left as it is (False)."""
    try:
        os.link(tmp, path)  # fails if anything (a file, a symlink) took the name meanwhile
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: check, then rename (a narrow race remains)
        if os.path.lexists(path):
            return False
        os.replace(tmp, path)
        return True
    tmp.unlink()
    return True


def _sync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_folder(folder: Path) -> None:
    """Make the rename durable; best effort (some file systems cannot open or sync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux), else swapped under a lock."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask
