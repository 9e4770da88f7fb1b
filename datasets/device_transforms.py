"""The per-pixel end of a training preset as batch operations on the training device.

With a GPU, DataLoader workers decode and do the geometric steps on uint8 images (a quarter of float32's bytes
over PCIe, and no float work on the CPU); the batch then becomes float, gets its colour jitter and is normalised
on the GPU, in one pass over the whole batch (:class:`BatchTransform`, run by the Lightning module's
``on_after_batch_transfer``). The same code runs on CPU tensors, which is how it is tested.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnapps.backbones.preprocess import Preprocess

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale
_LUMA = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class ColorJitter:
    """Random brightness, contrast and saturation factors in [1 - x, 1 + x] and a hue shift in [-hue, hue]
    (a fraction of the colour circle), all four applied to an image with probability ``p``."""

    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02
    p: float = 0.5

    def factors(self, n: int, device: torch.device) -> dict[str, torch.Tensor]:
        """One random draw per image: (n,) factors, with images left alone (factor 1, shift 0) where not applied."""
        applied = torch.rand(n, device=device) < self.p
        draw = torch.rand(4, n, device=device) * 2 - 1  # uniform in [-1, 1]
        scale = torch.tensor([self.brightness, self.contrast, self.saturation, self.hue], device=device)[:, None]
        jitter = torch.where(applied, draw * scale, torch.zeros_like(draw))
        return {"applied": applied, "brightness": 1 + jitter[0], "contrast": 1 + jitter[1],
                "saturation": 1 + jitter[2], "hue": jitter[3]}  # fmt: skip

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """float (N, 3, H, W) in [0, 1] -> jittered, in the same range (in place where it can)."""
        f = self.factors(images.shape[0], images.device)
        out = adjust_brightness(images, f["brightness"])
        out = adjust_contrast(out, f["contrast"])
        out = adjust_saturation(out, f["saturation"])
        out = adjust_hue(out, f["hue"])
        return torch.where(f["applied"][:, None, None, None], out, images)


def _per_image(factor: torch.Tensor) -> torch.Tensor:
    return factor.reshape(-1, 1, 1, 1)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    r, g, b = images.unbind(-3)
    return (r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2]).unsqueeze(-3)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Each image times its factor, as torchvision's adjust_brightness (float images, clamped to [0, 1])."""
    return (images * _per_image(factor)).clamp_(0, 1)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Each image blended with its mean grey level, as torchvision's adjust_contrast."""
    mean = grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)
    f = _per_image(factor)
    return (images * f + mean * (1 - f)).clamp_(0, 1)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Each image blended with its own grey version, as torchvision's adjust_saturation."""
    f = _per_image(factor)
    return (images * f + grayscale(images) * (1 - f)).clamp_(0, 1)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Each image's hue turned by its shift (a fraction of the circle, in [-0.5, 0.5]) in HSV space, as
    torchvision's adjust_hue."""
    r, g, b = images.unbind(-3)
    value, _ = images.max(-3)
    chroma = value - images.min(-3).values
    grey = chroma == 0
    safe = torch.where(grey, torch.ones_like(chroma), chroma)
    saturation = torch.where(value > 0, chroma / torch.where(value > 0, value, torch.ones_like(value)), 0.0)
    # the sector of the colour circle, from whichever channel is largest (red first, then green, on ties)
    hue = torch.where(value == r, ((g - b) / safe) % 6, torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(grey, torch.zeros_like(hue), hue) / 6
    hue = (hue + shift.reshape(-1, 1, 1)) % 1.0
    # back to RGB: channel n is v - v s clamp(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6, n = 5, 3, 1
    k = (torch.tensor([5.0, 3.0, 1.0], device=images.device).reshape(1, 3, 1, 1) + 6 * hue.unsqueeze(-3)) % 6
    weight = torch.minimum(k, 4 - k).clamp_(0, 1)
    v, s = value.unsqueeze(-3), saturation.unsqueeze(-3)
    return (v - v * s * weight).clamp_(0, 1)


class BatchTransform(nn.Module):
    """uint8 image batches (N, C, H, W) -> normalised float32, with colour jitter on training batches.

    The normalisation is :meth:`Preprocess.apply_tensor`'s, operation for operation, so a batch of images made
    by the uint8 path equals, bit for bit, one made by the float32 path whenever no jitter is drawn.
    ``channels_last`` returns the batch in the layout the model's convolutions use."""

    def __init__(self, spec: Preprocess, jitter: ColorJitter | None = None, channels_last: bool = False) -> None:
        super().__init__()
        mean, std = spec._normalisation
        # not persistent: the run's checkpoints and model file hold the model alone
        self.register_buffer("mean", mean.clone(), persistent=False)
        self.register_buffer("std", std.clone(), persistent=False)
        self.jitter = jitter if spec.input_size[0] == 3 else None
        self.channels_last = channels_last

    def forward(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"BatchTransform takes uint8 images, not {images.dtype}")
        if self.channels_last:  # cheapest on uint8; the float operations below keep the layout
            images = images.contiguous(memory_format=torch.channels_last)
        x = images.float().div_(255.0)
        if train and self.jitter is not None:
            x = self.jitter(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        return x.sub_(self.mean).div_(self.std)

    def extra_repr(self) -> str:
        return f"jitter={self.jitter}, channels_last={self.channels_last}"
