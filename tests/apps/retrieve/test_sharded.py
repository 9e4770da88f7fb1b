"""A sharded index build: two processes embed their parts, a merge writes the index; reruns skip finished parts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnapps.apps.retrieve.index import Index, RetrievalIndexError
from cnnapps.apps.retrieve.sharded import build_shard, launcher_rank, merge_parts, parts_status


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import cv2
    from skimage import data

    root = tmp_path_factory.mktemp("gallery")
    names = ("chelsea", "coffee", "rocket", "astronaut", "horse", "coins", "camera", "moon", "retina")
    for name in names:
        image = getattr(data, name)()
        image = np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]
        image = image.astype(np.uint8) if image.max() > 1 else (image * 255).astype(np.uint8)
        cv2.imwrite(str(root / f"{name}.png"), np.ascontiguousarray(image[:, :, ::-1]))
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def _vectors(index: Index) -> dict[str, np.ndarray]:
    rows = index._db.execute(f"SELECT path, vector FROM items WHERE {index._live()}")
    return {Path(p).name: np.frombuffer(v, dtype=np.float32) for p, v in rows}


# a small model file (LeNet-5, random weights) the processes load and run in a fraction of EfficientNet-Lite0's
# time: what is tested is the parts, the ranks and the merge, the same for any model
EMBEDDER = Path(__file__).parents[2] / "fixtures" / "model_files_v1" / "retrieve.safetensors"


def _shard(gallery: Path, index: Path, rank: int) -> subprocess.Popen:
    args = [sys.executable, "-m", "cnnapps", "index", "build", str(gallery), "--index", str(index), "--model",
            str(EMBEDDER), "--rank", str(rank), "--world-size", "2", "--part-size", "2", "--json"]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_build_parts_and_the_merge_equals_one_process(run_cli, gallery: Path, tmp_path: Path) -> None:
    sharded = tmp_path / "sharded"
    ranks = [_shard(gallery, sharded, r) for r in (0, 1)]  # both at once, sharing only the folder
    reports = []
    for proc in ranks:
        out, err = proc.communicate(timeout=300)
        reports.append(json.loads(out))
        assert proc.returncode == 0, err[-2000:]  # also the rank whose part held broken.jpg: merge reports it
    # 10 files in parts of 2: parts 0, 2, 4 for rank 0 and 1, 3 for rank 1; broken.jpg fails in one of them
    assert [(r["rank"], r["parts"], r["skipped"]) for r in reports] == [(0, 3, 0), (1, 2, 0)]
    assert sum(r["embedded"] for r in reports) == 9
    assert [f["path"] for r in reports for f in r["failed"]] == [str(gallery / "broken.jpg")]
    assert not (sharded / "index.sqlite").exists()

    # a lost part (a killed job) is redone by a rerun; the finished ones are skipped
    (sharded / "parts" / "part-00003.npz").unlink()
    with pytest.raises(RetrievalIndexError, match=r"1 of 5 parts are not finished \(parts 3\)"):
        merge_parts(sharded)
    code, out, err = run_cli("index", "build", gallery, "--index", sharded, "--model", EMBEDDER, "--rank", "1",
                             "--world-size", "2", "--part-size", "2", "--json")  # fmt: skip
    assert code == 0, err[-2000:]
    report = json.loads(out)
    assert (report["parts"], report["skipped"], report["embedded"]) == (2, 1, 2)

    code, out, err = run_cli("index", "merge", "--index", sharded, "--json")
    assert code == 1 and "broken.jpg" in err  # merged; the unreadable file is reported
    assert json.loads(out)["items"] == 9 and not (sharded / "parts").exists()

    code, _, _ = run_cli("index", "build", gallery, "--index", tmp_path / "single", "--model", EMBEDDER, "--json")
    with Index.open(sharded) as merged, Index.open(tmp_path / "single") as single:
        a, b = _vectors(merged), _vectors(single)
        assert a.keys() == b.keys() and len(a) == 9
        for name in a:
            np.testing.assert_allclose(a[name], b[name], atol=1e-4, err_msg=name)
        hits = merged.search(np.stack([a["coffee.png"]]), k=1)[0]
        assert Path(hits[0].path).name == "coffee.png"


class RandomEmbedder:
    """Unit vectors from a seeded generator: enough to test the bookkeeping at a size IVF-PQ trains on."""

    dim = 16

    def __init__(self) -> None:
        self.calls = 0

    def describe(self) -> dict:
        return {"model": "random", "fingerprint": "r", "pooling": "avg", "dim": self.dim}

    def embed(self, paths, progress=None):
        self.calls += 1
        vectors = np.stack([np.random.default_rng(int(Path(p).stem)).normal(size=self.dim) for p in paths])
        vectors = vectors.astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return list(paths), vectors, [None] * len(paths)


def test_merge_trains_one_ivfpq_index_over_all_parts(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    paths = []
    for i in range(1200):
        (files / f"{i}.bin").write_bytes(i.to_bytes(2, "little"))
        paths.append(str(files / f"{i}.bin"))
    embedder = RandomEmbedder()
    for rank in range(3):
        report = build_shard(paths, tmp_path / "idx", embedder, rank, 3, part_size=100)
        assert report.parts == 4 and report.embedded == 400
    assert parts_status(tmp_path / "idx")[1] == []
    again = build_shard(paths, tmp_path / "idx", embedder, 0, 1, part_size=100)  # any world size may resume
    assert (again.skipped, again.embedded) == (12, 0) and embedder.calls == 12
    with pytest.raises(RetrievalIndexError, match="another files and paths_sha256"):
        build_shard(paths[:-1], tmp_path / "idx", embedder, 0, 1, part_size=100)

    index, failed = merge_parts(tmp_path / "idx", kind="ivfpq")
    assert not failed and len(index) == 1200 and index.info()["faiss"] == "IVF-PQ + exact re-rank"
    probe = RandomEmbedder().embed([paths[737]])[1]
    assert Path(index.search(probe, k=1)[0][0].path).name == "737.bin"
    with pytest.raises(RetrievalIndexError, match="an index already exists here"):
        build_shard(paths, tmp_path / "idx", embedder, 0, 1)


def test_ranks_come_from_torchrun_or_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    assert launcher_rank() == (0, 1, None)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # `salloc`'s shell: one process, as training takes it
    assert launcher_rank() == (0, 1, None)
    monkeypatch.setenv("SLURM_JOB_NAME", "gallery")  # a task srun started
    assert launcher_rank() == (5, 8, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert launcher_rank() == (3, 4, 3)  # torchrun's variables win inside a SLURM allocation


_KILLS = {
    "after the index is created": "def add(self, *a):\n    os.kill(os.getpid(), signal.SIGKILL)\n",
    "after the vectors are committed": (
        "add_embedded = Index.add_embedded\n"
        "def add(self, *a):\n    add_embedded(self, *a)\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    ),
    "while the parts are removed": None,
}


@pytest.mark.parametrize("when", list(_KILLS))
def test_a_merge_killed_at_any_step_is_finished_by_running_it_again(tmp_path: Path, when: str) -> None:
    files = tmp_path / "files"
    files.mkdir()
    paths = []
    for i in range(300):
        (files / f"{i}.bin").write_bytes(i.to_bytes(2, "little"))
        paths.append(str(files / f"{i}.bin"))
    folder = tmp_path / "idx"
    build_shard(paths, folder, RandomEmbedder(), 0, 1, part_size=50)
    if _KILLS[when]:
        patch = _KILLS[when] + "Index.add_embedded = add\n"
    else:  # two of the six part files gone, then the kill
        patch = (
            "def remove(folder):\n    for f in sorted(folder.glob('part-*.npz'))[:2]:\n        f.unlink()\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "sharded._remove_parts = remove\n"
        )
    script = (
        "import os, signal, sys\nfrom cnnapps.apps.retrieve import sharded\n"
        "from cnnapps.apps.retrieve.index import Index\n" + patch + "sharded.merge_parts(sys.argv[1])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]

    with Index.open(folder) as index:  # what the kill left opens, and says whether it is whole
        assert len(index) == (0 if when == "after the index is created" else 300)
    report = Index.check(folder)
    if when == "while the parts are removed":
        assert report["ok"] and len(list((folder / "parts").glob("part-*.npz"))) == 4
        with pytest.raises(RetrievalIndexError, match="an index already exists here"):
            build_shard(paths, folder, RandomEmbedder(), 0, 1, part_size=50)
    else:
        assert not report["ok"] and "its merge was interrupted" in report["problems"][0]
        again = build_shard(paths, folder, RandomEmbedder(), 0, 1, part_size=50)  # the parts are all there
        assert (again.skipped, again.embedded) == (6, 0)

    index, failed = merge_parts(folder)
    assert not failed and len(index) == 300 and not (folder / "parts").exists()
    assert Index.check(folder)["ok"] and sorted(index.paths()) == sorted(paths)
    probe = RandomEmbedder().embed([paths[123]])[1]
    assert index.search(probe, k=1)[0][0].path == paths[123]
    with pytest.raises(RetrievalIndexError, match="no parts to merge"):
        merge_parts(folder)


def test_a_file_deleted_while_a_rank_embeds_fails_alone(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    paths = []
    for i in range(6):
        (files / f"{i}.bin").write_bytes(i.to_bytes(2, "little"))
        paths.append(str(files / f"{i}.bin"))

    class Deleting(RandomEmbedder):
        def embed(self, paths, progress=None):
            out = super().embed(paths, progress)
            Path(paths[-1]).unlink(missing_ok=True)
            return out

    report = build_shard(paths, tmp_path / "idx", Deleting(), 0, 1, part_size=3)
    assert report.embedded == 4 and [f["path"] for f in report.failed] == [paths[2], paths[5]]
    index, failed = merge_parts(tmp_path / "idx")
    assert len(index) == 4 and [f["error"] for f in failed] == ["no such file"] * 2
