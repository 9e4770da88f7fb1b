"""Decoding a video to RGB arrays: PyAV (what cnnapps reads video with) against OpenCV's VideoCapture.

The same H.264 file (written by cnnapps' VideoWriter: a textured frame with a moving disc) is decoded to the end
by each way, alternated, best of ``--repeats``: PyAV with FFmpeg's frame threads (how ``VideoSource`` reads ahead
for a GPU), PyAV on one thread (how it reads on a CPU, in lockstep with the model), ``VideoSource`` itself, and
``cv2.VideoCapture`` (BGR, flipped to RGB as a caller would).

    python benchmarks/video_decode.py --frames 600 --size 640x480 [--write]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from recording import describe_machine, record  # noqa: E402


def write_video(path: Path, frames: int, width: int, height: int) -> None:
    import cv2
    import numpy as np

    from cnnapps.datasets.video import VideoWriter

    rng = np.random.default_rng(0)
    background = rng.integers(60, 200, (height, width, 3), dtype=np.uint8)
    with VideoWriter(path, 25) as writer:
        for i in range(frames):
            frame = background.copy()
            cv2.circle(frame, (i * 3 % width, height // 2), height // 6, (230, 120, 20), -1)
            writer.write(frame)


def pyav(path: str, threads: str) -> int:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = threads
        if threads == "SLICE":
            stream.codec_context.thread_count = 1
        return sum(1 for frame in container.decode(stream) if frame.to_ndarray(format="rgb24") is not None)


def source(path: str) -> int:
    from cnnapps.datasets.video import VideoSource

    return sum(1 for _ in VideoSource(path))


def opencv(path: str) -> int:
    import cv2

    capture, n = cv2.VideoCapture(path), 0
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        bgr[:, :, ::-1].copy()
        n += 1
    capture.release()
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="Record the result in benchmarks/RESULTS.md.")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    ways = {
        "PyAV, FFmpeg frame threads": lambda p: pyav(p, "AUTO"),
        "PyAV, one thread": lambda p: pyav(p, "SLICE"),
        "cnnapps VideoSource (reads ahead in a thread)": source,
        "OpenCV VideoCapture": opencv,
    }
    best = dict.fromkeys(ways, float("inf"))
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "clip.mp4")
        write_video(Path(path), args.frames, width, height)
        for _ in range(args.repeats):
            for name, way in ways.items():
                started = time.perf_counter()
                count = way(path)
                best[name] = min(best[name], time.perf_counter() - started)
                assert count == args.frames, (name, count)
    rows = "\n".join(f"| {name} | {args.frames / seconds:,.0f} |" for name, seconds in best.items())
    body = (
        "## video decoding\n\n"
        f"`python benchmarks/video_decode.py --frames {args.frames} --size {args.size}` on "
        f"{describe_machine('cpu')}: an H.264 file decoded to RGB arrays to its end, best of {args.repeats}.\n\n"
        f"| way | frames/s |\n| --- | ---: |\n{rows}\n"
    )
    record("video decoding", body, args.write)


if __name__ == "__main__":
    main()
