"""scikit-learn's real handwritten digits (1,797 scans, 8x8) as a class-per-folder image set."""

from __future__ import annotations

import os
from pathlib import Path

from cnnapps.errors import CnnappsError


def export_digits(out: str | os.PathLike, size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> dict[str, int]:
    """Write ``out/train/<digit>/*.png`` and ``out/val/<digit>/*.png`` (stratified split); returns counts.

    Refuses a folder that already holds files, so nothing there is overwritten.
    """
    import cv2
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CnnappsError(f"{out}: not empty; choose a new folder for the digits")
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    index = np.arange(len(images))
    train_idx, val_idx = train_test_split(index, test_size=val_fraction, stratify=digits.target, random_state=seed)
    for split, members in (("train", train_idx), ("val", val_idx)):
        for i in members:
            folder = out / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            big = cv2.resize(images[i], (size, size), interpolation=cv2.INTER_LINEAR)
            cv2.imwrite(str(folder / f"{i:04d}.png"), big)
    return {"train": len(train_idx), "val": len(val_idx)}
