"""Every state a killed or failed writer leaves can be opened, resumed or repaired by some command."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnnapps.apps.retrieve.index import Index, IndexLockedError, RetrievalIndexError, build_faiss


def _gallery(stand_ins, folder: Path, n: int) -> list[str]:
    return [stand_ins.write_png(folder / f"{i:03d}.png", seed=i) for i in range(n)]


def _one_line(exc: pytest.ExceptionInfo, folder: Path) -> str:
    text = str(exc.value)
    assert "\n" not in text and text.startswith(str(folder)), text
    return text


def _run(stand_ins, body: str, *args: object, **env: str) -> subprocess.Popen:
    script = stand_ins.PRELUDE + "import sys\nimport faiss\nfrom cnnapps.apps.retrieve import index as m\n" + body
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


BUILD = (
    "embedder = stand_ins.PixelEmbedder(delay=float(__import__('os').environ.get('DELAY', '0')))\n"
    "print('ready', flush=True)\n"
    "m.Index.build(sys.argv[1], sys.argv[2:], embedder, checkpoint=10)\n"
)


def test_a_build_killed_at_any_moment_resumes(stand_ins, tmp_path: Path) -> None:
    n = 100
    files = _gallery(stand_ins, tmp_path / "images", n)
    folder = tmp_path / "idx"
    seen = []
    for attempt in range(8):
        proc = _run(stand_ins, BUILD, folder, *files, DELAY="0.02")
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3 * attempt)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        if not (folder / "index.sqlite").exists():
            with pytest.raises(RetrievalIndexError, match="no index here"):
                Index.open(folder)
            continue
        with Index.open(folder) as index:  # whatever was committed opens and answers
            seen.append(len(index))
            assert len(index) % 10 == 0
            if len(index):
                probe = stand_ins.PixelEmbedder().embed([index.paths()[0]])[1]
                assert index.search(probe, k=1)[0][0].score > 0.999
        report = Index.check(folder)
        assert report["ok"] or any("build was interrupted" in p for p in report["problems"])
        assert Index.repair(folder)["problems"] == report["problems"]  # nothing to repair: rerun the build
        with pytest.raises(RetrievalIndexError, match="already exists"):
            Index.create(folder, stand_ins.PixelEmbedder().describe())
        if 0 < len(index) < n:
            break
    assert any(0 < c < n for c in seen), seen  # a kill landed between two checkpoints

    embedder = stand_ins.PixelEmbedder()
    committed = len(Index.open(folder))
    index, added, failed = Index.build(folder, files, embedder, checkpoint=10)
    assert not failed and added == n - committed and len(embedder.embedded) == n - committed
    assert len(index) == n and Index.check(folder)["ok"]
    with pytest.raises(RetrievalIndexError, match="an index already exists here"):
        Index.build(folder, files, embedder)


@pytest.mark.parametrize("where", ["after the FAISS file", "inside the creating transaction", "older version"])
def test_a_creation_killed_midway_leaves_a_folder_that_build_and_repair_accept(
    stand_ins, tmp_path: Path, where: str
) -> None:
    files = _gallery(stand_ins, tmp_path / "images", 3)
    folder = tmp_path / "idx"
    if where == "older version":  # tables committed, settings not: what `index build` left before this fix
        folder.mkdir()
        with sqlite3.connect(folder / "index.sqlite") as db:
            db.executescript("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);")
    else:
        kill = {
            "after the FAISS file": (
                "write = m._write_faiss\n"
                "def _write(*a):\n    write(*a)\n    os.kill(os.getpid(), signal.SIGKILL)\n"
                "m._write_faiss = _write\n"
            ),
            "inside the creating transaction": (
                "import sqlite3\n"
                "class Dying(sqlite3.Connection):\n"
                "    def executemany(self, *a):\n        os.kill(os.getpid(), signal.SIGKILL)\n"
                "def _connect(file):\n"
                "    db = sqlite3.connect(str(file), factory=Dying)\n"
                "    db.execute('PRAGMA journal_mode=WAL')\n    return db\n"
                "m._connect = _connect\n"
            ),
        }[where]
        body = "import os, signal\n" + kill + BUILD
        proc = _run(stand_ins, body, folder, *files)
        proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL
    if (folder / "index.sqlite").exists():
        with pytest.raises(RetrievalIndexError) as exc:
            Index.open(folder)
        assert "not fully created" in _one_line(exc, folder) and "index repair" in str(exc.value)
        assert not Index.check(folder)["ok"]
    else:
        with pytest.raises(RetrievalIndexError, match="no index here"):
            Index.open(folder)
    if where == "older version":
        assert "creation was interrupted" in Index.repair(folder)["repaired"][0]
        assert not (folder / "index.sqlite").exists()
    index, added, failed = Index.build(folder, files, stand_ins.PixelEmbedder())
    assert (added, failed, len(index)) == (3, [], 3) and Index.check(folder)["ok"]


def test_two_builds_of_one_new_index_at_once_one_wins_the_other_is_told(stand_ins, tmp_path: Path) -> None:
    files = _gallery(stand_ins, tmp_path / "images", 20)
    folder = tmp_path / "idx"
    body = (
        "import time\nembedder = stand_ins.PixelEmbedder(delay=0.02)\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"  # both start at one moment
        "try:\n    m.Index.build(sys.argv[1], sys.argv[3:], embedder)\n    print('built')\n"
        "except m.RetrievalIndexError as exc:\n    print(type(exc).__name__, exc)\n"
    )
    start = time.time() + 3
    procs = [_run(stand_ins, body, folder, start, *files) for _ in range(2)]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        outs.append(out.strip())
    assert sorted(o == "built" for o in outs) == [False, True], outs
    loser = next(o for o in outs if o != "built")
    assert "\n" not in loser and str(folder) in loser
    assert loser.startswith("IndexLockedError") or "already exists" in loser
    assert len(Index.open(folder)) == 20 and Index.check(folder)["ok"]


@pytest.fixture()
def built(stand_ins, tmp_path: Path) -> tuple[Path, list[str]]:
    files = _gallery(stand_ins, tmp_path / "images", 5)
    index, _, _ = Index.build(tmp_path / "idx", files, stand_ins.PixelEmbedder())
    index.close()
    return tmp_path / "idx", files


def _other_faiss(dim: int, n: int) -> object:
    vectors = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    return build_faiss("flat", vectors, np.arange(1, n + 1), dim)


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        ("truncate", "damaged"),
        ("delete", "missing"),
        ("other dimension", "holds 16-d vectors, the index is 32-d"),
        ("other count", "holds 2 vectors, the database 5"),
    ],
)
def test_a_faiss_file_that_disagrees_with_the_database_is_refused_until_repaired(
    stand_ins, built, damage: str, said: str
) -> None:
    import faiss

    folder, files = built
    current = folder / f"vectors-{Index.open(folder).generation}.faiss"
    if damage == "truncate":
        current.write_bytes(current.read_bytes()[:100])
    elif damage == "delete":
        current.unlink()
    else:
        faiss.write_index(_other_faiss(16, 5) if damage == "other dimension" else _other_faiss(32, 2), str(current))
    with pytest.raises(RetrievalIndexError) as exc:
        Index.open(folder)
    text = _one_line(exc, folder)
    assert said in text and f"cnnapps index repair --index {folder}" in text
    report = Index.check(folder)
    assert not report["ok"] and said in report["problems"][0]

    repaired = Index.repair(folder)
    assert repaired["items"] == 5 and "rebuilt the FAISS file" in repaired["repaired"][0]
    with Index.open(folder) as index:
        assert len(index) == 5 and Index.check(folder)["ok"]
        probe = stand_ins.PixelEmbedder().embed([files[3]])[1]
        assert index.search(probe, k=1)[0][0].path == files[3]
        assert index.remove([files[3]]) == 1 and len(index) == 4
    assert len(Index.open(folder)) == 4 and Index.check(folder)["ok"]


def test_repair_drops_entries_an_older_version_duplicated(stand_ins, built) -> None:
    folder, files = built
    with sqlite3.connect(folder / "index.sqlite") as db:  # what `add X X` used to leave: two live rows of X
        db.execute(
            "INSERT INTO items (id, path, size, mtime, sha256, vector, added_gen) "
            "SELECT 99, path, size, mtime, sha256, vector, added_gen FROM items WHERE path = ?",
            (files[0],),
        )
    report = Index.check(folder)
    assert not report["ok"] and any("stale entries" in p for p in report["problems"])
    assert any("dropped 1 stale" in d for d in Index.repair(folder)["repaired"])
    with Index.open(folder) as index:
        probe = stand_ins.PixelEmbedder().embed([files[0]])[1]
        hits = index.search(probe, k=2)[0]
        assert hits[0].path == files[0] and hits[1].path != files[0] and len(index) == 5


def test_a_failed_faiss_write_removes_its_temporary_file_and_says_why(stand_ins, built) -> None:
    folder, _ = built
    more = _gallery(stand_ins, folder.parent / "more", 50)
    body = (
        "import resource, signal\nindex = m.Index.open(sys.argv[1])\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # a write past the limit fails with EFBIG instead
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))\n"
        "try:\n    index.add(sys.argv[2:], embedder=stand_ins.PixelEmbedder())\n"
        "except m.RetrievalIndexError as exc:\n    print(exc)\n"
    )
    out, err = _run(stand_ins, body, folder, *more).communicate(timeout=120)
    assert out.strip() == f"{folder}: cannot write vectors-2.faiss: file too large", err[-2000:]
    assert not list(folder.glob(".*.tmp")) and not (folder / "vectors-2.faiss").exists()
    assert len(Index.open(folder)) == 5 and Index.check(folder)["ok"]


@contextlib.contextmanager
def _small_disk(folder: Path, size: str) -> object:
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode:
        pytest.skip("mounting a small file system needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_leaves_the_index_as_it_was(stand_ins, tmp_path: Path) -> None:
    with _small_disk(tmp_path / "disk", "8m") as disk:
        embedder = stand_ins.PixelEmbedder(dim=256)
        files = _gallery(stand_ins, tmp_path / "images", 600)
        index, _, _ = Index.build(disk / "idx", files[:5], embedder)
        filler = disk / "filler"
        with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as fh:
            while True:
                fh.write(b"\0" * 4096)
        with pytest.raises(RetrievalIndexError) as exc:
            index.add(files[5:], embedder=embedder)
        assert _one_line(exc, disk / "idx").endswith("no space left on device")
        assert not list((disk / "idx").glob(".*.tmp"))
        assert len(Index.open(disk / "idx")) == 5 and Index.check(disk / "idx")["ok"]
        filler.unlink()
        assert index.add(files[5:], embedder=embedder) == (595, [])
        assert len(Index.open(disk / "idx")) == 600


def test_a_second_writer_is_still_told_the_index_is_locked(stand_ins, built) -> None:
    import fcntl

    folder, files = built
    with open(folder / "write.lock", "a+") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for write in (lambda: Index.repair(folder), lambda: Index.open(folder).remove(files[:1])):
            with pytest.raises(IndexLockedError, match="index is locked by a writer"):
                write()


def test_a_resumed_build_drops_a_file_deleted_since_and_reports_a_missing_input(stand_ins, tmp_path: Path) -> None:
    class Killed(stand_ins.PixelEmbedder):
        def embed(self, paths, progress=None):
            if self.embedded:  # killed after the first checkpoint
                raise KeyboardInterrupt
            return super().embed(paths, progress)

    files = _gallery(stand_ins, tmp_path / "images", 4)
    with pytest.raises(KeyboardInterrupt):
        Index.build(tmp_path / "idx", files, Killed(), checkpoint=2)
    assert len(Index.open(tmp_path / "idx")) == 2
    os.remove(files[0])  # indexed by the first run, deleted before the second
    missing = str(tmp_path / "images" / "missing.png")  # never there: reported, as `index add` does
    index, added, failed = Index.build(tmp_path / "idx", [*files, missing], stand_ins.PixelEmbedder(), checkpoint=2)
    assert added == 2 and {f["path"]: f["error"] for f in failed} == {
        files[0]: "no such file; its old entry was removed from the index",
        missing: "no such file",
    }
    assert index.paths() == files[1:] and Index.check(tmp_path / "idx")["ok"]


def test_check_during_a_build_says_it_is_in_progress_not_interrupted(stand_ins, tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    seen = []

    class Checking(stand_ins.PixelEmbedder):
        def embed(self, paths, progress=None):
            seen.append(Index.check(folder)["problems"])  # the build holds the write lock meanwhile
            return super().embed(paths, progress)

    Index.build(folder, _gallery(stand_ins, tmp_path / "images", 2), Checking())
    assert seen == [[f"its build is in progress (pid {os.getpid()}); check again when it is done"]]
    assert Index.check(folder)["ok"]

    import fcntl

    creating = tmp_path / "creating"  # a database without settings yet, its creator alive
    creating.mkdir()
    db = sqlite3.connect(creating / "index.sqlite")
    db.execute("CREATE TABLE settings (key TEXT, value TEXT)")
    db.close()
    with open(creating / "write.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        problems = Index.check(creating)["problems"]
    assert problems == ["its creation is in progress (another process); check again when it is done"]
    assert "was interrupted" in Index.check(creating)["problems"][0]  # its creator gone
