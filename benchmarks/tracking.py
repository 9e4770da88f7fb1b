"""Tracking on synthetic crossing and occlusion videos: MOTA, IDF1, ID switches by appearance: learned, RoI, none.

Each evaluation video (``cnnapps.datasets.synthetic_video.tracking_video``, 320x240, 300 frames, 6 shapes, one
pillar they hide behind, some turning back while hidden; seeds 0-2 and 12-19 by default: seeds 3-11 chose the
tracker's parameters, and none is a seed the detector's training frames came from, 1000 and up) is tracked by the
detector ``--model`` as ``cnnapps eval track --model M --video V [--no-reid]`` does
(``cnnapps.apps.common.video.run_video`` with a ``Tracking``, detector scores kept down to ByteTrack's low
threshold) and scored against the video's exact MOTChallenge ground truth with ``cnnapps.apps.track.mot.evaluate``
(IoU 0.5). The detector runs once per video, with box embeddings; the same detections are then tracked three
ways: re-identified by the detector's learned appearance (``cnnapps train track``: its RoI embedding projected as
``detect VIDEO --track`` projects it, when the model file has one), by the raw RoI embedding (a detector without a
learned appearance), and without re-identification (plain ByteTrack, which never looks at the embeddings), so the
ways differ only in the appearance the tracker gets.

    python benchmarks/tracking.py [--model runs/video-shapes/model-reid.safetensors] [--seeds 0 1 2 12 ...] [--write]

The default model is made with:

    python -m cnnapps.datasets.synthetic_video data/video-shapes --coco --videos 40 --val-videos 2 --every 10
    cnnapps train detect --config configs/detect/video-shapes.yaml
    cnnapps train track --model runs/video-shapes/model.safetensors --data data/video-shapes/train.json \
        --images data/video-shapes/train --out runs/video-shapes/model-reid.safetensors
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from recording import describe_machine, record, resolve_device  # noqa: E402

DEFAULT_MODEL = "runs/video-shapes/model-reid.safetensors"
VALIDATION_SEEDS = range(3, 12)  # the videos ByteTracker's defaults and the learned appearance's size were chosen on
DEFAULT_SEEDS = (0, 1, 2, *range(12, 20))
TRAIN_HINT = (
    "python -m cnnapps.datasets.synthetic_video data/video-shapes --coco --videos 40 --val-videos 2 --every 10\n"
    "  cnnapps train detect --config configs/detect/video-shapes.yaml\n"
    "  cnnapps train track --model runs/video-shapes/model.safetensors --data data/video-shapes/train.json "
    "--images data/video-shapes/train --out runs/video-shapes/model-reid.safetensors"
)
_ROW_KEYS = ("mota", "idf1", "id_switches", "false_positives", "misses")
#: the ways detections are tracked: re-identification by the learned appearance, by the raw RoI embedding, none
WAYS = {"learned": "learned appearance", "roi": "RoI embedding", "none": "no re-identification"}


class _Recorder:
    """Stands where ``run_video`` takes a ``Tracking``: keeps each frame's detections (a copy) for tracking later."""

    def __init__(self) -> None:
        self.frames: list[tuple[Any, Any]] = []

    def update(self, frame: Any, result: Any) -> tuple[bool, list[str]]:
        import numpy as np

        height, width = frame.rgb.shape[:2]
        stub = argparse.Namespace(index=frame.index, time=frame.time,
                                  rgb=np.broadcast_to(np.zeros(1, np.uint8), (height, width, 3)))  # fmt: skip
        self.frames.append((stub, copy.deepcopy(result)))
        return False, []

    def finish(self, report: Any) -> None:
        pass


def load(model: str, threshold: float, device: str) -> tuple[Any, Any]:
    """The detector as ``cnnapps eval track`` loads it (boxes kept down to the tracker's low threshold, with
    embeddings), answering with raw RoI embeddings, and its learned appearance (None when the file has none)."""
    import cnnapps
    from cnnapps.apps.common.video import Tracking

    floor = Tracking(threshold).detector_threshold
    predictor = cnnapps.load(model, task="detect", device=device, score_threshold=floor, embed=True)
    learned = getattr(predictor.model, "appearance", None)
    predictor.model.appearance = None  # raw embeddings; the learned map is applied to them in :func:`track`
    return predictor, learned


def detect(predictor: Any, video: Path) -> list[tuple[Any, Any]]:
    """Every frame of ``video`` and the detector's answer for it."""
    from cnnapps.apps.common.video import run_video
    from cnnapps.datasets.video import VideoSource

    recorder = _Recorder()
    report = run_video(predictor, VideoSource(str(video)), tracking=recorder)  # type: ignore[arg-type]
    if report.error:
        raise SystemExit(f"{video}: {report.error}")
    return recorder.frames


def track(frames: list[tuple[Any, Any]], threshold: float, way: str, learned: Any) -> dict[int, list]:
    """The MOTChallenge tracks of ``frames`` (from :func:`detect`) by a fresh ``Tracking``, re-identifying ``way``
    (a key of :data:`WAYS`); ``learned``: the appearance projection for ``"learned"``."""
    import numpy as np
    import torch

    from cnnapps.apps.common.video import Tracking
    from cnnapps.apps.track.mot import parse_mot_lines

    tracking = Tracking(threshold, reid=way != "none", keep_mot=True)
    for frame, result in frames:
        result = copy.deepcopy(result)
        if way == "learned" and result.instances:  # the frame's boxes projected at once, as box_embeddings does
            with torch.inference_mode():
                projected = learned(torch.from_numpy(np.stack([i.embedding for i in result.instances]))).numpy()
            for inst, vector in zip(result.instances, projected, strict=True):
                inst.embedding = vector
        tracking.update(frame, result)
    return parse_mot_lines(tracking.mot or [])


