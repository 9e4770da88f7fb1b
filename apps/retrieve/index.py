"""A persistent image index: FAISS for the vectors, SQLite for everything else.

Layout of an index folder::

    index.sqlite           items (path, size, mtime, sha256, vector) and settings (model, dim, kind, generation)
    vectors-<gen>.faiss    the FAISS index of generation <gen>
    write.lock             held by the one process creating or writing the index

Every write builds the next generation's FAISS file under a temporary name, renames it into
place, then commits the SQLite transaction that makes it current. A process killed at any
point leaves the previous generation or the new one, never a mix. Rows are kept with the
generations that added and removed them, so a reader keeps a consistent snapshot while a
writer works (SQLite runs in WAL mode so readers never wait).

Creating an index takes the write lock and commits the schema and the settings in one
transaction: a database left without settings by a killed creator is cleared by the next
``create`` or ``build`` (or by ``Index.repair``). ``Index.build`` commits every few thousand images
and marks the index unfinished until it is done; run again with the same model, it resumes.
Opening checks that the FAISS file agrees with the database (dimension, number of vectors);
``Index.check`` says what is wrong, ``Index.repair`` rebuilds the FAISS file from the vectors the
database keeps.

Files are indexed under their absolute path with ``.`` and ``..`` taken out (``index_path``). Symbolic
links keep their own names, as a folder listing shows them: two links to one file are two entries.
Names that are not valid UTF-8 are kept byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnapps.errors import CnnappsError
from cnnapps.parts import input_name as index_path
from cnnapps.terminal import plural

KINDS = ("auto", "flat", "ivfpq", "hnsw")
#: ``auto`` switches from exact search to IVF-PQ at this many vectors.
AUTO_IVFPQ_FROM = 100_000
#: ``Index.build`` commits a generation every this many images (while the index stays exact), so a
#: rerun after a kill resumes from the last one.
BUILD_CHECKPOINT = 10_000


class RetrievalIndexError(CnnappsError):
    """An index that cannot be opened, written or queried as asked."""


def _no_index(path: Path) -> RetrievalIndexError:
    """The error for a path that holds no index: a file is not one (an index is a folder), a folder has none yet."""
    if path.exists() and not path.is_dir():
        return RetrievalIndexError(f"{path}: a file, not an index (an index is a folder: build one with "
                                   "`cnnapps index build PHOTOS --index FOLDER`)")  # fmt: skip
    return RetrievalIndexError(f"{path}: no index here (build one with `cnnapps index build`)")


class IndexLockedError(RetrievalIndexError):
    """Another process is writing the index."""


@dataclass
class Hit:
    rank: int
    path: str
    score: float
    id: int | None = None  # the item's row in the index (``Index.item_path`` reads it back)

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "path": self.path, "score": round(float(self.score), 6)}


@dataclass
class FileStat:
    path: str
    size: int
    mtime: float
    sha256: str


def file_stat(path: str) -> FileStat:
    """Size, modification time and content hash: what ``sync`` compares."""
    from cnnapps.backbones.weights import sha256_of

    st = os.stat(path)
    return FileStat(index_path(path), st.st_size, st.st_mtime, sha256_of(Path(path)))


def _signature(path: str) -> tuple[int, ...] | None:
    """What changes whenever a file's content may have (the kernel sets ctime on every write)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _reason(exc: OSError) -> str:
    return "no such file" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc)).lower()


CHANGED_WHILE_INDEXED = "changed while it was being indexed; run the command again"


def embed_files(
    embedder: Any, paths: Sequence[str], progress: Callable[[int], None] | None = None
) -> tuple[list[tuple[FileStat, np.ndarray]], list[dict[str, str]]]:
    """Embed files and describe each by the content that was embedded: (stat and vector per file, failures).

    Each file is stat-ed before embedding and after hashing; one that changed in between (rewritten,
    replaced, deleted) is a failure, so a hash is never recorded beside another content's vector."""
    before = [_signature(p) for p in paths]
    _, vectors, errors = embedder.embed(list(paths), progress=progress)
    rows: list[tuple[FileStat, np.ndarray]] = []
    failed: list[dict[str, str]] = []
    for path, signature, vector, error in zip(paths, before, vectors, errors, strict=True):
        if error:
            failed.append({"path": path, "error": str(error)})
            continue
        try:
            stat = file_stat(path)
        except OSError as exc:
            failed.append({"path": path, "error": _reason(exc)})
            continue
        if signature is None or _signature(path) != signature:
            failed.append({"path": path, "error": CHANGED_WHILE_INDEXED})
            continue
        rows.append((stat, vector))
    return rows, failed


def _db_path(path: str) -> str | bytes:
    """A path as SQLite keeps it: text, or the raw bytes of a name that is not valid UTF-8."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def _from_db(value: str | bytes) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _storable(path: str) -> bool:
    try:
        os.fsencode(path)
        return True
    except UnicodeEncodeError:
        return False


_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    sha256 TEXT NOT NULL,
    vector BLOB,
    added_gen INTEGER NOT NULL,
    removed_gen INTEGER
);
CREATE INDEX IF NOT EXISTS items_live_path ON items (path) WHERE removed_gen IS NULL;
"""
#: the tables of ``_SCHEMA``: a database with others is not an index's, and never cleared as one
_TABLES = {"settings", "items"}


