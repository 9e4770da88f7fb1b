"""A torch ``Dataset`` over labelled image paths for training and validation loaders."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cnnapps.datasets.folders import LabeledImages
from cnnapps.datasets.io import read_image
from cnnapps.errors import ImageError

log = logging.getLogger("cnnapps")


class LabeledImageDataset(Dataset):
    """(tensor, label) pairs; an unreadable image is reported once and replaced by the next one."""

    def __init__(self, items: LabeledImages, transform: Callable[[np.ndarray], np.ndarray]) -> None:
        self.items = items
        self.transform = transform
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for step in range(len(self.items)):
            i = (index + step) % len(self.items)
            path = self.items.paths[i]
            try:
                image = read_image(path)
            except ImageError as exc:
                if path not in self._reported:
                    self._reported.add(path)
                    log.warning("skipping %s", exc)
                continue
            return torch.from_numpy(self.transform(image)), self.items.labels[i]
        raise ImageError(self.items.paths[index], "no readable image in the whole dataset")


class DetectionDataset(Dataset):
    """(image tensor in [0, 1], target dict) pairs for torchvision's R-CNN models, from a COCO dataset."""

    def __init__(self, coco: Any, indices: list[int], transform: Callable[..., Any] | None = None) -> None:
        self.coco = coco
        self.indices = list(indices)
        self.transform = transform
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        for step in range(len(self.indices)):
            i = self.indices[(index + step) % len(self.indices)]
            path = self.coco.image_path(i)
            try:
                image = read_image(path)
            except ImageError as exc:
                if str(path) not in self._reported:
                    self._reported.add(str(path))
                    log.warning("skipping %s", exc)
                continue
            target = self.coco.target(i)
            if self.transform is not None:
                image, target = self.transform(image, target)
            pixels, tensors = to_tensors(image, target)
            tensors["image_id"] = torch.tensor(self.coco.image_ids[i])
            return pixels, tensors
        raise ImageError(str(self.coco.image_path(self.indices[index])), "no readable image in the whole dataset")


def to_tensors(image: np.ndarray, target: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    tensors = {
        "boxes": torch.as_tensor(target.boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.as_tensor(target.labels, dtype=torch.int64),
    }
    if target.masks is not None:
        tensors["masks"] = torch.as_tensor(np.ascontiguousarray(target.masks), dtype=torch.uint8)
    if target.keypoints is not None:
        tensors["keypoints"] = torch.as_tensor(target.keypoints, dtype=torch.float32)
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    return pixels, tensors


def collate_detection(batch: list[Any]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


class CaptionDataset(Dataset):
    """(image tensor, caption ids, item index): a random reference caption per visit when ``train``, else
    the first. No augmentation: flips and crops would make "left of" and "above" captions false."""

    def __init__(self, items: list[Any], vocab: Any, preprocess: Callable[[np.ndarray], np.ndarray], max_len: int,
                 train: bool) -> None:  # fmt: skip
        self.items, self.vocab, self.preprocess = items, vocab, preprocess
        self.max_len, self.train = max_len, train
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        for step in range(len(self.items)):
            i = (index + step) % len(self.items)
            item = self.items[i]
            try:
                image = read_image(item.path)
            except ImageError as exc:
                if str(item.path) not in self._reported:
                    self._reported.add(str(item.path))
                    log.warning("skipping %s", exc)
                continue
            k = int(torch.randint(len(item.captions), ())) if self.train else 0
            ids = torch.tensor(self.vocab.encode(item.captions[k], self.max_len))
            return torch.from_numpy(self.preprocess(image)), ids, i
        raise ImageError(str(self.items[index].path), "no readable image in the whole dataset")


def collate_captions(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Images stacked, captions padded with 0 (``<pad>``) to the longest."""
    images, captions, indices = zip(*batch, strict=True)
    return torch.stack(images), torch.nn.utils.rnn.pad_sequence(captions, batch_first=True), list(indices)
