"""Frames/s of ``cnnapps detect VIDEO --json`` against a loop that reads frames one by one and calls the predictor.

Both ways run the same detector on the same frames of a synthetic video (shapes moving over a textured
background, ``datasets/synthetic_video.py``), print each frame's answer as a JSON line (to /dev/null) and are
alternated in one process (``--repeats`` times; best of each). The loop is what a user writes by hand::

    capture = cv2.VideoCapture(video)
    while (ok := capture.read())[0]:
        print(json.dumps(predictor.predict([frame_rgb])[0].to_dict()))

``cnnapps`` is :func:`cnnapps.apps.common.video.run_video` as the command runs it (decoding ahead in a thread,
drawing and printing in another). Both get the same predictor (its trunk compiled for the frame size once the
size keeps coming, whoever calls it), so the ratio is what the video pipeline adds. The answers are compared.

    python benchmarks/video_throughput.py --model runs/video-shapes/model.safetensors --frames 200 [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from recording import describe_machine, record  # noqa: E402


def loop(predictor, video: str, out) -> tuple[float, list[dict]]:
    import cv2

    answers = []
    started = time.perf_counter()
    capture = cv2.VideoCapture(video)
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        answer = predictor.predict([bgr[:, :, ::-1]])[0].to_dict()
        out.write(json.dumps(answer) + "\n")
        answers.append(answer)
    capture.release()
    return time.perf_counter() - started, answers


def pipeline(predictor, video: str, out, lanes: int = 1) -> tuple[float, list[dict]]:
    from cnnapps.apps.common.video import run_video
    from cnnapps.datasets.video import VideoSource

    answers = []

    def line(data: dict) -> None:
        out.write(json.dumps(data) + "\n")
        answers.append(data)

    started = time.perf_counter()
    run_video(predictor, VideoSource(video), on_line=line, lanes=lanes)
    return time.perf_counter() - started, answers


def same(a: list[dict], b: list[dict]) -> tuple[int, float]:
    """Frames whose instance counts differ, and the largest box difference among the others (pixels)."""
    import numpy as np

    differ, worst = 0, 0.0
    for x, y in zip(a, b, strict=True):
        if len(x["instances"]) != len(y["instances"]):
            differ += 1
            continue
        for i, j in zip(x["instances"], y["instances"], strict=True):
            worst = max(worst, float(np.abs(np.array(i["box"]) - np.array(j["box"])).max()))
    return differ, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/video-shapes/model.safetensors", help="A detector (model file).")
    parser.add_argument("--frames", type=int, default=200, help="Frames in the video.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each way, alternated (best reported).")
    parser.add_argument("--write", action="store_true", help="Record the result in benchmarks/RESULTS.md.")
    args = parser.parse_args()
    if not Path(args.model).exists():
        sys.exit(f"{args.model}: no such model file; train one: cnnapps train detect --config "
                 "configs/detect/video-shapes.yaml")  # fmt: skip
    import os

    import cnnapps
    from cnnapps.datasets.synthetic_video import tracking_video

    with tempfile.TemporaryDirectory() as tmp:
        video = str(tracking_video(Path(tmp) / "video", frames=args.frames, seed=0)["video"])
        predictor = cnnapps.load(args.model, task="detect")
        ways = {"loop": loop, "cnnapps": pipeline, "lanes": lambda *a: pipeline(*a, lanes=2)}
        best = dict.fromkeys(ways, float("inf"))
        answers = {}
        with open(os.devnull, "w") as out:
            pipeline(predictor, video, out)  # warm-up: the trunk is compiled for the frame size
            for _ in range(args.repeats):
                for way, run in ways.items():
                    seconds, answers[way] = run(predictor, video, out)
                    best[way] = min(best[way], seconds)
    frames = len(answers["loop"])
    differ, worst = 0, 0.0
    for way in ("cnnapps", "lanes"):
        d, w = same(answers["loop"], answers[way])
        differ, worst = max(differ, d), max(worst, w)
    loop_fps, ours_fps, lanes_fps = (frames / best[w] for w in ("loop", "cnnapps", "lanes"))
    body = (
        "## video throughput (detect)\n\n"
        f"`python benchmarks/video_throughput.py --model {args.model} --frames {args.frames} --repeats "
        f"{args.repeats}` on {describe_machine('cpu')}. A synthetic 320x240 video of {frames} frames; the same "
        "detector and predictor both ways, alternated in one process, best of each.\n\n"
        "| way | frames/s |\n| --- | ---: |\n"
        f"| a loop: cv2 reads a frame, `predictor.predict([frame])`, a JSON line | {loop_fps:.1f} |\n"
        f"| `run_video`, one lane (frames decoded as asked, outputs in turn) | {ours_fps:.1f} |\n"
        f"| `cnnapps detect VIDEO --json` (`run_video`, two lanes of one thread each) | {lanes_fps:.1f} |\n\n"
        f"Ratios to the loop: one lane {ours_fps / loop_fps:.2f}x, two lanes {lanes_fps / loop_fps:.2f}x. Answers: "
        f"{differ} of {frames} frames with another number of objects, boxes within {worst:.2g} px on the others.\n"
    )
    record("video throughput (detect)", body, args.write)


if __name__ == "__main__":
    main()
