"""DetectionPredictor through cnnapps.load: results, drawing, bad inputs, and a light import footprint."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cnnapps
from cnnapps.apps.detect.model import create_detector, save_detector
from cnnapps.errors import CnnappsError


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("det") / "seg.safetensors"
    model = create_detector("segment", "resnet18", num_classes=3, class_names=["__background__", "a", "b"],
                            backbone_weights=None, fpn_channels=16, min_size=96, max_size=128)  # fmt: skip
    save_detector(path, model)
    return path


def test_load_gives_results_with_rle_masks_and_a_drawing(model_file):
    predictor = cnnapps.load(model_file, score_threshold=0.0)
    assert predictor.task == "segment" and predictor.class_names == ["__background__", "a", "b"]
    image = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    result, bad = predictor.predict([image, b"not an image"])
    assert result.ok and (result.width, result.height) == (120, 90) and result.instances
    d = result.to_dict()["instances"][0]
    assert d["label"] in ("a", "b") and d["mask"]["size"] == [90, 120] and len(d["box"]) == 4
    assert not bad.ok and bad.to_dict() == {"path": bad.source, "error": bad.error}
    picture = result.draw(image)
    assert picture.shape == image.shape and not np.array_equal(picture, image)


def test_embed_gives_each_instance_its_appearance_from_the_same_pass(model_file):
    image = np.random.default_rng(1).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    plain = cnnapps.load(model_file, score_threshold=0.0).predict([image])[0]
    embedded = cnnapps.load(model_file, score_threshold=0.0, embed=True).predict([image])[0]
    assert np.allclose([i.box for i in plain.instances], [i.box for i in embedded.instances], atol=1e-4)  # same
    vectors = np.stack([i.embedding for i in embedded.instances])
    assert vectors.shape == (len(embedded.instances), 16 * 7 * 7)  # the FPN channels x the RoI cells
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert all(i.embedding is None for i in plain.instances)
    assert "embedding" not in json.dumps(embedded.to_dict())  # for trackers, not printed
    with pytest.raises(CnnappsError, match="tiled detection gives no appearance"):
        cnnapps.load(model_file, embed=True, tile=96)


def test_an_image_s_answer_does_not_depend_on_the_others_in_its_batch(model_file):
    """The model pads a batch to its largest image: a small image run beside a large one found objects in the
    padding (boxes along its right edge). Images of one size still run together."""
    rng = np.random.default_rng(2)
    small = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    large = rng.integers(0, 255, (90, 200, 3), dtype=np.uint8)
    alone = cnnapps.load(model_file, score_threshold=0.0, device="cpu", batch_size=1).predict([small, large])
    together = cnnapps.load(model_file, score_threshold=0.0, device="cpu", batch_size=2).predict([small, large])
    for a, b in zip(alone, together, strict=True):
        assert a.instances and [i.to_dict() for i in a.instances] == [i.to_dict() for i in b.instances]


def test_an_image_the_detector_would_flatten_fails_alone(run_cli, tmp_path):
    """Within the general aspect limit (100:1) but beyond this detector's (its long side resized to 64 px): the
    short side would become 0 px. That image gets its error; the batch goes on."""
    import cv2

    small = tmp_path / "small.safetensors"
    save_detector(small, create_detector("segment", "resnet18", num_classes=2, class_names=["__background__", "a"],
                                         backbone_weights=None, fpn_channels=16, min_size=48, max_size=64))  # fmt: skip
    strip, photo = tmp_path / "strip.png", tmp_path / "photo.png"
    cv2.imwrite(str(strip), np.full((20, 1500, 3), 128, np.uint8))
    cv2.imwrite(str(photo), np.random.default_rng(3).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    flat, good = cnnapps.load(small, score_threshold=0.0, device="cpu", batch_size=2).predict([strip, photo])
    assert good.ok and good.instances
    assert flat.error == (
        "1500x20 image is more elongated than this detector takes (64:1 at most: it resizes the long side to 64 px); "
        "use --tile"
    )
    code, out, _ = run_cli("segment", strip, photo, "--model", small, "--device", "cpu", "--json")
    assert code == 1 and [bool(r.get("error")) for r in json.loads(out)] == [True, False]


def same_instances(a, b) -> bool:
    """The same detections up to float rounding: as many, and each one clear of the lowest score kept (an untrained
    detector's near-ties there may swap places or which of them is kept) found on the other side, same label,
    box within 0.01 px, score within 1e-3."""
    if len(a.instances) != len(b.instances):
        return False
    cut = min((i.score for i in a.instances), default=0.0) + 1e-3
    return all(
        any(i.label == j.label and np.allclose(i.box, j.box, atol=1e-2) and abs(i.score - j.score) < 1e-3
            for j in b.instances)
        for i in a.instances
        if i.score > cut
    )  # fmt: skip


def test_a_shape_that_keeps_coming_gets_a_compiled_trunk_with_the_same_answers(model_file):
    from cnnapps.apps.detect.predictor import COMPILE_AFTER, DetectionPredictor

    frames = [np.random.default_rng(i).integers(0, 255, (90, 120, 3), dtype=np.uint8) for i in range(5)]
    eager = DetectionPredictor(model_file, score_threshold=0.0, engine="eager", device="cpu")
    compiled = DetectionPredictor(model_file, score_threshold=0.0, device="cpu")
    for n, frame in enumerate(frames, 1):
        a, b = eager.predict([frame])[0], compiled.predict([frame])[0]
        assert len(compiled._compiled) == (n >= COMPILE_AFTER)  # compiled on the third frame of one size
        assert a.instances and same_instances(a, b)
    assert not eager._compiled
    soon = DetectionPredictor(model_file, score_threshold=0.0, device="cpu")
    first = soon.predict_in_lane([frames[0]], compile_now=True)[0]  # what video lanes forked afterwards share
    assert len(soon._compiled) == 1 and first.engine == "jit"
    assert same_instances(first, eager.predict([frames[0]])[0])


def test_each_result_names_the_engine_its_own_trunk_ran_on(model_file):
    """Results were stamped with the engine of the shape compiled last, also images of other sizes that ran eager."""
    from cnnapps.apps.detect.predictor import COMPILE_AFTER, DetectionPredictor

    rng = np.random.default_rng(7)
    common = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    other = rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)  # another resized shape: not compiled
    predictor = DetectionPredictor(model_file, score_threshold=0.0, device="cpu", batch_size=2)
    engines = [predictor.predict([common])[0].engine for _ in range(COMPILE_AFTER)]
    assert engines == ["eager"] * (COMPILE_AFTER - 1) + ["jit"] and predictor.engine == "jit"
    alone = predictor.predict([other])[0]
    assert alone.ok and alone.engine == "eager"
    assert [r.engine for r in predictor.predict([other, common, b"not an image"])][:2] == ["eager", "jit"]


def test_a_grey_trunk_is_compiled_for_the_one_channel_it_reads():
    import torch

    from cnnapps.apps.detect.model import create_detector
    from cnnapps.apps.detect.predictor import DetectionPredictor

    torch.manual_seed(0)
    model = create_detector("detect", backbone="lenet5", backbone_weights=None, num_classes=3, min_size=64,
                            max_size=64)  # fmt: skip
    assert model.backbone.grey
    frame = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    eager = DetectionPredictor(model=model, engine="eager", score_threshold=0.0).predict([frame])[0]
    jit = DetectionPredictor(model=model, engine="jit", score_threshold=0.0)
    found = jit.predict([frame])[0]  # the trunk was traced on three channels: every prediction failed
    assert found.ok and found.engine == "jit", found.error
    assert [shape[1] for shape in jit._compiled] == [1]
    assert eager.instances and same_instances(found, eager)


def test_load_refuses_the_wrong_task(model_file):
    with pytest.raises(CnnappsError, match="a segment model, not a pose model"):
        cnnapps.load(model_file, task="pose")
    assert cnnapps.api.task_of("keypointrcnn_resnet50_fpn") == "pose"


@pytest.fixture(scope="module")
def trained_at_256(tmp_path_factory):
    """A detector resizing to 96 px whose training images were 256 px (recorded as its training size)."""
    path = tmp_path_factory.mktemp("det") / "small.safetensors"
    model = create_detector("detect", "resnet18", num_classes=2, class_names=["__background__", "a"],
                            backbone_weights=None, fpn_channels=16, min_size=96, max_size=96)  # fmt: skip
    model.spec.train_size = 256
    save_detector(path, model)
    return path


def test_auto_tiles_are_the_size_the_model_was_trained_at(trained_at_256, model_file, caplog):
    with caplog.at_level("WARNING", logger="cnnapps"):
        auto = cnnapps.load(trained_at_256, tile="auto")
        assert (auto.tile, auto.overlap) == (256, 128)
        older = cnnapps.load(model_file, tile="auto")  # no training size recorded: the size it resizes to
        assert older.spec.train_size is None and (older.tile, older.overlap) == (96, 48)
    assert not caplog.records
    image = np.random.default_rng(0).integers(0, 255, (300, 280, 3), dtype=np.uint8)
    (result,) = auto.predict([image])
    assert result.ok and (result.width, result.height) == (280, 300)


def test_a_tile_far_from_the_training_size_is_warned_of(trained_at_256, caplog):
    with caplog.at_level("WARNING", logger="cnnapps"):
        cnnapps.load(trained_at_256, tile=512)
        cnnapps.load(trained_at_256, tile=128)
        assert not caplog.records  # within 2x either way: quiet
        cnnapps.load(trained_at_256, tile=1024, overlap=128)
    (record,) = caplog.records
    assert record.levelname == "WARNING" and "\n" not in record.getMessage()
    assert "--tile 1024" in record.getMessage() and "256 px" in record.getMessage()
    assert "try --tile 256" in record.getMessage()


def test_specs_of_older_files_have_a_training_size():
    from cnnapps.apps.detect.model import DetectorSpec

    spec = DetectorSpec.from_dict({"task": "detect", "backbone": "resnet18", "num_classes": 2, "min_size": 320})
    assert spec.train_size is None and spec.training_size == 320


def test_the_training_size_is_the_training_images_window():
    from cnnapps.apps.detect.model import DetectorSpec, training_window

    spec = DetectorSpec("detect", "resnet18", 2, min_size=100, max_size=150)
    # a 100 x 200 image is scaled by min(100 / 100, 150 / 200) = 0.75; a square window by 100 / T: T = 133
    assert training_window([(100, 200)], spec) == 133
    assert training_window([(256, 256), (96, 96), (300, 300)], spec) == 256  # the median
    assert training_window([], spec) is None
    shared = DetectorSpec("detect", "resnet18", 2, min_size=224, max_size=224, shared=True)
    assert training_window([(256, 512)], shared) == 256  # a trunk's preprocessing scales by the shorter side


def test_training_records_its_images_size(tmp_path):
    import torch

    from cnnapps.apps.detect.config import DetectConfig
    from cnnapps.apps.detect.train import _prepare
    from cnnapps.datasets.synthetic import write_coco

    write_coco("shapes", tmp_path, "train", 4, seed=0, size=96)
    config = DetectConfig(task="segment", data=str(tmp_path / "train.json"), images=str(tmp_path / "train"),
                          backbone="resnet18", weights=None, fpn_channels=16, min_size=64, max_size=64, workers=0,
                          batch_size=2, out=str(tmp_path / "run")).validate()  # fmt: skip
    plan = _prepare(config, torch.device("cpu"))
    assert plan.module.model.spec.train_size == 96  # the images' size, not the 64 px they are resized to


def test_the_command_line_tiles_at_the_training_size_or_warns(trained_at_256, run_cli, tmp_path, caplog):
    from cnnapps.datasets.io import write_image

    image = write_image(tmp_path / "big.png", np.full((300, 300, 3), 127, np.uint8))
    with caplog.at_level("WARNING", logger="cnnapps"):
        code, out, _ = run_cli("detect", image, "--model", trained_at_256, "--tile", "auto", "--json")
        assert code == 0 and json.loads(out)[0]["width"] == 300 and not caplog.records
        code, _, _ = run_cli("detect", image, "--model", trained_at_256, "--tile", "1024", "--json")
    assert code == 0 and "try --tile 256" in caplog.text
    code, _, err = run_cli("detect", image, "--model", trained_at_256, "--tile", "huge")
    assert code == 2 and "auto or a size in pixels" in err


@pytest.mark.parametrize("batch_size", [0, -2, 1.5])
def test_a_predictor_built_directly_refuses_a_batch_size_below_1_in_one_line(model_file, batch_size):
    from cnnapps.apps.detect.predictor import DetectionPredictor

    with pytest.raises(CnnappsError) as caught:  # it was taken as "the default" (0) or failed deep inside (-2, 1.5)
        DetectionPredictor(model_file, device="cpu", batch_size=batch_size)
    assert str(caught.value) == f"batch_size={batch_size!r}: images per forward pass, a whole number of at least 1"
