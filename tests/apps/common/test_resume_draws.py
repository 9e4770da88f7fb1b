"""A resumed run draws its own training order and augmentation, not the first epoch's again."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.utils.data import RandomSampler

from cnnapps.apps.classify.train import train_classifier


@pytest.fixture()
def orders(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The training order of every epoch trained while the fixture is in use."""
    drawn: list[list[int]] = []
    original = RandomSampler.__iter__

    def record(self):
        drawn.append(list(original(self)))
        return iter(drawn[-1])

    monkeypatch.setattr(RandomSampler, "__iter__", record)
    return drawn


def test_a_resumed_epoch_is_shuffled_anew(colour_set: Path, tmp_path: Path, tiny_config, orders) -> None:
    """Every session starts from --seed (for the split and initial weights): the resumed epoch 2 drew epoch 1's
    order again. It is drawn anew, and a fresh run with the same seed still draws the same orders."""
    train_classifier(tiny_config(colour_set, tmp_path / "run", epochs=1))
    train_classifier(tiny_config(colour_set, tmp_path / "run", epochs=2, resume=True))
    first, resumed = orders
    assert sorted(first) == sorted(resumed) and first != resumed
    orders.clear()
    train_classifier(tiny_config(colour_set, tmp_path / "again", epochs=1))
    assert orders == [first]
