from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cnnapps.backbones import create_backbone
from cnnapps.backbones import weights as weights_mod
from cnnapps.backbones.timm_nets import map_lukemelas_keys, pretrained_source
from cnnapps.errors import WeightsError, WeightsIntegrityError, WeightsUnavailableError

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet_lite0", weights="imagenet").eval()


def test_bundled_efficientnet_lite0_sees_a_cat(lite0, chelsea) -> None:
    x = torch.from_numpy(lite0.preprocess(chelsea))[None]
    with torch.no_grad():
        probs = lite0(x).softmax(-1)[0]
    top1 = int(probs.argmax())
    assert top1 in CAT_CLASSES, lite0.class_names[top1]
    assert probs[list(CAT_CLASSES)].sum() > 0.8
    assert lite0.class_names[top1] in {"tabby", "tiger cat", "Egyptian cat"}
    assert lite0.weights.startswith("bundled")


def test_bundled_efficientnet_lite0_answers_as_its_weights_own_network(lite0, chelsea) -> None:
    """The bundled weights were trained in TensorFlow (SAME padding, batch-norm epsilon 1e-3): cnnapps's Lite0 gives
    the logits of their own PyTorch port (``efficientnet_lite_pytorch``), where timm's symmetric ``efficientnet_lite0``
    differs by whole logits (it took chelsea for a tiger cat at 0.37 where the port says Egyptian cat 0.38)."""
    from efficientnet_lite_pytorch import EfficientNet

    bundled = str(weights_mod.BUNDLED["efficientnet_lite0"].path())
    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=bundled).eval()
    symmetric = create_backbone("efficientnet_lite0", weights="imagenet", padding="symmetric").eval()
    torch.manual_seed(0)
    x = torch.cat([torch.from_numpy(lite0.preprocess(chelsea))[None], torch.randn(2, 3, 224, 224) * 0.5])
    with torch.no_grad():
        expected, ours, theirs = reference(x), lite0(x), symmetric(x)
    assert torch.allclose(ours, expected, atol=1e-4), float((ours - expected).abs().max())
    assert float((theirs - expected).abs().max()) > 1.0
    assert lite0.class_names[int(ours[0].argmax())] == "Egyptian cat"
    assert lite0.settings == {"padding": "same"} and symmetric.settings == {"padding": "symmetric"}


def test_lite0_padding_is_one_of_two(chelsea) -> None:
    with pytest.raises(ValueError, match="padding must be one of same, symmetric, not 'valid'"):
        create_backbone("efficientnet_lite0", padding="valid")
    assert create_backbone("efficientnet_lite0").settings == {"padding": "same"}


def test_bundled_file_is_checked_against_its_sha256(monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = weights_mod.BUNDLED["efficientnet_lite0"]
    bad = weights_mod.BundledWeights(bundled.package, bundled.relpath, "0" * 64)
    monkeypatch.setitem(weights_mod.BUNDLED, "efficientnet_lite0", bad)
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        create_backbone("efficientnet_lite0", weights="imagenet")


def test_lukemelas_mapping_checks_shapes() -> None:
    target = {"a.weight": torch.zeros(3, 3), "b.weight": torch.zeros(4)}
    ok = map_lukemelas_keys({"_x.weight": torch.ones(3, 3), "_y.weight": torch.ones(4)}, target, "f.pth")
    assert list(ok) == ["a.weight", "b.weight"] and ok["a.weight"].sum() == 9
    with pytest.raises(WeightsError, match="does not fit"):
        map_lukemelas_keys({"_x.weight": torch.ones(3, 3), "_y.weight": torch.ones(5)}, target, "f.pth")


def test_offline_without_cache_names_file_url_and_destination() -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        create_backbone("resnet18", weights="imagenet")
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    expected_dest = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(expected_dest) in message
    assert "\n" not in message


def test_timm_offline_error_names_the_hub_file() -> None:
    with pytest.raises(
        WeightsUnavailableError, match=r"huggingface\.co/timm/resnet18\.a1_in1k/resolve/main/model\.safetensors"
    ):
        create_backbone("timm:resnet18", weights="imagenet")


def test_cached_torchvision_file_is_used_with_its_metadata() -> None:
    reference = create_backbone("resnet18")
    import torchvision

    tv = torchvision.models.resnet18()
    dest = weights_mod.hub_checkpoint_path("resnet18-f37072fd.pth")
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tv.state_dict(), dest)
    loaded = create_backbone("resnet18", weights="imagenet")
    assert torch.equal(loaded.body["C2"].conv1.weight, tv.conv1.weight)
    assert torch.equal(loaded.head.fc.weight, tv.fc.weight)
    assert not torch.equal(loaded.head.fc.weight, reference.head.fc.weight)
    assert loaded.class_names[281] == "tabby"
    assert loaded.preprocess.resize == 256 and loaded.preprocess.input_size == (3, 224, 224)
    assert weights_mod.status_of("resnet18").state == "cached"
    assert weights_mod.status_of("resnet34").state == "downloadable"


def test_cached_timm_file_is_used() -> None:
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("resnet18")
    _url, filename = pretrained_source("resnet18")
    dest = weights_mod.hub_checkpoint_path(filename)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(dest))
    loaded = create_backbone("timm:resnet18", weights="imagenet")
    assert torch.equal(loaded.model.conv1.weight, model.conv1.weight)
    assert loaded.preprocess.interpolation == "bicubic"
    assert loaded.class_names is not None and len(loaded.class_names) == 1000


