"""What the index holds: one entry per file, each vector from the content its hash describes, no stale entries."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cnnapps.apps.retrieve.index import Index, index_path
from cnnapps.apps.retrieve.sharded import build_shard, merge_parts


def _vector(index: Index, path: str) -> np.ndarray:
    rows = index._db.execute(f"SELECT path, vector FROM items WHERE {index._live()}").fetchall()
    found = [np.frombuffer(v, np.float32) for p, v in rows if os.fsdecode(p) == path]
    assert len(found) == 1, f"{path}: {len(found)} live entries"
    return found[0]


class Meddling:
    """An embedder that does something to the files once it has read them: what another process may do
    while a long `add` or `sync` runs."""

    def __init__(self, embedder, then) -> None:
        self.embedder, self.then = embedder, then
        for name in ("spec", "pooling", "fingerprint", "dim", "describe"):
            setattr(self, name, getattr(embedder, name))

    def embed(self, paths, progress=None):
        out = self.embedder.embed(paths, progress=progress)
        self.then()
        return out


def test_a_file_named_twice_is_indexed_once(stand_ins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = stand_ins.write_png(tmp_path / "a.png", seed=1)
    stand_ins.write_png(tmp_path / "d" / "b.png", seed=2)
    monkeypatch.chdir(tmp_path)
    index, added, _ = Index.build(tmp_path / "idx", [a, a, "d/../a.png", "./a.png"], stand_ins.PixelEmbedder())
    assert added == 1 and index.paths() == [a]
    assert index.add(["a.png", str(tmp_path / "d" / "b.png")], embedder=stand_ins.PixelEmbedder()) == (2, [])
    hits = index.search(stand_ins.PixelEmbedder().embed([a])[1], k=2)[0]
    assert [h.path for h in hits] == [a, str(tmp_path / "d" / "b.png")]  # not a at ranks 1 and 2
    assert len(index) == 2

    # a symlink keeps its own name (two names, two entries, as a folder listing shows them) ...
    (tmp_path / "link.png").symlink_to(a)
    assert index_path(tmp_path / "link.png") == str(tmp_path / "link.png")
    # ... but `..` after a linked folder is the parent of the folder it points to, not of the link
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "in").symlink_to(tmp_path / "d", target_is_directory=True)
    assert index_path(tmp_path / "elsewhere" / "in" / ".." / "a.png") == a


def test_a_file_rewritten_while_sync_embeds_it_is_embedded_again_next_time(
    stand_ins, tiny_embedder, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    a, b = (stand_ins.write_png(folder / f"{n}.png", seed=i) for i, n in enumerate("ab"))
    index, _, _ = Index.build(tmp_path / "idx", [a, b], tiny_embedder)
    stand_ins.write_png(a, seed=10)  # a changes; sync reads it, then it changes again before sync hashes it
    report = index.sync(folder, embedder=Meddling(tiny_embedder, lambda: stand_ins.write_png(a, seed=11, size=30)))
    assert report["changed"] == 0 and [f["path"] for f in report["failed"]] == [a]  # counts what was done
    assert "changed while it was being indexed" in report["failed"][0]["error"]

    report = index.sync(folder, embedder=tiny_embedder)  # the next sync finds it and embeds what is there now
    assert report["added"] + report["changed"] == 1 and not report["failed"]
    np.testing.assert_allclose(_vector(index, a), tiny_embedder.embed([a])[1][0], atol=1e-5)
    assert index.sync(folder, embedder=tiny_embedder)["changed"] == 0


def test_a_file_deleted_while_add_runs_fails_alone(stand_ins, tiny_embedder, tmp_path: Path) -> None:
    files = [stand_ins.write_png(tmp_path / "images" / f"{i}.png", seed=i) for i in range(6)]
    index = Index.create(tmp_path / "idx", tiny_embedder.describe())
    added, failed = index.add(files, embedder=Meddling(tiny_embedder, lambda: os.remove(files[2])))
    assert added == 5 and failed == [{"path": files[2], "error": "no such file"}]
    assert index.paths() == sorted(set(files) - {files[2]}) and len(Index.open(index.path)) == 5


def test_a_changed_file_that_no_longer_reads_loses_its_entry_on_sync(stand_ins, tiny_embedder, tmp_path) -> None:
    folder = tmp_path / "images"
    files = [stand_ins.write_png(folder / f"{i}.png", seed=i) for i in range(3)]
    index, _, _ = Index.build(tmp_path / "idx", files, tiny_embedder)
    old = _vector(index, files[0]).copy()
    Path(files[0]).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    report = index.sync(folder, embedder=tiny_embedder)
    assert report["changed"] == 0 and report["removed"] == 1 and report["items"] == 2  # removed, not re-embedded
    assert [f["path"] for f in report["failed"]] == [files[0]]
    assert report["failed"][0]["error"].endswith("its old entry was removed from the index")
    assert index.paths() == files[1:]
    assert all(h.path != files[0] for h in index.search(old[None], k=3)[0])


def test_a_file_deleted_while_sync_runs_fails_alone(stand_ins, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    files = [stand_ins.write_png(folder / f"{i}.png", seed=i) for i in range(4)]
    embedder = stand_ins.PixelEmbedder()
    index, _, _ = Index.build(tmp_path / "idx", files[:2], embedder)
    report = index.sync(folder, embedder=Meddling(embedder, lambda: os.remove(files[3])))
    assert report["added"] == 1 and [f["path"] for f in report["failed"]] == [files[3]]  # files[2] only
    assert index.paths() == files[:3]


def test_file_names_that_are_not_utf8_are_kept_byte_for_byte(stand_ins, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    odd = os.fsdecode(os.fsencode(str(folder)) + b"/caf\xe9.png")  # Latin-1 bytes: not UTF-8
    files = [stand_ins.write_png(odd, seed=0), stand_ins.write_png(folder / "plain.png", seed=1)]
    embedder = stand_ins.PixelEmbedder()
    index, added, failed = Index.build(tmp_path / "idx", files, embedder)
    assert (added, failed) == (2, []) and sorted(index.paths()) == sorted(files)
    assert index.search(embedder.embed([odd])[1], k=1)[0][0].path == odd
    assert index.sync(folder, embedder=embedder) == {"added": 0, "changed": 0, "removed": 0, "failed": [], "items": 2}
    assert Index.check(index.path)["ok"] and index.remove([odd]) == 1 and index.paths() == [files[1]]

    for rank in (0, 1):  # and through the parts of a sharded build
        build_shard(files, tmp_path / "sharded", embedder, rank, 2, part_size=1)
    merged, failed = merge_parts(tmp_path / "sharded")
    assert not failed and sorted(merged.paths()) == sorted(files)
