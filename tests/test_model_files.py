"""Model files: files of the first format (kept as fixtures) keep loading and answering as they did; every file has
one schema (trunk, heads, preprocessing); damaged or hostile files give one-line errors naming the file and key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import cnnapps
from cnnapps.apps.modelfile import read_model_file
from cnnapps.bundle import FORMAT, BundleError, read_metadata
from tests.conftest import rewrite_metadata_file

V1 = Path(__file__).parent / "fixtures" / "model_files_v1"
ANSWERS = json.loads((V1 / "answers.json").read_text())


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    arrays = np.load(V1 / "inputs.npz")
    return [arrays["a"], arrays["b"]]


def test_first_format_files_read_as_one_head_files() -> None:
    for task in ("classify", "retrieve", "segment", "pose", "caption"):
        model_file = read_model_file(V1 / f"{task}.safetensors")
        assert model_file.format == "cnnapps-model/1" and model_file.tasks == [task]
        assert model_file.trunk["name"] in ("lenet5", "timm:test_convnext")
        (head,) = model_file.heads.values()
        assert head.task == task and head.kind
    classify = read_model_file(V1 / "classify.safetensors")
    assert classify.heads["classify"].labels == ["red", "green", "blue"]
    assert classify.trunk["kwargs"] == {"in_channels": 3} and classify.preprocess["input_size"] == [3, 32, 32]
    caption = read_model_file(V1 / "caption.safetensors").heads["caption"]
    assert caption.kind == "lstm" and "<start>" in caption.labels


def test_classifier_of_the_first_format_answers_as_before(images) -> None:
    results = cnnapps.load(V1 / "classify.safetensors", engine="eager", device="cpu").predict(images, top_k=3)
    for result, expected in zip(results, ANSWERS["classify"], strict=True):
        got = result.to_dict()["predictions"]
        assert [p["label"] for p in got] == [p["label"] for p in expected["predictions"]]
        assert np.allclose([p["score"] for p in got], [p["score"] for p in expected["predictions"]], atol=1e-5)


def test_embedder_of_the_first_format_answers_as_before(images) -> None:
    results = cnnapps.load(V1 / "retrieve.safetensors", task="retrieve", engine="eager", device="cpu").predict(images)
    assert np.allclose([r.vector for r in results], ANSWERS["retrieve"], atol=1e-5)


@pytest.mark.parametrize("task", ["segment", "pose"])
def test_detectors_of_the_first_format_answer_as_before(images, task) -> None:
    results = cnnapps.load(V1 / f"{task}.safetensors", score_threshold=0.0, device="cpu").predict(images)
    for result, expected in zip(results, ANSWERS[task], strict=True):
        got = result.to_dict()["instances"]
        assert len(got) == len(expected["instances"])
        top = expected["instances"][:5]
        assert [i["label"] for i in got[:5]] == [i["label"] for i in top]
        assert np.allclose([i["box"] for i in got[:5]], [i["box"] for i in top], atol=0.02)
        assert np.allclose([i["score"] for i in got[:5]], [i["score"] for i in top], atol=1e-4)
        if task == "segment":
            assert got[0]["mask"] == top[0]["mask"]
        else:
            assert np.allclose(got[0]["keypoints"], top[0]["keypoints"], atol=0.02)


def test_captioner_of_the_first_format_answers_as_before(images) -> None:
    results = cnnapps.load(V1 / "caption.safetensors", beam=2, device="cpu").predict(images)
    assert [r.to_dict() for r in results] == ANSWERS["caption"]


def test_a_first_format_file_rewritten_by_training_code_has_the_current_schema(tmp_path, images) -> None:
    from cnnapps.apps.classify.model import load_classifier
    from cnnapps.apps.modelfile import save_model

    loaded = load_classifier(V1 / "classify.safetensors")
    save_model(tmp_path / "again.safetensors", "classify", loaded.model, "lenet5", {"in_channels": 3},
               loaded.preprocess.to_dict())  # fmt: skip
    meta = read_metadata(tmp_path / "again.safetensors")
    assert meta["format"] == FORMAT and set(meta) >= {"trunk", "heads", "preprocess", "version"}
    assert meta["trunk"]["fingerprint"].startswith("sha256:") and list(meta["heads"]) == ["classify"]
    before = cnnapps.load(V1 / "classify.safetensors", engine="eager").predict(images)
    after = cnnapps.load(tmp_path / "again.safetensors", engine="eager").predict(images)
    assert [r.to_dict() for r in before] == [r.to_dict() for r in after]


@pytest.fixture(scope="module")
def current_file(tmp_path_factory) -> Path:
    from cnnapps.apps.classify.model import load_classifier
    from cnnapps.apps.modelfile import save_model

    loaded = load_classifier(V1 / "classify.safetensors")
    path = tmp_path_factory.mktemp("current") / "model.safetensors"
    save_model(path, "classify", loaded.model, "lenet5", {"in_channels": 3}, loaded.preprocess.to_dict())
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: {**m, "format": "cnnapps-model/9"}, "unsupported model file format 'cnnapps-model/9'"),
        (lambda m: {k: v for k, v in m.items() if k != "heads"}, "heads: expected a mapping of one or more heads"),
        (lambda m: {**m, "trunk": "lenet5"}, "trunk: expected"),
        (lambda m: {**m, "heads": {"classify": {**m["heads"]["classify"], "task": "dance"}}}, "heads.classify.task"),
        (
            lambda m: {**m, "heads": {"classify": {**m["heads"]["classify"], "labels": ["x"] * 200_000}}},
            "200,000 names, more than the 100,000",
        ),
        (lambda m: {**m, "heads": {"classify": {**m["heads"]["classify"], "labels": ["a", "b"]}}}, "has shape (3"),
        (lambda m: {**m, "preprocess": {**m["preprocess"], "input_size": [3, 100000, 100000]}}, "preprocess"),
        (lambda m: {**m, "trunk": {**m["trunk"], "kwargs": {"wings": 2}}}, "trunk.kwargs do not fit lenet5"),
        # a crafted file may not make the constructor read a file it names, fetch weights or take unbounded memory
        (
            lambda m: {**m, "trunk": {"name": "timm:test_resnet", "kwargs": {"checkpoint_path": "/etc/passwd"}}},
            "trunk.kwargs.checkpoint_path: a model file may not set where or whether weights are loaded",
        ),
        (
            lambda m: {**m, "trunk": {**m["trunk"], "kwargs": {"pretrained_cfg_overlay": {"file": "/x"}}}},
            "trunk.kwargs.pretrained_cfg_overlay",
        ),
        (lambda m: {**m, "trunk": {**m["trunk"], "kwargs": {"num_classes": 10**10}}}, "beyond the 100,000"),
        (lambda m: {**m, "trunk": {**m["trunk"], "kwargs": {"in_channels": {"a": 1}}}}, "expected a number, text"),
        (
            lambda m: {**m, "heads": {"classify": {**m["heads"]["classify"], "kwargs": {"dropout": "x"}}}},
            "heads.classify: its settings do not build a classify head",
        ),
        (lambda m: {**m, "preprocess": {**m["preprocess"], "input_size": [3, 32.5, 32]}}, "whole numbers of pixels"),
        (lambda m: {**m, "preprocess": {**m["preprocess"], "mean": ["a", "b", "c"]}}, "preprocess: mean"),
        (lambda m: {**m, "preprocess": {**m["preprocess"], "std": [0.5, 0.0, 0.5]}}, "preprocess: std"),
        (
            lambda m: {**m, "preprocess": {**m["preprocess"], "input_size": [1, 32, 32], "mean": [0.5], "std": [0.5]}},
            "preprocess.input_size: 1 channel, its trunk takes 3",
        ),
        (lambda m: {**m, "trunk": {**m["trunk"], "name": "resnet9000"}}, "trunk.name: resnet9000: unknown backbone"),
        # the library's own complaints about settings it cannot take: an assertion, a missing key, a missing attribute
        (
            lambda m: {**m, "trunk": {"name": "timm:test_resnet", "kwargs": {"output_stride": 7}}},
            "trunk.kwargs do not fit timm:test_resnet (AssertionError",
        ),
        (
            lambda m: {**m, "trunk": {"name": "timm:test_resnet", "kwargs": {"act_layer": "nope"}}},
            "trunk.kwargs do not fit timm:test_resnet (KeyError",
        ),
        (
            lambda m: {**m, "trunk": {"name": "timm:test_resnet", "kwargs": {"features_only": True}}},
            "trunk.kwargs do not fit timm:test_resnet (AttributeError",
        ),
    ],
)
def test_damaged_metadata_gives_one_line_naming_file_and_key(current_file, tmp_path, edit, message) -> None:
    from cnnapps.errors import CnnappsError

    damaged = rewrite_metadata_file(current_file, tmp_path / "damaged.safetensors", edit)
    with pytest.raises(CnnappsError) as caught:
        cnnapps.load(damaged, engine="eager").predict([np.zeros((8, 8, 3), np.uint8)])
    text = str(caught.value)
    assert message in text and str(damaged) in text and "\n" not in text


def test_not_a_model_file(tmp_path) -> None:
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(BundleError, match="not a safetensors model file"):
        read_model_file(tmp_path / "junk.safetensors")
    shutil.copy(V1 / "inputs.npz", tmp_path / "x.safetensors")  # a zip archive: said to be one
    with pytest.raises(BundleError, match=r"x\.safetensors: a zip archive .*, not a model file"):
        read_model_file(tmp_path / "x.safetensors")


@pytest.mark.parametrize("task", ["segment", "pose"])
def test_a_detector_s_file_embeds_its_trunk(task: str, images: list[np.ndarray]) -> None:
    """A file without an embedding head embeds its trunk's pooled map; a detector's file resizes images itself, so
    its trunk's own preprocessing is used (the file's failed to load as a classifier's: exit 2)."""
    from cnnapps.apps.modelfile import load_trunk

    results = cnnapps.load(V1 / f"{task}.safetensors", task="retrieve", device="cpu").predict(images[:2])
    trunk, _ = load_trunk(V1 / f"{task}.safetensors")
    assert all(r.ok for r in results) and len(results[0].vector) == trunk.stages[-1].channels
    assert np.allclose([np.linalg.norm(r.vector) for r in results], 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # a first-format file's trunk settings get the checks a current file's get: no file it names is opened
        (
            lambda m: {**m, "backbone": "timm:test_resnet", "backbone_kwargs": {"checkpoint_path": "/etc/passwd"}},
            "trunk.kwargs.checkpoint_path: a model file may not set where or whether weights are loaded",
        ),
        (lambda m: {**m, "backbone_kwargs": {"num_classes": 10**10}}, "beyond the 100,000"),
        (lambda m: {**m, "backbone_kwargs": ["in_channels"]}, "trunk.kwargs: expected a mapping"),
        (lambda m: {**m, "backbone": 5}, "trunk: expected"),
    ],
)
def test_a_first_format_file_s_trunk_is_checked_as_a_current_one_s(tmp_path, edit, message) -> None:
    damaged = rewrite_metadata_file(V1 / "classify.safetensors", tmp_path / "damaged.safetensors", edit)
    with pytest.raises(BundleError) as caught:
        read_model_file(damaged)
    text = str(caught.value)
    assert message in text and str(damaged) in text and "\n" not in text


