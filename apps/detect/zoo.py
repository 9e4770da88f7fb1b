"""The detection tasks and torchvision's COCO model-zoo names (plain data: no torch import)."""

from __future__ import annotations

#: task -> the torchvision meta-architecture that serves it
TASKS = {"detect": "FasterRCNN", "segment": "MaskRCNN", "pose": "KeypointRCNN"}

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


#: what ``cnnapps detect|segment|pose`` use when no --model is given
DEFAULT_MODELS = {
    "detect": "fasterrcnn_resnet50_fpn",
    "segment": "maskrcnn_resnet50_fpn",
    "pose": "keypointrcnn_resnet50_fpn",
}

#: COCO's 17 person keypoints, their OKS sigmas and skeleton (1-based pairs, as in COCO's categories)
COCO_KEYPOINTS = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
COCO_OKS_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)  # fmt: skip
COCO_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip


def flip_index(names: list[str] | tuple[str, ...]) -> list[int]:
    """For each keypoint, the one it becomes under a horizontal flip: ``left_*`` <-> ``right_*``, others stay."""
    position = {n: i for i, n in enumerate(names)}
    out = []
    for i, name in enumerate(names):
        for a, b in (("left", "right"), ("right", "left"), ("l_", "r_"), ("r_", "l_")):
            if name.startswith(a) and name.replace(a, b, 1) in position:
                out.append(position[name.replace(a, b, 1)])
                break
        else:
            out.append(i)
    return out
