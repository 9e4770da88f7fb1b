"""Any task's predictor over video: frames in batches, one JSON line per frame, tracks, an annotated video, events.

With a GPU, three threads share the work. The source (:class:`cnnapps.datasets.video.VideoSource`) decodes ahead
in its own; the predictor runs batches of frames in the caller's; drawing, encoding and writing run in a third, so
the model never waits on them. On a CPU the model needs every core: frames are decoded as asked and outputs written
in turn, and batches of frames go through the model in lanes (forked processes where the system forks), each with
its share of the cores (:class:`_Lanes`). Nothing is kept per frame: each frame's answer leaves as a JSON line as
soon as it is drawn, so memory stays flat over a stream of any length (tracks keep a summary each, with a path
thinned by motion).

A source that fails mid-way (damage it cannot read past, a stream that stalls or drops) ends the run with the frames
read so far predicted, written and reported; ``VideoReport.error`` says what happened (a damaged frame the source
skips does not end it). Ctrl-C (and, where asked, SIGTERM) stops the run after the batches in hand in the same way
(``VideoReport.interrupted``); a second one stops it at once.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from cnnapps.errors import CnnappsError

#: frames per forward pass from files (live sources run frame by frame: the freshest frame matters more)
DEFAULT_VIDEO_BATCH = 8


@dataclass
class VideoReport:
    """What a run over one source did: frames predicted, time, the error that ended it, tracks and counts."""

    source: str
    frames: int = 0
    dropped: int = 0  # stale live frames skipped to keep up
    seconds: float = 0.0
    error: str | None = None
    interrupted: bool = False
    signal: str | None = None  # the signal that interrupted it: SIGINT (Ctrl-C) or SIGTERM
    events: int = 0  # frames where the answer changed (written with --save-frames)
    tracks: list[dict[str, Any]] = field(default_factory=list)
    counts: list[dict[str, Any]] = field(default_factory=list)
    track_totals: dict[str, Any] = field(default_factory=dict)  # every track: the list keeps the latest finished
    written: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "frames": self.frames, "seconds": round(self.seconds, 3),
                               "fps": round(self.fps, 2), "dropped": self.dropped, "events": self.events}  # fmt: skip
        if self.error:
            out["error"] = self.error
        if self.interrupted:
            out["interrupted"] = True
            if self.signal:
                out["signal"] = self.signal
        if self.tracks or self.counts or self.track_totals:
            out["tracks"] = self.tracks
            out["counts"] = self.counts
            out["track_totals"] = self.track_totals
        if self.written:
            out["written"] = self.written
        return out


class Tracking:
    """Persistent ids for a detector's instances: ByteTrack with re-identification by each box's appearance
    (from the detector's own forward pass), a book of tracks, and line and zone counters.

    ``threshold`` is the score the user asked for: the detector runs lower (ByteTrack's second association needs
    the weak boxes), and instances under ``threshold`` are kept only when they continue a track. It is the
    tracker's first-association score (``high``), and a new track needs 0.1 more (``new_track``; half the way to 1
    above 0.8), as ByteTrack's 0.5 and 0.6 at the default 0.5; ``tracker`` options given override them.

    Memory stays bounded over a stream of any length: every :data:`RETIRE_EVERY` frames tracked, the tracks not
    seen for longer than the tracker can bring a lost one back (``horizon`` frames tracked) are retired from the
    book (whose summary keeps the latest ``keep_finished`` of them, its totals every track) and from ``seen``.
    Counters and the book count the frames tracked, not the source's frame numbers, so a stride or dropped live
    frames do not make them forget an id the tracker still knows (and count it again)."""

    def __init__(
        self,
        threshold: float,
        reid: bool = True,
        counters: list[Any] | None = None,
        keep_mot: bool = False,
        keep_finished: int | None = None,
        **tracker: Any,
    ) -> None:
        from cnnapps.apps.track.book import KEEP_FINISHED, TrackBook
        from cnnapps.apps.track.tracker import ByteTracker

        tracker.setdefault("high", threshold)
        tracker.setdefault("new_track", threshold + min(0.1, (1.0 - threshold) / 2))  # reachable near 1 too
        tracker.setdefault("low", min(0.1, tracker["high"]))
        self.tracker = ByteTracker(reid=reid, **tracker)
        self.book = TrackBook(keep_finished=KEEP_FINISHED if keep_finished is None else keep_finished)
        #: frames tracked after which a lost track can no longer come back
        self.horizon = max(self.tracker.lost_frames, self.tracker.reid_frames if self.tracker.reid else 0)
        self.counters = list(counters or [])
        for counter in self.counters:  # an id forgotten while the tracker can still bring it back counts again
            if hasattr(counter, "forget"):
                counter.forget = max(counter.forget, self.horizon)
        self.threshold = threshold
        self.seen: set[int] = set()  # ids not retired yet
        self._sized = False
        self.mot: list[str] | None = [] if keep_mot else None  # every frame's MOTChallenge lines, when asked

    @property
    def detector_threshold(self) -> float:
        """The score the detector should keep: low enough for ByteTrack's second association."""
        return min(self.threshold, self.tracker.low)

    def update(self, frame: Any, result: Any) -> tuple[bool, list[str]]:
        """Give ``result``'s instances their ids; returns whether something happened (a new id, a line crossed)
        and the frame's MOTChallenge lines."""
        from cnnapps.apps.track.mot import mot_lines

        if not result.ok:
            return False, []
        if not self._sized:  # counters given as fractions of the frame become pixels
            height, width = frame.rgb.shape[:2]
            self.counters = [c.scaled(width, height) if hasattr(c, "scaled") else c for c in self.counters]
            self._sized = True
        found = result.instances
        boxes = np.array([i.box for i in found], np.float32).reshape(-1, 4)
        scores = np.array([i.score for i in found], np.float32)
        labels = np.array([i.label_index for i in found], np.int64)
        vectors = [i.embedding for i in found]
        embeddings = np.stack(vectors) if found and all(v is not None for v in vectors) else None
        ids = self.tracker.update(boxes, scores, labels, embeddings)
        kept = []
        for inst, track_id in zip(found, ids, strict=True):
            inst.embedding = None  # used; not carried further
            if track_id >= 0:
                inst.track_id = int(track_id)
            if track_id >= 0 or inst.score >= self.threshold:
                kept.append(inst)
        result.instances = kept
        tracked = [i for i in kept if i.track_id is not None]
        t_ids = np.array([i.track_id for i in tracked], np.int64)
        t_boxes = np.array([i.box for i in tracked], np.float32).reshape(-1, 4)
        names = [i.label for i in tracked]
        step = self.tracker.frame  # frames tracked: the tracker's clock, whatever the stride or frames dropped
        self.book.add(frame.index, frame.time, t_ids, t_boxes, names, step=step)
        before = [_total(c) for c in self.counters]
        centres = np.stack([(t_boxes[:, 0] + t_boxes[:, 2]) / 2, (t_boxes[:, 1] + t_boxes[:, 3]) / 2], 1)
        for counter in self.counters:
            counter.update(step, t_ids, centres, names)
        new = set(t_ids.tolist()) - self.seen
        self.seen |= new
        if step % RETIRE_EVERY == 0:  # ids are never reused: a retired one cannot be new again
            self.seen.difference_update(self.book.retire(step, self.horizon))
        crossed = [_total(c) for c in self.counters] != before
        lines = mot_lines(frame.index, t_ids, t_boxes, np.array([i.score for i in tracked], np.float32))
        if self.mot is not None:
            self.mot.extend(lines)
        return bool(new) or crossed, lines

    def finish(self, report: VideoReport) -> None:
        report.tracks = self.book.summary()
        report.counts = [c.to_dict() for c in self.counters]
        report.track_totals = self.book.totals()


