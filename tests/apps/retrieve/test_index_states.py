"""What an index does with a state that is not a plain finished index, and what it says: another program's
database is never cleared, an interrupted build is reported and refuses other writers, sync compares files the walk
does not list and does not hash a touched file twice, a query that cannot be read is named."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from cnnapps.apps.retrieve import index as index_module
from cnnapps.apps.retrieve.index import Index, RetrievalIndexError

UNREADABLE = "index.sqlite is not a readable index database; move it away and build the index again"
INTERRUPTED = "its build was interrupted: run `cnnapps index build` with the same inputs to finish it"


class StopAfter:
    """Wraps an embedder: the call to ``embed`` after ``calls`` of them raises KeyboardInterrupt (Ctrl-C)."""

    def __init__(self, embedder, calls: int) -> None:
        self.inner, self.calls = embedder, calls

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def embed(self, paths, progress=None):
        if self.calls == 0:
            raise KeyboardInterrupt
        self.calls -= 1
        return self.inner.embed(paths, progress)


def _gallery(stand_ins, folder: Path, n: int) -> list[str]:
    return [stand_ins.write_png(folder / f"{i:02d}.png", seed=i) for i in range(n)]


def _interrupted(stand_ins, folder: Path, files: list[str], embedder=None) -> None:
    """An index whose build was stopped after its first checkpoint (one image)."""
    with pytest.raises(KeyboardInterrupt):
        Index.build(folder, files, StopAfter(embedder or stand_ins.PixelEmbedder(), 1), checkpoint=1)


@pytest.mark.parametrize("schema", ["CREATE TABLE notes (text TEXT)", "CREATE TABLE settings (key TEXT, value TEXT);"
                                    "INSERT INTO settings VALUES ('theme', 'dark')"])  # fmt: skip
def test_another_programs_database_is_refused_and_never_cleared(stand_ins, tmp_path: Path, schema: str) -> None:
    folder = tmp_path / "theirs"
    folder.mkdir()
    with sqlite3.connect(folder / "index.sqlite") as db:
        db.executescript(schema)
    before = (folder / "index.sqlite").read_bytes()
    files = _gallery(stand_ins, tmp_path / "images", 2)
    for write in (lambda: Index.build(folder, files, stand_ins.PixelEmbedder()), lambda: Index.repair(folder),
                  lambda: Index.open(folder)):  # fmt: skip
        with pytest.raises(RetrievalIndexError, match=f"^{folder}: {UNREADABLE}$"):
            write()
    assert Index.check(folder)["problems"] == [UNREADABLE]
    assert (folder / "index.sqlite").read_bytes() == before  # was deleted as "an interrupted build"
    assert sorted(p.name for p in folder.iterdir()) == ["index.sqlite"]  # no write.lock left in their folder


def test_an_interrupted_build_is_reported_refuses_other_writers_and_resumes(stand_ins, tmp_path: Path) -> None:
    files = _gallery(stand_ins, tmp_path / "images", 3)
    folder = tmp_path / "idx"
    _interrupted(stand_ins, folder, files)
    index = Index.open(folder)
    assert index.unfinished == "build" and index.info()["unfinished"] == "build" and len(index) == 1
    other = stand_ins.write_png(tmp_path / "other.png", seed=9)
    embedder = stand_ins.PixelEmbedder()
    for write in (lambda: index.add([other], embedder=embedder), lambda: index.sync(tmp_path / "images", embedder),
                  lambda: index.remove(files[:1])):  # fmt: skip
        with pytest.raises(RetrievalIndexError, match=f"^{folder}: {INTERRUPTED}$"):
            write()
    assert len(index.refresh()) == 1 and not embedder.embedded
    built, added, failed = Index.build(folder, files, embedder)  # was: "indexed 1 files not among these inputs"
    assert (added, failed, len(built), built.unfinished) == (2, [], 3, None) and "unfinished" not in built.info()
    assert Index.check(folder)["ok"]


def test_a_resumed_build_with_other_inputs_counts_its_files_in_words(stand_ins, tmp_path: Path) -> None:
    files = _gallery(stand_ins, tmp_path / "images", 2)
    _interrupted(stand_ins, tmp_path / "idx", files)
    with pytest.raises(RetrievalIndexError, match="indexed 1 file not among these inputs"):
        Index.build(tmp_path / "idx", files[1:], stand_ins.PixelEmbedder())


@pytest.fixture()
def named(stand_ins, tmp_path: Path):
    """An index of a folder with a file added by name that the walk does not list (no image suffix)."""
    embedder = stand_ins.PixelEmbedder()
    folder = tmp_path / "photos"
    files = _gallery(stand_ins, folder, 2)
    plain = stand_ins.write_png(folder / "scan.dat", seed=5)
    index = Index.create(tmp_path / "idx", embedder.describe())
    index.add([*files, plain], embedder=embedder)
    return index, folder, plain, embedder


def test_sync_re_embeds_a_changed_file_added_by_name_that_the_walk_does_not_list(named, stand_ins) -> None:
    index, folder, plain, embedder = named
    stand_ins.write_png(plain, seed=6)  # new content, same name
    report = index.sync(folder, embedder=embedder)
    assert (report["added"], report["changed"], report["removed"], report["items"]) == (0, 1, 0, 3)
    probe = embedder.embed([plain])[1]
    hit = index.search(probe, k=1)[0][0]
    assert hit.path == plain and hit.score > 0.999  # was: the vector of the old content


def test_a_touched_but_unchanged_file_is_hashed_once(named, monkeypatch: pytest.MonkeyPatch) -> None:
    index, folder, _, embedder = named
    touched = str(folder / "00.png")
    os.utime(touched, (1_000_000, 1_000_000))
    hashed = []
    stat = index_module.file_stat
    monkeypatch.setattr(index_module, "file_stat", lambda path: hashed.append(path) or stat(path))
    generation = index.generation
    report = index.sync(folder, embedder=embedder)
    assert (report["changed"], hashed, index.generation) == (0, [touched], generation)  # no new generation
    report = index.sync(folder, embedder=embedder)
    assert (report["changed"], hashed) == (0, [touched])  # was hashed again on every sync
    os.utime(touched, (2_000_000, 2_000_000))
    assert index.sync(folder, embedder=embedder)["changed"] == 0 and hashed == [touched, touched]


def test_a_query_that_cannot_be_read_is_named(stand_ins, tiny_embedder, tmp_path: Path) -> None:
    good = stand_ins.write_png(tmp_path / "a.png", seed=1, size=16)
    index = Index.create(tmp_path / "idx", tiny_embedder.describe())
    index.add([good], embedder=tiny_embedder)
    missing = str(tmp_path / "nosuch.jpg")
    with pytest.raises(RetrievalIndexError, match=f"^{missing}: the query could not be read: no such file$"):
        index.search([good, missing], k=1)
