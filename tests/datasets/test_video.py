"""Video in and out: clips written and read back, damaged files, image sequences, live streams from a local server."""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from cnnapps.datasets.video import Frame, VideoError, VideoSource, VideoWriter, is_video_source, probe
from cnnapps.errors import CnnappsError
from cnnapps.files import OutputExistsError

FPS = 20


def picture(i: int, width: int = 96, height: int = 64) -> np.ndarray:
    """Frame ``i`` of the test clip: a grey gradient with a red square moving right."""
    img = np.empty((height, width, 3), np.uint8)
    img[:] = np.linspace(40, 200, width, dtype=np.uint8)[None, :, None]
    x = (3 * i) % max(1, width - 20)
    img[10:30, x : x + 20] = (230, 40, 40)
    return img


def write_clip(path: Path, n: int = 40, width: int = 96, height: int = 64) -> Path:
    with VideoWriter(path, FPS) as writer:
        for i in range(n):
            writer.write(picture(i, width, height))
    assert writer.frames_written == n
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4")


def read_all(source: VideoSource) -> list[Frame]:
    with source:
        return list(source)


def test_written_clip_reads_back(clip: Path) -> None:
    source = VideoSource(str(clip))
    assert (source.width, source.height, source.fps, source.frames, source.live) == (96, 64, 20.0, 40, False)
    frames = read_all(source)
    assert [f.index for f in frames] == list(range(40))
    assert all(abs(f.time - f.index / FPS) < 1e-3 for f in frames)
    for f in frames:
        assert f.rgb.shape == (64, 96, 3) and f.rgb.dtype == np.uint8 and f.rgb.flags.c_contiguous
        assert np.abs(f.rgb.astype(int) - picture(f.index)).mean() < 8
    assert source.frames_read == 40 and source.dropped == 0


def test_stride_start_end(clip: Path) -> None:
    source = VideoSource(str(clip), stride=3)
    assert source.frames == 14
    assert [f.index for f in read_all(source)] == list(range(0, 40, 3))
    source = VideoSource(str(clip), start=0.5, end=1.5, stride=2)
    frames = read_all(source)
    assert [f.index for f in frames] == list(range(10, 30, 2)) and source.frames == len(frames)
    assert abs(frames[0].time - 0.5) < 1e-3
    assert np.abs(frames[0].rgb.astype(int) - picture(10)).mean() < 8


def test_probe(clip: Path) -> None:
    info = probe(str(clip))
    assert info == {"name": str(clip), "live": False, "fps": 20.0, "width": 96, "height": 64, "frames": 40,
                    "duration": pytest.approx(2.0, abs=0.06)}  # fmt: skip


@pytest.mark.parametrize("suffix", [".mkv", ".webm", ".avi", ".mov"])
def test_other_containers(tmp_path: Path, suffix: str) -> None:
    frames = read_all(VideoSource(str(write_clip(tmp_path / f"c{suffix}", n=12))))
    assert len(frames) == 12
    assert np.abs(frames[5].rgb.astype(int) - picture(5)).mean() < 8


def test_writer_pads_odd_sizes_and_resizes_later_frames(tmp_path: Path) -> None:
    path = tmp_path / "odd.mp4"
    with VideoWriter(path, FPS) as writer:
        writer.write(picture(0, 95, 63))
        writer.write(cv2.resize(picture(1, 95, 63), (190, 126), interpolation=cv2.INTER_NEAREST))
    assert (writer.width, writer.height) == (96, 64)
    frames = read_all(VideoSource(str(path)))
    assert len(frames) == 2 and frames[0].rgb.shape == (64, 96, 3)
    for i, frame in enumerate(frames):
        assert np.abs(frame.rgb[:63, :95].astype(int) - picture(i, 95, 63)).mean() < 8


def test_writer_never_replaces_and_knows_its_suffixes(tmp_path: Path, clip: Path) -> None:
    with pytest.raises(OutputExistsError):
        VideoWriter(clip, FPS)
    with pytest.raises(CnnappsError, match=r"\.gif: unknown video suffix .*\.mp4"):
        VideoWriter(tmp_path / "a.gif", FPS)
    with VideoWriter(tmp_path / "none.mp4", FPS):
        pass
    assert not os.listdir(tmp_path)  # no frame, no file, no temporary left


