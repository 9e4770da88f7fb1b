from __future__ import annotations

import numpy as np
import pytest

from cnnapps.backbones.preprocess import Preprocess
from cnnapps.datasets.transforms import PRESETS, train_transform
from cnnapps.errors import CnnappsError

SPEC = Preprocess(input_size=(3, 64, 64), resize=73)


@pytest.fixture(scope="module")
def photo():
    from skimage import data

    return data.astronaut()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_end_at_the_input_size(preset: str, photo) -> None:
    out = train_transform(preset, SPEC)(photo)
    assert out.shape == (3, 64, 64) and out.dtype == np.float32
    assert -3 < out.mean() < 3


@pytest.mark.parametrize("preset", ["default", "alexnet", "creative"])
def test_presets_are_random(preset: str, photo) -> None:
    tf = train_transform(preset, SPEC)
    assert not np.array_equal(tf(photo), tf(photo))


def test_grey_specs_get_one_channel(photo) -> None:
    spec = Preprocess(input_size=(1, 32, 32), resize=32, resize_mode="squash", mean=(0.5,), std=(0.5,))
    for preset in PRESETS:
        assert train_transform(preset, spec)(photo).shape == (1, 32, 32)


def test_unknown_preset() -> None:
    with pytest.raises(CnnappsError, match="choose from default, alexnet, creative, randaugment, trivialaugment, none"):
        train_transform("wild", SPEC)
