"""Memory over a long stream: resident memory of a video run sampled every 500 frames, from frame 1,000 to the end.

A synthetic video (``datasets/synthetic_video.py``, 320x240) of ``--frames`` frames goes through
:func:`cnnapps.apps.common.video.run_video` as ``cnnapps classify VIDEO --json`` runs it (or ``detect --track``
with ``--model``: batches of 4 frames in two forked lanes), JSON lines written to /dev/null; the memory is the
proportional set size (PSS) of the process and its lanes. Memory is flat when the resident set at the end is no larger
than after the first thousand frames, beyond noise: nothing is kept per frame (the reader's queue is bounded,
answers leave as they are made; tracks keep a summary each).

    python benchmarks/video_memory.py --frames 10000 [--model runs/video-shapes/model.safetensors] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from recording import describe_machine, record  # noqa: E402


def rss_mb() -> float:
    """Resident memory of this process and its video lanes (forked processes, which share the model's pages:
    each process's proportional share, PSS, so that shared pages count once)."""
    import multiprocessing

    total = 0
    for pid in ["self", *(str(child.pid) for child in multiprocessing.active_children())]:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                total += next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
        except (FileNotFoundError, ProcessLookupError):  # a lane that has just ended
            continue
    return total / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10000, help="Frames in the stream.")
    parser.add_argument("--model", help="A detector: track its objects (detect --track) instead of classifying.")
    parser.add_argument("--write", action="store_true", help="Record the result in benchmarks/RESULTS.md.")
    args = parser.parse_args()
    import cnnapps
    from cnnapps.apps.common.video import Tracking, run_video
    from cnnapps.cli.video import VIDEO_BATCH, VIDEO_LANES
    from cnnapps.datasets.synthetic_video import tracking_video
    from cnnapps.datasets.video import VideoSource

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        video = str(tracking_video(Path(tmp) / "video", frames=args.frames, seed=0)["video"])
        made = time.perf_counter() - started
        tracking, lanes = None, 1
        if args.model:
            tracking = Tracking(0.5)
            predictor = cnnapps.load(args.model, task="detect", score_threshold=tracking.detector_threshold,
                                     embed=True, batch_size=VIDEO_BATCH)  # fmt: skip
            lanes = VIDEO_LANES
            what = f"`cnnapps detect VIDEO --track --json` ({args.model})"
        else:
            predictor = cnnapps.load(task="classify")
            what = "`cnnapps classify VIDEO --json` (the bundled EfficientNet-Lite0)"
        samples: list[tuple[int, float]] = []
        done = [0]

        def advance(n: int) -> None:
            before = done[0]
            done[0] += n
            if done[0] // 500 != before // 500:
                samples.append((done[0], rss_mb()))

        with open(os.devnull, "w") as out:
            report = run_video(predictor, VideoSource(video), tracking=tracking, progress=advance, lanes=lanes,
                               batch_size=getattr(predictor, "batch_size", None),
                               on_line=lambda line: out.write(json.dumps(line) + "\n"))  # fmt: skip
    after_1000 = next(mb for n, mb in samples if n >= 1000)
    end, peak = samples[-1][1], max(mb for n, mb in samples if n >= 1000)
    rows = "\n".join(f"| {n:,} | {mb:.0f} |" for n, mb in samples if n % 2000 < 500 or n == samples[-1][0])
    tracks = f", {len(report.tracks)} tracks" if tracking is not None else ""
    body = (
        f"## video memory ({'detect --track' if args.model else 'classify'})\n\n"
        f"`python benchmarks/video_memory.py --frames {args.frames}"
        f"{f' --model {args.model}' if args.model else ''}` on {describe_machine('cpu')}: {what} over a "
        f"{report.frames:,}-frame synthetic 320x240 video (made in {made:.0f} s), {report.fps:.1f} frames/s"
        f"{tracks}.\n\n| frames done | resident memory (MB, PSS of the process and its lanes) |\n"
        f"| ---: | ---: |\n{rows}\n\n"
        f"After 1,000 frames {after_1000:.0f} MB, at the end {end:.0f} MB ({end - after_1000:+.0f} MB), highest in "
        f"between {peak:.0f} MB.\n"
    )
    record(f"video memory ({'detect --track' if args.model else 'classify'})", body, args.write)


if __name__ == "__main__":
    main()
