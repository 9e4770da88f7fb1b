"""Settings of ``cnnapps train semantic`` and ``cnnapps train panoptic`` (plain data: the command line is built
from them; no torch here)."""

from __future__ import annotations

from dataclasses import dataclass

from cnnapps.apps.common.config import MORE_PANEL, ConfigError, TrainConfig, option

#: the semantic heads: torchvision's FCN, DeepLabV3 and LR-ASPP heads, and Panoptic FPN's semantic branch
HEAD_KINDS = ("fcn", "deeplabv3", "lraspp", "fpn")
#: semantic augmentation presets (described in cnnapps.datasets.semantic.SEMANTIC_PRESETS)
SEMANTIC_AUGMENT = ("default", "none")


@dataclass
class SemanticConfig(TrainConfig):
    """``data``: a Pascal VOC root, an image folder with masks, or a COCO JSON; see cnnapps.datasets.semantic."""

    data: str = option("", "Pascal VOC root, an image folder (images/ + masks/, or --masks DIR), or a COCO JSON.")
    masks: str | None = option(None, "Mask PNG folder for an image folder: class indices, palette or colour PNGs.")
    images: str | None = option(None, "Image folder of a COCO JSON.")
    classes: str | None = option(
        None, "Class list: one name per line, optionally with its colour R G B [default: classes.txt of the data; "
        "VOC's 21 classes for a VOC root]."
    )  # fmt: skip
    val_data: str | None = option(None, "Validation data [default: VOC's val list, or hold out --val-split].")
    val_masks: str | None = option(
        None, "Mask folder of --val-data [default: the masks it holds: images/ + masks/, or a VOC root]."
    )
    val_images: str | None = option(None, "Validation image folder of a COCO JSON [default: --images].")
    ignore_index: int = option(255, "Mask value left out of the loss and the scores.", panel=MORE_PANEL)
    head: str = option("fpn", "fcn, deeplabv3, lraspp or fpn (Panoptic FPN's semantic branch).", choices=HEAD_KINDS)
    output_stride: int | None = option(
        None, "8 or 16: dilate the later stages (torchvision ResNets, timm nets with output_stride) "
        "[default: the backbone as it is]."
    )  # fmt: skip
    aux_loss: bool = option(
        False, "An auxiliary FCN head on the stage before last (weight 0.5), as torchvision trains."
    )
    head_channels: int | None = option(None, "Width of the ASPP, LR-ASPP or FPN head [default: 256, 128, 128].")
    weights: str | None = option(
        "imagenet", "imagenet (backbone only), coco (torchvision's COCO-VOC model of --head on resnet50/101), none or "
        "a file."
    )  # fmt: skip
    dropout: float = option(0.0, cli=False)
    batch_size: int = option(8, "Images per step on each process.")
    epochs: int = option(20, "Passes over the training set.")
    augment: str = option(
        "default", "default (flip, scale, shift, rotation, colour) or none.", choices=SEMANTIC_AUGMENT
    )
    input_size: int | None = option(None, "Train and predict at this side length (images are resized to a square).")
    patience: int | None = option(None, "Stop after this many epochs without a better mIoU.")
    out: str = option("runs/semantic", "Run folder (an earlier run there is never overwritten).")

    task_name = "semantic"

    def validate(self) -> SemanticConfig:
        if self.data and self.data.lower().endswith(".json") and not self.images:
            raise ConfigError("images: required (the folder the COCO file's file_name entries are relative to)")
        super().validate()
        if self.output_stride is not None and self.output_stride not in (8, 16):
            raise ConfigError(f"output_stride: 8 or 16, not {self.output_stride}")
        if self.output_stride is not None and self.trunk:
            raise ConfigError("output_stride: a --trunk is shared as it is; its stages cannot be dilated")
        if self.head_channels is not None and self.head_channels < 1:
            raise ConfigError(f"head_channels: must be at least 1, not {self.head_channels}")
        if not 0 <= self.ignore_index <= 65535:
            raise ConfigError(f"ignore_index: must be between 0 and 65535, not {self.ignore_index}")
        return self


