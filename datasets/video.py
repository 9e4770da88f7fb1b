"""Video in and out: files, image sequences, webcams and network streams as RGB frames; H.264/VP9 files written.

:class:`VideoSource` opens a source in its constructor (so a bad one fails before any model loads) and yields
:class:`Frame` objects decoded by a background thread into a small bounded queue: files and image sequences
lose no frame (the reader waits for the consumer), live sources (webcams, network streams) drop their oldest
waiting frame so the consumer always gets recent ones. Failures are :class:`VideoError`, one line naming the
source; a failure mid-way comes after every frame decoded before it. :class:`VideoWriter` writes RGB frames to a
hidden temporary file next to its target and renames it at ``close()``, keeping what was written even after an
error; given the frames' times, it writes them at the source's pace. FFmpeg (PyAV) is imported only when a video
is opened.

    with VideoSource("clip.mp4", stride=2) as source, VideoWriter("out.mp4", source.fps / 2) as out:
        for frame in source:
            out.write(frame.rgb, time=frame.time)
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from cnnapps.errors import CnnappsError
from cnnapps.files import OutputExistsError, current_umask, publish

#: File suffixes read as videos.
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv", ".flv")

_STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "udp", "tcp", "srt")
_HTTP_SCHEMES = ("http", "https")
_LIVE_DEMUXERS = ("hls", "mpjpeg", "dash")  # read over http(s) as live streams, whatever duration they state
_URL = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*)://")
_WEBCAM = re.compile(r"webcam(?::(\d+))?")
_SEQUENCE_FIELD = re.compile(r"%%|%(0?)(\d*)d")  # ffmpeg's image2 pattern: frames/%05d.png (%% is a %)
_EPS = 1e-6
_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 5.0
_WATCHDOG_GRACE = 2.0  # the consumer's own stall check waits this much longer than FFmpeg's read timeout


def _kind(text: str) -> str | None:
    """``webcam``, ``stream`` (rtsp, udp...), ``http``, ``sequence``, ``file``, or None for a non-video path."""
    url = _URL.match(text)
    if url:
        scheme = url.group(1).lower()
        return "stream" if scheme in _STREAM_SCHEMES else "http" if scheme in _HTTP_SCHEMES else None
    from cnnapps.datasets.io import IMAGE_SUFFIXES

    path, suffix = Path(text), Path(text).suffix.lower()
    if path.is_dir() or (suffix in IMAGE_SUFFIXES and path.is_file()):  # a folder named webcam, a file a%d.jpg
        return None
    if _WEBCAM.fullmatch(text):
        return "webcam"
    if suffix in VIDEO_SUFFIXES:
        return "file"
    if _sequence_field(text):
        return "sequence"
    return None


def _sequence_field(text: str) -> re.Match[str] | None:
    """The printf field (``%d``, ``%05d``) of an image-sequence pattern, skipping ``%%``."""
    return next((m for m in _SEQUENCE_FIELD.finditer(text) if m.group(0) != "%%"), None)


def is_video_source(text: str) -> bool:
    """Whether ``text`` names a video: a path with a video suffix, ``webcam`` / ``webcam:N``, an rtsp, rtsps,
    rtmp, udp, tcp, srt, http or https URL (http is read as a stream or a remote video), or an image-sequence
    pattern with a printf field (``frames/%05d.png``, ffmpeg's convention)."""
    return _kind(str(text)) is not None


@dataclass
class Frame:
    """One decoded frame: ``index`` counts the source's frames from 0 (before the stride), ``time`` is in
    seconds from the start (from the frame's timestamp when known), ``rgb`` is (H, W, 3) uint8, C-contiguous."""

    index: int
    time: float
    rgb: np.ndarray


class VideoError(CnnappsError):
    """A video source that cannot be opened, or that failed mid-way (then the message says after how many
    frames). ``frames_read`` counts the frames read before the failure. Commands exit 1: an input failed."""

    exit_code = 1

    def __init__(self, message: str, frames_read: int = 0) -> None:
        super().__init__(message)
        self.frames_read = frames_read


def _reason(exc: BaseException) -> str:
    """FFmpeg's words for an error, without PyAV's errno and file name."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    text = str(text).strip().rstrip(".")
    return text[:1].lower() + text[1:]


_END = object()  # the reader finished normally
_NOTHING = object()  # no item within the wait


class _Buffer:
    """A bounded frame queue: the reader waits when it is full, or (live) drops the oldest frame."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self.lockstep = False  # decode only when the consumer asks (a CPU whose cores the model needs)
        self.asked = 0  # frames the consumer has asked for (lockstep)
        self.given = 0  # frames put

    def ask(self) -> None:
        """The consumer wants one more frame (lockstep)."""
        with self._cond:
            self.asked = max(self.asked, self.given) + 1  # a packet may have given two frames for one ask
            self._cond.notify_all()

    def wait_for_demand(self, stop: threading.Event) -> None:
        """In lockstep, wait until the consumer has asked for a frame not yet given (or the source closes)."""
        if not self.lockstep:
            return
        with self._cond:
            while self.given >= self.asked and not stop.is_set():
                self._cond.wait(0.1)

    def __len__(self) -> int:
        with self._cond:
            return sum(1 for item in self._items if isinstance(item, Frame))

    def put(self, item: Any, drop_oldest: bool, stop: threading.Event) -> int:
        """Queue ``item``; returns how many frames were dropped to make room. Sentinels never wait."""
        dropped = 0
        with self._cond:
            if isinstance(item, Frame):
                while len(self._items) >= self.size and not stop.is_set():
                    if drop_oldest:
                        self._items.popleft()
                        dropped += 1
                    else:
                        self._cond.wait(0.1)
                if stop.is_set():
                    return dropped
                self.given += 1
            self._items.append(item)
            self._cond.notify_all()
        return dropped

    def get(self, wait: float) -> Any:
        with self._cond:
            if not self._items:
                self._cond.wait(wait)
            if not self._items:
                return _NOTHING
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._items.clear()
            self._cond.notify_all()


class _Disconnected(Exception):
    """A live connection ended (end of stream, error or stall); the reader may reconnect."""


class VideoSource:
    """Frames from a video file, an image sequence, a webcam or a network stream.

    ``spec``: a path (see :data:`VIDEO_SUFFIXES`), ``frames/%05d.png`` (image files in numeric order, from
    the lowest number present to the first number missing after it), ``webcam`` / ``webcam:N`` (``/dev/videoN``
    through v4l2 on Linux, avfoundation device N on macOS), or an rtsp(s), rtmp, udp, tcp, srt or http(s) URL.

    An http(s) URL whose demuxer states the video's length (MP4, Matroska, WebM, AVI...: a video file on a web
    server) is read as a file: its end is the end, and data that stops coming for ``timeout`` seconds an error;
    HLS, MJPEG and http streams of no stated length are live.

    ``stride`` keeps every stride-th frame (the others are decoded but never converted); ``start`` and
    ``end`` (seconds) bound the frames read. Files seek to the keyframe before ``start``, and a frame's index
    stays its position from the beginning: from the container's index where it lists every frame at even
    intervals (MP4, MOV, AVI at a constant frame rate), else by counting the packets before ``start``, demuxed
    from the beginning without decoding (variable frame rates, Matroska, MPEG-TS), which also finds the keyframe
    to seek to; only a source that cannot be opened a second time, or frames without timestamps, get indices
    estimated from the frame rate. A ``start`` at or after the last frame gives no frame (and no error).
    ``live`` (default: webcams, network streams and live http sources) makes the queue of ``queue`` frames drop
    its oldest frame when the consumer is slow (counted in ``dropped``) instead of making the reader wait; a file
    read live is decoded as fast as it can be, and still ends at its end. For webcams and live URLs the end of the
    stream, an error or a stall (no frame for ``timeout`` seconds) is a disconnect: a :class:`VideoError`, or with
    ``reconnect`` an event (``on_event(message)``, called from the reader thread; default: printed on stderr), a
    wait (0.5 s, doubling up to 5 s) and a new connection; ``retries`` bounds the tries in a row (None: forever); the
    count starts again once frames flow. Frame indices keep increasing across reconnections and times go
    on from the wall clock. ``fps`` is the frame rate of image sequences (25 by default) and of sources
    that do not state one.

    Frames come upright: a video whose container says to show it turned (a phone's portrait video, stored landscape)
    is turned as FFmpeg's players turn it. ``width`` and ``height`` are the header's until the first frame is read,
    then the frames' as they come (the rotation is known only from a frame).

    ``max_pixels`` and ``max_aspect`` (None: no limit) bound the frames' size as :func:`~cnnapps.datasets.io.read_image`
    bounds an image's: a header whose frames go over them (or that does not say their size) is a :class:`VideoError`
    from the constructor, before a frame is decoded; a later frame that goes over them (larger than the header said)
    ends the video with a :class:`VideoError` before it is converted to RGB.

    Attributes: ``name`` (the spec), ``live``, ``fps``, ``width``, ``height``, ``duration`` (seconds, when
    known), ``frames`` (the number of frames expected after start, end and stride, when the container says),
    ``frames_read`` (frames read after start, end and stride, those dropped included), ``dropped``, ``skipped``,
    ``container_format`` (FFmpeg's demuxer: ``mov,mp4,m4a,3gp,3g2,mj2``, ``png_pipe``...; None for an image
    sequence) and ``still`` (FFmpeg reads the source as one still picture: an image demuxer, or a GIF of one frame).
    A source is read once; ``close()`` (or leaving a ``with`` block, or breaking out of the loop) stops the
    reader. Nothing is kept per frame, so memory does not grow with the video's length.

    A frame the decoder finds damaged (FFmpeg's invalid data) is skipped and the frames after it are read, as
    FFmpeg's tools do: it keeps its index (the frames after it keep theirs), counts in ``skipped``, and the count is
    said once, at the end, through ``on_event``. Damage with no frame after it (a file cut short in a frame), damage
    the demuxer cannot read past, and a file that ends before its stated length end with a :class:`VideoError`.
    """

    def __init__(
        self,
        spec: str,
        *,
        stride: int = 1,
        start: float | None = None,
        end: float | None = None,
        live: bool | None = None,
        queue: int = 4,
        timeout: float = 10.0,
        reconnect: bool = False,
        retries: int | None = None,
        fps: float | None = None,
        on_event: Callable[[str], None] | None = None,
        max_pixels: int | None = None,
        max_aspect: float | None = None,
    ) -> None:
        self.name = os.fspath(spec) if not isinstance(spec, str) else spec
        self._check_options(stride, start, end, queue, timeout, retries, fps, max_pixels, max_aspect)
        self.max_pixels, self.max_aspect = max_pixels, max_aspect
        self._kind = _kind(self.name) or "file"
        self._network = self._kind in ("webcam", "stream", "http")  # reads that can stall: FFmpeg's timeouts
        self._remote = self._network  # the end of the data is a disconnect (an http(s) video file: no)
        self._live_given = live
        self.live = bool(live) if live is not None else self._remote
        self.stride, self.start, self.end = int(stride), start, end
        self.timeout, self.reconnect, self.retries = float(timeout), bool(reconnect), retries
        self.on_event = on_event or (lambda message: print(message, file=sys.stderr, flush=True))
        self.fps: float | None = None
        self.width: int | None = None
        self.height: int | None = None
        self.frames: int | None = None
        self.duration: float | None = None
        self.container_format: str | None = None
        self.still = False
        self.frames_read = 0
        self.dropped = 0
        self.skipped = 0
        self._lost = 0  # frames skipped whose indices are not counted yet (:meth:`_count_lost`)
        self._damage = ""  # FFmpeg's words for the last damaged frame
        self._fps_given = fps
        self._buffer = _Buffer(int(queue))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards the container's closing
        self._container: Any = None
        self._stream: Any = None
        self._sequence: tuple[str, int, str, int, int] | None = None  # prefix, width, suffix, first, count
        self._next_index = 0
        self._passed = 0  # frames at or after start, for the stride
        self._last_time: float | None = None
        self._decoded_time: float | None = None  # the last frame decoded, before start filters it
        self._tries = 0
        self._time_offset = 0.0  # added to a reconnected stream's timestamps
        self._born = time.monotonic()
        self._heartbeat = self._born
        if self._kind == "sequence":
            self._open_sequence()
        else:
            self._open_av()
            try:
                self._describe_av()
                self._check_header_size()
            except BaseException:
                self._close_container()
                raise

    @staticmethod
    def _check_options(
        stride: int, start: float | None, end: float | None, queue: int, timeout: float, retries: int | None,
        fps: float | None, max_pixels: int | None, max_aspect: float | None,
    ) -> None:  # fmt: skip
        problems = []
        if not isinstance(stride, int) or stride < 1:
            problems.append(f"stride must be a whole number >= 1, not {stride!r}")
        if start is not None and not start >= 0:
            problems.append(f"start must be >= 0 seconds, not {start!r}")
        if end is not None and not end > (start or 0):
            problems.append(f"end must be after start, not {end!r}")
        if not isinstance(queue, int) or queue < 1:
            problems.append(f"queue must be a whole number >= 1, not {queue!r}")
        if not timeout > 0:
            problems.append(f"timeout must be > 0 seconds, not {timeout!r}")
        if retries is not None and retries < 0:
            problems.append(f"retries must be >= 0, not {retries!r}")
        if fps is not None and not (fps > 0 and math.isfinite(fps)):
            problems.append(f"fps must be > 0, not {fps!r}")
        if max_pixels is not None and not (isinstance(max_pixels, int) and max_pixels >= 1):
            problems.append(f"max_pixels must be a whole number >= 1, not {max_pixels!r}")
        if max_aspect is not None and not (max_aspect >= 1 and math.isfinite(max_aspect)):
            problems.append(f"max_aspect must be >= 1, not {max_aspect!r}")
        if problems:
            raise CnnappsError("video options: " + "; ".join(problems))

    # -- opening -------------------------------------------------------------------------------------------

    def _open_sequence(self) -> None:
        match = _sequence_field(self.name)
        assert match is not None
        prefix, suffix = self.name[: match.start()].replace("%%", "%"), self.name[match.end() :].replace("%%", "%")
        width = int(match.group(2) or 0) if match.group(1) else 0
        folder, stem = os.path.split(prefix)
        folder = folder or "."
        if not os.path.isdir(folder):
            raise VideoError(f"{self.name}: no such folder ({folder})")
        numbered = re.compile(re.escape(stem) + r"(\d+)" + re.escape(suffix))
        numbers = []
        with os.scandir(folder) as entries:
            for entry in entries:
                found = numbered.fullmatch(entry.name)
                if found and _sequence_path(prefix, width, suffix, int(found.group(1))).endswith(entry.name):
                    numbers.append(int(found.group(1)))
        if not numbers:
            raise VideoError(f"{self.name}: no file matches this pattern")
        first = min(numbers)
        count = 0
        while os.path.isfile(_sequence_path(prefix, width, suffix, first + count)):
            count += 1
        self._sequence = (prefix, width, suffix, first, count)
        self.fps = float(self._fps_given or 25.0)
        self.duration = count / self.fps
        self.frames = self._expected(count)
        from cnnapps.datasets.io import read_image
        from cnnapps.errors import ImageError

        path = _sequence_path(prefix, width, suffix, first)
        try:
            rgb = read_image(path, **self._image_limits())
        except ImageError as exc:
            raise VideoError(f"{self.name}: first image {exc}") from None
        self.height, self.width = rgb.shape[:2]

    def _image_limits(self) -> dict[str, Any]:
        """The limits given, as :func:`~cnnapps.datasets.io.read_image` takes them (its own defaults otherwise)."""
        limits = {"max_pixels": self.max_pixels, "max_aspect": self.max_aspect}
        return {k: v for k, v in limits.items() if v is not None}

    def _size_problem(self, width: int, height: int, frames: str, plural: bool) -> str | None:
        """Why frames of ``width`` x ``height`` go over ``max_pixels`` or ``max_aspect`` (None when they do not)."""
        have, are = ("have", "are") if plural else ("has", "is")
        if self.max_pixels is not None and width * height > self.max_pixels:
            return f"{frames} {have} {width * height:,} pixels, over the limit of {self.max_pixels:,} a frame may have"
        if self.max_aspect is not None and max(width, height) > self.max_aspect * min(width, height):
            return f"{frames} {are} more elongated than the limit of {self.max_aspect:g}:1 a frame may have"
        return None

    def _check_header_size(self) -> None:
        """The frame size the header states, against the limits given."""
        if self.max_pixels is None and self.max_aspect is None:
            return
        if not self.width or not self.height:
            raise VideoError(f"{self.name}: its header does not say the frame size")
        problem = self._size_problem(self.width, self.height, f"{self.width}x{self.height} frames", True)
        if problem:
            raise VideoError(f"{self.name}: {problem}")

    def _target(self) -> tuple[str, str | None, dict[str, str]]:
        """What FFmpeg opens: (file or URL, input format, options)."""
        if self._kind == "webcam":
            match = _WEBCAM.fullmatch(self.name)
            number = int(match.group(1) or 0) if match else 0
            if sys.platform.startswith("linux"):
                device = f"/dev/video{number}"
                if not os.path.exists(device):
                    raise VideoError(f"{self.name}: no such camera ({device})")
                return device, "v4l2", {}
            if sys.platform == "darwin":
                return str(number), "avfoundation", {"framerate": "30"}
            raise VideoError(
                f"{self.name}: webcams are read on Linux (v4l2) and macOS (avfoundation) only; "
                "on Windows (dshow) use a stream URL or a file"
            )
        if self._kind == "stream" and self.name.lower().startswith(("rtsp://", "rtsps://")):
            return self.name, None, {"rtsp_transport": "tcp"}
        if self._kind in ("stream", "http"):
            return self.name, None, {}
        path = Path(self.name)
        if not path.exists():
            raise VideoError(f"{self.name}: no such file")
        if path.is_dir():
            raise VideoError(f"{self.name}: is a folder, not a video")
        if path.stat().st_size == 0:
            raise VideoError(f"{self.name}: file is empty")
        return self.name, None, {}

    def _open_av(self) -> None:
        """Open the container and its first video stream (also on each reconnection)."""
        import av

        target, fmt, options = self._target()
        timeout = (self.timeout, self.timeout) if self._network else None
        try:
            container = av.open(target, format=fmt, options=options, timeout=timeout)
        except av.error.ExitError:
            raise VideoError(f"{self.name}: no answer within {self.timeout:g} s") from None
        except av.error.InvalidDataError:
            what = "stream" if self._remote else "file"
            reason = f"not a readable video (unknown format, or a damaged or truncated {what})"
            raise VideoError(f"{self.name}: {reason}") from None
        except PermissionError:
            raise VideoError(f"{self.name}: permission denied") from None
        except (av.error.FFmpegError, OSError) as exc:
            raise VideoError(f"{self.name}: cannot open ({_reason(exc)})") from None
        try:
            streams = container.streams.video
            if not streams:
                raise VideoError(f"{self.name}: no video stream")
            stream = streams[0]
            if stream.codec_context is None:
                raise VideoError(f"{self.name}: video codec {stream.codec.name!r} cannot be decoded by this FFmpeg")
            if not self.live:
                stream.thread_type = "AUTO"
        except BaseException:
            container.close()
            raise
        self._container, self._stream = container, stream

    def _describe_av(self) -> None:
        stream, container = self._stream, self._container
        demuxer = self.container_format = container.format.name
        if self._kind == "http" and self._is_remote_file():  # a video file on a web server, not a live stream
            self._remote = False
            if self._live_given is None:
                self.live = False
                with contextlib.suppress(Exception):  # decoded as fast as it can be, as a local file is
                    stream.thread_type = "AUTO"
        one_gif = demuxer == "gif" and (stream.frames or 0) <= 1
        self.still = demuxer.endswith("_pipe") or demuxer == "image2" or one_gif  # jpeg_pipe, png_pipe, ...
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate and 0 < float(rate) < 1000 else self._fps_given
        self.width = stream.codec_context.width or None
        self.height = stream.codec_context.height or None
        if self._remote:
            return
        tb = stream.time_base
        if stream.duration and tb:
            self.duration = float(stream.duration * tb)
        elif container.duration:
            self.duration = container.duration / 1_000_000
        if stream.frames and stream.frames > 0:
            self.frames = self._expected(int(stream.frames))

    def _is_remote_file(self) -> bool:
        """Whether an http(s) source is a video file (MP4, Matroska, WebM, AVI...: a demuxer that states the
        length) rather than a live stream (HLS, MJPEG, or a stream of no known length)."""
        stream, container = self._stream, self._container
        if any(name in _LIVE_DEMUXERS for name in container.format.name.split(",")):
            return False
        if stream.duration and stream.time_base and stream.duration > 0:
            return True
        return bool(container.duration and container.duration > 0)

    def _declared_duration(self) -> float | None:
        """The video stream's length as the container declares it (MP4/MOV, Matroska/WebM; AVI: its header's frame
        count at its frame rate, where the stream's duration is only what the file still holds), else None."""
        stream = self._stream
        if self._container.format.name == "avi":
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            return stream.frames / rate if stream.frames and rate > 0 else None
        if not any(name in self._container.format.name for name in ("mov", "mp4", "matroska", "webm")):
            return None
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
        match = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", tag or "")
        if match:
            return int(match.group(1)) * 3600 + int(match.group(2)) * 60 + float(match.group(3))
        return None

    def _expected(self, total: int) -> int:
        """Frames kept out of ``total`` after start, end and stride (frames at index / fps)."""
        fps = self.fps or 0
        first = math.ceil(self.start * fps - _EPS) if self.start and fps else 0
        last = min(total, math.ceil(self.end * fps - _EPS)) if self.end is not None and fps else total
        return math.ceil(max(0, last - first) / self.stride)

    # -- reading -------------------------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Frames decoded and waiting for the consumer (never more than ``queue``)."""
        return len(self._buffer)

    def read_in_lockstep(self) -> None:
        """Decode a frame only when the consumer asks for it, on one decoder thread, instead of ahead of it: on a
        CPU whose cores all run the model, decoding beside the forward pass slows both. Files and sequences only
        (a live source is read ahead so that stale frames can be dropped); call before iterating."""
        if self.live or self._thread is not None:
            return
        self._buffer.lockstep = True
        if self._stream is not None:
            with contextlib.suppress(Exception):  # a decoder already opened keeps its threads
                self._stream.thread_type = "SLICE"
                self._stream.codec_context.thread_count = 1

    def __iter__(self) -> Iterator[Frame]:
        if self._thread is not None or self._stop.is_set():
            raise CnnappsError(f"{self.name}: this source was already read; open it again to read it again")
        self._heartbeat = time.monotonic()  # the time spent since opening (loading a model) is no stall
        self._thread = threading.Thread(target=self._produce, name=f"video:{self.name}", daemon=True)
        self._thread.start()
        return self._consume()

    def _consume(self) -> Iterator[Frame]:
        try:
            while True:
                if self._buffer.lockstep and not len(self._buffer):
                    self._buffer.ask()
                item = self._buffer.get(0.25)
                while item is _NOTHING and self._buffer.lockstep and self._thread is not None:
                    if not self._thread.is_alive():
                        break
                    item = self._buffer.get(0.25)
                if item is _NOTHING:
                    late = time.monotonic() - self._heartbeat
                    if self.live and self._remote and late > self.timeout + _WATCHDOG_GRACE:
                        raise VideoError(self._stall_message(late), self.frames_read)
                    if self._thread is not None and self._thread.is_alive():
                        continue
                    item = self._buffer.get(0)  # the reader's last word may have come just now
                    if item is _NOTHING:
                        raise VideoError(f"{self.name}: the reader stopped after {self.frames_read} frames")
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def _stall_message(self, seconds: float) -> str:
        return f"{self.name}: stream stalled (no frame for {seconds:.3g} s) after {self.frames_read} frames"

    def _produce(self) -> None:
        """The reader thread: decode, and on a disconnect give up or reconnect."""
        try:
            while not self._stop.is_set():
                try:
                    if self._sequence is not None:
                        self._read_sequence()
                    else:
                        self._read_av()
                    break
                except _Disconnected as exc:
                    reason = str(exc)
                if not self.reconnect:
                    raise VideoError(f"{self.name}: {reason} after {self.frames_read} frames; --reconnect retries")
                if not self._reopen(reason):
                    return
            self._tell_skipped()
            self._buffer.put(_END, False, self._stop)
        except BaseException as exc:  # handed to the consumer, raised there
            if isinstance(exc, VideoError):
                exc.frames_read = self.frames_read
            with contextlib.suppress(Exception):
                self._tell_skipped()
            self._buffer.put(exc, False, self._stop)
        finally:
            self._close_container()

    def _tell_skipped(self) -> None:
        """Say how many damaged frames were skipped (``on_event``), when the reading ends."""
        if self.skipped:
            frames = "frame" if self.skipped == 1 else "frames"
            self.on_event(f"{self.name}: skipped {self.skipped} damaged {frames} ({self._damage})")

    def _reopen(self, reason: str) -> bool:
        """Wait and reconnect until it works (True), close() is called (False) or the tries run out (VideoError)."""
        while not self._stop.is_set():
            self._tries += 1
            if self.retries is not None and self._tries > self.retries:
                tries = "try" if self.retries == 1 else "tries"
                raise VideoError(
                    f"{self.name}: {reason} after {self.frames_read} frames; gave up after {self.retries} {tries}"
                )
            self.on_event(f"{self.name}: {reason} after {self.frames_read} frames; reconnecting (try {self._tries})")
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (self._tries - 1))
            self._heartbeat = time.monotonic() + delay + self.timeout  # the open below may take the timeout
            if self._stop.wait(delay):
                return False
            self._close_container()
            try:
                self._open_av()
            except VideoError as exc:
                reason = "reconnection failed (" + str(exc).removeprefix(f"{self.name}: ") + ")"
                continue
            self._heartbeat = time.monotonic()
            # times go on from the wall clock, after the last frame's
            self._time_offset = max(time.monotonic() - self._born, (self._last_time or 0.0) + 1 / (self.fps or 25))
            return True
        return False

    def _offer(self, time_s: float, convert: Callable[[], np.ndarray], size: tuple[int, int] | None = None) -> bool:
        """Pass one decoded frame (of ``size``, width and height, when known before ``convert``) through start, end
        and stride into the queue; False once past ``end``. A frame over the size limits ends the video."""
        index = self._next_index
        self._next_index += 1
        self._tries = 0  # frames flow: the next disconnect starts its count again
        self._decoded_time = time_s
        if self.start is not None and time_s < self.start - _EPS:
            return True
        if self.end is not None and time_s >= self.end - _EPS:
            return False
        if size is not None and all(size):
            problem = self._size_problem(*size, f"frame {index} ({size[0]}x{size[1]})", False)
            if problem:
                raise VideoError(f"{self.name}: {problem} after {self.frames_read} frames")
        keep = self._passed % self.stride == 0
        self._passed += 1
        self._last_time = time_s
        if not keep:
            return True
        rgb = np.ascontiguousarray(convert())
        self.frames_read += 1
        self.dropped += self._buffer.put(Frame(index, time_s, rgb), self.live, self._stop)
        return True

    def _read_sequence(self) -> None:
        from cnnapps.datasets.io import read_image
        from cnnapps.errors import ImageError

        assert self._sequence is not None
        prefix, width, suffix, first, count = self._sequence
        fps = self.fps or 25.0
        start = math.ceil(self.start * fps - _EPS) if self.start else 0
        self._next_index = start
        for index in range(start, count):
            self._buffer.wait_for_demand(self._stop)
            if self._stop.is_set():
                return
            path = _sequence_path(prefix, width, suffix, first + index)

            def load(path: str = path) -> np.ndarray:
                try:
                    return read_image(path, **self._image_limits())
                except ImageError as exc:
                    raise VideoError(f"{self.name}: {exc} after {self.frames_read} frames") from None

            if not self._offer(index / fps, load):
                return

    def _read_av(self) -> None:
        """Decode the open container to its end; raises _Disconnected for a remote source's end or failure."""
        import av

        stream = self._stream
        tb = stream.time_base
        first_pts: int | None = None
        seeked = False  # the next frame is the first after a seek: its index is to be found
        scan: tuple[np.ndarray, int | None] | None = None  # the frames before the start, when counted
        step: float | None = None  # the frames' even step, when the index says
        target = 0  # the start, in stream units
        if not self._remote:
            first_pts = stream.start_time or 0
            if self.start and tb:
                target = int(self.start / tb) + first_pts
                step = self._even_step()
                scan = None if step else self._scan(target)
                seeked = self._seek(scan[1] if scan is not None and scan[1] is not None else target)
        offset = self._time_offset
        last_packet = last_frame = time.monotonic()
        ended = False
        skipped_before_frame, self._lost = self.skipped, 0  # damaged frames before the last frame decoded

        def take(frame: Any) -> bool:
            nonlocal first_pts, seeked, last_frame, skipped_before_frame
            last_frame = time.monotonic()
            skipped_before_frame = self.skipped
            if frame.pts is not None and tb is not None:
                if first_pts is None:
                    first_pts = frame.pts
                t = float((frame.pts - first_pts) * tb) + offset
            elif self._remote:
                t = time.monotonic() - self._born
            else:
                t = self._next_index / (self.fps or 25.0)
            if self._remote and self._last_time is not None and t <= self._last_time:
                t = max(time.monotonic() - self._born, self._last_time + _EPS)  # timestamps went back: wall clock
            if seeked:
                self._next_index = self._index_after_seek(frame.pts, first_pts, t, step, target, scan)
                seeked, self._lost = False, 0
            elif self._lost:
                self._count_lost(t if frame.pts is not None else None)
            turns = round(frame.rotation / 90) % 4  # a phone's portrait video: stored sideways, shown upright
            size = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
            if turns % 2:  # the header says the stored size; the frames come turned
                self.width, self.height = size
            return self._offer(t, lambda: np.rot90(frame.to_ndarray(format="rgb24"), turns), size)

        try:
            for packet in self._container.demux(stream):
                self._buffer.wait_for_demand(self._stop)
                if self._stop.is_set():
                    return
                now = time.monotonic()
                self._heartbeat = last_packet = now
                for frame in self._decode(packet):
                    if not take(frame):
                        return
                if self.live and self._remote and time.monotonic() - last_frame > self.timeout:
                    raise _Disconnected(f"stream stalled (no frame for {self.timeout:g} s)")
            ended = True
        except (av.error.FFmpegError, OSError) as exc:
            waited = time.monotonic() - last_packet
            with contextlib.suppress(av.error.FFmpegError, OSError):  # frames still inside the decoder
                for frame in stream.codec_context.decode(None):
                    if not take(frame):
                        return
            if self._remote:
                if isinstance(exc, av.error.ExitError) or waited >= 0.9 * self.timeout:
                    raise _Disconnected(f"stream stalled (no frame for {self.timeout:g} s)") from None
                raise _Disconnected(f"disconnected ({_reason(exc)})") from None
            reason = _reason(exc)
            if self._network and (isinstance(exc, av.error.ExitError) or waited >= 0.9 * self.timeout):
                reason = f"no data for {self.timeout:g} s"
            raise VideoError(f"{self.name}: {reason} after {self.frames_read} frames") from None
        if ended and self._remote and not self._stop.is_set():
            raise _Disconnected("disconnected")
        if ended and self.skipped > skipped_before_frame:  # no frame after the damage: the file breaks there
            self.skipped = skipped_before_frame
            raise VideoError(f"{self.name}: {self._damage} after {self.frames_read} frames")
        if ended:  # the end of the data came before ``end``: was the file cut short?
            self._check_complete()

    def _decode(self, packet: Any) -> list[Any]:
        """The frames of one packet; a packet the decoder finds damaged gives none, and counts in ``skipped``."""
        import av

        try:
            return packet.decode()
        except av.error.InvalidDataError as exc:
            self.skipped += 1
            self._lost += 1
            self._damage = _reason(exc)
            return []

    def _count_lost(self, time_s: float | None) -> None:
        """Give the frames skipped so far their indices, those of the frame steps missing before the frame decoded
        at ``time_s`` (frames come out of the decoder in time order; None, no timestamp: the steps just before it),
        so that the frames after the damage keep theirs; the stride goes on counting them too."""
        fps = self.fps or 25.0
        before = self._decoded_time if self._decoded_time is not None else -1 / fps
        missing = self._lost if time_s is None else round((time_s - before) * fps) - 1
        missing = max(0, min(self._lost, missing))
        self._lost -= missing
        self._next_index += missing
        if self.start is None or before >= self.start - _EPS:
            self._passed += missing

    def _seek(self, position: int) -> bool:
        """Seek to the keyframe at or before ``position`` (stream units); False when the file is read from its
        start instead."""
        import av

        try:
            self._container.seek(position, stream=self._stream, backward=True, any_frame=False)
        except (av.error.FFmpegError, OSError):  # not seekable: decode from the start
            return False
        return True

    def _index_after_seek(
        self, pts: int | None, first_pts: int | None, seconds: float, step: float | None, target: int,
        scan: tuple[np.ndarray, int | None] | None,
    ) -> int:  # fmt: skip
        """The index of the first frame decoded after a seek (at ``pts``, ``seconds`` from the start): from the
        frame step of an index that lists every frame at even intervals, else the frames counted before it (the
        scan up to ``target``, or one up to the frame); from the frame rate if neither can tell."""
        if pts is not None:
            if step:
                return round((pts - (first_pts or 0)) / step)
            if scan is None or pts > target:
                scan = self._scan(pts)
            if scan is not None:
                return int(np.searchsorted(scan[0], pts))
        return round(seconds * (self.fps or 25.0))

    def _even_step(self) -> float | None:
        """The time between frames (stream units) when the container's index lists every frame (MP4, MOV,
        AVI) at even intervals, to within a unit of rounding; None for variable frame rates or no full index."""
        stream = self._stream
        try:
            entries = stream.index_entries
            count = len(entries)
            if count < 2 or count != stream.frames:
                return None
            stamps = np.fromiter((entry.timestamp for entry in entries), np.int64, count)
        except Exception:  # an older PyAV without index_entries
            return None
        gaps = np.diff(stamps)
        if gaps.min() <= 0 or gaps.max() - gaps.min() > 1:
            return None
        return float(stamps[-1] - stamps[0]) / (count - 1)

    def _scan(self, until: int) -> tuple[np.ndarray, int | None] | None:
        """The file's packets up to ``until`` (stream units), demuxed from its start without decoding on a second
        handle on the source: the sorted pts of the frames before it (a frame a packet), and where to seek to
        start decoding at the last keyframe at or before it (its dts, else its pts; None if none is marked).
        None when the source cannot be opened again."""
        import av

        target, fmt, options = self._target()
        timeout = (self.timeout, self.timeout) if self._network else None
        stamps: list[int] = []
        keyframe, later_keyframes = None, 0
        try:
            with av.open(target, format=fmt, options=options, timeout=timeout) as container:
                for packet in container.demux(container.streams.video[0]):  # the stream read, as _open_av chose it
                    if self._stop.is_set():
                        return None
                    if packet.dts is not None and packet.dts > until:
                        break  # this packet and the later ones come after until
                    if packet.pts is None or not packet.size:
                        continue
                    if packet.is_keyframe and packet.pts <= until:
                        keyframe = packet.dts if packet.dts is not None else packet.pts
                    elif packet.is_keyframe:
                        later_keyframes += 1  # frames before until may still follow it (an open group)
                        if later_keyframes == 2:
                            break
                    if packet.pts < until:
                        stamps.append(packet.pts)
        except (av.error.FFmpegError, OSError, VideoError, IndexError):
            return None
        return np.sort(np.array(stamps, np.int64)), keyframe

    def _check_complete(self) -> None:
        """A file that ends well before its declared length was cut short: say so after its frames."""
        declared = self._declared_duration()
        if declared is None or declared <= 0:
            return
        step = 1 / (self.fps or 25.0)
        reached = (self._decoded_time + step) if self._decoded_time is not None else 0.0
        if reached < declared - max(2.5 * step, 0.1):
            raise VideoError(
                f"{self.name}: the video stops at {reached:.2f} s of {declared:.2f} s (truncated or damaged file) "
                f"after {self.frames_read} frames"
            )

    # -- closing -------------------------------------------------------------------------------------------

    def _close_container(self) -> None:
        with self._lock:
            container, self._container = self._container, None
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()

    def close(self) -> None:
        """Stop the reader and close the source; frames not taken yet are discarded. Never hangs: a reader
        stuck in a network read is left to FFmpeg's timeout and closes the source itself."""
        self._stop.set()
        self._buffer.clear()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
            if thread.is_alive():
                return  # it closes the container when FFmpeg's read timeout frees it
        self._close_container()

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def info(self) -> dict[str, Any]:
        """name, live, fps, width, height, frames and duration, as :func:`probe` returns them."""
        return {
            "name": self.name,
            "live": self.live,
            "fps": self.fps,
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
            "duration": self.duration,
        }


