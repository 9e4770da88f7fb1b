"""Retrieval quality on a labelled set: every image queries all the others.

recall@k: the share of queries with at least one image of their class among the k nearest.
mAP@R (Musgrave et al. 2020): with R the number of other images of the query's class, the mean
over queries of the average precision within the R nearest.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnapps.datasets.folders import LabeledImages


def retrieval_metrics(vectors: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    labels = np.asarray(labels)
    n = len(labels)
    counts = np.bincount(labels) if labels.dtype.kind in "iu" else None
    others = (counts[labels] if counts is not None else np.array([(labels == y).sum() for y in labels])) - 1
    depth = int(min(n - 1, max(max(ks), others.max(initial=0))))
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    _, found = index.search(vectors, depth + 1)
    hits = np.zeros((n, depth), dtype=bool)
    for q in range(n):
        neighbours = [j for j in found[q] if j != q and j >= 0][:depth]
        hits[q, : len(neighbours)] = labels[neighbours] == labels[q]
    metrics = {f"recall@{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}
    aps = []
    for q in range(n):
        r = int(others[q])
        if r == 0:
            continue
        rel = hits[q, :r]
        precision = np.cumsum(rel) / np.arange(1, r + 1)
        aps.append(float((precision * rel).sum() / r))
    metrics["map@r"] = float(np.mean(aps)) if aps else 0.0
    return metrics


def evaluate_retrieval(embedder: Any, data: LabeledImages, progress: Any = None) -> dict[str, Any]:
    """Embed ``data`` and score it; unreadable images are listed and left out."""
    names, vectors, errors = embedder.embed(data.paths, progress=progress)
    ok = np.array([e is None for e in errors], dtype=bool)
    if ok.sum() < 2:  # a query needs another image to be retrieved among
        from cnnapps.errors import CnnappsError

        first = next((f"; {n}: {e}" for n, e in zip(names, errors, strict=True) if e), "")
        raise CnnappsError(f"{int(ok.sum())} of {len(names)} images could be read: retrieval is scored on 2 or "
                           f"more{first}")  # fmt: skip
    metrics = retrieval_metrics(vectors[ok], np.asarray(data.labels)[ok])
    failed = [{"path": n, "error": e} for n, e in zip(names, errors, strict=True) if e is not None]
    return {"n": int(ok.sum()), **metrics, "failed": failed}
