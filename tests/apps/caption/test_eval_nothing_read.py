"""An evaluation of which no image could be read is one line (exit 2), not a report of no scores (exit 1)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cnnapps.apps.caption.evaluate import evaluate_captioner
from cnnapps.errors import CnnappsError


class Unreadable:
    beam = 1

    def predict(self, paths, progress=None):
        return [SimpleNamespace(source=p, ok=False, error="no such file", caption=None) for p in paths]


def test_no_readable_image_is_one_line() -> None:
    items = [SimpleNamespace(path=f"/gone/{i}.jpg", image_id=i, captions=["a red square"]) for i in range(3)]
    with pytest.raises(CnnappsError, match=r"^none of the 3 images could be read \(the first, /gone/0\.jpg: no such "
                       r"file\)$"):  # fmt: skip
        evaluate_captioner(Unreadable(), items)
