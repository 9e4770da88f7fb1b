"""Detection, instance segmentation and keypoint pose on torchvision R-CNN heads over any registry backbone."""
