"""The lecture's own nets, written here layer by layer: LeNet-5 and the 2012 AlexNet.

Both are built as :class:`SequentialBackbone` so they plug into every task like the
library nets. Neither has published weights; ``weights=`` takes None or a local file.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from cnnapps.backbones.features import SequentialBackbone, StageInfo
from cnnapps.backbones.preprocess import Preprocess
from cnnapps.backbones.registry import WeightsArg
from cnnapps.backbones.weights import as_local_file, load_into, load_state_dict_file
from cnnapps.errors import WeightsError


def _seq(**layers: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(layers))


def lenet5_layers(in_channels: int = 1) -> list[tuple[StageInfo, nn.Module]]:
    """CONV-POOL-CONV-POOL-CONV-FC for 32x32 input: 5x5 convs stride 1, 2x2 pools stride 2."""
    return [
        (StageInfo("C1", 6, 2), _seq(conv1=nn.Conv2d(in_channels, 6, 5), act1=nn.Tanh(), pool1=nn.MaxPool2d(2, 2))),
        (StageInfo("C2", 16, 4), _seq(conv2=nn.Conv2d(6, 16, 5), act2=nn.Tanh(), pool2=nn.MaxPool2d(2, 2))),
        (StageInfo("C5", 120, 32), _seq(conv3=nn.Conv2d(16, 120, 5), act3=nn.Tanh())),
    ]


def build_lenet5(
    name: str = "lenet5", weights: WeightsArg = None, *, in_channels: int = 1, num_classes: int = 10
) -> SequentialBackbone:
    """LeNet-5 (LeCun et al., 1998): 32x32x1 -> 28x28x6 -> 14x14x6 -> 10x10x16 -> 5x5x16 -> 1x1x120 -> 84 -> classes."""
    stages = lenet5_layers(in_channels)
    head = _seq(flatten=nn.Flatten(1), fc1=nn.Linear(120, 84), act=nn.Tanh(), fc2=nn.Linear(84, num_classes))
    preprocess = Preprocess(
        input_size=(in_channels, 32, 32),
        resize=32,
        resize_mode="squash",
        mean=(0.5,) * in_channels,
        std=(0.5,) * in_channels,
    )
    return _finish(SequentialBackbone(name, stages, head, num_classes, preprocess), weights)


def build_alexnet2012(
    name: str = "alexnet2012", weights: WeightsArg = None, *, num_classes: int = 1000, dropout: float = 0.5
) -> SequentialBackbone:
    """AlexNet as in Krizhevsky et al. 2012, on one device (no two-GPU filter groups).

    227x227x3 -> CONV1 96 11x11/4 -> 55x55x96 -> LRN -> POOL 3x3/2 -> 27x27x96 -> CONV2 256 5x5 pad 2
    -> LRN -> POOL -> 13x13x256 -> CONV3 384 -> CONV4 384 -> CONV5 256 (3x3 pad 1) -> POOL -> 6x6x256
    -> FC6 4096 -> FC7 4096 -> FC8 classes, dropout 0.5 before FC6 and FC7.
    """

    def lrn() -> nn.LocalResponseNorm:  # the paper's k=2, n=5, alpha=1e-4, beta=0.75
        return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)

    stages = [
        (
            StageInfo("C3", 96, 8),
            _seq(
                conv1=nn.Conv2d(3, 96, 11, stride=4), relu1=nn.ReLU(inplace=True), norm1=lrn(), pool1=nn.MaxPool2d(3, 2)
            ),
        ),
        (
            StageInfo("C4", 256, 16),
            _seq(
                conv2=nn.Conv2d(96, 256, 5, padding=2),
                relu2=nn.ReLU(inplace=True),
                norm2=lrn(),
                pool2=nn.MaxPool2d(3, 2),
            ),
        ),
        (
            StageInfo("C5", 256, 32),
            _seq(
                conv3=nn.Conv2d(256, 384, 3, padding=1),
                relu3=nn.ReLU(inplace=True),
                conv4=nn.Conv2d(384, 384, 3, padding=1),
                relu4=nn.ReLU(inplace=True),
                conv5=nn.Conv2d(384, 256, 3, padding=1),
                relu5=nn.ReLU(inplace=True),
                pool5=nn.MaxPool2d(3, 2),
            ),
        ),
    ]
    head = _seq(
        flatten=nn.Flatten(1),
        drop6=nn.Dropout(dropout),
        fc6=nn.Linear(256 * 6 * 6, 4096),
        relu6=nn.ReLU(inplace=True),
        drop7=nn.Dropout(dropout),
        fc7=nn.Linear(4096, 4096),
        relu7=nn.ReLU(inplace=True),
        fc8=nn.Linear(4096, num_classes),
    )
    preprocess = Preprocess(input_size=(3, 227, 227), resize=256)
    return _finish(SequentialBackbone(name, stages, head, num_classes, preprocess), weights)


def _finish(backbone: SequentialBackbone, weights: WeightsArg) -> SequentialBackbone:
    if weights is None:
        return backbone
    local = as_local_file(weights)
    if local is None:
        raise WeightsError(
            f"{backbone.name}: no published weights to predict with; train it from scratch (--weights none, "
            "weights=None in Python) or give a local weights file"
        )
    load_into(backbone, load_state_dict_file(local), str(local))
    backbone.weights = str(local)
    return backbone