#: frames tracked between two retirements of finished tracks (:class:`Tracking`)
RETIRE_EVERY = 32


def _total(counter: Any) -> str:
    return repr(counter.to_dict())


def run_video(
    predictor: Any,
    source: Any,
    *,
    predict_options: dict[str, Any] | None = None,
    batch_size: int | None = None,
    tracking: Tracking | None = None,
    on_line: Callable[[dict[str, Any]], None] | None = None,
    save_video: Path | None = None,
    save_frames: Path | None = None,
    save_mot: Path | None = None,
    progress: Callable[[int], None] | None = None,
    lanes: int = 1,
    stop_signals: tuple[str, ...] = ("SIGINT",),
) -> VideoReport:
    """Run ``predictor`` over every frame ``source`` yields; returns the :class:`VideoReport`.

    ``on_line`` gets one dict per frame, in order: ``{"source", "frame", "time", <the result's fields>}``.
    ``save_video``: an annotated copy (H.264, no audio); ``save_frames``: a folder for the annotated frames where
    something happens (the answer's headline changes; with tracking, a new track starts or a line is crossed);
    ``save_mot``: the tracks as MOTChallenge results. Outputs are never written over existing files, and what was
    written before an error is kept. ``predict_options``: passed to ``predictor.predict`` where it takes them
    (``top_k``). ``lanes``: on a CPU, batches of frames predicted at once in this many lanes (forked processes where
    the system forks, else threads), the CPU's threads shared out among them (as OpenVINO's throughput streams do),
    for predictors that allow it (``predict_in_lane(images, compile_now=...)``); answers are taken in frame order all
    the same.

    ``stop_signals`` (names; run from the main thread): the first such signal stops the run after the batches in
    hand, every one of them predicted and written, the outputs finished, ``interrupted`` and ``signal`` set in the
    report; a second one acts as the signal would have (Ctrl-C raises KeyboardInterrupt at once, the outputs
    still closed with what they hold; SIGTERM ends the process). A signal ignored or handled by the program
    itself when the run starts is left as it is."""
    accepted = inspect.signature(predictor.predict).parameters
    options = {k: v for k, v in (predict_options or {}).items() if k in accepted}
    live = bool(getattr(source, "live", False))
    size = 1 if live else (batch_size or DEFAULT_VIDEO_BATCH)
    report = VideoReport(str(source.name))
    # On a CPU the model needs every core: threads decoding or encoding beside its forward pass slow it down
    # (more than they save), so there a file is decoded frame by frame as asked and outputs are written in turn.
    # With a GPU the CPU's share runs beside the model: decoding ahead, drawing and writing in threads.
    on_cpu = str(getattr(predictor, "device", "cpu")).startswith("cpu")
    if on_cpu and hasattr(source, "read_in_lockstep"):
        source.read_in_lockstep()
    lanes = lanes if on_cpu and not live and hasattr(predictor, "predict_in_lane") else 1
    try:
        sink = _Sink(report, on_line, save_video, save_frames, save_mot, source, tracking, threaded=not on_cpu)
    except BaseException:  # an output refused (a file there, an unknown suffix): the source is not read
        source.close()
        raise
    previous = [""]
    started = time.perf_counter()

    def take(frames: list[Any], results: list[Any]) -> None:
        for frame, result in zip(frames, results, strict=True):
            result.source = report.source
            if tracking is not None:  # events of tracks: a new object, a line crossed
                event, mot = tracking.update(frame, result)
            else:  # events of answers: another class on top, other objects, another caption
                said, mot = (result.headline() if result.ok else ""), []
                event, previous[0] = said not in (previous[0], ""), said
            report.events += event
            sink.put(frame, result, event, mot)
        report.frames += len(frames)
        if progress is not None:
            progress(len(frames))

    from cnnapps.datasets.video import VideoError

    pending: list[Any] = []
    with _StopSignals(stop_signals) as stop, _Lanes(predictor, lanes, options, take) as run:
        try:
            try:
                frames_in = iter(source)
                while stop.signal is None:
                    with stop.waiting():  # a wait for the source (a stalled stream) ends at once
                        frame = next(frames_in, None)
                    if frame is None:
                        break
                    pending.append(frame)
                    if len(pending) >= size:
                        frames, pending = pending, []
                        run(frames)
            except VideoError as exc:
                report.error = str(exc)
            except _Interrupted:  # stop.signal says which
                pass
            if pending:  # frames read before the source ended, failed or was interrupted
                run(pending)
            run.finish()
        finally:
            try:
                source.close()
            finally:
                report.seconds = time.perf_counter() - started
                report.dropped = int(getattr(source, "dropped", 0))
                sink.close()
        report.interrupted, report.signal = stop.signal is not None, stop.signal
    if tracking is not None:
        tracking.finish(report)
    return report


