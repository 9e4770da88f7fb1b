"""The training progress bar counts epochs from 1, as every other line of ours does."""

from __future__ import annotations

from types import SimpleNamespace

from cnnapps.apps.common.training import epoch_bar, epoch_description


def test_the_last_of_eight_epochs_reads_8_of_8() -> None:
    assert epoch_description(7, 8) == "Epoch 8/8"
    assert epoch_description(0, 8) == "Epoch 1/8"
    assert epoch_description(0, -1) == "Epoch 1"  # no limit: no total
    assert epoch_description(0, 3, width=12) == "Epoch 1/3   "


def test_the_bar_lightning_shows_counts_from_one() -> None:
    bar = epoch_bar()
    bar._trainer = SimpleNamespace(max_epochs=8)
    describe = getattr(bar, "_get_train_description", None)
    if describe is not None:  # rich's bar (Lightning's choice where rich is installed)
        assert describe(7).strip() == "Epoch 8/8"
