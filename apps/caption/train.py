"""Train a captioner on COCO captions or Karpathy-split data; same run folder as the other tasks.

The run folder holds ``model.safetensors`` (best validation BLEU-4; vocabulary inside), ``metrics.json``,
``curves.png``, ``config.yaml``, ``checkpoints/`` and ``logs/``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from cnnapps.apps.caption.config import CaptionConfig
from cnnapps.errors import CnnappsError
from cnnapps.terminal import article, plural

__all__ = ["CaptionConfig", "train_captioner"]


def train_captioner(config: CaptionConfig) -> dict[str, Any]:
    """Train, then write the run folder; returns the metrics written to ``metrics.json``."""
    from cnnapps.apps.common.training import run_training

    return run_training(config, _prepare, _finish)


def _prepare(config: CaptionConfig, device: Any) -> Any:
    from cnnapps.apps.caption.model import build_captioner
    from cnnapps.apps.caption.module import CaptionModule
    from cnnapps.apps.caption.vocab import Vocabulary
    from cnnapps.apps.common.training import Plan, augment_on_device, backbone_for, make_loaders, trunk_identity
    from cnnapps.datasets.captions import read_captions
    from cnnapps.datasets.splits import split_indices
    from cnnapps.datasets.training import CaptionDataset, collate_captions
    from cnnapps.datasets.transforms import batch_transform, eval_transform
    from cnnapps.runtime import to_channels_last

    items = read_captions(config.data, config.images, "train")  # a Karpathy file: train + restval, never val, test
    train_items, val_items = items, None
    if config.val_data:  # a Karpathy file: its val split (its training images are not for validation)
        val_items = read_captions(config.val_data, config.val_images or config.images, "val")
    elif any(item.split for item in items):  # a Karpathy file: its val split validates, where it has one
        with contextlib.suppress(CnnappsError):
            val_items = read_captions(config.data, config.images, "val")
    if val_items is None:  # COCO captions are one split (or a Karpathy file has no val): hold out a share
        train_idx, val_idx = split_indices(len(items), config.val_split, config.seed)
        train_items, val_items = [items[i] for i in train_idx], [items[i] for i in val_idx]
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
    model = build_captioner(trunk_identity(config)[0], vocab, config.decoder, config.grid, config.max_len,
                            config.weights, preprocess, trunk, **decoder_kwargs)  # fmt: skip
    cuda = device.type == "cuda"
    if cuda:  # the encoder is the convolutional part
        to_channels_last(model.encoder)
    on_device = augment_on_device(config, device)  # uint8 batches, normalised on the device
    images = eval_transform(preprocess, "uint8" if on_device else "float32")  # captions: no augmentation
    train_set = CaptionDataset(train_items, vocab, images, config.max_len, train=True)
    val_set = CaptionDataset(val_items, vocab, images, config.max_len, train=False)
    train_loader, val_loader = make_loaders(config, train_set, val_set, device, collate_captions)
    describe = (
        f"training {article(config.decoder)} captioner on {config.trunk or config.backbone} with "
        f"{plural(len(train_items), 'image')} ({plural(len(vocab), 'word')}), validating on {len(val_items)}"
    )
    module = CaptionModule(model, config, val_items)
    if on_device:
        module.batch_transform = batch_transform("none", preprocess, channels_last=cuda)
    return Plan(module, train_loader, val_loader, describe, "val_bleu4",
                len(train_items), len(val_items), curves=("val_bleu1", "val_bleu4"),
                extra={"vocabulary": len(vocab)})  # fmt: skip


def _finish(config: CaptionConfig, plan: Any, result: Any, device: Any) -> dict[str, Any]:
    from cnnapps.apps.caption.model import save_captioner
    from cnnapps.apps.common.training import best_epoch_values, trunk_identity

    metrics = best_epoch_values(result.history, plan.best)
    model = result.module.model.float().eval()
    save_captioner(Path(config.out) / "model.safetensors", model, {"val_bleu4": metrics.get("val_bleu4")},
                   trunk_identity(config)[1])  # fmt: skip
    return {**metrics, "vocabulary": plan.extra["vocabulary"]}