def test_local_files_load_in_both_formats(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = create_backbone("lenet5")
    state = {k: v.clone() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pth")
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pth"):
        loaded = create_backbone("lenet5", weights=str(path))
        assert torch.equal(loaded.head.fc2.weight, source.head.fc2.weight)
        assert loaded.weights == str(path)


def test_torchvision_checkpoint_loads_from_a_local_path(tmp_path: Path) -> None:
    import torchvision

    tv = torchvision.models.vgg11()
    torch.save(tv.state_dict(), tmp_path / "vgg.pth")
    loaded = create_backbone("vgg11", weights=tmp_path / "vgg.pth")
    assert torch.equal(loaded.body["C1"].conv1_1.weight, tv.features[0].weight)
    assert torch.equal(loaded.head.fc8.weight, tv.classifier[6].weight)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"conv": Payload()}, path)
    with pytest.raises(WeightsError, match="cannot load weights safely"):
        create_backbone("lenet5", weights=str(path))


def test_weights_for_another_model_are_refused_with_the_mismatch(tmp_path: Path) -> None:
    torch.save(create_backbone("lenet5").state_dict(), tmp_path / "lenet.pth")
    with pytest.raises(WeightsError, match=r"lenet\.pth: weights do not fit this model: .*missing"):
        create_backbone("alexnet2012", weights=str(tmp_path / "lenet.pth"))


def test_missing_local_file_and_unknown_weights_name(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        create_backbone("resnet18", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsError, match="unknown weights"):
        create_backbone("resnet18", weights="IMAGENET9K_V9")
    said = r"no published weights to predict with; train it from scratch \(--weights none, weights=None in Python\)"
    with pytest.raises(WeightsError, match=said):
        create_backbone("lenet5", weights="imagenet")


def test_statuses() -> None:
    assert weights_mod.status_of("efficientnet_lite0").state == "bundled"
    assert weights_mod.status_of("lenet5").state == "none"
    assert weights_mod.status_of("timm:resnet18").url.startswith("https://huggingface.co/")


@pytest.mark.parametrize("size", [224, 225, 97])
def test_lite0_padding_made_static_answers_the_same_at_its_size(lite0, size: int) -> None:
    """For a graph of one input size (classify, embed, a trunk's compiled pass, exports of one size), TensorFlow's
    padding becomes plain convolutions (it halved Lite0's TorchScript speed): the same answers, bit for bit here;
    the model itself keeps its padding for any size."""
    from timm.layers.conv2d_same import Conv2dSame

    from cnnapps.backbones.timm_nets import static_same_padding

    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    fixed = static_same_padding(lite0, x)
    assert not any(isinstance(m, Conv2dSame) for m in fixed.modules())
    assert sum(isinstance(m, Conv2dSame) for m in lite0.modules()) == 5  # untouched
    with torch.no_grad():
        expected, got = lite0.forward_stages(x), fixed.forward_stages(x)
        assert all(torch.allclose(got[k], expected[k], atol=1e-5) for k in expected)
        assert torch.allclose(fixed(x), lite0(x), atol=1e-5)
    resnet = create_backbone("resnet18")
    assert static_same_padding(resnet, x) is resnet  # nothing to change: the same module, no copy


def test_graphs_of_one_size_have_no_pad_before_a_convolution(tmp_path) -> None:
    """The classifier's ONNX graph (one input size) convolves with the padding in the convolution (onnxruntime ran
    the padded graph at 0.7x); graphs of any size (detectors) keep the padding computed from their input."""
    import onnx

    from cnnapps.export import export_model

    export_model("efficientnet_lite0", "onnx", tmp_path / "lite0.onnx")
    ops = [n.op_type for n in onnx.load(tmp_path / "lite0.onnx").graph.node]
    assert "Pad" not in ops and ops.count("Conv") == 49


def test_a_torchscript_export_of_lite0_answers_at_any_size(lite0, tmp_path) -> None:
    """TorchScript files take any input size (nothing checks it), so they keep the padding computed from the input:
    with it made static for 224 px, a 225 px input was off by 0.06 in probability, silently."""
    from cnnapps.export import export_model

    export_model("efficientnet_lite0", "torchscript", tmp_path / "lite0.pt")
    graph = torch.jit.load(str(tmp_path / "lite0.pt"))
    x = torch.randn(1, 3, 225, 225, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(graph(x).softmax(-1), lite0(x).softmax(-1), atol=1e-5)


def test_a_weights_file_of_another_suffix_here_is_read_as_a_file(tmp_path: Path, monkeypatch) -> None:
    """raw.pkl in the current folder was told "unknown weights 'raw.pkl' (use imagenet, none or a file path)"."""
    monkeypatch.chdir(tmp_path)
    torch.save(create_backbone("lenet5").state_dict(), tmp_path / "raw.pkl")
    assert weights_mod.as_local_file("raw.pkl") == Path("raw.pkl")
    assert weights_mod.as_local_file("imagenet") is None  # an alias stays one, whatever lies here
    trunk = create_backbone("lenet5", weights="raw.pkl")  # read with torch's weights-only loader, as a .pth is
    assert sum(p.numel() for p in trunk.parameters()) > 0
