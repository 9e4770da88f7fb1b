"""Near-duplicate detection on rescaled, re-encoded and cropped copies of real photos.

Builds a folder from scikit-image's photos: each original (lossless PNG) with copies shrunk to 0.25-0.75x
(and to 200 px wide, the case of issue 20), JPEG re-encodes at quality 30-70, a PNG -> JPEG conversion,
5 % and 10 % crops, a shrunk-and-re-encoded copy and a 2-degree rotation (reported on its own line). Then,
for each way of scoring pairs, at the default ``cnnapps dedup`` threshold:

- pair recall: the share of (original, copy) pairs that score at or above the threshold, per kind of copy;
- group recall: the share of copies that ``find_duplicates`` puts in their original's group;
- false pairs: pairs of distinct photos that score at or above it (of all such pairs), and how many distinct
  originals end up in one group;
- the lowest true-pair score and the highest distinct-pair score (the margin the threshold sits in).

Methods: ``before`` and ``after`` run ``find_duplicates`` (the code of ``cnnapps dedup``) with embeddings only
and as it now is (embeddings or perceptual hashes); ``gem``: embeddings only, GeM pooling; ``phash``: hashes only.

Usage: python benchmarks/dedup_robustness.py [--methods before,gem,phash,after] [--threshold 0.9] [--write]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

PHOTOS = (
    "coffee", "chelsea", "astronaut", "rocket", "coins", "camera", "immunohistochemistry", "hubble_deep_field",
    "retina", "moon", "clock", "page", "text", "brick", "grass", "gravel", "cell", "motorcycle",
)  # fmt: skip


def photo(name: str) -> np.ndarray:
    from skimage import data

    img = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[:, :, :3])


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    _, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]


def scale(rgb: np.ndarray, factor: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)


def crop(rgb: np.ndarray, share: float, centred: bool) -> np.ndarray:
    h, w = rgb.shape[:2]
    dy, dx = round(h * share), round(w * share)
    if centred:  # share/2 off each side
        return rgb[dy // 2 : h - (dy - dy // 2), dx // 2 : w - (dx - dx // 2)]
    return rgb[: h - dy, : w - dx]  # trimmed at the right and the bottom


def rotate(rgb: np.ndarray, degrees: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(rgb, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


#: kind of copy -> (how it is made, the file format it is saved in)
COPIES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "0.75x": (lambda im: scale(im, 0.75), "png"),
    "0.5x": (lambda im: scale(im, 0.5), "png"),
    "0.25x": (lambda im: scale(im, 0.25), "png"),
    "200 px wide, JPEG": (lambda im: jpeg(scale(im, 200 / im.shape[1]), 75), "png"),
    "JPEG q70": (lambda im: jpeg(im, 70), "png"),
    "JPEG q50": (lambda im: jpeg(im, 50), "png"),
    "JPEG q30": (lambda im: jpeg(im, 30), "png"),
    "PNG -> JPEG q90": (lambda im: im, "jpg"),
    "0.5x + JPEG q50": (lambda im: jpeg(scale(im, 0.5), 50), "png"),
    "crop 5 % (centred)": (lambda im: crop(im, 0.05, True), "png"),
    "crop 10 % (corner)": (lambda im: crop(im, 0.10, False), "png"),
    "rotated 2 deg (optional)": (lambda im: rotate(im, 2.0), "png"),
}
OPTIONAL = {"rotated 2 deg (optional)"}


def build(folder: Path) -> tuple[list[str], list[int], list[str]]:
    """Writes the originals and their copies; returns paths, the photo each came from, and the kind of copy."""
    paths, family, kinds = [], [], []
    for f, name in enumerate(PHOTOS):
        rgb = photo(name)
        target = folder / f"{name}.png"
        cv2.imwrite(str(target), rgb[:, :, ::-1])
        paths.append(str(target)), family.append(f), kinds.append("original")
        for k, (kind, (make, fmt)) in enumerate(COPIES.items()):
            target = folder / f"{name}-copy{k}.{fmt}"
            params = [cv2.IMWRITE_JPEG_QUALITY, 90] if fmt == "jpg" else []
            cv2.imwrite(str(target), make(rgb)[:, :, ::-1], params)
            paths.append(str(target)), family.append(f), kinds.append(kind)
    return paths, family, kinds


class Cached:
    """An embedder that embeds once: each method below reuses the vectors of its model."""

    def __init__(self, embedder) -> None:
        self.embedder, self.done = embedder, None

    def embed(self, paths: list[str], progress=None):
        if self.done is None:
            self.done = self.embedder.embed(paths)
            assert not any(self.done[2]), self.done[2]
        return self.done


def hash_distances(paths: list[str]) -> np.ndarray:
    """Hamming distances between the 64-bit perceptual hashes that ``cnnapps dedup`` computes."""
    from cnnapps.apps.retrieve.search import perceptual_hash
    from cnnapps.datasets.io import read_image

    bits = np.unpackbits(np.stack([perceptual_hash(read_image(p)) for p in paths]), axis=1).astype(np.int32)
    return (bits[:, None, :] != bits[None, :, :]).sum(-1)


#: a method: paths -> (a score per pair, whether each pair is linked, each image's group)
Method = Callable[[list[str], float], tuple[np.ndarray, np.ndarray, np.ndarray]]


def methods() -> dict[str, Callable[[], Method]]:
    """Ways of linking pairs, each loaded on demand. ``before``/``after``: ``find_duplicates`` (the code of
    ``cnnapps dedup``) with embeddings only, and as it now is (embeddings or perceptual hashes)."""
    from cnnapps.apps.retrieve import search
    from cnnapps.apps.retrieve.embedder import Embedder

    def dedup(pooling: str, hash_bits: int | None) -> Method:
        embedder = Cached(Embedder(pooling=pooling, device="cpu"))

        def run(paths: list[str], threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            found, failed = search.find_duplicates(paths, embedder, threshold, hash_bits=hash_bits)
            assert not failed, failed
            group = np.arange(len(paths))
            for n, members in enumerate(found):
                group[[paths.index(m) for m in members["images"]]] = len(paths) + n
            vectors = embedder.done[1]
            cosine = vectors @ vectors.T
            linked = cosine >= threshold
            if hash_bits is not None:
                linked |= (hash_distances(paths) <= hash_bits) & (cosine >= search.HASH_MIN_SIMILARITY)
            return cosine, linked, group

        return run

    def phash(paths: list[str], threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        score = 1.0 - hash_distances(paths) / 64  # the share of bits two hashes agree on
        linked = score >= 1.0 - search.HASH_BITS / 64
        return score, linked, groups_of(linked)

    return {
        "before": lambda: dedup("avg", None),
        "gem": lambda: dedup("gem", None),
        "phash": lambda: phash,
        "after": lambda: dedup("avg", search.HASH_BITS),
    }


def groups_of(linked: np.ndarray) -> np.ndarray:
    """Each image's group (the root of its connected component among linked pairs)."""
    n = len(linked)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(*np.nonzero(np.triu(linked, 1)), strict=True):
        parent[root(int(a))] = root(int(b))
    return np.array([root(i) for i in range(n)])


