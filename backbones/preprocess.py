"""Preprocessing as data: what a backbone's weights expect, and how to apply it.

The spec travels with the backbone (and inside model files), so inference never guesses
sizes or normalisation.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
#: the largest input side a model may ask for (a larger one is a damaged or hostile file, not a model)
MAX_SIDE = 8192
#: the largest input a model may ask for, in pixels (4096 x 4096: one such image in float32 is 200 MB, and a
#: network's first feature maps many times that)
MAX_INPUT_PIXELS = 4096 * 4096


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
        sizes, values = (*self.input_size, self.resize), (*self.mean, *self.std)
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in sizes):
            raise ValueError(f"input_size {self.input_size} / resize {self.resize}: whole numbers of pixels")
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ValueError(f"mean {self.mean} / std {self.std}: numbers")
        if len(self.input_size) != 3 or self.input_size[0] not in (1, 3):
            raise ValueError(f"input_size must be (channels 1 or 3, height, width), not {self.input_size}")
        if not all(1 <= int(side) <= MAX_SIDE for side in (*self.input_size[1:], self.resize)):
            raise ValueError(f"input_size {self.input_size} / resize {self.resize}: sides must be 1..{MAX_SIDE} pixels")
        if self.input_size[1] * self.input_size[2] > MAX_INPUT_PIXELS:
            raise ValueError(f"input_size {self.input_size}: at most {MAX_INPUT_PIXELS:,} pixels (4096 x 4096)")
        if not all(v > 0 for v in self.std):
            raise ValueError(f"std {self.std}: every value must be above 0 (it divides)")
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

    def geometry(self, height: int, width: int) -> tuple[float, float, float, float]:
        """How an image's pixels move into the input: ``(sx, sy, ox, oy)`` with ``x_in = x * sx - ox`` and
        ``y_in = y * sy - oy`` (continuous coordinates, corners at 0), as :meth:`__call__` resizes and crops;
        so detections made on the input map back to the image."""
        _, out_h, out_w = self.input_size
        if self.resize_mode == "squash":
            return out_w / width, out_h / height, 0.0, 0.0
        short, long = (height, width) if height <= width else (width, height)
        new_long = int(self.resize * long / short)  # torchvision's rounding of the longer side
        new_h, new_w = (self.resize, new_long) if height <= width else (new_long, self.resize)

        def offset(size: int, crop: int) -> int:  # torchvision's center_crop (pads when the crop is larger)
            return round((size - crop) / 2.0) if size >= crop else -((crop - size) // 2)

        return new_w / width, new_h / height, float(offset(new_w, out_w)), float(offset(new_h, out_h))

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> normalised float32 (C, H, W).

        Resizing is torchvision's antialiased resize on uint8 (its size rounding and centre-crop
        offsets too), so predictions match the torchvision pipeline the weights were evaluated with.
        """
        import torch

        return self.apply_tensor(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)).contiguous().numpy()

    def apply_tensor(self, img: Any) -> Any:
        """The same on a uint8 (3, H, W) tensor, on whatever device it is (CPU, or the GPU that runs the model)."""
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        channels, height, width = self.input_size
        mode = InterpolationMode(self.interpolation)
        if self.resize_mode == "squash":
            img = F.resize(img, [height, width], interpolation=mode, antialias=True)
        else:
            img = F.center_crop(F.resize(img, self.resize, interpolation=mode, antialias=True), [height, width])
        if channels == 1:
            img = F.rgb_to_grayscale(img)
        mean, std = self._normalisation
        if img.device != mean.device:
            mean, std = mean.to(img.device), std.to(img.device)
        return img.float().div_(255.0).sub_(mean).div_(std)

    @cached_property
    def _normalisation(self) -> tuple[Any, Any]:
        """Mean and std as (C, 1, 1) tensors, built once per spec rather than once per image."""
        import torch

        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        return mean, torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
