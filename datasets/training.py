"""A torch ``Dataset`` over labelled image paths for training and validation loaders."""

from __future__ import annotations

import logging
from collections.abc import Callable

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
