"""Video for every prediction verb: the verbs that take images also take video files, cameras, streams and
frame sequences, with the same model options.

:func:`with_video` wraps a verb's function: it adds the video options to the verb's signature (typer reads the
signature) and, when the paths are video sources, runs :func:`cnnapps.apps.common.video.run_video` with the
predictor the verb's own options describe; with images it calls the verb unchanged. Detection verbs also get
``--track`` (ByteTrack with re-identification), counting lines and zones, and MOTChallenge output.
"""

from __future__ import annotations

import functools
import inspect
import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from cnnapps.errors import CnnappsError
from cnnapps.terminal import EXIT_SOME_FAILED, console, echo, free, one_line, output_folder, plural, progress

_SOURCES = "video files, webcam:N, rtsp:// or http:// streams, or frame patterns such as frames/%05d.png"

#: (name, type, default option) added to every prediction verb
VIDEO_OPTIONS: list[tuple[str, Any, Any]] = [
    ("vid_stride", int, typer.Option(1, "--vid-stride", min=1, help="Video: predict every Nth frame.")),
    ("start", float, typer.Option(None, "--start", min=0.0, help="Video: start this many seconds in.")),
    ("end", float, typer.Option(None, "--end", min=0.0, help="Video: stop this many seconds in.")),
    ("save_video", Path, typer.Option(
        None, "--save-video", help="Video: write an annotated copy (H.264, no audio; never over a file): a file "
        "name for one video, else a folder.")),
    ("save_frames", Path, typer.Option(
        None, "--save-frames", help="Video: write annotated frames where the answer changes into this folder.")),
    ("reconnect", bool, typer.Option(
        False, "--reconnect", help="Video: reopen a camera or stream that stalls or drops, and go on.")),
]  # fmt: skip

#: added to the verbs of tasks that find objects (their results have instances with boxes)
TRACK_OPTIONS: list[tuple[str, Any, Any]] = [
    ("track", bool, typer.Option(False, "--track", help="Video: persistent ids for objects across frames "
                                 "(ByteTrack).")),
    ("reid", bool, typer.Option(True, "--reid/--no-reid", help="With --track: re-identify objects by their "
                                "appearance (each box's embedding from the detector's own pass).")),
    ("line", list[str], typer.Option(None, "--line", metavar="X0,Y0,X1,Y1", help="With --track: count objects "
                                     "crossing this line (pixels, or fractions of the frame); repeat for more.")),
    ("zone", list[str], typer.Option(None, "--zone", metavar="X,Y,X,Y,...", help="With --track: count objects "
                                     "entering this polygon; repeat for more.")),
    ("save_mot", Path, typer.Option(None, "--save-mot", help="With --track: write the tracks as MOTChallenge "
                                    "results (one video).")),
]  # fmt: skip

#: batches of frames predicted at once on a CPU (each lane a forked process with its share of the cores): frames of
#: a video are independent, and a detector's small operations keep two threads of one pass from being twice as fast
VIDEO_LANES = 2

#: frames per forward pass on a CPU (the predictor's batch size) unless --batch-size says otherwise: on 2 cores the
#: detector of configs/detect/video-shapes.yaml ran 320x240 frames 1.07-1.30x faster in fours than one by one
VIDEO_BATCH = 4

#: loads the verb's predictor from its options (and extra load options the video run needs)
Loader = Callable[[dict[str, Any], dict[str, Any]], Any]

#: signals that stop a video run after the batches in hand, its outputs finished (a second one stops it at once)
STOP_SIGNALS = ("SIGINT", "SIGTERM")


#: the verbs' options every video run reads (besides those its predictor is loaded with)
VIDEO_READS = ("paths", "model", "as_json", "top_k", "threshold", "score_threshold", "batch_size", "device", "engine")


