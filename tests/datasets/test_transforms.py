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


class _SamePhoto:
    """A dataset whose every item is the same photo through a training transform: what differs is the draws."""

    def __init__(self, photo: np.ndarray, transform) -> None:
        self.photo, self.transform = photo, transform

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> np.ndarray:
        return self.transform(self.photo)


def _epoch(photo: np.ndarray, workers: int, seed: int) -> list[np.ndarray]:
    """One pass of a training loader built as training builds it (``loader_args``), after ``--seed``'s seeding."""
    import torch
    from torch.utils.data import DataLoader

    from cnnapps.apps.classify.config import ClassifyConfig
    from cnnapps.apps.common.config import load_config
    from cnnapps.apps.common.training import make_loaders

    config = load_config(None, ClassifyConfig, data="x", out="y", batch_size=1, workers=workers, seed=seed)
    torch.manual_seed(seed)  # what seed_everything does first
    dataset = _SamePhoto(photo, train_transform("default", SPEC))  # a random crop every time: never a no-op
    loader, _ = make_loaders(config, dataset, dataset, torch.device("cpu"))
    assert isinstance(loader, DataLoader)
    return [batch[0].numpy() for batch in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_training_augmentation_follows_the_seed(workers: int, photo) -> None:
    """albumentations keeps a random state of its own: seeded from --seed (in this process) and from torch's
    per-worker seed (in workers), the same seed gives the same images, another seed other images."""
    small = photo[::8, ::8].copy()
    first, again, other = _epoch(small, workers, 0), _epoch(small, workers, 0), _epoch(small, workers, 1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_each_worker_draws_its_own_augmentation(photo) -> None:
    """Two workers, the same photo at every index: worker 0 makes items 0, 2, 4, ...; worker 1 items 1, 3, 5, ...
    Copies of one unseeded pipeline would give item 0 == item 1, item 2 == item 3."""
    items = _epoch(photo[::8, ::8].copy(), 2, 0)
    assert not any(np.array_equal(items[i], items[i + 1]) for i in range(0, len(items), 2))


def test_each_process_of_a_distributed_run_draws_its_own_augmentation(photo, monkeypatch) -> None:
    """The same seed in two processes of a distributed run (told apart by the launcher's ranks): other draws."""
    small = photo[::8, ::8].copy()
    monkeypatch.setenv("LOCAL_RANK", "0")
    first = _epoch(small, 0, 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    second = _epoch(small, 0, 0)
    assert not any(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