def build_faiss(kind: str, vectors: np.ndarray, ids: np.ndarray, dim: int) -> Any:
    """A FAISS index of ``kind`` over unit vectors (inner product = cosine similarity)."""
    import faiss

    n = len(vectors)
    if kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    elif kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 80
        hnsw.hnsw.efSearch = 128
        index = faiss.IndexIDMap2(hnsw)
    elif kind == "ivfpq":
        if n < 1000:
            raise RetrievalIndexError(f"an IVF-PQ index needs at least 1,000 images to train, not {n}; use --kind flat")
        nlist = ivf_lists(n)
        m = max(d for d in range(1, 65) if dim % d == 0)
        ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        sample = vectors[np.random.default_rng(0).permutation(n)[: min(n, 64 * nlist)]]
        ivf.train(np.ascontiguousarray(sample, dtype=np.float32))
        ivf.nprobe = min(nlist, 32)
        # PQ codes find 50x k candidates fast; exact inner products re-rank them (recall@10 0.999 vs 0.49
        # without, on a million clustered vectors: benchmarks/RESULTS.md)
        refined = faiss.IndexRefineFlat(ivf)
        refined.k_factor = 50
        index = faiss.IndexIDMap2(refined)
    else:
        raise RetrievalIndexError(f"--kind {kind}: choose one of {', '.join(KINDS)}")
    if n:
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
    return index


class _WriteLock:
    """``write.lock`` of an index folder (an flock): one process creates or writes the index at a time."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fd: int | None = None

    def __enter__(self) -> _WriteLock:
        import fcntl

        if not (self.folder / "write.lock").exists() and _index_state(self.folder)[0] == "unreadable":
            raise _unreadable(self.folder)  # another program's database: its folder gets no lock file either
        try:
            fd = os.open(self.folder / "write.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RetrievalIndexError(f"{self.folder}: cannot take the write lock: {_reason(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 100, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise IndexLockedError(
                f"{self.folder}: index is locked by a writer ({holder}); try again when it is done"
            ) from None
        with contextlib.suppress(OSError):  # who holds it is a courtesy: a full disk must not stop the write
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _held_by_other(folder: Path) -> bool:
    """Whether a writer holds ``write.lock`` now (asked without creating or writing the file)."""
    import fcntl

    try:
        fd = os.open(folder / "write.lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we took


def _writer(folder: Path) -> str | None:
    """Who holds ``write.lock`` now ("pid 123" as the holder wrote it, else "another process"), or None: the
    kernel drops the lock of a process that dies, so a holder is a live process."""
    if not _held_by_other(folder):
        return None
    with contextlib.suppress(OSError):
        return (folder / "write.lock").read_text(errors="replace").strip() or "another process"
    return "another process"


def _in_progress(folder: Path, what: str) -> str | None:
    """A problem sentence when a live process is writing the index (a ``what`` in progress), else None."""
    holder = _writer(folder)
    return None if holder is None else f"{what} is in progress ({holder}); check again when it is done"


def _index_state(folder: Path) -> tuple[str, dict[str, str]]:
    """("none" | "interrupted" | "unreadable" | "index", settings) of the database in ``folder``.

    "interrupted": a database without settings and without items, and no table but the index's own: what a killed
    creator leaves. Another program's database is "unreadable", so that nothing clears it."""
    file = folder / "index.sqlite"
    if not file.is_file():
        return "none", {}
    try:
        db = sqlite3.connect(str(file), timeout=30)
    except sqlite3.Error:
        return "unreadable", {}
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        settings = dict(db.execute("SELECT key, value FROM settings")) if "settings" in tables else {}
        if "generation" in settings and "model" in settings:
            return "index", settings
        if settings or {t for t in tables if not t.startswith("sqlite_")} - _TABLES:
            return "unreadable", settings  # not what a creator leaves: settings come in its one transaction
        if "items" in tables and db.execute("SELECT COUNT(*) FROM items").fetchone()[0]:
            return "unreadable", settings
        return "interrupted", settings
    except sqlite3.Error:
        return "unreadable", {}
    finally:
        db.close()


def _clear_index_files(folder: Path) -> None:
    """Remove what a killed creator left (the database and FAISS files); the folder and others' files stay."""
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm", "index.sqlite-journal"):
        (folder / name).unlink(missing_ok=True)
    for file in [*folder.glob("vectors-*.faiss"), *folder.glob(".vectors-*.tmp")]:
        file.unlink(missing_ok=True)


_UNREADABLE = "index.sqlite is not a readable index database; move it away and build the index again"


def _unreadable(folder: Path) -> RetrievalIndexError:
    return RetrievalIndexError(f"{folder}: {_UNREADABLE}")


def unfinished_problem(folder: Path, task: str) -> str:
    """What to say of an index whose ``task`` ("build" or "merge") is unfinished: in progress (its writer holds the
    lock) or interrupted, with what finishes it."""
    return _in_progress(folder, f"its {task}") or _interrupted(folder, task)


def _interrupted(folder: Path, task: str) -> str:
    if task == "build":
        return "its build was interrupted: run `cnnapps index build` with the same inputs to finish it"
    return f"its {task} was interrupted: run `cnnapps index merge --index {folder}` to finish it"


def _not_created_reason(folder: Path) -> str:
    return (
        "the index was not fully created (its build was interrupted); run `cnnapps index build` again, "
        f"or `cnnapps index repair --index {folder}` to clear the folder"
    )


def _not_created(folder: Path) -> RetrievalIndexError:
    if _index_state(folder)[0] == "unreadable":  # another program's database: repair would refuse it too
        return _unreadable(folder)
    if _held_by_other(folder):
        return IndexLockedError(f"{folder}: the index is being created by another process; try again when it is done")
    return RetrievalIndexError(f"{folder}: {_not_created_reason(folder)}")


def _make_folder(folder: Path) -> None:
    """The index folder, made where missing; anything else under its name is refused in one line."""
    if folder.exists() and not folder.is_dir():
        raise RetrievalIndexError(f"{folder}: exists and is not a folder; choose another index folder")
    folder.mkdir(parents=True, exist_ok=True)


def _check_kind(kind: str) -> None:
    """Refuse an unknown index kind before anything is made on disk."""
    if kind not in KINDS:
        raise RetrievalIndexError(f"--kind {kind}: choose one of {', '.join(KINDS)}")


