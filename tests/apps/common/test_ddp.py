"""Distributed training on two CPU processes (gloo): trunks whose heads read only the stage maps, errors said
once, launchers that started another number of processes, random draws and logged losses per process."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cnnapps.apps.common.config import ConfigError, load_config
from tests.conftest import write_colour_set

ROOT = Path(__file__).parents[3]
RNG_WORKER = Path(__file__).with_name("ddp_rng_worker.py")


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnapps", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)  # fmt: skip


# -- layers past the last stage ---------------------------------------------------------------------------------------


def test_freeze_past_stages_stops_training_only_what_no_stage_map_depends_on() -> None:
    from cnnapps.backbones import create_backbone

    trunk = create_backbone("efficientnet_lite0", weights="imagenet").train()
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    trunk.freeze_past_stages()
    frozen = sorted(n for n, p in trunk.named_parameters() if not p.requires_grad)
    assert frozen == ["model.bn2.bias", "model.bn2.weight", "model.classifier.bias", "model.classifier.weight",
                      "model.conv_head.weight"]  # fmt: skip
    assert trunk.training  # and nothing else changed: weights, batch-norm statistics
    assert all(torch.equal(before[k], v) for k, v in trunk.state_dict().items())


def test_heads_reading_only_the_stages_freeze_the_later_layers_and_a_classifier_keeps_them() -> None:
    import lightning as L

    from cnnapps.apps.classify.model import Classifier
    from cnnapps.apps.classify.module import ClassificationModule
    from cnnapps.apps.semantic.model import create_semantic
    from cnnapps.apps.semantic.module import SemanticModule
    from cnnapps.backbones import create_backbone

    config = load_config(None, data="unused", out="unused", backbone="efficientnet_lite0", weights="none")
    semantic = create_semantic("fpn", "efficientnet_lite0", class_names=["a", "b"], backbone_weights=None,
                               head_channels=8)  # fmt: skip
    classifier = Classifier(create_backbone("efficientnet_lite0", weights=None), 2)
    for module in (
        SemanticModule(semantic, config, semantic.backbone.preprocess),
        ClassificationModule(classifier, config),
    ):
        module.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
        module.setup("fit")
    assert not semantic.backbone.model.conv_head.weight.requires_grad
    assert not semantic.backbone.model.bn2.weight.requires_grad
    assert semantic.backbone.model.blocks[-1][0].conv_pwl.weight.requires_grad  # the last stage still trains
    assert classifier.backbone.model.conv_head.weight.requires_grad  # its head reads the last feature map


def test_detector_freezes_the_later_layers_only_with_an_fpn() -> None:
    from cnnapps.apps.detect.model import create_detector
    from cnnapps.apps.detect.module import DetectionModule

    config = load_config(None, data="unused", out="unused", backbone="efficientnet_lite0", weights="none")
    for fpn in (True, False):
        model = create_detector("detect", "efficientnet_lite0", num_classes=2, backbone_weights=None, fpn=fpn)
        module = DetectionModule(model, config, SimpleNamespace(category_ids=[1]))
        assert module.stage_readers() == ([model.backbone.body] if fpn else [])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cnnapps.apps.semantic.synthetic import main as synthetic

    root = tmp_path_factory.mktemp("ddp-scenes") / "scenes"
    synthetic([str(root), "--train", "2", "--val", "1", "--size", "64"])
    return root


def test_semantic_trains_with_plain_ddp_and_its_model_file_keeps_the_later_layers(scenes: Path,
                                                                                  tmp_path: Path) -> None:  # fmt: skip
    """EfficientNet's conv_head and bn2 get no gradient from a head that reads the stages: plain DDP trains anyway,
    and the model file keeps their weights as they came."""
    from safetensors.torch import load_file

    from cnnapps.backbones import create_backbone

    out = tmp_path / "run"
    done = _cli(["train", "semantic", "--data", str(scenes), "--head", "fpn", "--head-channels", "8", "--input-size",
                 "64", "--epochs", "1", "--batch-size", "1", "--workers", "0", "--devices", "2", "--strategy", "ddp",
                 "--out", str(out)], cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["processes"] == 2
    saved = load_file(out / "model.safetensors")
    bundled = create_backbone("efficientnet_lite0", weights="imagenet").state_dict()
    for name in ("conv_head.weight", "bn2.weight", "bn2.bias", "bn2.running_mean", "bn2.running_var"):
        torch.testing.assert_close(saved[f"trunk.model.{name}"], bundled[f"model.{name}"], rtol=0, atol=0)
    import cnnapps

    image = next((scenes / "JPEGImages").glob("*.jpg"), None) or next(scenes.rglob("*.jpg"))
    assert cnnapps.load(out / "model.safetensors").predict([str(image)])[0].error is None


# -- errors ----------------------------------------------------------------------------------------------------------


def test_an_error_every_process_meets_is_said_once(tmp_path: Path) -> None:
    data = write_colour_set(tmp_path / "data" / "train", per_class=2)
    for path in write_colour_set(tmp_path / "data" / "val", per_class=1).rglob("*.png"):
        path.write_bytes(b"not an image")  # no validation image can be read: every process fails at its epoch end
    done = _cli(["train", "classify", "--data", str(data.parent), "--backbone", "lenet5", "--weights", "none",
                 "--epochs", "1", "--batch-size", "2", "--workers", "0", "--devices", "2", "--strategy", "ddp",
                 "--out", str(tmp_path / "run")], cwd=tmp_path)  # fmt: skip
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr[-2000:]
    assert errors[0].startswith("error: ") and "no readable image" in errors[0]


def test_processes_a_launcher_started_must_be_devices_times_nodes(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from cnnapps.apps.common.training import run_training

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    out = tmp_path / "run"
    config = load_config(None, data=str(tmp_path), out=str(out), backbone="lenet5", weights="none")

    def prepare(*args: object) -> None:
        raise AssertionError("prepared")

    with pytest.raises(ConfigError) as refused:
        run_training(config, prepare, prepare)
    assert str(refused.value) == ("devices: the launcher started 2 processes (WORLD_SIZE=2) but devices x num_nodes "
                                  "is 1 x 1; pass --devices (and --num-nodes) so that they make 2")  # fmt: skip
    assert not out.exists()  # nothing written
    monkeypatch.setenv("SLURM_NTASKS", "4")  # srun's count, as Lightning reads it
    with pytest.raises(ConfigError, match=r"started 4 processes \(SLURM_NTASKS=4\)"):
        run_training(load_config(None, data=str(tmp_path), out=str(out), devices=2, backbone="lenet5"), prepare,
                     prepare)  # fmt: skip
    with pytest.raises(AssertionError, match="prepared"):  # 2 x 2: as launched
        run_training(load_config(None, data=str(tmp_path / "data"), out=str(out), devices=2, num_nodes=2,
                                 backbone="lenet5"), prepare, prepare)  # fmt: skip


def test_srun_tasks_have_ranks_of_their_own_and_a_refusal_is_said_by_rank_zero_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from cnnapps.apps.common import training
    from cnnapps.datasets.transforms import process_rank

    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # an interactive allocation's shell: not a task of a run
    assert process_rank() == 0
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    assert process_rank() == 1  # seeds its augmentation apart from task 0 before the process group is up
    monkeypatch.setattr(training, "RANK_ZERO_GRACE", 0.2)  # srun leaves the other tasks running: no launcher ends it
    config = load_config(None, data=str(tmp_path), out=str(tmp_path / "run"), backbone="lenet5", weights="none")
    with pytest.raises(SystemExit) as left:  # task 0 says the one line; task 1 leaves without a word
        training.run_training(config, print, print)
    assert left.value.code == 1
    monkeypatch.setenv("SLURM_PROCID", "0")
    with pytest.raises(ConfigError, match=r"started 2 processes \(SLURM_NTASKS=2\)"):
        training.run_training(config, print, print)


def test_ddp_spawn_is_refused_naming_the_strategies_taken() -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(None, data="x", out="y", strategy="ddp_spawn").validate()
    assert str(refused.value) == ("strategy: 'ddp_spawn' is not one of auto, ddp, ddp_find_unused_parameters_true; "
                                  "use ddp (one process per device, started for you)")  # fmt: skip


# -- random draws and logged losses ---------------------------------------------------------------------------------


def test_each_process_draws_its_own_numbers_and_the_logged_loss_is_the_mean(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_colour_set(data / "train", per_class=3, seed=0)
    write_colour_set(data / "val", per_class=1, seed=1)
    out = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run([*torchrun, str(RNG_WORKER), str(data), str(out)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (json.loads((out / f"draws-rank{r}.json").read_text()) for r in (0, 1))
    assert len(rank0) == len(rank1) == 4  # 2 epochs of 2 steps
    assert not set(rank0) & set(rank1)  # dropout masks and augmentation of their own
    history = json.loads((out / "history.json").read_text())
    with open(next((out / "logs").glob("version_*/metrics.csv"))) as f:
        logged = [float(row["train_loss"]) for row in csv.DictReader(f) if row.get("train_loss")]
    assert len(logged) == 2
    for row, value in zip(history, logged, strict=True):
        assert value == pytest.approx(row["train_loss"], rel=1e-5)  # the mean over both processes' shards


def test_only_validation_values_are_spared_lightnings_sync_dist_notice() -> None:
    import re

    from cnnapps.apps.common.training import _EXPECTED_LIGHTNING_WARNINGS

    notice = ("It is recommended to use `self.log({!r}, ..., sync_dist=True)` when logging on epoch level in "
              "distributed setting to accumulate the metric across devices.")  # fmt: skip
    assert any(re.match(pattern, notice.format("val_top1")) for pattern in _EXPECTED_LIGHTNING_WARNINGS)
    assert not any(re.match(pattern, notice.format("train_loss")) for pattern in _EXPECTED_LIGHTNING_WARNINGS)


def test_a_checkpoint_whose_optimiser_still_holds_the_later_layers_resumes_with_them() -> None:
    import lightning as L

    from cnnapps.apps.semantic.model import create_semantic
    from cnnapps.apps.semantic.module import SemanticModule

    config = load_config(None, data="unused", out="unused", backbone="efficientnet_lite0", weights="none")
    for held in (False, True):
        model = create_semantic("fpn", "efficientnet_lite0", class_names=["a", "b"], backbone_weights=None,
                                head_channels=8)  # fmt: skip
        module = SemanticModule(model, config, model.backbone.preprocess)
        module.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
        module.setup("fit")
        trained = sum(p.requires_grad for p in module.parameters())
        saved = {"params": list(range(trained + 3 * held))}  # conv_head, bn2's weight and bias: 3 more
        module.on_load_checkpoint({"optimizer_states": [{"param_groups": [saved]}], "lr_schedulers": []})
        assert model.backbone.model.conv_head.weight.requires_grad is held
        assert sum(p.requires_grad for p in module.parameters()) == trained + 3 * held
