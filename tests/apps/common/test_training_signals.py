"""A training run a signal stops: it says where its last checkpoint is and exits 128 + the signal (it exited 0 on
SIGTERM, as if finished, and 1 on Ctrl-C, saying nothing), and two processes on the CPU stop together (they waited
on each other for good: Lightning's SIGTERM handler ran a collective call from inside the handler)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_colour_set


def _ctrl_c_taken() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(("devices", "workers", "group", "sent", "code"), [
    (1, 0, False, signal.SIGTERM, 143),
    (1, 0, False, signal.SIGINT, 130),
    (2, 0, False, signal.SIGTERM, 143),
    (1, 2, True, signal.SIGTERM, 143),  # a scheduler's time limit: the loader's workers end too (it said RuntimeError)
])  # fmt: skip
def test_a_stopped_run_says_what_it_kept_and_exits_with_the_signal(
    tmp_path: Path, devices: int, workers: int, group: bool, sent: int, code: int
) -> None:
    data = write_colour_set(tmp_path / "data")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "cnnapps", "train", "classify", "--data", str(data), "--val-split", "0.3",
               "--backbone", "lenet5", "--weights", "none", "--epochs", "5000", "--batch-size", "4", "--logger", "csv",
               "--workers", str(workers), "--out", str(out), "--devices", str(devices), "--device", "cpu"]  # fmt: skip
    # Ctrl-C as a terminal sends it: a suite started in the background (`make test &`) ignores SIGINT, and Python
    # started so takes no Ctrl-C at all
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                           start_new_session=group, preexec_fn=_ctrl_c_taken)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoints" / "last.ckpt").is_file():
            assert run.poll() is None and time.monotonic() < deadline, run.stderr.read() if run.stderr else ""
            time.sleep(0.2)
        time.sleep(1)
        if group:
            os.killpg(run.pid, sent)
        else:
            run.send_signal(sent)
        _, stderr = run.communicate(timeout=60)  # both processes stop: no wait for ever
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    name = signal.Signals(sent).name
    said = [line for line in stderr.splitlines() if "training stopped" in line]
    assert run.returncode == code, stderr[-2000:]
    assert len(said) == 1 and said[0].startswith(f"{out}: training stopped by {name} after "), stderr[-2000:]
    assert re.search(rf" after [1-9][0-9]* of 5000 epochs, which {re.escape(str(out / 'checkpoints' / 'last.ckpt'))}"
                     " keeps: continue with the same command and --resume$", said[0])  # fmt: skip
    assert not (out / "model.safetensors").exists()  # not taken for a finished run


def test_a_run_stopped_as_its_last_epoch_ended_says_resume_writes_its_model(tmp_path: Path) -> None:
    """Lightning counts the epoch before it stops: this said "in epoch 3 of 2"."""
    from types import SimpleNamespace

    from cnnapps.apps.common.training import _stopped

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    trainer = SimpleNamespace(received_sigterm=True, global_rank=0, current_epoch=2)
    stopped = _stopped(trainer, tmp_path, 2)
    assert stopped.exit_code == 143
    assert stopped.message == (f"{tmp_path}: training stopped by SIGTERM after its last epoch (2 of 2): the same "
                               "command with --resume writes its model")  # fmt: skip
    assert _stopped(SimpleNamespace(received_sigterm=True, global_rank=1, current_epoch=2), tmp_path, 2).message == ""
    (tmp_path / "checkpoints" / "last.ckpt").unlink()
    trainer.received_sigterm, trainer.current_epoch = False, 0
    stopped = _stopped(trainer, tmp_path, 2)
    assert stopped.exit_code == 130
    assert stopped.message.endswith("before its first epoch had finished: nothing to resume")
