"""Settings of ``cnnapps train classify`` (plain data: the command line is built from them)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cnnapps.apps.common.config import MORE_PANEL, SETTINGS_FORMAT, ConfigError, TrainConfig, option

#: how training images are drawn: shuffled, or by inverse class frequency (every class about equally often)
SAMPLERS = ("shuffle", "balanced")
#: mixing of image pairs on the batch (timm's Mixup): MixUp, CutMix, or either (half the batches each)
MIXES = ("none", "mixup", "cutmix", "both")
#: transfer-learning presets, made of ``freeze`` and ``llrd`` (see the field's help)
TRANSFER_PRESETS = ("none", "small-data", "more-data")
#: ``more-data``'s layer-wise learning-rate decay when ``llrd`` is not given
MORE_DATA_LLRD = 0.5


@dataclass
class ClassifyConfig(TrainConfig):
    """Fine-tune a backbone with a linear head on a class-per-folder tree or a path,label CSV."""

    multilabel: bool = option(
        False, "Several labels per image, each a yes/no of its own (sigmoid outputs, binary cross-entropy, a "
        "threshold per class tuned for F1 on validation). Multi-label data is found without it: a CSV of path,labels "
        "whose label column holds labels separated by | or ; (a.jpg,cat|dog; empty for an image with none), or a "
        "folder holding such a labels.csv of its images; multi-label as soon as one row has several labels.",
    )  # fmt: skip
    class_weights: str | None = option(
        None, "Weigh the cross-entropy per class: auto (inverse class frequency in the training set, mean 1) or a "
        "YAML/JSON/CSV file of class name -> weight (classes it leaves out weigh 1). Multi-label: the weight of each "
        "class's positives (auto: its negatives / positives).", panel=MORE_PANEL,
    )  # fmt: skip
    sampler: str = option(
        "shuffle", "shuffle, or balanced: draw training images by inverse class frequency (each class about "
        "equally often; an epoch is still as many draws as images; with several processes each takes its share of "
        "the same seeded draws).", choices=SAMPLERS, panel=MORE_PANEL,
    )  # fmt: skip
    logit_adjust: float = option(
        0.0, "Logit-adjusted cross-entropy for imbalanced classes: add TAU x log(each class's share of the training "
        "images) to the logits in the training loss, so the model's own scores come out balanced (1 is the usual "
        "TAU; 0 off). Nothing changes at prediction time.", panel=MORE_PANEL,
    )  # fmt: skip
    mix: str = option(
        "none", "Mix image pairs in each training batch: none, mixup, cutmix or both (either, at random per "
        "batch); the loss takes the mixed soft targets (with --label-smoothing).", choices=MIXES, panel=MORE_PANEL,
    )  # fmt: skip
    ema: bool = option(
        False, "Keep an exponential moving average of the weights, validated each epoch beside them; the better "
        "of the two is saved.", panel=MORE_PANEL,
    )  # fmt: skip
    ema_decay: float = option(
        0.999, "EMA decay, warmed up over the optimiser steps t as min(decay, 1 - (1 + t)^-0.75).", panel=MORE_PANEL
    )
    llrd: float | None = option(
        None, "Layer-wise lr decay in (0, 1]: the head gets --lr, the backbone's last stage lr x llrd, the one "
        "before lr x llrd^2, ... (the stem with the first stage).", panel=MORE_PANEL,
    )  # fmt: skip
    preset: str = option(
        "none", "Transfer-learning preset: small-data (train only the new head: the whole trunk frozen, batch "
        "norm included) or more-data (freeze the stem and the first half of the stages, llrd 0.5 on the rest); "
        "freeze and llrd given beside more-data win.", choices=TRANSFER_PRESETS,
    )  # fmt: skip

    def validate(self) -> ClassifyConfig:
        super().validate()
        checks = [
            (0 < self.ema_decay < 1, f"ema_decay: must be between 0 and 1, not {self.ema_decay}"),
            (self.llrd is None or 0 < self.llrd <= 1, f"llrd: must be in (0, 1], not {self.llrd}"),
            (not (self.class_weights and self.sampler == "balanced"),
             "class_weights: the balanced sampler already draws every class about equally often; use one of them"),
            (self.logit_adjust >= 0, f"logit_adjust: must be 0 (off) or more, not {self.logit_adjust}"),
            (not (self.logit_adjust and (self.class_weights or self.sampler == "balanced")),
             "logit_adjust: it already corrects for the class frequencies; leave class_weights and sampler "
             "balanced out"),
            (not (self.preset != "none" and self.trunk), "preset: a --trunk is frozen whole; leave preset out"),
            (not (self.preset == "small-data" and self.freeze),
             "freeze: preset small-data freezes the whole trunk; leave freeze out"),
            (not (self.preset == "small-data" and self.llrd is not None),
             "llrd: preset small-data trains only the head; leave llrd out"),
            (not (self.trunk and self.llrd is not None), "llrd: a --trunk is frozen whole; leave llrd out"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.multilabel:
            self.check_multilabel("multilabel")
        if self.class_weights is not None and not self.class_weights.strip():
            raise ConfigError("class_weights: auto or a file of class name -> weight, not an empty value")
        return self

    def check_multilabel(self, why: str) -> None:
        """Refuse, in one line, the options that have no multi-label form (``why``: what made the run multi-label)."""
        refused = [
            (self.mix != "none", "mix: mixing images mixes their label sets; leave mix out for multi-label data "
             f"({why})"),
            (self.sampler == "balanced", "sampler: balanced draws by one class per image; use class_weights for "
             f"multi-label data ({why})"),
            (bool(self.logit_adjust), "logit_adjust: needs one class per image; use class_weights for multi-label "
             f"data ({why})"),
        ]  # fmt: skip
        for bad, message in refused:
            if bad:
                raise ConfigError(message)

    @classmethod
    def of(cls, config: TrainConfig) -> ClassifyConfig:
        """``config`` as a ClassifyConfig (a plain TrainConfig gets this class's defaults for the rest)."""
        if isinstance(config, cls):
            return config
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)})

    @property
    def preset_decides_freeze(self) -> bool:
        """more-data freezes the stem and the first half of the stages when no freeze is given."""
        return self.preset == "more-data"

    @classmethod
    def settings_as_now(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """Runs written before :data:`SETTINGS_FORMAT` 2 saved ``freeze: 0`` when no freeze was given, which beside
        ``preset: more-data`` meant the preset's (half the stages frozen)."""
        older = settings.get(SETTINGS_FORMAT, 1) < 2
        if older and settings.get("preset") == "more-data" and settings.get("freeze") == 0:
            return {**settings, "freeze": None}
        return settings

    @property
    def layer_decay(self) -> float | None:
        """The llrd factor in force: ``llrd``, or the more-data preset's."""
        if self.llrd is not None:
            return self.llrd
        return MORE_DATA_LLRD if self.preset == "more-data" else None