@pytest.fixture(scope="module")
def current_heads(tmp_path_factory) -> dict[str, Path]:
    """The first-format embedding and segmentation files written again in the current format."""
    from cnnapps.apps.modelfile import build_model, save_model

    root = tmp_path_factory.mktemp("current-heads")
    for task in ("retrieve", "segment"):
        source = read_model_file(V1 / f"{task}.safetensors")
        save_model(root / f"{task}.safetensors", task, build_model(source), source.trunk["name"],
                   source.trunk["kwargs"], source.preprocess)  # fmt: skip
    return {task: root / f"{task}.safetensors" for task in ("retrieve", "segment")}


@pytest.mark.parametrize(
    ("task", "key", "value", "most"),
    [
        ("retrieve", "embedding_size", 10**6, "16,384"),
        ("retrieve", "embedding_size", "wide", "16,384"),
        ("segment", "fpn_channels", 100_000, "2,048"),
        ("segment", "fpn_channels", 0, "2,048"),
    ],
)
def test_a_head_s_layer_sizes_are_bounded_when_its_header_is_read(current_heads, tmp_path, task, key, value,
                                                                  most) -> None:  # fmt: skip
    """An embedding of 10**6 or an FPN of 100,000 channels was refused only once its layers were being allocated:
    the header is refused before anything is built, in one line naming the file and the key (both formats)."""

    def first_format(meta: dict) -> None:
        (meta["detector"] if task == "segment" else meta)[key] = value

    current = rewrite_metadata_file(current_heads[task], tmp_path / "model.safetensors",
                                    lambda meta: meta["heads"][task]["kwargs"].update({key: value}))  # fmt: skip
    first = rewrite_metadata_file(V1 / f"{task}.safetensors", tmp_path / "first.safetensors", first_format)
    for damaged in (current, first):
        with pytest.raises(BundleError) as caught:
            read_model_file(damaged)
        assert str(caught.value) == (f"{damaged}: heads.{task}.kwargs.{key}: expected a whole number from 1 to "
                                     f"{most}, found {value!r}")  # fmt: skip
    assert read_model_file(current_heads[task]).heads[task].kwargs[key] == 8  # the fixtures' own size loads