def with_video(command: Callable[..., Any], load: Loader, trackable: bool = False,
               loaded_with: tuple[str, ...] = ()) -> Callable[..., Any]:  # fmt: skip
    """``command`` (a verb taking ``paths``) that also takes video sources, with the video options added.
    ``loaded_with``: the verb's options its predictor is loaded with; any other of its options given for a video
    (an image's output folder, say) is refused rather than ignored."""
    added = VIDEO_OPTIONS + (TRACK_OPTIONS if trackable else [])
    signature = inspect.signature(command)
    if "paths" not in signature.parameters:
        raise TypeError(f"{command.__name__}: a verb taking video needs a 'paths' parameter")
    names = [name for name, _, _ in added]

    @functools.wraps(command)
    def verb(**kwargs: Any) -> Any:
        video = {name: kwargs.pop(name) for name in names}
        paths = _video_globs_expanded(kwargs["paths"])
        from cnnapps.datasets.video import is_video_source

        sources = [p for p in paths if is_video_source(p)]
        if not sources:
            given = [_flag(name) for name, _, default in added if video[name] not in (default.default, None, [])]
            if given:
                raise CnnappsError(f"{given[0]}: for video ({_SOURCES}); {paths[0]} is not one")
            return _on_images(command, kwargs)
        if len(sources) != len(paths):
            still = next(p for p in paths if p not in sources)
            raise CnnappsError(f"{still}: not a video; give images and videos in separate commands")
        for name, param in signature.parameters.items():
            if name in VIDEO_READS or name in loaded_with:
                continue
            if kwargs[name] not in (getattr(param.default, "default", param.default), None, [], False):
                drawn = " (a video's drawn copy: --save-video; its frames: --save-frames)" if "save" in name else ""
                raise CnnappsError(f"{_flag(name)}: for images, not for video{drawn}; {sources[0]} is a video")
        return run_sources(sources, kwargs, video, load)

    params = [_with_video_help(p) if p.name == "paths" else p for p in signature.parameters.values()]
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=t) for n, t, d in added]
    hints = typing.get_type_hints(command)  # resolved where the verb was written
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in params]
    verb.__signature__ = signature.replace(parameters=params, return_annotation=None)  # type: ignore[attr-defined]
    verb.__annotations__ = {p.name: p.annotation for p in params}
    del verb.__wrapped__  # typer reads the new signature, not the verb's own
    return verb


