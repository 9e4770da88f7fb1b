"""Top-1/top-5, per-class precision and recall, and the confusion matrix of a classifier on a labelled set (mAP and
F1s for a multi-label classifier: :mod:`cnnapps.apps.classify.multilabel`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cnnapps.apps.classify.multilabel import MultiLabelReport
from cnnapps.datasets.folders import LabeledImages, MultiLabeledImages


@dataclass
class ClassificationReport:
    n: int
    top1: float
    top5: float
    loss: float
    class_names: list[str]
    precision: list[float]
    recall: list[float]
    support: list[int]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    failed: list[dict[str, str]]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_class"] = {
            name: {"precision": p, "recall": r, "support": s}
            for name, p, r, s in zip(self.class_names, self.precision, self.recall, self.support, strict=True)
        }
        for key in ("precision", "recall", "support"):
            del data[key]
        return data


def report_from_probs(
    probs: np.ndarray, labels: np.ndarray, class_names: list[str], failed: list[dict[str, str]] | None = None
) -> ClassificationReport:
    """Metrics from class probabilities (N, C) and true labels (N,), computed with torchmetrics."""
    import torch
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_confusion_matrix,
        multiclass_precision,
        multiclass_recall,
    )

    c = len(class_names)
    p = torch.from_numpy(np.asarray(probs, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    loss = float(torch.nn.functional.nll_loss(torch.log(p.clamp_min(1e-12)), y)) if len(y) else float("nan")
    top5 = float(multiclass_accuracy(p, y, c, top_k=min(5, c), average="micro"))
    return ClassificationReport(
        n=len(y),
        top1=float(multiclass_accuracy(p, y, c, top_k=1, average="micro")),
        top5=top5,
        loss=loss,
        class_names=list(class_names),
        precision=[round(float(v), 6) for v in multiclass_precision(p, y, c, average=None)],
        recall=[round(float(v), 6) for v in multiclass_recall(p, y, c, average=None)],
        support=[int((y == i).sum()) for i in range(c)],
        confusion=multiclass_confusion_matrix(p, y, c).tolist(),
        failed=failed or [],
    )


def evaluate(
    predictor: Any, data: LabeledImages | MultiLabeledImages, batch_size: int | None = None, progress: Any = None
) -> ClassificationReport | MultiLabelReport:
    """Run ``predictor`` over ``data`` (class names must match); unreadable images are listed, not scored.

    A multi-label model (or multi-label data) gives a :class:`MultiLabelReport` at the model's thresholds."""
    if getattr(predictor, "multilabel", False) or data.multilabel:
        from cnnapps.apps.classify.multilabel import evaluate_multilabel
        from cnnapps.errors import CnnappsError

        if not getattr(predictor, "multilabel", False):
            raise CnnappsError("the data has images with several labels, the model gives one class per image: "
                               "evaluate a model trained as multi-label (train classify --multilabel)")  # fmt: skip
        return evaluate_multilabel(predictor, data, batch_size, progress)
    if list(predictor.class_names) != list(data.class_names):
        index = {name: i for i, name in enumerate(predictor.class_names)}
        unknown = [n for n in data.class_names if n not in index]
        if unknown:
            raise unknown_classes(unknown)
        labels = np.array([index[data.class_names[y]] for y in data.labels])
    else:
        labels = np.array(data.labels)
    names, probs, errors = predictor.predict_proba(data.paths, batch_size=batch_size, progress=progress)
    ok, failed = readable(names, errors)
    return report_from_probs(probs[ok], labels[ok], list(predictor.class_names), failed)


def readable(names: list[str], errors: list[str | None]) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Which images were read (a mask) and the others with their errors; a CnnappsError when none was."""
    ok = np.array([e is None for e in errors], dtype=bool)
    failed = [{"path": n, "error": e} for n, e in zip(names, errors, strict=True) if e is not None]
    if failed and not ok.any():
        from cnnapps.errors import none_read

        raise none_read(failed)
    return ok, failed


def unknown_classes(unknown: list[str]) -> Exception:
    """The error of data whose classes the model does not know: the first five, and how many more."""
    from cnnapps.errors import CnnappsError
    from cnnapps.terminal import first_few

    return CnnappsError(f"the data has classes the model does not know: {first_few(unknown)}")
