"""R-CNN detectors over any registry backbone, built from torchvision's own parts.

:func:`create_detector` puts a :class:`FeatureExtractor` (the backbone's stage maps, through an FPN for
multi-scale nets, or its last map for single-scale nets such as VGG) under torchvision's ``FasterRCNN``,
``MaskRCNN`` or ``KeypointRCNN``. With a ResNet-50 and 256 FPN channels the module tree matches torchvision's
``*_resnet50_fpn`` models, so their COCO checkpoints load (keys of the trunk are matched in order).
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cnnapps.apps.detect.zoo import COCO_SKELETON, TASKS, ZOO, flip_index
from cnnapps.backbones.features import Backbone
from cnnapps.errors import CnnappsError

#: backbone families read at one scale (no FPN); anchors are sized from their stride instead
SINGLE_SCALE_FAMILIES = ("vgg", "alexnet", "lenet")
HEAD_STYLES = ("v1", "v2")


class DetectorError(CnnappsError):
    """A detector that cannot be built as asked."""


@dataclass
class DetectorSpec:
    """Everything needed to rebuild a detector; stored in its model file."""

    task: str
    backbone: str
    num_classes: int  # including the background class 0
    class_names: list[str] = field(default_factory=list)
    num_keypoints: int = 0
    keypoint_names: list[str] = field(default_factory=list)
    skeleton: list[list[int]] = field(default_factory=list)  # 1-based pairs, as in COCO categories
    fpn: bool = True
    fpn_channels: int = 256
    heads: str = "v1"
    frozen_bn: bool = False
    bn_eps: float | None = None  # torchvision's v1 COCO checkpoints were trained with eps 0
    min_size: int = 800
    max_size: int = 1333
    image_mean: list[float] = field(default_factory=list)  # the trunk's normalisation (RGB, 0..1)
    image_std: list[float] = field(default_factory=list)
    trainable_stages: int | None = None
    options: dict[str, Any] = field(default_factory=dict)  # torchvision R-CNN keyword arguments

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def flip_index(self) -> list[int]:
        return flip_index(self.keypoint_names)


class FeatureExtractor(nn.Module):
    """The R-CNN ``backbone``: feature maps named ``"0"``, ``"1"``... (and ``"pool"`` after an FPN)."""

    def __init__(self, body: Backbone, fpn: bool, fpn_channels: int, norm_layer: Any = None) -> None:
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        super().__init__()
        self.body = body
        self.grey = body.preprocess.input_size[0] == 1
        usable = [s for s in body.stages if s.stride >= 4][-4:]
        if not fpn or len(usable) < 2:
            self.stage_names = [body.stages[-1].name]
            self.strides = [body.stages[-1].stride]
            self.fpn = None
            self.out_channels = body.stages[-1].channels
        else:
            self.stage_names = [s.name for s in usable]
            self.strides = [s.stride for s in usable] + [usable[-1].stride * 2]
            self.fpn = FeaturePyramidNetwork(
                [s.channels for s in usable], fpn_channels, extra_blocks=LastLevelMaxPool(), norm_layer=norm_layer
            )
            self.out_channels = fpn_channels

    @property
    def level_names(self) -> list[str]:
        """The maps RoI heads pool from (all but the extra ``pool`` level)."""
        return [str(i) for i in range(len(self.stage_names))]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        if self.grey:
            x = x.mean(1, keepdim=True)
        if self.fpn is None:
            return OrderedDict([("0", self.body.forward_features(x))])
        stages = self.body.forward_stages(x)
        return self.fpn(OrderedDict((str(i), stages[name]) for i, name in enumerate(self.stage_names)))


def create_detector(
    task: str = "segment",
    backbone: str = "resnet50",
    num_classes: int | None = None,
    num_keypoints: int | None = None,
    trainable_stages: int | None = None,
    weights: str | os.PathLike | None = None,
    backbone_weights: str | os.PathLike | None = "imagenet",
    *,
    class_names: list[str] | None = None,
    keypoint_names: list[str] | None = None,
    skeleton: list[list[int]] | None = None,
    fpn: bool | None = None,
    fpn_channels: int = 256,
    heads: str = "v1",
    min_size: int = 800,
    max_size: int = 1333,
    **options: Any,
) -> nn.Module:
    """A Faster R-CNN (``detect``), Mask R-CNN (``segment``) or Keypoint R-CNN (``pose``) on ``backbone``.

    ``weights``: None, ``"coco"`` (torchvision's COCO checkpoint for the ResNet-50-FPN variant of the task
    and head style) or a local torchvision-format detection checkpoint. ``backbone_weights`` seeds the trunk
    when ``weights`` is None. ``trainable_stages``: how many of the last backbone stages train (default 3 for
    pretrained trunks, all otherwise). ``num_classes`` counts the background. ``options`` go to torchvision's
    R-CNN constructor (``box_score_thresh``, ``rpn_post_nms_top_n_test``, ...).
    """
    from cnnapps.backbones import create_backbone
    from cnnapps.backbones.registry import get_spec

    if task not in TASKS:
        raise DetectorError(f"task {task!r} is not one of {', '.join(TASKS)}")
    if heads not in HEAD_STYLES:
        raise DetectorError(f"heads {heads!r} is not one of {', '.join(HEAD_STYLES)}")
    coco = isinstance(weights, str) and weights.lower().startswith("coco")
    state, meta = None, {}
    if coco:
        name = zoo_name(task, backbone, heads)
        state, meta = _coco_checkpoint(name)
    elif weights is not None:
        from cnnapps.backbones.weights import load_state_dict_file

        state = load_state_dict_file(weights)
    wanted = _labels(task, num_classes, class_names, num_keypoints, keypoint_names, skeleton)
    # a COCO checkpoint is built and loaded as it is; other classes or keypoints then get new predictors
    loaded = _labels(task, None, meta["categories"], None, meta.get("keypoint_names"), None) if meta else wanted
    num_classes, class_names, num_keypoints, keypoint_names, skeleton = loaded

    pretrained = state is not None or backbone_weights is not None
    spec = DetectorSpec(
        task=task,
        backbone=backbone,
        num_classes=num_classes,
        class_names=class_names,
        num_keypoints=num_keypoints,
        keypoint_names=keypoint_names,
        skeleton=skeleton,
        fpn=fpn if fpn is not None else get_spec(backbone).family not in SINGLE_SCALE_FAMILIES,
        fpn_channels=fpn_channels,
        heads=heads,
        frozen_bn=pretrained and heads == "v1",
        bn_eps=0.0 if coco and heads == "v1" else None,
        min_size=min_size,
        max_size=max_size,
        trainable_stages=trainable_stages,
        options=options,
    )
    trunk = create_backbone(backbone, weights=None if state is not None else backbone_weights)
    mean, std = trunk.preprocess.mean, trunk.preprocess.std
    spec.image_mean = [float(v) for v in mean] * (3 if len(mean) == 1 else 1)
    spec.image_std = [float(v) for v in std] * (3 if len(std) == 1 else 1)
    model = build_detector(spec, trunk)
    if state is not None:
        load_torchvision_state(model, state, str(weights))
    if loaded != wanted:
        retarget(model, *wanted)
    return model


def _labels(
    task: str,
    num_classes: int | None,
    class_names: list[str] | None,
    num_keypoints: int | None,
    keypoint_names: list[str] | None,
    skeleton: list[list[int]] | None,
) -> tuple[int, list[str], int, list[str], list[list[int]]]:
    """Class and keypoint names made complete and consistent (background first, COCO's skeleton for its
    17 keypoints)."""
    from cnnapps.apps.detect.zoo import COCO_KEYPOINTS

    if task == "pose":
        keypoint_names = list(keypoint_names or [f"k{i}" for i in range(num_keypoints or 17)])
        num_keypoints = num_keypoints or len(keypoint_names)
        if len(keypoint_names) != num_keypoints:
            raise DetectorError(f"{len(keypoint_names)} keypoint names for {num_keypoints} keypoints")
        if skeleton is None and tuple(keypoint_names) == COCO_KEYPOINTS:
            skeleton = [list(p) for p in COCO_SKELETON]
    else:
        num_keypoints, keypoint_names, skeleton = 0, [], []
    num_classes = num_classes or (len(class_names) if class_names else (2 if task == "pose" else 91))
    class_names = list(class_names or ["__background__", *(f"class{i}" for i in range(1, num_classes))])
    if len(class_names) != num_classes:
        raise DetectorError(f"{len(class_names)} class names for {num_classes} classes (background included)")
    return num_classes, class_names, num_keypoints, list(keypoint_names), [list(p) for p in skeleton or []]


def retarget(
    model: nn.Module,
    num_classes: int,
    class_names: list[str],
    num_keypoints: int = 0,
    keypoint_names: list[str] | None = None,
    skeleton: list[list[int]] | None = None,
) -> nn.Module:
    """New, untrained predictors for other classes or keypoints (fine-tuning a COCO model on your labels);
    the backbone, RPN and head layers keep their weights."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    spec: DetectorSpec = model.spec
    heads = model.roi_heads
    if num_classes != spec.num_classes:
        heads.box_predictor = FastRCNNPredictor(heads.box_predictor.cls_score.in_features, num_classes)
        if spec.task == "segment":
            conv = heads.mask_predictor.conv5_mask
            heads.mask_predictor = MaskRCNNPredictor(conv.in_channels, conv.out_channels, num_classes)
    if spec.task == "pose" and num_keypoints != spec.num_keypoints:
        in_channels = heads.keypoint_predictor.kps_score_lowres.in_channels
        heads.keypoint_predictor = KeypointRCNNPredictor(in_channels, num_keypoints)
    spec.num_classes, spec.class_names = num_classes, list(class_names)
    if spec.task == "pose":
        spec.num_keypoints, spec.keypoint_names = num_keypoints, list(keypoint_names or [])
        spec.skeleton = [list(p) for p in skeleton or []]
    return model


