"""Runs refused in one line before anything is written: a run folder inside the data, several machines with no
launcher."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnapps.apps.common.config import ConfigError, load_config
from tests.conftest import write_colour_set


def _not_prepared(*args: object) -> None:
    raise AssertionError("prepared")


@pytest.mark.parametrize("inside", ["", "runs/a", "train", "train/blue/run"])
def test_a_run_folder_inside_the_data_is_refused(tmp_path: Path, inside: str) -> None:
    """The run's curves, confusion matrix and checkpoints became images of a class (or a class folder of none)."""
    from cnnapps.apps.common.training import run_training

    data = write_colour_set(tmp_path / "data" / "train", per_class=2).parent
    write_colour_set(data / "val", per_class=1)
    out = data / inside if inside else data
    config = load_config(None, data=str(data), out=str(out), backbone="lenet5", weights="none")
    before = sorted(data.rglob("*"))
    with pytest.raises(ConfigError) as refused:
        run_training(config, _not_prepared, _not_prepared)
    assert str(refused.value) == (f"--out {out}: lies inside --data {data}, whose images the run reads (its files "
                                  "would be read as images); pass an --out outside it")  # fmt: skip
    assert sorted(data.rglob("*")) == before  # nothing written


def test_a_run_folder_beside_the_data_is_not_refused(tmp_path: Path) -> None:
    from cnnapps.apps.common.training import run_training

    data = write_colour_set(tmp_path / "data", per_class=2)
    config = load_config(None, data=str(data), out=str(tmp_path / "data-run"), backbone="lenet5", weights="none")
    with pytest.raises(AssertionError, match="prepared"):
        run_training(config, _not_prepared, _not_prepared)


def test_several_machines_without_a_launcher_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning started this machine's processes as node 0 and waited up to 30 minutes for the others, silently."""
    from cnnapps.apps.common.training import run_training

    for name in ("SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "RANK"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "run"
    settings = dict(data=str(tmp_path / "data"), out=str(out), backbone="lenet5", weights="none", devices=2,
                    num_nodes=2, strategy="ddp", device="cpu")  # fmt: skip
    with pytest.raises(ConfigError) as refused:
        run_training(load_config(None, **settings), _not_prepared, _not_prepared)
    assert str(refused.value) == ("--num-nodes 2: start each machine's processes with torchrun or srun (or set "
                                  "NODE_RANK and MASTER_ADDR on each)")  # fmt: skip
    assert not out.exists()
    monkeypatch.setenv("NODE_RANK", "1")  # Lightning's own multi-machine start: this machine knows its place
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    with pytest.raises(AssertionError, match="prepared"):
        run_training(load_config(None, **settings), _not_prepared, _not_prepared)


def test_more_cpu_processes_than_cores_are_warned_of(monkeypatch: pytest.MonkeyPatch) -> None:
    """--devices 8 on a 2-core CPU started 8 processes without a word."""
    import os

    import torch

    from cnnapps.apps.common.training import crowded_cores

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    config = lambda devices: load_config(None, data="d", out="o", devices=devices, strategy="ddp")  # noqa: E731
    assert crowded_cores(config(8), torch.device("cpu")) == (
        "--devices 8 on a CPU with 2 cores: its processes share the cores, so each step waits on the others; "
        "--devices 2 or fewer, or GPUs, train faster"
    )
    assert crowded_cores(config(2), torch.device("cpu")) is None
    assert crowded_cores(config(8), torch.device("cuda")) is None
