"""run_video: lanes give the answers of one lane in frame order and give the CPU's threads back; on one thread
each they are forked processes sharing what the first batch compiled, and their failures reach the caller; a
failing source ends the run with what was read; live sources go frame by frame."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import cnnapps
from cnnapps.apps.common.video import run_video
from cnnapps.apps.detect.model import create_detector, save_detector
from cnnapps.datasets.video import Frame, VideoError, VideoSource, VideoWriter
from cnnapps.errors import CnnappsError


@pytest.fixture(scope="module")
def clip(tmp_path_factory, chelsea) -> Path:
    path = tmp_path_factory.mktemp("clip") / "pan.mp4"
    with VideoWriter(path, 10) as writer:
        for i in range(20):
            writer.write(np.ascontiguousarray(chelsea[:96, 6 * i : 6 * i + 128]))
    return path


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("det") / "det.safetensors"
    torch.manual_seed(0)
    model = create_detector("detect", "resnet18", num_classes=3, class_names=["__background__", "a", "b"],
                            backbone_weights=None, fpn_channels=16, min_size=96, max_size=128)  # fmt: skip
    save_detector(path, model)
    return path


@pytest.fixture
def threads(request) -> int:
    """The CPU's threads for the test (2 unless parametrized, as on a 2-core machine: two lanes get one each, and so
    are forked processes); the earlier count is put back after."""
    count, before = getattr(request, "param", 2), torch.get_num_threads()
    torch.set_num_threads(count)
    yield count
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [2, 4], indirect=True)  # 2: forked lanes of one thread each; 4: threads
def test_lanes_answer_as_one_lane_in_frame_order(clip, detector, threads):
    predictor = cnnapps.load(detector, score_threshold=0.0, batch_size=3, device="cpu")  # lanes: a CPU's way
    answers = {}
    for lanes in (1, 2):
        lines: list[dict] = []
        report = run_video(predictor, VideoSource(str(clip)), on_line=lines.append, batch_size=3, lanes=lanes)
        assert report.frames == 20 and report.error is None
        answers[lanes] = lines
        assert torch.get_num_threads() == threads  # the lanes' share given back
    assert predictor.engine == "jit"  # the first batch compiled the trunk at once (the lanes shared it)
    assert [line["frame"] for line in answers[2]] == list(range(20))
    for one, two in zip(answers[1], answers[2], strict=True):
        assert len(one["instances"]) == len(two["instances"])
        assert np.allclose([i["box"] for i in one["instances"]], [i["box"] for i in two["instances"]], atol=1e-2)


class _Pids:
    """A predictor that answers with the process that predicted each frame, whether it had compiled by then and the
    frame's first pixel; ``fail`` makes it raise (or, with ``"exit"``, the process end) at a frame so marked."""

    device, engine = "cpu", "jit"

    def __init__(self, fail: str | None = None) -> None:
        self.compiled, self.fail = False, fail

    def predict(self, images):
        return self.predict_in_lane(images)

    def predict_in_lane(self, images, compile_now: bool = False):
        from cnnapps.results import ClassificationResult, Prediction

        self.compiled |= compile_now
        if self.fail == "speak" and not compile_now:  # in a lane: print, warn and log
            import logging
            import sys
            import warnings

            print("a lane speaks", file=sys.stderr)
            warnings.warn("a lane warns", UserWarning, stacklevel=1)
            logging.getLogger("cnnapps").warning("a lane logs")
        elif self.fail and any(int(img[0, 0, 0]) == 255 for img in images):
            if self.fail == "exit":
                os._exit(3)
            raise ValueError("frame 255 is bad") if self.fail == "value" else _OddError("frame 255 is bad", 1)
        pid, compiled = f"{os.getpid()}", float(self.compiled)
        return [ClassificationResult("", predictions=[Prediction(pid, int(img[0, 0, 0]), compiled)]) for img in images]


