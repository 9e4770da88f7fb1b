"""Settings of ``cnnapps train caption`` (plain data: the command line is built from them)."""

from __future__ import annotations

from dataclasses import dataclass

from cnnapps.apps.common.config import MORE_PANEL, ConfigError, TrainConfig, option

DECODERS = ("lstm", "transformer")
TRANSFORMER_HEADS = 4  # attention heads of each Transformer decoder layer


@dataclass
class CaptionConfig(TrainConfig):
    """``data``: COCO captions JSON or Karpathy's dataset_*.json (its train/val splits are used)."""

    data: str = option("", "COCO captions JSON or Karpathy's dataset_*.json.")
    images: str = option("", "Folder the file's image names are relative to.")
    val_data: str | None = option(None, "Validation captions [default: Karpathy val, or --val-split held out].")
    val_images: str | None = option(None, "Validation image folder [default: --images].")
    decoder: str = option("lstm", "lstm (soft attention) or transformer.", choices=DECODERS)
    grid: int = option(14, "Feature grid side the encoder pools to.")
    max_len: int = option(20, "Most words per caption.")
    min_count: int = option(1, "Words seen fewer times become <unk>.")
    embed_dim: int = option(256, "Word embedding size (the Transformer's width).", panel=MORE_PANEL)
    hidden_dim: int = option(512, "LSTM state size.", panel=MORE_PANEL)
    attention_dim: int = option(256, "Attention layer size (LSTM).", panel=MORE_PANEL)
    layers: int = option(2, "Transformer layers.", panel=MORE_PANEL)
    alpha_c: float = option(1.0, "Weight of the doubly stochastic attention penalty (LSTM).", panel=MORE_PANEL)
    fine_tune_after: int | None = option(None, "Train the encoder too from this epoch on (0.1x the lr).")
    encoder_lr_scale: float = option(0.1, "The encoder's learning rate as a share of --lr.", panel=MORE_PANEL)
    augment: str = option("none", "none: captions describe positions, so training images are not augmented.")
    lr: float | None = option(4e-4, "Learning rate (the encoder gets --encoder-lr-scale of it).")
    dropout: float = option(0.3, "Dropout in the decoder.", panel=MORE_PANEL)
    label_smoothing: float = option(0.0, cli=False)  # the word loss is plain cross-entropy
    out: str = option("runs/caption", "Run folder (an earlier run there is never overwritten).")

    task_name = "caption"

    def validate(self) -> CaptionConfig:
        if self.data and not self.images:
            raise ConfigError("images: required (the folder the file's image names are relative to)")
        super().validate()
        checks = [
            (self.augment == "none", "augment: captions describe positions, so training images are not augmented"),
            (self.grid >= 1, f"grid: must be at least 1, not {self.grid}"),
            (1 <= self.max_len <= 200, f"max_len: must be between 1 and 200, not {self.max_len}"),
            (self.min_count >= 1, f"min_count: must be at least 1, not {self.min_count}"),
            (
                self.decoder != "transformer" or self.embed_dim % TRANSFORMER_HEADS == 0,
                f"embed_dim: the Transformer decoder splits it over {TRANSFORMER_HEADS} attention heads, so it must be "
                f"a multiple of {TRANSFORMER_HEADS}, not {self.embed_dim}",
            ),
            (
                not (self.trunk and self.fine_tune_after is not None),
                "fine_tune_after: a --trunk stays frozen (other heads share it); leave fine_tune_after out",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self
