"""Semantic and panoptic heads on one trunk: a semantic head trained with ``--trunk`` composes with the other heads
and answers from the one-pass MultiTaskPredictor as it does alone; with a Mask R-CNN head on the same trunk it makes
a panoptic model, scored with PQ and served like any task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import cnnapps
from cnnapps.apps.modelfile import compose, read_model_file, trunk_fingerprint

COMMON = {"workers": 0, "progress": False, "epochs": 1, "batch_size": 4}


@pytest.fixture(scope="module")
def heads(trained, tmp_path_factory) -> dict[str, Path]:
    """A semantic head and a Mask R-CNN head trained on the trunk of the LeNet-5 colour classifier (``trained``)."""
    from cnnapps.apps.common.config import load_config
    from cnnapps.apps.detect.config import DetectConfig
    from cnnapps.apps.detect.train import train_detector
    from cnnapps.apps.semantic.config import SemanticConfig
    from cnnapps.apps.semantic.synthetic import main as synthetic
    from cnnapps.apps.semantic.train import train_semantic

    root = tmp_path_factory.mktemp("scene-heads")
    synthetic([str(root / "scenes"), "--train", "8", "--val", "4", "--size", "64"])
    trunk = str(trained[0] / "model.safetensors")
    scenes = root / "scenes"
    train_semantic(load_config(None, SemanticConfig, data=str(scenes), trunk=trunk, head="fpn", head_channels=8,
                               out=str(root / "stuff"), **COMMON))  # fmt: skip
    annotations = scenes / "annotations"
    train_detector(load_config(None, DetectConfig, task="segment", data=str(annotations / "instances_train.json"),
                               images=str(scenes / "JPEGImages"), val_data=str(annotations / "instances_val.json"),
                               trunk=trunk, out=str(root / "things"), **COMMON))  # fmt: skip
    return {"trunk": Path(trunk), "stuff": root / "stuff/model.safetensors",
            "things": root / "things/model.safetensors", "scenes": scenes, "root": root}  # fmt: skip


@pytest.fixture(scope="module")
def photos(heads) -> list[str]:
    return sorted(str(p) for p in (heads["scenes"] / "JPEGImages").glob("val_*.jpg"))


@pytest.fixture(scope="module")
def multi(heads) -> Path:
    out = heads["root"] / "multi.safetensors"
    compose([heads["trunk"], heads["stuff"], heads["things"]], out)
    return out


def test_the_semantic_head_keeps_the_trunk_and_joins_the_others(heads, multi):
    trunk = read_model_file(heads["trunk"])
    stuff = read_model_file(heads["stuff"])
    assert trunk_fingerprint(stuff) == trunk_fingerprint(trunk) and stuff.preprocess == trunk.preprocess
    assert stuff.heads["semantic"].kwargs["shared"] is True
    assert {n: h.task for n, h in read_model_file(multi).heads.items()} == {
        "classify": "classify", "semantic": "semantic", "segment": "segment"}  # fmt: skip


def test_one_pass_answers_equal_the_semantic_head_alone(multi, heads, photos):
    predictor = cnnapps.load(multi, score_threshold=0.0)
    assert type(predictor).__name__ == "MultiTaskPredictor"
    together = predictor.predict(photos)
    alone = cnnapps.load(heads["stuff"]).predict(photos)
    for joint, single in zip(together, alone, strict=True):
        answer = joint.to_dict()
        assert set(answer) == {"path", "classify", "semantic", "segment"}
        labels = joint.results["semantic"].labels
        assert labels.shape == single.labels.shape == (64, 64)
        assert (labels == single.labels).mean() > 0.999
        assert sum(c["pixels"] for c in answer["semantic"]["classes"]) == 64 * 64


def test_serve_answers_the_semantic_route_from_the_multi_head_file(multi, photos):
    from fastapi.testclient import TestClient

    from cnnapps.serve.app import create_app

    app = create_app([str(multi)], warm_up=False)
    with TestClient(app, base_url="http://localhost") as client:
        routes = {m["route"] for m in client.get("/v1/models").json()["models"]}
        assert routes == {"/v1/classify", "/v1/semantic", "/v1/segment"}
        image = {"files": {"image": ("x.jpg", Path(photos[0]).read_bytes(), "image/jpeg")}}
        alone = client.post("/v1/semantic", **image).json()
        every = client.post("/v1/predict", **image).json()
    assert alone["classes"] == every["semantic"]["classes"] and alone["model"] == "multi"


@pytest.fixture(scope="module")
def panoptic_run(heads) -> Path:
    from cnnapps.apps.common.config import load_config
    from cnnapps.apps.semantic.config import PanopticConfig
    from cnnapps.apps.semantic.panoptic import train_panoptic

    out = heads["root"] / "panoptic"
    train_panoptic(load_config(None, PanopticConfig, data=str(heads["scenes"] / "annotations/panoptic_val.json"),
                               images=str(heads["scenes"] / "JPEGImages"), semantic_model=str(heads["stuff"]),
                               segment_model=str(heads["things"]), score_thresholds="0.05,0.5", stuff_areas="0,16",
                               out=str(out), progress=False))  # fmt: skip
    return out


def test_panoptic_run_chooses_the_merge_by_pq_and_eval_gives_the_same_pq(panoptic_run, heads, run_cli):
    metrics = json.loads((panoptic_run / "metrics.json").read_text())
    assert len(metrics["grid"]) == 4 and (panoptic_run / "curves.png").is_file()
    best = max(g["all"]["pq"] or 0.0 for g in metrics["grid"])
    assert metrics["val_pq"] == pytest.approx(best) and 0.0 <= best <= 1.0
    # what k-fold summaries and `cnnapps tune` compare runs by (tune panoptic failed with KeyError: 'selected_by')
    assert metrics["selected_by"] == {"metric": "val_pq", "value": metrics["val_pq"]}
    model_file = read_model_file(panoptic_run / "model.safetensors")
    (info,) = model_file.heads.values()
    assert info.task == "panoptic" and info.kwargs["merge"] == metrics["merge"]
    assert info.labels == ["sky", "water", "grass", "circle", "square", "triangle"]
    scenes = heads["scenes"]
    code, out, err = run_cli(
        "eval",
        "panoptic",
        "--model",
        panoptic_run / "model.safetensors",
        "--data",
        scenes / "annotations/panoptic_val.json",
        "--images",
        scenes / "JPEGImages",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["all"]["pq"] == pytest.approx(metrics["val_pq"], abs=1e-9)


def test_panoptic_predictions_cover_the_image_once_and_serve_as_they_answer(panoptic_run, photos, run_cli, tmp_path):
    from fastapi.testclient import TestClient

    from cnnapps.apps.semantic.pq import rgb_to_id
    from cnnapps.serve.app import create_app

    model = panoptic_run / "model.safetensors"
    predictor = cnnapps.load(model)
    assert type(predictor).__name__ == "PanopticPredictor"
    results = predictor.predict(photos)
    for result in results:
        ids = result.ids
        assert ids.shape == (64, 64) and set(np.unique(ids)) - {0} == {s.id for s in result.segments}
        assert all(s.area == int((ids == s.id).sum()) for s in result.segments)
    code, out, err = run_cli("panoptic", photos[0], "--model", model, "--json", "--save-masks", tmp_path / "png")
    assert code == 0, err
    (answer,) = json.loads(out)
    assert answer == {**results[0].to_dict(), "path": photos[0]}
    import cv2

    written = cv2.imread(str(tmp_path / "png" / f"{Path(photos[0]).stem}.png"))[:, :, ::-1]
    assert np.array_equal(rgb_to_id(written), results[0].ids)
    app = create_app([str(model)], warm_up=False)
    with TestClient(app, base_url="http://localhost") as client:
        served = client.post("/v1/panoptic", files={"image": ("x.jpg", Path(photos[0]).read_bytes(), "image/jpeg")})
    assert served.json()["segments"] == answer["segments"]


def test_panoptic_join_refuses_other_trunks_and_self_resizing_detectors(heads, trained, tmp_path, rewrite_metadata):
    from cnnapps.apps.detect.model import create_detector, save_detector
    from cnnapps.apps.semantic.panoptic import PanopticError, join

    detector = create_detector("segment", "lenet5", num_classes=2, backbone_weights=None, fpn_channels=8,
                               min_size=64, max_size=64)  # fmt: skip
    save_detector(tmp_path / "own.safetensors", detector)
    with pytest.raises(PanopticError, match=r"own\.safetensors: its segment head resizes images itself"):
        join(heads["stuff"], tmp_path / "own.safetensors")
    with pytest.raises(Exception, match=r"has no segment head"):
        join(heads["stuff"], heads["stuff"])
    # the same tensors built otherwise (as a Lite0 file from before its padding was recorded): compose refused them,
    # the join ran the things head on the other network
    other = rewrite_metadata(
        heads["things"],
        tmp_path / "other.safetensors",
        lambda m: {**m, "trunk": {**m["trunk"], "kwargs": {**m["trunk"]["kwargs"], "x": 1}}},
    )
    with pytest.raises(PanopticError, match=r"other\.safetensors: its trunk \(.*\) is built otherwise than .*; train"):
        join(heads["stuff"], other)


def test_an_instance_wholly_under_earlier_ones_is_left_out_at_any_overlap_threshold(panoptic_run):
    from cnnapps.apps.semantic.panoptic import Instances, PanopticPredictor

    model = PanopticPredictor(panoptic_run / "model.safetensors", device="cpu").model
    masks = np.zeros((2, 8, 8), bool)
    masks[0, :4, :4] = masks[1, 1:3, 1:3] = True  # the second lies wholly inside the first
    instances = Instances(masks, np.array([0.9, 0.8], np.float32), np.array([1, 2]))
    for overlap in (0.5, 1.0):  # at 1.0 the covered instance passed the test and its empty mask broke the merge
        result = model.combine(instances, np.zeros((8, 8), np.int64), {"overlap": overlap, "score_threshold": 0.5})
        things = [s for s in result.segments if s.isthing]
        assert len(things) == 1 and things[0].area == 16 and things[0].score == pytest.approx(0.9)


def test_panoptic_stuff_areas_are_pixel_counts() -> None:
    from cnnapps.apps.common.config import ConfigError
    from cnnapps.apps.semantic.config import PanopticConfig

    config = PanopticConfig(data="p.json", images="i", semantic_model="a", segment_model="b", stuff_areas="0,-5")
    with pytest.raises(ConfigError, match=r"^stuff_areas: pixel counts of 0 or more, not 0,-5$"):
        config.validate()
