"""Multi-label classification: several labels per image, each a yes/no of its own (sigmoid outputs).

Metrics of a multi-label classifier (mean average precision, per-class and micro/macro F1 at per-class
thresholds) and the choice of those thresholds on validation scores. Plain numpy, plus torchmetrics for the
average precision; no Lightning, so ``cnnapps eval classify`` can use it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

#: the threshold of a class whose best F1 cannot be chosen (no positive image in the validation set)
DEFAULT_THRESHOLD = 0.5


def tune_thresholds(probs: np.ndarray, targets: np.ndarray) -> list[float]:
    """Per class, the threshold on its probability that maximises its F1 on (``probs``, ``targets``), both (N, C).

    A threshold lies halfway between the lowest score called positive and the next lower score (the lowest score
    itself when every image is called positive); among equal F1s the highest threshold wins. A class with no
    positive image keeps :data:`DEFAULT_THRESHOLD`."""
    probs, targets = np.asarray(probs, np.float64), np.asarray(targets) > 0.5
    thresholds = []
    for c in range(probs.shape[1] if probs.ndim == 2 else 0):
        scores, truth = probs[:, c], targets[:, c]
        positives = int(truth.sum())
        if positives == 0:
            thresholds.append(DEFAULT_THRESHOLD)
            continue
        order = np.argsort(-scores, kind="stable")
        ranked, hits = scores[order], np.cumsum(truth[order])
        # cut after the last of each run of equal scores: the first k images are called positive
        ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
        f1 = 2 * hits[ends] / (ends + 1 + positives)
        best = ends[int(np.argmax(f1))]  # the first maximum: the highest threshold
        lowest = ranked[best]
        below = ranked[best + 1] if best + 1 < len(ranked) else None
        thresholds.append(float(lowest if below is None else (lowest + below) / 2))
    return thresholds


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def average_precisions(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each class's average precision (NaN for a class with no positive image), with torchmetrics."""
    import torch
    from torchmetrics.functional.classification import binary_average_precision, multilabel_average_precision

    probs, targets = np.asarray(probs, np.float32), np.asarray(targets) > 0.5
    c = probs.shape[1]
    if len(probs) == 0:
        return np.full(c, np.nan)
    scores, truth = torch.from_numpy(probs), torch.from_numpy(targets.astype(np.int64))
    with warnings.catch_warnings():  # "no positive samples": those classes are NaN here, left out of the mean
        warnings.simplefilter("ignore", UserWarning)
        if c == 1:  # one tag (present or not): torchmetrics' multi-label form needs two or more
            ap = binary_average_precision(scores[:, 0], truth[:, 0]).reshape(1).numpy().astype(np.float64)
        else:
            ap = multilabel_average_precision(scores, truth, c, average=None).numpy().astype(np.float64)
    ap[targets.sum(0) == 0] = np.nan
    return ap


def mean_average_precision(probs: np.ndarray, targets: np.ndarray) -> float:
    """mAP: the mean of the classes' average precisions over the classes with a positive image (0 when none)."""
    ap = average_precisions(probs, targets)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0


@dataclass
class MultiLabelReport:
    """A multi-label classifier on a labelled set: mAP, F1s at ``thresholds``, per-class figures."""

    n: int
    map: float  # macro average precision over the classes with positives
    f1_micro: float
    f1_macro: float
    class_names: list[str]
    thresholds: list[float]
    ap: list[float | None]  # None: no positive image
    f1: list[float]
    precision: list[float]
    recall: list[float]
    support: list[int]  # images with the class
    failed: list[dict[str, str]]
    multilabel: bool = True

    @property
    def top1(self) -> float:
        """The score a run is judged by (what ``top1`` is for a single-label report): the mAP."""
        return self.map

    def to_dict(self) -> dict[str, Any]:
        columns = (self.ap, self.f1, self.precision, self.recall, self.thresholds, self.support)
        per_class = {
            name: {"ap": ap, "f1": f1, "precision": p, "recall": r, "threshold": t, "support": s}
            for name, ap, f1, p, r, t, s in zip(self.class_names, *columns, strict=True)
        }
        return {"n": self.n, "multilabel": True, "map": self.map, "f1_micro": self.f1_micro,
                "f1_macro": self.f1_macro, "class_names": self.class_names, "thresholds": self.thresholds,
                "per_class": per_class, "failed": self.failed}  # fmt: skip


