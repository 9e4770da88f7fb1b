"""Train a captioner on COCO captions or Karpathy-split data; same run folder as the other tasks.

The run folder holds ``model.safetensors`` (best validation BLEU-4; vocabulary inside), ``metrics.json``,
``curves.png``, ``config.yaml``, ``checkpoints/`` and ``logs/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnapps.apps.common.training import ConfigError, TrainConfig
from cnnapps.errors import CnnappsError


@dataclass
class CaptionConfig(TrainConfig):
    """``data``: COCO captions JSON or Karpathy's dataset_*.json (``split`` picks train/val from it)."""

    images: str = ""
    val_data: str | None = None
    val_images: str | None = None
    decoder: str = "lstm"
    grid: int = 14
    max_len: int = 20
    min_count: int = 1
    embed_dim: int = 256
    hidden_dim: int = 512
    attention_dim: int = 256
    layers: int = 2
    alpha_c: float = 1.0
    fine_tune_after: int | None = None
    encoder_lr_scale: float = 0.1
    augment: str = "none"
    lr: float | None = 4e-4
    dropout: float = 0.3
    out: str = "runs/caption"

    def validate(self) -> CaptionConfig:
        from cnnapps.apps.caption.model import DECODERS

        if not self.data:
            raise ConfigError("data: required (COCO captions JSON or Karpathy's dataset_*.json)")
        if not self.images:
            raise ConfigError("images: required (the folder the file's image names are relative to)")
        super().validate()
        checks = [
            (self.decoder in DECODERS, f"decoder: {self.decoder!r} is not one of {', '.join(DECODERS)}"),
            (self.augment == "none", "augment: captions describe positions, so training images are not augmented"),
            (self.grid >= 1, f"grid: must be at least 1, not {self.grid}"),
            (self.max_len >= 1, f"max_len: must be at least 1, not {self.max_len}"),
            (self.min_count >= 1, f"min_count: must be at least 1, not {self.min_count}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self


def train_captioner(config: CaptionConfig) -> dict[str, Any]:
    """Train, then write the run folder; returns the metrics written to ``metrics.json``."""
    import lightning as L
    import numpy as np
    from torch.utils.data import DataLoader

    from cnnapps.apps.caption.model import build_captioner, save_captioner
    from cnnapps.apps.caption.module import CaptionModule
    from cnnapps.apps.caption.vocab import Vocabulary
    from cnnapps.apps.common.plots import plot_curves
    from cnnapps.apps.common.training import backbone_for, check_run_folder, fit, loader_args, validation_loader
    from cnnapps.datasets.captions import read_captions
    from cnnapps.datasets.training import CaptionDataset, collate_captions
    from cnnapps.runtime import select_device

    config.validate()
    check_run_folder(config)
    L.seed_everything(config.seed, verbose=False)
    karpathy_split = "train" if not config.val_data else None
    items = read_captions(config.data, config.images, karpathy_split)
    if config.val_data:
        train_items, val_items = items, read_captions(config.val_data, config.val_images or config.images)
    else:
        try:
            train_items, val_items = items, read_captions(config.data, config.images, "val")
        except CnnappsError:  # not a Karpathy file: hold out a share of the images
            order = np.random.default_rng(config.seed).permutation(len(items))
            n_val = max(1, round(config.val_split * len(items)))
            val_items = [items[i] for i in sorted(order[:n_val])]
            train_items = [items[i] for i in sorted(order[n_val:])]
    if not train_items:
        raise CnnappsError(f"{config.data}: no training images left after the validation split")
    vocab = Vocabulary.build((c for item in train_items for c in item.captions), config.min_count)
    trunk, preprocess = backbone_for(config)
    decoder_kwargs: dict[str, Any] = {"dropout": config.dropout}
    if config.decoder == "lstm":
        sizes = {"embed_dim": config.embed_dim, "hidden_dim": config.hidden_dim, "attention_dim": config.attention_dim}
        decoder_kwargs.update(sizes)
    else:
        decoder_kwargs.update(d_model=config.embed_dim, layers=config.layers)
    model = build_captioner(config.backbone, vocab, config.decoder, config.grid, config.max_len, config.weights,
                            preprocess, trunk, **decoder_kwargs)  # fmt: skip
    device = select_device(config.device)
    args = loader_args(config, device, collate_captions)
    train_set = CaptionDataset(train_items, vocab, preprocess, config.max_len, train=True)
    train_loader = DataLoader(train_set, shuffle=True, **args)
    val_loader = validation_loader(CaptionDataset(val_items, vocab, preprocess, config.max_len, train=False), args)
    module = CaptionModule(model, config, val_items)
    describe = (
        f"training a {config.decoder} captioner on {config.backbone} with {len(train_items)} images "
        f"({len(vocab)} words), validating on {len(val_items)}"
    )
    result = fit(config, module, train_loader, val_loader, device, "val_bleu4", describe)
    if result.global_rank:  # the other processes of a distributed run: rank 0 writes the run folder
        return {"global_rank": result.global_rank}
    model = result.module.model.float().cpu().eval()
    history = result.module.history
    best = max(history, key=lambda h: h.get("val_bleu4", 0.0)) if history else {}
    metrics = {
        **{k: v for k, v in best.items() if k.startswith("val_")},
        "epochs": len(history),
        "best_epoch": best.get("epoch"),
        "train_images": len(train_items),
        "val_images": len(val_items),
        "vocabulary": len(vocab),
        **result.facts,
        "history": history,
    }
    out = Path(config.out)
    save_captioner(out / "model.safetensors", model, extra={"metrics": {"val_bleu4": best.get("val_bleu4")}})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if history:
        plot_curves(history, out / "curves.png", metrics=("val_bleu1", "val_bleu4"))
    return metrics