def build_detector(spec: DetectorSpec, trunk: Backbone | None = None) -> nn.Module:
    """The detector ``spec`` describes, on ``trunk`` (a new randomly initialised backbone when None)."""
    from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.rpn import RPNHead
    from torchvision.ops import MultiScaleRoIAlign

    from cnnapps.backbones import create_backbone

    trunk = trunk if trunk is not None else create_backbone(spec.backbone, weights=None)
    if trunk.has_head:
        trunk.drop_head()
    if spec.frozen_bn:
        freeze_batchnorm(trunk, spec.bn_eps)
    stages = len(trunk.stages)
    trainable = spec.trainable_stages
    if trainable is None:
        trainable = min(3, stages) if spec.frozen_bn else stages
    if not 0 <= trainable <= stages:
        raise DetectorError(f"{spec.backbone}: trainable_stages takes 0..{stages}, not {trainable}")
    trunk.freeze(stages - trainable)

    v2 = spec.heads == "v2"
    bn = nn.BatchNorm2d if v2 else None
    features = FeatureExtractor(trunk, spec.fpn, spec.fpn_channels, norm_layer=bn)
    c = features.out_channels
    if features.fpn is not None:  # one size per level, 8x its stride (torchvision: 32..512 for strides 4..64)
        anchors = AnchorGenerator(tuple((8 * s,) for s in features.strides), ((0.5, 1.0, 2.0),) * len(features.strides))
    else:
        s = features.strides[0]
        anchors = AnchorGenerator(((s, 2 * s, 4 * s, 8 * s, 16 * s),), ((0.5, 1.0, 2.0),))
    levels = features.level_names
    rep = 4 * c
    if v2:
        box_head = FastRCNNConvFCHead((c, 7, 7), [c] * 4, [rep], norm_layer=nn.BatchNorm2d)
    else:
        box_head = TwoMLPHead(c * 7 * 7, rep)
    common: dict[str, Any] = {
        "rpn_anchor_generator": anchors,
        "rpn_head": RPNHead(c, anchors.num_anchors_per_location()[0], conv_depth=2 if v2 else 1),
        "box_roi_pool": MultiScaleRoIAlign(levels, 7, 2),
        "box_head": box_head,
        "box_predictor": FastRCNNPredictor(rep, spec.num_classes),
        "min_size": spec.min_size,
        "max_size": spec.max_size,
        "image_mean": spec.image_mean or None,  # None: torchvision's ImageNet default
        "image_std": spec.image_std or None,
        **spec.options,
    }
    if spec.task == "detect":
        model = FasterRCNN(features, **common)
    elif spec.task == "segment":
        model = MaskRCNN(
            features,
            mask_roi_pool=MultiScaleRoIAlign(levels, 14, 2),
            mask_head=MaskRCNNHeads(c, [c] * 4, 1, norm_layer=bn),
            mask_predictor=MaskRCNNPredictor(c, c, spec.num_classes),
            **common,
        )
    else:
        width = 2 * c
        model = KeypointRCNN(
            features,
            keypoint_roi_pool=MultiScaleRoIAlign(levels, 14, 2),
            keypoint_head=KeypointRCNNHeads(c, [width] * 8),
            keypoint_predictor=KeypointRCNNPredictor(width, spec.num_keypoints),
            **common,
        )
    model.spec = spec
    return model


