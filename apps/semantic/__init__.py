"""Semantic segmentation (a class for every pixel: FCN, DeepLabV3, LR-ASPP and FPN heads over any registry backbone)
and panoptic segmentation (things from a Mask R-CNN head, stuff from a semantic head, on one trunk)."""
