"""albumentations presets for training; evaluation uses the model's own :class:`Preprocess`.

Every preset ends at the backbone's input size and normalisation, so a preset can be
swapped without touching the model. Training-only: the inference path never imports this.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cnnapps.backbones.preprocess import Preprocess
from cnnapps.errors import CnnappsError

PRESETS = {
    "default": "random resized crop (35-100% of the area), horizontal flip, light colour jitter",
    "alexnet": "AlexNet recipe: shorter side to 256, random 224 crops, horizontal flips, PCA colour noise",
    "creative": "geometric 'get creative': translation, rotation, stretch, shear, lens distortion (no flips)",
    "none": "no augmentation: the evaluation preprocessing",
}


def train_transform(preset: str, spec: Preprocess) -> Callable[[np.ndarray], np.ndarray]:
    """RGB uint8 (H, W, 3) -> float32 (C, H, W) with random augmentation from ``preset``."""
    if preset not in PRESETS:
        raise CnnappsError(f"--augment {preset}: unknown preset; choose from {', '.join(PRESETS)}")
    if preset == "none":
        return spec
    import albumentations as A
    import cv2

    channels, height, width = spec.input_size
    colour = channels == 3
    if spec.resize_mode == "squash":
        fit = [A.Resize(height, width)]
    else:
        fit = [A.SmallestMaxSize(max_size=spec.resize), A.CenterCrop(height, width)]

    if preset == "default":
        steps = [
            A.RandomResizedCrop(size=(height, width), scale=(0.35, 1.0)),
            A.HorizontalFlip(p=0.5),
            *([A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5)] if colour else []),
        ]
    elif preset == "alexnet":
        resize = (
            [A.Resize(spec.resize, spec.resize)]
            if spec.resize_mode == "squash"
            else [A.SmallestMaxSize(max_size=spec.resize)]
        )
        steps = [
            *resize,
            A.RandomCrop(height, width),
            A.HorizontalFlip(p=0.5),
            *([A.FancyPCA(alpha=0.1, p=1.0)] if colour else []),
        ]
    else:  # creative
        steps = [
            *fit,
            A.Affine(
                translate_percent={"x": (-0.1, 0.1), "y": (-0.1, 0.1)},
                rotate=(-15, 15),
                scale={"x": (0.85, 1.15), "y": (0.85, 1.15)},
                shear={"x": (-10, 10), "y": (-10, 10)},
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.9,
            ),
            A.OpticalDistortion(distort_limit=0.15, p=0.5),
        ]
    pipeline = A.Compose([*steps, A.Normalize(mean=spec.mean, std=spec.std, max_pixel_value=255.0)])

    def apply(rgb: np.ndarray) -> np.ndarray:
        img = rgb if colour else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]
        out = pipeline(image=img)["image"]
        if out.ndim == 2:
            out = out[:, :, None]
        return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)

    return apply