def freeze_batchnorm(module: nn.Module, eps: float | None = None) -> nn.Module:
    """Replace batch norm by frozen batch norm (fixed statistics and affine), as torchvision's detectors do
    for pretrained trunks: small detection batches would otherwise ruin the statistics."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    try:  # timm's norm+activation layers keep their activation when frozen
        from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d
    except ImportError:  # pragma: no cover
        BatchNormAct2d = FrozenBatchNormAct2d = None

    for name, child in module.named_children():
        frozen: nn.Module | None = None
        if BatchNormAct2d is not None and isinstance(child, BatchNormAct2d):
            frozen = FrozenBatchNormAct2d(
                child.num_features, eps=child.eps if eps is None else eps, apply_act=True, act_layer=nn.Identity
            )
            frozen.act, frozen.drop = child.act, child.drop
        elif isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps if eps is None else eps)
        if frozen is None:
            freeze_batchnorm(child, eps)
            continue
        with torch.no_grad():
            if child.affine:
                frozen.weight.copy_(child.weight)
                frozen.bias.copy_(child.bias)
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
        setattr(module, name, frozen)
    return module


def zoo_name(task: str, backbone: str, heads: str) -> str:
    """The torchvision model-zoo entry whose COCO weights fit this task, backbone and head style."""
    for name, (zoo_task, style, _, _) in ZOO.items():
        if zoo_task == task and style == heads and backbone == "resnet50":
            return name
    available = ", ".join(f"{n} ({t}, heads {s})" for n, (t, s, _, _) in ZOO.items())
    raise DetectorError(f"no COCO weights for {task} on {backbone} with {heads} heads; available: {available}")


def _coco_checkpoint(name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import torchvision.models.detection as detection

    from cnnapps.backbones.weights import cached_download, load_state_dict_file

    _, _, enum_name, member = ZOO[name]
    enum = getattr(detection, enum_name)[member]
    return load_state_dict_file(cached_download(enum.url)), dict(enum.meta)


def load_torchvision_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a torchvision-format detector state dict: the trunk (``backbone.body.*``) is matched in order
    with shape checks (our stages group torchvision's layers); every other key must match by name.

    Batch-norm step counters (``num_batches_tracked``) carry no weights: a checkpoint saved with plain batch
    norm (torchvision's training references) loads into frozen batch norm, and the other way round."""
    ours = model.state_dict()
    trunk_ours = [k for k in ours if k.startswith("backbone.body.") and not _is_counter(k)]
    trunk_theirs = [k for k in state if k.startswith("backbone.body.") and not _is_counter(k)]
    if len(trunk_ours) != len(trunk_theirs):
        raise DetectorError(
            f"{source}: its backbone has {len(trunk_theirs)} tensors, this detector's {len(trunk_ours)} "
            f"({model.spec.backbone}, frozen batch norm {model.spec.frozen_bn}); they do not fit"
        )
    mapped = {k: v for k, v in state.items() if not k.startswith("backbone.body.") and not _is_counter(k)}
    their_module = {}  # our trunk module -> theirs, to carry counters over where both sides have them
    for mine, theirs in zip(trunk_ours, trunk_theirs, strict=True):
        if ours[mine].shape != state[theirs].shape:
            raise DetectorError(f"{source}: {theirs} has shape {tuple(state[theirs].shape)}, {mine} needs "
                                f"{tuple(ours[mine].shape)}")  # fmt: skip
        mapped[mine] = state[theirs]
        their_module[mine.rpartition(".")[0]] = theirs.rpartition(".")[0]
    for key in filter(_is_counter, ours):  # counters the checkpoint lacks keep ours; those we lack are dropped
        module = key.rpartition(".")[0]
        mapped[key] = state.get(f"{their_module.get(module, module)}.num_batches_tracked", ours[key])
    for key, value in mapped.items():
        if key in ours and ours[key].shape != value.shape:
            raise DetectorError(f"{source}: {key} has shape {tuple(value.shape)}, this detector needs "
                                f"{tuple(ours[key].shape)}")  # fmt: skip
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        detail = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise DetectorError(f"{source}: not a checkpoint for this detector ({detail})")


