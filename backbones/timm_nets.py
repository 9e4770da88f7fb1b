"""Any timm model behind :class:`Backbone`, and the bundled EfficientNet-Lite0.

Stage maps come from timm's ``forward_intermediates`` and ``feature_info`` (channels,
reduction, module), the head and embedding from ``forward_head``: the model stays whole,
so timm checkpoints load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cnnapps.backbones.features import Backbone, StageInfo, stage_name
from cnnapps.backbones.preprocess import Preprocess
from cnnapps.backbones.registry import TIMM_PREFIX, WeightsArg, lite0_padding
from cnnapps.backbones.weights import (
    as_local_file,
    cached_download,
    is_pretrained_alias,
    load_into,
    load_state_dict_file,
    verified_bundled_path,
)
from cnnapps.errors import UnknownModelError, WeightsError


class TimmBackbone(Backbone):
    def __init__(
        self,
        name: str,
        model: nn.Module,
        preprocess: Preprocess,
        class_names: Sequence[str] | None,
        weights: str,
    ) -> None:
        infos = list(model.feature_info)
        taken: list[str] = []
        stages = []
        for info in infos:
            stage = StageInfo(stage_name(int(info["reduction"]), taken), int(info["num_chs"]), int(info["reduction"]))
            taken.append(stage.name)
            stages.append(stage)
        embedding_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
        super().__init__(name, stages, embedding_dim, int(model.num_classes), preprocess, class_names, weights)
        self.model = model
        self._stage_modules = [str(info["module"]) for info in infos]

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not hasattr(self.model, "forward_intermediates"):
            raise NotImplementedError(f"{self.name}: this timm model does not expose stage features")
        maps = self.model.forward_intermediates(x, intermediates_only=True)
        return {info.name: fmap for info, fmap in zip(self.stages, maps, strict=True)}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def forward_shared(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if not hasattr(self.model, "forward_intermediates"):
            return super().forward_shared(x)
        features, maps = self.model.forward_intermediates(x)  # one pass: the stage maps, then the final map
        return {info.name: fmap for info, fmap in zip(self.stages, maps, strict=True)}, features

    def forward_embedding(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(features, pre_logits=True)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        if not self.has_head:
            raise RuntimeError(f"{self.name} has no classification head")
        return self.model.forward_head(features)

    def drop_head(self) -> TimmBackbone:
        self.model.reset_classifier(0)
        self.num_classes, self.class_names = 0, None
        return self

    def stage_parameters(self) -> list[list[nn.Parameter]]:
        """Group parameters by the last stage module that comes at or after their owner in module order. Those after
        the last stage that still make the feature map (EfficientNet's ``conv_head`` and ``bn2``) go with the last
        stage, so freezing every stage freezes the whole trunk; the classifier belongs to no stage."""
        order = {name: i for i, (name, _) in enumerate(self.model.named_modules())}
        bounds = []
        for prefix in self._stage_modules:
            bounds.append(max(i for n, i in order.items() if n == prefix or n.startswith(prefix + ".")))
        classifier = {id(p) for p in self.model.get_classifier().parameters()}
        groups: list[list[nn.Parameter]] = [[] for _ in bounds]
        for pname, param in self.model.named_parameters():
            if id(param) in classifier:
                continue
            owner = order[pname.rpartition(".")[0]]
            groups[next((i for i, bound in enumerate(bounds) if owner <= bound), len(bounds) - 1)].append(param)
        return groups


def import_timm() -> Any:
    """timm, imported without wandb: timm.utils imports wandb whenever it is installed (a second of a model's load
    on 2 cores, for logging cnnapps never asks of timm). A program that imported wandb itself keeps it for timm."""
    import sys

    if "timm" in sys.modules or "wandb" in sys.modules:
        import timm

        return timm
    sys.modules["wandb"] = None  # type: ignore[assignment]  # `import wandb` raises ImportError: timm goes on
    try:
        import timm
    finally:
        if sys.modules.get("wandb", 0) is None:
            del sys.modules["wandb"]
    return timm


def pretrained_source(model_name: str) -> tuple[str, str] | None:
    """(URL, cache filename) of a timm model's default pretrained weights, or None if it has none.

    Prefers the Hugging Face hub's safetensors file; falls back to the legacy release URL.
    """
    import_timm()
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        repo = cfg.hf_hub_id.rstrip("/")
        if repo == "timm":
            repo = f"timm/{cfg.architecture}.{cfg.tag}" if cfg.tag else f"timm/{cfg.architecture}"
        filename = cfg.hf_hub_filename or "model.safetensors"
        return f"https://huggingface.co/{repo}/resolve/main/{filename}", f"{repo.replace('/', '--')}--{filename}"
    if cfg.url:
        return cfg.url, cfg.url.split("/")[-1]
    return None


def build(name: str, weights: WeightsArg = None, **kwargs: Any) -> TimmBackbone:
    """Build ``timm:<model>``; ``kwargs`` go to ``timm.create_model``."""
    timm = import_timm()

    model_name = name[len(TIMM_PREFIX) :] if name.startswith(TIMM_PREFIX) else name
    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('.')[0]}*")[:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise UnknownModelError(f"{name}: not a timm model{hint}")

    local = as_local_file(weights)
    if weights is None or local is not None:
        model = timm.create_model(model_name, pretrained=False, **kwargs)
        description = "random init"
        if local is not None:
            load_into(model, load_state_dict_file(local), str(local))
            description = str(local)
    else:
        if not is_pretrained_alias(weights):  # a pretrained tag such as "a1_in1k"
            model_name = f"{model_name.split('.')[0]}.{weights}"
        source = pretrained_source(model_name)
        if source is None:
            raise WeightsError(f"{name}: timm has no pretrained weights for {model_name}")
        path = cached_download(*source)
        model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        description = f"timm {model.pretrained_cfg.get('architecture')}.{model.pretrained_cfg.get('tag')}"

    config = timm.data.resolve_data_config(model=model)
    preprocess = Preprocess.from_crop_pct(
        tuple(config["input_size"]),
        config["crop_pct"],
        interpolation=config["interpolation"] if config["interpolation"] in ("bilinear", "bicubic") else "bilinear",
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
    )
    class_names = _class_names(model) if weights is not None and local is None else None
    return TimmBackbone(name, model, preprocess, class_names, description)


def _class_names(model: nn.Module) -> list[str] | None:
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model)
    if subset is None:
        return None
    if subset == "imagenet-1k":
        from cnnapps.backbones.torchvision_nets import imagenet_categories

        return imagenet_categories()
    return [d.split(",")[0] for d in ImageNetInfo(subset).label_descriptions()]


#: Lite0's two paddings: "same" is TensorFlow's (asymmetric for stride 2, batch-norm epsilon 1e-3), the network the
#: bundled weights were trained in; "symmetric" is timm's ``efficientnet_lite0`` (PyTorch-trained weights such as
#: timm's own checkpoints, and the model files cnnapps wrote before it recorded the padding)
LITE0_PADDINGS = {"same": "tf_efficientnet_lite0", "symmetric": "efficientnet_lite0"}


def build_efficientnet_lite0(
    name: str = "efficientnet_lite0", weights: WeightsArg = None, padding: str | None = None, **kwargs: Any
) -> TimmBackbone:
    """EfficientNet-Lite0; ``weights="imagenet"`` loads the bundled, sha256-checked file.

    The bundled file comes from TensorFlow (lukemelas EfficientNet key names; its tensors map one-to-one, in order,
    onto timm's, shapes checked) and runs in the network it was trained in: ``padding="same"`` (timm's
    ``tf_efficientnet_lite0``, whose answers equal the file's own PyTorch port's). ``padding=None`` is "same" but for
    a local weights file, which is read as timm's ``efficientnet_lite0`` checkpoint ("symmetric"). The padding used
    is recorded in :attr:`Backbone.settings`, so a model file rebuilds the same network. Its weights expect
    TF-style normalisation.
    """
    timm = import_timm()

    local = as_local_file(weights)
    padding = padding or lite0_padding(weights)
    if padding not in LITE0_PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(LITE0_PADDINGS)}, not {padding!r}")
    architecture = LITE0_PADDINGS[padding]
    if weights is None or local is not None:
        backbone = build(f"{TIMM_PREFIX}{architecture}", weights, **kwargs)
        backbone.name = name
    else:
        if not is_pretrained_alias(weights):
            raise WeightsError(f"{name}: unknown weights {weights!r} (use imagenet, none or a file path)")
        path = verified_bundled_path(name)
        model = timm.create_model(architecture, pretrained=False, **kwargs)
        load_into(model, map_lukemelas_keys(load_state_dict_file(path), model.state_dict(), str(path)), str(path))
        from cnnapps.backbones.torchvision_nets import imagenet_categories

        preprocess = Preprocess(interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        description = f"bundled {path.name}, {padding} padding"  # in a registry name's embedding fingerprint
        backbone = TimmBackbone(name, model, preprocess, imagenet_categories(), description)
    backbone.settings = {"padding": padding}
    return backbone


def map_lukemelas_keys(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """Rename tensors one-to-one in order (ignoring BN step counters), checking every shape."""
    src_keys = [k for k in state if not k.endswith("num_batches_tracked")]
    dst_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src_keys) != len(dst_keys):
        raise WeightsError(f"{source}: {len(src_keys)} tensors, the model has {len(dst_keys)}")
    mapped = {}
    for src, dst in zip(src_keys, dst_keys, strict=True):
        if state[src].shape != target[dst].shape:
            raise WeightsError(
                f"{source}: {src} {tuple(state[src].shape)} does not fit {dst} {tuple(target[dst].shape)}"
            )
        mapped[dst] = state[src]
    for key, value in target.items():
        if key.endswith("num_batches_tracked"):
            mapped[key] = value
    return mapped


def static_same_padding(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``model`` for inputs of ``example``'s height and width only, as fast as symmetric padding runs: a copy whose
    TensorFlow-padded convolutions (timm's ``Conv2dSame``, Lite0's five stride-2 ones) are plain convolutions, or
    ``model`` itself when it has none.

    ``Conv2dSame`` pads each input before convolving: a copy of the map, and in a frozen TorchScript graph a change
    out of oneDNN's memory layout and back; Lite0 ran at half its speed there (59 against 125 images/s on 2 cores)
    and at 0.7x in onnxruntime. At a known size the padding is known: equal on both sides (an odd input) is the
    convolution's own padding; one more after than before (an even input, stride 2) is a kernel one tap larger,
    its first row and column zero, padded by the larger amount on both sides (the same products, and zeros). Other
    cases (dilation) keep their ``Conv2dSame``."""
    same = [name for name, module in model.named_modules() if type(module).__name__ == "Conv2dSame"]
    if not same:  # told without importing timm: most models have none
        return model
    import copy

    from timm.layers.padding import get_same_padding

    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        model.get_submodule(name).register_forward_pre_hook(
            lambda _, args, name=name: sizes.__setitem__(name, tuple(int(v) for v in args[0].shape[-2:]))
        )
        for name in same
    ]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for hook in hooks:
            hook.remove()
    model = copy.deepcopy(model)
    for name in same:
        conv = model.get_submodule(name)
        sides = zip(sizes[name], conv.kernel_size, conv.stride, conv.dilation, strict=True)
        plain = _plain_conv(conv, [get_same_padding(size, k, s, d) for size, k, s, d in sides])
        if plain is not None:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, plain)
    return model


def _plain_conv(conv: nn.Conv2d, totals: list[int]) -> nn.Conv2d | None:
    """An ``nn.Conv2d`` computing ``conv`` on inputs padded by ``totals`` (per dimension, split TensorFlow's way:
    the odd one after), or None where no symmetric padding can (a dilated kernel padded unevenly)."""
    grow, padding = [], []
    for total, dilation in zip(totals, conv.dilation, strict=True):
        before, after = total // 2, total - total // 2
        if after != before and dilation != 1:
            return None
        grow.append(after - before)
        padding.append(after)
    kernel = tuple(k + g for k, g in zip(conv.kernel_size, grow, strict=True))
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, kernel, conv.stride, tuple(padding), conv.dilation,
                      conv.groups, conv.bias is not None)  # fmt: skip
    with torch.no_grad():
        weight = torch.zeros_like(plain.weight)
        weight[:, :, grow[0] :, grow[1] :] = conv.weight
        plain.weight.copy_(weight)
        if conv.bias is not None:
            plain.bias.copy_(conv.bias)
    return plain.to(conv.weight.device, conv.weight.dtype).train(conv.training)
