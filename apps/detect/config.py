"""Settings of ``cnnapps train detect|segment|pose`` (plain data: the command line is built from them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnnapps.apps.common.config import MORE_PANEL, ConfigError, TrainConfig, option

#: the detection tasks and the torchvision meta-architecture that serves each
TASKS = {"detect": "FasterRCNN", "segment": "MaskRCNN", "pose": "KeypointRCNN"}
#: torchvision's head styles: v1 (the original R-CNN heads) or v2 (conv heads with batch norm)
HEAD_STYLES = ("v1", "v2")
#: detection augmentation presets (described in cnnapps.datasets.transforms.DETECTION_PRESETS)
DETECTION_AUGMENT = ("default", "none")


@dataclass
class DetectConfig(TrainConfig):
    """``data``: a COCO JSON (``images``: its image folder) or another annotation format read into COCO in memory
    (YOLO, Pascal VOC, LabelMe, CVAT; see cnnapps.datasets.formats); without ``val_data`` a ``val_split`` is held
    out."""

    task: str = option("segment", "detect, segment or pose.", choices=tuple(TASKS), cli=False)
    data: str = option(
        "",
        "COCO annotation JSON (instances or person keypoints), or a YOLO folder or data.yaml, a Pascal VOC "
        "folder, a LabelMe folder, a CVAT XML (read into COCO in memory).",
    )
    images: str = option(
        "", "Folder the JSON's file_name entries are in [default for the other formats: where the format keeps them]."
    )
    val_data: str | None = option(
        None,
        "Validation annotations, any of --data's formats [default: the data's own val split, else hold out "
        "--val-split].",
    )
    val_images: str | None = option(None, "Validation image folder [default: --images].")
    backbone: str = option("resnet50", "Registry name, e.g. resnet50 or timm:convnext_tiny.")
    weights: str | None = option(
        "imagenet", "imagenet (backbone only), coco (torchvision's COCO model, resnet50), none or a file."
    )
    batch_size: int = option(4, "Images per step on each process.")
    epochs: int = option(12, "Passes over the training set.")
    lr: float | None = option(None, "Learning rate [default: 1e-4 for adamw, 0.02 x batch/16 for sgd].")
    augment: str = option("default", "default or none.", choices=DETECTION_AUGMENT)
    patience: int | None = option(None, "Stop after this many epochs without a better AP.")
    trainable_stages: int | None = option(None, "Train the last N backbone stages [default: 3 when pretrained].")
    fpn: bool | None = option(None, "An FPN over the stage maps [default: yes, but for VGG, AlexNet, LeNet-5].")
    fpn_channels: int = option(256, "FPN width; the heads scale with it.")
    heads: str = option("v1", "v1 or v2 (torchvision's conv heads with batch norm).", choices=HEAD_STYLES,
                        panel=MORE_PANEL)  # fmt: skip
    input_size: int | None = option(None, "Not taken by R-CNN models: --min-size and --max-size set their resize.")
    min_size: int = option(800, "Shorter side images are resized to.")
    max_size: int = option(1333, "Longest side limit.")
    options: dict[str, Any] = option(cli=False, factory=dict)  # torchvision R-CNN keyword arguments
    label_smoothing: float = option(0.0, cli=False)  # not used by the R-CNN losses
    dropout: float = option(0.0, cli=False)  # no dropout in the R-CNN heads
    out: str = option("", "Run folder [default: runs/<task>].")

    @property
    def task_name(self) -> str:  # type: ignore[override]
        return self.task

    def validate(self) -> DetectConfig:
        if self.task not in TASKS:
            raise ConfigError(f"task: {self.task!r} is not one of {', '.join(TASKS)}")
        if self.data and not self.images and _coco_file(self.data):
            raise ConfigError("images: required (the folder the COCO file's file_name entries are relative to)")
        super().validate()
        if self.input_size is not None:  # R-CNN models resize images themselves
            how = "a --trunk brings its own preprocessing" if self.trunk else "--min-size and --max-size set the resize"
            raise ConfigError(f"input_size: {self.task} models do not take it ({how}); leave input_size out")
        if not 32 <= self.min_size <= self.max_size <= 4096:
            raise ConfigError(
                f"min_size/max_size: need 32 <= min_size <= max_size <= 4096, not {self.min_size}/{self.max_size}"
            )
        from cnnapps.apps.modelfile import HEAD_SETTING_LIMITS

        most = HEAD_SETTING_LIMITS["fpn_channels"]  # a model file of a wider FPN is refused when read
        if not 1 <= self.fpn_channels <= most:
            raise ConfigError(f"fpn_channels: must be between 1 and {most:,}, not {self.fpn_channels}")
        self.out = self.out or f"runs/{self.task}"
        return self

    def default_lr(self) -> float:
        return 0.02 * self.batch_size / 16 if self.optimizer == "sgd" else 1e-4


def _coco_file(data: str) -> bool:
    """Whether ``data`` is a COCO JSON file (which needs ``images``); other formats know where their images are."""
    from pathlib import Path

    from cnnapps.datasets.formats import FormatError, other_format

    try:
        return other_format(Path(data)) is None
    except FormatError:
        return False  # not readable as any format: said when the data is read
