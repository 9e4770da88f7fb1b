"""Edits of an index that must not lose or keep the wrong entries, and retrieval edge cases that were tracebacks:
a missing sync root, a re-added file that no longer reads, files the folder walk does not list, sync's counts,
exact copies at threshold 1.0, k of 0, a picture suffix no encoder writes, a model given by a relative path."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cnnapps.apps.retrieve.index import Index, RetrievalIndexError


@pytest.fixture()
def indexed(stand_ins, tmp_path: Path):
    embedder = stand_ins.PixelEmbedder()
    folder = tmp_path / "photos"
    for i in range(3):
        stand_ins.write_png(folder / f"{i}.png", seed=i)
    index = Index.create(tmp_path / "idx", embedder.describe())
    index.add([str(p) for p in sorted(folder.iterdir())], embedder=embedder)
    return index, folder, embedder


def test_syncing_a_folder_that_is_not_there_changes_nothing(indexed, tmp_path: Path) -> None:
    index, _, embedder = indexed
    with pytest.raises(RetrievalIndexError, match=r"photoz: no such file or folder; nothing synced"):
        index.sync(tmp_path / "photoz", embedder=embedder)  # a typo (it removed every entry under it)
    assert len(index) == 3


def test_a_readded_file_that_no_longer_reads_loses_its_old_entry(indexed) -> None:
    index, folder, embedder = indexed
    (folder / "1.png").write_bytes(b"not a png any more")
    added, failed = index.add([str(folder / "1.png")], embedder=embedder)
    assert added == 0 and failed[0]["error"].endswith("its old entry was removed from the index")
    assert len(index) == 2 and str(folder / "1.png") not in index.paths()


def test_sync_counts_what_it_did_and_keeps_files_the_walk_does_not_list(indexed, stand_ins) -> None:
    index, folder, embedder = indexed
    plain = stand_ins.write_png(folder / "IMG_0001", seed=7)  # no image suffix: added by name only
    assert index.add([plain], embedder=embedder)[0] == 1
    (folder / "new.png").write_bytes(b"broken")  # new, unreadable: reported, not added
    (folder / "0.png").write_bytes(b"broken too")  # indexed, now unreadable: its entry goes
    report = index.sync(folder, embedder=embedder)
    assert (report["added"], report["changed"], report["removed"]) == (0, 0, 1)
    assert sorted(Path(f["path"]).name for f in report["failed"]) == ["0.png", "new.png"]
    assert plain in index.paths() and len(index) == 3  # 1.png, 2.png and the file without a suffix


def test_k_must_be_at_least_one(indexed) -> None:
    index, _, _ = indexed
    with pytest.raises(RetrievalIndexError, match="k: at least 1 hit per query, not 0"):
        index.search(np.eye(1, index.dim, dtype=np.float32), k=0)


def test_exact_copies_reach_a_threshold_of_one_and_a_file_named_twice_is_one_image(stand_ins, tmp_path) -> None:
    from cnnapps.apps.retrieve.search import find_duplicates

    a = stand_ins.write_png(tmp_path / "a.png", seed=1)
    shutil.copy(a, tmp_path / "copy.png")
    stand_ins.write_png(tmp_path / "other.png", seed=2)
    paths = [a, str(tmp_path / "copy.png"), str(tmp_path / "other.png")]
    groups, _ = find_duplicates(paths, stand_ins.PixelEmbedder(), threshold=1.0, hash_bits=None)
    assert [g["images"] for g in groups] == [[a, str(tmp_path / "copy.png")]]
    twice, _ = find_duplicates([a, a, str(tmp_path / "other.png")], stand_ins.PixelEmbedder(), hash_bits=None)
    assert twice == []


def test_scoring_needs_two_readable_images(stand_ins, tmp_path: Path) -> None:
    from cnnapps.apps.retrieve.evaluate import evaluate_retrieval
    from cnnapps.datasets.folders import LabeledImages
    from cnnapps.errors import CnnappsError

    good = stand_ins.write_png(tmp_path / "a.png", seed=1)
    (tmp_path / "b.png").write_bytes(b"broken")
    data = LabeledImages([good, str(tmp_path / "b.png")], [0, 0], ["x"])
    with pytest.raises(CnnappsError, match=r"1 of 2 images could be read: retrieval is scored on 2 or more; .*b.png"):
        evaluate_retrieval(stand_ins.PixelEmbedder(), data)  # was FAISS' bare AssertionError (exit 3)


def test_a_model_given_by_a_relative_path_is_found_from_any_folder(run_cli, stand_ins, tmp_path, monkeypatch):
    from tests.apps.retrieve.conftest import TINY_MODEL

    shutil.copy(TINY_MODEL, tmp_path / "model.safetensors")
    stand_ins.write_png(tmp_path / "photos" / "a.png", seed=1)
    stand_ins.write_png(tmp_path / "photos" / "b.png", seed=2)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("index", "build", "photos", "--index", "gallery.idx", "--model", "model.safetensors")
    assert code == 0, err
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the index was built with "model.safetensors", from tmp_path
    code, out, err = run_cli("retrieve", "--index", "../gallery.idx", "--query", "../photos/a.png", "--json")
    assert code == 0, err
    assert Path(json.loads(out)[0]["results"][0]["path"]).name == "a.png"
    assert os.path.isabs(Index.open(tmp_path / "gallery.idx").model["model"])
    code, _, err = run_cli("retrieve", "--index", "../gallery.idx", "--query", "../photos/a.png",
                           "--save-grid", "grid.xyz")  # fmt: skip
    assert code == 2 and "--save-grid grid.xyz: no picture format is written as .xyz" in err  # before searching


def test_sync_drops_a_link_whose_target_was_deleted(indexed, stand_ins, tmp_path: Path) -> None:
    index, folder, embedder = indexed
    target = stand_ins.write_png(tmp_path / "store" / "cat.png", seed=9)
    (folder / "cat.png").symlink_to(target)
    assert index.sync(folder, embedder=embedder)["added"] == 1
    os.remove(target)  # folder/cat.png now dangles: the walk skips it, and its old vector must not stay searchable
    report = index.sync(folder, embedder=embedder)
    assert (report["removed"], report["failed"], report["items"]) == (1, [], 3)
    assert str(folder / "cat.png") not in index.paths()
    # a link into a folder that cannot be reached now (a mount that is down) is kept: its target may come back
    (folder / "dog.png").symlink_to(stand_ins.write_png(tmp_path / "mount" / "dog.png", seed=8))
    assert index.sync(folder, embedder=embedder)["added"] == 1
    (tmp_path / "mount").rename(tmp_path / "unmounted")
    assert index.sync(folder, embedder=embedder)["removed"] == 0 and str(folder / "dog.png") in index.paths()


def test_search_takes_a_float_grayscale_image_as_an_image_and_one_vector_as_one_query(
    stand_ins, tiny_embedder, tmp_path: Path
) -> None:
    import cv2

    paths = [stand_ins.write_png(tmp_path / f"{i}.png", seed=i, size=16) for i in range(2)]
    index = Index.create(tmp_path / "idx", tiny_embedder.describe())
    index.add(paths, embedder=tiny_embedder)
    gray = cv2.cvtColor(cv2.imread(paths[1]), cv2.COLOR_BGR2GRAY).astype(np.float32) / 255  # as rgb2gray gives
    hits = index.search(gray, k=2)  # was: "queries have 16 dimensions, the index 8"
    assert len(hits) == 1 and len(hits[0]) == 2
    vector = tiny_embedder.embed([paths[1]])[1][0]
    assert vector.shape == (index.dim,)
    assert [h.path for h in index.search(vector, k=1)[0]] == [paths[1]]  # was: "not an image"
    assert [[h.path for h in q] for q in index.search(np.stack([vector, vector]), k=1)] == [[paths[1]]] * 2
    raw = np.full((index.dim, index.dim), 0.5, np.float32)  # a grey image as wide as the vectors: an image all the same
    assert len(index.search(raw, k=1)) == 1
