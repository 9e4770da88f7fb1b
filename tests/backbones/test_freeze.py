from __future__ import annotations

import pytest
import torch

from cnnapps.backbones import create_backbone


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_freeze_resnet_leaves_later_stages_and_head_trainable() -> None:
    backbone = create_backbone("resnet18")
    total = sum(p.numel() for p in backbone.parameters())
    backbone.freeze(2)  # stem + layer1 (C2) and layer2 (C3)
    expected = trainable(backbone.body["C4"]) + trainable(backbone.body["C5"]) + trainable(backbone.head)
    assert trainable(backbone) == expected
    assert trainable(backbone.body["C2"]) == trainable(backbone.body["C3"]) == 0
    assert 0 < trainable(backbone) < total
    backbone.unfreeze()
    assert trainable(backbone) == total


def test_frozen_batchnorm_keeps_its_statistics_in_train_mode() -> None:
    backbone = create_backbone("resnet18").freeze(1)
    backbone.train()
    assert not backbone.body["C2"].bn1.training
    assert backbone.body["C3"].layer2[0].bn1.training
    before = backbone.body["C2"].bn1.running_mean.clone()
    backbone(torch.randn(2, 3, 64, 64)).sum().backward()
    assert torch.equal(before, backbone.body["C2"].bn1.running_mean)
    assert backbone.body["C2"].conv1.weight.grad is None
    assert backbone.body["C5"].layer4[0].conv1.weight.grad is not None


def test_freeze_all_stages_leaves_only_the_head() -> None:
    backbone = create_backbone("vgg11").freeze(5)
    assert trainable(backbone) == trainable(backbone.head) > 0


def test_freeze_timm_backbone_by_stage_modules() -> None:
    backbone = create_backbone("timm:resnet18").freeze(2)  # C1 = stem, C2 = layer1
    model = backbone.model
    assert not any(p.requires_grad for p in model.conv1.parameters())
    assert not any(p.requires_grad for p in model.layer1.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())
    assert all(p.requires_grad for p in model.fc.parameters())
    assert backbone.frozen_stages == 2


def test_freezing_every_timm_stage_freezes_the_layers_after_the_last_stage_too() -> None:
    backbone = create_backbone("efficientnet_lite0", weights=None)
    backbone.freeze(len(backbone.stages)).train()
    model = backbone.model
    assert not any(p.requires_grad for p in [*model.conv_head.parameters(), *model.bn2.parameters()])
    assert all(p.requires_grad for p in model.classifier.parameters())  # the head still learns
    assert not model.bn2.training  # its running statistics are kept
    before = model.bn2.running_mean.clone()
    backbone.forward_features(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, model.bn2.running_mean)


def test_freeze_rejects_more_stages_than_the_net_has() -> None:
    with pytest.raises(ValueError, match=r"0\.\.4"):
        create_backbone("resnet18").freeze(5)


def test_freezing_more_stages_than_there_are_is_a_setting_s_one_line_error() -> None:
    from cnnapps.backbones.features import FreezeError
    from cnnapps.errors import CnnappsError

    with pytest.raises(FreezeError, match=r"^freeze: lenet5 has 3 stages; freeze takes 0\.\.3, not 9$") as caught:
        create_backbone("lenet5").freeze(9)
    assert isinstance(caught.value, CnnappsError) and isinstance(caught.value, ValueError)  # exit 2, as before