def _create(
    folder: Path, model: dict[str, Any], kind: str, unfinished: str | None, inputs: str | None = None
) -> sqlite3.Connection:
    """Write generation 0 of a new index (the write lock is held): the FAISS file, then the schema and the
    settings (``inputs``: the hash of what an unfinished build or merge writes) in one transaction. Returns the
    open database."""
    _check_kind(kind)
    state, _ = _index_state(folder)
    if state == "index":
        raise RetrievalIndexError(f"{folder}: an index already exists here; use `cnnapps index add` or `sync`")
    if state == "unreadable":
        raise _unreadable(folder)
    if state == "interrupted":
        _clear_index_files(folder)
    dim = int(model["dim"])
    faiss_kind = "flat" if kind in ("auto", "ivfpq") else kind  # IVF-PQ is trained when vectors arrive
    _write_faiss(folder, 0, build_faiss(faiss_kind, np.zeros((0, dim), np.float32), np.zeros(0), dim))
    settings = {"model": json.dumps(model), "kind": kind, "generation": "0", "next_id": "1"}
    if unfinished:
        settings["unfinished"] = unfinished
    if inputs:
        settings["inputs_sha256"] = inputs
    db = _connect(folder / "index.sqlite")
    try:
        db.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.executemany("INSERT INTO settings VALUES (?, ?)", settings.items())
        db.commit()
    except sqlite3.Error as exc:
        db.close()
        raise RetrievalIndexError(f"{folder}: cannot create the index: {exc}") from None
    return db


def _gone(path: str) -> bool:
    """Whether an indexed file was deleted: it is not there, or it is a link whose target was deleted from a folder
    that is there (a link into a folder that cannot be reached now, a mount that is down, is kept)."""
    if not os.path.lexists(path):
        return True
    if os.path.exists(path):
        return False
    return os.path.isdir(os.path.dirname(os.path.realpath(path)))


def _unit_rows(array: np.ndarray) -> bool:
    """Whether every row of ``array`` is a unit vector (embeddings are; the rows of an image are not)."""
    norms = np.linalg.norm(np.atleast_2d(array).astype(np.float64), axis=-1)
    return bool(norms.size) and bool(np.all(np.abs(norms - 1.0) < 1e-3))


