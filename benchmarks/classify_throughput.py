"""cnnapps classify vs the plain way (PIL + torchvision transforms + eager fp32, batch 32), end to end.

Both run as fresh processes over the same folder of JPEGs on the same device, so start-up counts. Reports
images/s, the ratio, and the share of images with the same top-1. Usage:

    python benchmarks/classify_throughput.py [--images N] [--repeats R] [--device auto|cpu|cuda] [--write]

``--write`` records the table in benchmarks/RESULTS.md (the CPU and GPU figures in sections of their own).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recording import describe_machine, record, resolve_device

HERE = Path(__file__).resolve().parent


def make_folder(folder: Path, n: int, seed: int = 0) -> None:
    """JPEGs cut from scikit-image's photos at random places and sizes (400-800 px wide)."""
    import cv2
    import numpy as np
    from skimage import data

    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket(), data.cat(), data.hubble_deep_field()]
    photos += [data.immunohistochemistry(), data.retina()[..., :3], np.stack([data.camera()] * 3, -1)]
    rng = np.random.default_rng(seed)
    for k in range(n):
        img = photos[k % len(photos)]
        h, w = img.shape[:2]
        s = rng.uniform(0.5, 1.0)
        ch, cw = int(h * s), int(w * s)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = cv2.resize(img[y : y + ch, x : x + cw], (int(rng.integers(400, 800)), int(rng.integers(300, 600))))
        cv2.imwrite(str(folder / f"{k:05d}.jpg"), crop[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - start, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda: both ways run there")
    parser.add_argument("--write", action="store_true", help="record the result in benchmarks/RESULTS.md")
    args = parser.parse_args()
    device = resolve_device(args.device)

    env = dict(os.environ, PYTHONWARNINGS="ignore")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_folder(folder, args.images)
        ours_cmd = [sys.executable, "-m", "cnnapps", "classify", str(folder), "--json", "-k", "1", "--device", device]
        plain_cmd = [sys.executable, str(HERE / "plain_classify.py"), str(folder), device]
        ours_times, plain_times = [], []
        for _ in range(args.repeats):  # alternate so drift in machine load hits both alike
            t, ours_out = timed(ours_cmd, env)
            ours_times.append(t)
            t, plain_out = timed(plain_cmd, env)
            plain_times.append(t)

    ours = {r["path"]: r["predictions"][0]["index"] for r in json.loads(ours_out)}
    plain = json.loads(plain_out)
    agree = sum(ours[p] == k for p, k in plain.items()) / len(plain)
    t_ours, t_plain = statistics.median(ours_times), statistics.median(plain_times)
    ips_ours, ips_plain = args.images / t_ours, args.images / t_plain
    rows = [
        "| way | median wall time | images/s |",
        "| --- | ---: | ---: |",
        f"| plain: PIL + torchvision transforms, eager fp32, batch 32 | {t_plain:.2f} s | {ips_plain:.1f} |",
        f"| `cnnapps classify`: {OURS[device.split(':')[0]]} | {t_ours:.2f} s | {ips_ours:.1f} |",
    ]
    summary = (
        f"**{ips_ours / ips_plain:.2f}x** the plain way; same top-1 on **{agree:.1%}** of {args.images} images "
        f"(efficientnet_lite0, {args.repeats} runs each, process start-up included)."
    )
    title = "classify throughput" if device == "cpu" else "classify throughput (GPU)"
    command = (
        f"python benchmarks/classify_throughput.py --images {args.images} --repeats {args.repeats} --device {device}"
    )
    report = "\n".join(
        [
            f"## {title}",
            "",
            f"`{command}` on {describe_machine(device)}.",
            "",
            *rows,
            "",
            summary,
            "",
        ]
    )
    record(title, report, args.write)


# what `cnnapps classify` does on each kind of device (its defaults there)
OURS = {
    "cpu": "OpenCV decode, fused fp32 TorchScript graph, channels_last, batch 4",
    "cuda": "OpenCV decode in threads, uint8 to the GPU, resize and normalise there, fp16 autocast, channels_last, "
    "batch 32",
}


if __name__ == "__main__":
    main()
