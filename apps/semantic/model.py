"""Semantic segmentation heads over any registry backbone, built from torchvision's own parts.

:func:`create_semantic` puts one of four heads on a backbone's stage maps:

- ``fcn``: torchvision's ``FCNHead`` on the last stage (Long et al. 2015, as torchvision builds it);
- ``deeplabv3``: torchvision's ``DeepLabHead`` (ASPP with image pooling) on the last stage; with ``output_stride``
  8 or 16 the later stages are dilated instead of strided (torchvision ResNets through
  ``replace_stride_with_dilation``, timm nets that take ``output_stride``: EfficientNets, ResNets, ...) and the
  atrous rates follow the stride (6, 12, 18 at 16; 12, 24, 36 at 8);
- ``lraspp``: torchvision's ``LRASPPHead`` (MobileNetV3's light head) on a stride-8 stage and the last stage;
- ``fpn``: Panoptic FPN's semantic branch (detectron2's ``SemSegFPNHead``) on torchvision's ``FeaturePyramidNetwork``
  over the last four stages: each level upsampled to stride 4 by conv-GroupNorm-ReLU-2x steps, summed, classified.

Logits are upsampled bilinearly to the input size, as torchvision does. With a ResNet-50 trunk the module tree
matches torchvision's ``fcn_resnet50`` and ``deeplabv3_resnet50`` (trunk keys matched in order, head keys by name),
so their checkpoints load and give bit-identical outputs; ``lraspp_mobilenet_v3_large`` and
``deeplabv3_mobilenet_v3_large`` load onto torchvision's MobileNetV3 features split into stages here (that trunk is
not in the backbone registry, so such models answer and export but are not written to model files).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnapps.apps.semantic.config import HEAD_KINDS
from cnnapps.backbones.features import Backbone, SequentialBackbone, StageInfo
from cnnapps.backbones.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from cnnapps.errors import CnnappsError

TASK = "semantic"
#: the backbone name of torchvision's MobileNetV3-Large features, split into stages here (not a registry name)
MOBILENET = "mobilenet_v3_large"


class SemanticError(CnnappsError):
    """A semantic segmentation model that cannot be built or loaded as asked."""


@dataclass
class SemanticSpec:
    """Everything needed to rebuild a semantic segmentation model; stored in its model file."""

    head: str
    backbone: str
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    colours: list[list[int]] = field(default_factory=list)  # one RGB colour per class (drawing, saved masks)
    stages: list[str] = field(default_factory=list)  # the stage maps the head reads (shallow to deep)
    aux_stage: str | None = None  # an FCN head on this stage adds an auxiliary loss in training
    head_channels: int | None = None  # ASPP / LR-ASPP / FPN width (None: torchvision's defaults)
    atrous_rates: list[int] = field(default_factory=list)
    output_stride: int | None = None  # dilated later stages (None: the backbone as it is)
    ignore_index: int = 255
    # trained on a frozen trunk shared with other heads (the trunk is exactly as it was given)
    shared: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SemanticSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class ShorterSide:
    """torchvision's segmentation preprocessing: the shorter side resized to ``resize`` (the aspect ratio kept),
    then normalised; so inputs differ in size from image to image."""

    resize: int = 520
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (3, self.resize, self.resize)

    def size_of(self, height: int, width: int) -> tuple[int, int]:
        short, long = min(height, width), max(height, width)
        new_long = int(self.resize * long / short)
        return (self.resize, new_long) if height <= width else (new_long, self.resize)

    def geometry(self, height: int, width: int) -> tuple[float, float, float, float]:
        new_h, new_w = self.size_of(height, width)
        return new_w / width, new_h / height, 0.0, 0.0

    def apply_tensor(self, img: torch.Tensor) -> torch.Tensor:
        """A uint8 (3, H, W) tensor resized and normalised exactly as torchvision's ``SemanticSegmentation`` preset
        does it (its resize, not the v2 one, which rounds some pixels one level apart)."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        img = TF.resize(img, [self.resize], interpolation=InterpolationMode(self.interpolation), antialias=True)
        mean = torch.tensor(self.mean, device=img.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=img.device).view(-1, 1, 1)
        return img.float().div_(255.0).sub_(mean).div_(std)

    def __call__(self, rgb: Any) -> Any:
        """RGB uint8 (H, W, 3) -> normalised float32 (C, H', W') (validation reads images through this)."""
        import numpy as np

        img = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
        return self.apply_tensor(img).contiguous().numpy()

    def to_dict(self) -> dict[str, Any]:
        return {"resize_mode": "shorter", "resize": self.resize, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation}  # fmt: skip


