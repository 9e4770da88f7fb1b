"""Stage strides of dilated ResNets (nominal for detectors, true for semantic segmentation), GoogLeNet's input
transform whatever file its weights come from, and freezing after a whole-trunk freeze."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnapps.backbones import create_backbone


def measured_strides(backbone, size: int) -> list[int]:
    """Input side over each stage map's side."""
    channels = backbone.preprocess.input_size[0]
    with torch.no_grad():
        maps = backbone.eval().forward_stages(torch.zeros(1, channels, size, size))
    return [size // maps[s.name].shape[-1] for s in backbone.stages]


@pytest.mark.parametrize(
    ("flags", "strides"),
    [([False, True, True], [4, 8, 8, 8]), ([False, False, True], [4, 8, 16, 16]), (None, [4, 8, 16, 32])],
)
def test_a_dilated_resnet_keeps_nominal_strides_and_semantic_reads_the_true_ones(flags, strides) -> None:
    """Detectors size their anchors from the stage strides: a dilated trunk keeps 4, 8, 16, 32 (files trained on one
    rebuild as trained); semantic segmentation, which reads the maps' real scale, corrects them."""
    from cnnapps.apps.semantic.model import true_stages

    kwargs = {"replace_stride_with_dilation": flags} if flags else {}
    backbone = create_backbone("resnet50", weights=None, **kwargs)
    assert [s.stride for s in backbone.stages] == [4, 8, 16, 32]
    assert [s.stride for s in true_stages(backbone, kwargs).stages] == strides == measured_strides(backbone, 128)


def test_googlenet_from_a_local_torchvision_file_transforms_its_input_as_from_imagenet(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    original = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / "googlenet.pth"
    torch.save(original.state_dict(), path)
    reference = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False, transform_input=True)
    reference.load_state_dict({k: v for k, v in original.state_dict().items() if not k.startswith("aux")})
    backbone = create_backbone("googlenet", weights=str(path)).eval()
    assert "transform_input" in backbone.body["C2"]._modules
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(backbone(x), reference.eval()(x), atol=1e-5)


def test_googlenet_without_weights_takes_input_as_it_comes() -> None:
    assert "transform_input" not in create_backbone("googlenet", weights=None).body["C2"]._modules


def test_freezing_stages_after_freezing_everything_lets_the_rest_train() -> None:
    backbone = create_backbone("resnet18").freeze_all()
    backbone.freeze(1).train()
    assert not backbone.frozen_all
    assert backbone.body["C5"].layer4[0].bn1.training and backbone.body["C5"].layer4[0].conv1.weight.requires_grad
    assert not backbone.body["C2"].bn1.training  # the frozen stage keeps its statistics
    before = backbone.body["C5"].layer4[0].bn1.running_mean.clone()
    backbone(torch.randn(2, 3, 64, 64))
    assert not torch.equal(before, backbone.body["C5"].layer4[0].bn1.running_mean)


def test_freezing_every_stage_after_freezing_everything_keeps_the_trunk_as_it_is() -> None:
    """A shared trunk (``--trunk``) frozen whole stays whole: a head that freezes all its stages again (a shared
    detector, a captioner) leaves every layer in eval mode."""
    backbone = create_backbone("efficientnet_lite0", weights=None).freeze_all()
    backbone.freeze(len(backbone.stages)).train()
    assert backbone.frozen_all and backbone.training
    assert not any(m.training for m in backbone.modules() if m is not backbone)
