"""Any task's predictions over many files, on a Ray cluster, into Parquet or JSON Lines part files; resumable.

The inputs, sorted, are cut into parts (:mod:`cnnapps.parts`); each Ray actor loads the model once
(``cnnapps.load``, any engine) and writes part after part, each whole: ``OUT/part-00000.parquet`` ... with one
row per input: ``source``, ``error`` (null when it was predicted) and ``result`` (the answer as JSON, what
``cnnapps <verb> --json`` prints for it). ``OUT/_plan.json`` says what the parts belong to; a rerun of the
same command after a crash does only the missing parts, and a rerun with other inputs, model (or other weights in
the same model file) or options is refused (a run whose workers failed before any part was written leaves no plan
behind). The inputs predicted and failed that a run reports are those of every part, also of the parts an earlier
run finished (and apart, those it predicted itself). GPUs asked
for and not in the cluster are refused before anything is written. A named model (or the
task's default) is loaded once here before Ray starts, so one the actors could not load is a one-line error and
nothing is written. Names starting with ``_`` are skipped by Parquet readers, so ``pandas.read_parquet(OUT)``
reads the whole result.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from cnnapps.bundle import is_bundle_path
from cnnapps.errors import CnnappsError, Interrupted
from cnnapps.exported import is_onnx_file
from cnnapps.files import atomic_write
from cnnapps.parts import (
    agree_on_plan,
    input_name,
    make_plan,
    missing_parts,
    part_count,
    ray_session,
    require_gpus,
    require_ray,
    run_on_ray,
)
from cnnapps.terminal import plural

FORMATS = ("parquet", "jsonl")
PART_SIZE = 1000
PLAN = "_plan.json"


@dataclass
class BatchReport:
    """What the parts in ``out`` hold after a run: parts in all, those finished before it, the inputs predicted and
    those that failed (in every part, also those an earlier run finished), and the inputs this run predicted."""

    out: str
    parts: int
    skipped: int
    predicted: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    predicted_now: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def part_file(out: Path, part: int, fmt: str) -> Path:
    return out / f"part-{part:05d}.{fmt}"


def predict_files(
    task: str,
    paths: Sequence[str],
    out: str | os.PathLike,
    model: str | None = None,
    fmt: str = "parquet",
    part_size: int = PART_SIZE,
    load_options: dict[str, Any] | None = None,
    predict_options: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    **ray_options: Any,
) -> BatchReport:
    """Predict ``task`` on every file of ``paths`` with ``model`` into part files under ``out``; see the module.

    ``load_options`` go to ``cnnapps.load`` (device, engine, batch_size, the task's own), ``predict_options`` to
    each ``predict`` call (e.g. ``top_k``); ``ray_options``: ``address``, ``workers``, ``gpus_per_worker`` of
    :func:`cnnapps.parts.run_on_ray`. ``progress(n)`` is called as files are done (or found done)."""
    from cnnapps.api import check_serves
    from cnnapps.apps.tasks import get_task

    record = get_task(task)
    if fmt not in FORMATS:
        raise CnnappsError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    load_options, predict_options = dict(load_options or {}), dict(predict_options or {})
    unknown = sorted(set(predict_options) - set(record.route_options))
    if unknown:
        raise CnnappsError(f"{task} takes no {', '.join(unknown)} when predicting")
    for key, value in predict_options.items():  # here, not as a failure of every worker after Ray has started
        _check_value(key, value, record.route_options[key])
    if load_options.get("engine") is not None:
        from cnnapps.engines import check_name, require

        check_name(load_options["engine"])  # the name only: whether it runs on a cluster is each node's to say
        if not ray_options.get("address"):  # the workers run here: said in one line, not in each one's traceback
            require(load_options["engine"])
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CnnappsError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and not (out / PLAN).exists() and any(out.iterdir()):
        raise CnnappsError(f"{out}: holds files and no {PLAN} (not a batch's parts); choose an empty or new --out")
    ordered = sorted(set(map(input_name, paths)))
    if not ordered:
        raise CnnappsError("no inputs to predict")
    if model:  # here, in one line, not as each worker's traceback (and before anything is written)
        check_serves(model, record.name)
    require_ray()
    named = not model or not (is_onnx_file(model) or is_bundle_path(model))
    if named and not ray_options.get("address"):  # a cluster's nodes may hold weights this machine has not
        _check_name_loads(task, model, load_options)
    named_as = os.path.abspath(model) if model and Path(model).is_file() else model  # a rerun from another folder
    about = {"task": task, "model": str(named_as) if model else record.default_model, "model_sha256": _content(model),
             "format": fmt, "load_options": load_options, "predict_options": predict_options}  # fmt: skip
    earlier = _plan_in(out)
    if about["model_sha256"] and earlier.get("model_sha256") == about["model_sha256"]:
        about["model"] = earlier.get("model", about["model"])  # the same file, named as the run that began named it
    plan = make_plan(ordered, part_size, **json.loads(json.dumps(about)))
    gpus = ray_options.get("gpus_per_worker")  # asked for before anything is written: a cluster without is refused
    with ray_session(ray_options.get("address")) if gpus else contextlib.nullcontext():
        require_gpus(ray_options.get("workers"), gpus or 0.0)
        out.mkdir(parents=True, exist_ok=True)
        fresh = not (out / PLAN).exists()
        agree_on_plan(out / PLAN, plan)
        total, todo = missing_parts(ordered, part_size, lambda p: part_file(out, p, fmt).exists(), progress)
        report = BatchReport(str(out), total, total - len(todo))
        work = partial(_part_worker, task, model, load_options, predict_options, out, fmt)
        try:
            for done in run_on_ray(todo, work, **ray_options):
                report.predicted_now += int(done["predicted"])
                if progress:
                    progress(int(done["files"]))
        except BaseException as exc:  # a plan this run wrote and no part came of (its workers failed) holds nothing
            if fresh and not _finished_parts(out):
                (out / PLAN).unlink(missing_ok=True)
            if isinstance(exc, KeyboardInterrupt):  # Ctrl-C: exit 130 said nothing of what was kept
                kept = sum(1 for _ in out.glob(f"part-*.{fmt}"))
                raise Interrupted(
                    f"{out}: stopped by SIGINT with {kept} of {plural(total, 'part')} written, each "
                    "whole; the same command goes on with the others",
                    "SIGINT",
                ) from None
            raise
    # every part's rows, also those finished by an earlier run
    rows = list(_rows(out, plan, ("source", "error")))
    report.failed = [{"path": r["source"], "error": r["error"]} for r in rows if r["error"] is not None]
    report.predicted = len(rows) - len(report.failed)
    return report


def _plan_in(out: Path) -> dict[str, Any]:
    """The plan of the parts in ``out`` ({} where there is none, or it does not read: the plan check says so)."""
    try:
        found = json.loads((out / PLAN).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _check_value(key: str, value: Any, option: tuple[type, Any, Any, Any]) -> None:
    """A predict option's value of the kind the task's route takes (``--set top_k=-3`` is one line), else an error."""
    kind, _, low, _ = option
    if kind is bool and not isinstance(value, bool):
        raise CnnappsError(f"{key}={value!r}: true or false")
    whole = isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)
    if kind is int and not whole:
        raise CnnappsError(f"{key}={value!r}: a whole number" + (f" of at least {low}" if low is not None else ""))


def _content(model: str | os.PathLike | None) -> str | None:
    """The sha256 of a model file (the same name may hold other weights on a rerun); None for a name."""
    from cnnapps.backbones.weights import sha256_of

    return sha256_of(Path(model)) if model and Path(model).is_file() else None


def _check_name_loads(task: str, model: str | None, load_options: dict[str, Any]) -> None:
    """Load a named model (a registry or zoo name, or the task's default) once here, on the CPU in PyTorch, and
    release it: an unknown name or weights neither cached nor downloadable are refused in one line, the loader's,
    before Ray starts (a download lands in the cache the actors on this machine read)."""
    from cnnapps.api import load

    options = {k: v for k, v in load_options.items() if k not in ("device", "engine")}
    load(model, task=task, device="cpu", engine="eager", **options)


def _finished_parts(out: Path) -> bool:
    return any(next(out.glob(f"part-*.{fmt}"), None) for fmt in FORMATS)


def _part_worker(task: str, model: str | None, load_options: dict[str, Any], predict_options: dict[str, Any],
                 out: Path, fmt: str) -> Callable[[int, list[str]], dict[str, Any]]:  # fmt: skip
    """In a Ray actor: the predictor, loaded once, and the work of one part with it."""
    from cnnapps.api import load

    predictor = load(model, task=task, **load_options)

    def work(part: int, chunk: list[str]) -> dict[str, Any]:
        results = predictor.predict(chunk, **predict_options)
        rows = [{"source": str(r.source), "error": r.error, "result": _answer(r) if r.ok else None} for r in results]
        write_part(part_file(out, part, fmt), rows)
        failed = sum(row["error"] is not None for row in rows)
        return {"part": part, "files": len(chunk), "predicted": len(rows) - failed}

    return work


def _answer(result: Any) -> str:
    """The answer as ``cnnapps VERB --json`` prints it (with the engine that gave it), as JSON text."""
    from cnnapps.terminal import json_safe

    return json.dumps(json_safe(result.with_engine()))


def write_part(file: Path, rows: list[dict[str, Any]]) -> None:
    """One part's rows, written whole (under a temporary name, then renamed; a part redone after a lost actor
    replaces the same rows)."""
    if file.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(
            {key: pa.array([_utf8(row[key]) for row in rows], pa.string()) for key in ("source", "error", "result")}
        )
        atomic_write(file, lambda tmp: pq.write_table(table, tmp), overwrite=True)
    else:
        atomic_write(file, "".join(json.dumps(row) + "\n" for row in rows).encode(), overwrite=True)


def _utf8(text: str | None) -> str | None:
    """Text as Parquet holds it (UTF-8): a file name that is not UTF-8 with its other bytes as ``\\xNN`` (Arrow refuses
    the stand-ins Python decodes them to, and the whole part failed on every run)."""
    if text is None:
        return None
    try:
        text.encode()
    except UnicodeEncodeError:
        try:
            return text.encode(errors="surrogateescape").decode(errors="backslashreplace")
        except UnicodeEncodeError:  # a stand-in no byte decodes to
            return text.encode(errors="backslashreplace").decode()
    return text


def read_rows(out: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Every row of a finished (or partly finished) run, in input order, with ``result`` parsed."""
    out = Path(out)
    if not (out / PLAN).is_file():
        raise CnnappsError(f"{out}: no {PLAN} here; not the output of `cnnapps batch`")
    for row in _rows(out, json.loads((out / PLAN).read_text())):
        yield {**row, "result": json.loads(row["result"]) if row["result"] is not None else None}


def _rows(out: Path, plan: dict[str, Any], columns: Sequence[str] = ("source", "error", "result")) -> Iterator[dict]:
    """The rows of the finished parts of ``plan`` under ``out``, in input order, with only ``columns`` (of
    Parquet parts, only those are read)."""
    for part in range(part_count(plan)):
        file = part_file(out, part, plan["format"])
        if not file.exists():
            continue
        if plan["format"] == "parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(file, columns=list(columns)).to_pylist()
        else:
            rows = [json.loads(line) for line in file.read_text().splitlines() if line]
        for row in rows:
            yield {key: row[key] for key in columns}
