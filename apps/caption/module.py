"""The Lightning module that trains a captioner: teacher forcing, attention regularisation, BLEU/CIDEr."""

from __future__ import annotations

from typing import Any

import torch

from cnnapps.apps.caption.decode import greedy
from cnnapps.apps.caption.evaluate import caption_scores
from cnnapps.apps.caption.model import Captioner, caption_loss
from cnnapps.apps.common.training import TaskModule, TrainConfig


class CaptionModule(TaskModule):
    """Decoder trained from the start; the encoder frozen until epoch ``fine_tune_after`` (None: always),
    then trained at ``encoder_lr_scale`` times the learning rate."""

    def __init__(self, model: Captioner, config: TrainConfig, val_items: list[Any]) -> None:
        super().__init__(config)
        self.model = model.train()
        self.alpha_c = config.alpha_c if model.spec.decoder == "lstm" else 0.0
        self.fine_tune_after, self.encoder_lr_scale = config.fine_tune_after, config.encoder_lr_scale
        self.val_items = val_items
        self.backbone = model.encoder.backbone
        self.backbone.freeze(len(self.backbone.stages))
        self._candidates: dict[int, str] = {}
        self._val_losses: list[torch.Tensor] = []  # on the device, read once per epoch

    def compile_targets(self) -> list[torch.nn.Module]:
        """The encoder (a convolutional backbone on fixed-size images); the decoder's word-by-word loop stays
        eager."""
        return [self.model.encoder]

    def parameter_groups(self) -> Any:
        encoder = list(self.model.encoder.parameters())
        return [
            {"params": list(self.model.decoder.parameters())},
            {"params": encoder, "lr": self.lr * self.encoder_lr_scale},
        ]

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if self.fine_tune_after is not None and self.current_epoch >= self.fine_tune_after:
            self.backbone.unfreeze()

    def _loss(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.training and self.backbone.frozen_stages == 0):
            features = self.model.encoder(images)
        logits, attention = self.model.decoder(features, tokens[:, :-1])
        return caption_loss(logits, tokens[:, 1:], attention, self.model.vocab.pad, self.alpha_c)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor, list[int]], batch_idx: int) -> torch.Tensor:
        images, tokens, _ = batch
        loss = self._loss(images, tokens)
        # each process's mean over its shard, averaged over the processes (as the history's train_loss)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(images),
                 sync_dist=True)  # fmt: skip
        self.track_train_loss(loss)
        return loss

    def validate_batch(self, batch: tuple[torch.Tensor, torch.Tensor, list[int]]) -> None:
        images, tokens, indices = batch
        self._val_losses.append(self._loss(images, tokens).detach().float())
        features = self.model.encoder(images)
        for i, hyp in zip(indices, greedy(self.model.decoder, features, self.model.vocab, self.model.spec.max_len),
                          strict=True):  # fmt: skip
            self._candidates[i] = " ".join(hyp.words(self.model.vocab))

    def on_validation_epoch_end(self) -> None:
        references = {i: self.val_items[i].captions for i in self._candidates}
        scores = caption_scores(references, self._candidates, ptb=False) if self._candidates else {}
        val_loss = float(torch.stack(self._val_losses).mean()) if self._val_losses else 0.0
        self._candidates, self._val_losses = {}, []
        if self.trainer.sanity_checking:
            return
        self.log("val_bleu4", scores.get("bleu4", 0.0), prog_bar=True)
        self.log("val_loss", val_loss)
        self.record_epoch({"val_loss": val_loss, **{f"val_{k}": v for k, v in scores.items()}})
