"""The one interface every backbone exposes, whatever library its layers come from.

A :class:`Backbone` gives stage feature maps (with channels and strides, for FPNs and
dense heads), the last feature map, a pooled embedding, the original classification
head when its weights carry one, ``freeze(n_stages)`` and its preprocessing spec.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from cnnapps.backbones.preprocess import Preprocess
from cnnapps.errors import CnnappsError


class FreezeError(CnnappsError, ValueError):
    """More stages to freeze than the backbone has (a setting's error: one line, exit 2)."""


@dataclass(frozen=True)
class StageInfo:
    """One stage output: its name (``C<log2 stride>``), channel count and stride in pixels."""

    name: str
    channels: int
    stride: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stage_name(stride: int, taken: Sequence[str] = ()) -> str:
    """``C2`` for stride 4, ``C5`` for stride 32; a repeated stride gets a suffix (``C5b``)."""
    name = f"C{max(stride.bit_length() - 1, 0)}"
    suffix = 0
    while (name if suffix == 0 else f"{name}{chr(ord('a') + suffix)}") in taken:
        suffix += 1
    return name if suffix == 0 else f"{name}{chr(ord('a') + suffix)}"


class Backbone(nn.Module):
    """Common interface; subclasses implement the four ``_``-free forward methods below.

    ``forward(x)`` returns class logits when the backbone has a head (``num_classes > 0``),
    else the pooled embedding.
    """

    def __init__(
        self,
        name: str,
        stages: Sequence[StageInfo],
        embedding_dim: int,
        num_classes: int,
        preprocess: Preprocess,
        class_names: Sequence[str] | None = None,
        weights: str = "random init",
    ) -> None:
        super().__init__()
        self.name = name
        self.stages = tuple(stages)
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.preprocess = preprocess
        self.class_names = list(class_names) if class_names is not None else None
        self.weights = weights
        #: constructor settings no tensor holds that a model file must record to rebuild this trunk as it is
        self.settings: dict[str, Any] = {}
        self._frozen_stages = 0
        self._frozen_all = False

    # -- what subclasses provide -------------------------------------------------------
    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output, keyed by :attr:`StageInfo.name`, shallow to deep."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (N, C, H, W): what the head and the embedding pool."""
        raise NotImplementedError

    def forward_shared(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every stage's output and the last feature map from one pass: what heads sharing this trunk read."""
        return self.forward_stages(x), self.forward_features(x)

    def forward_embedding(self, features: torch.Tensor) -> torch.Tensor:
        """Pool a feature map into an (N, embedding_dim) vector."""
        return torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def stage_parameters(self) -> list[list[nn.Parameter]]:
        """Parameters grouped by stage (the stem belongs to the first stage)."""
        raise NotImplementedError

    def drop_head(self) -> Backbone:
        """Remove the original classification head (a task head replaces it); ``forward`` then embeds."""
        raise NotImplementedError

    # -- shared behaviour ----------------------------------------------------------------
    @property
    def has_head(self) -> bool:
        return self.num_classes > 0

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_embedding(self.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.forward_features(x)
        return self.forward_head(features) if self.has_head else self.forward_embedding(features)

    def freeze(self, n_stages: int) -> Backbone:
        """Freeze the stem and the first ``n_stages`` stages (0 unfreezes all).

        Frozen parameters stop receiving gradients and frozen batch-norm layers keep
        their running statistics (they stay in eval mode even under ``train()``).
        """
        groups = self.stage_parameters()
        if not 0 <= n_stages <= len(groups):
            raise FreezeError(f"freeze: {self.name} has {len(groups)} stages; freeze takes 0..{len(groups)}, not "
                              f"{n_stages}")  # fmt: skip
        for i, group in enumerate(groups):
            for p in group:
                p.requires_grad_(i >= n_stages)
        self._frozen_stages = n_stages
        # after freeze_all(), stages left trainable train again; freezing every stage keeps the trunk whole
        self._frozen_all = self._frozen_all and n_stages == len(groups)
        return self.train(self.training)

    def freeze_all(self) -> Backbone:
        """Freeze every parameter and keep every layer in eval mode, even under ``train()``: a trunk shared by
        several heads stays exactly as it is (batch-norm statistics included) while a head trains on it."""
        for p in self.parameters():
            p.requires_grad_(False)
        self._frozen_stages = len(self.stages)
        self._frozen_all = True
        return self.train(self.training)

    def freeze_past_stages(self) -> Backbone:
        """Stop training the parameters no stage map depends on (layers after the last stage, such as EfficientNet's
        ``conv_head`` and ``bn2``, and a classification head), for a task that reads only :meth:`forward_stages`:
        they would never get a gradient, which plain DDP refuses. Their weights stay as they are.

        Found by one pass of a zero image in eval mode (no batch-norm statistics change, no random draws): the
        parameters its autograd graph reaches, read from the graph without a backward pass."""
        trained = [p for p in self.parameters() if p.requires_grad]
        if not trained:
            return self
        training = self.training
        self.eval()
        try:
            x = torch.zeros(1, *self.preprocess.input_size, dtype=trained[0].dtype, device=trained[0].device)
            reached = _graph_leaves([m for m in self.forward_stages(x).values() if m.requires_grad])
        finally:
            self.train(training)
        for p in trained:
            if id(p) not in reached:
                p.requires_grad_(False)
        return self

    def unfreeze(self) -> Backbone:
        for p in self.parameters():
            p.requires_grad_(True)
        self._frozen_stages = 0
        self._frozen_all = False
        return self.train(self.training)

    @property
    def frozen_all(self) -> bool:
        return self._frozen_all

    @property
    def frozen_stages(self) -> int:
        return self._frozen_stages

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode and not self._frozen_all)
        self.training = mode  # what was asked; a wholly frozen trunk's layers stay in eval mode
        if mode and self._frozen_stages:
            for m in self.modules():
                params = list(m.parameters(recurse=False))
                if (
                    isinstance(m, nn.modules.batchnorm._BatchNorm)
                    and params
                    and not any(p.requires_grad for p in params)
                ):
                    m.eval()
        return self

    def describe(self) -> dict[str, Any]:
        """Plain-data description: name, stages, embedding size, classes, preprocessing, weights."""
        return {
            "name": self.name,
            "weights": self.weights,
            "stages": [s.to_dict() for s in self.stages],
            "embedding_dim": self.embedding_dim,
            "num_classes": self.num_classes,
            "preprocess": self.preprocess.to_dict(),
            "num_params": sum(p.numel() for p in self.parameters()),
        }

    def extra_repr(self) -> str:
        stages = ", ".join(f"{s.name}:{s.channels}/{s.stride}" for s in self.stages)
        return f"name={self.name!r}, stages=[{stages}], embedding_dim={self.embedding_dim}"


class SequentialBackbone(Backbone):
    """A backbone whose stages run one after the other (torchvision nets, the lecture's nets).

    ``body[name]`` computes stage ``name`` from the stage before it; ``head`` maps the last stage to logits.
    """

    def __init__(
        self,
        name: str,
        stages: Sequence[tuple[StageInfo, nn.Module]],
        head: nn.Module | None,
        num_classes: int,
        preprocess: Preprocess,
        class_names: Sequence[str] | None = None,
        weights: str = "random init",
    ) -> None:
        infos = [info for info, _ in stages]
        super().__init__(
            name, infos, infos[-1].channels, num_classes if head is not None else 0, preprocess, class_names, weights
        )
        self.body = nn.ModuleDict({info.name: module for info, module in stages})
        self.head = head

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, stage in self.body.items():
            x = stage(x)
            out[name] = x
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.body.values():
            x = stage(x)
        return x

    def forward_shared(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        stages = self.forward_stages(x)
        return stages, stages[self.stages[-1].name]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise RuntimeError(f"{self.name} has no classification head")
        return self.head(features)

    def drop_head(self) -> SequentialBackbone:
        self.head, self.num_classes, self.class_names = None, 0, None
        return self

    def stage_parameters(self) -> list[list[nn.Parameter]]:
        return [list(stage.parameters()) for stage in self.body.values()]


def _graph_leaves(outputs: list[torch.Tensor]) -> set[int]:
    """The ids of the leaf tensors (parameters) the autograd graphs of ``outputs`` reach."""
    seen, found = set(), set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        leaf = getattr(node, "variable", None)  # an AccumulateGrad node: where a parameter's gradient would go
        if leaf is not None:
            found.add(id(leaf))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found
