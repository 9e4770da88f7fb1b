"""Data-parallel training on two CPU processes (gloo) against one process with the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_colour_set

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.fixture(scope="module")
def split_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 training images (so a global batch of 12 is the whole set: each step is the same full-batch step
    whatever the shuffling) and 6 validation images."""
    root = tmp_path_factory.mktemp("split")
    write_colour_set(root / "train", per_class=4, seed=0)
    write_colour_set(root / "val", per_class=2, seed=1)
    return root


def _last_weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (state["epoch"], state["global_step"]) == (2, 3)  # the end of the third epoch (one step each)
    return {k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_gloo_processes_end_equal_and_match_one_process(split_set: Path, tmp_path: Path) -> None:
    root = Path(__file__).parents[3]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    _run([*torchrun, str(WORKER), str(split_set), str(tmp_path / "ddp"), "2", "6"], cwd=root)
    from tests.apps.common.ddp_worker import main as one_process  # the reference, in this process: no start-up

    one_process(str(split_set), str(tmp_path / "one"), 1, 12)

    ddp_last, rank1 = _last_weights(tmp_path / "ddp"), load_file(tmp_path / "ddp" / "final-rank1.safetensors")
    single = _last_weights(tmp_path / "one")
    assert ddp_last.keys() == rank1.keys() == single.keys()
    for name in ddp_last:
        # both ranks end with the same weights (DDP averages gradients and steps the same optimiser)...
        torch.testing.assert_close(rank1[name], ddp_last[name], rtol=0, atol=1e-6, msg=name)
        # ...which are one process's weights after the same steps on the same global batches
        torch.testing.assert_close(ddp_last[name], single[name], rtol=1e-4, atol=1e-5, msg=name)
    config = (tmp_path / "ddp" / "config.yaml").read_text()
    assert "devices: 2" in config and "strategy: ddp" in config


def test_cli_trains_on_two_processes_and_resumes_at_the_rate_it_reports(split_set, run_cli, tmp_path) -> None:
    """Lightning launches the second process itself; only rank 0 prints and writes the run folder. The run was begun
    on one process (lr 0.001, ``--lr-scaling linear``): resumed on two it trains at 0.002, as its header and metrics
    say (before, its optimiser and schedule kept the checkpoint's 0.001)."""
    out = tmp_path / "run"
    common = ["train", "classify", "--data", str(split_set), "--backbone", "lenet5", "--weights", "none",
              "--batch-size", "6", "--workers", "0", "--device", "cpu", "--lr-scaling", "linear",
              "--out", str(out)]  # fmt: skip
    code, _, err = run_cli(*common, "--epochs", "1")  # fmt: skip
    assert code == 0, err
    first = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert first["lr_schedulers"][0]["base_lrs"] == [pytest.approx(0.001)]
    done = _run([sys.executable, "-m", "cnnapps", *common, "--epochs", "2", "--resume", "--devices", "2", "--strategy",
                 "ddp", "--json"], cwd=tmp_path)  # fmt: skip
    report = json.loads(done.stdout)  # one JSON document: the second process printed nothing
    assert report["epochs"] == 2
    assert "batch 12 = 6 per process x 2 per node x 1 node; lr 0.002 (linear scaling of 0.001 by 2)" in done.stderr
    assert "trained at lr 0.001, resumed at lr 0.002 (linear scaling for 2 processes)" in done.stderr
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and state["cnnapps_lr"] == pytest.approx(0.002)
    assert state["lr_schedulers"][0]["base_lrs"] == [pytest.approx(0.002)]
    assert [group["initial_lr"] for group in state["optimizer_states"][0]["param_groups"]] == pytest.approx([0.002])
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["processes"], metrics["global_batch_size"], metrics["lr"]) == (2, 12, 0.002)
    assert metrics["val_images"] == 6  # every rank validated on the whole set; the final report covers all of it
    assert (out / "model.safetensors").is_file()
