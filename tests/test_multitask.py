"""One trunk, many heads: heads trained on a frozen trunk (``--trunk``), joined by ``compose``, answering from one
trunk pass (``cnnapps.load``, ``cnnapps predict``, ``cnnapps serve``, ``index build``) exactly as they do alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import cnnapps
from cnnapps.apps.modelfile import compose, read_model_file, trunk_fingerprint
from cnnapps.errors import CnnappsError

COMMON = {"workers": 0, "progress": False, "epochs": 1, "batch_size": 8, "val_split": 0.3}


@pytest.fixture(scope="module")
def heads(trained, colour_set: Path, tmp_path_factory) -> dict[str, Path]:
    """Four heads trained on the trunk of the LeNet-5 colour classifier (``trained``), each in its own file."""
    from cnnapps.apps.caption.config import CaptionConfig
    from cnnapps.apps.caption.train import train_captioner
    from cnnapps.apps.classify.train import train_classifier
    from cnnapps.apps.common.config import load_config
    from cnnapps.apps.detect.config import DetectConfig
    from cnnapps.apps.detect.train import train_detector
    from cnnapps.apps.retrieve.config import RetrieveConfig
    from cnnapps.apps.retrieve.train import train_retrieval
    from cnnapps.datasets.synthetic import main as synthetic
    from cnnapps.datasets.synthetic import write_captions

    root = tmp_path_factory.mktemp("heads")
    trunk = str(trained[0] / "model.safetensors")
    runs = {name: root / name for name in ("colours", "recoloured", "embed", "words", "shapes")}
    train_classifier(load_config(None, data=str(colour_set), trunk=trunk, out=str(runs["colours"]), augment="none",
                                 **COMMON))  # fmt: skip
    train_classifier(load_config(None, data=str(colour_set), trunk=trunk, out=str(runs["recoloured"]), seed=1,
                                 augment="none", **COMMON))  # fmt: skip
    train_retrieval(load_config(None, RetrieveConfig, data=str(colour_set), trunk=trunk, out=str(runs["embed"]),
                                augment="none", embedding_size=8, **COMMON))  # fmt: skip
    write_captions(root / "captions", "train", 12, seed=0, size=64)
    write_captions(root / "captions", "val", 4, seed=1, size=64)
    train_captioner(load_config(None, CaptionConfig, data=str(root / "captions/train.json"),
                                images=str(root / "captions/train"), val_data=str(root / "captions/val.json"),
                                val_images=str(root / "captions/val"), trunk=trunk, out=str(runs["words"]), grid=2,
                                embed_dim=8, hidden_dim=8, attention_dim=8, **COMMON))  # fmt: skip
    synthetic(["shapes", str(root / "shapes"), "--train", "8", "--val", "4", "--size", "96"])
    train_detector(load_config(None, DetectConfig, task="segment", data=str(root / "shapes/train.json"),
                               images=str(root / "shapes/train"), val_data=str(root / "shapes/val.json"),
                               val_images=str(root / "shapes/val"), trunk=trunk, out=str(runs["shapes"]),
                               **{**COMMON, "batch_size": 4}))  # fmt: skip
    files = {name: run / "model.safetensors" for name, run in runs.items()}
    files["trunk"] = Path(trunk)
    files["images"] = root / "shapes" / "val"
    return files


@pytest.fixture(scope="module")
def multi(heads, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("multi") / "multi.safetensors"
    compose([heads["colours"], heads["embed"], heads["words"], heads["shapes"]], out)
    return out


@pytest.fixture(scope="module")
def photos(heads) -> list[str]:
    return sorted(str(p) for p in heads["images"].glob("*.png"))


def test_heads_trained_with_trunk_keep_it_exactly(heads) -> None:
    trunk = read_model_file(heads["trunk"])
    for name in ("colours", "embed", "words", "shapes"):
        model_file = read_model_file(heads[name])
        assert trunk_fingerprint(model_file) == trunk_fingerprint(trunk), name
        assert model_file.trunk == {**trunk.trunk, "fingerprint": model_file.trunk["fingerprint"]}
        assert model_file.preprocess == trunk.preprocess
    assert read_model_file(heads["shapes"]).heads["segment"].kwargs["shared"] is True


def test_compose_writes_one_trunk_and_every_head(multi, heads) -> None:
    model_file = read_model_file(multi)
    assert {n: h.task for n, h in model_file.heads.items()} == {
        "classify": "classify", "retrieve": "retrieve", "caption": "caption", "segment": "segment"
    }  # fmt: skip
    assert trunk_fingerprint(model_file) == trunk_fingerprint(read_model_file(heads["trunk"]))
    sizes = {name: heads[name].stat().st_size for name in ("colours", "embed", "words", "shapes")}
    trunk_bytes = sum(v.numel() * v.element_size() for v in model_file.trunk_tensors().values())
    # one trunk instead of four: the joined file is the four files less three trunks (plus a little metadata)
    assert multi.stat().st_size < sum(sizes.values()) - 3 * trunk_bytes + 64_000


def test_a_detection_head_keeps_scores_equal_to_the_threshold(multi) -> None:
    from cnnapps.apps.detect.predictor import kept_from

    predictor = cnnapps.load(multi, score_threshold=0.7)
    (model,) = [model for info, _, model in predictor.heads.values() if info.task == "segment"]
    assert model.roi_heads.score_thresh == kept_from(0.7) < 0.7  # torchvision keeps scores above it


def test_one_pass_answers_equal_each_head_alone(multi, heads, photos) -> None:
    predictor = cnnapps.load(multi, score_threshold=0.0, beam=1)
    assert type(predictor).__name__ == "MultiTaskPredictor" and len(predictor.heads) == 4
    trunk = predictor.trunk  # one trunk object under every head
    assert all(any(m is trunk for m in model.modules()) for _, _, model in predictor.heads.values())
    together = predictor.predict([*photos, b"not an image"], top_k=3)
    assert not together[-1].ok and together[-1].to_dict() == {"path": "<bytes>", "error": together[-1].error}
    alone = {
        "classify": cnnapps.load(heads["colours"], engine="eager").predict(photos, top_k=3),
        "retrieve": cnnapps.load(heads["embed"], task="retrieve", engine="eager").predict(photos),
        "caption": cnnapps.load(heads["words"]).predict(photos),
        "segment": cnnapps.load(heads["shapes"], score_threshold=0.0).predict(photos),
    }
    for i, result in enumerate(together[:-1]):
        answers = result.to_dict()
        assert set(answers) == {"path", "classify", "retrieve", "caption", "segment"}
        got, want = answers["classify"]["predictions"], alone["classify"][i].to_dict()["predictions"]
        assert [p["label"] for p in got] == [p["label"] for p in want]
        assert np.allclose([p["score"] for p in got], [p["score"] for p in want], atol=1e-5)
        assert np.allclose(result.results["retrieve"].vector, alone["retrieve"][i].vector, atol=1e-5)
        assert answers["caption"] == {k: v for k, v in alone["caption"][i].to_dict().items() if k != "path"}
        shared_caption, caption = result.results["caption"], alone["caption"][i]  # attention drawn where it looked
        assert shared_caption.geometry == caption.geometry and shared_caption.input_size == caption.input_size
        found, expected = answers["segment"]["instances"], alone["segment"][i].to_dict()["instances"]
        assert len(found) == len(expected)
        assert np.allclose([d["box"] for d in found], [d["box"] for d in expected], atol=1e-3)


def test_adding_or_retraining_a_head_leaves_the_others_bit_identical(heads, photos, tmp_path, run_cli) -> None:
    compose([heads["colours"], heads["embed"]], tmp_path / "two.safetensors")
    compose([heads["colours"], heads["embed"], heads["words"]], tmp_path / "three.safetensors")
    compose([tmp_path / "two.safetensors", heads["recoloured"]], tmp_path / "retrained.safetensors",
            names=["classify", "retrieve", "classify2"])  # fmt: skip
    answers = {
        name: cnnapps.load(tmp_path / f"{name}.safetensors").predict(photos) for name in ("two", "three", "retrained")
    }
    for i in range(len(photos)):
        base = answers["two"][i].results
        for other in ("three", "retrained"):
            results = answers[other][i].results
            assert results["classify"].predictions == base["classify"].predictions
            assert np.array_equal(results["retrieve"].vector, base["retrieve"].vector)
    assert set(answers["retrained"][0].results) == {"classify", "retrieve", "classify2"}
    # the command names one classify head of the two
    code, out, err = run_cli("classify", photos[0], "--model", tmp_path / "retrained.safetensors", "--json")
    assert code == 2 and "name the one to use" in err
    code, out, err = run_cli("classify", photos[0], "--model", tmp_path / "retrained.safetensors", "--head",
                             "classify2", "--json")  # fmt: skip
    alone = run_cli("classify", photos[0], "--model", heads["recoloured"], "--json")
    assert code == 0 and alone[0] == 0, err
    assert json.loads(out)[0]["predictions"] == json.loads(alone[1])[0]["predictions"]
    code, out, err = run_cli("classify", photos[0], "--head", "classify2")  # the default model has one head
    assert code == 2 and "a registry name (a head is one of a model file's heads)" in err


def test_compose_refuses_other_trunks_other_preprocessing_and_existing_files(heads, colour_set, tmp_path) -> None:
    from cnnapps.apps.classify.train import train_classifier
    from cnnapps.apps.common.config import load_config

    other = tmp_path / "other"
    train_classifier(load_config(None, data=str(colour_set), backbone="lenet5", weights="none", out=str(other),
                                 augment="none", backbone_kwargs={"in_channels": 3}, seed=3, **COMMON))  # fmt: skip
    with pytest.raises(CnnappsError) as caught:
        compose([heads["colours"], other / "model.safetensors"], tmp_path / "x.safetensors")
    text = str(caught.value)
    assert str(other / "model.safetensors") in text and str(heads["colours"]) in text and "--trunk" in text
    assert not (tmp_path / "x.safetensors").exists()
    existing = tmp_path / "kept.safetensors"
    existing.write_bytes(b"mine")
    with pytest.raises(CnnappsError, match="already exists"):
        compose([heads["colours"], heads["embed"]], existing)
    assert existing.read_bytes() == b"mine"
    graph = tmp_path / "colours.onnx"  # what export writes: it holds no heads to join (and compose names it so)
    graph.write_bytes(b"\x08\x09")
    with pytest.raises(CnnappsError, match=r"colours\.onnx: an exported ONNX file; compose joins model files .* the "
                                           r"model file it was exported from"):  # fmt: skip
        compose([heads["colours"], graph], tmp_path / "x.safetensors")
    link = tmp_path / "again.safetensors"  # the same file twice: its heads were written twice, one renamed
    link.symlink_to(heads["colours"])
    with pytest.raises(CnnappsError, match=r"again\.safetensors: given twice \(.* is the same file\)"):
        compose([heads["colours"], heads["embed"], link], tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    # heads load by the prefix heads.<name>.: "cls" would take "cls.v2"'s tensors too, so a dot is refused
    with pytest.raises(CnnappsError, match=r"--names 'cls\.v2': a head's name is not empty and holds no dot"):
        compose([heads["colours"], heads["embed"]], tmp_path / "dots.safetensors", names=["cls", "cls.v2"])
    assert not (tmp_path / "dots.safetensors").exists()


def test_compose_refuses_different_preprocessing(heads, tmp_path) -> None:
    from cnnapps.apps.classify.model import load_classifier
    from cnnapps.apps.modelfile import save_model

    loaded = load_classifier(heads["colours"])
    other = {**loaded.preprocess.to_dict(), "interpolation": "bicubic"}
    save_model(tmp_path / "bicubic.safetensors", "classify", loaded.model, "lenet5", {"in_channels": 3}, other)
    with pytest.raises(CnnappsError, match=r"bicubic\.safetensors: its preprocessing differs from .*'s: "
                                          r"interpolation 'bicubic' vs 'bilinear'$"):  # fmt: skip
        compose([heads["embed"], tmp_path / "bicubic.safetensors"], tmp_path / "x.safetensors")


def test_loading_one_head_and_asking_for_a_missing_one(multi) -> None:
    from cnnapps.apps.multitask import MultiTaskPredictor

    classifier = cnnapps.load(multi, task="classify", engine="eager")
    assert type(classifier).__name__ == "ClassificationPredictor" and classifier.class_names == ["blue", "green", "red"]
    assert cnnapps.load(multi, task="caption").beam == 1
    with pytest.raises(CnnappsError, match="a caption, classify, retrieve, segment model, not a pose model"):
        cnnapps.load(multi, task="pose")
    with pytest.raises(CnnappsError, match="no head or task 'pose'"):
        MultiTaskPredictor(multi, heads=["pose"])
    predictor = MultiTaskPredictor(multi, engine="eager")
    image = np.zeros((32, 32, 3), np.uint8)
    (by_task,) = predictor.predict([image], heads=["classify"])  # a task's name picks its head, as at load
    assert by_task.ok and [type(r).__name__ for r in by_task.results.values()] == ["ClassificationResult"]
    with pytest.raises(CnnappsError, match="no head or task 'clasify'"):  # a typo was an empty answer
        predictor.predict([image], heads=["clasify"])


def test_a_head_asked_for_by_name_is_of_the_task_asked_for(multi) -> None:
    embedder = cnnapps.load(multi, task="retrieve", head="retrieve", engine="eager")
    assert embedder.predict([np.zeros((32, 32, 3), np.uint8)])[0].ok
    with pytest.raises(CnnappsError, match="its head 'classify' is a classify head, not a retrieve one"):
        cnnapps.load(multi, task="retrieve", head="classify")
    with pytest.raises(CnnappsError, match="its head 'retrieve' is a retrieve head, not a classify one"):
        cnnapps.load(multi, task="classify", head="retrieve")
    classifier = cnnapps.load(multi, head="classify", engine="eager")  # no task: the named head's
    assert type(classifier).__name__ == "ClassificationPredictor"
    with pytest.raises(CnnappsError, match="no head named 'nope'"):
        cnnapps.load(multi, head="nope")


def test_predict_command_prints_one_object_per_image_with_a_key_per_head(run_cli, multi, photos, tmp_path) -> None:
    code, out, err = run_cli("predict", multi, *photos[:2], "--tasks", "classify,caption", "--json")
    assert code == 0, err
    answers = json.loads(out)
    assert [set(a) for a in answers] == [{"path", "classify", "caption", "engine"}] * 2
    code, out, err = run_cli("predict", multi, photos[0], tmp_path / "missing.png", "--save-dir", tmp_path / "drawn")
    assert code == 1 and "missing.png" in err and "segment" in out and "caption" in out
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 1
    code, out, _ = run_cli("predict", multi, photos[0], "--tasks", "pose")
    assert code == 2


def test_predict_command_takes_one_task_files_too(run_cli, heads, photos) -> None:
    code, out, err = run_cli("predict", heads["colours"], photos[0], "--json")
    assert code == 0, err
    (answer,) = json.loads(out)
    assert set(answer) == {"path", "classify", "engine"} and answer["classify"]["predictions"][0]["label"]


def test_predict_embeds_with_any_trunk_when_retrieve_is_asked_for_alone(run_cli, heads, photos) -> None:
    """Any trunk embeds (``load(spec, task="retrieve")``): ``predict --tasks retrieve`` did too little, refusing a
    classifier file or registry name as having no retrieve head."""
    alone = cnnapps.load(heads["colours"], task="retrieve", engine="eager").predict([photos[0]])[0].vector
    code, out, err = run_cli("predict", heads["colours"], photos[0], "--tasks", "retrieve", "--json")
    assert code == 0, err
    (answer,) = json.loads(out)
    assert set(answer) == {"path", "retrieve", "engine"}
    np.testing.assert_allclose(answer["retrieve"]["embedding"], alone, atol=1e-5)
    code, again, err = run_cli("predict", heads["colours"], photos[0], "--tasks", "retrieve,retrieve", "--json")
    assert code == 0 and json.loads(again) == json.loads(out), err  # named twice: asked for once
    code, _, err = run_cli("predict", heads["colours"], photos[0], "--tasks", "classify,retrieve")
    assert code == 2 and "it has no retrieve head (any trunk can retrieve: ask for it alone, --tasks retrieve)" in err
    code, _, err = run_cli("predict", "efficientnet_lite0", photos[0], "--tasks", "classify,retrieve")
    assert code == 2 and "ask for it alone, --tasks retrieve" in err
    code, out, err = run_cli("predict", "efficientnet_lite0", photos[0], "--tasks", "retrieve", "--json")
    assert code == 0 and len(json.loads(out)[0]["retrieve"]["embedding"]) > 0, err


def test_serve_holds_one_trunk_and_answers_every_route(multi, photos) -> None:
    from fastapi.testclient import TestClient

    from cnnapps.serve.app import create_app

    app = create_app([str(multi)], warm_up=False)
    with TestClient(app, base_url="http://localhost") as client:
        listed = client.get("/v1/models").json()["models"]
        assert {m["route"] for m in listed} == {"/v1/classify", "/v1/embed", "/v1/caption", "/v1/segment"}
        assert {m["name"] for m in listed} == {"multi"}
        image = {"files": {"image": ("x.png", Path(photos[0]).read_bytes(), "image/png")}}
        every = client.post("/v1/predict?top_k=2", **image).json()
        assert set(every) >= {"path", "model", "classify", "retrieve", "caption", "segment"}
        assert len(every["classify"]["predictions"]) == 2
        alone = client.post("/v1/caption", **image).json()
        assert alone["caption"] == every["caption"]["caption"] and alone["model"] == "multi"
        embedded = client.post("/v1/embed", **image).json()
        assert np.allclose(embedded["embedding"], every["retrieve"]["embedding"], atol=1e-6)


def test_index_build_uses_a_multi_head_files_embedding(run_cli, multi, heads, photos, tmp_path) -> None:
    from cnnapps.apps.retrieve.embedder import Embedder
    from cnnapps.apps.retrieve.index import Index

    code, _, err = run_cli("index", "build", *photos, "--index", tmp_path / "by-multi.idx", "--model", multi)
    assert code == 0, err
    alone, joined = Embedder(heads["embed"]), Embedder(multi)
    assert alone.fingerprint == joined.fingerprint and joined.dim == 8  # the head's own 8-d projection
    index = Index.open(tmp_path / "by-multi.idx")
    index.check_embedder(alone)  # an index built with the joined file takes queries from the head's own file
    hits = index.search(alone.embed(photos[:1])[1], k=1)[0]
    assert hits[0].path == str(Path(photos[0]).resolve()) or Path(hits[0].path).name == Path(photos[0]).name


@pytest.fixture(scope="module")
def two_lenet_heads(tmp_path_factory) -> list[Path]:
    """Two one-head classifier files (both heads named ``classify``) on one LeNet-5 trunk: cheap files to compose."""
    import torch

    from cnnapps.apps.classify.model import Classifier
    from cnnapps.apps.modelfile import save_model
    from cnnapps.backbones import create_backbone

    torch.manual_seed(0)
    root, trunk = tmp_path_factory.mktemp("lenet"), create_backbone("lenet5")
    paths = [root / "digits.safetensors", root / "letters.safetensors"]
    for path, classes in zip(paths, (3, 2), strict=True):
        save_model(path, "classify", Classifier(trunk, classes), "lenet5", {}, trunk.preprocess.to_dict())
    return paths


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["a", "b", "c"], r"^--names: 3 names for 2 heads \(classify, classify\); give one name per head$"),
        (["a"], r"^--names: 1 name for 2 heads \(classify, classify\); give one name per head$"),
        (["a", "a"], r"^--names: 'a' twice; each head needs a name of its own$"),
    ],
)
def test_compose_takes_one_distinct_name_per_head(two_lenet_heads, tmp_path, monkeypatch, names, message) -> None:
    import cnnapps.apps.modelfile as modelfile

    def unread(*args, **kwargs):  # the names are checked before any tensor is read
        raise AssertionError("tensors read before the names were checked")

    monkeypatch.setattr(modelfile, "tensor_fingerprint", unread)
    with pytest.raises(CnnappsError, match=message):
        compose(two_lenet_heads, tmp_path / "out.safetensors", names=names)
    assert not (tmp_path / "out.safetensors").exists()


def test_compose_names_heads_as_asked_and_resolves_clashes_only_unasked(two_lenet_heads, tmp_path) -> None:
    compose(two_lenet_heads, tmp_path / "named.safetensors", names=["digits", "letters"])
    named = read_model_file(tmp_path / "named.safetensors")
    assert {name: len(info.labels) for name, info in named.heads.items()} == {"digits": 3, "letters": 2}
    compose(two_lenet_heads, tmp_path / "unnamed.safetensors")
    assert list(read_model_file(tmp_path / "unnamed.safetensors").heads) == ["classify", "classify-letters"]


def test_eval_classify_and_segment_take_the_head_of_a_file_with_several(two_lenet_heads, multi, heads, photos,
                                                                        run_cli, tmp_path) -> None:  # fmt: skip
    """``--head`` on ``eval classify`` and on ``segment``/``eval segment`` (detect and pose share their commands):
    before, a file with two heads of one task could not be evaluated, and these commands had no ``--head``."""
    import cv2

    two = compose(two_lenet_heads, tmp_path / "two.safetensors", names=["digits", "letters"])
    for label in ("0", "1"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(
                str(tmp_path / "data" / label / f"{i}.png"), np.full((32, 32), 60 * i + 100 * int(label), "uint8")
            )
    code, _, err = run_cli("eval", "classify", "--model", two, "--data", tmp_path / "data")
    assert code == 2 and "several heads (digits, letters)" in err and "--head" in err
    code, out, err = run_cli("eval", "classify", "--model", two, "--head", "letters", "--data", tmp_path / "data",
                             "--json")  # fmt: skip
    assert code == 0, err
    _, alone, _ = run_cli("eval", "classify", "--model", two_lenet_heads[1], "--data", tmp_path / "data", "--json")
    assert json.loads(out)["top1"] == json.loads(alone)["top1"] and json.loads(out)["class_names"] == ["0", "1"]
    code, _, err = run_cli("segment", photos[0], "--model", multi, "--head", "classify")
    assert code == 2 and "its head 'classify' is a classify head, not a segment one" in err
    code, out, err = run_cli("segment", photos[0], "--model", multi, "--head", "segment", "--json")
    assert code == 0, err
    (answer,) = json.loads(out)
    assert answer["path"] == photos[0] and "instances" in answer
    data = heads["images"].parent / "val.json"
    code, _, err = run_cli("eval", "segment", "--model", multi, "--head", "nope", "--data", data, "--images",
                           heads["images"])  # fmt: skip
    assert code == 2 and "no head named 'nope'" in err


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (
            ["path", "engine"],
            r"^--names 'path': 'path' is a key every multi-task answer holds itself \(path, error, "
            r"engine, model, .*\): the head's answer would overwrite it$",
        ),
        (["a", "engine"], r"^--names 'engine': 'engine' is a key every multi-task answer holds itself"),
        (["error", "b"], r"^--names 'error': 'error' is a key"),
        (["a", "model"], r"^--names 'model': 'model' is a key"),
        (["a", " b"], r"^--names ' b': a head's name has no space at either end \(no command could select it\)$"),
        (["a ", "b"], r"^--names 'a ': a head's name has no space at either end"),
        (["a/b", "c"], r"^--names 'a/b': a head's name holds no / or , \(serve's model=NAME/HEAD"),
        (["a", "b,c"], r"^--names 'b,c': a head's name holds no / or ,"),
    ],
)
def test_compose_refuses_a_name_no_head_may_have(two_lenet_heads, tmp_path, names, message) -> None:
    """A head named path or engine overwrote the answer's own keys in --json (``[{"path": {caption...}, "engine":
    "jit"}]``); " b" or "a/b" could not be selected by any command (--tasks strips names, serve reads NAME/HEAD)."""
    with pytest.raises(CnnappsError, match=message):
        compose(two_lenet_heads, tmp_path / "out.safetensors", names=names)
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("name", ["path", "engine", "error", "model", " letters", "a/b"])
def test_a_file_written_with_a_head_name_no_head_may_have_now_still_loads(two_lenet_heads, tmp_path, name) -> None:
    """A file written before such names were refused still loads: a name only hard to select answers under its
    name; a key of the answer's own answers alone, and is refused in one line where heads answer together (its
    answer would overwrite that key)."""
    from cnnapps.apps.modelfile import write_model_file

    source = read_model_file(two_lenet_heads[1])
    head = (source.heads["classify"], source.head_tensors("classify"))
    renamed = write_model_file(tmp_path / "renamed.safetensors", source.trunk, source.trunk_tensors(), {name: head},
                               source.preprocess)  # fmt: skip
    if name not in ("path", "engine", "error", "model"):
        from cnnapps.apps.multitask import MultiTaskPredictor

        (answer,) = MultiTaskPredictor(renamed, engine="eager").predict([np.zeros((32, 32, 3), np.uint8)])
        assert list(answer.to_dict()) == ["path", name]
        return
    assert list(read_model_file(renamed).heads) == [name]  # it was refused whole
    (alone,) = cnnapps.load(renamed, engine="eager").predict([np.zeros((32, 32, 3), np.uint8)])
    assert alone.ok and alone.predictions
    from cnnapps.apps.multitask import MultiTaskPredictor

    with pytest.raises(CnnappsError) as caught:
        MultiTaskPredictor(renamed, engine="eager")
    assert str(caught.value) == (
        f"{renamed}: its head {name!r} is named for a key of the answer itself; load it alone "
        f"(head={name!r}), or name the heads anew with cnnapps compose {renamed} --names ..."
    )


def test_compose_strips_the_names_given_on_the_command_line(two_lenet_heads, tmp_path, run_cli) -> None:
    """``--names "digits, letters"`` named the second head " letters", which no command could then select."""
    out = tmp_path / "named.safetensors"
    code, _, err = run_cli("compose", *two_lenet_heads, "--out", out, "--names", "digits, letters")
    assert code == 0, err
    assert list(read_model_file(out).heads) == ["digits", "letters"]
    code, _, err = run_cli("compose", *two_lenet_heads, "--out", tmp_path / "x.safetensors", "--names", "path,engine")
    assert code == 2 and "--names 'path': 'path' is a key every multi-task answer holds itself" in err
    assert not (tmp_path / "x.safetensors").exists()


def test_compose_names_the_preprocessing_keys_that_differ_with_both_values(tmp_path) -> None:
    """The whole mappings, each cut at 57 characters, looked identical: the keys that differ are named instead."""
    from cnnapps.apps.classify.model import Classifier
    from cnnapps.apps.modelfile import save_model
    from cnnapps.backbones import create_backbone

    trunk = create_backbone("lenet5")
    own = {**trunk.preprocess.to_dict(), "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    other = {**own, "mean": [0.5, 0.5, 0.51], "interpolation": "bicubic"}
    other.pop("resize")
    for path, preprocess in ((tmp_path / "a.safetensors", own), (tmp_path / "b.safetensors", other)):
        save_model(path, "classify", Classifier(trunk, 2), "lenet5", {}, preprocess)
    with pytest.raises(CnnappsError) as caught:
        compose([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], tmp_path / "x.safetensors")
    assert str(caught.value) == (
        f"{tmp_path / 'b.safetensors'}: its preprocessing differs from {tmp_path / 'a.safetensors'}'s: resize unset "
        f"vs {own['resize']!r}; interpolation 'bicubic' vs {own['interpolation']!r}; mean [0.5, 0.5, 0.51] vs "
        "[0.5, 0.5, 0.5]"
    )


def test_a_head_trained_on_a_trunk_without_batch_norm_counters_keeps_its_fingerprint(tmp_path) -> None:
    """A detector trained with its trunk stores no ``num_batches_tracked`` (frozen batch norm): a head trained on
    that trunk (``--trunk``) stored them, so the bit-identical weights got another fingerprint, and compose and
    indexes refused them as another trunk. Written again from a loaded model, a file keeps its tensors too."""
    import torch

    from cnnapps.apps.classify.model import Classifier
    from cnnapps.apps.modelfile import build_model, load_trunk, save_model, write_model_file
    from cnnapps.backbones import create_backbone

    torch.manual_seed(0)
    trunk = create_backbone("timm:test_resnet", weights=None)
    trunk = trunk.drop_head() if trunk.has_head else trunk
    preprocess = trunk.preprocess.to_dict()
    save_model(tmp_path / "counted.safetensors", "classify", Classifier(trunk, 2), "timm:test_resnet", {}, preprocess)
    counted = read_model_file(tmp_path / "counted.safetensors")
    state = {k: v for k, v in counted.trunk_tensors().items() if not k.endswith("num_batches_tracked")}
    assert len(state) < len(counted.trunk_tensors())  # the trunk has batch norm
    head = (counted.heads["classify"], counted.head_tensors("classify"))
    source = write_model_file(tmp_path / "source.safetensors", counted.trunk, state, {"classify": head}, preprocess)

    loaded, _ = load_trunk(source)
    save_model(tmp_path / "new.safetensors", "classify", Classifier(loaded, 3), "timm:test_resnet", {}, preprocess)
    again = build_model(read_model_file(tmp_path / "new.safetensors"))
    save_model(tmp_path / "again.safetensors", "classify", again, "timm:test_resnet", {}, preprocess)
    expected = trunk_fingerprint(read_model_file(source))
    for path in ("new.safetensors", "again.safetensors"):
        written = read_model_file(tmp_path / path)
        assert set(written.trunk_tensors()) == set(state) and trunk_fingerprint(written) == expected, path
    compose([source, tmp_path / "new.safetensors"], tmp_path / "both.safetensors", names=["old", "new"])
    # a trunk that stores its counters keeps them
    loaded, _ = load_trunk(counted.path)
    save_model(tmp_path / "kept.safetensors", "classify", Classifier(loaded, 3), "timm:test_resnet", {}, preprocess)
    assert trunk_fingerprint(read_model_file(tmp_path / "kept.safetensors")) == trunk_fingerprint(counted)


def test_predict_takes_one_head_as_a_string_and_no_heads_as_all(two_lenet_heads, tmp_path) -> None:
    """``heads="letters"`` was read as the letters l, e, t...; ``heads=[]`` answered with no head at all, though
    the constructor takes [] as every head."""
    from cnnapps.apps.multitask import MultiTaskPredictor

    both = compose(two_lenet_heads, tmp_path / "both.safetensors", names=["digits", "letters"])
    image = np.zeros((32, 32, 3), np.uint8)
    predictor = MultiTaskPredictor(both, engine="eager")
    assert list(predictor.predict([image], heads="letters")[0].results) == ["letters"]
    assert list(predictor.predict([image], heads=[])[0].results) == ["digits", "letters"]
    assert list(predictor.predict([image], heads=["classify"])[0].results) == ["digits", "letters"]
    assert list(MultiTaskPredictor(both, heads="digits", engine="eager").tasks) == ["digits"]
    assert list(MultiTaskPredictor(both, heads=[], engine="eager").tasks) == ["digits", "letters"]
    with pytest.raises(CnnappsError, match=r"no head or task 'letter' \(it has digits \(classify\), letters"):
        predictor.predict([image], heads="letter")
