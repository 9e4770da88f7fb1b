"""Training data loading: our albumentations + OpenCV pipeline against torchvision transforms + PIL.

Both do the classification ``default`` preset on the same JPEGs — decode, random resized crop to
224 (35-100 % of the area), horizontal flip, colour jitter half the time, normalise — inside DataLoader
worker processes with batches of 32, and are timed over whole epochs, interleaved. Reported as images/s
per worker for each worker count. A third column is the workers' share of cnnapps' GPU path: the same
crop and flip, uint8 out (a quarter of the bytes), colour jitter and normalisation left to the GPU.

    python benchmarks/dataloader.py [--images 512] [--workers 1 2] [--repeats 3] [--write]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from classify_throughput import make_folder
from recording import record


class TorchvisionPIL:
    """The torchvision way: PIL decode, torchvision transforms on PIL images."""

    def __init__(self, paths: list[str]) -> None:
        from torchvision import transforms as T

        self.paths = paths
        self.transform = T.Compose(
            [
                T.RandomResizedCrop(224, scale=(0.35, 1.0)),
                T.RandomHorizontalFlip(),
                T.RandomApply([T.ColorJitter(0.2, 0.2, 0.2, 0.02)], p=0.5),
                T.ToTensor(),
                T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB")), 0


def ours(paths: list[str], output: str = "float32"):
    """cnnapps' training dataset: OpenCV decode (EXIF-aware), the albumentations ``default`` preset; with
    ``output="uint8"`` what the workers do when training on a GPU."""
    from cnnapps.backbones.preprocess import Preprocess
    from cnnapps.datasets.folders import LabeledImages
    from cnnapps.datasets.training import LabeledImageDataset
    from cnnapps.datasets.transforms import train_transform

    items = LabeledImages(paths, [0] * len(paths), ["x"])
    return LabeledImageDataset(items, train_transform("default", Preprocess(), output))


def epoch_seconds(dataset, workers: int, batch_size: int = 32) -> float:
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="record the result in benchmarks/RESULTS.md")
    args = parser.parse_args()

    import cv2
    import torch

    # the work is in the workers, one thread each in both ways: forked workers inherit these settings
    # (setting OpenCV's threads inside a forked worker can deadlock)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    rows = ["| workers | torchvision + PIL (images/s per worker) | cnnapps: albumentations + OpenCV | ratio "
            "| cnnapps, GPU path: uint8 out |", "| ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        make_folder(Path(tmp), args.images)
        paths = sorted(str(p) for p in Path(tmp).glob("*.jpg"))
        for workers in args.workers:
            times: dict[str, list[float]] = {"plain": [], "ours": [], "uint8": []}
            for _ in range(args.repeats):  # interleaved, so machine load drifts alike
                times["plain"].append(epoch_seconds(TorchvisionPIL(paths), workers))
                times["ours"].append(epoch_seconds(ours(paths), workers))
                times["uint8"].append(epoch_seconds(ours(paths, "uint8"), workers))
            rate = {k: args.images / statistics.median(v) / workers for k, v in times.items()}
            plain, mine, uint8 = rate["plain"], rate["ours"], rate["uint8"]
            ratios.append(mine / plain)
            rows.append(f"| {workers} | {plain:.1f} | {mine:.1f} | **{mine / plain:.2f}x** | {uint8:.1f} "
                        f"({uint8 / mine:.2f}x the float32 path) |")  # fmt: skip
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    body = "\n".join(
        [
            "## training data loading",
            "",
            f"`python benchmarks/dataloader.py --images {args.images}` on {machine}: JPEGs of 400-800 px cut from "
            "scikit-image photos; decode + random resized crop to 224 + flip + colour jitter (p 0.5) + normalise, "
            f"in DataLoader workers (one thread each), batches of 32, median of {args.repeats} epochs.",
            "",
            *rows,
            "",
        ]
    )
    record("training data loading", body, args.write)


if __name__ == "__main__":
    main()