def whole_image(fit: Preprocess | ShorterSide) -> Preprocess | ShorterSide:
    """What a head reads at prediction: a resize-and-crop preprocessing (a classifier trunk's, kept by heads trained
    on it with ``--trunk``) without its crop. The heads are fully convolutional, so the whole image, its shorter side
    at the crop's resize (the scale the head learned), leaves no pixel to be guessed from the crop's edge."""
    if isinstance(fit, Preprocess) and fit.resize_mode == "crop" and fit.input_size[0] == 3:
        return ShorterSide(int(fit.resize), tuple(fit.mean), tuple(fit.std), fit.interpolation)
    return fit


def preprocessing(data: dict[str, Any]) -> Preprocess | ShorterSide:
    """A model's preprocessing from its dict, as it predicts: a :class:`Preprocess` (squash) or
    :class:`ShorterSide` (also for a resize and crop: see :func:`whole_image`)."""
    if data.get("resize_mode") == "shorter":
        return ShorterSide(int(data["resize"]), tuple(data["mean"]), tuple(data["std"]),
                           data.get("interpolation", "bilinear"))  # fmt: skip
    return whole_image(Preprocess.from_dict(data))


def deeplab_head(in_channels: int, num_classes: int, rates: list[int], channels: int | None = None) -> nn.Module:
    """torchvision's ``DeepLabHead`` (ASPP, 3x3 conv, batch norm, ReLU, 1x1 classifier); another width than its 256
    gives the same layers at that width."""
    from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead

    if channels in (None, 256):
        return DeepLabHead(in_channels, num_classes, tuple(rates))
    return nn.Sequential(ASPP(in_channels, tuple(rates), channels),
                         nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
                         nn.Conv2d(channels, num_classes, 1))  # fmt: skip


def _groups(channels: int) -> int:
    """GroupNorm groups: up to 32 (detectron2's), with two channels or more in each (a 1x1 map stays defined)."""
    groups = math.gcd(32, channels)
    while groups > 1 and channels // groups < 2:
        groups //= 2
    return groups


class FPNSemanticHead(nn.Module):
    """Panoptic FPN's semantic branch (Kirillov et al. 2019; detectron2's ``SemSegFPNHead``): torchvision's FPN over
    the stage maps, each level brought to the finest stride by 3x3 conv + GroupNorm + ReLU + 2x bilinear steps
    (one step per octave, at least one), summed, then a 1x1 classifier."""

    def __init__(self, in_channels: list[int], strides: list[int], num_classes: int, channels: int = 128) -> None:
        from torchvision.ops import FeaturePyramidNetwork

        super().__init__()
        self.fpn = FeaturePyramidNetwork(list(in_channels), channels)
        common = min(strides)
        self.scale_heads = nn.ModuleList()
        for stride in strides:
            steps = max(1, round(math.log2(stride / common)))
            layers: list[nn.Module] = []
            for _ in range(steps):
                layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                           nn.GroupNorm(_groups(channels), channels), nn.ReLU(inplace=True)]  # fmt: skip
                if stride > common:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.upsampled = [stride > common for stride in strides]
        self.predictor = nn.Conv2d(channels, num_classes, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        levels = self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))
        finest = next(f for f, up in zip(levels.values(), self.upsampled, strict=True) if not up)
        size = finest.shape[-2:]
        total = None
        for head, level, up in zip(self.scale_heads, levels.values(), self.upsampled, strict=True):
            y = head(level)
            if up:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            total = y if total is None else total + y
        return self.predictor(total)


