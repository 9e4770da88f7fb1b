"""Scores of a class map against the truth, from one confusion matrix over every scored pixel.

Pixels whose truth is the ignore index are left out. Per class, IoU = TP / (TP + FP + FN); mIoU averages the
classes that occur in the truth or the predictions; pixel accuracy is the share of pixels right; mean accuracy
averages the per-class recalls of the classes in the truth; frequency-weighted IoU weighs each class's IoU by its
share of the true pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnapps.errors import CnnappsError, ImageError, repeated_name


def confusion_matrix(pred: Any, target: Any, num_classes: int, ignore_index: int) -> Any:
    """(K, K) pixel counts, rows the true class, columns the predicted class (torch tensors in, a tensor out)."""
    import torch

    valid = (target != ignore_index) & (target >= 0) & (target < num_classes)
    index = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index.reshape(-1), minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores(confusion: np.ndarray) -> dict[str, Any]:
    """mIoU, pixel accuracy, mean accuracy, frequency-weighted IoU and per-class IoU and accuracy (None for a class
    in neither the truth nor the predictions) from a confusion matrix."""
    counts = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(counts)
    truth, predicted = counts.sum(1), counts.sum(0)
    union = truth + predicted - tp
    total = truth.sum()
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    accuracy = np.where(truth > 0, tp / np.maximum(truth, 1), np.nan)
    seen = union > 0
    return {
        "miou": float(np.nanmean(iou)) if seen.any() else None,
        "pixel_acc": float(tp.sum() / total) if total else None,
        "mean_acc": float(np.nanmean(accuracy)) if (truth > 0).any() else None,
        "fwiou": float(np.nansum(truth / max(total, 1) * iou)) if total else None,
        "iou": [None if np.isnan(v) else float(v) for v in iou],
        "acc": [None if np.isnan(v) else float(v) for v in accuracy],
        "pixels": [int(v) for v in truth],
    }


@dataclass
class SemanticReport:
    images: int
    class_names: list[str]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    failed: list[dict[str, str]] = field(default_factory=list)

    @property
    def scores(self) -> dict[str, Any]:
        return scores(np.array(self.confusion, dtype=np.int64).reshape(len(self.class_names), -1))

    def to_dict(self) -> dict[str, Any]:
        found = self.scores
        per_class = {name: {"iou": found["iou"][i], "acc": found["acc"][i], "pixels": found["pixels"][i]}
                     for i, name in enumerate(self.class_names)}  # fmt: skip
        return {"images": self.images, "miou": found["miou"], "pixel_acc": found["pixel_acc"],
                "mean_acc": found["mean_acc"], "fwiou": found["fwiou"], "per_class": per_class,
                "confusion": self.confusion, "class_names": self.class_names, "failed": self.failed}  # fmt: skip


def class_lookup(model_classes: list[str], data_classes: list[str], ignore_index: int, *,
                 model_source: str = "the model", data_source: str = "the data") -> np.ndarray:  # fmt: skip
    """Data class index -> model class index, matched by name (the ignore index stays); data classes the model does
    not know, and a name given twice on either side (it would join two classes), are one-line errors naming them."""
    for source, names in ((model_source, model_classes), (data_source, data_classes)):
        twice = repeated_name(names)
        if twice is not None:
            name, i, j = twice
            raise CnnappsError(f"{source}: classes {i} and {j} are both named {name!r}; classes meet by name, so each "
                               "needs a name of its own")  # fmt: skip
    index = {name: i for i, name in enumerate(model_classes)}
    unknown = [n for n in data_classes if n not in index]
    if unknown:
        more = "..." if len(model_classes) > 8 else ""
        raise CnnappsError(f"the data has classes the model does not know: {', '.join(unknown[:5])} "
                           f"(model classes: {', '.join(model_classes[:8])}{more})")  # fmt: skip
    lut = np.full(max(ignore_index + 1, len(data_classes)), ignore_index, np.int64)
    lut[: len(data_classes)] = [index[n] for n in data_classes]
    return lut


def evaluate_semantic(predictor: Any, data: Any, progress: Callable[[int], None] | None = None,
                      chunk: int = 16) -> SemanticReport:  # fmt: skip
    """Run ``predictor`` over a :class:`~cnnapps.datasets.semantic.SemanticSet` (classes meet by name); images or
    masks that cannot be used are listed in ``failed`` and not scored."""
    import torch

    from cnnapps.datasets.semantic import MaskError

    names = list(predictor.class_names)
    k = len(names)
    lut = torch.from_numpy(class_lookup(names, data.class_names, data.ignore_index,
                                        model_source=str(getattr(predictor, "source", "the model")),
                                        data_source=str(getattr(data, "source", "") or "the data")))  # fmt: skip
    total = torch.zeros((k, k), dtype=torch.int64)
    failed, scored = [], 0
    for start in range(0, len(data), chunk):
        indices = list(range(start, min(len(data), start + chunk)))
        results = predictor.predict([data.items[i].image for i in indices])
        for i, result in zip(indices, results, strict=True):
            if not result.ok:
                failed.append({"path": str(data.items[i].image), "error": result.error})
                continue
            try:
                truth = data.mask(i, result.labels.shape)
            except (MaskError, ImageError) as exc:
                path, reason = (exc.path, exc.reason) if isinstance(exc, MaskError) else (exc.source, exc.detail)
                failed.append({"path": str(path), "error": reason})  # the file that failed, and why
                continue
            target = lut[torch.from_numpy(truth).clamp_(0, len(lut) - 1)]
            total += confusion_matrix(torch.from_numpy(result.labels.astype(np.int64)), target, k, data.ignore_index)
            scored += 1
        if progress is not None:
            progress(len(indices))
    return SemanticReport(scored, names, total.tolist(), failed)
