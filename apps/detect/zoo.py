"""The detection tasks and torchvision's COCO model-zoo names (plain data: no torch import)."""

from __future__ import annotations

from typing import Any

from cnnapps.apps.detect.config import TASKS
from cnnapps.datasets.coco import COCO_KEYPOINTS, COCO_OKS_SIGMAS, COCO_SKELETON
from cnnapps.datasets.formats.hub import flip_index_from_names

__all__ = ["COCO_KEYPOINTS", "COCO_OKS_SIGMAS", "COCO_SKELETON", "TASKS", "ZOO",
           "zoo_models"]  # fmt: skip

#: name -> (task, head style, torchvision weights enum, enum member). Each loads COCO weights through the hub cache.
ZOO: dict[str, tuple[str, str, str, str]] = {
    "fasterrcnn_resnet50_fpn": ("detect", "v1", "FasterRCNN_ResNet50_FPN_Weights", "COCO_V1"),
    "fasterrcnn_resnet50_fpn_v2": ("detect", "v2", "FasterRCNN_ResNet50_FPN_V2_Weights", "COCO_V1"),
    "maskrcnn_resnet50_fpn": ("segment", "v1", "MaskRCNN_ResNet50_FPN_Weights", "COCO_V1"),
    "maskrcnn_resnet50_fpn_v2": ("segment", "v2", "MaskRCNN_ResNet50_FPN_V2_Weights", "COCO_V1"),
    "keypointrcnn_resnet50_fpn": ("pose", "v1", "KeypointRCNN_ResNet50_FPN_Weights", "COCO_V1"),
}


def zoo_models(task: str, weights: bool = False) -> dict[str, dict]:
    """The named ready models of one detection task (the task table's ``zoo``): for each, a description and,
    with ``weights``, where its COCO weights are (bundled/cached/downloadable, URL, cache path; imports torchvision)."""
    rows = {}
    for name, (zoo_task, style, enum_name, member) in ZOO.items():
        if zoo_task != task:
            continue
        row: dict = {"family": "rcnn", "source": "torchvision", "task": task,
                     "description": f"{task}: COCO-trained R-CNN on ResNet-50-FPN, {style} heads"}  # fmt: skip
        if weights:
            import os

            import torchvision.models.detection as detection

            from cnnapps.backbones.weights import WeightsStatus, hub_checkpoint_path

            url = getattr(detection, enum_name)[member].url
            path = hub_checkpoint_path(os.path.basename(url))
            state = "cached" if path.is_file() else "downloadable"
            row["weights"] = WeightsStatus(state, url=url, path=str(path)).to_dict()
        rows[name] = row
    return rows


def data_flip_index(data: Any) -> list[int]:
    """A pose data set's flip index: its own (a YOLO ``flip_idx``, a COCO category's ``flip_index``), else the one
    its keypoint names give."""
    return data.flip_index or flip_index_from_names(data.keypoint_names)
