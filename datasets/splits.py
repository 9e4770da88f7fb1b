"""Holding out a validation set: one repeatable split for every task's data."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any


def split_indices(
    n: int, fraction: float, seed: int = 0, groups: Sequence[int] | None = None
) -> tuple[list[int], list[int]]:
    """``(train, val)`` sorted index lists with ``fraction`` of ``n`` items held out, at random but the same for
    the same seed. With ``groups`` (one class label per item) every group gives the same share (stratified),
    and a group of one item stays in training."""
    import numpy as np

    labels = [0] * n if groups is None else list(groups)
    train: list[int] = []
    val: list[int] = []
    for members in _shuffled_classes(labels, np.random.default_rng(seed)):
        held = max(1, round(len(members) * fraction)) if groups is None or len(members) > 1 else 0
        val += members[:held]
        train += members[held:]
    return sorted(train), sorted(val)


def fold_indices(labels: Sequence[int], k: int, seed: int = 0) -> list[list[int]]:
    """``k`` disjoint, sorted validation index lists that together cover every item (k-fold cross-validation):
    each class's items are shuffled as :func:`split_indices` shuffles them and dealt in turn to the folds, so every
    fold holds about the same share of each class."""
    import numpy as np

    folds: list[list[int]] = [[] for _ in range(k)]
    dealt = 0  # each class starts where the last one stopped: small classes do not all land in fold 1
    for members in _shuffled_classes(list(labels), np.random.default_rng(seed)):
        for index in members:
            folds[dealt % k].append(index)
            dealt += 1
    return [sorted(f) for f in folds]


def _shuffled_classes(labels: list[int], rng: Any) -> Iterator[list[int]]:
    """Each class's item indices (classes in order), shuffled by ``rng``."""
    for group in sorted(set(labels)):
        members = [i for i, g in enumerate(labels) if g == group]
        yield [members[j] for j in rng.permutation(len(members))]
