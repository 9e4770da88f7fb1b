"""A training run a signal stops: it says where its last checkpoint is and exits 128 + the signal (it exited 0 on
SIGTERM, as if finished, and 1 on Ctrl-C, saying nothing), and two processes on the CPU stop together (they waited
on each other for good: Lightning's SIGTERM handler ran a collective call from inside the handler)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_colour_set


@pytest.mark.parametrize(("devices", "sent", "code"), [(1, signal.SIGTERM, 143), (1, signal.SIGINT, 130),
                                                       (2, signal.SIGTERM, 143)])  # fmt: skip
def test_a_stopped_run_says_what_it_kept_and_exits_with_the_signal(tmp_path: Path, devices: int, sent: int,
                                                                   code: int) -> None:  # fmt: skip
    data = write_colour_set(tmp_path / "data")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "cnnapps", "train", "classify", "--data", str(data), "--val-split", "0.3",
               "--backbone", "lenet5", "--weights", "none", "--epochs", "5000", "--batch-size", "4", "--workers",
               "0", "--logger", "csv", "--out", str(out), "--devices", str(devices), "--device", "cpu"]  # fmt: skip
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoints" / "last.ckpt").is_file():
            assert run.poll() is None and time.monotonic() < deadline, run.stderr.read() if run.stderr else ""
            time.sleep(0.2)
        time.sleep(1)
        run.send_signal(sent)
        _, stderr = run.communicate(timeout=60)  # both processes stop: no wait for ever
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    name = signal.Signals(sent).name
    said = [line for line in stderr.splitlines() if "training stopped" in line]
    assert run.returncode == code, stderr[-2000:]
    assert len(said) == 1 and said[0].startswith(f"{out}: training stopped by {name} in epoch "), stderr[-2000:]
    assert said[0].endswith(f"{out / 'checkpoints' / 'last.ckpt'} keeps its finished epochs: continue with the "
                            "same command and --resume")  # fmt: skip
    assert not (out / "model.safetensors").exists()  # not taken for a finished run
