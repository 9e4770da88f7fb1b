"""A persistent image index: FAISS for the vectors, SQLite for everything else.

Layout of an index folder::

    index.sqlite           items (path, size, mtime, sha256, vector) and settings (model, dim, kind, generation)
    vectors-<gen>.faiss    the FAISS index of generation <gen>
    write.lock             held by the one process writing

Every write builds the next generation's FAISS file under a temporary name, renames it into
place, then commits the SQLite transaction that makes it current. A process killed at any
point leaves the previous generation or the new one, never a mix. Rows are kept with the
generations that added and removed them, so a reader keeps a consistent snapshot while a
writer works (SQLite runs in WAL mode so readers never wait).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnapps.errors import CnnappsError

KINDS = ("auto", "flat", "ivfpq", "hnsw")
#: ``auto`` switches from exact search to IVF-PQ at this many vectors.
AUTO_IVFPQ_FROM = 100_000


class RetrievalIndexError(CnnappsError):
    """An index that cannot be opened, written or queried as asked."""


class IndexLockedError(RetrievalIndexError):
    """Another process is writing the index."""


@dataclass
class Hit:
    rank: int
    path: str
    score: float

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
    return FileStat(os.path.abspath(path), st.st_size, st.st_mtime, sha256_of(Path(path)))


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
        # about sqrt(n) lists, trained on 64 vectors per list: minutes, not hours, for a million images
        nlist = int(min(4096, max(16, np.sqrt(n)), n // 39))
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


class Index:
    """An opened index: ``search`` reads the snapshot taken at open (``refresh()`` takes a newer one);
    ``add``, ``remove`` and ``sync`` write a new generation under the write lock."""

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path = path
        self._db = db
        self._embedder: Any = None
        self.refresh()

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, model: dict[str, Any], kind: str = "auto") -> Index:
        """A new empty index for embeddings described by ``model`` (model, fingerprint, pooling, dim)."""
        if kind not in KINDS:
            raise RetrievalIndexError(f"--kind {kind}: choose one of {', '.join(KINDS)}")
        path = Path(path)
        if (path / "index.sqlite").exists():
            raise RetrievalIndexError(f"{path}: an index already exists here; use `cnnapps index add` or `sync`")
        path.mkdir(parents=True, exist_ok=True)
        faiss_kind = "flat" if kind in ("auto", "ivfpq") else kind  # IVF-PQ is trained when vectors arrive
        _write_faiss(
            path, 0, build_faiss(faiss_kind, np.zeros((0, model["dim"]), np.float32), np.zeros(0), model["dim"])
        )
        db = _connect(path / "index.sqlite")
        with db:  # the database appears last: an index folder without it is not an index yet
            db.executescript(_SCHEMA)
            settings = {"model": json.dumps(model), "kind": kind, "generation": "0", "next_id": "1"}
            db.executemany("INSERT INTO settings VALUES (?, ?)", settings.items())
        return cls(path, db)

    @classmethod
    def open(cls, path: str | os.PathLike) -> Index:
        path = Path(path)
        if not (path / "index.sqlite").is_file():
            raise RetrievalIndexError(f"{path}: no index here (build one with `cnnapps index build`)")
        return cls(path, _connect(path / "index.sqlite"))

    def refresh(self) -> Index:
        """Load the newest committed generation."""
        import faiss

        for _ in range(20):  # a writer may remove an old generation between our two reads
            settings = dict(self._db.execute("SELECT key, value FROM settings"))
            generation = int(settings["generation"])
            file = self.path / f"vectors-{generation}.faiss"
            try:
                self._faiss = faiss.read_index(str(file))
                break
            except RuntimeError:
                time.sleep(0.05)
        else:
            raise RetrievalIndexError(f"{self.path}: cannot read {file.name}; the index is damaged")
        self.generation = generation
        self.model = json.loads(settings["model"])
        self.kind = settings["kind"]
        self._settings = settings
        return self

    # -- reading ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.model["dim"])

    def __len__(self) -> int:
        return int(self._faiss.ntotal)

    def _live(self, generation: int | None = None) -> str:
        g = self.generation if generation is None else generation
        return f"added_gen <= {int(g)} AND (removed_gen IS NULL OR removed_gen > {int(g)})"

    def paths(self) -> list[str]:
        return [r[0] for r in self._db.execute(f"SELECT path FROM items WHERE {self._live()} ORDER BY path")]

    def info(self) -> dict[str, Any]:
        files = [self.path / "index.sqlite", self.path / f"vectors-{self.generation}.faiss"]
        return {
            "path": str(self.path),
            "items": len(self),
            "model": self.model["model"],
            "pooling": self.model.get("pooling", "avg"),
            "dim": self.dim,
            "kind": self.kind,
            "faiss": "IVF-PQ + exact re-rank" if _is_ivf(self._faiss) else type(self._faiss).__name__,
            "generation": self.generation,
            "bytes_on_disk": sum(f.stat().st_size for f in files if f.exists()),
        }

    def embedder(self, **kwargs: Any) -> Any:
        """The embedder the index was built with (loaded once)."""
        if self._embedder is None:
            from cnnapps.apps.retrieve.embedder import Embedder

            self._embedder = Embedder(self.model["model"], pooling=self.model.get("pooling", "avg"), **kwargs)
            self.check_embedder(self._embedder)
        return self._embedder

    def check_embedder(self, embedder: Any) -> None:
        """Refuse an embedder other than the index's: the message names both."""
        mine = f"{self.model['model']} ({self.dim}-d, {self.model.get('pooling', 'avg')} pooling)"
        theirs = f"{embedder.spec} ({embedder.dim}-d, {embedder.pooling} pooling)"
        if embedder.fingerprint != self.model["fingerprint"] or embedder.dim != self.dim:
            raise RetrievalIndexError(f"{self.path}: the index was built with {mine}; the query uses {theirs}")

    def search(self, queries: Any, k: int = 10) -> list[list[Hit]]:
        """Top-``k`` hits per query: queries are unit vectors (N, dim) or images (embedded first)."""
        if isinstance(queries, np.ndarray) and queries.ndim == 2 and queries.dtype.kind == "f":
            vectors = queries
        else:
            _, vectors, errors = self.embedder().embed(queries)
            bad = [e for e in errors if e]
            if bad:
                raise RetrievalIndexError(f"query could not be read: {bad[0]}")
        if vectors.shape[1] != self.dim:
            raise RetrievalIndexError(f"{self.path}: queries have {vectors.shape[1]} dimensions, the index {self.dim}")
        if len(self) == 0:
            return [[] for _ in range(len(vectors))]
        scores, ids = self._faiss.search(np.ascontiguousarray(vectors, dtype=np.float32), min(k, len(self)))
        wanted = {int(i) for i in ids.ravel() if i >= 0}
        rows = {}
        if wanted:
            marks = ",".join("?" * len(wanted))
            rows = dict(self._db.execute(f"SELECT id, path FROM items WHERE id IN ({marks})", sorted(wanted)))
        hits = []
        for score_row, id_row in zip(scores, ids, strict=True):
            found = [(s, rows[int(i)]) for s, i in zip(score_row, id_row, strict=True) if i >= 0 and int(i) in rows]
            hits.append([Hit(rank, path, float(s)) for rank, (s, path) in enumerate(found, start=1)])
        return hits

    # -- writing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        import fcntl

        lock = open(self.path / "write.lock", "a+")  # noqa: SIM115 - held for the whole write
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise IndexLockedError(
                f"{self.path}: index is locked by a writer ({holder}); try again when it is done"
            ) from None
        try:
            lock.seek(0)
            lock.truncate()
            lock.write(f"pid {os.getpid()}")
            lock.flush()
            self.refresh()  # write on top of the newest generation
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()

    def add(
        self, paths: Sequence[str], embedder: Any = None, progress: Callable[[int], None] | None = None
    ) -> tuple[int, list[dict[str, str]]]:
        """Embed and add image files (already indexed ones are re-embedded). Returns (added, failed)."""
        added, failed, _ = self._update([os.path.abspath(p) for p in paths], [], embedder, progress)
        return added, failed

    def remove(self, paths: Sequence[str]) -> int:
        _, _, removed = self._update([], [os.path.abspath(p) for p in paths], None, None)
        return removed

    def sync(
        self, root: str | os.PathLike, embedder: Any = None, progress: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        """Make the index match the image files under ``root``: add new, re-embed changed, drop deleted."""
        from cnnapps.datasets.folders import expand_inputs

        on_disk = {os.path.abspath(p) for p in expand_inputs([str(root)])}
        prefix = os.path.abspath(root) + os.sep
        known = {
            path: (size, mtime, sha)
            for path, size, mtime, sha in self._db.execute(
                f"SELECT path, size, mtime, sha256 FROM items WHERE {self._live()}"
            )
            if path.startswith(prefix)
        }
        changed = []
        for path in sorted(on_disk & set(known)):
            size, mtime, sha = known[path]
            st = os.stat(path)
            if (st.st_size, st.st_mtime) != (size, mtime) and file_stat(path).sha256 != sha:
                changed.append(path)
        new = sorted(on_disk - set(known))
        gone = sorted(set(known) - on_disk)
        _, failed, _ = self._update([*new, *changed], gone, embedder, progress)
        return {"added": len(new), "changed": len(changed), "removed": len(gone), "failed": failed, "items": len(self)}

    def add_embedded(self, stats: Sequence[FileStat], vectors: np.ndarray) -> int:
        """Add files embedded elsewhere (the parts of a sharded build) in one generation; returns the count."""
        if len(stats) != len(vectors) or (len(vectors) and vectors.shape[1] != self.dim):
            raise RetrievalIndexError(f"{self.path}: {len(stats)} files but vectors of shape {vectors.shape}")
        with self._write_lock():
            return self._commit(list(zip(stats, vectors, strict=True)), [])[0]

    def _update(
        self, add: Sequence[str], remove: Sequence[str], embedder: Any, progress: Callable[[int], None] | None
    ) -> tuple[int, list[dict[str, str]], int]:
        with self._write_lock():
            failed: list[dict[str, str]] = []
            new_rows: list[tuple[FileStat, np.ndarray]] = []
            if add:
                embedder = embedder or self.embedder()
                self.check_embedder(embedder)
                names, vectors, errors = embedder.embed(list(add), progress=progress)
                for name, vector, error in zip(names, vectors, errors, strict=True):
                    if error:
                        failed.append({"path": name, "error": error})
                    else:
                        new_rows.append((file_stat(name), vector))
            added, removed = self._commit(new_rows, remove)
            return added, failed, removed

    def _commit(self, new_rows: list[tuple[FileStat, np.ndarray]], remove: Sequence[str]) -> tuple[int, int]:
        """Write the next generation (the write lock is held): ``new_rows`` added (replacing rows of the
        same path), ``remove`` dropped. Returns (added, removed)."""
        replaced = {st.path for st, _ in new_rows}
        gone_paths = set(remove) | replaced
        gone_ids = [
            row[0]
            for p in sorted(gone_paths)
            for row in self._db.execute("SELECT id FROM items WHERE path = ? AND removed_gen IS NULL", (p,))
        ]
        if not new_rows and not gone_ids:
            return 0, 0
        generation = self.generation + 1
        next_id = int(self._settings["next_id"])
        ids = np.arange(next_id, next_id + len(new_rows), dtype=np.int64)
        vectors = np.stack([v for _, v in new_rows]).astype(np.float32) if new_rows else None
        index = self._next_faiss(gone_ids, ids, vectors)
        _write_faiss(self.path, generation, index)
        with self._db:  # one transaction: the new generation becomes current, or nothing changes
            if gone_ids:
                marks = ",".join("?" * len(gone_ids))
                self._db.execute(
                    f"UPDATE items SET removed_gen = ?, vector = NULL WHERE id IN ({marks})",
                    (generation, *gone_ids),
                )
            self._db.executemany(
                "INSERT INTO items (id, path, size, mtime, sha256, vector, added_gen) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (int(i), st.path, st.size, st.mtime, st.sha256, v.astype(np.float32).tobytes(), generation)
                    for i, (st, v) in zip(ids, new_rows, strict=True)
                ],
            )
            self._db.execute("UPDATE settings SET value = ? WHERE key = 'generation'", (str(generation),))
            self._db.execute("UPDATE settings SET value = ? WHERE key = 'next_id'", (str(next_id + len(new_rows)),))
            if self.kind == "auto" and _is_ivf(index):
                self._db.execute("UPDATE settings SET value = 'ivfpq' WHERE key = 'kind'")
        _drop_old_generations(self.path, keep_from=generation - 1)
        self.refresh()
        return len(new_rows), len(set(gone_ids) - set(ids.tolist()))

    def _next_faiss(self, gone_ids: list[int], ids: np.ndarray, vectors: np.ndarray | None) -> Any:
        """The current FAISS index with the changes applied; rebuilt where FAISS cannot change in place."""
        total_after = len(self) - len(gone_ids) + len(ids)
        wants_ivfpq = self.kind == "ivfpq" or (self.kind == "auto" and total_after >= AUTO_IVFPQ_FROM)
        is_ivfpq = _is_ivf(self._faiss)
        # HNSW graphs and re-ranked IVF-PQ cannot delete in place: those are rebuilt from the stored vectors
        if (wants_ivfpq and not is_ivfpq) or (gone_ids and (self.kind == "hnsw" or is_ivfpq)):
            live = self._db.execute(
                f"SELECT id, vector FROM items WHERE {self._live()} AND vector IS NOT NULL ORDER BY id"
            ).fetchall()
            keep = [(i, np.frombuffer(v, dtype=np.float32)) for i, v in live if i not in set(gone_ids)]
            all_ids = np.array([i for i, _ in keep] + ids.tolist(), dtype=np.int64)
            parts = [np.stack([v for _, v in keep])] if keep else []
            if vectors is not None:
                parts.append(vectors)
            all_vectors = np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)
            kind = "ivfpq" if wants_ivfpq and len(all_vectors) >= 1000 else ("hnsw" if self.kind == "hnsw" else "flat")
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
    """Write to a temporary name, flush to disk, then rename: the file appears whole or not at all."""
    import faiss

    final = folder / f"vectors-{generation}.faiss"
    tmp = folder / f".vectors-{generation}.faiss.{os.getpid()}.tmp"
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)


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
