"""Holding out a validation set: one repeatable split for every task's data."""

from __future__ import annotations

from collections.abc import Sequence


def split_indices(
    n: int, fraction: float, seed: int = 0, groups: Sequence[int] | None = None
) -> tuple[list[int], list[int]]:
    """``(train, val)`` sorted index lists with ``fraction`` of ``n`` items held out, at random but the same for
    the same seed. With ``groups`` (one class label per item) every group gives the same share (stratified),
    and a group of one item stays in training."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = [0] * n if groups is None else list(groups)
    train: list[int] = []
    val: list[int] = []
    for group in sorted(set(labels)):
        members = [i for i, g in enumerate(labels) if g == group]
        members = [members[j] for j in rng.permutation(len(members))]
        held = max(1, round(len(members) * fraction)) if groups is None or len(members) > 1 else 0
        val += members[:held]
        train += members[held:]
    return sorted(train), sorted(val)
