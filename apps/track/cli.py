"""``cnnapps eval track``: MOT metrics of tracks against MOTChallenge ground truth; ``cnnapps train track``: a
detector's learned appearance for re-identification.

``eval track`` scores tracks already written (``--results``, e.g. from ``cnnapps detect clip.mp4 --track
--save-mot``) or a detector tracking a video here and now (``--model`` and ``--video``). ``train track`` fits
:mod:`cnnapps.apps.track.appearance` on annotations with track ids. Imports typer only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cnnapps.errors import CnnappsError
from cnnapps.terminal import console, echo, echo_json, plural, progress

_METRICS = (("MOTA", "mota"), ("IDF1", "idf1"), ("IDP", "idp"), ("IDR", "idr"), ("MOTP (IoU)", "motp"))
_COUNTS = (("ID switches", "id_switches"), ("false positives", "false_positives"), ("misses", "misses"),
           ("mostly tracked", "mostly_tracked"), ("mostly lost", "mostly_lost"), ("fragmentations", "fragmentations"),
           ("frames", "frames"), ("objects", "objects"))  # fmt: skip


def eval_track(
    gt: Path = typer.Option(..., "--gt", help="Ground truth in MOTChallenge format (gt.txt)."),
    results: Path = typer.Option(None, "--results", help="Tracks in MOTChallenge format (from --save-mot)."),
    model: str = typer.Option(None, "--model", "-m", help="Or: a detector to track --video with here."),
    video: str = typer.Option(None, "--video", help="The video the ground truth is of (with --model)."),
    score_threshold: float = typer.Option(0.5, "--score-threshold", min=0.0, max=1.0, help="Detections kept."),
    reid: bool = typer.Option(True, "--reid/--no-reid", help="With --model: re-identify by appearance."),
    iou: float = typer.Option(0.5, "--iou", min=0.01, max=1.0, help="IoU at which a track box matches the truth."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """MOTA, IDF1, ID switches and the other MOT metrics (motmetrics) of tracks against ground truth."""
    from cnnapps.apps.track.mot import evaluate, read_mot

    if (results is None) == (model is None):
        raise CnnappsError("eval track: give --results (tracks written before) or --model with --video")
    truth = read_mot(gt, gt=True)
    if results is not None:
        tracks = read_mot(results, gt=False)
    else:
        if video is None:
            raise CnnappsError("--model: give the --video the ground truth is of")
        tracks = track_video(model, video, score_threshold, reid, device)
    report = evaluate(truth, tracks, iou=iou)
    if as_json:
        echo_json(report)
        return
    out = console()
    out.print("  ".join(f"{name} {_percent(report.get(key))}" for name, key in _METRICS))
    out.print(", ".join(f"{name} {report.get(key)}" for name, key in _COUNTS))


def _percent(value: Any) -> str:
    return "-" if value is None else f"{value:.1%}"


def track_video(model: str, video: str, score_threshold: float, reid: bool, device: str) -> dict[int, list]:
    """Track ``video`` with the detector ``model``: tracks by frame (1-based, as MOTChallenge files). A video not
    read to its end (an error, Ctrl-C or SIGTERM) gets no score."""
    import cnnapps
    from cnnapps.api import task_of
    from cnnapps.apps.common.video import Tracking, run_video
    from cnnapps.apps.tasks import TASKS
    from cnnapps.apps.track.mot import parse_mot_lines
    from cnnapps.cli.video import STOP_SIGNALS, VIDEO_LANES, interrupted_exit_code, video_batch_size
    from cnnapps.datasets.video import VideoSource

    task = task_of(model)
    if task not in TASKS or not TASKS[task].trackable:
        trackable = ", ".join(t.name for t in TASKS.values() if t.trackable)
        raise CnnappsError(f"{model}: a {task or 'multi-head'} model; tracking needs a detector ({trackable})")
    source = VideoSource(video)
    tracking = Tracking(score_threshold, reid=reid, keep_mot=True)
    predictor = cnnapps.load(model, task=task, device=device, score_threshold=tracking.detector_threshold, embed=reid,
                             batch_size=video_batch_size({"device": device}))  # fmt: skip
    with progress(source.frames, "tracking", minimum=1) as advance:  # as `detect VIDEO --track` runs it
        report = run_video(predictor, source, tracking=tracking, progress=advance, batch_size=predictor.batch_size,
                           lanes=VIDEO_LANES, stop_signals=STOP_SIGNALS)  # fmt: skip
    if report.error:
        raise CnnappsError(f"{report.error}; no score for a video not read to its end")
    if report.interrupted:
        echo(f"{video}: interrupted by {report.signal or 'SIGINT'} after {plural(report.frames, 'frame')}; no score "
             "for a video not read to its end", err=True)  # fmt: skip
        raise typer.Exit(interrupted_exit_code(report))
    return parse_mot_lines(tracking.mot or [])


def train_track(
    model: str = typer.Option(..., "--model", "-m", help="The detector (a model file) to learn the appearance of."),
    data: Path = typer.Option(..., "--data", help="COCO annotations whose boxes carry track_id (images: video_id)."),
    images: Path = typer.Option(..., "--images", help="Folder of the annotated images."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Model file to write: the detector with its learned appearance (never written over)."
    ),
    components: int = typer.Option(32, "--components", min=1, help="Numbers in the learned appearance of a box."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print what was fitted as JSON."),
) -> None:
    """Learn the appearance a tracker re-identifies objects by: a linear map of the detector's own box embeddings
    fitted to the identities of annotated boxes (track_id). `detect VIDEO --track` and `eval track --model` use it."""
    from cnnapps.apps.track.appearance import identity_boxes, train_appearance

    annotated = identity_boxes(data)  # a file without track ids fails before the model loads
    with progress(len(annotated.boxes), "appearance", minimum=1) as advance:
        fitted = train_appearance(model, annotated, images, out, components=components, device=device,
                                  progress=advance)  # fmt: skip
    if as_json:
        echo_json(fitted)
        return
    skipped = f", {len(fitted['skipped'])} unreadable images skipped" if fitted["skipped"] else ""
    console().print(f"{fitted['out']}: learned appearance of {fitted['components']} numbers from {fitted['boxes']} "
                    f"boxes of {fitted['identities']} objects in {fitted['images']} images{skipped}")  # fmt: skip