class _Interrupted(BaseException):
    """A stop signal received while the run waited for the source's next frame (:meth:`_StopSignals.waiting`)."""


class _StopSignals:
    """While a run goes: the first of ``names`` (signals) received asks it to stop (``signal``: its name), the
    batch being handled finished, rather than interrupting whatever runs at that moment (a frame half written, a
    batch half taken); only a wait for the source (:meth:`waiting`) is cut short. A second one is handled as it
    would have been without this (the handlers before are put back and it is raised again). Handlers are set only
    in the main thread, and only over Python's defaults: a signal ignored, or one the program handles itself
    (a service's own SIGINT handler, asyncio's), is left to it."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.signal: str | None = None
        self.previous: dict[int, Any] = {}
        self._waiting = False

    @contextlib.contextmanager
    def waiting(self) -> Any:
        """A stretch where the first signal raises :class:`_Interrupted` (reading the source: nothing is half
        done there, and a stalled or reconnecting stream could keep the run waiting long)."""
        self._waiting = True
        try:
            yield
        finally:
            self._waiting = False

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for name in self.names:
            number = getattr(signal, name, None)
            if number is None:  # not on this system
                continue
            before = signal.getsignal(number)
            if before not in (signal.default_int_handler, signal.SIG_DFL):  # ignored, or the program's own handler
                continue
            self.previous[number] = before
            signal.signal(number, self._received)
        return self

    def _received(self, number: int, frame: Any) -> None:
        if self.signal is None:
            self.signal = signal.Signals(number).name
            if self._waiting:
                raise _Interrupted
            return
        before = self.previous.get(number, signal.SIG_DFL)
        self._restore()
        if callable(before):
            before(number, frame)  # Ctrl-C: KeyboardInterrupt, here and now
        else:
            signal.raise_signal(number)  # its default: the process ends

    def _restore(self) -> None:
        for number, before in self.previous.items():
            signal.signal(number, before)
        self.previous = {}

    def __exit__(self, *exc: object) -> None:
        self._restore()


class _Lanes:
    """Batches of frames through the predictor: in turn (one lane), or several at once, the CPU's threads shared
    out among them; answers reach ``take`` in frame order either way.

    Where the system forks (Linux) and each lane gets one of the CPU's threads, lanes are processes forked from this
    one once the first batch has been predicted here (compiling the trunk for the frames' shape, which the lanes then
    share with the rest of the model's memory); each runs its batches under its own interpreter lock, with the next
    batch already sent. A detector's pass is much Python between its convolutions (anchors, proposals, per-level RoI
    pooling), which two threads of one process take in turn: on two cores, two forked lanes (batches of 4) ran
    1.43-1.72x the frames/s of a loop over single frames with both threads; two thread lanes 1.16x. Elsewhere lanes
    are threads: where lanes get several threads each (OpenMP's pool does not survive a fork: a forked process
    running on more than one thread hangs), and for graphs in onnxruntime or OpenVINO (their pools do not either)."""

    def __init__(self, predictor: Any, lanes: int, options: dict[str, Any], take: Callable) -> None:
        self.predictor, self.lanes, self.options, self.take = predictor, max(1, int(lanes)), options, take
        self.processes = self.lanes > 1 and _can_fork()  # until _start_lanes finds they cannot be
        self.inflight: deque = deque()
        self.pool: Any = None
        self.workers: list[_LaneProcess] = []
        self.next = 0
        self.threads: int | None = None

    def __enter__(self) -> _Lanes:
        if self.lanes > 1:
            import torch

            self.threads = torch.get_num_threads()
            if not self.processes:  # else forked once the first batch has compiled what the predictor compiles
                self._start_lanes()
        return self

    def _start_lanes(self) -> None:
        import torch

        share = max(1, (self.threads or 1) // self.lanes)
        # graphs in onnxruntime or OpenVINO keep thread pools that a forked copy would lack, and so does OpenMP (a
        # forked process that runs PyTorch on more than one thread hangs): those lanes run in threads
        if self.processes and share == 1 and getattr(self.predictor, "engine", "eager") in FORKABLE_ENGINES:
            self.workers = [_LaneProcess(self.predictor, self.options) for _ in range(self.lanes)]
            return
        import concurrent.futures

        self.processes = False
        torch.set_num_threads(share)
        self.pool = concurrent.futures.ThreadPoolExecutor(self.lanes, thread_name_prefix="cnnapps-lane")

    def __call__(self, frames: list[Any]) -> None:
        images = [f.rgb for f in frames]
        if self.processes and not self.workers:  # the first batch, here with every thread, compiles
            self.take(frames, self.predictor.predict_in_lane(images, compile_now=True, **self.options))
            self._start_lanes()
            return
        if self.workers:
            worker = self.workers[self.next]
            self.next = (self.next + 1) % len(self.workers)
            worker.send(images)
            self.inflight.append((frames, worker.receive))
        elif self.pool is not None:
            future = self.pool.submit(self.predictor.predict_in_lane, images, **self.options)
            self.inflight.append((frames, future.result))
        else:
            self.take(frames, self.predictor.predict(images, **self.options))
            return
        # a lane thread holds one batch; a lane process two, so that the next is there when it finishes one
        while len(self.inflight) >= self.lanes * (2 if self.workers else 1):
            self._take_oldest()

    def _take_oldest(self) -> None:
        frames, result = self.inflight[0]
        answers = result()  # left in place while awaited: after a Ctrl-C here, finish() takes it again
        self.inflight.popleft()
        self.take(frames, answers)

    def finish(self) -> None:
        while self.inflight:
            self._take_oldest()

    def __exit__(self, *exc: object) -> None:
        for worker in self.workers:
            worker.close()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            import torch

            torch.set_num_threads(self.threads or 1)


#: engines whose pass a forked lane can run: PyTorch's own, eager or a TorchScript graph
FORKABLE_ENGINES = ("eager", "jit")


def _can_fork() -> bool:
    import multiprocessing
    import sys

    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


class _LaneProcess:
    """One lane of :class:`_Lanes`: a process forked with the predictor in memory, predicting the batches of
    frames it is sent on one thread, one batch at a time; a failure there is raised here."""

    def __init__(self, predictor: Any, options: dict[str, Any]) -> None:
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_lane_main, args=(predictor, options, child),
                                       name="cnnapps-lane", daemon=True)  # fmt: skip
        self.process.start()
        child.close()

    def send(self, images: list[np.ndarray]) -> None:
        try:
            self.connection.send(images)
        except OSError:
            self._stopped()

    def receive(self) -> list[Any]:
        try:
            kind, value = self.connection.recv()
        except (EOFError, OSError):
            self._stopped()
        if kind == "error":
            raise value
        return value

    def _stopped(self) -> NoReturn:
        self.process.join(timeout=5)  # its end can be seen here before it is reaped
        raise CnnappsError(f"a video lane stopped (exit code {self.process.exitcode}) before answering") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a lane that has stopped already
            self.connection.send(None)
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.connection.close()


def _lane_main(predictor: Any, options: dict[str, Any], connection: Any) -> None:
    """A lane process: batches in, answers (or the failure) out, until it is sent None or its parent goes."""
    import pickle

    import torch

    # Ctrl-C and SIGTERM (sent to the whole process group by a terminal, `timeout`) are the parent's to handle: it
    # takes the batches in flight and closes the lanes; a lane whose parent is gone ends with its connection
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _quiet_lane()
    torch.set_num_threads(1)
    batches: queue.Queue = queue.Queue()

    def receive() -> None:  # batches are taken in as they come, so that the parent's sends never wait on a pass
        while True:
            try:
                batches.put(connection.recv())
            except (EOFError, OSError):
                batches.put(None)
                return

    threading.Thread(target=receive, name="cnnapps-lane-in", daemon=True).start()
    while (images := batches.get()) is not None:
        try:
            answer: tuple[str, Any] = ("ok", predictor.predict_in_lane(images, **options))
        except Exception as exc:  # handed to the parent, as itself where it can be rebuilt there
            answer = ("error", exc if _survives_pickling(exc) else CnnappsError(f"{type(exc).__name__}: {exc}"))
        try:
            connection.send(answer)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            connection.send(("error", CnnappsError(f"a video lane's answer could not be sent back: {exc}")))


def _quiet_lane() -> None:
    """A lane speaks only through its answers: a thread of the command (a progress bar's) may hold the terminal's
    lock at the fork, and a forked copy of a held lock is never released, so a lane that printed, warned or logged
    through it would wait forever. Its streams go back to the process's own, its warnings and logs are dropped
    (what fails reaches the command as the exception)."""
    import logging
    import sys
    import warnings

    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)


def _survives_pickling(exc: BaseException) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # any failure means: send its message instead
        return False
    return True


class _Sink:
    """The outputs of a run, written in a thread of their own, in frame order: JSON lines, the annotated video,
    event frames, MOTChallenge lines. A failure here stops the run and is raised in the caller's thread."""

    def __init__(
        self,
        report: VideoReport,
        on_line: Callable[[dict[str, Any]], None] | None,
        save_video: Path | None,
        save_frames: Path | None,
        save_mot: Path | None,
        source: Any,
        tracking: Tracking | None,
        threaded: bool = True,
    ) -> None:
        from cnnapps.files import OutputExistsError

        for path in (save_video, save_mot):
            if path is not None and os.path.lexists(path):
                raise OutputExistsError(path)
        self.report, self.on_line = report, on_line
        self.save_video, self.save_frames, self.tracking = save_video, save_frames, tracking
        self.fps = float(getattr(source, "fps", None) or 25.0)
        self.stem = Path(str(source.name).rstrip("/")).stem or "frame"
        self.source = source  # its end (duration, or --end) is known once it is read: the copy's last frame ends there
        self.video: Any = None
        if save_video is not None:  # refuses an unknown suffix before anything is written; the file opens with a frame
            from cnnapps.datasets.video import VideoWriter

            self.video = VideoWriter(save_video, self.fps)
        self.mot = _LineFile(save_mot) if save_mot is not None else None
        self.trails: dict[int, deque] = {}
        self.last_seen: dict[int, int] = {}
        self.queue: queue.Queue = queue.Queue(maxsize=16)
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="cnnapps-video-out", daemon=True)
        self.threaded = threaded
        if threaded:
            self.thread.start()

    def put(self, frame: Any, result: Any, event: bool, mot: list[str]) -> None:
        # the counts as of this frame: the caller's thread goes on counting later frames while this one is drawn
        drawn = self.tracking is not None and (self.save_video is not None or self.save_frames is not None)
        counts = [counter.to_dict() for counter in self.tracking.counters] if drawn else []
        if not self.threaded:
            self._write(frame, result, event, mot, counts)
            return
        while True:
            if self.failure is not None:
                raise self.failure
            try:
                self.queue.put((frame, result, event, mot, counts), timeout=0.5)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Every output finished and in place, each whatever happens to the others (a video that cannot be finished
        leaves the MOT file written); then the first failure, of the writing or the closing, is raised."""
        try:
            if self.thread.is_alive():
                self.queue.put(None)
                self.thread.join()
        finally:
            failure = self.failure
            for closing, path in ((self.video, self.save_video), (self.mot, self.mot and self.mot.path)):
                if closing is None:
                    continue
                try:
                    if closing is self.video:
                        closing.end = self._source_end()
                    closing.close()
                except BaseException as exc:
                    failure = failure or exc
                else:
                    if os.path.lexists(path):  # a video with no frame is not written
                        self.report.written.append(str(path))
            if failure is not None:
                raise failure

    def _source_end(self) -> float | None:
        """Where the source ends (seconds, as its frames' times): its duration or ``end``, the sooner; None live."""
        if getattr(self.source, "live", False):
            return None
        known = [t for t in (getattr(self.source, "duration", None), getattr(self.source, "end", None))
                 if isinstance(t, (int, float)) and t > 0]  # fmt: skip
        return min(known) if known else None

    def _work(self) -> None:
        try:
            while (item := self.queue.get()) is not None:
                self._write(*item)
        except BaseException as exc:  # handed to the caller's thread
            self.failure = exc
            while self.queue.get() is not None:  # let the caller's puts and close go through
                pass

    def _write(self, frame: Any, result: Any, event: bool, mot: list[str], counts: list[dict[str, Any]]) -> None:
        if self.on_line is not None:
            said = getattr(result, "with_engine", result.to_dict)()  # with the engine that gave it, as images' --json
            answer = {k: v for k, v in said.items() if k != "path"}
            self.on_line({"source": self.report.source, "frame": frame.index, "time": round(frame.time, 3), **answer})
        if self.mot is not None:
            self.mot.write(mot)
        if self.save_video is None and not (event and self.save_frames is not None):
            return
        picture = self._draw(frame, result, counts)
        if self.video is not None:
            self.video.write(picture, time=frame.time)  # at the source's pace, whatever the stride
        if event and self.save_frames is not None:
            from cnnapps.datasets.io import write_image
            from cnnapps.files import made_folder
            from cnnapps.terminal import free_name

            made_folder(self.save_frames)
            path = free_name(self.save_frames, f"{self.stem}-{frame.index:06d}", ".jpg")
            write_image(path, picture)
            self.report.written.append(str(path))

    def _draw(self, frame: Any, result: Any, counts: list[dict[str, Any]]) -> np.ndarray:
        """The frame with the answer drawn over it (``result.overlay``), track trails, counting lines and zones
        with ``counts``, theirs as of this frame."""
        import cv2

        if not hasattr(result, "draw"):
            raise CnnappsError(f"--save-video/--save-frames: {type(result).__name__} answers have no picture")
        if not result.ok:
            return frame.rgb
        picture = np.ascontiguousarray(result.overlay(frame.rgb))
        if self.tracking is None:
            return picture
        from cnnapps.results import PALETTE

        thick = max(1, round(max(picture.shape[:2]) / 400))
        for inst in result.instances:
            if inst.track_id is None:
                continue
            x0, y0, x1, y1 = inst.box
            self.trails.setdefault(inst.track_id, deque(maxlen=32)).append((round((x0 + x1) / 2), round((y0 + y1) / 2)))
            self.last_seen[inst.track_id] = frame.index
        for track_id in [t for t, seen in self.last_seen.items() if frame.index - seen > 64]:  # bounded memory
            self.trails.pop(track_id, None)
            self.last_seen.pop(track_id, None)
        for track_id, points in self.trails.items():
            if len(points) > 1:
                colour = PALETTE[track_id % len(PALETTE)]
                cv2.polylines(picture, [np.array(points, np.int32)], False, colour, thick, cv2.LINE_AA)
        for counter, counted in zip(self.tracking.counters, counts, strict=True):
            _draw_counter(picture, counter, counted, thick)
        return picture


class _LineFile:
    """A text file written line by line into a hidden temporary file and renamed into place when closed (what was
    written before an error is kept; an existing file is never replaced: :func:`~cnnapps.files.publish`)."""

    def __init__(self, path: Path) -> None:
        import tempfile

        from cnnapps.files import OutputExistsError, made_folder

        if os.path.lexists(path):
            raise OutputExistsError(path)
        self.path = Path(path)
        made_folder(self.path.parent, self.path)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self.fh = os.fdopen(fd, "w", encoding="utf-8")

    def write(self, lines: list[str]) -> None:
        for line in lines:
            self.fh.write(line.rstrip("\n") + "\n")

    def close(self) -> None:
        from cnnapps.files import current_umask, publish

        self.fh.close()
        os.chmod(self.tmp, 0o644 & ~current_umask())
        publish(self.tmp, self.path)


def _draw_counter(picture: np.ndarray, counter: Any, counts: dict[str, Any], thick: int) -> None:
    """A counting line or zone on the frame, with its counts (``counter.to_dict()`` as of the frame)."""
    import cv2

    if hasattr(counter, "polygon"):
        points = np.round(np.array(counter.polygon, np.float32)).astype(np.int32)
        text = f"{counter.name}: {counts.get('inside', 0)} inside, {counts.get('entered', 0)} entered"
    else:
        ends = [[counter.x0, counter.y0], [counter.x1, counter.y1]]
        points = np.round(np.array(ends, np.float32)).astype(np.int32)
        text = f"{counter.name}: {counts.get('in', 0)} in, {counts.get('out', 0)} out"
    cv2.polylines(picture, [points], hasattr(counter, "polygon"), (255, 255, 255), thick + 1, cv2.LINE_AA)
    x, y = (int(v) for v in points.min(0))
    cv2.putText(picture, text, (x + 4, max(14, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
