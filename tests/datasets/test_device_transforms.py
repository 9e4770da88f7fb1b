"""The uint8 training path (geometry in the workers; jitter and normalisation as batch operations on the training
device) against the float32 path that does everything in the workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from cnnapps.backbones.preprocess import Preprocess
from cnnapps.datasets.device_transforms import (
    BatchTransform,
    ColorJitter,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
)
from cnnapps.datasets.transforms import batch_transform, eval_transform, train_transform

SPECS = {
    "crop": Preprocess(input_size=(3, 64, 64), resize=73),
    "grey": Preprocess(input_size=(1, 32, 32), resize=32, resize_mode="squash", mean=(0.5,), std=(0.5,)),
}


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[::3, ::2])  # 171 x 256: not square, so crops differ


@pytest.mark.parametrize("name", SPECS)
def test_evaluation_batches_equal_the_models_preprocessing_bit_for_bit(photo: np.ndarray, name: str) -> None:
    spec = SPECS[name]
    uint8 = eval_transform(spec, "uint8")(photo)
    assert uint8.dtype == np.uint8 and uint8.shape == spec.input_size
    batch = batch_transform("default", spec)(torch.from_numpy(uint8)[None], train=False)
    assert torch.equal(batch[0], torch.from_numpy(spec(photo)))


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("preset", ["creative", "alexnet", "default"])
def test_training_geometry_is_the_same_as_the_float32_path(photo: np.ndarray, name: str, preset: str) -> None:
    """With the same seed both paths crop, flip, warp (and FancyPCA) alike; what is left is albumentations'
    normalisation against ours (float rounding, < 1e-5) and, in the default preset, the colour jitter the float32
    path may draw (p 0.5) where the uint8 path leaves it to the device: so some seeds must match exactly."""
    spec = SPECS[name]
    matched = 0
    for seed in range(4):
        float_path = train_transform(preset, spec)
        float_path.pipeline.set_random_seed(seed)
        uint8_path = train_transform(preset, spec, "uint8")
        uint8_path.pipeline.set_random_seed(seed)
        expected = float_path(photo)
        got = uint8_path(photo)
        assert got.dtype == np.uint8 and got.shape == spec.input_size
        normalised = batch_transform(preset, spec)(torch.from_numpy(got)[None], train=False)[0].numpy()
        matched += np.abs(normalised - expected).max() < 1e-5
    jitters = preset == "default" and name == "crop"
    assert (0 < matched < 4) if jitters else matched == 4


def test_per_image_colour_operations_match_torchvision() -> None:
    torch.manual_seed(0)
    images = torch.rand(4, 3, 9, 11)
    images[0, :, :2, :2] = 0.5  # grey pixels: no hue
    images[1, 1] = images[1, 0]  # red and green tied
    factors = torch.tensor([0.8, 1.0, 1.13, 1.2])
    shifts = torch.tensor([-0.02, 0.0, 0.013, 0.5])
    cases = [
        (adjust_brightness, F.adjust_brightness, factors),
        (adjust_contrast, F.adjust_contrast, factors),
        (adjust_saturation, F.adjust_saturation, factors),
        (adjust_hue, F.adjust_hue, shifts),
    ]
    for ours, theirs, values in cases:
        expected = torch.stack([theirs(images[i], float(values[i])) for i in range(4)])
        torch.testing.assert_close(ours(images.clone(), values), expected, rtol=0, atol=2e-6)


def test_jitter_changes_only_the_images_it_draws_for_and_stays_in_range() -> None:
    torch.manual_seed(0)
    images = torch.rand(64, 3, 8, 8)
    torch.manual_seed(1)
    jittered = ColorJitter()(images.clone())
    torch.manual_seed(1)
    drawn = ColorJitter().factors(64, images.device)["applied"]
    changed = (jittered - images).abs().amax((1, 2, 3)) > 1e-6
    assert torch.equal(changed, drawn) and 16 < int(drawn.sum()) < 48  # about half, p = 0.5
    assert float(jittered.min()) >= 0 and float(jittered.max()) <= 1
    assert torch.equal(ColorJitter(p=0.0)(images.clone()), images)


def test_batch_transform_jitters_only_training_batches_and_keeps_the_layout() -> None:
    spec = SPECS["crop"]
    uint8 = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    transform = BatchTransform(spec, ColorJitter(p=1.0), channels_last=True)
    plain = transform(uint8, train=False)
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    expected = (uint8.float() / 255 - mean) / std
    torch.testing.assert_close(plain, expected, rtol=0, atol=1e-6)
    trained = transform(uint8, train=True)
    assert not torch.allclose(trained, plain)
    assert plain.is_contiguous(memory_format=torch.channels_last)
    assert trained.is_contiguous(memory_format=torch.channels_last)
    assert "mean" not in transform.state_dict()  # nothing of it enters checkpoints
    with pytest.raises(TypeError, match="uint8"):
        transform(plain)