class SemanticModel(nn.Module):
    """A backbone (``backbone``) and a head (``classifier``; ``aux_classifier`` in training): ``forward(x)`` gives
    class logits (N, K, H, W) at the input's size."""

    def __init__(self, backbone: Backbone, spec: SemanticSpec) -> None:
        from torchvision.models.segmentation.fcn import FCNHead
        from torchvision.models.segmentation.lraspp import LRASPPHead

        super().__init__()
        self.backbone = backbone.drop_head() if backbone.has_head else backbone
        self.spec = spec
        info = {s.name: s for s in self.backbone.stages}
        missing = [s for s in [*spec.stages, spec.aux_stage] if s and s not in info]
        if missing:
            raise SemanticError(f"{spec.backbone}: no stage {missing[0]} (stages: {', '.join(info)})")
        channels = [info[s].channels for s in spec.stages]
        k = spec.num_classes
        if spec.head == "fcn":
            self.classifier = FCNHead(channels[-1], k)
        elif spec.head == "deeplabv3":
            self.classifier = deeplab_head(channels[-1], k, spec.atrous_rates, spec.head_channels)
        elif spec.head == "lraspp":
            self.classifier = LRASPPHead(channels[0], channels[-1], k, spec.head_channels or 128)
        elif spec.head == "fpn":
            strides = [info[s].stride for s in spec.stages]
            self.classifier = FPNSemanticHead(channels, strides, k, spec.head_channels or 128)
        else:
            raise SemanticError(f"head {spec.head!r} is not one of {', '.join(HEAD_KINDS)}")
        self.aux_classifier = FCNHead(info[spec.aux_stage].channels, k) if spec.aux_stage else None

    @property
    def class_names(self) -> list[str]:
        return self.spec.class_names

    def head_logits(self, stages: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits at the head's own resolution, from a trunk pass already made (shared with other heads)."""
        names = self.spec.stages
        if self.spec.head == "lraspp":
            return self.classifier({"low": stages[names[0]], "high": stages[names[-1]]})
        if self.spec.head == "fpn":
            return self.classifier([stages[n] for n in names])
        return self.classifier(stages[names[-1]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head_logits(self.backbone.forward_stages(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"out": logits, "aux": auxiliary logits}`` at the input size (``aux`` when the model has that head)."""
        stages = self.backbone.forward_stages(x)
        out = {"out": F.interpolate(self.head_logits(stages), size=x.shape[-2:], mode="bilinear", align_corners=False)}
        if self.aux_classifier is not None:
            aux = self.aux_classifier(stages[self.spec.aux_stage])
            out["aux"] = F.interpolate(aux, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out


# -- building --------------------------------------------------------------------------------------------------------


def dilation_kwargs(backbone: str, output_stride: int | None) -> dict[str, Any]:
    """The backbone constructor's arguments that dilate its later stages to ``output_stride`` (8 or 16)."""
    if output_stride is None:
        return {}
    from cnnapps.backbones.registry import get_spec

    if output_stride not in (8, 16):
        raise SemanticError(f"output_stride: 8 or 16, not {output_stride}")
    family = get_spec(backbone).family
    if backbone in ("resnet50", "resnet101", "resnet152"):
        return {"replace_stride_with_dilation": [False, output_stride == 8, True]}
    if family == "resnet":
        raise SemanticError(
            f"{backbone}: torchvision's basic-block ResNets cannot be dilated; use resnet50, resnet101, resnet152 or "
            f"timm:{backbone} for output_stride {output_stride}"
        )
    if get_spec(backbone).source == "timm":
        return {"output_stride": output_stride}
    raise SemanticError(
        f"{backbone}: output_stride {output_stride} needs dilated stages, which torchvision ResNets and timm nets that "
        f"take output_stride (timm:resnet50, efficientnet_lite0, ...) have; {family} has not"
    )


def true_stages(trunk: Backbone, kwargs: dict[str, Any]) -> Backbone:
    """A torchvision ResNet built with ``replace_stride_with_dilation`` keeps strides 4, 8, 16, 32 in its stage
    information; put the true ones there (a dilated stage keeps its input's stride). timm reports them itself."""
    flags = kwargs.get("replace_stride_with_dilation")
    if not flags or not isinstance(trunk, SequentialBackbone) or len(trunk.stages) != len(flags) + 1:
        return trunk
    stages, stride = [trunk.stages[0]], trunk.stages[0].stride
    for info, dilated in zip(trunk.stages[1:], flags, strict=True):
        stride = stride if dilated else stride * 2
        stages.append(StageInfo(info.name, info.channels, stride))
    trunk.stages = tuple(stages)
    return trunk


def default_stages(head: str, trunk: Backbone) -> tuple[list[str], str | None]:
    """The stages a head reads on ``trunk``, and the stage an auxiliary FCN head would read (the one before last)."""
    stages = list(trunk.stages)
    aux = stages[-2].name if len(stages) > 1 else None
    if head == "lraspp":  # a stride-8 map for detail, and the last map for context
        low = min(stages[:-1] or stages, key=lambda s: (abs(math.log2(s.stride / 8)), -s.stride))
        return [low.name, stages[-1].name], aux
    if head == "fpn":
        usable = [s for s in stages if s.stride >= 4][-4:] or stages[-1:]
        return [s.name for s in usable], aux
    return [stages[-1].name], aux


def atrous_rates(output_stride: int) -> list[int]:
    """DeepLabV3's rates: (6, 12, 18) at output stride 16, doubled at 8, halved at 32."""
    return [max(1, r * 16 // output_stride) for r in (6, 12, 18)]


def create_semantic(
    head: str = "deeplabv3",
    backbone: str = "resnet50",
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    *,
    weights: str | os.PathLike | None = None,
    backbone_weights: str | os.PathLike | None = "imagenet",
    output_stride: int | None = None,
    aux_loss: bool = False,
    head_channels: int | None = None,
    ignore_index: int = 255,
    colours: list[list[int]] | None = None,
    **backbone_kwargs: Any,
) -> SemanticModel:
    """A semantic segmentation model: ``head`` (fcn, deeplabv3, lraspp, fpn) on registry ``backbone``.

    ``weights``: None, ``"coco"`` (torchvision's checkpoint for this head and backbone, through the hub cache) or a
    torchvision-format checkpoint file (``torch.save(model.state_dict())`` of ``fcn_resnet50`` and the like): the
    model is then built as torchvision builds it (output stride 8 for ResNets, 16 for MobileNetV3) and loaded; other
    classes than the checkpoint's get a new last layer. ``backbone_weights`` seeds the trunk otherwise.
    """
    if head not in HEAD_KINDS:
        raise SemanticError(f"head {head!r} is not one of {', '.join(HEAD_KINDS)}")
    state, meta, source = None, {}, str(weights)
    if isinstance(weights, str) and weights.lower() == "coco":
        name = zoo_name(head, backbone)
        state, meta, source = *_zoo_checkpoint(name), name
    elif weights is not None:
        from cnnapps.backbones.weights import load_state_dict_file

        state = load_state_dict_file(weights)
    wanted = list(class_names or [f"class{i}" for i in range(num_classes or 21)])
    if num_classes is not None and len(wanted) != num_classes:
        raise SemanticError(f"{len(wanted)} class names for {num_classes} classes")
    if state is not None:  # built as torchvision builds the checkpoint's model
        loaded = meta.get("categories") or [f"class{i}" for i in range(_checkpoint_classes(state, source))]
        output_stride = output_stride or (16 if backbone == MOBILENET else 8)
        aux_loss = aux_loss or any(k.startswith("aux_classifier.") for k in state)
        model = _build(head, backbone, list(loaded), None, output_stride, aux_loss, head_channels, ignore_index,
                       colours, backbone_kwargs, torchvision_layout=True)  # fmt: skip
        load_torchvision_state(model, state, source)
        if list(loaded) != wanted and (class_names or num_classes):
            retarget(model, wanted)
        return model
    return _build(head, backbone, wanted, backbone_weights, output_stride, aux_loss, head_channels, ignore_index,
                  colours, backbone_kwargs)  # fmt: skip


def _build(head: str, backbone: str, class_names: list[str], backbone_weights: Any, output_stride: int | None,
           aux_loss: bool, head_channels: int | None, ignore_index: int, colours: list[list[int]] | None,
           backbone_kwargs: dict[str, Any], torchvision_layout: bool = False) -> SemanticModel:  # fmt: skip
    if backbone == MOBILENET:
        trunk = torchvision_mobilenet_v3_large()
        kwargs: dict[str, Any] = {}
    else:
        from cnnapps.backbones import create_backbone

        kwargs = {**backbone_kwargs, **dilation_kwargs(backbone, output_stride)}
        try:
            trunk = create_backbone(backbone, weights=backbone_weights, **kwargs)
        except (TypeError, NotImplementedError) as exc:
            raise SemanticError(f"{backbone}: cannot be built with {kwargs} ({exc})") from None
        true_stages(trunk, kwargs)
    spec = new_spec(head, backbone, trunk, class_names, output_stride, aux_loss, head_channels, ignore_index, colours)
    if torchvision_layout:  # torchvision's own choices: DeepLab's rates (12, 24, 36), LR-ASPP's and the aux stage
        spec.atrous_rates = [12, 24, 36]
        if backbone == MOBILENET:
            spec.stages = ["C3", "C4c"] if head == "lraspp" else ["C4c"]
            spec.aux_stage = "C3" if aux_loss else None
    model = SemanticModel(trunk, spec)
    model.trunk_kwargs = kwargs
    return model


def new_spec(head: str, backbone: str, trunk: Backbone, class_names: list[str], output_stride: int | None,
             aux_loss: bool, head_channels: int | None, ignore_index: int, colours: list[list[int]] | None,
             shared: bool = False) -> SemanticSpec:  # fmt: skip
    stages, aux = default_stages(head, trunk)
    last = {s.name: s.stride for s in trunk.stages}[stages[-1]]
    from cnnapps.datasets.semantic import voc_colormap

    palette = [list(c) for c in (colours or voc_colormap(len(class_names)))]
    return SemanticSpec(head, backbone, len(class_names), list(class_names), palette, stages, aux if aux_loss else None,
                        head_channels, atrous_rates(last), output_stride, ignore_index, shared)  # fmt: skip


def create_shared_semantic(trunk: Backbone, trunk_name: str, head: str, class_names: list[str], *,
                           head_channels: int | None = None, aux_loss: bool = False, ignore_index: int = 255,
                           colours: list[list[int]] | None = None) -> SemanticModel:  # fmt: skip
    """A head on a frozen trunk shared with other heads: the trunk stays exactly as it is (no dilation, nothing
    trained), so one trunk pass serves this head and every other head of a multi-head model file."""
    spec = new_spec(head, trunk_name, trunk, class_names, None, aux_loss, head_channels, ignore_index, colours, True)
    model = SemanticModel(trunk, spec)
    model.trunk_kwargs = {}
    return model


def retarget(model: SemanticModel, class_names: list[str]) -> SemanticModel:
    """New, untrained last layers for other classes (fine-tuning a checkpoint on your labels)."""
    spec, k = model.spec, len(class_names)

    def fresh(conv: nn.Conv2d) -> nn.Conv2d:
        return nn.Conv2d(conv.in_channels, k, conv.kernel_size, bias=conv.bias is not None)

    head = model.classifier
    if spec.head == "lraspp":
        head.low_classifier, head.high_classifier = fresh(head.low_classifier), fresh(head.high_classifier)
    elif spec.head == "fpn":
        head.predictor = fresh(head.predictor)
    else:
        head[-1] = fresh(head[-1])
    if model.aux_classifier is not None:
        model.aux_classifier[-1] = fresh(model.aux_classifier[-1])
    from cnnapps.datasets.semantic import voc_colormap

    spec.num_classes, spec.class_names = k, list(class_names)
    spec.colours = [list(c) for c in voc_colormap(k)]
    return model


def torchvision_mobilenet_v3_large() -> SequentialBackbone:
    """torchvision's dilated MobileNetV3-Large features (as its segmentation models use them), split into stages
    that end at the blocks it reads: C1 (16, /2), C2 (24, /4), C3 (40, /8), C4 (80, /16), C4b (160, /16, dilated),
    C4c (960, /16)."""
    from torchvision.models import mobilenet_v3_large

    features = mobilenet_v3_large(weights=None, dilated=True).features
    cuts = [0] + [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)] + [len(features) - 1]
    stages, start = [], 0
    names = ["C1", "C2", "C3", "C4", "C4b", "C4c"]
    strides = [2, 4, 8, 16, 16, 16]
    for name, stride, end in zip(names, strides, cuts, strict=True):
        blocks = nn.Sequential(OrderedDict((str(i), features[i]) for i in range(start, end + 1)))
        stages.append((StageInfo(name, features[end].out_channels, stride), blocks))
        start = end + 1
    return SequentialBackbone(MOBILENET, stages, None, 0, Preprocess(), weights="torchvision features")


def _checkpoint_classes(state: dict[str, torch.Tensor], source: str) -> int:
    for key in ("classifier.4.weight", "classifier.high_classifier.weight"):
        if key in state:
            return int(state[key].shape[0])
    raise SemanticError(f"{source}: not a torchvision segmentation checkpoint (no classifier.4 or LR-ASPP classifier)")


def zoo_name(head: str, backbone: str) -> str:
    from cnnapps.apps.semantic.zoo import ZOO

    for name, (zoo_head, zoo_backbone, _, _, _) in ZOO.items():
        if (zoo_head, zoo_backbone) == (head, backbone):
            return name
    available = ", ".join(f"{n} ({h} on {b})" for n, (h, b, _, _, _) in ZOO.items())
    raise SemanticError(f"no torchvision checkpoint for {head} on {backbone}; available: {available}")


def _zoo_checkpoint(name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import torchvision.models.segmentation as segmentation

    from cnnapps.apps.semantic.zoo import ZOO
    from cnnapps.backbones.weights import cached_download, load_state_dict_file

    _, _, enum_name, member, _ = ZOO[name]
    enum = getattr(segmentation, enum_name)[member]
    return load_state_dict_file(cached_download(enum.url)), dict(enum.meta)


def load_torchvision_state(model: SemanticModel, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a torchvision segmentation state dict: the trunk (``backbone.*``) matched in order with shape checks (our
    stages group torchvision's layers), the heads (``classifier.*``, ``aux_classifier.*``) by name."""
    ours = model.state_dict()
    counter = "num_batches_tracked"
    trunk_ours = [k for k in ours if k.startswith("backbone.") and not k.endswith(counter)]
    trunk_theirs = [k for k in state if k.startswith("backbone.") and not k.endswith(counter)]
    if len(trunk_ours) != len(trunk_theirs):
        raise SemanticError(f"{source}: its backbone has {len(trunk_theirs)} tensors, {model.spec.backbone}'s "
                            f"{len(trunk_ours)}; they do not fit")  # fmt: skip
    mapped = {k: v for k, v in state.items() if not k.startswith("backbone.") and not k.endswith(counter)}
    for mine, theirs in zip(trunk_ours, trunk_theirs, strict=True):
        mapped[mine] = state[theirs]
    for key, value in mapped.items():
        if key not in ours:
            raise SemanticError(f"{source}: {key} has no place in a {model.spec.head} model on {model.spec.backbone}")
        if tuple(ours[key].shape) != tuple(value.shape):
            raise SemanticError(f"{source}: {key} has shape {tuple(value.shape)}, this model needs "
                                f"{tuple(ours[key].shape)}")  # fmt: skip
    missing = [k for k in ours if k not in mapped and not k.endswith(counter)]
    if missing:
        raise SemanticError(f"{source}: not a checkpoint for this model (missing {', '.join(missing[:3])})")
    model.load_state_dict(mapped, strict=False)


# -- model files -----------------------------------------------------------------------------------------------------


class SemanticHead:
    """The semantic head in model files: the head's layers over the trunk's stage maps (the spec says which)."""

    trunk_path = "backbone"
    kinds = HEAD_KINDS

    def describe(self, model: SemanticModel) -> Any:
        from cnnapps.apps.modelfile import HeadInfo

        spec = model.spec
        kwargs = {k: v for k, v in spec.to_dict().items() if k not in ("class_names",)}
        return HeadInfo(TASK, spec.head, kwargs, list(spec.class_names))

    def build(self, trunk: Backbone, info: Any, preprocess: dict[str, Any], model_file: Any) -> SemanticModel:
        spec = SemanticSpec.from_dict({**info.kwargs, "class_names": list(info.labels)})
        if spec.num_classes != len(spec.class_names):
            raise SemanticError(
                f"{model_file.path}: {len(spec.class_names)} class names for {spec.num_classes} classes"
            )
        spec.backbone = model_file.trunk["name"]
        kwargs = dict(model_file.trunk.get("kwargs", {}))
        true_stages(trunk, kwargs)
        model = SemanticModel(trunk, spec)
        model.trunk_kwargs = kwargs
        return model

    def from_v1(self, meta: dict[str, Any]) -> tuple[dict[str, Any], Any, dict[str, Any]]:
        from cnnapps.apps.modelfile import HeadInfo

        spec = SemanticSpec.from_dict(meta["semantic"])
        kwargs = {k: v for k, v in spec.to_dict().items() if k != "class_names"}
        trunk = {"name": spec.backbone, "kwargs": meta.get("backbone_kwargs", {})}
        return trunk, HeadInfo(TASK, spec.head, kwargs, list(spec.class_names)), meta["preprocess"]

    def predict_shared(self, model: SemanticModel, shared: Any, options: dict[str, Any]) -> list[Any]:
        """Class maps in each image's frame from a trunk pass shared with other heads."""
        from cnnapps.apps.semantic.predictor import to_image_frame, warn_outside
        from cnnapps.apps.semantic.result import SemanticResult

        logits = model.head_logits(shared.stages)
        logits = F.interpolate(logits, size=shared.images.shape[-2:], mode="bilinear", align_corners=False)
        results, alone = [], "semantic head (loaded alone, task='semantic', it sees the whole image)"
        for row, size, geometry in zip(logits, shared.sizes, shared.geometries, strict=True):
            warn_outside(model.backbone, alone, size, geometry, tuple(shared.images.shape[-2:]))
            labels = to_image_frame(row, size, geometry).argmax(0)
            results.append(SemanticResult("", labels=labels.to(torch.uint8 if model.spec.num_classes <= 256
                                                                else torch.int32).cpu().numpy(),
                                          class_names=model.class_names, colours=model.spec.colours))  # fmt: skip
        return results


HEAD = SemanticHead()


def save_semantic(
    path: str | os.PathLike,
    model: SemanticModel,
    preprocess: Preprocess,
    metrics: dict[str, Any] | None = None,
    trunk_kwargs: dict[str, Any] | None = None,
) -> None:
    """Write a self-describing model file: the trunk (with the arguments that dilate it), the head, the classes and
    their colours, the preprocessing."""
    from cnnapps.apps.modelfile import save_model

    if model.spec.backbone == MOBILENET:
        raise SemanticError(f"{MOBILENET}: torchvision's MobileNetV3 is not in the backbone registry, so a model on it "
                            "cannot be written as a model file (export it to ONNX instead)")  # fmt: skip
    kwargs = trunk_kwargs if trunk_kwargs is not None else getattr(model, "trunk_kwargs", {})
    save_model(path, TASK, model, model.spec.backbone, kwargs, preprocess.to_dict(), metrics)


def load_semantic(spec: str | os.PathLike, head: str | None = None) -> tuple[SemanticModel, Any]:
    """A model and its preprocessing, from a model file (its semantic head) or a torchvision model name (its
    checkpoint through the hub cache; offline, the error names the file, its URL and where to put it)."""
    from cnnapps.apps.modelfile import build_model, read_model_file, refuse_head
    from cnnapps.apps.semantic.zoo import ZOO
    from cnnapps.bundle import is_bundle_path

    if str(spec) in ZOO:
        refuse_head(head, spec, "a torchvision model name")
        zoo_head, backbone, _, _, resize = ZOO[str(spec)]
        return create_semantic(zoo_head, backbone, weights="coco").eval(), ShorterSide(resize)
    if not is_bundle_path(spec):
        raise SemanticError(f"{spec}: not a semantic model file or one of {', '.join(ZOO)}")
    model_file = read_model_file(spec)
    if head is None:
        found = [n for n, h in model_file.heads.items() if h.task == TASK]
        head = found[0] if len(found) == 1 else None
    model = build_model(model_file, head, TASK)
    try:
        return model, preprocessing(model_file.preprocess)
    except (TypeError, ValueError, KeyError) as exc:
        raise SemanticError(f"{model_file.path}: preprocess: {exc}") from None


def exportable(spec: str | os.PathLike, task: str | None = None, **options: Any) -> Any:
    """The model of ``spec`` for ``cnnapps export`` (ONNX): preprocessed images (N, 3, H, W) of any size -> class
    logits (N, K, H, W); the file carries the classes, their colours and the preprocessing."""
    from cnnapps.exported import Exportable

    model, fit = load_semantic(spec, options.get("head"))
    meta = {"task": TASK, "class_names": model.class_names, "colours": model.spec.colours, "preprocess": fit.to_dict(),
            "semantic": model.spec.to_dict()}  # fmt: skip
    dynamic = {"images": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
    return Exportable(model.eval(), meta, torch.zeros(1, *fit.input_size), ["images"], ["logits"], dynamic)
