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
from types import MethodType
from typing import Any

import torch
from torch import nn

from cnnapps.apps.detect.zoo import COCO_SKELETON, TASKS, ZOO
from cnnapps.backbones.features import Backbone
from cnnapps.datasets.formats.hub import flip_index_from_names
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
    # trained on a frozen trunk shared with other heads: it reads the trunk's pass over the model file's
    # preprocessing (one pass for every head) instead of resizing images itself
    shared: bool = False
    # the side of a square window of an image that the network sees at the scale of its training images (their
    # median, see training_window); None in files written before it was recorded
    train_size: int | None = None
    # a learned appearance for tracking (``cnnapps train track``): the size of the box embeddings it projects
    # (``dims``) and of its output (``components``), and what it was fitted on (identities, boxes, data)
    appearance: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def flip_index(self) -> list[int]:
        return flip_index_from_names(self.keypoint_names)

    @property
    def training_size(self) -> int:
        """The tile size (pixels) at which objects reach the network at the scale it was trained at: the recorded
        ``train_size``, or for files without it the size images are resized to (``min_size``)."""
        return int(self.train_size or self.min_size)


def training_window(sizes: list[tuple[int, int]], spec: DetectorSpec) -> int | None:
    """``train_size`` for training images of these (height, width) sizes: the median side of a square window the
    detector would scale as it scaled those images. R-CNN resizing scales an image by min(min_size / short side,
    max_size / long side) and a square window of side T by min_size / T, so T = max(short, min_size * long /
    max_size); a shared trunk's preprocessing scales by the shorter side, so T = short."""
    if not sizes:
        return None
    windows = []
    for height, width in sizes:
        short, long = sorted((height, width))
        windows.append(short if spec.shared else max(short, spec.min_size * long / spec.max_size))
    return round(float(sorted(windows)[len(windows) // 2]))


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
        return self.from_stages(self.body.forward_stages(x))

    def from_stages(self, stages: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        """The maps the heads read, from a trunk pass already made (one pass shared by several heads)."""
        if self.fpn is None:
            return OrderedDict([("0", stages[self.stage_names[0]])])
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


class AppearanceProjection(nn.Module):
    """A learned linear map of :func:`box_embeddings` (unit vectors of ``dims`` numbers) to ``components`` numbers
    where views of one object lie close and different objects far apart: ``unit((e - mean) @ matrix)``. Fitted by
    ``cnnapps train track`` (:mod:`cnnapps.apps.track.appearance`); kept with the detector in its model file."""

    def __init__(self, dims: int, components: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dims))
        self.register_buffer("matrix", torch.zeros(dims, components))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        projected = (embeddings.float() - self.mean) @ self.matrix
        return torch.nn.functional.normalize(projected, dim=1)


def attach_appearance(model: nn.Module, spec: DetectorSpec) -> None:
    """Give ``model`` the appearance projection ``spec.appearance`` describes (zeros until loaded or fitted)."""
    if spec.appearance:
        model.appearance = AppearanceProjection(int(spec.appearance["dims"]), int(spec.appearance["components"]))


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
    attach_appearance(model, spec)
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


class DetectionHead:
    """The R-CNN heads in model files: FPN, RPN and RoI heads over the trunk's stage maps (the spec says how)."""

    trunk_path = "backbone.body"
    kinds = tuple(f"rcnn-{style}" for style in HEAD_STYLES)

    def apply_options(self, model: nn.Module, options: dict[str, Any]) -> None:
        """The RoI heads keep scores at or above ``score_threshold``."""
        from cnnapps.apps.detect.predictor import kept_from

        model.roi_heads.score_thresh = kept_from(options["score_threshold"])

    def describe(self, model: nn.Module) -> Any:
        from cnnapps.apps.modelfile import HeadInfo

        spec: DetectorSpec = model.spec
        kwargs = {k: v for k, v in spec.to_dict().items() if k not in ("task", "class_names")}
        return HeadInfo(spec.task, f"rcnn-{spec.heads}", kwargs, list(spec.class_names))

    def build(self, trunk: Backbone, info: Any, preprocess: dict[str, Any], model_file: Any) -> nn.Module:
        spec = DetectorSpec.from_dict({**info.kwargs, "task": info.task, "class_names": list(info.labels)})
        if spec.num_classes != len(spec.class_names):
            raise DetectorError(
                f"{model_file.path}: {len(spec.class_names)} class names for {spec.num_classes} classes"
            )
        spec.backbone = model_file.trunk["name"]
        model = build_detector(spec, trunk)
        if spec.shared:
            from cnnapps.backbones.preprocess import Preprocess

            model.shared_preprocess = Preprocess.from_dict(preprocess)
        return model

    def from_v1(self, meta: dict[str, Any]) -> tuple[dict[str, Any], Any, dict[str, Any]]:
        from cnnapps.apps.modelfile import HeadInfo

        spec = DetectorSpec.from_dict(meta["detector"])
        kwargs = {k: v for k, v in spec.to_dict().items() if k not in ("task", "class_names")}
        head = HeadInfo(spec.task, f"rcnn-{spec.heads}", kwargs, list(spec.class_names))
        return {"name": spec.backbone, "kwargs": {}}, head, rcnn_preprocess(spec)

    def shareable(self, info: Any) -> bool:
        """Only heads trained on a shared trunk read its pass; others resize images themselves."""
        return bool(info.kwargs.get("shared"))

    def predict_shared(self, model: nn.Module, shared: Any, options: dict[str, Any]) -> list[Any]:
        """Detections in each image's frame from a trunk pass shared with other heads."""
        from cnnapps.apps.detect.predictor import to_detections, to_result

        found = detect_on_stages(model, shared.stages, shared.images, shared.sizes, shared.geometries,
                                 full_masks=False)  # fmt: skip
        return [to_result("", to_detections(out, h, w), h, w, model.spec) for out, (h, w) in zip(found, shared.sizes,
                                                                                              strict=True)]  # fmt: skip


HEAD = DetectionHead()


def rcnn_preprocess(spec: DetectorSpec) -> dict[str, Any]:
    """What a detector does to images before its trunk (its own resizing), as a model file's preprocessing."""
    return {"resize_mode": "rcnn", "min_size": spec.min_size, "max_size": spec.max_size,
            "mean": list(spec.image_mean), "std": list(spec.image_std)}  # fmt: skip


def save_detector(path: str | os.PathLike, model: nn.Module, metrics: dict[str, Any] | None = None,
                  trunk_kwargs: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Write a self-describing model file (the trunk, and the detector's heads with class and keypoint names);
    a detector on a shared trunk keeps the trunk's preprocessing, others their own resizing."""
    from cnnapps.apps.modelfile import save_model

    spec: DetectorSpec = model.spec
    preprocess = model.shared_preprocess.to_dict() if spec.shared else rcnn_preprocess(spec)
    save_model(path, spec.task, model, spec.backbone, trunk_kwargs, preprocess, metrics)


def create_shared_detector(task: str, trunk: Backbone, trunk_name: str, preprocess: Any, *,
                           num_classes: int | None = None, class_names: list[str] | None = None,
                           num_keypoints: int | None = None, keypoint_names: list[str] | None = None,
                           skeleton: list[list[int]] | None = None, fpn: bool | None = None, fpn_channels: int = 256,
                           heads: str = "v1", **options: Any) -> nn.Module:  # fmt: skip
    """Detection heads on a frozen trunk shared with other heads: the trunk stays exactly as it is (no batch-norm
    replacement, nothing trained) and the heads read its pass over ``preprocess`` (a square input), so one
    trunk pass serves them and every other head of a multi-head model file."""
    from cnnapps.backbones.registry import get_spec

    _, height, width = preprocess.input_size
    labels = _labels(task, num_classes, class_names, num_keypoints, keypoint_names, skeleton)
    spec = DetectorSpec(task=task, backbone=trunk_name, num_classes=labels[0], class_names=labels[1],
                        num_keypoints=labels[2], keypoint_names=labels[3], skeleton=labels[4],
                        fpn=fpn if fpn is not None else get_spec(trunk_name).family not in SINGLE_SCALE_FAMILIES,
                        fpn_channels=fpn_channels, heads=heads, frozen_bn=False, min_size=min(height, width),
                        max_size=max(height, width), image_mean=[float(v) for v in preprocess.mean],
                        image_std=[float(v) for v in preprocess.std], trainable_stages=0, options=options,
                        shared=True)  # fmt: skip
    model = build_detector(spec, trunk)
    model.shared_preprocess = preprocess
    return model


def run_shared(model: nn.Module, images: list[torch.Tensor], trunk_pass: Any = None, embed: bool = False,
               full_masks: bool = True) -> list[dict]:  # fmt: skip
    """A detector on a shared trunk, on uint8 (3, H, W) images: the model file's preprocessing, the trunk's pass
    (``trunk_pass``, e.g. a compiled ``TrunkRunner``, or the module itself), the heads; outputs in each image's own
    frame, as torchvision's R-CNN gives them (with ``embed``, each box's appearance too: :func:`box_embeddings`;
    ``full_masks=False``: masks as ``"box_masks"``, see :func:`keep_box_masks`)."""
    pre = model.shared_preprocess
    batch = torch.stack([pre.apply_tensor(img) for img in images])
    stages = trunk_pass(batch)[0] if trunk_pass is not None else model.backbone.body.forward_stages(batch)
    sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    return detect_on_stages(model, stages, batch, sizes, [pre.geometry(*size) for size in sizes], embed, full_masks)


def run_detector(
    model: nn.Module, images: list[torch.Tensor], embed: bool = False, trunk_for: Any = None, full_masks: bool = True
) -> list[dict]:
    """A torchvision R-CNN on float (3, H, W) images in [0, 1]: what ``model(images)`` returns, and with ``embed``
    each box's appearance from the same forward pass (:func:`box_embeddings`). ``trunk_for(shape)``: a compiled
    pass of the trunk for the resized batch's shape (a ``TrunkRunner``), or None to run the module as it is.
    ``full_masks=False``: masks stay as the RoI heads give them (``"box_masks"``, see :func:`keep_box_masks`)."""
    if not embed and trunk_for is None and full_masks:
        return model(images)
    sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    batch, _ = model.transform(images)
    grey = model.backbone.grey and trunk_for is not None  # the eager backbone makes its one channel itself
    x = batch.tensors.mean(1, keepdim=True) if grey else batch.tensors  # what a compiled trunk is fed
    trunk = trunk_for(tuple(x.shape)) if trunk_for is not None else None
    features = model.backbone(batch.tensors) if trunk is None else model.backbone.from_stages(trunk(x)[0])
    proposals, _ = model.rpn(batch, features)
    detections, _ = model.roi_heads(features, proposals, batch.image_sizes)
    if embed:
        vectors = box_embeddings(model, features, [d["boxes"] for d in detections], batch.image_sizes)
        detections = [{**found, "embeddings": v} for found, v in zip(detections, vectors, strict=True)]
    if not full_masks:
        detections = keep_box_masks(detections)
    return model.transform.postprocess(detections, batch.image_sizes, sizes)


def keep_box_masks(detections: list[dict]) -> list[dict]:
    """Detections whose masks (N, 1, 28, 28 probabilities over each box) are kept as ``"box_masks"`` rather than
    pasted into an image-sized mask each (N x H x W floats: gigabytes for a photo with many objects); the predictor
    pastes each into a window around its box (:func:`~cnnapps.apps.detect.predictor.paste_in_windows`)."""
    return [{("box_masks" if k == "masks" else k): v for k, v in found.items()} for found in detections]


def box_embeddings(
    model: nn.Module, features: dict[str, torch.Tensor], boxes: list[torch.Tensor], sizes: list[tuple[int, int]]
) -> list[torch.Tensor]:
    """Each box's appearance as a unit vector, from the feature maps the detector has just computed: the box head's
    RoI Align over the FPN levels (the level chosen by the box's size), its cells kept in place (channels x 7 x 7,
    the tensor the box head itself reads). What a tracker re-identifies objects by, at the cost of one RoI Align
    over the boxes found (no second network, no crops). Keeping the cells apart keeps where in the box each colour
    and edge is: on held-out synthetic videos the right object was the nearest 96 % of the time (rank-1), against
    79 % with the cells averaged and 76 % with the box head's own 1024 features."""
    if not sum(len(b) for b in boxes):
        pool = model.roi_heads.box_roi_pool
        cells = int(pool.output_size[0]) * int(pool.output_size[1])
        width = next(iter(features.values())).shape[1] * cells
        return [torch.zeros((0, width), device=b.device) for b in boxes]
    pooled = model.roi_heads.box_roi_pool(features, boxes, sizes).float().flatten(1)
    pooled = torch.nn.functional.normalize(pooled, dim=1)
    learned = getattr(model, "appearance", None)
    if learned is not None:  # a projection fitted to identities (cnnapps train track)
        pooled = learned(pooled)
    return list(pooled.split([len(b) for b in boxes]))


def detect_on_stages(
    model: nn.Module,
    stages: dict[str, torch.Tensor],
    batch: torch.Tensor,
    sizes: list[tuple[int, int]],
    geometries: list[tuple[float, float, float, float]],
    embed: bool = False,
    full_masks: bool = True,
) -> list[dict]:
    """A shared detector's outputs from a trunk pass already made over ``batch`` (the preprocessed images), in
    each original image's frame (``sizes``: height, width; ``geometries``: how the preprocessing moved pixels);
    with ``embed``, each box's appearance too (``"embeddings"``: :func:`box_embeddings`); ``full_masks=False``:
    masks as ``"box_masks"`` (:func:`keep_box_masks`)."""
    from torchvision.models.detection.image_list import ImageList
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    features = model.backbone.from_stages(stages)
    images = ImageList(batch, [tuple(batch.shape[-2:])] * len(batch))
    proposals, _ = model.rpn(images, features)
    detections, _ = model.roi_heads(features, proposals, images.image_sizes)
    if embed:
        vectors = box_embeddings(model, features, [d["boxes"] for d in detections], images.image_sizes)
        detections = [{**found, "embeddings": v} for found, v in zip(detections, vectors, strict=True)]
    outputs = []
    for found, (height, width), (sx, sy, ox, oy) in zip(detections, sizes, geometries, strict=True):
        scale = found["boxes"].new_tensor([sx, sy, sx, sy])
        shift = found["boxes"].new_tensor([ox, oy, ox, oy])
        boxes = (found["boxes"] + shift) / scale
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        found = {**found, "boxes": boxes}
        if "masks" in found and full_masks:
            found["masks"] = paste_masks_in_image(found["masks"], boxes, (height, width))
        elif "masks" in found:
            found = keep_box_masks([found])[0]
        if "keypoints" in found:
            points = found["keypoints"].clone()
            points[..., 0] = (points[..., 0] + ox) / sx
            points[..., 1] = (points[..., 1] + oy) / sy
            found["keypoints"] = points
        outputs.append(found)
    return outputs


def exportable(spec: str | os.PathLike, task: str | None = None, **options: Any) -> Any:
    """The detector of ``spec`` for ``cnnapps export`` (ONNX): one RGB image (3, H, W) in [0, 1] of any size ->
    boxes, labels, scores, and masks or keypoints, as torchvision's R-CNN returns them. Heads on a shared trunk are
    refused: they see images through the model file's preprocessing (:func:`run_shared`), not R-CNN resizing."""
    from cnnapps.apps.detect.predictor import kept_from
    from cnnapps.exported import Exportable
    from cnnapps.quantize import Calibration, unit_image

    model = load_detector(spec, options.get("head"), task)
    model.roi_heads.score_thresh = kept_from(model.roi_heads.score_thresh)  # scores at it kept, as the predictor does
    if model.spec.shared:  # its graph would be torchvision's own resizing path: other answers than the model file's
        from cnnapps.exported import ExportError

        head = f" {options['head']!r}" if options.get("head") else ""
        raise ExportError(f"{spec}: its {model.spec.task} head{head} is on a shared trunk (trained with --trunk) and "
                          "sees images through the file's antialiased resize, which an ONNX graph (opset 17) cannot "
                          f"reproduce; run the model file itself (cnnapps {model.spec.task} --model {spec}, or "
                          "cnnapps.load)")  # fmt: skip
    if model.transform.fixed_size is None:  # a fixed size needs no arithmetic
        model.transform.resize = MethodType(_resize_in_doubles, model.transform)
    names = {"detect": [], "segment": ["masks"], "pose": ["keypoints", "keypoints_scores"]}[model.spec.task]
    outputs = ["boxes", "labels", "scores", *names]
    dynamic = {"image": {1: "height", 2: "width"}, **{n: {0: "detections"} for n in outputs}}
    meta = {"task": model.spec.task, "detector": model.spec.to_dict()}
    # int8: the convolutions (trunk, FPN, RPN head, mask and keypoint heads); fp16: the learned layers but the box
    # predictor; what places and picks boxes stays fp32
    calibration = Calibration(unit_image, "boxes", op_types=("Conv",), half_modules=LEARNED_LAYERS, fp32=KEPT_FP32,
                              varying_shapes=True)  # fmt: skip
    return Exportable(model, meta, ([torch.rand(3, 240, 320)],), ["image"], outputs, dynamic, calibration)


def _resize_in_doubles(transform: Any, image: torch.Tensor, target: Any = None) -> tuple[torch.Tensor, Any]:
    """torchvision's R-CNN resize of one image for an exported graph, its size computed as eager PyTorch computes it:
    in doubles. Traced, torchvision computes the scale in float32, so a 375 x 500 image became 799 rows where eager
    PyTorch makes 800 (floor(375 x 800/375)), and boxes moved by half a pixel; here the graph casts the image's
    shape to float64, takes the same minimum of the two ratios, floors, and resizes to those sizes."""
    # no number, no 0-d tensor: the exporter gives those float32 (a 96 / min(h, w) came out as float32 anyway)
    shape = torch._shape_as_tensor(image)[-2:].to(torch.float64)
    limits = torch.tensor([float(transform.min_size[-1]), float(transform.max_size)], dtype=torch.float64)
    scale = (limits / torch.sort(shape).values).amin(0, keepdim=True)
    size = torch.floor(shape * scale).to(torch.int64)
    resized = torch.nn.functional.interpolate(image[None], size=(size[0], size[1]), mode="bilinear",
                                              align_corners=False)[0]  # fmt: skip
    return resized, target


#: the learned layers but the box predictor: what `cnnapps export --fp16` computes in fp16 (missing ones skipped)
LEARNED_LAYERS = ("backbone", "rpn.head", "roi_heads.box_head", "roi_heads.mask_head", "roi_heads.mask_predictor",
                  "roi_heads.keypoint_head", "roi_heads.keypoint_predictor")  # fmt: skip
#: what an int8 or fp16 detector keeps in fp32 (cnnapps export --int8, --fp16)
KEPT_FP32 = ("the resize and normalisation, anchors and box decoding, NMS, RoI Align and the box predictor "
             "(int8: the fully connected box head and the mask and keypoint upsampling too)")  # fmt: skip


def load_detector(spec: str | os.PathLike, head: str | None = None, task: str | None = None) -> nn.Module:
    """A detector from a model file, or a torchvision model-zoo name (COCO weights through the hub cache)."""
    from cnnapps.apps.modelfile import build_model, read_model_file, refuse_head
    from cnnapps.bundle import is_bundle_path

    if str(spec) in ZOO:
        refuse_head(head, spec, "a torchvision model name")
        zoo_task, heads, _, _ = ZOO[str(spec)]
        return create_detector(zoo_task, "resnet50", weights="coco", heads=heads).eval()
    if not is_bundle_path(spec):
        raise DetectorError(f"{spec}: not a detector model file or one of {', '.join(ZOO)}")
    model_file = read_model_file(spec)
    if head is None and task is None:
        detectors = [n for n, h in model_file.heads.items() if h.task in TASKS]
        if not detectors:
            have = ", ".join(sorted(set(model_file.tasks)))
            raise DetectorError(f"{spec}: a {have} model, not a detector")
        head = detectors[0] if len(detectors) == 1 else None
    return build_model(model_file, head, task)
