"""Index kinds at scale: flat vs IVF-PQ vs HNSW against numpy brute force, in one run.

For N unit vectors of the default embedding size (1280) it reports build time, index memory,
single-query and batch-of-100 latency, and recall@10 against exact search. Two datasets:

- ``uniform``: unit vectors drawn uniformly on the sphere (what the issue asks for). In 1280
  dimensions such vectors have no neighbourhood structure: every vector is almost equally far
  from every other, which is the worst case for any approximate index.
- ``clustered``: the same count drawn around 2,000 random centres (noise 0.7 of the centre norm),
  closer to real image embeddings, which crowd around visual concepts.

Usage: python benchmarks/retrieval_scale.py [--n 1000000] [--datasets uniform,clustered]
       [--kinds flat,ivfpq,hnsw] [--write]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import time

import numpy as np

DIM = 1280


def make_vectors(kind: str, n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    centres = rng.standard_normal((2000, dim)).astype(np.float32) if kind == "clustered" else None
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        block = rng.standard_normal((stop - start, dim), dtype=np.float32)
        if centres is not None:
            block = centres[rng.integers(0, len(centres), stop - start)] + 0.7 * block
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def numpy_topk(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ base.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)]))


def latency(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def run_dataset(kind: str, n: int, n_queries: int, index_kinds: tuple[str, ...]) -> list[dict]:
    import faiss

    from cnnapps.apps.retrieve.index import build_faiss

    base = make_vectors(kind, n, DIM, seed=1)
    queries = make_vectors(kind, n_queries, DIM, seed=2) if kind == "uniform" else None
    if queries is None:  # clustered queries come from the same centres
        rng = np.random.default_rng(2)
        picks = base[rng.integers(0, n, n_queries)] + 0.3 * rng.standard_normal(
            (n_queries, DIM), dtype=np.float32
        ) / np.sqrt(DIM)
        queries = (picks / np.linalg.norm(picks, axis=1, keepdims=True)).astype(np.float32)
    truth = numpy_topk(base, queries, 10)
    rows = []
    single = latency(lambda: numpy_topk(base, queries[:1], 10), 3)
    batch = latency(lambda: numpy_topk(base, queries, 10), 1)
    rows.append({"dataset": kind, "index": "numpy brute force", "build_s": 0.0, "memory_gb": base.nbytes / 1e9,
                 "single_ms": single * 1e3, "batch100_ms": batch * 1e3, "recall10": 1.0})  # fmt: skip
    print(rows[-1], flush=True)
    ids = np.arange(n, dtype=np.int64)
    for index_kind in index_kinds:
        gc.collect()
        start = time.perf_counter()
        index = build_faiss(index_kind, base, ids, DIM)
        build = time.perf_counter() - start
        memory = len(faiss.serialize_index(index)) / 1e9
        settings = [None]
        if index_kind == "ivfpq":  # the index's IVF-PQ codes; exact re-ranking keeps the raw vectors too
            memory = (len(faiss.serialize_index(faiss.extract_index_ivf(index))) + base.nbytes) / 1e9
            settings = [(nprobe, k_factor) for nprobe in (8, 32, 128) for k_factor in (10, 50)]
        for setting in settings:
            if setting is not None:
                faiss.extract_index_ivf(index).nprobe = setting[0]
                faiss.downcast_index(index.index).k_factor = setting[1]
            single = latency(lambda idx=index: idx.search(queries[:1], 10), 20)
            batch = latency(lambda idx=index: idx.search(queries, 10), 2)
            found = index.search(queries, 10)[1]
            name = index_kind if setting is None else f"ivfpq nprobe={setting[0]} rerank={setting[1]}x"
            row = {"dataset": kind, "index": name, "build_s": build, "memory_gb": memory}
            row.update(single_ms=single * 1e3, batch100_ms=batch * 1e3, recall10=recall_at(found, truth))
            rows.append(row)
            print(rows[-1], flush=True)
        del index
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--datasets", default="uniform,clustered")
    parser.add_argument("--kinds", default="flat,ivfpq,hnsw", help="index kinds to build")
    parser.add_argument("--write", action="store_true", help="record the result in benchmarks/RESULTS.md")
    args = parser.parse_args()
    rows = []
    for kind in args.datasets.split(","):
        rows += run_dataset(kind, args.n, args.queries, tuple(args.kinds.split(",")))
    lines = ["| data | index | build | memory | 1 query | 100 queries | recall@10 | vs numpy (1 query) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for row in rows:
        brute = next(r for r in rows if r["dataset"] == row["dataset"] and r["index"] == "numpy brute force")
        lines.append(
            f"| {row['dataset']} | {row['index']} | {row['build_s']:.1f} s | {row['memory_gb']:.2f} GB | "
            f"{row['single_ms']:.2f} ms | {row['batch100_ms']:.1f} ms | {row['recall10']:.3f} | "
            f"{brute['single_ms'] / row['single_ms']:.0f}x |"
        )
    machine = f"{platform.machine()}, {os.cpu_count()} cores, peak RSS {rss_gb():.1f} GB"
    report = "\n".join(
        [
            "## retrieval scale",
            "",
            f"`python benchmarks/retrieval_scale.py --n {args.n}` ({DIM}-d unit vectors) on {machine}.",
            "",
            *lines,
            "",
        ]
    )
    from recording import record

    record("retrieval scale", report, args.write)


if __name__ == "__main__":
    main()
