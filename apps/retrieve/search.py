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
        RetrievalResult(name, error=error) if error else RetrievalResult(name, hits=by_query[i], engine=embedder.engine)
        for i, (name, error) in enumerate(zip(names, errors, strict=True))
    ]


#: two images whose 64-bit perceptual hashes differ in at most this many bits are near duplicates too (when
#: their embeddings agree at least loosely, see HASH_MIN_SIMILARITY): rescaled and re-encoded copies of a photo
#: hash 0-2 bits from it, while the distinct photos of benchmarks/dedup_robustness.py are 16 or more apart
HASH_BITS = 6
#: the cosine similarity a hash match must also reach: a guard against two unrelated pictures sharing a hash
HASH_MIN_SIMILARITY = 0.5
#: the fewest (and 64 less the most) bits a hash that tells images apart sets: each bit says whether a frequency is
#: above the median, so a picture with distinct frequencies sets 32 (every photo of benchmarks/dedup_robustness.py
#: and its copies); a flat or plain one, whose frequencies tie at 0, sets 0-1 whatever its colour (a red and a blue
#: square were one group)
HASH_MIN_SET_BITS = 16


def perceptual_hash(rgb: np.ndarray) -> np.ndarray:
    """imagehash's pHash of an RGB image as 8 bytes: whether each of the 8x8 lowest DCT frequencies of a 32x32
    grey copy is above their median.

    Unlike a CNN embedding it does not change when an image is shrunk or re-encoded (the embedding of a small
    copy, upscaled to the network's input, is blurred), though it does under crops, which embeddings tolerate."""
    import imagehash
    from PIL import Image

    return np.packbits(imagehash.phash(Image.fromarray(rgb)).hash.ravel())


SIMILARITY_TOLERANCE = 1e-6  # float32 rounding of a cosine that is 1 (or the threshold) in exact arithmetic


def find_duplicates(
    paths: Sequence[str],
    embedder: Any,
    threshold: float = 0.9,
    progress: Callable[[int], None] | None = None,
    hash_bits: int | None = HASH_BITS,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Groups of near-duplicate images (linked transitively): pairs whose embeddings have cosine similarity
    >= ``threshold``, and pairs whose perceptual hashes differ in at most ``hash_bits`` bits (``None``: no
    hashes) while their cosine is >= :data:`HASH_MIN_SIMILARITY`. A group's ``min_similarity`` is the lowest
    cosine of the pairs that link it.

    Uses FAISS range searches (inner product, then Hamming), so memory stays linear in the number of images.
    """
    import faiss

    from cnnapps.apps.retrieve.index import index_path
    from cnnapps.datasets.io import read_for_batch

    first: dict[str, str] = {}
    for path in paths:  # a file named twice (or by two names) is one image, not its own duplicate
        first.setdefault(index_path(path), path)
    paths = list(first.values())
    names, vectors, errors = embedder.embed(paths, progress=progress)
    failed = [{"path": n, "error": e} for n, e in zip(names, errors, strict=True) if e]
    keep = [i for i, e in enumerate(errors) if e is None]
    vectors = np.ascontiguousarray(vectors[keep], dtype=np.float32)
    names = [names[i] for i in keep]
    if len(names) < 2:
        return [], failed
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    # FAISS keeps scores above the radius, and a copy's cosine is 1 - 6e-8 in float32: "reaches" has a tolerance
    pairs = [flat.range_search(vectors, float(threshold) - SIMILARITY_TOLERANCE)]
    if hash_bits is not None and hash_bits >= 0:
        hashes = np.zeros((len(names), 8), dtype=np.uint8)
        hashed = np.zeros(len(names), dtype=bool)  # False: unreadable since it was embedded (changed meanwhile)
        for row, i in enumerate(keep):
            rgb = read_for_batch(paths[i])[1]
            if rgb is not None:
                hashes[row], hashed[row] = perceptual_hash(rgb), True
        binary = faiss.IndexBinaryFlat(64)
        binary.add(hashes)
        lims, _, ids = binary.range_search(hashes, int(hash_bits) + 1)  # distances strictly below the radius
        queries = np.repeat(np.arange(len(names)), np.diff(lims.astype(np.int64)))
        sims = np.einsum("ij,ij->i", vectors[queries], vectors[ids]) if len(ids) else np.zeros(0, np.float32)
        ones = np.unpackbits(hashes, axis=1).sum(axis=1)
        telling = hashed & (ones >= HASH_MIN_SET_BITS) & (ones <= 64 - HASH_MIN_SET_BITS)
        confirmed = (sims >= HASH_MIN_SIMILARITY) & telling[queries] & telling[ids]
        queries = queries[confirmed]
        pairs.append((np.searchsorted(queries, np.arange(len(names) + 1)), sims[confirmed], ids[confirmed]))
    parent = list(range(len(names)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    best: dict[tuple[int, int], float] = {}
    for lims, sims, ids in pairs:
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