class Index:
    """An opened index: ``search`` reads the snapshot taken at open (``refresh()`` takes a newer one);
    ``add``, ``remove`` and ``sync`` write a new generation under the write lock."""

    def __init__(self, path: Path, db: sqlite3.Connection, *, strict: bool = True) -> None:
        self.path = path
        self._db = db
        self._embedder: Any = None
        self._lock: _WriteLock | None = None
        self._lock_depth = 0
        #: what is wrong with the FAISS file of the loaded generation (only an index opened by ``repair``
        #: or ``check`` gets this far with one)
        self.problem: str | None = None
        if strict:
            self.refresh()
        else:
            self.problem = self._load()

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, model: dict[str, Any], kind: str = "auto") -> Index:
        """A new empty index for embeddings described by ``model`` (model, fingerprint, pooling, dim), created
        whole or not at all; a second process creating one at ``path`` meanwhile gets ``IndexLockedError``."""
        path = Path(path)
        _check_kind(kind)
        _make_folder(path)
        with _WriteLock(path):
            db = _create(path, model, kind, None)
        return cls(path, db)

    @classmethod
    def open(cls, path: str | os.PathLike) -> Index:
        path = Path(path)
        if not (path / "index.sqlite").is_file():
            raise _no_index(path)
        if _index_state(path)[0] == "unreadable":  # another program's database: left as it is (not made WAL)
            raise _unreadable(path)
        try:
            db = _connect(path / "index.sqlite")
        except sqlite3.DatabaseError:
            raise _unreadable(path) from None
        try:
            return cls(path, db)
        except BaseException:
            db.close()
            raise

    @classmethod
    def build(
        cls,
        path: str | os.PathLike,
        paths: Sequence[str],
        embedder: Any,
        kind: str = "auto",
        progress: Callable[[int], None] | None = None,
        checkpoint: int = BUILD_CHECKPOINT,
    ) -> tuple[Index, int, list[dict[str, str]]]:
        """A new index of ``paths``: returns (index, images added, files that failed). The index records the
        embedder (:meth:`Embedder.describe`: its model file's head too, when one was named) to load it again.

        A generation is committed every ``checkpoint`` images (one at the end for an IVF-PQ index, trained
        on all of them), and the index is marked unfinished until the last. Run again after a kill, a full
        disk or a crash, with the same model, it resumes (with the kind it started with): files already indexed
        and unchanged are skipped; one indexed by then and not among ``paths`` is refused (other inputs) unless it
        was deleted since (its entry goes). A complete index at ``path`` is refused, as by ``create``, and so are the
        parts of a sharded build (``cnnapps index merge`` writes their index)."""
        path = Path(path)
        if (path / "parts" / "plan.json").is_file():
            raise RetrievalIndexError(
                f"{path}: the parts of a sharded build are here; finish it with `cnnapps index build` on ranks "
                f"(--rank, --world-size) or --ray, then `cnnapps index merge --index {path}`, or remove {path}"
            )
        keys = list(dict.fromkeys(index_path(p) for p in paths))
        with cls._writing(path, embedder.describe(), kind, "build") as index:
            unchanged = index._unchanged()
            named = set(keys)
            others = [k for k in unchanged if k not in named]  # indexed by the run this one resumes, not named now
            kept = [k for k in others if not _gone(k)]
            if kept:
                raise RetrievalIndexError(
                    f"{path}: the interrupted build here indexed {plural(len(kept), 'file')} not among these inputs "
                    f"(such as {kept[0]}); resume it with the same inputs, or remove {path}"
                )
            # skipped: indexed by the run this one resumes and unchanged since (a file missing now is not)
            todo = [k for k in keys if k not in unchanged or unchanged[k] != _size_mtime(k)]
            known = {k for k in todo if k in unchanged}  # changed or deleted since: one that fails loses its entry
            if progress is not None and len(todo) < len(paths):
                progress(len(paths) - len(todo))  # named twice, or indexed by the run this one resumes
            exact = index.kind in ("flat", "hnsw") or (
                index.kind == "auto" and len(index) + len(todo) < AUTO_IVFPQ_FROM
            )
            step = max(1, checkpoint) if exact else max(1, len(todo))
            added, failed = 0, []
            for start in range(0, max(len(todo), len(others) and 1), step):  # deleted since: gone with the first
                chunk, gone = todo[start : start + step], others if start == 0 else []
                more, bad, _ = index._apply(chunk, gone, embedder, progress, drop_failed=known)
                added += more
                failed += bad
        return index, added, failed

    @classmethod
    @contextlib.contextmanager
    def _writing(
        cls, path: Path, model: dict[str, Any], kind: str, task: str, inputs: str | None = None
    ) -> Iterator[Index]:
        """The index a ``task`` ("build" or "merge") writes, under its write lock from start to end: a new
        one marked unfinished, or the one an interrupted run of the same task left, with the same model (and
        ``inputs``, the hash of what it writes, where one is given: kept in the settings). The mark goes when the
        block completes."""
        _check_kind(kind)
        _make_folder(path)
        with _WriteLock(path) as lock:
            state, settings = _index_state(path)
            if state == "index":
                found = settings.get("unfinished")
                if found != task:
                    hint = {
                        None: "use `cnnapps index add` or `sync`",
                        "build": "run `cnnapps index build` with the same inputs to finish it",
                        "merge": f"run `cnnapps index merge --index {path}` to finish it",
                    }.get(found, "")
                    what = "an index" if found is None else f"an unfinished {found}"
                    raise RetrievalIndexError(f"{path}: {what} already exists here; {hint}")
                theirs = json.loads(settings["model"])
                if (theirs.get("fingerprint"), int(theirs["dim"])) != (model.get("fingerprint"), int(model["dim"])):
                    raise RetrievalIndexError(
                        f"{path}: an interrupted {task} with {_describe(theirs)} is here, not {_describe(model)}; "
                        "resume it with the same model and pooling, or remove the folder"
                    )
                if inputs and settings.get("inputs_sha256", inputs) != inputs:
                    raise RetrievalIndexError(
                        f"{path}: an interrupted {task} of other inputs is here; resume it with the same inputs, "
                        "or remove the folder"
                    )
                db = _connect(path / "index.sqlite")
            else:
                db = _create(path, model, kind, task, inputs)
            try:
                index = cls(path, db)
            except BaseException:
                db.close()
                raise
            index._lock, index._lock_depth = lock, 1
            try:
                yield index
                with index._db:
                    index._db.execute("DELETE FROM settings WHERE key = 'unfinished'")
                index.refresh()
            except BaseException:
                index.close()  # the caller never gets it
                raise
            finally:
                index._lock, index._lock_depth = None, 0

    def refresh(self) -> Index:
        """Load the newest committed generation; one whose FAISS file disagrees with the database is refused."""
        problem = self._load()
        if problem:
            raise RetrievalIndexError(
                f"{self.path}: {problem}; "
                f"run `cnnapps index repair --index {self.path}` to rebuild it from the database"
            )
        return self

    def refresh_if_changed(self) -> bool:
        """Load the newest committed generation when another process committed one since (one read of the
        settings: cheap enough before every search); whether it did."""
        row = self._db.execute("SELECT value FROM settings WHERE key = 'generation'").fetchone()
        if row is None or int(row[0]) == self.generation:
            return False
        self.refresh()
        return True

    def _load(self) -> str | None:
        """Read the newest generation; returns what is wrong with its FAISS file, or None."""
        import faiss

        seen = None
        while True:
            settings = self._read_settings()
            generation = int(settings["generation"])
            file = self.path / f"vectors-{generation}.faiss"
            try:
                index = faiss.read_index(str(file))
                problem = None
                break
            except RuntimeError:
                if generation != seen:  # a writer may have moved on (and removed this file) meanwhile: look again
                    seen = generation
                    continue
                index = None
                problem = f"{file.name} is {'missing' if not file.exists() else 'damaged (truncated or not FAISS)'}"
                break
        model = json.loads(settings["model"])
        if index is not None:
            rows = self._db.execute(f"SELECT COUNT(*) FROM items WHERE {self._live(generation)}").fetchone()[0]
            if index.d != int(model["dim"]):
                problem = f"{file.name} holds {index.d}-d vectors, the index is {model['dim']}-d"
            elif index.ntotal != rows:
                problem = f"{file.name} holds {index.ntotal} vectors, the database {rows}"
        if problem is None or self._lock_depth or not hasattr(self, "_faiss"):
            self._faiss = index
            self.generation = generation
            self.model = model
            self.kind = settings["kind"]
            self._settings = settings
        return problem

    def _read_settings(self) -> dict[str, str]:
        try:
            settings = dict(self._db.execute("SELECT key, value FROM settings"))
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise RetrievalIndexError(f"{self.path}: cannot read index.sqlite: {exc}") from None
            settings = {}
        except sqlite3.DatabaseError:
            raise _unreadable(self.path) from None
        if "generation" not in settings or "model" not in settings:
            raise _not_created(self.path)
        return settings

    # -- reading ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.model["dim"])

    def __len__(self) -> int:
        return 0 if self._faiss is None else int(self._faiss.ntotal)

    def _live(self, generation: int | None = None) -> str:
        g = self.generation if generation is None else generation
        return f"added_gen <= {int(g)} AND (removed_gen IS NULL OR removed_gen > {int(g)})"

    def paths(self) -> list[str]:
        return [_from_db(r[0]) for r in self._db.execute(f"SELECT path FROM items WHERE {self._live()} ORDER BY path")]

    def item_path(self, item_id: int) -> str | None:
        """The path of item ``item_id`` (a hit's ``id``) in this snapshot, or None when it holds no such item."""
        row = self._db.execute(f"SELECT path FROM items WHERE id = ? AND {self._live()}", (int(item_id),)).fetchone()
        return None if row is None else _from_db(row[0])

    @property
    def unfinished(self) -> str | None:
        """The task ("build" or "merge") that has not finished writing this index, or None: such an index holds
        only what was committed so far, and only that task, run again, adds the rest."""
        return self._settings.get("unfinished")

    def _refuse_unfinished(self) -> None:
        """Refuse an edit of an index whose build or merge was interrupted: its rerun would then find entries it
        was not given (the write lock is held, so the unfinished task is not running)."""
        if self.unfinished:
            raise RetrievalIndexError(f"{self.path}: {_interrupted(self.path, self.unfinished)}")

    def _unchanged(self) -> dict[str, tuple[int, float]]:
        """(size, mtime) of each live path, as recorded."""
        rows = self._db.execute(f"SELECT path, size, mtime FROM items WHERE {self._live()}")
        return {_from_db(p): (size, mtime) for p, size, mtime in rows}

    def info(self) -> dict[str, Any]:
        files = [self.path / "index.sqlite", self.path / f"vectors-{self.generation}.faiss"]
        return {
            "path": str(self.path),
            "items": len(self),
            "model": self.model["model"],
            **({"head": self.model["head"]} if "head" in self.model else {}),
            "pooling": self.model.get("pooling", "avg"),
            "dim": self.dim,
            "kind": self.kind,
            "faiss": "IVF-PQ + exact re-rank" if _is_ivf(self._faiss) else type(self._faiss).__name__,
            **({"ivf_lists": _lists(self._faiss)} if _is_ivf(self._faiss) else {}),
            "generation": self.generation,
            "bytes_on_disk": sum(f.stat().st_size for f in files if f.exists()),
            **({"unfinished": self.unfinished} if self.unfinished else {}),
        }

    def embedder(self, **kwargs: Any) -> Any:
        """The embedder the index was built with (loaded once; a model file's head, when one was named)."""
        if self._embedder is None:
            from cnnapps.apps.retrieve.embedder import Embedder

            model, pooling, head = self.model["model"], self.model.get("pooling", "avg"), self.model.get("head")
            self._embedder = Embedder(model, pooling=pooling, head=head, **kwargs)
            self.check_embedder(self._embedder)
        return self._embedder

    def check_embedder(self, embedder: Any) -> None:
        """Refuse an embedder other than the index's: the message names both."""
        mine = _describe(self.model)
        theirs = f"{embedder.spec} ({embedder.dim}-d, {embedder.pooling} pooling)"
        if embedder.fingerprint != self.model["fingerprint"] or embedder.dim != self.dim:
            if mine == theirs:  # the same name and shape, other weights or network (a model file rewritten, a new
                # cnnapps's registry model): its vectors are not these
                theirs = f"{theirs}, which embeds otherwise now; build a new index to query with it"
            raise RetrievalIndexError(f"{self.path}: the index was built with {mine}; the query uses {theirs}")

    def search(self, queries: Any, k: int = 10) -> list[list[Hit]]:
        """Top-``k`` hits per query: queries are vectors or images (embedded first). A float array is taken for
        vectors when it is one vector, (dim,), or its rows are unit vectors, (N, dim) (of another width: another
        model's, refused); any other array, a float grayscale image (H, W) included, is an image. Vectors of any
        length: :meth:`search_vectors`."""
        if k < 1:
            raise RetrievalIndexError(f"k: at least 1 hit per query, not {k}")
        is_float = isinstance(queries, np.ndarray) and queries.dtype.kind == "f"
        one = is_float and queries.ndim == 1 and queries.shape[0] == self.dim  # an image has two dimensions or more
        if one or (is_float and queries.ndim in (1, 2) and _unit_rows(queries)):  # embeddings are unit vectors
            return self.search_vectors(queries, k)
        names, vectors, errors = self.embedder().embed(queries)
        bad = [(n, e) for n, e in zip(names, errors, strict=True) if e]
        if bad:
            raise RetrievalIndexError(f"{bad[0][0]}: the query could not be read: {bad[0][1]}")
        return self.search_vectors(vectors, k)

    def search_vectors(self, vectors: Any, k: int = 10) -> list[list[Hit]]:
        """Top-``k`` hits per query vector, (N, dim) or one (dim,), each scaled to unit length first (a sum or mean
        of embeddings queries by what they share); a zero vector is refused."""
        if k < 1:
            raise RetrievalIndexError(f"k: at least 1 hit per query, not {k}")
        vectors = np.asarray(vectors, dtype=np.float32)
        vectors = vectors.reshape(-1, vectors.shape[-1]) if vectors.ndim in (1, 2) else vectors
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            width = vectors.shape[-1] if vectors.ndim else 0
            raise RetrievalIndexError(f"{self.path}: queries have {width} dimensions, the index {self.dim}")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if not np.all(np.isfinite(norms)) or np.any(norms == 0):
            raise RetrievalIndexError("query vectors: a zero (or not finite) vector has no direction to search")
        vectors = vectors / norms
        if len(self) == 0:
            return [[] for _ in range(len(vectors))]
        scores, ids = self._faiss.search(np.ascontiguousarray(vectors, dtype=np.float32), min(k, len(self)))
        wanted = {int(i) for i in ids.ravel() if i >= 0}
        rows = {}
        if wanted:
            marks = ",".join("?" * len(wanted))
            found = self._db.execute(f"SELECT id, path FROM items WHERE id IN ({marks})", sorted(wanted))
            rows = {i: _from_db(p) for i, p in found}
        hits = []
        for score_row, id_row in zip(scores, ids, strict=True):
            found = [(s, int(i)) for s, i in zip(score_row, id_row, strict=True) if i >= 0 and int(i) in rows]
            hits.append([Hit(rank, rows[i], float(s), i) for rank, (s, i) in enumerate(found, start=1)])
        return hits

    # -- checking and repairing ----------------------------------------------------------------
    @classmethod
    def check(cls, path: str | os.PathLike) -> dict[str, Any]:
        """What is wrong with the index at ``path``, changing nothing: ``{"path", "ok", "problems", "items",
        "generation"}``, each problem a sentence that says what to run. Raises only where there is no index."""
        path = Path(path)
        if not (path / "index.sqlite").is_file():
            raise _no_index(path)
        report: dict[str, Any] = {"path": str(path), "ok": False, "problems": [], "items": None, "generation": None}
        state, _ = _index_state(path)
        if state == "unreadable":
            report["problems"].append(_UNREADABLE)
            return report
        if state == "interrupted":
            report["problems"].append(_in_progress(path, "its creation") or _not_created_reason(path))
            return report
        index = cls(path, _connect(path / "index.sqlite"), strict=False)
        try:
            problems = report["problems"]
            repair = f"`cnnapps index repair --index {path}` "
            if index.problem:
                problems.append(f"{index.problem}: {repair}rebuilds it from the database")
            duplicates, bad = index._damaged_rows()
            if duplicates:
                problems.append(f"{len(duplicates)} stale entries share a path with a newer one: {repair}drops them")
            if bad:
                problems.append(f"{len(bad)} entries have no usable vector: {repair}drops them (add those files again)")
            if not index.problem and index._faiss is not None and hasattr(index._faiss, "id_map"):
                import faiss

                kept = set(faiss.vector_to_array(index._faiss.id_map).tolist())
                live = {r[0] for r in index._db.execute(f"SELECT id FROM items WHERE {index._live()}")}
                if kept != live:
                    problems.append(f"vectors-{index.generation}.faiss and the database list other images: {repair}")
            if index.unfinished:
                problems.append(unfinished_problem(path, index.unfinished))
            report.update(ok=not problems, items=len(index), generation=index.generation)
            return report
        finally:
            index.close()

    @classmethod
    def repair(cls, path: str | os.PathLike) -> dict[str, Any]:
        """Make the index at ``path`` usable again, under the write lock: clear a creation that was interrupted
        (build again afterwards), or drop stale and vectorless entries and rebuild the FAISS file from the
        vectors in the database, as a new generation. Returns ``{"path", "repaired": [what was done], "items",
        "problems"}``, the problems being what is left, as ``check`` says it (an interrupted build or merge is
        finished by running it again)."""
        path = Path(path)
        if not (path / "index.sqlite").is_file():
            raise _no_index(path)
        with _WriteLock(path) as lock:
            state, _ = _index_state(path)
            if state == "unreadable":
                raise _unreadable(path)
            if state == "interrupted":
                _clear_index_files(path)
                done = ["removed an index whose creation was interrupted; run `cnnapps index build` again"]
                return {"path": str(path), "repaired": done, "items": 0, "problems": []}
            index = cls(path, _connect(path / "index.sqlite"), strict=False)
            index._lock, index._lock_depth = lock, 1
            try:
                done = []
                duplicates, bad = index._damaged_rows()
                if index.problem:
                    done.append(f"rebuilt the FAISS file from the database ({index.problem})")
                if duplicates:
                    done.append(f"dropped {len(duplicates)} stale entries that shared a path with a newer one")
                if bad:
                    done.append(f"dropped {len(bad)} entries without a usable vector")
                if done:
                    index._commit([], [], drop_ids=[*duplicates, *bad], rebuild=True)
                _drop_old_generations(path, keep_from=index.generation - 1)
                items = len(index.refresh())
            finally:
                index._lock, index._lock_depth = None, 0
                index.close()
        return {"path": str(path), "repaired": done, "items": items, "problems": cls.check(path)["problems"]}

    def _damaged_rows(self) -> tuple[list[int], list[int]]:
        """Live ids of rows that share a path with a newer live row, and of rows without a usable vector."""
        live = self._live()
        newest = f"SELECT MAX(id) FROM items WHERE {live} GROUP BY path"
        duplicates = [i for (i,) in self._db.execute(f"SELECT id FROM items WHERE {live} AND id NOT IN ({newest})")]
        bad = [
            i
            for (i,) in self._db.execute(
                f"SELECT id FROM items WHERE {self._live()} AND (vector IS NULL OR length(vector) != ?)",
                (4 * self.dim,),
            )
        ]
        return sorted(set(duplicates) - set(bad)), bad

    # -- writing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        """Hold the write lock (taken once however deeply nested) on top of the newest generation."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        with _WriteLock(self.path) as lock:
            self._lock, self._lock_depth = lock, 1
            try:
                self.refresh()  # write on top of the newest generation
                yield
            finally:
                self._lock, self._lock_depth = None, 0

    def add(
        self, paths: Sequence[str], embedder: Any = None, progress: Callable[[int], None] | None = None
    ) -> tuple[int, list[dict[str, str]]]:
        """Embed and add image files (already indexed ones are re-embedded; a file named twice is added
        once). Returns (added, failed)."""
        keys = list(dict.fromkeys(index_path(p) for p in paths))
        if progress is not None and len(keys) < len(paths):
            progress(len(paths) - len(keys))
        with self._write_lock():
            self._refuse_unfinished()
            indexed = self.indexed(keys)
            # an indexed file that no longer reads loses its old entry, as sync does: no vector of content gone
            added, failed, _ = self._apply(keys, [], embedder, progress, drop_failed=indexed)
        return added, failed

    def indexed(self, paths: Sequence[str]) -> set[str]:
        """Which of ``paths`` (by ``index_path``) have an entry in the newest generation: a query per 500 files, by
        the live-path index."""
        stored = {_db_path(k): k for k in (index_path(p) for p in paths) if _storable(k)}
        names, found = list(stored), set()
        for start in range(0, len(names), 500):
            part = names[start : start + 500]
            live = f"SELECT path FROM items WHERE removed_gen IS NULL AND path IN ({','.join('?' * len(part))})"
            found |= {stored[row[0]] for row in self._db.execute(live, part)}
        return found

    def remove(self, paths: Sequence[str]) -> int:
        with self._write_lock():
            self._refuse_unfinished()
            return self._apply([], [index_path(p) for p in paths], None, None)[2]

    def sync(
        self, root: str | os.PathLike, embedder: Any = None, progress: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        """Make the index match the image files under ``root``: add new, re-embed changed, drop deleted.

        A changed file that no longer reads (corrupt, deleted meanwhile) is reported, and its old entry
        removed: the index keeps no vector of content that is gone."""
        from cnnapps.datasets.folders import expand_inputs

        if not os.path.exists(root):  # a typo or an unmounted drive: not "every file under it was deleted"
            raise RetrievalIndexError(f"{root}: no such file or folder; nothing synced")
        on_disk = {index_path(p) for p in expand_inputs([str(root)])}
        top = index_path(root)  # a folder (what lies under it) or one file
        prefix = os.path.join(top, "")
        with self._write_lock():
            self._refuse_unfinished()
            known = {
                _from_db(path): (size, mtime, sha)
                for path, size, mtime, sha in self._db.execute(
                    f"SELECT path, size, mtime, sha256 FROM items WHERE {self._live()}"
                )
                if _from_db(path) == top or _from_db(path).startswith(prefix)
            }
            # files added by name that the walk does not list (no image suffix) are still there: compared too
            named = {p for p in known.keys() - on_disk if os.path.isfile(p)}
            changed, touched = [], []
            for path in sorted((on_disk | named) & known.keys()):
                size, mtime, sha = known[path]
                if _size_mtime(path) != (size, mtime):
                    try:
                        stat = file_stat(path)
                    except OSError:
                        stat = None  # gone meanwhile: embedding reports it, and the old entry goes
                    if stat is None or stat.sha256 != sha:
                        changed.append(path)
                    else:
                        touched.append(stat)
            self._restamp(touched)
            new = sorted(on_disk - known.keys())
            # gone: deleted (or a link whose target was), not merely skipped by the walk (a file added by name
            # may have no image suffix)
            gone = sorted(p for p in known.keys() - on_disk if _gone(p))
            _, failed, removed = self._apply([*new, *changed], gone, embedder, progress, drop_failed=set(changed))
        bad = {f["path"] for f in failed}
        return {"added": len(set(new) - bad), "changed": len(set(changed) - bad), "removed": removed,
                "failed": failed, "items": len(self)}  # fmt: skip

    def _restamp(self, stats: Sequence[FileStat]) -> None:
        """Record the size and mtime of files touched but not changed (same hash), so that the next sync does
        not hash them again. The vectors stay: no new generation."""
        if stats:
            with self._db:
                self._db.executemany(
                    "UPDATE items SET size = ?, mtime = ? WHERE path = ? AND removed_gen IS NULL",
                    [(st.size, st.mtime, _db_path(st.path)) for st in stats],
                )

    def add_embedded(self, stats: Sequence[FileStat], vectors: np.ndarray) -> int:
        """Add files embedded elsewhere (the parts of a sharded build) in one generation; returns the count."""
        if len(stats) != len(vectors) or (len(vectors) and vectors.shape[1] != self.dim):
            raise RetrievalIndexError(f"{self.path}: {len(stats)} files but vectors of shape {vectors.shape}")
        with self._write_lock():
            return self._commit(list(zip(stats, vectors, strict=True)), [])[0]

    def _apply(
        self,
        add: Sequence[str],
        remove: Sequence[str],
        embedder: Any,
        progress: Callable[[int], None] | None,
        drop_failed: set[str] | frozenset[str] = frozenset(),
    ) -> tuple[int, list[dict[str, str]], int]:
        """Embed ``add`` and drop ``remove`` in one generation (the write lock is held); a file of
        ``drop_failed`` that fails loses its old entry. Returns (added, failed, removed)."""
        failed = [{"path": p, "error": "the file name cannot be stored"} for p in add if not _storable(p)]
        keys = [p for p in add if _storable(p)]
        if progress is not None and failed:
            progress(len(failed))
        rows: list[tuple[FileStat, np.ndarray]] = []
        if keys:
            embedder = embedder or self.embedder()
            self.check_embedder(embedder)
            rows, more = embed_files(embedder, keys, progress)
            failed += more
        dropped = []
        for item in failed:
            if item["path"] in drop_failed:
                item["error"] += "; its old entry was removed from the index"
                dropped.append(item["path"])
        added, removed = self._commit(rows, [*remove, *dropped])
        return added, failed, removed

    def _commit(
        self,
        new_rows: list[tuple[FileStat, np.ndarray]],
        remove: Sequence[str],
        drop_ids: Sequence[int] = (),
        rebuild: bool = False,
    ) -> tuple[int, int]:
        """Write the next generation (the write lock is held): ``new_rows`` added (replacing rows of the
        same path; the last row of a path named twice wins), ``remove`` and ``drop_ids`` dropped, the FAISS
        index rebuilt from the stored vectors when asked. Returns (added, removed)."""
        new_rows = list({st.path: (st, v) for st, v in new_rows}.values())
        replaced = {st.path for st, _ in new_rows}
        gone_ids = {int(i) for i in drop_ids}
        removed = 0
        for p in sorted(set(remove) | replaced):
            ids = [
                r[0]
                for r in self._db.execute("SELECT id FROM items WHERE path = ? AND removed_gen IS NULL", (_db_path(p),))
            ]
            gone_ids.update(ids)
            if ids and p not in replaced:
                removed += 1
        if not new_rows and not gone_ids and not rebuild:
            return 0, 0
        generation = self.generation + 1
        next_id = int(self._settings["next_id"])
        ids = np.arange(next_id, next_id + len(new_rows), dtype=np.int64)
        vectors = np.stack([v for _, v in new_rows]).astype(np.float32) if new_rows else None
        index = self._next_faiss(sorted(gone_ids), ids, vectors, rebuild)
        _write_faiss(self.path, generation, index)
        try:
            with self._db:  # one transaction: the new generation becomes current, or nothing changes
                if gone_ids:
                    marks = ",".join("?" * len(gone_ids))
                    self._db.execute(
                        f"UPDATE items SET removed_gen = ?, vector = NULL WHERE id IN ({marks})",
                        (generation, *sorted(gone_ids)),
                    )
                self._db.executemany(
                    "INSERT INTO items (id, path, size, mtime, sha256, vector, added_gen) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            int(i),
                            _db_path(st.path),
                            st.size,
                            st.mtime,
                            st.sha256,
                            v.astype(np.float32).tobytes(),
                            generation,
                        )
                        for i, (st, v) in zip(ids, new_rows, strict=True)
                    ],
                )
                self._db.execute("UPDATE settings SET value = ? WHERE key = 'generation'", (str(generation),))
                self._db.execute("UPDATE settings SET value = ? WHERE key = 'next_id'", (str(next_id + len(new_rows)),))
                if self.kind == "auto" and _is_ivf(index):
                    self._db.execute("UPDATE settings SET value = 'ivfpq' WHERE key = 'kind'")
        except sqlite3.Error as exc:
            (self.path / f"vectors-{generation}.faiss").unlink(missing_ok=True)  # never current: nobody reads it
            raise RetrievalIndexError(f"{self.path}: cannot commit generation {generation}: {exc}") from None
        _drop_old_generations(self.path, keep_from=generation - 1)
        self.refresh()
        return len(new_rows), removed

    def _next_faiss(self, gone_ids: list[int], ids: np.ndarray, vectors: np.ndarray | None, rebuild: bool) -> Any:
        """The current FAISS index with the changes applied; rebuilt where FAISS cannot change in place."""
        is_ivfpq = self._faiss is not None and _is_ivf(self._faiss)
        if not rebuild:
            total_after = len(self) - len(gone_ids) + len(ids)
            wants_ivfpq = self.kind == "ivfpq" or (self.kind == "auto" and total_after >= AUTO_IVFPQ_FROM)
            # HNSW graphs and re-ranked IVF-PQ cannot delete in place: those are rebuilt from the stored vectors
            rebuild = (wants_ivfpq and not is_ivfpq) or bool(gone_ids and (self.kind == "hnsw" or is_ivfpq))
            rebuild = rebuild or (is_ivfpq and _outgrown(self._faiss, total_after))
        if rebuild:
            skip = set(gone_ids)
            live = self._db.execute(
                f"SELECT id, vector FROM items WHERE {self._live()} AND vector IS NOT NULL ORDER BY id"
            ).fetchall()
            keep = [(i, np.frombuffer(v, dtype=np.float32)) for i, v in live if i not in skip]
            all_ids = np.array([i for i, _ in keep] + ids.tolist(), dtype=np.int64)
            parts = [np.stack([v for _, v in keep])] if keep else []
            if vectors is not None:
                parts.append(vectors)
            all_vectors = np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)
            n = len(all_vectors)
            wants_ivfpq = self.kind == "ivfpq" or (self.kind == "auto" and n >= AUTO_IVFPQ_FROM)
            kind = "ivfpq" if wants_ivfpq and n >= 1000 else ("hnsw" if self.kind == "hnsw" else "flat")
            return build_faiss(kind, all_vectors, all_ids, self.dim)
        import faiss

        index = faiss.clone_index(self._faiss)
        if gone_ids:
            index.remove_ids(np.array(gone_ids, dtype=np.int64))
        if vectors is not None:
            index.add_with_ids(np.ascontiguousarray(vectors), ids)
        return index

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe(model: dict[str, Any]) -> str:
    head = f"head {model['head']}, " if model.get("head") is not None else ""
    return f"{model['model']} ({head}{model['dim']}-d, {model.get('pooling', 'avg')} pooling)"


