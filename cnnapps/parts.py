"""Work over many files cut into parts, each part written whole; and those parts run on a Ray cluster.

The sorted inputs are cut into parts of ``part_size`` files: part ``p`` is ``paths[p * size:(p + 1) * size]``.
A plan (the number of files, a hash of their paths, the part size and what the work is) is written once
beside the parts; a rerun with other inputs or settings is refused instead of mixing two jobs. Each part's
file appears whole (written under a temporary name, then renamed), so the parts missing after a crash, a
cancelled job or a lost machine are exactly the ones still to do: a rerun does only those.

:func:`run_on_ray` gives the missing parts to a pool of Ray actors through Ray Data (``map_batches`` with an
actor pool: each actor sets up its model once, then takes part after part). With no address it starts a Ray
cluster on this machine; ``address="auto"`` or ``"ray://host:10001"`` joins a running one, whose nodes must
see the same files (a shared file system). Ray is optional: ``pip install 'cnnapps[ray]'``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cnnapps.errors import CnnappsError
from cnnapps.files import atomic_write

#: one part's work: (part number, its paths) -> a summary of what it did (plain values: numbers, strings)
PartWork = Callable[[int, list[str]], dict[str, Any]]


def input_name(path: str | os.PathLike) -> str:
    """The name a file is planned (and indexed) under: absolute, ``.`` and ``..`` taken out (``d/../a.jpg`` is
    ``a.jpg``), symbolic links kept as named; only where a ``..`` follows a linked folder is the name resolved, to
    the file the system opens. One file named several ways is one input."""
    text = os.fsdecode(os.fspath(path))
    name = os.path.abspath(text)
    crosses_link = ".." in Path(text).parts and os.path.exists(text)
    if crosses_link and not (os.path.exists(name) and os.path.samefile(text, name)):
        return os.path.realpath(text)
    return name


def make_plan(paths: Sequence[str], part_size: int, **about: Any) -> dict[str, Any]:
    """What a set of parts belongs to: ``about`` (the model, the settings), the files (count and hash), the size."""
    if part_size < 1:
        raise CnnappsError(f"part size {part_size}: must be at least 1")
    digest = hashlib.sha256("\n".join(paths).encode("utf-8", "surrogateescape")).hexdigest()
    return {**about, "files": len(paths), "paths_sha256": digest, "part_size": part_size}


def agree_on_plan(
    file: Path, plan: dict[str, Any], error: type[CnnappsError] = CnnappsError, parts: str = "parts"
) -> None:
    """Write the plan to ``file``, or check that the one there (another rank's, an earlier run's) is the same;
    ``parts``: what the error calls the pieces of work (the folds of a cross-validation...)."""
    if not file.exists():
        with contextlib.suppress(FileExistsError):  # another process wrote it first: compare with theirs
            atomic_write(file, json.dumps(plan, indent=2).encode())
    found = json.loads(file.read_text())
    if found == plan:
        return
    newer = sorted(set(plan) - set(found))
    if newer:  # a plan an older version wrote records less (and may name the same files otherwise)
        raise error(
            f"{file.parent}: the {parts} here were started by an older version of cnnapps (its plan has no "
            f"{', '.join(newer)}); remove {file.parent} and run again"
        )
    what = [k for k in plan if found.get(k) != plan[k]] or sorted(set(found) - set(plan))
    values = "; ".join(f"{k} {_shown(found.get(k))} then, {_shown(plan.get(k))} now" for k in what)
    raise error(
        f"{file.parent}: the {parts} here were started with another {' and '.join(what)} ({values}); rerun "
        f"with the same inputs and settings, or remove {file.parent}"
    )


def _shown(value: Any) -> str:
    """A plan's value in an error: JSON, a hash cut to its first 12 digits."""
    text = json.dumps(value)
    return text[:13] + '..."' if isinstance(value, str) and len(value) == 64 else text


def require_gpus(workers: int | None, gpus_per_worker: float) -> None:
    """In a Ray session: a one-line error when the cluster has fewer GPUs than ``workers`` actors (at least one)
    of ``gpus_per_worker`` each ask for (Ray would wait for them for ever)."""
    if not gpus_per_worker:
        return
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0))
    if (workers or 1) * gpus_per_worker > gpus:
        asked = f"{workers or 1} worker{'s' if (workers or 1) > 1 else ''} x {gpus_per_worker:g} GPU"
        raise CnnappsError(
            f"{asked} asked for, the Ray cluster has {gpus:g} GPUs; use --device cpu, or fewer --workers or "
            "--gpus-per-worker"
        )


