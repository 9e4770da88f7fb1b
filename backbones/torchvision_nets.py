"""torchvision's VGG, ResNet, AlexNet and GoogLeNet split into stages behind :class:`Backbone`.

Weights load into torchvision's own model first (so any torchvision checkpoint fits),
then its modules are regrouped into stages; nothing is copied or re-implemented.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from cnnapps.backbones.features import SequentialBackbone, StageInfo, stage_name
from cnnapps.backbones.preprocess import Preprocess
from cnnapps.backbones.registry import WeightsArg, get_spec
from cnnapps.backbones.weights import (
    as_local_file,
    cached_download,
    is_pretrained_alias,
    load_into,
    load_state_dict_file,
)
from cnnapps.errors import WeightsError


def default_weights_url(name: str) -> str:
    import torchvision

    return torchvision.models.get_model_weights(name).DEFAULT.url


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names in index order (from torchvision's metadata; no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def build(name: str, weights: WeightsArg = None, **kwargs: Any) -> SequentialBackbone:
    """Build a torchvision backbone; ``kwargs`` go to torchvision's constructor."""
    import torchvision

    ctor = torchvision.models.get_model_builder(name)
    enum = _resolve_enum(name, weights)
    local = as_local_file(weights) if enum is None else None
    if weights is not None and enum is None and local is None:
        raise WeightsError(f"{name}: unknown weights {weights!r} (use imagenet, none, an enum name or a file path)")

    if name == "googlenet":
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", weights is None)
        kwargs.setdefault("transform_input", weights is not None)  # torchvision's weights expect it, from any file
    model = ctor(weights=None, **kwargs)

    preprocess, class_names, description = Preprocess(), None, "random init"
    if enum is not None:
        path = cached_download(enum.url)
        state = load_state_dict_file(path)
        load_into(model, _drop_aux(state), f"{path}")
        preprocess = _preprocess_from_enum(enum)
        class_names = list(enum.meta["categories"])
        description = f"torchvision {type(enum).__name__}.{enum.name}"
    elif local is not None:
        load_into(model, _drop_aux(load_state_dict_file(local)), str(local))
        description = str(local)

    split = {"vgg": _split_vgg_like, "alexnet": _split_vgg_like, "resnet": _split_resnet, "googlenet": _split_googlenet}
    stages, head = split[get_spec(name).family](model)
    num_classes = _num_classes(head)
    return SequentialBackbone(name, stages, head, num_classes, preprocess, class_names, description)


def _resolve_enum(name: str, weights: WeightsArg) -> Any:
    import torchvision

    if weights is None or as_local_file(weights) is not None:
        return None
    enum_cls = torchvision.models.get_model_weights(name)
    if is_pretrained_alias(weights):
        return enum_cls.DEFAULT
    try:
        return enum_cls[str(weights)]
    except KeyError:
        return None


def _preprocess_from_enum(enum: Any) -> Preprocess:
    t = enum.transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    return Preprocess(
        input_size=(3, crop, crop),
        resize=resize,
        interpolation=t.interpolation.value,
        mean=tuple(t.mean),
        std=tuple(t.std),
    )


