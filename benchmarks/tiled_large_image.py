"""Tiled segmentation of a 10,000 x 10,000 image: time, peak memory, and how many objects are found.

Draws coloured shapes (the synthetic set's kinds and colours, 100-300 px across) on a textured
10,000 x 10,000 canvas, then runs ``cnnapps segment BIG --tile 1024 --overlap 128 --json`` in a child
process and reads its peak resident memory. A shape counts as found when a detection of the same kind
overlaps its box with IoU >= 0.5.

    python benchmarks/tiled_large_image.py --model runs/shapes/model.safetensors [--size 10000] [--write]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def draw_canvas(path: Path, size: int, n: int, seed: int = 0) -> list[tuple[str, list[float]]]:
    import cv2
    import numpy as np

    from cnnapps.datasets.synthetic import COLOURS, SHAPES

    rng = np.random.default_rng(seed)
    canvas = np.empty((size, size, 3), np.uint8)
    for y in range(0, size, 1000):  # a gradient with noise, band by band (no float copy of the whole image)
        rows = min(1000, size - y)
        t = (np.arange(y, y + rows, dtype=np.float32) / size)[:, None, None]
        band = 110 + 100 * t + rng.normal(0, 8, (rows, size, 3)).astype(np.float32)
        canvas[y : y + rows] = np.clip(band, 0, 255).astype(np.uint8)
    truth, taken = [], []
    while len(truth) < n:
        kind = SHAPES[int(rng.integers(3))]
        r = float(rng.uniform(50, 150))
        cx, cy = (float(v) for v in rng.uniform(r + 5, size - r - 5, 2))
        if any(math.hypot(cx - x, cy - y) < r + q + 20 for x, y, q in taken):
            continue
        taken.append((cx, cy, r))
        colour = tuple(int(c) for c in COLOURS[list(COLOURS)[int(rng.integers(len(COLOURS)))]])
        if kind == "circle":
            cv2.circle(canvas, (round(cx), round(cy)), round(r), colour, -1)
            pts = np.array([[cx - r, cy - r], [cx + r, cy + r]])
        else:
            corners, scale = (4, 1.2) if kind == "square" else (3, 1.25)
            angle = float(rng.uniform(0, 2 * math.pi)) if kind == "triangle" else float(rng.uniform(-0.3, 0.3))
            turns = [angle + 2 * math.pi * i / corners for i in range(corners)]
            pts = np.array([[cx + scale * r * math.cos(a), cy + scale * r * math.sin(a)] for a in turns])
            cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], colour)
        truth.append((kind, [*pts.min(0).tolist(), *pts.max(0).tolist()]))
    cv2.imwrite(str(path), canvas[:, :, ::-1])
    return truth


def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--shapes", type=int, default=150)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--write", action="store_true", help="record the result in benchmarks/RESULTS.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.png"
        truth = draw_canvas(big, args.size, args.shapes)
        cmd = [sys.executable, "-m", "cnnapps", "segment", str(big), "--model", args.model, "--tile", str(args.tile),
               "--overlap", str(args.overlap), "--json"]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    (result,) = json.loads(done.stdout)
    found = [(i["label"], i["box"]) for i in result["instances"]]
    hits = sum(any(k == kind and iou(box, b) >= 0.5 for k, b in found) for kind, box in truth)
    image_gb = args.size * args.size * 3 / 1024**3
    tiles = math.ceil((args.size - args.overlap) / (args.tile - args.overlap)) ** 2
    body = (
        "## tiled segmentation of a large image\n\n"
        f"`python benchmarks/tiled_large_image.py --model {args.model}`: a {args.size:,} x {args.size:,} PNG with "
        f"{len(truth)} shapes 100-300 px across, `cnnapps segment --tile {args.tile} --overlap {args.overlap} "
        f"--json` ({tiles} tiles) on a 2-core CPU.\n\n"
        "| wall time | peak memory (whole process) | decoded image alone | shapes found (same kind, box IoU >= 0.5) "
        "| detections |\n| ---: | ---: | ---: | ---: | ---: |\n"
        f"| {seconds:.0f} s | {peak_gb:.2f} GB | {image_gb:.2f} GB | {hits} of {len(truth)} | {len(found)} |\n\n"
        "Detections beyond the shapes are mostly pieces of shapes cut by tile edges that the model, trained on "
        "whole shapes at 256 px, gives another class or a box a little off the tile edge.\n"
    )
    from recording import record

    record("tiled segmentation of a large image", body, args.write)


if __name__ == "__main__":
    main()