def videos(root: Path, seeds: list[int], frames: int) -> dict[int, Path]:
    """The evaluation videos (made when missing): seed -> folder with video.mp4 and gt/gt.txt."""
    from cnnapps.datasets.synthetic_video import tracking_video

    folders = {}
    for seed in seeds:
        folder = root / f"seed-{seed}-{frames}"
        if not (folder / "gt" / "gt.txt").exists() or not (folder / "video.mp4").exists():
            for name in ("video.mp4", "gt/gt.txt", "seqinfo.ini", "labels.json"):  # a run cut short
                (folder / name).unlink(missing_ok=True)
            tracking_video(folder, frames=frames, seed=seed)
        folders[seed] = folder
    return folders


def _cell(values: list[float | int | None], ratio: bool) -> str:
    def one(v: float | int | None) -> str:
        if v is None:
            return "-"
        return f"{v:.3f}" if ratio else (f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}")

    return " / ".join(one(v) for v in values)


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One row per video: each metric for every way, in the order of :data:`WAYS`, and the IDF1 gains over none."""
    lines = [
        "| video | MOTA | IDF1 | IDF1 gain over none | ID switches | false positives | misses |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, ways in results.items():
        ratios = [_cell([w[k] for w in ways.values()], k in ("mota", "idf1")) for k in _ROW_KEYS]
        none = ways["none"]["idf1"] or 0.0
        gain = " / ".join(f"{(w['idf1'] or 0.0) - none:+.3f}" for key, w in ways.items() if key != "none")
        bold = "**" if name == "mean" else ""
        lines.append(f"| {bold}{name}{bold} | {ratios[0]} | {ratios[1]} | {gain} | " + " | ".join(ratios[2:]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"Detector to track with [{DEFAULT_MODEL}].")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(DEFAULT_SEEDS),
        help="Evaluation videos' seeds [0-2 and 12-19; 3-11 chose the tracker's parameters].",
    )
    parser.add_argument("--frames", type=int, default=300, help="Frames per video [300].")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="As cnnapps eval track's [0.5].")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda.")
    parser.add_argument("--workdir", help="Keep the evaluation videos here (reused when present).")
    parser.add_argument("--json", action="store_true", help="Also print every metric as JSON.")
    parser.add_argument("--write", action="store_true", help="Record the result in benchmarks/RESULTS.md.")
    args = parser.parse_args()
    if not Path(args.model).exists():
        raise SystemExit(f"{args.model}: no such model; train it first:\n  {TRAIN_HINT}")

    from cnnapps.apps.track.mot import evaluate, read_mot

    device = resolve_device(args.device)
    started = time.perf_counter()
    predictor, learned = load(args.model, args.score_threshold, device)
    ways = [way for way in WAYS if way != "learned" or learned is not None]
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        for seed, folder in videos(root, args.seeds, args.frames).items():
            frames = detect(predictor, folder / "video.mp4")
            truth = read_mot(folder / "gt" / "gt.txt", gt=True)
            results[f"seed {seed}"] = {
                way: evaluate(truth, track(frames, args.score_threshold, way, learned)) for way in ways
            }
            print(f"seed {seed}: IDF1 " + ", ".join(f"{results[f'seed {seed}'][way]['idf1']:.3f} ({WAYS[way]})"
                                                    for way in ways), file=sys.stderr)  # fmt: skip
    seconds = time.perf_counter() - started
    mean: dict[str, dict[str, Any]] = {}
    for way in ways:
        mean[way] = {}
        for key in _ROW_KEYS:
            values = [r[way][key] for r in results.values()]
            mean[way][key] = None if None in values else sum(values) / len(values)
    results["mean"] = mean
    if args.json:
        print(json.dumps(results, indent=1))

    metrics = Path(args.model).with_name("metrics.json")
    trained = ""
    if metrics.exists():
        info = json.loads(metrics.read_text())
        if info.get("val_bbox_ap") is not None:
            trained = (f" (val box AP {info['val_bbox_ap']:.3f}, AP50 {info.get('val_bbox_ap50', float('nan')):.3f} "
                       f"on frames of videos with other seeds)")  # fmt: skip
    seeds = " ".join(str(s) for s in args.seeds)
    body = (
        "## tracking (synthetic crossing and occlusion videos)\n\n"
        f"`python benchmarks/tracking.py --model {args.model} --seeds {seeds}` on {describe_machine(device)}; "
        f"{seconds:.0f} s. Videos: `tracking_video(seed=s, frames={args.frames})`, 320x240, 6 shapes crossing and "
        "hiding behind a pillar (some turn back while hidden), exact MOTChallenge ground truth (full boxes of objects "
        f"at least 25 % visible). Detector: `{args.model}`{trained}, scores >= {args.score_threshold} (kept lower "
        "to continue tracks); tracker: ByteTrack, the same detections tracked with re-identification by "
        + " / ".join(WAYS[way] for way in ways)
        + (
            " (the detector's RoI embedding projected by the map `cnnapps train track` fitted to the identities of "
            f"its training frames: {learned.matrix.shape[1]} numbers a box)"
            if learned is not None
            else ""
        )
        + "; the tracker's parameters and the learned appearance's size were chosen on the videos of seeds "
        f"{VALIDATION_SEEDS.start}-{VALIDATION_SEEDS.stop - 1}"
        f"{' (some of them are among these seeds)' if set(args.seeds) & set(VALIDATION_SEEDS) else ', none of these'}. "
        "Scored with motmetrics at IoU 0.5. Each cell: "
        + " / ".join(WAYS[way] for way in ways)
        + ".\n\n"
        + table(results)
        + "\n"
    )
    record("tracking (synthetic crossing and occlusion videos)", body, args.write)


if __name__ == "__main__":
    main()
