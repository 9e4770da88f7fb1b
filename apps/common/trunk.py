"""A trunk's one pass over a preprocessed batch, as fast as the device allows: what heads that share it read."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnnapps.runtime import example_batch, memory_for_input, prepare_runner


class _TrunkPass(nn.Module):
    """The trunk's pass as a tuple of tensors (every stage's map, then the last feature map), so that it traces."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        stages, features = self.trunk.forward_shared(x)
        return (*stages.values(), features)


class TrunkRunner:
    """``runner(batch) -> (stage maps by name, last feature map)``, compiled as classifiers are (on a CPU a frozen
    TorchScript graph with batch norm folded into the convolutions: here many times eager speed; on a GPU
    channels_last and fp16 autocast); ``engine="eager"`` runs the module as it is, the ONNX engines its exported
    graph. ``engine`` after loading: the engine that runs it."""

    def __init__(self, trunk: Any, input_size: tuple[int, int, int], batch_size: int, device: torch.device,
                 engine: str = "auto", owned: bool = True, name: str = "the backbone") -> None:  # fmt: skip
        self.names = [s.name for s in trunk.stages]
        example = example_batch(input_size, batch_size)
        # a trunk the predictor loaded itself is placed in place (one copy of its weights); a caller's is copied
        with memory_for_input(name, input_size, device):
            self._run, self.engine = prepare_runner(_TrunkPass(trunk), example, device, engine, owned=owned)

    def __call__(self, batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        *maps, features = self._run(batch)
        return dict(zip(self.names, maps, strict=True)), features
