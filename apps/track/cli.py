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
from cnnapps.terminal import console, echo, echo_json, head_option, plural, progress

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
    mot_distractors: bool = typer.Option(
        False,
        "--mot-distractors",
        help="Ground truth of MOTChallenge's classes: drop track boxes on its distractors (classes 2, 7, 8, 12: "
        "person on vehicle, static person, distractor, reflection) as its evaluation does.",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    head: str = head_option("detection"),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """MOTA, IDF1, ID switches and the other MOT metrics (motmetrics) of tracks against ground truth."""
    from cnnapps.apps.track.mot import MOT_DISTRACTORS, evaluate, read_ignored, read_mot

    if (results is None) == (model is None):
        raise CnnappsError("eval track: give --results (tracks written before) or --model with --video")
    distractors = MOT_DISTRACTORS if mot_distractors else ()
    truth = read_mot(gt, gt=True, distractors=distractors)
    ignored = read_ignored(gt, distractors) if distractors else None
    if results is not None:
        tracks = read_mot(results, gt=False)
    else:
        if video is None:
            raise CnnappsError("--model: give the --video the ground truth is of")
        tracks = track_video(model, video, score_threshold, reid, device, head)
    report = evaluate(truth, tracks, iou=iou, ignored=ignored)
    if as_json:
        echo_json(report)
        return
    out = console()
    out.print("  ".join(f"{name} {_percent(report.get(key))}" for name, key in _METRICS))
    out.print(", ".join(f"{name} {report.get(key)}" for name, key in _COUNTS))


def _percent(value: Any) -> str:
    return "-" if value is None else f"{value:.1%}"


def tracking_head(model: str, head: str | None = None) -> tuple[str, str | None]:
    """The task and head that track: ``head`` of a model file, else the file's only head of a trackable task (a
    multi-head file may hold a detector beside heads that find no objects); a one-task model: its task."""
    from cnnapps.api import task_of
    from cnnapps.apps.tasks import TASKS
    from cnnapps.bundle import is_bundle_path
    from cnnapps.exported import is_onnx_file

    trackable = [t.name for t in TASKS.values() if t.trackable]
    needs = f"tracking needs a detector ({', '.join(trackable)})"
    if not is_bundle_path(model) or is_onnx_file(model):
        task = task_of(model)
        if task not in trackable:
            raise CnnappsError(f"{model}: a {task} model; {needs}")
        return task, head
    from cnnapps.apps.modelfile import read_model_file

    model_file = read_model_file(model)
    heads = {name: info.task for name, info in model_file.heads.items()}
    if head is not None:
        task = heads[model_file.head_named(head)]  # an unknown name: one line listing the heads
        if task not in trackable:
            raise CnnappsError(f"--head {head}: a {task} head; {needs}")
        return task, head
    found = [name for name, task in heads.items() if task in trackable]
    if len(found) != 1:
        have = ", ".join(f"{name} ({task})" for name, task in heads.items())
        why = "several heads track; name one with --head NAME" if found else needs
        raise CnnappsError(f"{model}: {why} (heads: {have})")
    return heads[found[0]], found[0]


def track_video(model: str, video: str, score_threshold: float, reid: bool, device: str,
                head: str | None = None) -> dict[int, list]:  # fmt: skip
    """Track ``video`` with the detector ``model`` (its head ``head``: see :func:`tracking_head`): tracks by frame
    (1-based, as MOTChallenge files). A video not read to its end (an error, Ctrl-C or SIGTERM) gets no score."""
    import cnnapps
    from cnnapps.apps.common.video import Tracking, run_video
    from cnnapps.apps.track.mot import parse_mot_lines
    from cnnapps.cli.video import STOP_SIGNALS, VIDEO_LANES, interrupted_exit_code, video_batch_size
    from cnnapps.datasets.video import VideoSource

    task, head = tracking_head(model, head)
    source = VideoSource(video)
    tracking = Tracking(score_threshold, reid=reid, keep_mot=True)
    chosen = {"head": head} if head else {}
    predictor = cnnapps.load(model, task=task, device=device, score_threshold=tracking.detector_threshold, embed=reid,
                             batch_size=video_batch_size({"device": device}), **chosen)  # fmt: skip
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
