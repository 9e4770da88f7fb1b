"""Torch datasets for training and validation loaders: labelled images, COCO detection targets, captions,
semantic masks."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cnnapps.datasets.folders import LabeledImages, MultiLabeledImages
from cnnapps.datasets.io import read_image
from cnnapps.datasets.semantic import MaskError, SemanticDataError, SemanticSet
from cnnapps.errors import ImageError

log = logging.getLogger("cnnapps")


class ReadableItems(Dataset):
    """A dataset of items that each need an image read from disk. An item that cannot be read is reported once
    (a warning naming it and why). In a training set it is replaced by the next readable one, so one bad file never
    ends a run; a validation set (``substitute = False``, as :func:`~cnnapps.apps.common.training.make_loaders`
    sets it) gives None in its place, which :func:`readable_only` drops from the batch: every image is scored once.

    Subclasses give ``__len__``, ``source(i)`` (the image's path) and ``load(i, raw)`` (the example from what
    ``read(i)`` returned: the decoded image unless they read more)."""

    substitute = True
    #: what ``read`` raises for an item that is skipped (anything else ends the run)
    skippable: tuple[type[Exception], ...] = (ImageError,)

    def __init__(self) -> None:
        self.skipped: dict[str, str] = {}  # source -> why, each reported once

    def source(self, i: int) -> str:
        raise NotImplementedError

    def read(self, i: int) -> Any:
        return read_image(self.source(i))

    def load(self, i: int, raw: Any) -> Any:
        raise NotImplementedError

    def nothing_readable(self) -> Exception:
        """The error of a set none of whose images could be read. A validation set's names the folder of its images,
        not its first one: the training set may have read every image of its own."""
        if self.substitute:
            return ImageError(self.source(0), "no readable image in the whole dataset")
        folder = os.path.commonpath([self.source(i) for i in range(len(self))]) if len(self) > 1 else self.source(0)
        return ImageError(folder, f"no readable image in the validation set ({len(self)} unreadable)")

    def __getitem__(self, index: int) -> Any:
        n = len(self)
        for step in range(n if self.substitute else 1):
            i = (index + step) % n
            try:
                raw = self.read(i)
            except self.skippable as exc:
                if self.source(i) not in self.skipped:
                    self.skipped[self.source(i)] = str(exc)
                    log.warning("skipping %s", exc)
                continue
            return self.load(i, raw)
        if not self.substitute:
            return None
        raise self.nothing_readable()


def readable_only(collate: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
    """``collate`` over the items of a batch that were read (a validation set gives None for the others); None
    for a batch of which none was."""

    def collate_read(batch: list[Any]) -> Any:
        kept = [item for item in batch if item is not None]
        return collate(kept) if kept else None

    return collate_read


class LabeledImageDataset(ReadableItems):
    """(tensor, label) pairs from labelled image paths (a multi-label set's label is a multi-hot float vector);
    ``with_index`` adds the index of the item the pair came from (an unreadable item's place is taken by the next
    readable one, whose index shows it)."""

    def __init__(self, items: LabeledImages | MultiLabeledImages, transform: Callable[[np.ndarray], np.ndarray],
                 with_index: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.items = items
        self.transform = transform
        self.with_index = with_index

    def __len__(self) -> int:
        return len(self.items)

    def source(self, i: int) -> str:
        return str(self.items.paths[i])

    def load(self, i: int, rgb: np.ndarray) -> tuple[Any, ...]:
        pair = torch.from_numpy(self.transform(rgb)), self.items.target(i)
        return (*pair, i) if self.with_index else pair


class DetectionDataset(ReadableItems):
    """(image tensor in [0, 1], target dict) pairs for torchvision's R-CNN models, from a COCO dataset; with
    ``uint8`` the image stays uint8 (0-255), to be made float where the model trains (a quarter of the bytes)."""

    def __init__(
        self, coco: Any, indices: list[int], transform: Callable[..., Any] | None = None, uint8: bool = False
    ) -> None:
        super().__init__()
        self.coco = coco
        self.indices = list(indices)
        self.transform = transform
        self.uint8 = uint8

    def __len__(self) -> int:
        return len(self.indices)

    def source(self, i: int) -> str:
        return str(self.coco.image_path(self.indices[i]))

    def load(self, i: int, rgb: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        index = self.indices[i]
        target = self.coco.target(index)
        if self.transform is not None:
            rgb, target = self.transform(rgb, target)
        pixels, tensors = to_tensors(rgb, target, self.uint8)
        tensors["image_id"] = torch.tensor(self.coco.image_ids[index])
        return pixels, tensors


def to_tensors(image: np.ndarray, target: Any, uint8: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    tensors = {
        "boxes": torch.as_tensor(target.boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.as_tensor(target.labels, dtype=torch.int64),
    }
    if target.masks is not None:
        tensors["masks"] = torch.as_tensor(np.ascontiguousarray(target.masks), dtype=torch.uint8)
    if target.keypoints is not None:
        tensors["keypoints"] = torch.as_tensor(target.keypoints, dtype=torch.float32)
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    return (pixels.contiguous() if uint8 else to_unit_float(pixels)), tensors


def to_unit_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels as float32 in [0, 1], on whatever device they are (R-CNN models normalise them themselves)."""
    return pixels.float().div_(255.0)


def collate_detection(batch: list[Any]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


class CaptionDataset(ReadableItems):
    """(image tensor, caption ids, item index): a random reference caption per visit when ``train``, else
    the first. No augmentation: flips and crops would make "left of" and "above" captions false."""

    def __init__(self, items: list[Any], vocab: Any, preprocess: Callable[[np.ndarray], np.ndarray], max_len: int,
                 train: bool) -> None:  # fmt: skip
        super().__init__()
        self.items, self.vocab, self.preprocess = items, vocab, preprocess
        self.max_len, self.train = max_len, train

    def __len__(self) -> int:
        return len(self.items)

    def source(self, i: int) -> str:
        return str(self.items[i].path)

    def load(self, i: int, rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, int]:
        item = self.items[i]
        k = int(torch.randint(len(item.captions), ())) if self.train else 0
        ids = torch.tensor(self.vocab.encode(item.captions[k], self.max_len))
        return torch.from_numpy(self.preprocess(rgb)), ids, i


def collate_captions(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Images stacked, captions padded with 0 (``<pad>``) to the longest."""
    images, captions, indices = zip(*batch, strict=True)
    return torch.stack(images), torch.nn.utils.rnn.pad_sequence(captions, batch_first=True), list(indices)


class SemanticDataset(ReadableItems):
    """Semantic segmentation examples. With ``transform`` (training): ``(image (C, h, w), mask (h, w))`` at the
    model's input size. Without it (validation, scored as the model will answer): the image through ``preprocess``
    and the mask at the image's own size. A mask that does not fit its image or class list is skipped as an
    unreadable image is."""

    skippable = (ImageError, MaskError)

    def __init__(self, data: SemanticSet, transform: Callable[..., Any] | None = None,
                 preprocess: Callable[[np.ndarray], np.ndarray] | None = None) -> None:  # fmt: skip
        super().__init__()
        self.data, self.transform, self.preprocess = data, transform, preprocess

    def __len__(self) -> int:
        return len(self.data)

    def source(self, i: int) -> str:
        return str(self.data.items[i].image)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.data.load(i)

    def nothing_readable(self) -> Exception:
        return SemanticDataError(f"{self.data.source}: no image with a usable mask in the whole data set")

    def load(self, i: int, raw: tuple[np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        rgb, mask = raw
        if self.transform is not None:
            image, mask = self.transform(rgb, mask)
        else:
            image = self.preprocess(rgb) if self.preprocess is not None else rgb
        return torch.from_numpy(image), torch.from_numpy(np.ascontiguousarray(mask))


def collate_semantic(batch: list[Any]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Images stacked; masks kept as a list (validation masks keep each image's own size)."""
    images, masks = zip(*batch, strict=True)
    return torch.stack(images), list(masks)