def _drop_aux(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """GoogLeNet checkpoints carry auxiliary classifiers that inference does not use."""
    return {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}


def _num_classes(head: nn.Module) -> int:
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else 0


def _seq(items: list[tuple[str, nn.Module]]) -> nn.Sequential:
    return nn.Sequential(OrderedDict(items))


def _split_vgg_like(model: nn.Module) -> tuple[list[tuple[StageInfo, nn.Module]], nn.Module]:
    """VGG and AlexNet: one stage per max-pool in ``features``, layers named as in the papers.

    VGG layers are ``conv3_1``, ``bn3_1``, ``relu3_1``, ``pool3`` (block 3, layer 1); AlexNet's
    are ``conv1``..``conv5``; the classifier becomes ``fc6``, ``fc7``, ``fc8``.
    """
    is_vgg = type(model).__name__ == "VGG"
    stages, current, stride, channels, taken = [], [], 1, 0, []
    n_conv, in_block = 0, 0
    for layer in model.features:
        block = len(stages) + 1
        if isinstance(layer, nn.Conv2d):
            n_conv, in_block = n_conv + 1, in_block + 1
            channels = layer.out_channels
            stride *= layer.stride[0]
        suffix = f"{block}_{in_block}" if is_vgg else f"{n_conv}"
        if isinstance(layer, nn.MaxPool2d):
            stride *= layer.stride if isinstance(layer.stride, int) else layer.stride[0]
            current.append((f"pool{block if is_vgg else n_conv}", layer))
            name = stage_name(stride, taken)
            taken.append(name)
            stages.append((StageInfo(name, channels, stride), _seq(current)))
            current, in_block = [], 0
            continue
        kind = {nn.Conv2d: "conv", nn.BatchNorm2d: "bn", nn.ReLU: "relu"}.get(type(layer), "layer")
        current.append((f"{kind}{suffix}", layer))
    head = [("avgpool", model.avgpool), ("flatten", nn.Flatten(1))]
    fc = 5
    for layer in model.classifier:
        if isinstance(layer, nn.Linear):
            fc += 1
        kind = {nn.Linear: "fc", nn.ReLU: "relu", nn.Dropout: "drop"}.get(type(layer), "layer")
        head.append((f"{kind}{fc + (1 if isinstance(layer, nn.Dropout) and not is_vgg else 0)}", layer))
    return stages, _seq(head)


def _split_resnet(model: nn.Module) -> tuple[list[tuple[StageInfo, nn.Module]], nn.Module]:
    """The stem and ``layer1`` to ``layer4`` as stages C2 to C5 with their nominal strides 4, 8, 16, 32. A ResNet
    built with ``replace_stride_with_dilation`` keeps these numbers here: detectors size their anchors from them, and
    files trained that way rebuild as they were trained; semantic segmentation reads the true strides
    (``cnnapps.apps.semantic.model.true_stages``)."""

    def channels(layer: nn.Sequential) -> int:
        block = layer[-1]
        return (block.conv3 if hasattr(block, "conv3") else block.conv2).out_channels

    stem = [("conv1", model.conv1), ("bn1", model.bn1), ("relu", model.relu), ("maxpool", model.maxpool)]
    stages = [
        (StageInfo("C2", channels(model.layer1), 4), _seq([*stem, ("layer1", model.layer1)])),
        (StageInfo("C3", channels(model.layer2), 8), _seq([("layer2", model.layer2)])),
        (StageInfo("C4", channels(model.layer3), 16), _seq([("layer3", model.layer3)])),
        (StageInfo("C5", channels(model.layer4), 32), _seq([("layer4", model.layer4)])),
    ]
    head = _seq([("avgpool", model.avgpool), ("flatten", nn.Flatten(1)), ("fc", model.fc)])
    return stages, head


class GoogLeNetInput(nn.Module):
    """torchvision's ``transform_input``: re-normalise ImageNet-normalised input the way its weights expect."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = x[:, 0:1] * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
        x1 = x[:, 1:2] * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
        x2 = x[:, 2:3] * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
        return torch.cat((x0, x1, x2), 1)


def _split_googlenet(model: nn.Module) -> tuple[list[tuple[StageInfo, nn.Module]], nn.Module]:
    m = model
    first = [("transform_input", GoogLeNetInput())] if m.transform_input else []
    stages = [
        (StageInfo("C2", 64, 4), _seq([*first, ("conv1", m.conv1), ("maxpool1", m.maxpool1)])),
        (
            StageInfo("C3", 480, 8),
            _seq(
                [
                    ("conv2", m.conv2),
                    ("conv3", m.conv3),
                    ("maxpool2", m.maxpool2),
                    ("inception3a", m.inception3a),
                    ("inception3b", m.inception3b),
                ]
            ),
        ),
        (
            StageInfo("C4", 832, 16),
            _seq([("maxpool3", m.maxpool3)] + [(f"inception4{c}", getattr(m, f"inception4{c}")) for c in "abcde"]),
        ),
        (
            StageInfo("C5", 1024, 32),
            _seq([("maxpool4", m.maxpool4), ("inception5a", m.inception5a), ("inception5b", m.inception5b)]),
        ),
    ]
    head = _seq([("avgpool", m.avgpool), ("flatten", nn.Flatten(1)), ("dropout", m.dropout), ("fc", m.fc)])
    return stages, head