def test_the_trunk_of_a_detector_s_file_keeps_the_file_s_normalisation(tmp_path) -> None:
    """A detector resizes images itself (its preprocessing is no Preprocess): ``--trunk`` on its file takes the
    trunk's registry sizes with the mean and std the trunk was trained with."""
    from cnnapps.apps.modelfile import load_trunk
    from cnnapps.backbones import create_backbone

    def normalised(meta: dict) -> dict:
        return {**meta, "detector": {**meta["detector"], "image_mean": [0.25, 0.5, 0.75], "image_std": [0.2] * 3}}

    path = rewrite_metadata_file(V1 / "segment.safetensors", tmp_path / "segment.safetensors", normalised)
    assert read_model_file(path).preprocess["mean"] == [0.25, 0.5, 0.75]
    _, preprocess = load_trunk(path)
    registry = create_backbone("timm:test_convnext", weights=None).preprocess
    assert (preprocess.mean, preprocess.std) == ((0.25, 0.5, 0.75), (0.2, 0.2, 0.2)) != (registry.mean, registry.std)
    assert (preprocess.input_size, preprocess.resize) == (registry.input_size, registry.resize)


def _grey_file_with(path: Path, preprocess: dict) -> Path:
    from cnnapps.apps.classify.model import Classifier
    from cnnapps.apps.modelfile import save_model
    from cnnapps.backbones import create_backbone

    save_model(path, "classify", Classifier(create_backbone("lenet5"), 2), "lenet5", {}, preprocess)
    return path


