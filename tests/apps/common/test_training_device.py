"""The training skeleton's device side: the epoch loss reduced on the module's device, DDP with gradients in its
buckets, worker counts, the uint8 batch path, the final report without a second pass, and --compile."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cnnapps.apps.common.config import load_config
from cnnapps.apps.common.training import TaskModule, augment_on_device, ddp_strategy, default_workers


class RecordingStrategy:
    """Stands in for Lightning's strategy: records what ``reduce`` is given (NCCL takes only tensors on the
    GPU) and answers with a mean of 3."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def reduce(self, tensor: torch.Tensor, reduce_op: str = "mean") -> torch.Tensor:
        self.seen.append(tensor)
        return torch.tensor(3.0)


@pytest.mark.parametrize("steps", [3, 0])
def test_the_epoch_loss_is_reduced_on_the_modules_device(steps: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The module lives on the meta device here, so a tensor made on the CPU (as the per-epoch reduce once did)
    shows as such, as it would next to a GPU."""
    import lightning as L

    logged: list[str] = []  # what the trackers get: every value of the epoch's history
    monkeypatch.setattr(L.LightningModule, "log", lambda self, name, value, *args, **kwargs: logged.append(name))
    module = TaskModule(load_config(None, data="x")).to("meta")
    strategy = RecordingStrategy()
    optimizer = SimpleNamespace(param_groups=[{"lr": 0.5}])
    module._trainer = SimpleNamespace(strategy=strategy, optimizers=[optimizer], current_epoch=0)  # as Lightning
    module.on_train_epoch_start()
    for loss in [1.0, 2.0, 6.0][:steps]:
        module.track_train_loss(torch.tensor(loss, device="meta"))  # each step's loss, where the step ran
    optimizer.param_groups[0]["lr"] = 0.25  # an epoch's scheduler steps before validation: the next epoch's lr
    module.record_epoch({"val_loss": 0.1})
    (reduced,) = strategy.seen  # one collective per epoch
    assert reduced.device == module.device == torch.device("meta") and reduced.dim() == 0
    assert module.history == [{"epoch": 1, "train_loss": 3.0, "val_loss": 0.1, "lr": 0.5}]
    assert logged == ["train_loss", "val_loss", "lr"]


def test_ddp_strategies_keep_gradients_in_their_buckets() -> None:
    from lightning.pytorch.strategies import DDPStrategy

    for name, unused in (("ddp", False), ("ddp_find_unused_parameters_true", True)):
        strategy = ddp_strategy(load_config(None, data="x", strategy=name))
        assert isinstance(strategy, DDPStrategy)
        assert strategy._ddp_kwargs["gradient_as_bucket_view"] is True
        assert strategy._ddp_kwargs.get("find_unused_parameters", False) is unused
    assert ddp_strategy(load_config(None, data="x")) == "auto"  # one process: Lightning's own choice
    assert isinstance(ddp_strategy(load_config(None, data="x", devices=2)), DDPStrategy)


DDP_SCRIPT = r"""
import sys, warnings, torch
from torch import nn
import lightning as L
from cnnapps.apps.common.config import load_config
from cnnapps.apps.common.training import TaskModule, ddp_strategy

class Net(TaskModule):
    def __init__(self, config):
        super().__init__(config)
        self.model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                   nn.Linear(16, 2)).to(memory_format=torch.channels_last)
        w = self.model[1].weight  # a 1x1 kernel with NCHW strides, which also count as channels_last
        w.data = torch.empty_strided(w.shape, (8, 1, 1, 1)).copy_(w.data)
        self.storages = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.model(x.contiguous(memory_format=torch.channels_last)), y)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.storages.append(sorted({p.grad.untyped_storage().data_ptr() for p in self.parameters()}))