def test_a_lane_never_waits_on_a_terminal_lock_held_at_the_fork(threads, monkeypatch):
    import signal
    import sys
    import threading

    held = threading.Lock()

    class Proxy:  # as a progress bar's stand-in for stderr: every write takes the terminal's lock
        def write(self, text):
            with held:
                return len(text)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Proxy())
    before = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("a lane hung")))
    signal.alarm(30)
    held.acquire()  # held by "another thread" through the fork: the lanes' copies stay locked
    try:
        lines: list[dict] = []
        report = run_video(_Pids("speak"), _Frames(8), on_line=lines.append, batch_size=2, lanes=2)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
        held.release()
    assert report.frames == 8 and [line["frame"] for line in lines] == list(range(8))


class _OddError(Exception):
    """An error that cannot be rebuilt from its arguments (as some libraries' are not)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)


class _Frames:
    """``n`` tiny frames, frame ``i`` filled with ``i`` (and 255 where ``bad``)."""

    name, live, fps, dropped = "frames.mp4", False, 10.0, 0

    def __init__(self, n: int, bad: int | None = None) -> None:
        self.n, self.bad = n, bad

    def __iter__(self):
        for i in range(self.n):
            yield Frame(i, i / 10, np.full((8, 8, 3), 255 if i == self.bad else i, np.uint8))

    def close(self) -> None:
        pass


def test_forked_lanes_share_what_the_first_batch_compiled_and_answer_in_order(threads):
    predictor, lines = _Pids(), []
    report = run_video(predictor, _Frames(23), on_line=lines.append, batch_size=2, lanes=2)
    assert report.frames == 23 and [line["frame"] for line in lines] == list(range(23))
    answers = [line["predictions"][0] for line in lines]
    assert [a["index"] for a in answers] == list(range(23))  # each frame's own answer, in order
    pids = [int(a["label"]) for a in answers]
    assert pids[:2] == [os.getpid()] * 2  # the first batch here, compiling at once
    lanes = set(pids[2:])
    assert len(lanes) == 2 and os.getpid() not in lanes  # the rest in two forked processes
    assert all(a["score"] == 1.0 for a in answers)  # which had the compiled state from the start
    assert pids[2:6] == [pids[2], pids[2], pids[4], pids[4]]  # batches dealt out in turn
    assert torch.get_num_threads() == 2


def test_graphs_in_other_engines_run_their_lanes_in_threads(threads):
    predictor, lines = _Pids(), []
    predictor.engine = "onnxruntime"  # its thread pools would not survive a fork
    run_video(predictor, _Frames(9), on_line=lines.append, batch_size=2, lanes=2)
    assert {line["predictions"][0]["label"] for line in lines} == {str(os.getpid())}
    assert [line["frame"] for line in lines] == list(range(9))


@pytest.mark.parametrize(("fail", "error", "message"), [
    ("value", ValueError, "frame 255 is bad"),
    ("odd", CnnappsError, "_OddError: frame 255 is bad"),  # sent back as its message
    ("exit", CnnappsError, "a video lane stopped \\(exit code 3\\) before answering"),
])  # fmt: skip
def test_a_failing_lane_raises_here_and_the_lanes_end(threads, fail, error, message):
    import multiprocessing

    with pytest.raises(error, match=message):
        run_video(_Pids(fail), _Frames(12, bad=7), batch_size=2, lanes=2)
    assert not multiprocessing.active_children()


class _Breaking:
    """A source that gives ``n`` frames, then fails as a truncated file does."""

    name, live, fps, dropped = "broken.mkv", False, 10.0, 0

    def __init__(self, n: int, rgb: np.ndarray) -> None:
        self.n, self.rgb, self.closed = n, rgb, False

    def __iter__(self):
        for i in range(self.n):
            yield Frame(i, i / 10, self.rgb)
        raise VideoError(f"{self.name}: the video stops at 0.5 s of 2 s after {self.n} frames")

    def close(self) -> None:
        self.closed = True


def test_a_source_that_breaks_ends_the_run_with_the_frames_read(chelsea):
    source = _Breaking(5, np.ascontiguousarray(chelsea[:64, :64]))
    lines: list[dict] = []
    report = run_video(cnnapps.load(), source, on_line=lines.append, batch_size=2)
    assert report.frames == 5 and [line["frame"] for line in lines] == [0, 1, 2, 3, 4]
    assert "stops at 0.5 s" in report.error and source.closed


def test_live_sources_go_frame_by_frame(chelsea):
    from cnnapps.results import ClassificationResult, Prediction

    class Counting:
        device = "cpu"

        def __init__(self) -> None:
            self.calls: list[int] = []

        def predict(self, images):
            self.calls.append(len(images))
            return [ClassificationResult("", predictions=[Prediction("cat", 0, 1.0)]) for _ in images]

    source = _Breaking(6, np.ascontiguousarray(chelsea[:32, :32]))
    source.live = True
    predictor = Counting()
    report = run_video(predictor, source, batch_size=4)
    assert predictor.calls == [1] * 6 and report.frames == 6
    source = _Breaking(6, np.ascontiguousarray(chelsea[:32, :32]))  # a file: batches
    predictor.calls.clear()
    run_video(predictor, source, batch_size=4)
    assert predictor.calls == [4, 2]


def test_a_frame_drawn_in_the_writer_thread_shows_the_counts_of_its_own_frame(tmp_path, monkeypatch) -> None:
    from types import SimpleNamespace

    import cnnapps.apps.common.video as video
    from cnnapps.apps.track.book import ZoneCounter

    zone = ZoneCounter("z", [(0, 0), (100, 0), (100, 100), (0, 100)])
    drawn, truth = {}, {}
    monkeypatch.setattr(video, "_draw_counter", lambda picture, counter, counts, thick: drawn.setdefault(
        len(drawn), counts["entered"]))  # fmt: skip

    class Answer:
        ok, instances = True, []

        def overlay(self, rgb):
            return rgb

        draw = overlay

    source = SimpleNamespace(name="clip", fps=25)
    sink = video._Sink(video.VideoReport("clip"), None, None, tmp_path / "events", None, source,
                       SimpleNamespace(counters=[zone]), threaded=True)  # fmt: skip
    rgb = np.zeros((48, 64, 3), np.uint8)
    for f in range(40):
        zone.update(f, [f], np.array([[10.0, 10.0]]), ["car"])  # one more object enters on every frame
        truth[f] = zone.entered
        sink.put(SimpleNamespace(index=f, time=f / 25, rgb=rgb), Answer(), True, [])
    sink.close()
    assert drawn == truth  # the thread drew frame N after later frames were counted: it showed their counts


class _Signalling:
    """An ``on_line`` that sends this process ``signals`` (names) as the lines of the ``at`` frames are written, in
    the middle of taking a batch; the lines it got are in ``lines``."""

    def __init__(self, at: dict[int, str]) -> None:
        self.at, self.lines = at, []

    def __call__(self, line: dict) -> None:
        import signal

        self.lines.append(line)
        if line["frame"] in self.at:
            os.kill(os.getpid(), getattr(signal, self.at[line["frame"]]))


@pytest.fixture
def python_signals():
    """SIGINT and SIGTERM at Python's defaults during the test, as in a command (a test runner's workers set their
    own; run_video takes over only the defaults: were it not to, SIGTERM would end the test process, a loud
    failure), put back after."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler), signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGINT, before[0])
    signal.signal(signal.SIGTERM, before[1])