def _is_counter(key: str) -> bool:
    """A batch-norm step counter: a buffer that training updates and inference never reads."""
    return key.endswith(".num_batches_tracked")


def save_detector(path: str | os.PathLike, model: nn.Module, extra: dict[str, Any] | None = None) -> None:
    """Write a self-describing model file (task, detector spec, class and keypoint names) with the weights."""
    from cnnapps.bundle import save_bundle

    spec: DetectorSpec = model.spec
    save_bundle(path, model.state_dict(), {"task": spec.task, "detector": spec.to_dict(), **(extra or {})})


def load_detector(spec: str | os.PathLike) -> nn.Module:
    """A detector from a model file, or a torchvision model-zoo name (COCO weights through the hub cache)."""
    from cnnapps.bundle import BundleError, is_bundle_path, load_bundle

    if str(spec) in ZOO:
        task, heads, _, _ = ZOO[str(spec)]
        return create_detector(task, "resnet50", weights="coco", heads=heads).eval()
    if not is_bundle_path(spec):
        raise DetectorError(f"{spec}: not a detector model file or one of {', '.join(ZOO)}")
    tensors, meta = load_bundle(spec)
    if "detector" not in meta:
        raise BundleError(f"{spec}: a {meta.get('task', 'classify')} model, not a detector")
    model = build_detector(DetectorSpec.from_dict(meta["detector"]))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise BundleError(f"{spec}: weights do not fit the described detector ({(missing or unexpected)[0]})")
    return model.eval()