config = load_config(None, data="x", strategy="ddp", optimizer="sgd", lr=0.1, schedule="none")
data = torch.utils.data.TensorDataset(torch.randn(12, 3, 12, 12), torch.randint(0, 2, (12,)))
module = Net(config)
trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, strategy=ddp_strategy(config), logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
print("WARNINGS", sum("Grad strides do not match" in str(w.message) for w in caught))
# DDP rebuilds its buckets once, after the first step, in the order gradients came
print("STORAGES", len(module.storages[1]), module.storages[1] == module.storages[-1], len(module.storages))
"""


def test_ddp_gradients_live_in_the_buckets_and_strides_never_mismatch(tmp_path: Path) -> None:
    """One gloo process: the same DDP reducer as on GPUs. Without the buckets as gradients, the 1x1 kernel's
    gradient (NHWC strides) mismatches its bucket view (the parameter's NCHW strides) and DDP warns."""
    done = subprocess.run([sys.executable, "-c", DDP_SCRIPT], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WARNINGS 0" in done.stdout
    # every gradient is a view into one bucket, and stays the same tensor from step to step
    assert "STORAGES 1 True 3" in done.stdout


def test_worker_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    import cnnapps.runtime as runtime

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(runtime, "available_cores", lambda: 16)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_workers(load_config(None, data="x"), cpu) == 4  # the CPU trains too
    assert default_workers(load_config(None, data="x"), cuda) == 15  # all but the core that drives the GPU
    assert default_workers(load_config(None, data="x", devices=4), cuda) == 3  # four processes share 16 cores
    monkeypatch.setattr("os.cpu_count", lambda: 64)  # a scheduler gave this process 16 of 64 cores
    assert default_workers(load_config(None, data="x", devices=4), cuda) == 15
    assert augment_on_device(load_config(None, data="x"), cuda)
    assert not augment_on_device(load_config(None, data="x"), cpu)
    assert augment_on_device(load_config(None, data="x", augment_on="device"), cpu)
    assert not augment_on_device(load_config(None, data="x", augment_on="workers"), cuda)


def test_uint8_batches_train_exactly_like_float32_batches(colour_set: Path, tmp_path: Path, tiny_config) -> None:
    """The path a GPU takes (uint8 from the workers, normalised by the module), forced on the CPU: with no
    augmentation the inputs are bit for bit the same, so is every loss."""
    from cnnapps.apps.classify.train import train_classifier

    floats = train_classifier(tiny_config(colour_set, tmp_path / "float32", epochs=2))
    uint8 = train_classifier(tiny_config(colour_set, tmp_path / "uint8", epochs=2, augment_on="device"))
    for key in ("train_loss", "val_loss", "val_top1"):
        assert [h[key] for h in uint8["history"]] == [h[key] for h in floats["history"]], key
    assert uint8["confusion_matrix"] == floats["confusion_matrix"]


def test_the_final_report_is_the_best_epochs_validation(trained, colour_set: Path) -> None:
    """Written from the best epoch's validation outputs (no second pass), it equals scoring the saved model."""
    import cnnapps
    from cnnapps.apps.classify.evaluate import evaluate
    from cnnapps.datasets.folders import train_val_split

    out, metrics = trained
    _, val_set = train_val_split(str(colour_set), 0.3, 0)
    report = evaluate(cnnapps.load(out / "model.safetensors", device="cpu"), val_set)
    assert metrics["val_top1"] == pytest.approx(report.top1) and metrics["val_top5"] == pytest.approx(report.top5)
    assert metrics["val_loss"] == pytest.approx(report.loss, rel=1e-4, abs=1e-6)
    assert metrics["confusion_matrix"] == report.confusion
    written = json.loads((out / "metrics.json").read_text())
    assert set(written["timing"]) == {"prepare_seconds", "epoch_seconds", "fit_other_seconds", "finish_seconds"}


def test_kept_outputs_are_used_only_when_every_image_was_read() -> None:
    from cnnapps.apps.classify.model import Classifier
    from cnnapps.apps.classify.module import ClassificationModule
    from cnnapps.backbones import create_backbone

    model = Classifier(create_backbone("lenet5", weights=None, in_channels=3), 2, 0.0, ["a", "b"])
    module = ClassificationModule(model, load_config(None, data="x"))
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32)
    module.best_outputs = {"epoch": 2, "val_top1": 1.0, "probs": probs, "labels": np.array([0, 1, 0]),
                           "indices": np.array([2, 0, 1])}  # fmt: skip
    kept = module.outputs_of_best(2, 3)
    assert kept is not None and np.array_equal(kept[0], probs[[1, 2, 0]]) and kept[1].tolist() == [1, 0, 0]
    assert module.outputs_of_best(1, 3) is None  # another epoch was the best (e.g. before a --resume)
    module.best_outputs["indices"] = np.array([2, 0, 0])  # image 1 unreadable: image 0 took its place
    assert module.outputs_of_best(2, 3) is None


def test_an_unreadable_validation_image_is_left_out_of_the_epochs_scores(tmp_path: Path, tiny_config) -> None:
    """Its place went to the next readable image, scored twice in the epoch's val_loss and val_top1."""
    import cnnapps
    from cnnapps.apps.classify.train import train_classifier
    from tests.conftest import write_colour_set

    write_colour_set(tmp_path / "data" / "train", per_class=4, seed=0)
    write_colour_set(tmp_path / "data" / "val", per_class=2, seed=1)
    broken = sorted((tmp_path / "data" / "val").rglob("*.png"))[0]
    broken.write_bytes(b"not an image")
    metrics = train_classifier(tiny_config(tmp_path / "data", tmp_path / "run", epochs=1, device="cpu"))
    readable = sorted(p for p in (tmp_path / "data" / "val").rglob("*.png") if p != broken)
    names = sorted(p.name for p in (tmp_path / "data" / "train").iterdir())
    labels = np.array([names.index(p.parent.name) for p in readable])
    _, probs, _ = cnnapps.load(tmp_path / "run" / "model.safetensors", engine="eager", device="cpu").predict_proba(
        [str(p) for p in readable]
    )
    epoch = metrics["history"][0]
    loss = -np.log(probs[np.arange(len(labels)), labels]).mean()
    assert epoch["val_loss"] == pytest.approx(loss, abs=1e-4)
    assert epoch["val_top1"] == pytest.approx((probs.argmax(1) == labels).mean())


def test_a_validation_set_with_no_readable_image_is_one_error(tmp_path: Path, tiny_config) -> None:
    from cnnapps.apps.classify.train import train_classifier
    from cnnapps.errors import ImageError
    from tests.conftest import write_colour_set

    write_colour_set(tmp_path / "data" / "train", per_class=4, seed=0)
    write_colour_set(tmp_path / "data" / "val", per_class=1, seed=1)
    for path in (tmp_path / "data" / "val").rglob("*.png"):
        path.write_bytes(b"not an image")
    val = tmp_path / "data" / "val"
    with pytest.raises(ImageError) as caught:
        train_classifier(tiny_config(tmp_path / "data", tmp_path / "run", epochs=1, device="cpu"))
    assert str(caught.value) == f"{val}: no readable image in the validation set (3 unreadable)"


@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")), reason="torch.compile needs a C++ compiler on a CPU"
)
def test_compile_trains_like_eager(colour_set: Path, tmp_path: Path, tiny_config, caplog) -> None:
    from cnnapps.apps.classify.train import train_classifier

    # one batch per epoch (21 training, 9 validation images): one shape each, so one compilation each
    settings = {"epochs": 2, "batch_size": 32, "device": "cpu"}  # fp32 on a GPU too
    eager = train_classifier(tiny_config(colour_set, tmp_path / "eager", **settings))
    with caplog.at_level("INFO", logger="cnnapps"):
        compiled = train_classifier(tiny_config(colour_set, tmp_path / "compiled", compile=True, **settings))
    assert compiled["compile_seconds"] > 0 and "compile_seconds" not in eager
    for what in ("training", "validation"):
        assert sum(f"torch.compile: {what} steps compiled in" in r.message for r in caplog.records) == 1
    # fp32 on both sides; inductor fuses and reorders sums, so losses agree to float rounding, not bit for bit
    for epoch in (0, 1):
        for key in ("train_loss", "val_loss"):
            assert compiled["history"][epoch][key] == pytest.approx(eager["history"][epoch][key], rel=1e-4), key
    assert compiled["val_top1"] == eager["val_top1"]


