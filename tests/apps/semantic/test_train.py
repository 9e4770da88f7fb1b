"""Which data semantic training reads: a validation set finds its own masks (``--val-masks``, or its own layout),
never those of the training ``--masks`` folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnnapps.apps.semantic.config import SemanticConfig
from cnnapps.apps.semantic.train import read_data
from cnnapps.datasets.semantic import SemanticDataError


def _pairs(images, masks, value: int) -> None:
    """Two 4x4 images a.png and b.png in ``images`` and, with ``masks``, their masks of class ``value`` there."""
    images.mkdir(parents=True, exist_ok=True)
    for name in ("a", "b"):
        Image.new("RGB", (4, 4)).save(images / f"{name}.png")
        if masks is not None:
            masks.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4), value, np.uint8)).save(masks / f"{name}.png")


def test_validation_masks_are_the_validation_datas_own(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\n")
    _pairs(tmp_path / "train", tmp_path / "train_masks", 0)  # file names as the validation images'
    _pairs(tmp_path / "val" / "images", tmp_path / "val" / "masks", 1)
    classes = str(tmp_path / "classes.txt")
    common = {"data": str(tmp_path / "train"), "masks": str(tmp_path / "train_masks"), "classes": classes}
    _, val = read_data(SemanticConfig(**common, val_data=str(tmp_path / "val")))
    assert [item.mask.parent.name for item in val.items] == ["masks", "masks"]
    assert val.load(0)[1].min() == 1  # its own truth, not the training mask of the same name
    given = {"val_data": str(tmp_path / "val" / "images"), "val_masks": str(tmp_path / "val" / "masks")}
    _, val = read_data(SemanticConfig(**common, **given))
    assert val.load(1)[1].min() == 1
    _pairs(tmp_path / "flat", None, 0)
    with pytest.raises(SemanticDataError, match=r"flat: no masks for the validation images .* with --val-masks$"):
        read_data(SemanticConfig(**common, val_data=str(tmp_path / "flat")))
    for name in ("val_masks", "val_images"):  # without --val-data they were ignored, not a word said
        with pytest.raises(SemanticDataError, match=rf"^--{name.replace('_', '-')} .*: it belongs to --val-data"):
            read_data(SemanticConfig(**common, **{name: str(tmp_path / "val" / "masks")}))
