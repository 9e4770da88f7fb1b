"""Trains the tiny classifier through ``fit``: run by the distributed tests, under ``torchrun`` or alone.

``python ddp_worker.py DATA OUT DEVICES BATCH``: each process saves the weights it ends with to
``OUT/final-rank{N}.safetensors`` (rank 0 also writes the run folder's checkpoints).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from cnnapps.apps.classify.model import Classifier
from cnnapps.apps.classify.module import ClassificationModule
from cnnapps.apps.common.config import load_config
from cnnapps.apps.common.training import Plan, backbone_for, fit, make_loaders
from cnnapps.datasets.folders import train_val_split
from cnnapps.datasets.training import LabeledImageDataset


def main(data: str, out: str, devices: int, batch_size: int) -> None:
    config = load_config(
        None, data=data, out=out, backbone="lenet5", weights="none", backbone_kwargs={"in_channels": 3},
        epochs=3, batch_size=batch_size, optimizer="sgd", lr=0.05, schedule="none", dropout=0.0, augment="none",
        workers=0, progress=False, devices=devices, strategy="ddp" if devices > 1 else "auto", seed=0,
    )  # fmt: skip
    torch.manual_seed(config.seed)
    train_set, val_set = train_val_split(config.data, config.val_split, config.seed)
    backbone, spec = backbone_for(config)
    model = Classifier(backbone, len(train_set.class_names), dropout=0.0)
    train, val = LabeledImageDataset(train_set, spec), LabeledImageDataset(val_set, spec)
    train_loader, val_loader = make_loaders(config, train, val, torch.device("cpu"))
    module = ClassificationModule(model, config)
    plan = Plan(module, train_loader, val_loader, "tiny", "val_top1", len(train_set), len(val_set))
    result = fit(config, plan, torch.device("cpu"))
    # rank 0 reloads the best checkpoint after fitting; its last weights are in checkpoints/last.ckpt
    save_file(result.module.model.state_dict(), str(Path(out) / f"final-rank{result.global_rank}.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