def _size_mtime(path: str) -> tuple[int, float] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime


def ivf_lists(n: int) -> int:
    """The inverted lists of an IVF-PQ index of ``n`` vectors: about sqrt(n), trained on 64 vectors per list
    (minutes, not hours, for a million images)."""
    return int(min(4096, max(16, np.sqrt(n)), n // 39))


def _outgrown(index: Any, n: int) -> bool:
    """Whether an IVF-PQ index grown to ``n`` vectors wants twice the lists it was trained with or more (its
    coarse centroids and PQ codebooks learnt on the first images: retrained, from the stored vectors, each time the
    index about quadruples)."""
    return ivf_lists(n) >= 2 * _lists(index)


def _lists(index: Any) -> int:
    import faiss

    return int(faiss.extract_index_ivf(index).nlist)


def _is_ivf(index: Any) -> bool:
    import faiss

    try:
        faiss.extract_index_ivf(index)
        return True
    except RuntimeError:
        return False


def _connect(file: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(file), timeout=30, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


def _write_faiss(folder: Path, generation: int, index: Any) -> None:
    """Write under a temporary name, flush to disk, then rename: the file appears whole or not at all.
    A failure (a full disk) removes the temporary file and says why in one line."""
    import faiss

    from cnnapps.files import atomic_write

    final = folder / f"vectors-{generation}.faiss"

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # through Python, so a failed write raises the OSError that says why
            faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))

    try:
        atomic_write(final, write, overwrite=True)
    except OSError as exc:
        raise RetrievalIndexError(f"{folder}: cannot write {final.name}: {_reason(exc)}") from None


def _drop_old_generations(folder: Path, keep_from: int) -> None:
    """Remove FAISS files older than ``keep_from`` and temporary files of killed writers."""
    for file in folder.glob("vectors-*.faiss"):
        try:
            if int(file.stem.split("-")[1]) < keep_from:
                file.unlink(missing_ok=True)
        except ValueError:
            continue
    for tmp in folder.glob(".vectors-*.tmp"):
        tmp.unlink(missing_ok=True)
