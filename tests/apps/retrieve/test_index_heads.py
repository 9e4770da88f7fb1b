"""Indexing with one embedding head of a multi-head model file (``index build --head NAME``): the index holds that
head's vectors, remembers the head (``index add``, ``sync`` and ``cnnapps retrieve`` embed with it) and refuses
another head's vectors as another model's; a name that is no embedding head is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cnnapps.apps.retrieve.embedder import Embedder
from cnnapps.apps.retrieve.index import Index, RetrievalIndexError


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LeNet-5 trunk with a classifier head ``cls`` and two 8-d average-pooled embedding heads, ``near`` and
    ``far`` (random projections: the same size and pooling, different vectors)."""
    import torch

    from cnnapps.apps.classify.model import Classifier
    from cnnapps.apps.modelfile import compose, save_model
    from cnnapps.apps.retrieve.embedder import EmbeddingModel
    from cnnapps.backbones import create_backbone

    torch.manual_seed(0)
    root, trunk = tmp_path_factory.mktemp("heads"), create_backbone("lenet5")
    trunk = trunk.drop_head() if trunk.has_head else trunk
    preprocess = trunk.preprocess.to_dict()
    parts = {"cls": Classifier(trunk, 2), "near": EmbeddingModel(trunk, "avg", 8),
             "far": EmbeddingModel(trunk, "avg", 8)}  # fmt: skip
    for name, model in parts.items():
        task = "classify" if name == "cls" else "retrieve"
        save_model(root / f"{name}.safetensors", task, model, "lenet5", {}, preprocess, head_name=name)
    compose([root / f"{name}.safetensors" for name in parts], root / "multi.safetensors")
    return root / "multi.safetensors"