def part_count(plan: dict[str, Any]) -> int:
    return -(-plan["files"] // plan["part_size"])


def missing_parts(
    paths: Sequence[str],
    part_size: int,
    finished: Callable[[int], bool],
    progress: Callable[[int], None] | None = None,
) -> tuple[int, list[tuple[int, list[str]]]]:
    """The number of parts of ``paths`` and the ``(part, paths)`` not ``finished`` yet; ``progress`` is told
    the files of the finished ones."""
    total = -(-len(paths) // part_size)
    todo = [(p, part_paths(paths, p, part_size)) for p in range(total) if not finished(p)]
    if progress:
        progress(len(paths) - sum(len(chunk) for _, chunk in todo))
    return total, todo


def part_paths(paths: Sequence[str], part: int, part_size: int) -> list[str]:
    return list(paths[part * part_size : (part + 1) * part_size])


def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def require_ray() -> None:
    """A one-line error, before any work, when Ray is not installed."""
    if not ray_available():
        raise CnnappsError("Ray is not installed: pip install 'cnnapps[ray]' (or 'ray[data]')")


def run_on_ray(
    parts: Sequence[tuple[int, list[str]]],
    make_work: Callable[[], PartWork],
    *,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
) -> Iterator[dict[str, Any]]:
    """Run ``make_work()(part, paths)`` for every ``(part, paths)`` on Ray actors; yields each summary as it ends.

    ``make_work`` runs once in each actor (load the model there), so it must be picklable (a module-level
    function or a ``functools.partial`` of one). ``workers`` actors [default: one per CPU of the cluster, at most
    one per part], each with ``gpus_per_worker`` GPUs. A Ray runtime already started in this process is used
    as it is; otherwise one is started (``address``) and shut down at the end.
    """
    require_ray()
    if not parts:
        return
    import ray

    with ray_session(address):
        yield from _run(ray, parts, make_work, workers, gpus_per_worker)


@contextlib.contextmanager
def ray_session(address: str | None = None, **init: Any) -> Iterator[None]:
    """A Ray runtime for the block: the one this process already has, or one started here (a cluster on this
    machine, or ``address``'s) and shut down after. Ray's Python logging is kept to errors, and what Ray's own
    threads print to stdout goes to stderr: stdout keeps only the command's answer (``--json``). The raylet's
    messages ("A worker died ..." when it restarts a lost actor) go to stderr whenever they come, also after the
    block (a runtime that outlives it prints them late: one command's lost actor, the next command's stdout)."""
    import ray

    _raylet_messages_to_stderr()
    with contextlib.redirect_stdout(sys.stderr):
        if ray.is_initialized():
            yield
            return
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR, **init)
        try:
            yield
        finally:
            ray.shutdown()


def _raylet_messages_to_stderr() -> None:
    """Ray's driver prints the raylet's error messages from a thread of its own, through
    ``ray._private.worker.print_to_stdstream`` marked as standard output: marked as errors instead (stderr), for as
    long as this process lives. Ray is pinned; where that function is missing nothing changes."""
    from ray._private import worker

    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "raylet_to_stderr", False):
        return

    def print_to_stdstream(data: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if data.get("pid") == "raylet":
            data = {**data, "is_err": True}
        return original(data, *args, **kwargs)

    print_to_stdstream.raylet_to_stderr = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = print_to_stdstream


def _run(ray: Any, parts: Sequence[tuple[int, list[str]]], make_work: Callable[[], PartWork], workers: int | None,
         gpus_per_worker: float) -> Iterator[dict[str, Any]]:  # fmt: skip
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    require_gpus(workers, gpus_per_worker)
    resources = ray.cluster_resources()
    size = max(1, min(len(parts), workers or int(resources.get("CPU", 1))))
    if gpus_per_worker:  # no more actors than the GPUs hold: Ray would wait for the others' for ever
        size = min(size, max(1, int(resources.get("GPU", 0) // gpus_per_worker)))

    class PartWorker:
        def __init__(self) -> None:
            self.work = make_work()

        def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
            parts = zip(batch["part"], batch["paths"], strict=True)
            rows = [self.work(int(part), [str(path) for path in paths]) for part, paths in parts]
            return {key: [row[key] for row in rows] for key in rows[0]}

    items = [{"part": part, "paths": list(paths)} for part, paths in parts]
    resources = {"num_gpus": gpus_per_worker} if gpus_per_worker else {}
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        PartWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=size), num_cpus=1, **resources
    )
    try:
        yield from dataset.iter_rows()
    except ray.exceptions.RayError as exc:
        raise CnnappsError(f"a Ray worker failed: {_first_cause(exc)}") from exc


def _first_cause(exc: BaseException) -> str:
    """What made a worker fail, in one line: the exception at the root of Ray's wrappers (their own text ends with
    advice on Ray's retries, which hid it)."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None)
        inner = inner if isinstance(inner, BaseException) else exc.__cause__
        if inner is None:
            break
        exc = inner
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if isinstance(exc, CnnappsError) and lines:
        return lines[0]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
