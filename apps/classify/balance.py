"""Imbalanced classes: per-class loss weights (``class_weights``; for multi-label data the weights of each class's
positives) and a sampler by inverse class frequency (``sampler: balanced``). Training only."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnapps.apps.common.config import ConfigError
from cnnapps.yamltext import load_yaml


def class_counts(labels: Sequence[int], num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, np.int64), minlength=num_classes)[:num_classes]


def inverse_frequency(labels: Sequence[int], num_classes: int) -> np.ndarray:
    """1 / (images of each class), normalised to mean 1 over the classes (a class with no images counts as one)."""
    inverse = 1.0 / np.maximum(class_counts(labels, num_classes), 1).astype(np.float64)
    return inverse / inverse.mean()


def class_weights(setting: str, labels: Sequence[int], class_names: Sequence[str]) -> np.ndarray:
    """The cross-entropy's weight per class: ``auto`` (:func:`inverse_frequency` of ``labels``), or a YAML, JSON
    or CSV file mapping class names to weights above 0 (classes it leaves out weigh 1)."""
    if setting == "auto":
        return inverse_frequency(labels, len(class_names))
    given = _read_weights(Path(setting))
    unknown = [name for name in given if name not in class_names]
    if unknown:
        raise ConfigError(
            f"class_weights: {setting}: unknown classes {', '.join(map(repr, unknown))} "
            f"(the classes are {', '.join(class_names)})"
        )
    weights = np.ones(len(class_names))
    for name, value in given.items():
        weights[list(class_names).index(name)] = value
    return weights


def positive_weights(setting: str, labels: Sequence[Sequence[int]], class_names: Sequence[str]) -> np.ndarray:
    """A multi-label loss's weight of each class's positives (``pos_weight`` of the binary cross-entropy): ``auto``
    gives negatives / positives of the class in ``labels`` (each image's label indices; a class with no positive
    counts one; a class on every image, with no negative to weigh it against, 1: a weight of 0 left its loss without
    a gradient, and it never trained), a file maps class names to weights as for :func:`class_weights`."""
    if setting != "auto":
        return class_weights(setting, [], class_names)
    positives = np.zeros(len(class_names))
    for row in labels:
        positives[list(row)] += 1
    negatives = len(labels) - positives
    return np.where(negatives > 0, negatives / np.maximum(positives, 1), 1.0)


def _read_weights(path: Path) -> dict[str, float]:
    if not path.is_file():
        raise ConfigError(f"class_weights: {path}: no such file (auto, or a YAML/JSON/CSV of class name -> weight)")
    try:
        text = path.read_text(encoding="utf-8-sig")  # with or without a byte-order mark
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"class_weights: {path}: cannot read it ({exc})") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
            if rows and len(rows[0]) >= 2 and _not_number(rows[0][1]):
                rows = rows[1:]  # a header such as class,weight
            if any(len(r) != 2 for r in rows):
                raise ValueError("expected rows of class,weight")
            loaded: Any = {}
            for r in rows:
                if r[0].strip() in loaded:  # the last one won, silently
                    raise ValueError(f"class {r[0].strip()!r} is given twice")
                loaded[r[0].strip()] = r[1].strip()
        elif suffix == ".json":
            loaded = json.loads(text, object_pairs_hook=_once_each)
        else:
            loaded = load_yaml(text, strings=True)  # every key a string: class "yes" or "01" stays so
    except Exception as exc:  # json, yaml and csv errors
        raise ConfigError(f"class_weights: {path}: not readable ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, dict) or not loaded:
        raise ConfigError(f"class_weights: {path}: expected a mapping of class name -> weight")
    weights = {}
    for name, value in loaded.items():
        try:
            weight = float(value)
        except (TypeError, ValueError):
            weight = float("nan")
        if not np.isfinite(weight) or weight <= 0:
            # a weight of 0 makes the loss of a batch of that class alone 0/0: NaN, and a model of NaNs
            raise ConfigError(
                f"class_weights: {path}: {name}: expected a weight above 0, not {value!r} "
                "(to train without a class, leave its images out of the data)"
            )
        weights[str(name)] = weight
    return weights


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are each given once (json keeps the last of a repeated key, silently)."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"class {key!r} is given twice")
        found[key] = value
    return found


def _not_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return True
    return False


def balanced_sampler(labels: Sequence[int], num_classes: int, seed: int | None = None) -> Any:
    """A ``WeightedRandomSampler`` drawing ``len(labels)`` items per epoch, with replacement, each with probability
    proportional to 1 / (images of its class): every class is drawn about equally often."""
    import torch
    from torch.utils.data import WeightedRandomSampler

    per_class = inverse_frequency(labels, num_classes)
    weights = torch.as_tensor(per_class[np.asarray(labels, np.int64)], dtype=torch.double)
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=generator)