def multilabel_report(probs: np.ndarray, targets: np.ndarray, class_names: list[str],
                      thresholds: list[float] | float | None = None,
                      failed: list[dict[str, str]] | None = None) -> MultiLabelReport:  # fmt: skip
    """Metrics from sigmoid probabilities (N, C) and multi-hot targets (N, C) at ``thresholds`` (one per class,
    one for all; None: 0.5). F1 macro averages over every class (a class never present nor predicted scores 0)."""
    c = len(class_names)
    probs = np.asarray(probs, np.float64).reshape(-1, c)
    truth = np.asarray(targets).reshape(-1, c) > 0.5
    if thresholds is None:
        thresholds = DEFAULT_THRESHOLD
    limits = np.broadcast_to(np.asarray(thresholds, np.float64), (c,)).copy()
    called = probs >= limits
    tp = (called & truth).sum(0).astype(np.float64)
    fp = (called & ~truth).sum(0).astype(np.float64)
    fn = (~called & truth).sum(0).astype(np.float64)
    f1 = _f1(tp, fp, fn)
    ap = average_precisions(probs, truth)
    return MultiLabelReport(
        n=len(probs),
        map=float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0,
        f1_micro=float(_f1(tp.sum(), fp.sum(), fn.sum())),
        f1_macro=float(f1.mean()) if c else 0.0,
        class_names=list(class_names),
        thresholds=[float(t) for t in limits],  # as tuned: they are what the model file keeps
        ap=[None if np.isnan(v) else round(float(v), 6) for v in ap],
        f1=[round(float(v), 6) for v in f1],
        precision=[round(float(v), 6) for v in np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)],
        recall=[round(float(v), 6) for v in np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)],
        support=[int(v) for v in truth.sum(0)],
        failed=failed or [],
    )


def multi_hot(labels: list[tuple[int, ...]], num_classes: int) -> np.ndarray:
    """Label index tuples as an (N, C) 0/1 matrix."""
    out = np.zeros((len(labels), num_classes), np.float32)
    for i, row in enumerate(labels):
        out[i, list(row)] = 1.0
    return out


def scores_of(predictor: Any, data: Any, batch_size: int | None = None,
              progress: Any = None) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:  # fmt: skip
    """(probabilities, multi-hot targets) of the readable images of ``data`` (a multi-label set, or a single-label
    one taken as such) by a multi-label ``predictor``, classes matched by name, and the unreadable images."""
    from cnnapps.apps.classify.evaluate import readable, unknown_classes
    from cnnapps.datasets.folders import as_multilabel

    data = as_multilabel(data)
    names = list(predictor.class_names)
    index = {name: i for i, name in enumerate(names)}
    unknown = [n for n in data.class_names if n not in index]
    if unknown:
        raise unknown_classes(unknown)
    moved = [tuple(index[data.class_names[k]] for k in row) for row in data.labels]
    targets = multi_hot(moved, len(names))
    found, probs, errors = predictor.predict_proba(data.paths, batch_size=batch_size, progress=progress)
    ok, failed = readable(found, errors)
    return probs[ok], targets[ok], failed


def evaluate_multilabel(predictor: Any, data: Any, batch_size: int | None = None, progress: Any = None,
                        thresholds: list[float] | float | None = None) -> MultiLabelReport:  # fmt: skip
    """Run a multi-label ``predictor`` over ``data`` at the model's thresholds (or ``thresholds``): see
    :func:`scores_of`."""
    probs, targets, failed = scores_of(predictor, data, batch_size, progress)
    limits = predictor.thresholds if thresholds is None else thresholds
    return multilabel_report(probs, targets, list(predictor.class_names), limits, failed)


def labels_over(probabilities: np.ndarray, class_names: list[str], thresholds: list[float] | float) -> list[Any]:
    """The classes whose probability reaches their threshold, most probable first (ties keep class order)."""
    from cnnapps.results import Prediction

    limits = np.broadcast_to(np.asarray(thresholds, np.float64), probabilities.shape)
    chosen = np.flatnonzero(probabilities >= limits)
    chosen = chosen[np.argsort(-probabilities[chosen], kind="stable")]
    return [Prediction(class_names[i], int(i), float(probabilities[i])) for i in chosen]


def checked_flag(value: Any, where: str) -> bool:
    """A model file's ``multilabel``: true or false, or a one-line error naming ``where`` (a damaged header's
    ``"yes"`` made a multi-label model single-label, silently)."""
    from cnnapps.bundle import BundleError

    if not isinstance(value, bool):
        raise BundleError(f"{where}: expected true or false, found {str(value)[:40]!r}")
    return value


def checked_thresholds(value: Any, classes: int, where: str) -> list[float]:
    """A model file's ``thresholds``: one number in [0, 1] per class, or a one-line error naming ``where``."""
    from cnnapps.bundle import BundleError

    if value is None:
        return [DEFAULT_THRESHOLD] * classes
    ok = isinstance(value, list) and len(value) == classes
    ok = ok and all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1 for t in value)
    if not ok:
        text = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise BundleError(f"{where}: thresholds: expected {classes} numbers between 0 and 1, found {text}")
    return [float(t) for t in value]