@pytest.fixture(scope="module")
def photos(stand_ins, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("photos").resolve()
    return [stand_ins.write_png(folder / f"{i}.png", seed=i, size=40) for i in range(4)]


def _vectors(index: Index) -> dict[str, np.ndarray]:
    rows = index._db.execute(f"SELECT path, vector FROM items WHERE {index._live()}")
    return {p: np.frombuffer(v, dtype=np.float32) for p, v in rows}


def _embedded(embedder: Embedder, paths: list[str]) -> dict[str, np.ndarray]:
    _, vectors, errors = embedder.embed(paths)
    assert not any(errors)
    return dict(zip(paths, vectors, strict=True))


def test_index_build_with_head_indexes_that_head_and_keeps_using_it(run_cli, multi, photos, tmp_path) -> None:
    near, far = Embedder(multi, device="cpu"), Embedder(multi, device="cpu", head="far")
    assert near.fingerprint != far.fingerprint and near.dim == far.dim == 8
    folder = tmp_path / "far.idx"
    code, out, err = run_cli("index", "build", *photos[:3], "--index", folder, "--model", multi, "--head", "far",
                             "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["head"] == "far"
    with Index.open(folder) as index:
        stored, expected, first = _vectors(index), _embedded(far, photos[:3]), _embedded(near, photos[:3])
        assert stored.keys() == expected.keys()
        for path in stored:
            np.testing.assert_allclose(stored[path], expected[path], atol=1e-5, err_msg=path)
            assert not np.allclose(stored[path], first[path], atol=1e-3), path  # not the first head's vectors
        built_with = r"built with .*multi\.safetensors \(head far, 8-d, avg pooling\); the query uses"
        with pytest.raises(RetrievalIndexError, match=built_with):
            index.add(photos[3:], embedder=near)  # the same model file, another head: refused as another model

    code, out, err = run_cli("index", "add", photos[3], "--index", folder)  # embeds with the head that built it
    assert code == 0, err
    assert "added 1 image" in out and "added 1 images" not in out
    code, out, err = run_cli("retrieve", "--query", photos[3], "--index", folder, "-k", "1", "--json")
    assert code == 0, err
    hit = json.loads(out)[0]["results"][0]
    assert hit["path"] == photos[3] and hit["score"] == pytest.approx(1.0, abs=1e-4)
    with Index.open(folder) as index:
        np.testing.assert_allclose(_vectors(index)[photos[3]], _embedded(far, photos[3:])[photos[3]], atol=1e-5)


def test_index_build_without_head_indexes_the_first_embedding_head(run_cli, multi, photos, tmp_path) -> None:
    code, out, err = run_cli("index", "build", *photos[:2], "--index", tmp_path / "idx", "--model", multi, "--json")
    assert code == 0, err
    assert "head" not in json.loads(out)
    with Index.open(tmp_path / "idx") as index:
        stored, expected = _vectors(index), _embedded(Embedder(multi, device="cpu", head="near"), photos[:2])
        for path in stored:
            np.testing.assert_allclose(stored[path], expected[path], atol=1e-5, err_msg=path)


@pytest.mark.parametrize(
    ("head", "model", "message"),
    [
        ("nope", "multi", "{multi}: no head named 'nope' (heads: cls, near, far)"),
        ("cls", "multi", "{multi}: its head 'cls' is a classify head, not a retrieve one"),
        ("near", "lenet5", "head 'near': lenet5 is not a model file (a head is one of a model file's heads)"),
    ],
    ids=["unknown", "classify-head", "registry-name"],
)
def test_a_head_that_is_no_embedding_head_is_a_one_line_error(run_cli, multi, photos, tmp_path, head, model,
                                                              message) -> None:  # fmt: skip
    spec = multi if model == "multi" else model
    for sharding in ([], ["--rank", "0", "--world-size", "2"]):
        folder = tmp_path / f"idx{len(sharding)}"
        code, out, err = run_cli("index", "build", *photos, "--index", folder, "--model", spec, "--head", head,
                                 *sharding)  # fmt: skip
        assert code == 2 and out == ""
        assert err.strip() == f"error: {message.format(multi=multi)}"
        assert not folder.exists()


def test_a_sharded_build_indexes_with_the_head_named(run_cli, multi, photos, tmp_path) -> None:
    folder = tmp_path / "sharded"
    shard = ("index", "build", *photos, "--index", folder, "--model", multi, "--world-size", "2", "--part-size", "1")
    for rank in (0, 1):
        code, _, err = run_cli(*shard, "--head", "far", "--rank", rank)
        assert code == 0, err
    code, _, err = run_cli(*shard, "--head", "near", "--rank", "1")  # a rank with another head: refused
    assert code == 2 and "were started with another model" in err
    code, out, err = run_cli("index", "merge", "--index", folder, "--json")
    assert code == 0, err
    assert json.loads(out)["head"] == "far"
    with Index.open(folder) as index:
        stored, expected = _vectors(index), _embedded(Embedder(multi, device="cpu", head="far"), photos)
        assert stored.keys() == expected.keys()
        for path in stored:
            np.testing.assert_allclose(stored[path], expected[path], atol=1e-5, err_msg=path)
        index.check_embedder(index.embedder(device="cpu"))  # reopened with the head that built it


def test_an_index_built_in_python_remembers_the_head_its_embedder_was_loaded_with(multi, photos, tmp_path) -> None:
    far = Embedder(multi, device="cpu", head="far")
    built, added, failed = Index.build(tmp_path / "py.idx", photos[:2], far)
    with built:
        assert added == 2 and not failed and built.info()["head"] == "far"
        assert built.embedder(device="cpu").head == "far"
        built.add(photos[2:3])  # embeds with the far head again: no refusal
        assert len(built) == 3


def test_embed_and_dedup_take_a_head_too(run_cli, multi, photos) -> None:
    code, out, err = run_cli("embed", photos[0], "--model", multi, "--head", "far", "--json", "--device", "cpu")
    assert code == 0, err
    vector = np.array(json.loads(out)[0]["embedding"], np.float32)
    np.testing.assert_allclose(vector, _embedded(Embedder(multi, device="cpu", head="far"), photos[:1])[photos[0]],
                               atol=1e-5)  # fmt: skip
    code, out, err = run_cli("dedup", *photos, "--model", multi, "--head", "nope", "--json")
    assert code == 2 and "no head named 'nope'" in err
