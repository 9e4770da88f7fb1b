"""``--class`` on a model whose classes are numbers (folder classes '10', '20', '30'): a name wins over an index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnnapps.errors import CnnappsError

LOOKS_INSIDE = "visualize looks inside classifiers (a classify model file, or a backbone `cnnapps models` lists)"


@pytest.fixture(scope="module")
def numbered(tmp_path_factory) -> Path:
    import torch

    from cnnapps.apps.classify.model import Classifier
    from cnnapps.apps.modelfile import save_model
    from cnnapps.backbones import create_backbone

    torch.manual_seed(0)
    trunk = create_backbone("lenet5", weights=None, in_channels=3)
    model = Classifier(trunk, 3, class_names=["10", "20", "30"])
    path = tmp_path_factory.mktemp("numbered") / "num.safetensors"
    return save_model(path, "classify", model, "lenet5", {"in_channels": 3}, trunk.preprocess.to_dict())


def test_a_class_name_of_digits_wins_over_an_index(numbered: Path) -> None:
    from cnnapps.apps.classify.model import load_classifier
    from cnnapps.apps.classify.visualize import grad_cam, resolve_class

    loaded = load_classifier(numbered)
    assert [resolve_class(loaded, name) for name in ("10", "20", "30")] == [0, 1, 2]
    assert resolve_class(loaded, "1") == 1  # no class is named "1": an index
    assert resolve_class(loaded, 2) == 2  # an int (Python API) is always an index
    with pytest.raises(CnnappsError, match=r"^--class 3: not a class of this model, nor an index 0\.\.2$"):
        resolve_class(loaded, "3")
    with pytest.raises(CnnappsError, match=r"^--class 3: not a class index of this model \(0\.\.2\)$"):
        resolve_class(loaded, 3)
    cam = grad_cam(loaded, np.full((40, 40, 3), 90, np.uint8), "20")
    assert (cam.label, cam.class_index) == ("20", 1)


def test_gradcam_command_draws_the_class_named(run_cli, numbered: Path, tmp_path: Path, chelsea) -> None:
    from cnnapps.datasets.io import write_image

    image = write_image(tmp_path / "cat.png", chelsea)
    code, out, err = run_cli("visualize", "gradcam", image, "--model", numbered, "--class", "20",
                             "--out", tmp_path / "x.png")  # fmt: skip
    assert code == 0, err
    assert out.startswith(f"{image}: Grad-CAM for 20 (class 1, p=")
    code, out, err = run_cli("visualize", "gradcam", image, "--model", numbered, "--class", "30",
                             "--out", tmp_path / "y.png")  # fmt: skip
    assert code == 0 and out.startswith(f"{image}: Grad-CAM for 30 (class 2, p=")


def test_only_classifiers_are_looked_inside() -> None:
    """Another task's named model, a backbone with no weights, an exported graph: each a one-line error saying what
    to give ``--model`` instead (not "unknown backbone", nor the Python API's ``weights=None``)."""
    from cnnapps.apps.classify.visualize import classifier_to_look_inside

    for name, task in (("fasterrcnn_resnet50_fpn", "detect"), ("maskrcnn_resnet50_fpn", "segment"),
                       ("keypointrcnn_resnet50_fpn", "pose"), ("deeplabv3_resnet50", "semantic")):  # fmt: skip
        with pytest.raises(CnnappsError) as caught:
            classifier_to_look_inside(name)
        assert str(caught.value) == f"--model {name}: a {task} model, not a classifier; {LOOKS_INSIDE}"
    with pytest.raises(CnnappsError) as caught:
        classifier_to_look_inside("lenet5")
    nothing = "no published weights, so nothing learned to look at"
    trained = "give --model a model file trained from it (`cnnapps train classify --backbone lenet5`)"
    assert str(caught.value) == f"--model lenet5: {nothing}; {trained}"
    with pytest.raises(CnnappsError, match=r"^--model m\.onnx: an exported ONNX graph has no layers to look inside"):
        classifier_to_look_inside("m.onnx")
    with pytest.raises(CnnappsError, match=r"^resnet05: unknown backbone; did you mean resnet50"):
        classifier_to_look_inside("resnet05")


def test_looking_inside_a_model_file_or_the_default(numbered: Path) -> None:
    from cnnapps.apps.classify.visualize import classifier_to_look_inside

    assert classifier_to_look_inside(numbered).class_names == ["10", "20", "30"]
    assert classifier_to_look_inside(None).spec == "efficientnet_lite0"


@pytest.mark.parametrize("command", ["filters", "gradcam", "activations", "patches"])
def test_visualize_commands_refuse_what_is_no_classifier(run_cli, command: str, tmp_path: Path, chelsea) -> None:
    from cnnapps.datasets.io import write_image

    image = [write_image(tmp_path / "cat.png", chelsea)] if command != "filters" else []
    out = tmp_path / "x.png"
    code, _, err = run_cli("visualize", command, *image, "--model", "fasterrcnn_resnet50_fpn", "--out", out)
    detect = "error: --model fasterrcnn_resnet50_fpn: a detect model, not a classifier"
    assert code == 2 and err.strip() == f"{detect}; {LOOKS_INSIDE}"
    code, _, err = run_cli("visualize", command, *image, "--model", "lenet5", "--out", out)
    assert code == 2 and "give --model a model file trained from it" in err and "weights=None" not in err
    assert not out.exists()