def _sequence_path(prefix: str, width: int, suffix: str, number: int) -> str:
    return f"{prefix}{number:0{width}d}{suffix}" if width else f"{prefix}{number}{suffix}"


def probe(spec: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """A source's name, live, fps, width, height, frames (None when the container does not say) and
    duration (seconds, None for live sources), read from its headers; of a file, also from its first frame (width
    and height as the frames come: a video stored sideways comes turned)."""
    with VideoSource(spec, timeout=timeout) as source:
        if not source.live:
            next(iter(source), None)
        return source.info()


# -- writing -----------------------------------------------------------------------------------------------

#: Output suffixes: (FFmpeg muxer, codecs to try in order).
_WRITE_FORMATS = {
    ".mp4": ("mp4", ("libx264", "mpeg4")),
    ".m4v": ("mp4", ("libx264", "mpeg4")),
    ".mov": ("mov", ("libx264", "mpeg4")),
    ".mkv": ("matroska", ("libx264", "mpeg4")),
    ".webm": ("webm", ("libvpx-vp9", "libvpx")),
    ".avi": ("avi", ("mpeg4",)),
}


#: a gap between frames written at given times that is always kept, and the furthest a time may go back before the
#: times after it count from the last frame (:meth:`VideoWriter._next_pts`)
MAX_GAP_S, MAX_BACK_S = 60.0, 1.0
#: a longer gap is an outage when it is over this many times the source's usual gap (the median of the last
#: ``CADENCE_GAPS`` gaps kept): a steady time-lapse keeps its timing, a stream back after an hour does not
OUTAGE_RATIO, CADENCE_GAPS = 10, 16
#: the longest gap a container takes, in time-base units: AVI fills a gap with up to 60000 empty frames, MP4 and MOV
#: keep a frame's duration in 31 bits (6.6 hours at 1/90000 s)
_MAX_GAP_TICKS = {"avi": 60_000}
_MAX_GAP_TICKS_DEFAULT = 2**31 - 1

#: Time bases (1/N s) tried, finest first, for frames written at given times, by muxer: Matroska and WebM count
#: milliseconds; an encoder that takes none of them (MPEG-4 part 2: 1/65535 at the finest), and AVI (a tick a
#: frame, gaps filled with empty frames), put the frames in the writer's frame slots (1/fps).
_TIMED_BASES = {"mp4": (90000, 1000), "mov": (90000, 1000), "matroska": (1000,), "webm": (1000,), "avi": ()}


def _encoder(names: tuple[str, ...]) -> str | None:
    import av

    for name in names:
        try:
            return av.codec.Codec(name, "w").name  # "h264" resolves to libx264 where it is there
        except Exception:  # not in this FFmpeg build
            continue
    return None


def _rate(fps: float) -> Fraction:
    """fps as a fraction, with NTSC rates (29.97, 59.94, 23.976) exact, and a time-lapse's (a frame every so many
    seconds) from its interval."""
    for base in (24, 30, 48, 60, 120):
        if abs(fps - base * 1000 / 1001) < 1e-3:
            return Fraction(base * 1000, 1001)
    if fps < 1:
        return 1 / Fraction(1 / fps).limit_denominator(1000)
    return Fraction(fps).limit_denominator(1000)


class VideoWriter:
    """Write RGB frames to a video: H.264 (libx264, yuv420p, crf 20, preset veryfast; mpeg4 where libx264
    is missing) in .mp4, .m4v, .mov and .mkv, VP9 in .webm, MPEG-4 part 2 in .avi; no audio. ``codec`` names
    another FFmpeg encoder. The size is the first frame's, padded to even sides (yuv420p needs them); later
    frames of another size are resized to it. (H, W) grey and (H, W, 4) RGBA frames are accepted.

    Frames follow each other at ``fps``, or at the times given to :meth:`write` (seconds, as
    :attr:`Frame.time` gives them), so that a copy of every fifth frame, or of a variable-frame-rate video,
    plays at the source's pace: the first frame written is at 0 s, each later one at its time's distance from
    the first's, to 1/90000 s in MP4 and MOV, 1 ms in Matroska and WebM, the nearest frame slot (1/fps) in AVI.
    The last frame lasts as long as the gap before it, or until :attr:`end` (the source's end) when that is sooner.
    Times that start again, and a jump of over a minute and of many times the source's usual gap (an outage), go on
    a frame after the last; a steady time-lapse keeps its timing.

    An existing ``path`` is refused at once (:class:`~cnnapps.files.OutputExistsError`). Frames go to a hidden
    temporary file in the target's folder, renamed to ``path`` by :meth:`close`; closing after an error (and
    leaving a ``with`` block on an exception, a Ctrl-C in :meth:`write` included) keeps the frames written so far.
    Nothing is written without a frame. MP4 and MOV files get their index at the front (faststart), so they play
    while downloading.
    """

    def __init__(self, path: str | os.PathLike, fps: float, *, codec: str | None = None) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in _WRITE_FORMATS:
            known = ", ".join(_WRITE_FORMATS)
            raise CnnappsError(f"{self.path}: unknown video suffix {suffix or '(none)'}; use {known}")
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise CnnappsError(f"{self.path}: frame rate must be > 0, not {fps!r}")
        if os.path.lexists(self.path):
            raise OutputExistsError(self.path)
        self.fps = float(fps)
        self._rate = _rate(self.fps)
        self._format, codecs = _WRITE_FORMATS[suffix]
        self._codecs = (codec,) if codec else codecs
        self.codec: str | None = None
        self.width: int | None = None
        self.height: int | None = None
        self.frames_written = 0
        #: where the source ends (seconds, as the frames' times), when known: the last frame lasts until it when that
        #: is sooner than the gap before it (a copy of every fourth frame lasts as long as its source)
        self.end: float | None = None
        self._source_size: tuple[int, int] | None = None  # (w, h) of the first frame
        self._container: Any = None
        self._stream: Any = None
        self._tmp: Path | None = None
        self._closed = False
        self._time_base = 1 / self._rate  # of the frames' pts: finer when the first frame comes with a time
        self._ticks = 1  # time-base units between frames at fps
        self._origin: float | None = None  # the given time that is 0 s in the file
        self._last_pts: int | None = None
        self._durations: dict[int, int] = {}  # pts -> the frame's duration (to the next frame), for its packet
        self._gap = 1  # the last frame's duration, should no frame follow it: the gap before it
        self._cadence: collections.deque[int] = collections.deque(maxlen=CADENCE_GAPS)  # recent gaps kept
        self._cut: int | None = None  # the last long gap taken for an outage before any gap was kept
        self._pending: collections.deque[Any] = collections.deque()  # packets out of the encoder, not yet muxed

    def _frame(self, rgb: np.ndarray) -> np.ndarray:
        a = np.asarray(rgb)
        if a.ndim == 3 and a.shape[2] == 4:
            a = a[..., :3]
        elif a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or 0 in a.shape:
            raise CnnappsError(f"{self.path}: frames must be uint8 RGB arrays (H, W, 3), not {a.dtype} {a.shape}")
        h, w = a.shape[:2]
        if self._source_size is None:
            self._source_size = (w, h)
            self.width, self.height = w + w % 2, h + h % 2
        if (w, h) != self._source_size:
            import cv2

            a = cv2.resize(a, self._source_size, interpolation=cv2.INTER_AREA)
        sw, sh = self._source_size
        if (sw, sh) != (self.width, self.height):
            a = np.pad(a, ((0, self.height - sh), (0, self.width - sw), (0, 0)), mode="edge")
        return np.ascontiguousarray(a)

    def _open(self, timed: bool) -> None:
        import av

        codec = _encoder(self._codecs)
        if codec is None:
            raise CnnappsError(f"{self.path}: no encoder for it in this FFmpeg ({', '.join(self._codecs)} missing)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        self._tmp = Path(name)
        container_options = {"movflags": "+faststart"} if self._format in ("mp4", "mov") else {}
        try:
            container = av.open(name, "w", format=self._format, container_options=container_options)
            try:
                stream = container.add_stream(codec, rate=self._rate)
                stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
                if codec == "libx264":  # frames at given times: no B-frames (MP4 sums their decoding times)
                    stream.options = {"crf": "20", "preset": "veryfast", **({"bf": "0"} if timed else {})}
                elif codec.startswith("libvpx"):
                    stream.options = {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8"}
                else:
                    stream.bit_rate = max(400_000, int(self.width * self.height * self.fps * 0.25))
                if timed:
                    self._set_time_base(stream, _TIMED_BASES.get(self._format, ()))
            except BaseException:
                container.close()
                raise
        except BaseException as exc:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
            if isinstance(exc, Exception) and not isinstance(exc, CnnappsError):
                raise CnnappsError(f"{self.path}: cannot write a video ({_reason(exc)})") from None
            raise
        self._container, self._stream, self.codec = container, stream, codec

    def _set_time_base(self, stream: Any, denominators: tuple[int, ...]) -> None:
        """Open the encoder at the finest of these time bases it takes; else the frames keep 1/fps."""
        import av

        for denominator in denominators:
            base = Fraction(1, denominator)
            stream.codec_context.time_base = stream.time_base = base
            try:
                stream.codec_context.open()
            except av.error.FFmpegError:  # not this encoder's: try the next
                continue
            self._time_base = base
            self._ticks = max(1, round(1 / (self._rate * base)))
            return
        if denominators:
            stream.codec_context.time_base = stream.time_base = 1 / self._rate

    def _next_pts(self, time: float | None) -> int:
        """The pts of the next frame: at ``time`` from the origin, or a frame at fps after the last one. A time
        that goes back more than ``MAX_BACK_S`` (timestamps starting again: joined recordings, a camera's restart)
        or jumps ahead by an outage (:meth:`_outage`: a stream back after an hour) puts the frame a frame at fps
        after the last one, and later times count from there: the frames after it keep their pace, and no gap is
        more than the containers take. A smaller step back, or a repeat, is moved a tick after the last frame."""
        last = self._last_pts
        after = 0 if last is None else last + self._ticks
        if time is None:
            pts = after
        else:
            if self._origin is None:
                self._origin = time - float(after * self._time_base)
            pts = round((time - self._origin) / self._time_base)
            if last is not None and ((pts - last) * float(self._time_base) < -MAX_BACK_S or self._outage(pts - last)):
                pts = after
                self._origin = time - float(pts * self._time_base)
            elif last is not None and pts > last:
                self._cadence.append(pts - last)
        if last is not None and pts <= last:
            pts = last + 1
        if last is not None:
            self._durations[last] = pts - last
        self._gap = self._ticks if last is None else pts - last
        self._last_pts = pts
        return pts

    def _outage(self, ticks: int) -> bool:
        """Whether a gap of ``ticks`` ahead is an outage rather than the source's pace: more than the container takes,
        or over ``MAX_GAP_S`` and over ``OUTAGE_RATIO`` times the usual gap of the frames before it. Before any gap
        is known, the usual gap is a frame at fps, and a long gap met twice running is the pace (a time-lapse whose
        header states another rate keeps its timing from its second gap on; a stream that stalls after its first
        frame is not kept frozen for the stall)."""
        if ticks > _MAX_GAP_TICKS.get(self._format, _MAX_GAP_TICKS_DEFAULT):
            return True
        if ticks * float(self._time_base) <= MAX_GAP_S:
            return False
        if self._cadence:
            return ticks > OUTAGE_RATIO * float(np.median(self._cadence))
        cut, self._cut = self._cut, ticks
        if cut is not None and cut / 2 <= ticks <= 2 * cut:
            return False
        return ticks > OUTAGE_RATIO * self._ticks

    def _mux_pending(self, container: Any, final: bool = False) -> None:
        """Put the packets out of the encoder into the file, each with its frame's duration; a packet whose
        frame has no frame after it yet waits for the next frame (or, ``final``, lasts the gap before it)."""
        if final and self._last_pts is not None:
            self._durations.setdefault(self._last_pts, self._gap)
        while self._pending:
            packet = self._pending[0]
            duration = self._durations.get(packet.pts) if packet.pts is not None else None
            if duration is None and packet.pts == self._last_pts and not final:
                return
            self._pending.popleft()
            if duration is not None:
                packet.duration = duration
                del self._durations[packet.pts]
            container.mux(packet)

    def write(self, rgb: np.ndarray, time: float | None = None) -> None:
        """Append one RGB frame; ``time`` (seconds, the frame's time in its source) places it in the video: a time
        not after the last frame's puts it just after it, None a frame at ``fps`` after it. The first frame's
        time (given or not) decides the time base: pass times from the first frame on."""
        import av

        if self._closed:
            raise CnnappsError(f"{self.path}: the video writer is closed")
        if time is not None:
            try:
                time = float(time)
            except (TypeError, ValueError):
                time = math.nan
            if not math.isfinite(time):
                raise CnnappsError(f"{self.path}: a frame's time must be a finite number of seconds")
        frame = self._frame(rgb)
        if self._container is None:
            self._open(timed=time is not None)
        picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
        picture.pts = self._next_pts(time)  # taken before encoding: a write stopped part way leaves no pts twice
        picture.time_base = self._time_base
        written = self.frames_written
        try:
            self._pending.extend(self._stream.encode(picture))
            self.frames_written = written + 1
            self._mux_pending(self._container)
        except (av.error.FFmpegError, OSError) as exc:
            raise CnnappsError(f"{self.path}: cannot write ({_reason(exc)}) after {written} frames") from None

    def close(self) -> None:
        """Finish the file and move it into place (keeping every frame written); nothing without frames."""
        if self._closed:
            return
        self._closed = True
        if self._container is None or self._tmp is None:
            return
        end = self.end
        if end is not None and math.isfinite(end) and self._origin is not None and self._last_pts is not None:
            ticks = round((end - self._origin) / self._time_base) - self._last_pts
            if 0 < ticks < self._gap:
                self._gap = ticks
        import av

        tmp, container = self._tmp, self._container
        self._container = None
        try:
            try:
                self._pending.extend(self._stream.encode(None))  # after what a write stopped part way left
                self._mux_pending(container, final=True)
            finally:
                self._pending.clear()
                self._durations.clear()
                container.close()
            os.chmod(tmp, 0o644 & ~current_umask())
            publish(tmp, self.path)
        except (av.error.FFmpegError, OSError) as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OutputExistsError):
                raise
            raise CnnappsError(f"{self.path}: cannot finish the video ({_reason(exc)})") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
