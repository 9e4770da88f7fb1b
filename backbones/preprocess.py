"""Preprocessing as data: what a backbone's weights expect, and how to apply it with OpenCV.

The spec travels with the backbone (and later inside model files), so inference never
guesses sizes or normalisation. Applying it needs numpy and OpenCV only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
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
        """RGB uint8 (H, W, 3) -> normalised float32 (C, H, W)."""
        import cv2

        channels, height, width = self.input_size
        if self.resize_mode == "squash":
            img = _resize(rgb, width, height, self.interpolation)
        else:
            h, w = rgb.shape[:2]
            scale = self.resize / min(h, w)
            new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
            img = _resize(rgb, new_w, new_h, self.interpolation)
            top, left = (new_h - height) // 2, (new_w - width) // 2
            img = img[top : top + height, left : left + width]
        if channels == 1:
            img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)[:, :, None]
        scale = np.float32(1.0 / 255.0)
        mean = np.asarray(self.mean, dtype=np.float32)
        inv_std = np.float32(1.0) / np.asarray(self.std, dtype=np.float32)
        out = (img.astype(np.float32) * scale - mean) * inv_std
        return np.ascontiguousarray(out.transpose(2, 0, 1))


def _resize(img: np.ndarray, width: int, height: int, interpolation: str) -> np.ndarray:
    """Area averaging when shrinking (anti-aliased, like torchvision's antialias=True), else the named filter."""
    import cv2

    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return img
    if width < w and height < h:
        flag = cv2.INTER_AREA
    else:
        flag = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}[interpolation]
    return cv2.resize(img, (width, height), interpolation=flag)
