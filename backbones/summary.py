"""The lecture's per-layer table: output volume, parameters and activations of every layer.

A row is a layer that holds parameters or changes the activation volume (conv, pool,
fc, norm); element-wise layers (ReLU, dropout, flatten) add nothing to either column.
Totals count every parameter of the model, including any not used in the forward pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class LayerRow:
    name: str
    kind: str
    output: tuple[int, ...]  # (H, W, C) for maps, (1, 1, N) for vectors
    params: int
    activations: int

    @property
    def volume(self) -> str:
        return "x".join(str(d) for d in self.output)


@dataclass
class Summary:
    model: str
    input_size: tuple[int, int, int]  # (C, H, W)
    rows: list[LayerRow] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0

    @property
    def input_activations(self) -> int:
        c, h, w = self.input_size
        return c * h * w

    @property
    def total_activations(self) -> int:
        """Input plus every row's output: the values a forward pass keeps for one image."""
        return self.input_activations + sum(r.activations for r in self.rows)

    @property
    def forward_memory_mb(self) -> float:
        """Activation memory of one image's forward pass at fp32, in MB (10^6 bytes)."""
        return self.total_activations * 4 / 1e6

    @property
    def params_memory_mb(self) -> float:
        return self.total_params * 4 / 1e6

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input_size": list(self.input_size),
            "layers": [{**asdict(r), "output": list(r.output)} for r in self.rows],
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "total_activations": self.total_activations,
            "forward_memory_mb": round(self.forward_memory_mb, 3),
            "params_memory_mb": round(self.params_memory_mb, 3),
        }


def describe_layer(module: nn.Module) -> str:
    """Short lecture-style description: ``conv 3x3/1, 64``, ``maxpool 2x2/2``, ``fc 4096``."""

    def pair(v: Any) -> str:
        v = v if isinstance(v, tuple) else (v, v)
        return f"{v[0]}x{v[1]}" if v[0] != v[1] else f"{v[0]}x{v[0]}"

    def single(v: Any) -> Any:
        return v[0] if isinstance(v, tuple) else v

    if isinstance(module, nn.Conv2d):
        groups = f", groups {module.groups}" if module.groups > 1 else ""
        return f"conv {pair(module.kernel_size)}/{single(module.stride)}, {module.out_channels}{groups}"
    if isinstance(module, nn.MaxPool2d):
        return f"maxpool {pair(module.kernel_size)}/{single(module.stride)}"
    if isinstance(module, nn.AvgPool2d):
        return f"avgpool {pair(module.kernel_size)}/{single(module.stride)}"
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return f"{type(module).__name__.lower().replace('adaptive', 'adaptive ')} -> {pair(module.output_size)}"
    if isinstance(module, nn.Linear):
        return f"fc {module.out_features}"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    if isinstance(module, nn.LocalResponseNorm):
        return f"lrn size {module.size}"
    return type(module).__name__


def summarize(
    model: nn.Module, input_size: tuple[int, int, int] | int | None = None, name: str | None = None
) -> Summary:
    """Run one zero image through ``model`` and tabulate its layers.

    ``input_size``: (C, H, W), or one side length (channels from the model's preprocessing
    spec); defaults to the model's own input size when it has a ``preprocess`` spec.
    """
    spec = getattr(model, "preprocess", None)
    default = tuple(spec.input_size) if spec is not None else (3, 224, 224)
    if input_size is None:
        input_size = default
    elif isinstance(input_size, int):
        input_size = (default[0], input_size, input_size)
    summary = Summary(model=name or getattr(model, "name", type(model).__name__), input_size=tuple(input_size))

    seen: set[int] = set()
    handles = []

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(out, torch.Tensor):
            return
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        params = sum(p.numel() for p in own)
        first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        changes_volume = first is None or first.numel() != out.numel()
        is_leaf = next(module.children(), None) is None
        if params == 0 and not (is_leaf and changes_volume):
            return
        shape = tuple(out.shape[1:])
        output_dims = (shape[1], shape[2], shape[0]) if len(shape) == 3 else (1, 1, int(out[0].numel()))
        summary.rows.append(
            LayerRow(qualified[module], describe_layer(module), output_dims, params, int(out[0].numel()))
        )

    qualified = {}
    for qname, module in model.named_modules():
        if qname:
            qualified.setdefault(module, qname)
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            model(torch.zeros(1, *summary.input_size, device=device))
    except (RuntimeError, ValueError, AssertionError) as exc:  # a size its kernels, pools or fixed head cannot take
        from cnnapps.errors import CnnappsError, in_one_line

        _, h, w = summary.input_size
        raise CnnappsError(
            f"input {h}x{w}: {summary.model} cannot take images of this size ({in_one_line(exc)}); "
            f"its own size is {default[1]}x{default[2]}"
        ) from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    all_params = {id(p): p for p in model.parameters()}
    unused = sum(p.numel() for pid, p in all_params.items() if pid not in seen)
    if unused:
        summary.rows.append(LayerRow("(not used in forward)", "parameters", (0,), unused, 0))
    summary.total_params = sum(p.numel() for p in all_params.values())
    summary.trainable_params = sum(p.numel() for p in all_params.values() if p.requires_grad)
    return summary
