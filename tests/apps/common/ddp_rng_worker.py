"""Trains the tiny classifier through ``fit`` under ``torchrun`` with dropout, noting what each process draws.

``python ddp_rng_worker.py DATA OUT``: each process writes ``OUT/draws-rank{N}.json``, a hash of torch's random state
at the start of each training step; rank 0 also writes the run's epoch history (``OUT/history.json``) beside the
run folder's CSV log.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import lightning as L
import torch

from cnnapps.apps.classify.model import Classifier
from cnnapps.apps.classify.module import ClassificationModule
from cnnapps.apps.common.config import load_config
from cnnapps.apps.common.training import Plan, backbone_for, extra_callbacks, fit, make_loaders
from cnnapps.datasets.folders import train_val_split
from cnnapps.datasets.training import LabeledImageDataset


class Draws(L.Callback):
    def __init__(self) -> None:
        self.states: list[str] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.states.append(hashlib.sha256(torch.random.get_rng_state().numpy().tobytes()).hexdigest()[:16])


def main(data: str, out: str) -> None:
    config = load_config(
        None, data=data, out=out, backbone="lenet5", weights="none", backbone_kwargs={"in_channels": 3},
        epochs=2, batch_size=3, optimizer="sgd", lr=0.05, schedule="none", dropout=0.5, augment="none",
        workers=0, progress=False, devices=2, strategy="ddp", seed=0, logger="csv",
    )  # fmt: skip
    L.seed_everything(config.seed, verbose=False)
    train_set, val_set = train_val_split(config.data, config.val_split, config.seed)
    backbone, spec = backbone_for(config)
    model = Classifier(backbone, len(train_set.class_names), dropout=config.dropout)
    train, val = LabeledImageDataset(train_set, spec), LabeledImageDataset(val_set, spec)
    train_loader, val_loader = make_loaders(config, train, val, torch.device("cpu"))
    draws = Draws()
    plan = Plan(ClassificationModule(model, config), train_loader, val_loader, "tiny", "val_top1", len(train_set),
                len(val_set))  # fmt: skip
    with extra_callbacks(lambda plan: draws):
        result = fit(config, plan, torch.device("cpu"))
    (Path(out) / f"draws-rank{result.global_rank}.json").write_text(json.dumps(draws.states))
    if result.global_rank == 0:
        (Path(out) / "history.json").write_text(json.dumps(result.history))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