@pytest.mark.parametrize("lanes", [1, 2])
@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_in_the_middle_of_a_batch_stops_the_run_after_it_every_frame_written(threads, python_signals,
                                                                                      name, lanes):  # fmt: skip
    import signal

    on_line = _Signalling({5: name})
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    asked = {"stop_signals": ("SIGINT", "SIGTERM")} if name == "SIGTERM" else {}  # Ctrl-C: by default
    report = run_video(_Pids(), _Frames(60), on_line=on_line, batch_size=4, lanes=lanes, **asked)
    frames = [line["frame"] for line in on_line.lines]
    assert frames == list(range(len(frames))) and report.frames == len(frames)  # no batch cut short, none skipped
    assert report.interrupted and report.signal == name and report.to_dict()["signal"] == name
    assert 8 <= len(frames) < 60 and len(frames) % 4 == 0  # the batch at hand and those in flight, then no more
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers put back


def test_a_program_s_own_ctrl_c_handler_is_left_to_it(threads):
    import signal

    heard = []
    mine = signal.signal(signal.SIGINT, lambda number, frame: heard.append(number))
    try:
        on_line = _Signalling({5: "SIGINT"})
        report = run_video(_Pids(), _Frames(12), on_line=on_line, batch_size=4)
        assert heard == [signal.SIGINT] and not report.interrupted and report.frames == 12
        assert signal.getsignal(signal.SIGINT) is not mine and signal.getsignal(signal.SIGINT).__name__ == "<lambda>"
    finally:
        signal.signal(signal.SIGINT, mine)


