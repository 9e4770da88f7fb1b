"""Queries against an index, near-duplicate groups, and the query-beside-results picture."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from cnnapps.apps.retrieve.index import Index
from cnnapps.results import RetrievalResult


def retrieve(index: Index, queries: Sequence[Any], k: int = 10, embedder: Any = None) -> list[RetrievalResult]:
    """Top-``k`` of the index for each query image; a query that cannot be read gets ``error``."""
    embedder = embedder or index.embedder()
    index.check_embedder(embedder)
    names, vectors, errors = embedder.embed(list(queries))
    ok = [i for i, e in enumerate(errors) if e is None]
    hits = index.search(vectors[ok], k) if ok else []
    by_query = dict(zip(ok, hits, strict=True))
    return [
        RetrievalResult(name, error=error) if error else RetrievalResult(name, hits=by_query[i])
        for i, (name, error) in enumerate(zip(names, errors, strict=True))
    ]


def find_duplicates(
    paths: Sequence[str], embedder: Any, threshold: float = 0.9, progress: Callable[[int], None] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Groups of images whose embeddings have cosine similarity >= ``threshold`` (linked transitively).

    Uses FAISS range search, so memory stays linear in the number of images.
    """
    import faiss

    names, vectors, errors = embedder.embed(list(paths), progress=progress)
    failed = [{"path": n, "error": e} for n, e in zip(names, errors, strict=True) if e]
    keep = [i for i, e in enumerate(errors) if e is None]
    vectors = np.ascontiguousarray(vectors[keep], dtype=np.float32)
    names = [names[i] for i in keep]
    if len(names) < 2:
        return [], failed
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    lims, sims, ids = flat.range_search(vectors, float(threshold))
    parent = list(range(len(names)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    best: dict[tuple[int, int], float] = {}
    for q in range(len(names)):
        for s, j in zip(sims[lims[q] : lims[q + 1]], ids[lims[q] : lims[q + 1]], strict=True):
            if j != q:
                parent[root(int(j))] = root(q)
                best[(min(q, int(j)), max(q, int(j)))] = float(s)
    groups: dict[int, list[int]] = {}
    for i in range(len(names)):
        groups.setdefault(root(i), []).append(i)
    lowest: dict[int, float] = {}
    for (a, _), s in best.items():
        r = root(a)
        lowest[r] = min(s, lowest.get(r, s))
    result = []
    for r, members in groups.items():
        if len(members) > 1:
            result.append({"images": [names[i] for i in sorted(members)], "min_similarity": round(lowest[r], 6)})
    result.sort(key=lambda g: (-len(g["images"]), g["images"][0]))
    return result, failed


def query_grid(query: np.ndarray, hits: Sequence[Any], thumb: int = 160) -> np.ndarray:
    """The query (framed in blue) beside its ranked results, each captioned with rank and similarity."""
    from cnnapps.datasets.io import read_image
    from cnnapps.errors import ImageError

    def fit(img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        scale = thumb / max(h, w)
        small = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        tile = np.full((thumb, thumb, 3), 255, np.uint8)
        y, x = (thumb - small.shape[0]) // 2, (thumb - small.shape[1]) // 2
        tile[y : y + small.shape[0], x : x + small.shape[1]] = small
        return tile

    def caption(tile: np.ndarray, text: str) -> np.ndarray:
        band = np.full((22, thumb, 3), 255, np.uint8)
        cv2.putText(band, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        return np.vstack([tile, band])

    q = fit(query)
    cv2.rectangle(q, (0, 0), (thumb - 1, thumb - 1), (40, 90, 220), 4)
    tiles = [caption(q, "query")]
    for hit in hits:
        try:
            img = fit(read_image(hit.path))
        except ImageError:
            img = np.full((thumb, thumb, 3), 200, np.uint8)
        tiles.append(caption(img, f"#{hit.rank}  {hit.score:.3f}"))
    gap = np.full((thumb + 22, 4, 3), 255, np.uint8)
    row: list[np.ndarray] = []
    for t in tiles:
        row += [t, gap]
    return np.hstack(row[:-1])
