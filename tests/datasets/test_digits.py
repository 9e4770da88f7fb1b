from __future__ import annotations

from pathlib import Path

import pytest

from cnnapps.datasets.digits import export_digits
from cnnapps.datasets.folders import train_val_split
from cnnapps.datasets.io import read_image
from cnnapps.errors import CnnappsError


def test_digits_become_a_split_image_folder(tmp_path: Path) -> None:
    counts = export_digits(tmp_path / "digits")
    assert counts == {"train": 1437, "val": 360}
    train, val = train_val_split(tmp_path / "digits")
    assert train.class_names == [str(d) for d in range(10)] and len(train) == 1437 and len(val) == 360
    image = read_image(train.paths[0])
    assert image.shape == (32, 32, 3) and image.max() > 200
    with pytest.raises(CnnappsError, match="not empty"):
        export_digits(tmp_path / "digits")