def test_a_second_ctrl_c_stops_at_once_and_the_video_still_holds_its_frames(tmp_path, python_signals):
    on_line = _Signalling({5: "SIGINT", 6: "SIGINT"})
    with pytest.raises(KeyboardInterrupt):
        run_video(_Pids(), _Frames(40), on_line=on_line, batch_size=4, save_video=tmp_path / "a.mp4")
    assert [line["frame"] for line in on_line.lines] == list(range(7))  # frame 6's line went out, its picture not
    assert VideoSource(str(tmp_path / "a.mp4")).frames == 6 and os.listdir(tmp_path) == ["a.mp4"]


def test_an_output_that_cannot_be_finished_leaves_the_others_in_place(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import cnnapps.apps.common.video as video
    from cnnapps.datasets.video import VideoWriter

    def broken(self):
        raise CnnappsError(f"{self.path}: cannot finish the video (invalid argument)")

    monkeypatch.setattr(VideoWriter, "close", broken)

    class Answer:
        ok, instances = True, []

        def overlay(self, rgb):
            return rgb

        draw = overlay

    report = video.VideoReport("clip")
    sink = video._Sink(report, None, tmp_path / "a.mp4", None, tmp_path / "t.txt", SimpleNamespace(name="clip", fps=10),
                       SimpleNamespace(counters=[]), threaded=False)  # fmt: skip
    for f in range(3):
        sink.put(SimpleNamespace(index=f, time=f / 10, rgb=np.zeros((16, 16, 3), np.uint8)), Answer(), False,
                 [f"{f + 1},1,0,0,4,4,0.9,-1,-1,-1"])  # fmt: skip
    with pytest.raises(CnnappsError, match="cannot finish the video"):
        sink.close()
    assert (tmp_path / "t.txt").read_text().count("\n") == 3 and report.written == [str(tmp_path / "t.txt")]


def test_an_unknown_video_suffix_is_refused_before_a_frame_is_predicted(tmp_path):
    from cnnapps.apps.common.video import Tracking

    predictor = _Pids()
    predictor.predict = lambda images: pytest.fail("a frame was predicted")
    frames = _Frames(4)
    closed = []
    frames.close = lambda: closed.append(True)
    with pytest.raises(CnnappsError, match=r"out\.gif: unknown video suffix \.gif"):
        run_video(predictor, frames, tracking=Tracking(0.5), save_video=tmp_path / "out.gif",
                  save_mot=tmp_path / "t.txt")  # fmt: skip
    assert os.listdir(tmp_path) == [] and closed == [True]  # the source closed too


def test_ctrl_c_while_waiting_on_a_stalled_source_stops_the_run_at_once(python_signals):
    import signal
    import threading
    import time

    class Stalled(_Frames):
        live = True

        def __iter__(self):
            yield from super().__iter__()
            time.sleep(30)  # a stream that gives nothing more (and does not drop)

    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started, lines = time.monotonic(), []
    report = run_video(_Pids(), Stalled(6), on_line=lines.append)
    timer.join()
    assert time.monotonic() - started < 10 and report.interrupted and report.signal == "SIGINT"
    assert report.frames == len(lines) == 6
