"""Frames/s of ``cnnapps detect VIDEO --json`` against a loop that reads frames one by one and calls the predictor.

Every way runs the same detector on the same frames of a synthetic video (shapes moving over a textured
background, ``datasets/synthetic_video.py``), prints each frame's answer as a JSON line (to /dev/null), and they
are alternated in one process (``--repeats`` times; best of each). The loop is what a user writes by hand::

    predictor = cnnapps.load(model)
    capture = cv2.VideoCapture(video)
    while (ok := capture.read())[0]:
        print(json.dumps(predictor.predict([frame_rgb])[0].to_dict()))

``cnnapps`` is :func:`cnnapps.apps.common.video.run_video` as the command runs it: the predictor loaded with the
command's batch size for video on a CPU (frames in one forward pass), frames read as asked, batches in two lanes
(processes forked with the compiled model, one thread each). Rows between show what each part adds: the loop
batching frames itself, and ``run_video`` in one lane. Every predictor's trunk is compiled for its shapes before
timing (as it is for any caller once a shape keeps coming); the answers are compared.

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


def loop(predictor, video: str, out, batch: int = 1) -> tuple[float, list[dict]]:
    import cv2

    answers = []
    started = time.perf_counter()
    capture = cv2.VideoCapture(video)
    frames, ended = [], False
    while not ended:
        ok, bgr = capture.read()
        ended = not ok
        if ok:
            frames.append(bgr[:, :, ::-1])
        if frames and (ended or len(frames) == batch):
            for result in predictor.predict(frames):
                answer = result.to_dict()
                out.write(json.dumps(answer) + "\n")
                answers.append(answer)
            frames = []
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
    run_video(predictor, VideoSource(video), on_line=line, batch_size=predictor.batch_size, lanes=lanes)
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
    from cnnapps.cli.video import VIDEO_BATCH, VIDEO_LANES
    from cnnapps.datasets.synthetic_video import tracking_video

    with tempfile.TemporaryDirectory() as tmp:
        video = str(tracking_video(Path(tmp) / "video", frames=args.frames, seed=0)["video"])
        one = cnnapps.load(args.model, task="detect")  # the default predictor: one image per forward on a CPU
        batched = cnnapps.load(args.model, task="detect", batch_size=VIDEO_BATCH)  # the command's for video
        ways = {
            "loop": lambda out: loop(one, video, out),
            "loop, batched": lambda out: loop(batched, video, out, VIDEO_BATCH),
            "one lane": lambda out: pipeline(batched, video, out),
            "cnnapps": lambda out: pipeline(batched, video, out, lanes=VIDEO_LANES),
        }
        best = dict.fromkeys(ways, float("inf"))
        answers = {}
        with open(os.devnull, "w") as out:
            for warm in (ways["loop"], ways["one lane"]):  # each predictor's trunk compiled for its batch shape
                warm(out)
            for _ in range(args.repeats):
                for way, run in ways.items():
                    seconds, answers[way] = run(out)
                    best[way] = min(best[way], seconds)
    frames = len(answers["loop"])
    differ, worst = 0, 0.0
    for way in list(ways)[1:]:
        d, w = same(answers["loop"], answers[way])
        differ, worst = max(differ, d), max(worst, w)
    fps = {way: frames / best[way] for way in ways}
    ratio = {way: fps[way] / fps["loop"] for way in ways}
    body = (
        "## video throughput (detect)\n\n"
        f"`python benchmarks/video_throughput.py --model {args.model} --frames {args.frames} --repeats "
        f"{args.repeats}` on {describe_machine('cpu')}. A synthetic 320x240 video of {frames} frames; the same "
        "detector every way, alternated in one process, best of each.\n\n"
        "| way | frames/s | ratio to the loop |\n| --- | ---: | ---: |\n"
        f"| a loop: cv2 reads a frame, `predictor.predict([frame])`, a JSON line | {fps['loop']:.1f} | 1.00x |\n"
        f"| the loop with {VIDEO_BATCH} frames per call (`batch_size={VIDEO_BATCH}`) | {fps['loop, batched']:.1f} | "
        f"{ratio['loop, batched']:.2f}x |\n"
        f"| `run_video`, one lane (batches of {VIDEO_BATCH}) | {fps['one lane']:.1f} | {ratio['one lane']:.2f}x |\n"
        f"| `cnnapps detect VIDEO --json` (`run_video`, {VIDEO_LANES} forked lanes of one thread each) | "
        f"{fps['cnnapps']:.1f} | **{ratio['cnnapps']:.2f}x** |\n\n"
        f"Answers: {differ} of {frames} frames with another number of objects than the loop's, boxes within "
        f"{worst:.2g} px on the others.\n"
    )
    record("video throughput (detect)", body, args.write)


if __name__ == "__main__":
    main()
