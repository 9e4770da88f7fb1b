"""Preprocessing as data: what a backbone's weights expect, and how to apply it.

The spec travels with the backbone (and inside model files), so inference never guesses
sizes or normalisation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocess:
    """How to turn an RGB uint8 image into the network's input tensor.

    ``resize_mode="crop"``: resize the shorter side to ``resize``, then centre-crop to
    ``input_size`` (the ImageNet evaluation convention). ``"squash"``: resize the whole
    image to ``input_size`` (small fixed-size nets such as LeNet-5).
    """

    input_size: tuple[int, int, int] = (3, 224, 224)  # channels, height, width
    resize: int = 256
    resize_mode: str = "crop"
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.resize_mode not in ("crop", "squash"):
            raise ValueError(f"resize_mode must be 'crop' or 'squash', not {self.resize_mode!r}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, not {self.interpolation!r}")
        channels = self.input_size[0]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean and std need {channels} values for {channels} input channels")

    @classmethod
    def from_crop_pct(cls, input_size: tuple[int, int, int], crop_pct: float, **kwargs: Any) -> Preprocess:
        """timm's convention: resize to ``floor(size / crop_pct)`` before the centre crop."""
        import math

        return cls(input_size=tuple(input_size), resize=math.floor(min(input_size[1:]) / crop_pct), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        fields = dict(data)
        for key in ("input_size", "mean", "std"):
            if key in fields:
                fields[key] = tuple(fields[key])
        return cls(**fields)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> normalised float32 (C, H, W).

        Resizing is torchvision's antialiased resize on uint8 (its size rounding and centre-crop
        offsets too), so predictions match the torchvision pipeline the weights were evaluated with.
        """
        import torch
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        channels, height, width = self.input_size
        mode = InterpolationMode(self.interpolation)
        img = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
        if self.resize_mode == "squash":
            img = F.resize(img, [height, width], interpolation=mode, antialias=True)
        else:
            img = F.center_crop(F.resize(img, self.resize, interpolation=mode, antialias=True), [height, width])
        if channels == 1:
            img = F.rgb_to_grayscale(img)
        mean, std = self._normalisation
        return img.float().div_(255.0).sub_(mean).div_(std).contiguous().numpy()

    @cached_property
    def _normalisation(self) -> tuple[Any, Any]:
        """Mean and std as (C, 1, 1) tensors, built once per spec rather than once per image."""
        import torch

        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        return mean, torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
