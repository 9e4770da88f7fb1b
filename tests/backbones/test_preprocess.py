from __future__ import annotations

import numpy as np
import pytest

from cnnapps.backbones.preprocess import Preprocess


def test_crop_resizes_the_shorter_side_then_centre_crops() -> None:
    img = np.zeros((300, 600, 3), np.uint8)
    img[:, 250:350] = 255  # a white band in the middle survives the centre crop
    out = Preprocess(input_size=(3, 224, 224), resize=256, mean=(0, 0, 0), std=(1, 1, 1))(img)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32
    assert out[:, :, 112].min() == pytest.approx(1.0)
    assert out[:, :, 0].max() == pytest.approx(0.0)


def test_squash_and_grey() -> None:
    spec = Preprocess(input_size=(1, 32, 32), resize=32, resize_mode="squash", mean=(0.5,), std=(0.5,))
    out = spec(np.full((10, 50, 3), 255, np.uint8))
    assert out.shape == (1, 32, 32)
    assert np.allclose(out, 1.0, atol=0.01)  # ITU-R 601 grey weights round white to 254


def test_normalisation_uses_mean_and_std() -> None:
    spec = Preprocess(input_size=(3, 4, 4), resize=4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    out = spec(np.zeros((4, 4, 3), np.uint8))
    assert out[:, 0, 0].tolist() == pytest.approx([-2.0, -1.0, -0.5])


def test_round_trip_and_validation() -> None:
    spec = Preprocess(input_size=(3, 240, 240), resize=274, interpolation="bicubic")
    assert Preprocess.from_dict(spec.to_dict()) == spec
    assert Preprocess.from_crop_pct((3, 224, 224), 0.875).resize == 256
    with pytest.raises(ValueError, match="resize_mode"):
        Preprocess(resize_mode="stretch")
    with pytest.raises(ValueError, match="3 values"):
        Preprocess(mean=(0.5,))


@pytest.mark.parametrize("std", [(0.0,), (-0.5,)])
def test_a_std_that_is_not_positive_is_refused(std) -> None:
    with pytest.raises(ValueError, match="std"):
        Preprocess(input_size=(1, 32, 32), resize=32, mean=(0.5,), std=std)


def test_an_input_larger_than_4096x4096_is_refused() -> None:
    assert Preprocess(input_size=(3, 4096, 4096), resize=4096).input_size == (3, 4096, 4096)
    for size in ((3, 4097, 4096), (3, 8192, 8192)):
        with pytest.raises(ValueError, match=r"at most 16,777,216 pixels \(4096 x 4096\)"):
            Preprocess(input_size=size, resize=8192)
