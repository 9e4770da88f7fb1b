"""An index never mixes what it was not asked for: sharded parts beside another index are kept and refused, a
resumed build with other inputs is refused, query vectors are always vectors, and an opened index sees what
another process committed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnnapps.apps.retrieve.index import Index, RetrievalIndexError
from cnnapps.apps.retrieve.sharded import build_shard, merge_parts


@pytest.fixture
def pngs(stand_ins, tmp_path: Path) -> list[str]:
    return [stand_ins.write_png(tmp_path / "gallery" / f"img{i:02d}.png", seed=i) for i in range(12)]


class Interrupting:
    """Wraps an embedder: the ``stop_at``-th call to ``embed`` raises KeyboardInterrupt (a killed build)."""

    def __init__(self, embedder, stop_at: int) -> None:
        self.inner, self.stop_at, self.calls = embedder, stop_at, 0
        self.spec, self.pooling, self.fingerprint, self.dim = "pixels", "avg", "pixels", embedder.dim

    def describe(self) -> dict:
        return self.inner.describe()

    def embed(self, paths, progress=None):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.inner.embed(paths, progress)


def test_a_plain_build_beside_sharded_parts_is_refused_and_the_parts_stay(stand_ins, pngs, tmp_path: Path) -> None:
    index = tmp_path / "idx"
    for rank in (0, 1):
        build_shard(pngs, index, stand_ins.PixelEmbedder(), rank, 2, part_size=3)
    parts = sorted((index / "parts").iterdir())
    assert len(parts) == 5  # 4 parts and the plan
    with pytest.raises(RetrievalIndexError, match="the parts of a sharded build are here"):
        Index.build(index, pngs, stand_ins.PixelEmbedder(), checkpoint=4)
    assert sorted((index / "parts").iterdir()) == parts and not (index / "index.sqlite").exists()
    merged, _ = merge_parts(index)
    assert len(merged) == 12 and not (index / "parts").exists()
    merged.close()


def test_a_merge_beside_an_index_not_merged_from_its_parts_is_refused(stand_ins, pngs, run_cli, tmp_path) -> None:
    index = tmp_path / "idx"
    for rank in (0, 1):
        build_shard(pngs, index, stand_ins.PixelEmbedder(), rank, 2, part_size=3)
    parts = sorted((index / "parts").iterdir())
    Index.create(index, stand_ins.PixelEmbedder().describe()).close()  # an index of none of those parts
    with pytest.raises(RetrievalIndexError, match="not merged from the parts"):
        merge_parts(index)
    code, _, err = run_cli("index", "merge", "--index", index)
    assert code == 2 and "not merged from the parts" in err and len(err.strip().splitlines()) == 1
    assert sorted((index / "parts").iterdir()) == parts  # nothing removed
    with Index.open(index) as kept:
        assert len(kept) == 0


def test_a_merge_killed_while_removing_its_parts_is_finished_by_a_rerun(stand_ins, pngs, tmp_path: Path) -> None:
    index = tmp_path / "idx"
    build_shard(pngs, index, stand_ins.PixelEmbedder(), 0, 1, part_size=5)
    saved = {f.name: f.read_bytes() for f in (index / "parts").iterdir()}
    merge_parts(index)[0].close()
    (index / "parts").mkdir()  # the parts as a merge killed before removing them left them
    for name, data in saved.items():
        (index / "parts" / name).write_bytes(data)
    again, failed = merge_parts(index)
    assert len(again) == 12 and failed == [] and not (index / "parts").exists()
    again.close()


def test_a_merge_an_older_version_left_removing_its_parts_is_finished_by_a_rerun(stand_ins, pngs, tmp_path) -> None:
    import sqlite3

    index = tmp_path / "idx"
    build_shard(pngs, index, stand_ins.PixelEmbedder(), 0, 1, part_size=5)
    saved = {f.name: f.read_bytes() for f in (index / "parts").iterdir()}
    merge_parts(index)[0].close()
    with sqlite3.connect(index / "index.sqlite") as db:  # an index merged before its settings kept the inputs' hash
        db.execute("DELETE FROM settings WHERE key = 'inputs_sha256'")
    db.close()
    (index / "parts").mkdir()
    for name, data in saved.items():
        (index / "parts" / name).write_bytes(data)
    again, failed = merge_parts(index)  # told by the files it holds: those of the parts
    assert len(again) == 12 and failed == [] and not (index / "parts").exists()
    again.close()


def test_a_resumed_build_with_other_inputs_is_refused(stand_ins, pngs, tmp_path: Path) -> None:
    index = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):  # killed after the first checkpoint of 4 images
        Index.build(index, pngs[:8], Interrupting(stand_ins.PixelEmbedder(), 2), checkpoint=4)
    with pytest.raises(RetrievalIndexError, match=r"indexed 4 files not among these inputs .*resume it with the same"):
        Index.build(index, pngs[8:], stand_ins.PixelEmbedder(), checkpoint=4)
    with Index.open(index) as kept:
        assert kept.paths() == pngs[:4]
    Path(pngs[0]).unlink()  # indexed by the first run, deleted since: a listing of the folder no longer names it
    built, added, _ = Index.build(index, list(reversed(pngs[1:8])), stand_ins.PixelEmbedder(), checkpoint=4)
    assert added == 4 and built.paths() == pngs[1:8]  # the same inputs, in any order, resume
    built.close()


def test_an_index_named_by_a_regular_file_is_one_line_bad_input(stand_ins, pngs, run_cli, tmp_path: Path) -> None:
    file = tmp_path / "afile"
    file.write_text("mine")
    with pytest.raises(RetrievalIndexError, match="exists and is not a folder"):
        Index.build(file, pngs, stand_ins.PixelEmbedder())
    code, _, err = run_cli("index", "build", pngs[0], "--index", file, "--rank", "0", "--world-size", "2")
    assert code == 2 and "exists and is not a folder" in err and len(err.strip().splitlines()) == 1
    assert file.read_text() == "mine"


def test_query_vectors_are_scaled_to_unit_length(stand_ins, pngs, tmp_path) -> None:
    embedder = stand_ins.PixelEmbedder()
    index, _, _ = Index.build(tmp_path / "idx", pngs, embedder)
    with index:
        rows = index._db.execute(f"SELECT path, vector FROM items WHERE {index._live()} ORDER BY path")
        stored = {p: np.frombuffer(v, dtype=np.float32) for p, v in rows}
        first, second = stored[pngs[0]], stored[pngs[1]]
        assert index.search(first * 0.98, 1)[0][0].path == pngs[0]  # slightly short: still a vector
        assert [h[0].path for h in index.search_vectors(np.stack([first, second]) * 3, 1)] == pngs[:2]
        both = index.search(first + second, 2)[0]  # a sum of two embeddings: those two first
        assert sorted(h.path for h in both) == pngs[:2]
        with pytest.raises(RetrievalIndexError, match="zero"):
            index.search_vectors(np.zeros((2, embedder.dim), np.float32), 1)
        with pytest.raises(RetrievalIndexError, match="zero"):
            index.search(np.zeros(embedder.dim, np.float32), 1)
        index._embedder = embedder  # the index's own model, without loading one by name
        assert index.search([pngs[2]], 1)[0][0].path == pngs[2]  # an image is still an image


def test_refresh_if_changed_loads_what_another_writer_committed(stand_ins, pngs, tmp_path: Path) -> None:
    built, _, _ = Index.build(tmp_path / "idx", pngs[:6], stand_ins.PixelEmbedder())
    built.close()
    with Index.open(tmp_path / "idx") as reader, Index.open(tmp_path / "idx") as writer:
        assert reader.refresh_if_changed() is False and len(reader) == 6
        writer.remove([pngs[0]])
        writer.add(pngs[6:8], stand_ins.PixelEmbedder())
        assert len(reader) == 6  # the snapshot taken at open
        assert reader.refresh_if_changed() is True
        assert len(reader) == 7 and pngs[0] not in reader.paths() and reader.generation == writer.generation
        assert reader.refresh_if_changed() is False


def test_a_world_size_without_a_rank_outside_a_launcher_is_refused(run_cli, pngs, tmp_path, monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = run_cli("index", "build", pngs[0], "--index", tmp_path / "idx", "--world-size", "4")
    assert code == 2 and "--world-size 4: give this process's --rank too" in err
    assert not (tmp_path / "idx").exists()