def report(name: str, result: tuple[np.ndarray, np.ndarray, np.ndarray], family: list[int], kinds: list[str],
           secs: float) -> str:  # fmt: skip
    score, linked, group = result
    fam = np.array(family)
    originals = np.nonzero(np.array(kinds) == "original")[0]
    lines = [f"{name} ({len(score)} images in {secs:.1f} s):"]
    missed: list[str] = []
    for kind in ["all copies", *COPIES]:
        copies = [i for i, k in enumerate(kinds) if k != "original" and kind in ("all copies", k)]
        if kind == "all copies":
            copies = [i for i in copies if kinds[i] not in OPTIONAL]
            missed = [f"{PHOTOS[fam[i]]} {kinds[i]}" for i in copies if group[i] != group[originals[fam[i]]]]
        pairs = [(originals[fam[i]], i) for i in copies]
        scores = np.array([score[pair] for pair in pairs])
        lines.append(
            f"  {kind:>26}: pair recall {np.mean([linked[pair] for pair in pairs]):6.1%}"
            f"  group recall {np.mean([group[a] == group[b] for a, b in pairs]):6.1%}"
            f"  score lowest {scores.min():.3f} median {np.median(scores):.3f}"
        )
    upper = np.triu_indices(len(originals), 1)
    distinct = score[np.ix_(originals, originals)][upper]
    lines.append(
        f"  {'distinct photos':>26}: false pairs {int(linked[np.ix_(originals, originals)][upper].sum())} of "
        f"{len(distinct)}, originals in another's group {len(originals) - len(set(group[originals]))}"
        f"  score highest {distinct.max():.3f}"
    )
    lines.append(f"  {'copies left out':>26}: {', '.join(missed) or 'none'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="before,gem,phash,after", help="comma-separated, of: " + ", ".join(
        ("before", "gem", "phash", "after")))  # fmt: skip
    parser.add_argument("--threshold", type=float, default=None, help="[default: cnnapps dedup's]")
    parser.add_argument("--write", action="store_true", help="record the result in benchmarks/RESULTS.md")
    args = parser.parse_args()
    import inspect

    from cnnapps.apps.retrieve.search import HASH_BITS, HASH_MIN_SIMILARITY, find_duplicates

    threshold = args.threshold or inspect.signature(find_duplicates).parameters["threshold"].default
    table = methods()
    with tempfile.TemporaryDirectory() as tmp:
        paths, family, kinds = build(Path(tmp))
        body = [
            f"{len(PHOTOS)} scikit-image photos and {len(COPIES)} copies of each ({len(paths)} images), "
            f"{len(PHOTOS) * (len(PHOTOS) - 1) // 2} pairs of distinct photos; cosine threshold {threshold}, "
            f"hash match: at most {HASH_BITS} of 64 bits apart and cosine >= {HASH_MIN_SIMILARITY}; "
            "score: cosine (phash: the share of hash bits that agree); recall of (original, copy) pairs"
        ]
        print(body[0], flush=True)
        for name in args.methods.split(","):
            if name not in table:
                raise SystemExit(f"--methods: {name}? choose from {', '.join(table)}")
            method = table[name]()
            start = time.perf_counter()
            result = method(paths, threshold)
            body.append(report(name, result, family, kinds, time.perf_counter() - start))
            print(body[-1], flush=True)
    if args.write:
        from recording import record

        text = "## Near-duplicate robustness\n\n```\n" + "\n\n".join(body) + "\n```\n"
        record("Near-duplicate robustness", text, True)


if __name__ == "__main__":
    main()
