"""One index from many processes: each embeds its share of the gallery into part files, one merge writes the index.

Layout while a sharded build runs (inside the index folder)::

    parts/plan.json          what the parts belong to: the model, the number of files, a hash of their paths
    parts/part-00000.npz     one finished part: paths, file stats, unit vectors, unreadable files

The sorted gallery is cut into parts of ``part_size`` files; part ``p`` belongs to rank ``p % world_size``.
A part file appears whole (written under a temporary name, then renamed), so a rerun after a crash or a
cancelled job skips every finished part and embeds only the rest, with any number of processes.
``merge_parts`` checks that every part is there, writes all vectors into a new index in one generation
(an IVF-PQ index is trained once, on a sample of all of them) and removes the part files. The index is
marked unfinished until that generation is committed: a merge killed at any point is finished by running
it again (or, once the index is whole, by removing the parts left behind).

No process talks to another: ranks come from the launcher's environment (torchrun, SLURM) or the command
line, and the file system is the only thing they share.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnapps.apps.retrieve.index import (
    FileStat,
    Index,
    RetrievalIndexError,
    _check_kind,
    _index_state,
    _make_folder,
    embed_files,
    index_path,
)
from cnnapps.files import atomic_write
from cnnapps.parts import agree_on_plan, make_plan, part_count, part_paths

PART_SIZE = 10_000


@dataclass
class ShardReport:
    """What one rank did: parts it owns, parts already finished before it started, images it embedded."""

    rank: int
    world_size: int
    parts: int
    skipped: int
    embedded: int
    failed: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def launcher_rank() -> tuple[int, int, int | None]:
    """(rank, world size, local rank) from torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or SLURM's ``srun`` (SLURM_PROCID,
    SLURM_NTASKS, SLURM_LOCALID; not an interactive allocation's shell, as training tells); (0, 1, None) for a
    process started alone."""
    from cnnapps.datasets.transforms import slurm_launched

    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:
        local = env.get("LOCAL_RANK")
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(local) if local is not None else None
    if slurm_launched() and "SLURM_PROCID" in env:
        local = env.get("SLURM_LOCALID")
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(local) if local is not None else None
    return 0, 1, None


def _parts_dir(index_dir: Path) -> Path:
    return Path(index_dir) / "parts"


def _part_file(folder: Path, part: int) -> Path:
    return folder / f"part-{part:05d}.npz"


def _start_parts(paths: Sequence[str], index_dir: Path, embedder: Any, part_size: int) -> tuple[Path, list[str]]:
    """The parts folder with its plan agreed on (the embedder as an index records it), and the sorted gallery it
    cuts into parts."""
    if part_size < 1:
        raise RetrievalIndexError(f"part size {part_size}: must be at least 1")
    state, settings = _index_state(index_dir)
    if state == "index" and settings.get("unfinished") != "merge":
        raise RetrievalIndexError(f"{index_dir}: an index already exists here; use `cnnapps index add` or `sync`")
    _make_folder(index_dir)
    folder = _parts_dir(index_dir)
    folder.mkdir(exist_ok=True)
    ordered = sorted({index_path(p) for p in paths})
    agree_on_plan(folder / "plan.json", make_plan(ordered, part_size, model=embedder.describe()), RetrievalIndexError)
    return folder, ordered


def _embed_part(embedder: Any, chunk: list[str], file: Path,
                progress: Callable[[int], None] | None = None) -> tuple[int, list[dict[str, str]]]:  # fmt: skip
    """Embed one part's images into its file (written whole); the number embedded and the files that failed."""
    rows, bad = embed_files(embedder, chunk, progress=progress)
    arrays = {
        "paths": np.array([s.path for s, _ in rows], dtype=str),
        "sizes": np.array([s.size for s, _ in rows], dtype=np.int64),
        "mtimes": np.array([s.mtime for s, _ in rows], dtype=np.float64),
        "sha256": np.array([s.sha256 for s, _ in rows], dtype=str),
        "vectors": np.asarray([v for _, v in rows], dtype=np.float32).reshape(len(rows), embedder.dim),
        "failed_paths": np.array([b["path"] for b in bad], dtype=str),
        "failed_errors": np.array([b["error"] for b in bad], dtype=str),
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would add .npz to the temporary name
            np.savez(fh, **arrays)

    atomic_write(file, write, overwrite=True)
    return len(rows), bad


def build_shard(
    paths: Sequence[str],
    index_dir: str | os.PathLike,
    embedder: Any,
    rank: int,
    world_size: int,
    part_size: int = PART_SIZE,
    progress: Callable[[int], None] | None = None,
) -> ShardReport:
    """Embed this rank's parts of ``paths`` (all ranks pass the same list) into part files; finished parts
    are skipped. ``progress(n)`` is called as images of this rank are embedded (or skipped)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise RetrievalIndexError(f"rank {rank} of {world_size}: need 0 <= rank < world size")
    folder, ordered = _start_parts(paths, Path(index_dir), embedder, part_size)
    mine = range(rank, -(-len(ordered) // part_size), world_size)
    report = ShardReport(rank, world_size, len(mine), 0, 0)
    for part in mine:
        chunk = part_paths(ordered, part, part_size)
        file = _part_file(folder, part)
        if file.exists():
            report.skipped += 1
            if progress:
                progress(len(chunk))
            continue
        embedded, bad = _embed_part(embedder, chunk, file, progress)
        report.embedded += embedded
        report.failed += bad
    return report


def _part_worker(make_embedder: Callable[[], Any], folder: Path) -> Callable[[int, list[str]], dict[str, Any]]:
    """In a Ray actor: the embedder, loaded once, and the work of one part with it."""
    embedder = make_embedder()

    def work(part: int, chunk: list[str]) -> dict[str, Any]:
        embedded, bad = _embed_part(embedder, chunk, _part_file(folder, part))
        return {"part": part, "files": len(chunk), "embedded": embedded, "failed": json.dumps(bad)}

    return work


def build_on_ray(
    paths: Sequence[str],
    index_dir: str | os.PathLike,
    embedder: Any,
    make_embedder: Callable[[], Any],
    part_size: int = PART_SIZE,
    kind: str = "auto",
    progress: Callable[[int], None] | None = None,
    **ray_options: Any,
) -> tuple[Index, ShardReport]:
    """Embed every missing part on Ray actors (each builds its own embedder with ``make_embedder``, which must
    be picklable and give the same model as ``embedder``), then merge the parts into the index. Resumes like
    :func:`build_shard`: finished parts are skipped. ``ray_options``: ``address``, ``workers``,
    ``gpus_per_worker`` of :func:`cnnapps.parts.run_on_ray`."""
    from functools import partial

    from cnnapps.parts import missing_parts, require_ray, run_on_ray

    require_ray()
    _check_kind(kind)  # here, not after every part has been embedded
    folder, ordered = _start_parts(paths, Path(index_dir), embedder, part_size)
    total, todo = missing_parts(ordered, part_size, lambda p: _part_file(folder, p).exists(), progress)
    report = ShardReport(0, 1, total, total - len(todo), 0)
    for done in run_on_ray(todo, partial(_part_worker, make_embedder, folder), **ray_options):
        report.embedded += int(done["embedded"])
        report.failed += json.loads(str(done["failed"]))
        if progress:
            progress(int(done["files"]))
    index, failed = merge_parts(index_dir, kind=kind)
    report.failed = failed
    return index, report


def parts_status(index_dir: str | os.PathLike) -> tuple[dict[str, Any], list[int]]:
    """The plan and the parts still missing."""
    folder = _parts_dir(Path(index_dir))
    if not (folder / "plan.json").is_file():
        raise RetrievalIndexError(f"{index_dir}: no parts to merge (run `cnnapps index build` on several ranks first)")
    plan = json.loads((folder / "plan.json").read_text())
    return plan, [p for p in range(part_count(plan)) if not _part_file(folder, p).is_file()]


def merge_parts(index_dir: str | os.PathLike, kind: str = "auto") -> tuple[Index, list[dict[str, str]]]:
    """Write every part into a new index at ``index_dir`` in one generation, then remove the parts.
    Returns the index and the files no rank could read. Run again after an interrupted merge, it finishes it."""
    index_dir = Path(index_dir)
    folder = _parts_dir(index_dir)
    state, settings = _index_state(index_dir)
    if state == "index" and settings.get("unfinished") != "merge":
        if not folder.is_dir():
            raise RetrievalIndexError(f"{index_dir}: an index already exists here and there are no parts to merge")
        plan_file = folder / "plan.json"
        if plan_file.is_file():  # the index a merge of these very parts committed
            plan = json.loads(plan_file.read_text())
            inputs = settings.get("inputs_sha256")
            if inputs is None and settings.get("unfinished") is None:  # merged by an older version: by its files
                with Index.open(index_dir) as merged_index:
                    inputs = make_plan(sorted(merged_index.paths()), 1)["paths_sha256"]
            merged = settings.get("unfinished") is None and inputs == plan["paths_sha256"]
        else:  # the plan goes after the part files: without it, what a merge removing them left
            merged = next(folder.glob("part-*.npz"), None) is None
        if merged:
            _remove_parts(folder)  # a merge killed while it removed them: the index holds every vector
            return Index.open(index_dir), []
        what = "an unfinished build" if settings.get("unfinished") == "build" else "an index"
        raise RetrievalIndexError(
            f"{index_dir}: {what} not merged from the parts under {folder} is here beside them; move the parts or "
            "the index files away"
        )
    plan, missing = parts_status(index_dir)
    if missing:
        shown = ", ".join(str(p) for p in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise RetrievalIndexError(
            f"{index_dir}: {len(missing)} of {part_count(plan)} parts are not finished "
            f"(parts {shown}); rerun `cnnapps index build` with the same inputs to finish them"
        )
    with Index._writing(index_dir, plan["model"], kind, "merge", plan["paths_sha256"]) as index:
        stats: list[FileStat] = []
        vectors: list[np.ndarray] = []
        failed: list[dict[str, str]] = []
        for file in sorted(folder.glob("part-*.npz")):
            with np.load(file, allow_pickle=False) as part:
                stats += [
                    FileStat(str(p), int(s), float(m), str(h))
                    for p, s, m, h in zip(part["paths"], part["sizes"], part["mtimes"], part["sha256"], strict=True)
                ]
                vectors.append(part["vectors"])
                failed += [
                    {"path": str(p), "error": str(e)}
                    for p, e in zip(part["failed_paths"], part["failed_errors"], strict=True)
                ]
        dim = int(plan["model"]["dim"])
        index.add_embedded(stats, np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32))
    _remove_parts(folder)
    return index, failed


def _remove_parts(folder: Path) -> None:
    """The part files, then the plan, then the folder: what is left always says what it is."""
    for file in [*folder.glob("part-*.npz"), *folder.glob(".*.tmp")]:
        file.unlink(missing_ok=True)
    (folder / "plan.json").unlink(missing_ok=True)
    folder.rmdir()