def test_a_detector_s_normalisation_is_cut_to_a_grey_trunk_s_channel(tmp_path) -> None:
    from cnnapps.apps.modelfile import load_trunk

    rcnn = {"resize_mode": "rcnn", "min_size": 64, "max_size": 96, "mean": [0.2, 0.3, 0.4], "std": [0.6, 0.7, 0.8]}
    _, preprocess = load_trunk(_grey_file_with(tmp_path / "grey.safetensors", rcnn))
    assert (preprocess.input_size[0], preprocess.mean, preprocess.std) == (1, (0.2,), (0.6,))


@pytest.mark.parametrize("mean", [None, "a", ["x", 0.5, 0.5]])
def test_a_detector_s_file_without_a_usable_normalisation_is_a_one_line_error(tmp_path, mean) -> None:
    from cnnapps.apps.modelfile import load_trunk

    rcnn = {"resize_mode": "rcnn", "min_size": 64, "max_size": 96, "std": [0.5, 0.5, 0.5]}
    path = _grey_file_with(tmp_path / "grey.safetensors", {**rcnn, **({"mean": mean} if mean is not None else {})})
    with pytest.raises(BundleError, match=rf"^{tmp_path}/grey\.safetensors: preprocess: [^\n]*mean"):
        load_trunk(path)


def test_a_googlenet_trunk_with_torchvision_s_input_transform_keeps_it_in_its_file(tmp_path) -> None:
    """No tensor holds GoogLeNet's input transform: the file says so, or the rebuilt trunk computes otherwise."""
    import torch
    import torchvision

    from cnnapps.apps.classify.model import Classifier, load_classifier
    from cnnapps.apps.modelfile import save_model
    from cnnapps.backbones import create_backbone

    torch.manual_seed(0)
    weights = tmp_path / "googlenet.pth"
    torch.save(torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False).state_dict(), weights)
    trunk = create_backbone("googlenet", weights=str(weights))
    model = Classifier(trunk, 2).eval()
    save_model(tmp_path / "g.safetensors", "classify", model, "googlenet", {}, trunk.preprocess.to_dict())
    assert read_model_file(tmp_path / "g.safetensors").trunk["kwargs"] == {"transform_input": True}
    loaded = load_classifier(tmp_path / "g.safetensors").model
    assert "transform_input" in loaded.backbone.body["C2"]._modules
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_a_timm_trunk_that_rearranges_its_input_is_not_refused_for_its_first_convolution() -> None:
    """TResNet's first convolution reads 48 channels (space-to-depth of the 3 the file gives): the channel check asks
    only trunks whose first convolution reads the image."""
    from types import SimpleNamespace

    from cnnapps.apps.modelfile import _check_channels
    from cnnapps.backbones import create_backbone

    trunk = create_backbone("timm:tresnet_m", weights=None)
    model_file = SimpleNamespace(path="tresnet.safetensors", preprocess={"input_size": [3, 224, 224]})
    _check_channels(model_file, trunk)  # raised "3 channels, its trunk takes 48"