@dataclass
class PanopticConfig(TrainConfig):
    """Joins a semantic head (stuff) and a Mask R-CNN head (things) trained on one trunk, and chooses the merge
    thresholds by PQ on ``data`` (a COCO panoptic JSON)."""

    data: str = option("", "COCO panoptic JSON that chooses the merge thresholds (its PNGs in <json without .json>/).")
    images: str = option("", "Image folder of the panoptic JSON.")
    semantic_model: str = option("", "Model file with the semantic head (stuff; trained with or as the trunk).")
    segment_model: str = option("", "Model file with the Mask R-CNN head (things; trained on the same trunk).")
    score_thresholds: str = option("0.3,0.5,0.7", "Instance scores to try (Panoptic FPN: 0.5), comma-separated.")
    overlap_thresholds: str = option("0.5", "Largest share of an instance already covered, to try (0.5).")
    stuff_areas: str = option(
        "0,64,256", "Smallest stuff regions to keep, in pixels, to try (Panoptic FPN: 4096 on COCO's 800 px images)."
    )  # fmt: skip
    out: str = option("runs/panoptic", "Run folder (an earlier run there is never overwritten).")
    batch_size: int = option(2, cli=False)
    backbone: str = option("", cli=False)
    weights: str | None = option(None, cli=False)
    trunk: str | None = option(None, cli=False)
    freeze: int = option(0, cli=False)
    epochs: int = option(1, cli=False)
    lr: float | None = option(None, cli=False)
    optimizer: str = option("adamw", cli=False)
    momentum: float = option(0.9, cli=False)
    weight_decay: float = option(1e-4, cli=False)
    schedule: str = option("none", cli=False)
    label_smoothing: float = option(0.0, cli=False)
    dropout: float = option(0.0, cli=False)
    augment: str = option("none", cli=False)
    input_size: int | None = option(None, cli=False)
    val_split: float = option(0.2, cli=False)
    patience: int | None = option(None, cli=False)
    resume: bool = option(False, cli=False)
    workers: int | None = option(None, cli=False)
    devices: int = option(1, cli=False)
    num_nodes: int = option(1, cli=False)
    strategy: str = option("auto", cli=False)
    sync_batchnorm: bool = option(False, cli=False)
    lr_scaling: str = option("none", cli=False)
    precision: str = option("auto", cli=False)
    seed: int = option(0, cli=False)
    compile: bool = option(False, cli=False)
    augment_on: str = option("auto", cli=False)
    accumulate: int = option(1, cli=False)
    logger: str = option("csv,tensorboard", cli=False)
    mlflow_uri: str | None = option(None, cli=False)
    experiment: str | None = option(None, cli=False)

    task_name = "panoptic"

    def validate(self) -> PanopticConfig:
        super().validate()
        if not self.images:
            raise ConfigError("images: required (the image folder of the panoptic JSON)")
        if not self.semantic_model or not self.segment_model:
            raise ConfigError("semantic_model and segment_model: both required (they may name one multi-head file)")
        for name in ("score_thresholds", "overlap_thresholds", "stuff_areas"):
            values = self.grid(name)
            if not values:
                raise ConfigError(f"{name}: give one or more numbers, comma-separated")
        if not all(0 <= v <= 1 for v in self.grid("score_thresholds") + self.grid("overlap_thresholds")):
            raise ConfigError("score_thresholds and overlap_thresholds: numbers between 0 and 1")
        if not all(v >= 0 for v in self.grid("stuff_areas")):
            raise ConfigError(f"stuff_areas: pixel counts of 0 or more, not {self.stuff_areas}")
        return self

    def grid(self, name: str) -> list[float]:
        """The numbers of one of the comma-separated settings."""
        text = getattr(self, name)
        try:
            return [float(v) for v in str(text).split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"{name}: {text!r} is not a comma-separated list of numbers") from None
