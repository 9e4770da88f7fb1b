"""Semantic heads on registry backbones: torchvision checkpoints give bit-identical outputs, every head trains on
small backbones, dilation keeps the stage information true, model files round-trip, offline errors name the file."""

from __future__ import annotations

import pytest
import torch

from cnnapps.apps.semantic.model import SemanticError, create_semantic, load_semantic, save_semantic
from cnnapps.backbones.preprocess import Preprocess


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial batch-norm statistics and scales, so that a misplaced tensor shows."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def references() -> dict[str, torch.nn.Module]:
    """torchvision's models as its builders make them for the VOC-label checkpoints (aux heads included), random
    weights; FCN and DeepLabV3 on one ResNet-50 (their builders make the same trunk)."""
    from torchvision.models import segmentation
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

    torch.manual_seed(0)
    fcn = _randomised(segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True))
    deeplab = _randomised(DeepLabV3(fcn.backbone, DeepLabHead(2048, 21), fcn.aux_classifier))
    lraspp = _randomised(segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21))
    return {"fcn_resnet50": fcn, "deeplabv3_resnet50": deeplab, "lraspp_mobilenet_v3_large": lraspp}


@pytest.mark.parametrize(
    ("name", "head", "backbone"),
    [("fcn_resnet50", "fcn", "resnet50"), ("deeplabv3_resnet50", "deeplabv3", "resnet50"),
     ("lraspp_mobilenet_v3_large", "lraspp", "mobilenet_v3_large")],
)  # fmt: skip
def test_torchvision_checkpoint_gives_identical_outputs(references, name, head, backbone, tmp_path):
    reference = references[name]
    torch.save(reference.state_dict(), tmp_path / f"{name}.pth")
    ours = create_semantic(head, backbone, weights=str(tmp_path / f"{name}.pth")).eval()
    image = torch.rand(1, 3, 45, 58, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(image)["out"], ours(image)
    assert expected.shape == got.shape == (1, 21, 45, 58)
    assert torch.equal(expected, got)
    if backbone == "resnet50":  # dilated to output stride 8, and its stages say so
        assert [(s.name, s.stride) for s in ours.backbone.stages] == [("C2", 4), ("C3", 8), ("C4", 8), ("C5", 8)]
        assert ours.spec.aux_stage == "C4" and ours.spec.atrous_rates == [12, 24, 36]


def test_a_checkpoint_for_another_model_is_refused(references, tmp_path):
    torch.save(references["lraspp_mobilenet_v3_large"].state_dict(), tmp_path / "lraspp.pth")
    with pytest.raises(SemanticError, match=r"lraspp\.pth: its backbone has \d+ tensors, resnet50's \d+"):
        create_semantic("lraspp", "resnet50", weights=str(tmp_path / "lraspp.pth"))


@pytest.mark.parametrize("head", ["fcn", "deeplabv3", "lraspp", "fpn"])
@pytest.mark.parametrize(("backbone", "kwargs"), [("lenet5", {"in_channels": 3}), ("timm:test_resnet", {})])
def test_every_head_trains_on_small_backbones(head, backbone, kwargs):
    model = create_semantic(head, backbone, class_names=["a", "b", "c"], backbone_weights=None, aux_loss=True,
                            head_channels=16, **kwargs)  # fmt: skip
    images = torch.rand(2, 3, 40, 52)
    target = torch.randint(0, 3, (2, 40, 52))
    target[:, :5] = 255
    out = model.train().forward_train(images)
    assert out["out"].shape == out["aux"].shape == (2, 3, 40, 52)
    loss = torch.nn.functional.cross_entropy(out["out"], target, ignore_index=255)
    loss.backward()
    assert all(p.grad is not None for p in model.classifier.parameters() if p.requires_grad)
    assert model.eval()(images).shape == (2, 3, 40, 52)


def test_output_stride_dilates_and_stage_strides_stay_true():
    with pytest.raises(SemanticError, match="resnet18: torchvision's basic-block ResNets cannot be dilated"):
        create_semantic("deeplabv3", "resnet18", class_names=["a", "b"], backbone_weights=None, output_stride=16)
    resnet = create_semantic("deeplabv3", "resnet50", class_names=["a", "b"], backbone_weights=None, output_stride=16)
    assert [s.stride for s in resnet.backbone.stages] == [4, 8, 16, 16]
    assert resnet.spec.atrous_rates == [6, 12, 18] and resnet.trunk_kwargs == {
        "replace_stride_with_dilation": [False, False, True]}  # fmt: skip
    with torch.no_grad():
        maps = resnet.backbone.forward_stages(torch.rand(1, 3, 64, 64))
    assert [64 // m.shape[-1] for m in maps.values()] == [s.stride for s in resnet.backbone.stages]
    timm = create_semantic("fpn", "timm:test_resnet", class_names=["a", "b"], backbone_weights=None, output_stride=8)
    assert [s.stride for s in timm.backbone.stages][-3:] == [8, 8, 8] and timm.trunk_kwargs == {"output_stride": 8}
    with pytest.raises(SemanticError, match="vgg11: output_stride 16 needs dilated stages"):
        create_semantic("deeplabv3", "vgg11", class_names=["a"], backbone_weights=None, output_stride=16)


def test_model_file_round_trip_keeps_outputs_and_dilation(tmp_path):
    model = create_semantic("deeplabv3", "timm:test_resnet", class_names=["sky", "dot"], backbone_weights=None,
                            output_stride=8, head_channels=32, colours=[[1, 2, 3], [4, 5, 6]]).eval()  # fmt: skip
    fit = Preprocess(input_size=(3, 64, 64), resize=64, resize_mode="squash")
    save_semantic(tmp_path / "m.safetensors", model, fit, {"val_miou": 0.5})
    loaded, preprocess = load_semantic(tmp_path / "m.safetensors")
    assert preprocess == fit and loaded.class_names == ["sky", "dot"] and loaded.spec.colours == [[1, 2, 3], [4, 5, 6]]
    assert [s.stride for s in loaded.backbone.stages] == [2, 4, 8, 8, 8]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_compose_refuses_the_same_trunk_weights_built_otherwise(tmp_path):
    """A dilated trunk holds the same tensors as the plain one: joined under one build, the file never loaded."""
    from cnnapps.apps.modelfile import compose
    from cnnapps.errors import CnnappsError

    fit = Preprocess(input_size=(3, 64, 64), resize=64, resize_mode="squash")
    for name, stride in (("plain", None), ("dilated", 8)):
        torch.manual_seed(0)
        model = create_semantic("fpn", "timm:test_resnet", class_names=["a", "b"], backbone_weights=None,
                                output_stride=stride, head_channels=16)  # fmt: skip
        save_semantic(tmp_path / f"{name}.safetensors", model, fit)
    with pytest.raises(CnnappsError, match=r"dilated.safetensors: its trunk .*output_stride.* is built otherwise"):
        compose([tmp_path / "plain.safetensors", tmp_path / "dilated.safetensors"], tmp_path / "both.safetensors")
    assert not (tmp_path / "both.safetensors").exists()


def test_torchvision_model_names_offline_name_the_file_url_and_place():
    from cnnapps.errors import WeightsUnavailableError

    name = r"deeplabv3_resnet50_coco-cd0a2569\.pth"
    pattern = rf"{name}: cannot download https://download\.pytorch\.org/.*; place the file at .*hub/checkpoints/{name}"
    with pytest.raises(WeightsUnavailableError, match=pattern):
        load_semantic("deeplabv3_resnet50")


def test_a_real_photo_runs_end_to_end_with_a_torchvision_checkpoint_from_the_hub_cache(references):
    """With the checkpoint's file in the hub cache (here: the random-weight reference saved under its name), the
    torchvision name answers on scikit-image's astronaut exactly as torchvision's own pipeline does."""
    import numpy as np
    import torch.nn.functional as F
    from skimage import data
    from torchvision.transforms._presets import SemanticSegmentation

    import cnnapps
    from cnnapps.apps.semantic.zoo import weights_url
    from cnnapps.backbones.weights import hub_checkpoint_path

    reference = references["lraspp_mobilenet_v3_large"]
    url = weights_url("lraspp_mobilenet_v3_large")
    path = hub_checkpoint_path(url.rsplit("/", 1)[-1])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(), path)
    photo = data.astronaut()[::2, ::2].copy()  # 256 x 256; both resize its shorter side to 520
    (result,) = cnnapps.load("lraspp_mobilenet_v3_large", device="cpu").predict([photo])
    assert result.labels.shape == (256, 256) and result.class_names[:2] == ["__background__", "aeroplane"]
    assert sum(a.pixels for a in result.areas()) == 256 * 256
    with torch.no_grad():
        pixels = torch.from_numpy(photo).permute(2, 0, 1)  # torchvision's preset on the decoded image
        logits = reference(SemanticSegmentation(resize_size=520)(pixels)[None])["out"]
        expected = F.interpolate(logits, size=(256, 256), mode="bilinear", align_corners=False)[0].argmax(0)
    assert np.array_equal(result.labels, expected.numpy())


@pytest.mark.parametrize("head", ["fcn", "deeplabv3", "lraspp"])
def test_onnx_export_of_every_head_answers_like_pytorch_at_any_size(head, tmp_path):
    from cnnapps.export import export_model
    from cnnapps.exported import OnnxRunner, read_onnx_metadata

    model = create_semantic(head, "timm:test_resnet", class_names=["a", "b", "c"], backbone_weights=None,
                            head_channels=16, output_stride=16).eval()  # fmt: skip
    save_semantic(
        tmp_path / "m.safetensors", model, Preprocess(input_size=(3, 64, 64), resize=64, resize_mode="squash")
    )
    written = export_model(tmp_path / "m.safetensors", "onnx", tmp_path / "m.onnx")
    assert written["task"] == "semantic" and read_onnx_metadata(tmp_path / "m.onnx")["class_names"] == ["a", "b", "c"]
    runner = OnnxRunner(tmp_path / "m.onnx")
    for size in ((64, 64), (72, 96)):
        x = torch.rand(2, 3, *size)
        with torch.no_grad():
            expected = model(x)
        assert float((runner(x) - expected).abs().max()) < 1e-4