def _on_images(command: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """The verb on images. When Ctrl-C stopped its predictions (:func:`~cnnapps.terminal.predict_images`), it has
    printed the answers so far; the run then ends saying how far it got, exit code 130 whatever the verb's own."""
    from cnnapps.errors import Interrupted
    from cnnapps.terminal import image_run

    with image_run() as stopped:
        try:
            answer = command(**kwargs)
        except typer.Exit:  # some inputs failed (reported): the stop still ends the run
            if not stopped:
                raise
    if stopped:
        raise Interrupted(stopped[0])
    return answer


def _video_globs_expanded(paths: list[str]) -> list[str]:
    """``paths`` with each glob of videos (``'clips/*.mp4'``, quoted so that the shell left it) replaced by the files
    it matches, sorted, as a glob of images is; one that matches nothing is kept, to fail as a missing video. URLs
    and paths that exist as written are never read as globs."""
    import glob
    import os

    from cnnapps.datasets.video import is_video_source

    expanded: list[str] = []
    for path in paths:
        pattern = any(ch in path for ch in "*?[") and "://" not in path and not os.path.lexists(path)
        if pattern and is_video_source(path):
            expanded += sorted(m for m in glob.glob(path, recursive=True) if os.path.isfile(m)) or [path]
        else:
            expanded.append(path)
    return expanded


def _with_video_help(param: inspect.Parameter) -> inspect.Parameter:
    """The verb's ``paths`` argument, its help saying that videos go there too."""
    import copy

    info = copy.copy(param.default)
    info.help = f"{(info.help or '').rstrip('.')}; or {_SOURCES}."
    return param.replace(default=info)


def task_loader(task: str) -> Loader:
    """How a task's verb loads its predictor: ``cnnapps.load`` with the verb's model and the options the task's
    predictor takes (from the task table)."""

    def load_for(options: dict[str, Any], extra: dict[str, Any]) -> Any:
        from cnnapps.api import load
        from cnnapps.apps.tasks import get_task

        return load(options.get("model") or None, task=task, **get_task(task).options({**options, **extra}))

    return load_for


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def run_sources(sources: list[str], options: dict[str, Any], video: dict[str, Any], load: Loader) -> None:
    """Every source in turn with one predictor: JSON Lines on stdout with ``--json``, else a summary per video;
    exit code 1 when a source failed (its frames read before the failure are still predicted and written; the
    other sources still run). Ctrl-C or SIGTERM stops the run after the frames in hand, the outputs finished and
    the summary printed: exit code 130 or 143 (128 + the signal)."""
    from cnnapps.apps.common.video import Tracking, run_video
    from cnnapps.datasets.video import VideoError, VideoSource, VideoWriter

    tracking_wanted = bool(video.get("track"))
    if not tracking_wanted:
        for name in ("line", "zone", "save_mot"):
            if video.get(name):
                raise CnnappsError(f"{_flag(name)}: counts and MOT output follow tracks; add --track")
    outputs = {name: video[name] for name in ("save_video", "save_mot") if video.get(name) is not None}
    for name, path in outputs.items():
        if _is_file_name(path) and len(sources) > 1:
            raise CnnappsError(f"{path}: one file for {plural(len(sources), 'video')}; give {_flag(name)} a folder")
        if _is_file_name(path):
            free(path, _flag(name))  # there already, or not writable there: refused before any work
        if _is_file_name(path) and name == "save_video":
            VideoWriter(path, 25.0)  # an unknown suffix is refused before any work (the writer writes nothing yet)
        if not _is_file_name(path):  # a name with no suffix is a folder
            output_folder(path, _flag(name))
    output_folder(video.get("save_frames"), "--save-frames")
    counters = _counters(video) if tracking_wanted else []
    failed, opened = 0, None
    for name in sources:  # bad sources before the first good one fail before the model loads
        try:
            opened = VideoSource(name, **_source_options(video))
            break
        except VideoError as exc:
            echo(one_line(f"error: {exc}"), err=True)
            failed += 1
    if opened is None:
        raise typer.Exit(EXIT_SOME_FAILED)
    first = failed  # the index of the source opened
    extra: dict[str, Any] = {}
    threshold = float(options.get("score_threshold", 0.5))
    if tracking_wanted:
        extra = {"score_threshold": Tracking(threshold).detector_threshold, "embed": bool(video["reid"])}
    extra["batch_size"] = video_batch_size(options)
    predictor = load(options, extra)
    as_json = bool(options.get("as_json"))
    for i, name in enumerate(sources[first:], first):
        try:
            source = opened if i == first else VideoSource(name, **_source_options(video))
        except VideoError as exc:
            echo(one_line(f"error: {exc}"), err=True)
            failed += 1
            continue
        tracking = Tracking(threshold, reid=bool(video["reid"]), counters=counters) if tracking_wanted else None
        if tracking is not None:
            counters = _counters(video)  # fresh counts for the next source
        with progress(source.frames, Path(name).name or name, minimum=1) as advance:
            report = run_video(
                predictor,
                source,
                predict_options={k: options[k] for k in ("top_k", "threshold") if options.get(k) is not None},
                batch_size=getattr(predictor, "batch_size", None),
                tracking=tracking,
                on_line=_print_line if as_json else None,
                save_video=_output(video.get("save_video"), name, ".mp4"),
                save_frames=video.get("save_frames"),
                save_mot=_output(video.get("save_mot"), name, ".txt"),
                progress=advance,
                lanes=VIDEO_LANES,
                stop_signals=STOP_SIGNALS,
            )
        if as_json:
            _print_line({"source": report.source, "summary": report.to_dict()})
        else:
            _print_report(report)
        if report.error:
            echo(one_line(f"error: {report.error} (the frames before it were predicted and written)"), err=True)
            failed += 1
        if report.interrupted:
            echo(f"{report.source}: interrupted by {report.signal or 'SIGINT'} after {plural(report.frames, 'frame')}"
                 " (each predicted and written)", err=True)  # fmt: skip
            raise typer.Exit(interrupted_exit_code(report))
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def interrupted_exit_code(report: Any) -> int:
    """The exit code of a command whose video run a signal stopped: 128 + the signal (130 for Ctrl-C, 143 for
    SIGTERM), as a shell reports a process the signal ended."""
    import signal

    return 128 + int(getattr(signal, report.signal or "SIGINT", signal.SIGINT))


def video_batch_size(options: dict[str, Any]) -> int | None:
    """Frames per forward pass for a video run with the verb's ``options``: ``--batch-size`` when given, else
    ``VIDEO_BATCH`` on a CPU (a video's frames share one size, so they batch) and the predictor's own default on a
    GPU (None)."""
    from cnnapps.runtime import select_device

    if options.get("batch_size"):
        return int(options["batch_size"])
    on_cpu = select_device(options.get("device") or "auto", options.get("engine") or "auto").type == "cpu"
    return VIDEO_BATCH if on_cpu else None


def _source_options(video: dict[str, Any]) -> dict[str, Any]:
    def said(message: str) -> None:
        echo(message, err=True)

    return {"stride": video["vid_stride"], "start": video["start"], "end": video["end"],
            "reconnect": video["reconnect"], "on_event": said}  # fmt: skip


def _counters(video: dict[str, Any]) -> list[Any]:
    from cnnapps.apps.track.book import parse_line, parse_zone

    lines = [parse_line(text, name=f"line {i}") for i, text in enumerate(video.get("line") or [], 1)]
    return lines + [parse_zone(text, name=f"zone {i}") for i, text in enumerate(video.get("zone") or [], 1)]


def _is_file_name(path: Path) -> bool:
    return path.suffix != "" and not path.is_dir()


def _output(path: Path | None, source: str, suffix: str) -> Path | None:
    """``path`` itself when it names a file, else a free name after the source in the folder ``path``."""
    if path is None or _is_file_name(path):
        return path
    from cnnapps.files import made_folder
    from cnnapps.terminal import free_name

    made_folder(path)
    stem = Path(source.split("://")[-1].replace("%", "").rstrip("/")).stem or "video"
    return free_name(path, stem.replace(":", "-"), suffix)


def _print_line(data: dict[str, Any]) -> None:
    from cnnapps.terminal import json_safe

    print(json.dumps(json_safe(data), allow_nan=False), flush=True)


def _count_line(count: dict[str, Any]) -> str:
    """``line 1: 3 in (2 car, 1 bus), 1 out (1 car)`` or ``zone 1: 4 entered (...), 2 inside now``."""

    def by(labels: dict[str, int]) -> str:
        return f" ({', '.join(f'{n} {label}' for label, n in labels.items())})" if labels else ""

    if count["kind"] == "zone":
        entered = f"{count['entered']} entered{by(count['entered_by_label'])}"
        return f"{count['name']}: {entered}, {count['inside']} inside now"
    return (f"{count['name']}: {count['in']} in{by(count['in_by_label'])}, "
            f"{count['out']} out{by(count['out_by_label'])}")  # fmt: skip


def _print_report(report: Any) -> None:
    out = console()
    speed = f"{report.fps:.1f} frames/s" if report.frames else "no frame"
    dropped = f", {report.dropped} stale live frames dropped" if report.dropped else ""
    out.print(f"{report.source}: {plural(report.frames, 'frame')} in {report.seconds:.1f} s ({speed}{dropped}), "
              f"{plural(report.events, 'event')}")  # fmt: skip
    if report.tracks:
        from rich.table import Table

        totals = report.track_totals or {"tracks": len(report.tracks), "summaries_dropped": 0}
        title = plural(totals["tracks"], "track")
        if totals["summaries_dropped"]:
            title += f" (the {totals['summaries_dropped']} earliest finished ones not kept)"
        table = Table(title=title)
        for column in ("id", "label", "frames", "first", "last", "from", "to"):
            table.add_column(column, justify="left" if column in ("label", "from", "to") else "right")
        for t in report.tracks[:50]:
            start, end = t["path"][0], t["path"][-1]
            table.add_row(str(t["id"]), t["label"], str(t["frames"]), str(t["first_frame"]), str(t["last_frame"]),
                          f"({start[1]:.0f}, {start[2]:.0f})", f"({end[1]:.0f}, {end[2]:.0f})")  # fmt: skip
        out.print(table)
        if len(report.tracks) > 50:
            out.print(f"... and {len(report.tracks) - 50} more (all of them with --json)")
    for count in report.counts:
        out.print(_count_line(count))
    for path in report.written:
        echo(f"wrote {path}", err=True)
