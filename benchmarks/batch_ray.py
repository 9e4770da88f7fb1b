"""Batch prediction on Ray against one process: the same JPEG folder classified by

- ``plain``: torchvision's way in one process: PIL + transforms in DataLoader workers, the same
  EfficientNet-Lite0 weights (through cnnapps' Classifier), eager fp32, rows written to one JSON Lines file;
- ``cnnapps classify --json``: one process, the predictor's batching and decode threads;
- ``cnnapps batch classify``: a local Ray cluster, ``--workers`` actors of one thread each, Parquet parts.

Each is timed end to end as a command (start-up, model load and writing included), so the figures say what a
user waits for; the Ray run's start-up (cluster, actors, one model load per actor) is paid once per run, which
matters less the more files there are.

    python benchmarks/batch_ray.py [--images 2000] [--workers 2] [--part-size 250] [--write]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from classify_throughput import make_folder
from recording import describe_machine, record

PLAIN = r"""
import json, sys, torch
from PIL import Image
from torchvision import transforms
from cnnapps.api import load
paths = sys.argv[1:-1]
model = load().members[0].model.eval()
tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                         transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
class Files(torch.utils.data.Dataset):
    def __len__(self): return len(paths)
    def __getitem__(self, i): return tf(Image.open(paths[i]).convert("RGB"))
loader = torch.utils.data.DataLoader(Files(), batch_size=32, num_workers=1)
with open(sys.argv[-1], "w") as out, torch.inference_mode():
    k = 0
    for x in loader:
        probs = model(x).softmax(1)
        for row in probs:
            top = row.topk(5)
            out.write(json.dumps({"path": paths[k], "top": top.indices.tolist()}) + "\n")
            k += 1
"""


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ...: exit {done.returncode}\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2, help="Ray actors (one CPU thread each).")
    parser.add_argument("--part-size", type=int, default=250)
    parser.add_argument("--write", action="store_true", help="Record the result in benchmarks/RESULTS.md.")
    args = parser.parse_args()

    cnnapps = str(Path(sys.executable).with_name("cnnapps"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        make_folder(root / "images", args.images)
        paths = sorted(str(p) for p in (root / "images").iterdir())
        plain = timed([sys.executable, "-c", PLAIN, *paths, str(root / "plain.jsonl")])
        one = timed([cnnapps, "classify", str(root / "images"), "--json"])
        ray = timed([cnnapps, "batch", "classify", str(root / "images"), "--out", str(root / "parts"),
                     "--workers", str(args.workers), "--part-size", str(args.part_size), "--json"])  # fmt: skip
        rows = len(list((root / "parts").glob("part-*.parquet")))
        import pandas as pd

        table = pd.read_parquet(root / "parts")
        agree = json.loads(table.iloc[0]["result"])["predictions"][0]["index"]
        first_plain = json.loads((root / "plain.jsonl").read_text().splitlines()[0])["top"][0]
    n = args.images
    lines = [
        "| run | seconds | images/s | vs plain |",
        "| --- | --- | --- | --- |",
        f"| plain torchvision loop (1 process, 1 loader worker) | {plain:.1f} | {n / plain:.1f} | 1.00x |",
        f"| cnnapps classify (1 process) | {one:.1f} | {n / one:.1f} | {plain / one:.2f}x |",
        f"| cnnapps batch classify (Ray, {args.workers} actors) | {ray:.1f} | {n / ray:.1f} | {plain / ray:.2f}x |",
    ]
    body = (
        "## batch prediction on Ray\n\n"
        f"`python benchmarks/batch_ray.py --images {n} --workers {args.workers} --part-size {args.part_size}`: "
        f"{n} JPEGs (400-800 px) classified by EfficientNet-Lite0, each run a command timed end to end (start-up "
        f"and model loads included); the Ray run wrote {rows} Parquet parts, {len(table)} rows (first image's "
        f"top class {agree}, the plain loop's {first_plain}).\n"
        f"Measured on {describe_machine('cpu')}.\n\n" + "\n".join(lines) + "\n"
    )
    record("batch prediction on Ray", body, args.write)


if __name__ == "__main__":
    main()