def test_writer_keeps_frames_after_an_error(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "kept.mp4"
    with pytest.raises(RuntimeError), VideoWriter(path, FPS) as writer:
        for i in range(5):
            writer.write(picture(i))
        assert not path.exists() and len(os.listdir(path.parent)) == 1  # a hidden temporary file meanwhile
        assert os.listdir(path.parent)[0].startswith(".")
        raise RuntimeError("model crashed")
    assert os.listdir(path.parent) == ["kept.mp4"]
    assert len(read_all(VideoSource(str(path)))) == 5
    with pytest.raises(CnnappsError, match="uint8 RGB"):
        VideoWriter(tmp_path / "f.mp4", FPS).write(np.zeros((8, 8, 3), np.float32))


def test_a_write_stopped_part_way_leaves_a_video_that_closes_with_every_frame(tmp_path: Path) -> None:
    """A Ctrl-C landing in write once the frame reached the encoder: the next frames and close() go on."""

    class Interrupted:
        def __init__(self, stream: object) -> None:
            self.stream = stream

        def __getattr__(self, name: str) -> object:
            return getattr(self.stream, name)

        def encode(self, frame: object) -> Iterator[object]:
            yield from self.stream.encode(frame)
            raise KeyboardInterrupt  # the signal handler runs here

    path = tmp_path / "stopped.mp4"
    writer = VideoWriter(path, FPS)
    for i in range(12):
        if i == 6:
            writer._stream = Interrupted(writer._stream)
            with pytest.raises(KeyboardInterrupt):
                writer.write(picture(i))
            writer._stream = writer._stream.stream
        else:
            writer.write(picture(i))
    writer.close()
    frames = read_all(VideoSource(str(path)))
    assert [f.index for f in frames] == list(range(12)) and os.listdir(tmp_path) == ["stopped.mp4"]
    assert np.abs(frames[6].rgb.astype(int) - picture(6)).mean() < 8


def written_times(path: Path) -> tuple[list[float], float]:
    """The frames' times (seconds) and the stream's length, as PyAV reads them back."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = [float(f.pts * f.time_base) for f in container.decode(stream)]
        length = float(stream.duration * stream.time_base) if stream.duration else container.duration / 1e6
    return times, length


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".avi"])
def test_frames_written_at_their_times_play_at_the_source_pace(tmp_path: Path, suffix: str) -> None:
    """Every fifth frame of a 10 fps clip from 60 s: 0.5 s apart from 0 s, the last lasting 0.5 s too."""
    path = tmp_path / f"strided{suffix}"
    with VideoWriter(path, 10) as writer:
        for i in range(12):
            writer.write(picture(i), time=60 + i * 0.5)
    times, length = written_times(path)
    assert times == pytest.approx([i * 0.5 for i in range(12)], abs=1e-6) and length == pytest.approx(6.0, abs=1e-3)
    assert writer.frames_written == 12


def test_frame_times_keep_uneven_gaps_and_go_forward(tmp_path: Path) -> None:
    path = tmp_path / "vfr.mp4"
    with VideoWriter(path, 10) as writer:
        for i, t in enumerate([0.0, 0.1, 1.3, 1.3, 1.2, None, 3.5, 3.6]):  # a repeat, a step back, no time
            writer.write(picture(i), time=t)
        with pytest.raises(CnnappsError, match="a frame's time must be a finite number of seconds"):
            writer.write(picture(8), time=float("nan"))
    times, length = written_times(path)
    assert times == pytest.approx([0.0, 0.1, 1.3, 1.3, 1.3, 1.4, 3.5, 3.6], abs=1e-4)
    assert times == sorted(set(times))  # the repeat and the step back just after the frame before them
    assert length == pytest.approx(3.7, abs=1e-3)
    untimed = tmp_path / "untimed.mp4"
    with VideoWriter(untimed, 10) as writer:  # no time: evenly spaced at fps, as before
        for i in range(3):
            writer.write(picture(i))
    assert written_times(untimed) == (pytest.approx([0.0, 0.1, 0.2]), pytest.approx(0.3, abs=1e-3))


def test_times_that_start_again_or_jump_an_hour_keep_the_pace_after_them(tmp_path: Path) -> None:
    for suffix in (".mp4", ".avi"):
        path = tmp_path / f"joined{suffix}"
        joined = [0.0, 0.1, 2.0, 0.0, 0.1, 2.0, 3602.0, 3602.1]  # two recordings joined, then an outage of an hour
        with VideoWriter(path, 10) as writer:
            for i, t in enumerate(joined):
                writer.write(picture(i), time=t)
        times, length = written_times(path)
        assert times == pytest.approx([0.0, 0.1, 2.0, 2.1, 2.2, 4.1, 4.2, 4.3], abs=2e-3), suffix
        assert length == pytest.approx(4.4, abs=2e-3), suffix


def timed_clip(path: Path, times_s: list[float], rate: float | Fraction = 25) -> Path:
    """An H.264 clip whose header says ``rate`` fps, frames at ``times_s`` (to the millisecond)."""
    import av

    base = Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.codec_context.time_base = stream.time_base = base
        for i, t in enumerate(times_s):
            frame = av.VideoFrame.from_ndarray(picture(i), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".avi"])
def test_a_time_lapse_copy_keeps_its_timing_and_still_skips_an_outage(tmp_path: Path, suffix: str) -> None:
    """A camera shooting a frame every 2 minutes (a Matroska file whose header says 25 fps), off for five hours,
    then on again: the copy keeps the 2-minute gaps from the second on (the first, 3,000 frames at the stated rate,
    could as well be a stall after the first frame), and the five hours go on a frame (at 25 fps) after the last."""
    lapse = [120.0 * i for i in range(6)]
    times_s = [*lapse, 600 + 5 * 3600, 600 + 5 * 3600 + 120]
    source = VideoSource(str(timed_clip(tmp_path / "lapse.mkv", times_s)))
    frames = read_all(source)
    assert [f.time for f in frames] == pytest.approx(times_s)
    path = tmp_path / f"copy{suffix}"
    with VideoWriter(path, source.fps) as writer:
        for frame in frames:
            writer.write(frame.rgb, time=frame.time)
    times, length = written_times(path)
    kept = [0.0, *(t - 120 + 0.04 for t in lapse[1:])]
    assert times == pytest.approx([*kept, 480.08, 600.08], abs=2e-3)
    assert length == pytest.approx(720.08, abs=2e-3)


def test_a_stream_that_stalls_after_its_first_frame_is_not_kept_frozen(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "stall.mp4", 25) as writer:
        for t in (0.0, 3600.0, 3600.04, 3600.08):
            writer.write(picture(int(t)), time=t)
    times, _ = written_times(tmp_path / "stall.mp4")
    assert times == pytest.approx([0.0, 0.04, 0.08, 0.12], abs=2e-3)


def test_an_hourly_time_lapse_is_copied_at_its_own_rate(tmp_path: Path) -> None:
    """An MP4 whose frames are an hour apart states a rate of a frame an hour: written at that rate, or at the
    frames' times, each frame lasts its hour."""
    source = VideoSource(str(timed_clip(tmp_path / "hourly.mp4", [3600.0 * i for i in range(4)], Fraction(1, 3600))))
    frames = read_all(source)
    assert source.fps == pytest.approx(1 / 3600, rel=0.01)
    for name, timed in (("timed.mp4", True), ("untimed.mkv", False)):
        with VideoWriter(tmp_path / name, source.fps) as writer:
            for frame in frames:
                writer.write(frame.rgb, time=frame.time if timed else None)
        times, _ = written_times(tmp_path / name)
        assert times == pytest.approx([0.0, 3600.0, 7200.0, 10800.0], abs=2), name


def test_frames_and_lines_are_kept_beside_a_name_taken_while_they_were_written(tmp_path: Path) -> None:
    from cnnapps.apps.common.video import _LineFile

    writer, lines = VideoWriter(tmp_path / "out.mp4", FPS), _LineFile(tmp_path / "out.txt")
    for i in range(3):
        writer.write(picture(i))
    lines.write(["1,1,10,10,20,20,1,-1,-1,-1"])
    for name in ("out.mp4", "out.txt"):
        (tmp_path / name).write_text("theirs")  # another program takes the names meanwhile
    with pytest.raises(OutputExistsError, match=r"out\.mp4: another file took .* kept in .*out-1\.mp4$"):
        writer.close()
    with pytest.raises(OutputExistsError, match=r"kept in .*out-1\.txt$"):
        lines.close()
    assert (tmp_path / "out.mp4").read_text() == "theirs" == (tmp_path / "out.txt").read_text()
    assert len(read_all(VideoSource(str(tmp_path / "out-1.mp4")))) == 3
    assert (tmp_path / "out-1.txt").read_text() == "1,1,10,10,20,20,1,-1,-1,-1\n"
    assert sorted(os.listdir(tmp_path)) == ["out-1.mp4", "out-1.txt", "out.mp4", "out.txt"]


def test_unopenable_sources(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video\n" * 100)
    cases = {
        str(tmp_path / "missing.mp4"): "no such file",
        str(tmp_path / "empty.mp4"): "file is empty",
        str(tmp_path / "text.mp4"): "not a readable video",
        "webcam:9": "no such camera (/dev/video9)" if os.name == "posix" and os.uname().sysname == "Linux" else "",
        str(tmp_path / "seq_%04d.png"): "no file matches",
    }
    for spec, reason in cases.items():
        with pytest.raises(VideoError) as caught:
            VideoSource(spec)
        message = str(caught.value)
        assert message.startswith(f"{spec}: ") and reason in message and "\n" not in message


def test_bad_options_are_refused(clip: Path) -> None:
    with pytest.raises(CnnappsError, match="stride"):
        VideoSource(str(clip), stride=0)
    with pytest.raises(CnnappsError, match="end must be after start"):
        VideoSource(str(clip), start=2, end=1)


# --- frame-size limits ---------------------------------------------------------------------------------------------


def growing_clip(path: Path) -> Path:
    """MPEG-4 in MPEG-TS: three 64 x 48 frames, then three 128 x 96 ones (the header says 64 x 48)."""
    import av

    with path.open("wb") as out:
        for width, height in ((64, 48), (128, 96)):
            with av.open(out, "w", format="mpegts") as container:
                stream = container.add_stream("mpeg4", rate=FPS)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                for i in range(3):
                    for packet in stream.encode(av.VideoFrame.from_ndarray(picture(i, width, height), "rgb24")):
                        container.mux(packet)
                for packet in stream.encode(None):
                    container.mux(packet)
    return path


def test_frames_over_the_size_limits_are_refused_from_the_header(clip: Path, tmp_path: Path, monkeypatch) -> None:
    """A 96 x 64 clip: refused before a frame is decoded, one line naming the clip and the limit."""
    decoded = []
    monkeypatch.setattr(VideoSource, "__iter__", lambda source: decoded.append(source) or iter(()))
    with pytest.raises(VideoError) as caught:
        VideoSource(str(clip), max_pixels=96 * 64 - 1)
    assert str(caught.value) == f"{clip}: 96x64 frames have 6,144 pixels, over the limit of 6,143 a frame may have"
    with pytest.raises(VideoError) as caught:
        VideoSource(str(clip), max_aspect=1.4)
    assert str(caught.value) == f"{clip}: 96x64 frames are more elongated than the limit of 1.4:1 a frame may have"
    assert not decoded
    with VideoSource(str(clip), max_pixels=96 * 64, max_aspect=1.5) as source:  # at the limits: read
        assert (source.width, source.height, source.still) == (96, 64, False) and "mp4" in source.container_format
    with pytest.raises(CnnappsError, match="max_pixels must be a whole number >= 1"):
        VideoSource(str(clip), max_pixels=0)
    cv2.imwrite(str(tmp_path / "00001.png"), picture(1))
    with pytest.raises(VideoError, match=r"first image .*96x64 image has 6,144 pixels, over the limit of 6,143"):
        VideoSource(str(tmp_path / "%05d.png"), max_pixels=96 * 64 - 1)  # an image sequence: its first image's header


def test_frames_growing_past_the_size_limit_end_the_video_with_one_error(tmp_path: Path) -> None:
    path = growing_clip(tmp_path / "grows.ts")
    assert [f.rgb.shape[:2] for f in read_all(VideoSource(str(path)))] == [(48, 64)] * 3 + [(96, 128)] * 3  # no limit
    source = VideoSource(str(path), max_pixels=64 * 48)
    assert (source.width, source.height) == (64, 48)
    got = []
    with pytest.raises(VideoError) as caught:
        for frame in source:
            got.append(frame)
    assert [f.index for f in got] == [0, 1, 2] and caught.value.frames_read == 3
    assert str(caught.value) == (f"{path}: frame 3 (128x96) has 12,288 pixels, over the limit of 3,072 a frame may "
                                 "have after 3 frames")  # fmt: skip


def test_still_pictures_are_told_from_videos(tmp_path: Path, clip: Path) -> None:
    png = tmp_path / "still"
    png.write_bytes(cv2.imencode(".png", picture(0))[1].tobytes())
    with VideoSource(str(png)) as source:
        assert (source.still, source.container_format) == (True, "png_pipe")
    with VideoSource(str(clip)) as source:
        assert not source.still


def test_truncated_files(tmp_path: Path) -> None:
    """A Matroska or faststart MP4 file cut in half yields its first frames, then a VideoError."""
    for suffix in (".mkv", ".mp4"):
        data = write_clip(tmp_path / f"full{suffix}", n=120).read_bytes()
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(data[: len(data) // 2])
        source = VideoSource(str(cut))
        got = []
        with pytest.raises(VideoError, match=r"truncated or damaged file\) after \d+ frames") as caught:
            for frame in source:
                got.append(frame)
        assert got and caught.value.frames_read == len(got) > 0
        assert str(caught.value).startswith(f"{cut}: the video stops at")


def test_a_cut_avi_says_so_by_its_headers_frame_count(tmp_path: Path) -> None:
    """An AVI's stream duration is what the file still holds: its header's frame count tells a cut file (cut between
    two frames three quarters in, or the header alone) from a whole one, which reads to its end with no error."""
    frames = [picture(i) for i in range(40)]
    full = tmp_path / "full.avi"
    writer = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (96, 64))
    for rgb in frames:
        writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))
    writer.release()
    assert [f.index for f in read_all(VideoSource(str(full)))] == list(range(40))
    data = full.read_bytes()
    for name, size in (("cut.avi", data.rfind(b"00dc", 0, len(data) * 3 // 4)), ("header.avi", data.find(b"movi") + 4)):
        cut = tmp_path / name
        cut.write_bytes(data[:size])
        got = []
        with pytest.raises(VideoError, match=r"of 2\.00 s \(truncated or damaged file\) after \d+ frames") as caught:
            for frame in VideoSource(str(cut)):
                got.append(frame)
        assert caught.value.frames_read == len(got) < 40


def test_mp4_without_its_index_fails_to_open(tmp_path: Path) -> None:
    """An MP4 whose index (moov) was at the end loses it when cut: it cannot be opened, and says so."""
    import av

    full = tmp_path / "plain.mp4"
    with av.open(str(full), "w") as container:  # no faststart: the index goes last
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(30):
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(VideoError, match="damaged or truncated file"):
        VideoSource(str(cut))


def test_corrupt_middle_ends_cleanly(tmp_path: Path) -> None:
    """Bytes overwritten mid-file: frames with concealed errors, or a clear VideoError; never a hang."""
    ts = tmp_path / "clip.ts"
    import av

    with av.open(str(ts), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(60):
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    data = bytearray(ts.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 3000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    ts.write_bytes(bytes(data))
    started, got = time.monotonic(), 0
    try:
        for _ in VideoSource(str(ts)):
            got += 1
    except VideoError as exc:
        assert str(exc).startswith(f"{ts}: ") and "after" in str(exc)
    assert 0 < got <= 60 and time.monotonic() - started < 10


def packet_spans(path: Path) -> list[tuple[int, int]]:
    """Where each video packet of a file lies: (offset, size)."""
    import av

    with av.open(str(path)) as container:
        return [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]


def damaged_clip(path: Path, codec: str, packets: list[int], at: float) -> Path:
    """30 frames (MJPEG, or H.264 with B-frames and a keyframe every 10), then the bytes of the ``packets`` listed
    overwritten from ``at`` (a fraction of the packet) on, a quarter of the packet long."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height = 96, 64
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "libx264":
            stream.options = {"g": "10", "bf": "2", "preset": "veryfast"}
        for i in range(30):
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    spans = packet_spans(path)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for k in packets:
        pos, size = spans[k]
        start = pos + int(size * at)
        data[start : start + size // 4] = rng.integers(0, 256, size // 4, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(("name", "codec", "at"), [("mjpeg.avi", "mjpeg", 0.3), ("h264.mp4", "libx264", 0.05)])
def test_a_damaged_frame_is_skipped_and_the_frames_after_it_keep_their_indices(
    tmp_path: Path, name: str, codec: str, at: float
) -> None:
    """The 13th packet damaged: the decoder refuses it; the 29 other frames are read, each with its own index (the
    one missing among them is the damaged frame's: H.264 puts its frames in another order), the count said once."""
    path = damaged_clip(tmp_path / name, codec, [12], at)
    events: list[str] = []
    source = VideoSource(str(path), on_event=events.append)
    frames = read_all(source)
    indices = [f.index for f in frames]
    (lost,) = set(range(30)) - set(indices)
    assert len(frames) == 29 and indices == sorted(indices) and source.skipped == 1
    assert lost == 12 if codec == "mjpeg" else 10 <= lost <= 13
    assert all(abs(f.time - f.index / FPS) < 1e-3 for f in frames)
    clean = [f for f in frames if codec == "mjpeg" or not 10 <= f.index < 20]  # H.264: its group is concealed
    assert all(np.abs(f.rgb.astype(int) - picture(f.index)).mean() < 8 for f in clean)
    assert events == [f"{path}: skipped 1 damaged frame (invalid data found when processing input)"]
    strided = read_all(VideoSource(str(path), stride=2, on_event=events.append))
    assert [f.index for f in strided] == [i for i in range(0, 30, 2) if i != lost]


def test_damage_with_no_frame_after_it_still_ends_the_video_with_an_error(tmp_path: Path) -> None:
    """An MJPEG AVI cut in its 21st frame, and one whose frames are all damaged: the frames before the break, then
    the error of a file that breaks part way (the frame at the break is no skipped frame)."""
    whole = damaged_clip(tmp_path / "whole.avi", "mjpeg", [], 0)
    pos, size = packet_spans(whole)[20]
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: pos + size // 2])
    everywhere = damaged_clip(tmp_path / "everywhere.avi", "mjpeg", list(range(30)), 0.3)
    for path, read in ((cut, 20), (everywhere, 0)):
        events: list[str] = []
        source, got = VideoSource(str(path), on_event=events.append), []
        with pytest.raises(VideoError) as caught:
            for frame in source:
                got.append(frame.index)
        assert got == list(range(read)) and caught.value.frames_read == read and source.skipped == 0
        assert str(caught.value) == f"{path}: invalid data found when processing input after {read} frames"
        assert events == []


def vfr_clip(path: Path, times_ms: list[int]) -> Path:
    """A variable-frame-rate H.264 clip with a keyframe every 3 frames, frames at ``times_ms``."""
    from fractions import Fraction

    import av

    base = Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.codec_context.time_base = stream.time_base = base
        stream.options = {"g": "3", "preset": "veryfast"}
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(picture(i), format="rgb24")
            frame.pts, frame.time_base = t, base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".ts"])
def test_frame_indices_after_start_on_a_variable_frame_rate_file(tmp_path: Path, suffix: str) -> None:
    """Six frames 40 ms apart, four 1 s apart, eight 40 ms apart: after --start a frame keeps the index it has
    when the file is read from its beginning, and no frame after the start is missing (MP4 seeks by decoding
    time, MPEG-TS by searching: both can land after the start's keyframe)."""
    times_ms = [40 * i for i in range(6)] + [1200, 2200, 3200, 4200] + [4240 + 40 * i for i in range(8)]
    path = vfr_clip(tmp_path / f"vfr{suffix}", times_ms)
    whole = [(f.index, round(f.time, 3)) for f in read_all(VideoSource(str(path)))]
    assert whole == [(i, t / 1000) for i, t in enumerate(times_ms)]
    for start in (0.1, 2.0, 4.3, 4.5):
        after = [(f.index, round(f.time, 3)) for f in read_all(VideoSource(str(path), start=start))]
        assert after == [(i, t) for i, t in whole if t >= start], start


def test_start_at_or_past_the_end_gives_no_frame_and_no_error(clip: Path) -> None:
    """A start after the last frame (2 s clip, last frame at 1.95 s) is no sign of a damaged file."""
    for start in (1.97, 5.0, 100.0):
        source = VideoSource(str(clip), start=start)
        assert read_all(source) == [] and source.frames == 0 and source.frames_read == 0
    assert [f.index for f in read_all(VideoSource(str(clip), start=1.95))] == [39]


def test_truncated_file_read_from_a_start_still_says_so(tmp_path: Path) -> None:
    data = write_clip(tmp_path / "full.mkv", n=120).read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match=r"the video stops at .* of 6\.00 s \(truncated or damaged file\) after 0 "):
        read_all(VideoSource(str(cut), start=5.0))


def test_image_sequence(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for number in (*range(3, 9), 10):  # 3..8, then a gap: 10 is not part of it
        cv2.imwrite(str(folder / f"{number:05d}.png"), picture(number)[:, :, ::-1])
    source = VideoSource(str(folder / "%05d.png"))
    assert (source.frames, source.fps, source.width, source.height) == (6, 25.0, 96, 64)
    frames = read_all(source)
    assert [f.index for f in frames] == list(range(6))
    assert [f.time for f in frames] == pytest.approx([i / 25 for i in range(6)])
    assert all(np.array_equal(f.rgb, picture(f.index + 3)) for f in frames)
    frames = read_all(VideoSource(str(folder / "%05d.png"), stride=2, fps=10, start=0.1))
    assert [(f.index, round(f.time, 3)) for f in frames] == [(1, 0.1), (3, 0.3), (5, 0.5)]


def test_is_video_source() -> None:
    yes = ["a.mp4", "dir/B.MKV", "x.ts", "webcam", "webcam:2", "rtsp://cam/stream", "rtsps://h/s", "rtmp://h/l",
           "udp://239.0.0.1:1234", "tcp://h:1", "srt://h:9000", "http://h/v.m3u8", "https://h/clip", "f/%05d.png",
           "img%d.jpg"]  # fmt: skip
    no = ["a.jpg", "notes.txt", "webcam:x", "ftp://h/a.mp4", "100%.png", "dir", "%%05d.png"]
    assert [s for s in yes if not is_video_source(s)] == []
    assert [s for s in no if is_video_source(s)] == []


def test_existing_folders_and_image_files_are_never_video_sources(tmp_path: Path, monkeypatch) -> None:
    """A folder of photos named webcam and a photo named 50%d.jpg are images; the same names with nothing there
    are a camera and a frame pattern."""
    monkeypatch.chdir(tmp_path)
    assert is_video_source("webcam") and is_video_source("50%d.jpg")
    (tmp_path / "webcam").mkdir()
    (tmp_path / "50%d.jpg").write_bytes(b"")
    assert not is_video_source("webcam") and not is_video_source("50%d.jpg")
    assert is_video_source("frames/%05d.png")  # a pattern: no such file


def test_closing_early_does_not_hang(clip: Path) -> None:
    source = VideoSource(str(clip), queue=2)
    started = time.monotonic()
    for frame in source:
        if frame.index == 2:
            break
    source.close()
    assert time.monotonic() - started < 3
    assert source._thread is not None and not source._thread.is_alive()
    with pytest.raises(CnnappsError, match="already read"):
        iter(source)


@pytest.mark.parametrize("stride", [1, 3])
def test_lockstep_decodes_only_what_is_asked_for(clip: Path, stride: int) -> None:
    source = VideoSource(str(clip), stride=stride)
    source.read_in_lockstep()
    frames = iter(source)
    taken = [next(frames)]
    time.sleep(0.3)  # a reader decoding ahead would fill its queue by now
    assert source.buffered <= 1 and source.frames_read <= 2
    taken += list(frames)
    assert [f.index for f in taken] == list(range(0, 40, stride))  # every frame, in order, as without lockstep


def test_live_queue_drops_the_oldest_frames(clip: Path) -> None:
    source = VideoSource(str(clip), live=True, queue=3)
    assert source.live
    got = []
    with source:
        for frame in source:
            assert source.buffered <= 3
            got.append(frame.index)
            time.sleep(0.03)
    assert source.dropped > 0 and source.frames_read == 40
    assert len(got) + source.dropped == 40
    assert got == sorted(got) and got[-1] == 39  # the consumer still gets the most recent frames


# -- live streams from a local server ------------------------------------------------------------------------


@pytest.fixture()
def web_folder(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on localhost (files with their length, as a web server serves them)."""
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_a_video_file_over_http_is_read_as_a_file(web_folder: tuple[Path, str]) -> None:
    """Not live: no frame dropped for a slow consumer, its length known, its end the end (no reconnection)."""
    folder, base = web_folder
    write_clip(folder / "clip.mp4")
    url = f"{base}/clip.mp4"
    for options in ({}, {"reconnect": True, "retries": 1}):
        source = VideoSource(url, **options)
        assert (source.live, source.frames, source.duration) == (False, 40, pytest.approx(2.0, abs=0.06))
        got = []
        with source:
            for frame in source:
                got.append(frame.index)
                time.sleep(0.005)  # slower than decoding, as a model is
        assert got == list(range(40)) and source.dropped == 0
    assert [f.index for f in read_all(VideoSource(url, start=1.0))] == list(range(20, 40))
    assert probe(url)["live"] is False
    assert VideoSource(url, live=True).live  # said live: its queue drops frames


def test_a_video_file_over_http_that_stops_coming_is_one_error(clip: Path) -> None:
    data = clip.read_bytes()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: %d\r\n\r\n" % len(data)
    server = StreamServer(head + data[: len(data) // 2], stall=True, raw=True)
    try:
        source = VideoSource(server.url, timeout=0.5)
        assert not source.live
        got = []
        with pytest.raises(VideoError) as caught, source:
            for frame in source:
                got.append(frame)
        assert str(caught.value) == f"{server.url}: no data for 0.5 s after {len(got)} frames" and 0 < len(got) < 40
    finally:
        server.close()


@pytest.fixture(scope="module")
def ts_clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    import av

    path = tmp_path_factory.mktemp("ts") / "live.ts"
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.options = {"preset": "veryfast", "bf": "0"}
        for i in range(40):
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path.read_bytes()


class StreamServer:
    """An HTTP server on localhost that sends ``data`` to each of its first ``serves`` connections, then either
    keeps the connection open without a byte more (``stall``) or closes it; later connections are refused."""

    def __init__(self, data: bytes, *, stall: bool, serves: int = 1, raw: bool = False) -> None:
        self.data, self.stall, self.serves = data, stall, serves
        self.head = b"" if raw else b"HTTP/1.0 200 OK\r\nContent-Type: video/mp2t\r\n\r\n"  # raw: data has its own
        self.done = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/live.ts"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for _ in range(self.serves):
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(self.head + self.data)
                if self.stall:
                    self.done.wait(30)
        self.sock.close()  # further connections are refused

    def close(self) -> None:
        self.done.set()
        self.sock.close()
        self.thread.join(5)


@pytest.fixture()
def server(ts_clip: bytes) -> Iterator[callable]:
    made: list[StreamServer] = []

    def make(**kwargs: object) -> StreamServer:
        made.append(StreamServer(ts_clip, **kwargs))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_stalled_stream_raises(server) -> None:
    url = server(stall=True).url
    source = VideoSource(url, timeout=1.5, queue=64)
    assert source.live and (source.width, source.height) == (96, 64)
    got = []
    started = time.monotonic()
    with pytest.raises(VideoError) as caught, source:
        for frame in source:
            got.append(frame)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert message.startswith(f"{url}: stream stalled (no frame for 1.5 s) after ") and "\n" not in message
    assert len(got) >= 30 and caught.value.frames_read == len(got)
    assert 1.2 < elapsed < 1.5 + 2.5


def test_disconnected_stream_raises_or_reconnects(server) -> None:
    url = server(stall=False).url
    with pytest.raises(VideoError, match=r"disconnected .*after \d+ frames; --reconnect retries"):
        read_all(VideoSource(url, timeout=2, queue=64))

    url = server(stall=False, serves=2).url
    events: list[str] = []
    source = VideoSource(url, timeout=2, queue=64, reconnect=True, retries=2, on_event=events.append)
    got = []
    with pytest.raises(VideoError, match="gave up after 2 tries") as caught, source:
        for frame in source:
            got.append(frame)
    assert caught.value.frames_read == len(got)
    assert any(f.index < 40 for f in got) and any(f.index >= 40 for f in got)  # both connections
    assert [f.index for f in got] == sorted({f.index for f in got})
    assert all(b.time > a.time for a, b in itertools.pairwise(got))
    assert len(events) == 3 and all(e.startswith(f"{url}: ") for e in events)
    assert [e.rsplit("(", 1)[1] for e in events] == ["try 1)", "try 1)", "try 2)"]
    assert "disconnected" in events[0] and "after" in events[0]


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_a_video_stored_sideways_is_read_upright_as_players_show_it(tmp_path: Path, degrees: int) -> None:
    """A phone's portrait video is stored landscape with a rotation in its container (the display matrix): frames
    come turned as FFmpeg's players show them (they came sideways: boxes, lines and zones in the stored frame)."""
    import av
    from skimage import data

    picture = np.ascontiguousarray(data.chelsea()[:96, :128])
    path = tmp_path / f"turned{degrees}.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.set_display_rotation(degrees)  # counter-clockwise, as VideoFrame.rotation reads it back
        for _ in range(2):
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    shown = (128, 96) if degrees == 180 else (96, 128)  # width and height as the frames come
    assert (probe(str(path))["width"], probe(str(path))["height"]) == shown  # the header's were 128x96
    frames = list(VideoSource(str(path)))
    upright = np.rot90(picture, degrees // 90)  # turned counter-clockwise by the container's angle
    assert len(frames) == 2 and frames[0].rgb.shape == upright.shape and frames[0].rgb.flags.c_contiguous
    assert np.abs(frames[0].rgb.astype(int) - upright).mean() < 4  # the codec's loss alone
    assert np.abs(frames[0].rgb.astype(int) - np.rot90(picture, -degrees // 90)).mean() > 20 or degrees == 180
