from __future__ import annotations

import pytest
import torch

from cnnapps.backbones import BACKBONES, create_backbone, list_backbones
from cnnapps.backbones.features import Backbone
from cnnapps.errors import UnknownModelError

TORCHVISION = sorted(s.name for s in list_backbones() if s.source == "torchvision")
SEED = ["lenet5", "alexnet2012"]


def check_stages(backbone: Backbone, size: int, tolerance: float = 1.5) -> None:
    """Every stage map has its declared channels and a spatial size of about input/stride."""
    channels = backbone.preprocess.input_size[0]
    x = torch.randn(2, channels, size, size)
    backbone.eval()
    with torch.no_grad():
        maps = backbone.forward_stages(x)
        embedding = backbone.embed(x)
        out = backbone(x)
    assert list(maps) == [s.name for s in backbone.stages]
    strides = [s.stride for s in backbone.stages]
    assert strides == sorted(strides) and all(s & (s - 1) == 0 for s in strides)  # growing powers of two
    for info in backbone.stages:
        fmap = maps[info.name]
        assert fmap.shape[:2] == (2, info.channels), info
        assert abs(fmap.shape[-1] - size / info.stride) < tolerance, (info, fmap.shape)
    assert embedding.shape == (2, backbone.embedding_dim)
    assert out.shape == (2, backbone.num_classes)


def test_registry_lists_the_lecture_families() -> None:
    names = set(BACKBONES)
    for name in ["vgg11", "vgg13_bn", "vgg16", "vgg19_bn", "resnet18", "resnet50", "resnet152", "alexnet", "googlenet"]:
        assert name in names
    assert {"lenet5", "alexnet2012", "efficientnet_lite0"} <= names
    assert len(TORCHVISION) == 8 + 5 + 2


@pytest.fixture()
def no_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights left as allocated: a stage layout does not depend on their values, and drawing random values for
    VGG's 120 M classifier weights took most of each of these tests (about 2 s)."""
    for name in ("normal_", "uniform_", "constant_", "zeros_", "ones_", "kaiming_normal_", "kaiming_uniform_",
                 "xavier_uniform_", "trunc_normal_"):  # fmt: skip
        monkeypatch.setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_backbone_stages(name: str, no_init: None) -> None:
    check_stages(create_backbone(name, weights=None), 96)


@pytest.mark.parametrize("name", SEED)
def test_seed_backbone_stages(name: str) -> None:
    backbone = create_backbone(name)
    # LeNet-5's unpadded 5x5 convolutions trim 4 pixels per stage on top of the stride.
    check_stages(backbone, backbone.preprocess.input_size[1], tolerance=3.5 if name == "lenet5" else 1.5)


def test_timm_backbone_stages_follow_feature_info() -> None:
    backbone = create_backbone("timm:resnet18")
    assert [(s.channels, s.stride) for s in backbone.stages] == [(64, 2), (64, 4), (128, 8), (256, 16), (512, 32)]
    check_stages(backbone, 64)


def test_stage_channels_match_the_last_map() -> None:
    backbone = create_backbone("resnet50")
    assert backbone.stages[-1].channels == backbone.embedding_dim == 2048


def test_lenet5_is_the_1998_layout() -> None:
    backbone = create_backbone("lenet5")
    shapes = {}
    x = torch.zeros(1, 1, 32, 32)
    for name, module in backbone.body["C1"].named_children():
        x = module(x)
        shapes[name] = tuple(x.shape[1:])
    assert shapes["conv1"] == (6, 28, 28) and shapes["pool1"] == (6, 14, 14)
    assert sum(p.numel() for p in backbone.parameters()) == 61_706


def test_alexnet2012_is_the_paper_layout() -> None:
    backbone = create_backbone("alexnet2012")
    conv1 = backbone.body["C3"].conv1
    assert (conv1.out_channels, conv1.kernel_size, conv1.stride) == (96, (11, 11), (4, 4))
    assert isinstance(backbone.body["C3"].norm1, torch.nn.LocalResponseNorm)
    pool = backbone.body["C3"].pool1
    assert (pool.kernel_size, pool.stride) == (3, 2)  # overlapping pooling
    assert backbone.preprocess.input_size == (3, 227, 227)
    fcs = [m.out_features for m in backbone.head.modules() if isinstance(m, torch.nn.Linear)]
    assert fcs == [4096, 4096, 1000]
    drops = [m.p for m in backbone.head.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == [0.5, 0.5]


def test_unknown_names_get_a_hint() -> None:
    with pytest.raises(UnknownModelError, match="did you mean resnet50"):
        create_backbone("resnet05")
    with pytest.raises(UnknownModelError, match="not a timm model"):
        create_backbone("timm:no_such_net_anywhere")


def test_num_classes_passes_through_to_the_seed_nets() -> None:
    assert create_backbone("lenet5", num_classes=3).num_classes == 3