def _retrieve(data: Path, out: Path, **extra) -> dict:
    from cnnapps.apps.retrieve.config import RetrieveConfig
    from cnnapps.apps.retrieve.train import train_retrieval

    return train_retrieval(load_config(
        None, RetrieveConfig, data=str(data), backbone="lenet5", weights="none", backbone_kwargs={"in_channels": 3},
        loss="arcface", embedding_size=8, epochs=1, batch_size=8, workers=0, progress=False, augment="none",
        out=str(out), val_split=0.3, device="cpu", **extra,
    ))  # fmt: skip


def _caption(data: Path, out: Path, **extra) -> dict:
    from cnnapps.apps.caption.config import CaptionConfig
    from cnnapps.apps.caption.train import train_captioner

    return train_captioner(load_config(
        None, CaptionConfig, data=str(data / "train.json"), images=str(data / "train"), backbone="resnet18",
        weights="none", grid=2, input_size=48, epochs=1, batch_size=8, workers=0, progress=False, out=str(out),
        embed_dim=16, hidden_dim=16, attention_dim=16, device="cpu", **extra,
    ))  # fmt: skip


def _segment(data: Path, out: Path, **extra) -> dict:
    from cnnapps.apps.detect.config import DetectConfig
    from cnnapps.apps.detect.train import train_detector

    return train_detector(load_config(
        None, DetectConfig, task="segment", data=str(data / "train.json"), images=str(data / "train"),
        backbone="resnet18", weights="none", fpn_channels=16, min_size=96, max_size=96, epochs=1, batch_size=4,
        workers=0, progress=False, augment="none", out=str(out), device="cpu", **extra,
    ))  # fmt: skip


@pytest.mark.parametrize("task", ["retrieve", "caption", "segment"])
def test_every_task_trains_alike_from_uint8_batches(task: str, colour_set: Path, tmp_path: Path) -> None:
    """Each task's uint8 path (what a GPU gets), forced on the CPU, against its float32 path: the same inputs
    reach the model, so the losses are the same."""
    from cnnapps.datasets.synthetic import write_captions, write_coco

    if task == "retrieve":
        run, data = _retrieve, colour_set
    elif task == "caption":
        run, data = _caption, tmp_path / "data"
        write_captions(data, "train", 12, seed=0, size=64)
    else:
        run, data = _segment, tmp_path / "data"
        write_coco("shapes", data, "train", 8, seed=0, size=96)
    floats = run(data, tmp_path / "float32")
    uint8 = run(data, tmp_path / "uint8", augment_on="device")
    expected = floats["history"][0]
    assert set(uint8["history"][0]) == set(expected)
    for key in ("train_loss", *(k for k in expected if k.startswith("val_") and expected[k] is not None)):
        assert uint8["history"][0][key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), key