def test_a_model_file_that_runs_as_it_is_refuses_the_first_option_it_does_not_take_in_the_order_given(
    tmp_path: Path,
) -> None:
    """An engine it does not run on and another option it does not take: the error names the one given first."""
    from cnnapps.apps.semantic.model import create_semantic, save_semantic
    from cnnapps.backbones.preprocess import Preprocess
    from cnnapps.engines import EngineError
    from cnnapps.errors import CnnappsError

    path = tmp_path / "scenes.safetensors"
    model = create_semantic("fpn", "timm:test_resnet", class_names=["a", "b"], backbone_weights=None, head_channels=8)
    save_semantic(path, model.eval(), Preprocess(input_size=(3, 64, 64), resize=64))
    with pytest.raises(EngineError, match=rf"^{path}: engine='jit': semantic models run as they are "):
        cnnapps.load(path, engine="jit", workers=1)
    with pytest.raises(CnnappsError, match=rf"^{path}: workers=1 is not an option of semantic models ") as caught:
        cnnapps.load(path, workers=1, engine="jit")
    assert not isinstance(caught.value, EngineError)


def test_lite0_files_rebuild_the_padding_they_were_written_with(tmp_path, chelsea) -> None:
    """A Lite0 file records its padding; one written before cnnapps recorded it (no ``padding``) was trained in timm's
    symmetric padding and still answers in it, while a new file answers in TensorFlow's, as the bundled weights."""
    import torch

    from cnnapps.apps.classify.model import Classifier
    from cnnapps.apps.modelfile import save_model
    from cnnapps.backbones import create_backbone

    answers, paths = {}, {}
    for padding in ("same", "symmetric"):
        torch.manual_seed(0)
        backbone = create_backbone("efficientnet_lite0", weights="imagenet", padding=padding)
        model = Classifier(backbone, 3, class_names=["a", "b", "c"]).eval()
        with torch.no_grad():
            answers[padding] = model(torch.from_numpy(backbone.preprocess(chelsea))[None]).softmax(-1)[0].numpy()
        paths[padding] = save_model(tmp_path / f"{padding}.safetensors", "classify", model, "efficientnet_lite0", {},
                                    backbone.preprocess.to_dict())  # fmt: skip
        assert read_metadata(paths[padding])["trunk"]["kwargs"] == {"padding": padding}
    assert not np.allclose(answers["same"], answers["symmetric"], atol=1e-3)
    older = rewrite_metadata_file(paths["symmetric"], tmp_path / "older.safetensors",
                              lambda m: {**m, "trunk": {**m["trunk"], "kwargs": {}}})  # fmt: skip
    assert read_model_file(older).trunk["kwargs"] == {"padding": "symmetric"}
    for path, padding in ((paths["same"], "same"), (older, "symmetric")):
        (result,) = cnnapps.load(path, engine="eager", device="cpu").predict([chelsea], top_k=3)
        scores = {p["label"]: p["score"] for p in result.to_dict()["predictions"]}
        assert np.allclose([scores[c] for c in "abc"], answers[padding], atol=1e-5), padding


def test_the_same_trunk_tensors_in_another_padding_embed_under_another_fingerprint(tmp_path, rewrite_metadata) -> None:
    """An index built with a Lite0 file refuses the same tensors built in the other padding (frozen-trunk heads hold
    identical tensors before and after the padding was recorded); a file written before keeps its fingerprint."""
    import torch

    from cnnapps.apps.classify.model import Classifier
    from cnnapps.apps.modelfile import save_model
    from cnnapps.apps.retrieve.embedder import load_embedding_model
    from cnnapps.backbones import create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("efficientnet_lite0", padding="same")
    path = save_model(tmp_path / "same.safetensors", "classify", Classifier(backbone, 2), "efficientnet_lite0", {},
                      backbone.preprocess.to_dict())  # fmt: skip
    older = rewrite_metadata(path, tmp_path / "older.safetensors",
                             lambda m: {**m, "trunk": {**m["trunk"], "kwargs": {}}})  # fmt: skip
    same, before = load_embedding_model(path)[2], load_embedding_model(older)[2]
    assert same == before.replace(":avg", "+padding=same:avg") and "padding" not in before
