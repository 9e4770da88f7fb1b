"""Retrieval quality on a labelled set: every image queries all the others.

recall@k: the share of queries with at least one image of their class among the k nearest.
mAP@R (Musgrave et al. 2020): with R the number of other images of the query's class, the mean
over queries of the average precision within the R nearest.

Both are over the queries whose class has another image, as in pytorch-metric-learning: an image alone in
its class can find nothing right, so it is searched among but not scored as a query.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnapps.datasets.folders import LabeledImages
from cnnapps.errors import CnnappsError


def same_class_others(labels: np.ndarray) -> np.ndarray:
    """How many other images share each image's class (0: the image cannot be scored as a query)."""
    _, inverse, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    return counts[inverse.reshape(-1)] - 1


def retrieval_metrics(vectors: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """recall@k and mAP@R over the queries whose class has another image; none such is a ``CnnappsError``."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    labels = np.asarray(labels)
    n = len(labels)
    others = same_class_others(labels)
    queries = np.flatnonzero(others > 0)
    if not len(queries):
        raise CnnappsError(
            f"no class has 2 or more of the {n} images: recall and mAP@R score queries with another image of "
            "their class"
        )
    depth = int(min(n - 1, max(max(ks), others.max(initial=0))))
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    _, found = index.search(vectors[queries], depth + 1)
    hits = np.zeros((len(queries), depth), dtype=bool)
    for row, q in enumerate(queries):
        neighbours = [j for j in found[row] if j != q and j >= 0][:depth]
        hits[row, : len(neighbours)] = labels[neighbours] == labels[q]
    metrics = {f"recall@{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}
    aps = []
    for row, q in enumerate(queries):
        r = int(others[q])
        rel = hits[row, :r]
        precision = np.cumsum(rel) / np.arange(1, r + 1)
        aps.append(float((precision * rel).sum() / r))
    metrics["map@r"] = float(np.mean(aps))
    return metrics


def evaluate_retrieval(embedder: Any, data: LabeledImages, progress: Any = None) -> dict[str, Any]:
    """Embed ``data`` and score it; unreadable images are listed and left out. ``queries``: the images scored as
    queries; ``left_out``: those alone in their class, searched among but not scored."""
    names, vectors, errors = embedder.embed(data.paths, progress=progress)
    ok = np.array([e is None for e in errors], dtype=bool)
    if ok.sum() < 2:  # a query needs another image to be retrieved among
        first = next((f"; {n}: {e}" for n, e in zip(names, errors, strict=True) if e), "")
        raise CnnappsError(f"{int(ok.sum())} of {len(names)} images could be read: retrieval is scored on 2 or "
                           f"more{first}")  # fmt: skip
    labels = np.asarray(data.labels)[ok]
    metrics = retrieval_metrics(vectors[ok], labels)
    failed = [{"path": n, "error": e} for n, e in zip(names, errors, strict=True) if e is not None]
    alone = int((same_class_others(labels) == 0).sum())  # searched among, not scored as queries
    return {"n": int(ok.sum()), "queries": int(ok.sum()) - alone, "left_out": alone, **metrics, "failed": failed}
