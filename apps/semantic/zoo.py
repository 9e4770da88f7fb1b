"""torchvision's semantic segmentation models by name (plain data: no torch import until weights are asked about).

Each is trained on a subset of COCO with Pascal VOC's 21 classes; its weights come through the torch hub cache.
"""

from __future__ import annotations

from typing import Any

_VOC = "COCO_WITH_VOC_LABELS_V1"
_MOBILENET = "mobilenet_v3_large"
#: name -> (head, backbone, torchvision weights enum, enum member, resize of the shorter side)
ZOO: dict[str, tuple[str, str, str, str, int]] = {
    "fcn_resnet50": ("fcn", "resnet50", "FCN_ResNet50_Weights", _VOC, 520),
    "fcn_resnet101": ("fcn", "resnet101", "FCN_ResNet101_Weights", _VOC, 520),
    "deeplabv3_resnet50": ("deeplabv3", "resnet50", "DeepLabV3_ResNet50_Weights", _VOC, 520),
    "deeplabv3_resnet101": ("deeplabv3", "resnet101", "DeepLabV3_ResNet101_Weights", _VOC, 520),
    "deeplabv3_mobilenet_v3_large": ("deeplabv3", _MOBILENET, "DeepLabV3_MobileNet_V3_Large_Weights", _VOC, 520),
    "lraspp_mobilenet_v3_large": ("lraspp", _MOBILENET, "LRASPP_MobileNet_V3_Large_Weights", _VOC, 520),
}

_WHAT = {"fcn": "FCN", "deeplabv3": "DeepLabV3", "lraspp": "LR-ASPP"}


def weights_url(name: str) -> str:
    import torchvision.models.segmentation as segmentation

    _, _, enum_name, member, _ = ZOO[name]
    return getattr(segmentation, enum_name)[member].url


def zoo_models(task: str, weights: bool = False) -> dict[str, dict[str, Any]]:
    """The task table's ``zoo``: torchvision's VOC-class models, each with a description and, with ``weights``,
    where its checkpoint is (cached or downloadable, URL, hub cache path)."""
    rows = {}
    for name, (head, backbone, _, _, _) in ZOO.items():
        what = f"{task}: {_WHAT[head]} on {backbone}, Pascal VOC's 21 classes"
        row: dict[str, Any] = {"family": head, "source": "torchvision", "task": task, "description": what}
        if weights:
            import os

            from cnnapps.backbones.weights import WeightsStatus, hub_checkpoint_path

            url = weights_url(name)
            path = hub_checkpoint_path(os.path.basename(url))
            row["weights"] = WeightsStatus(
                "cached" if path.is_file() else "downloadable", url=url, path=str(path)
            ).to_dict()
        rows[name] = row
    return rows
