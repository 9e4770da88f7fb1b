"""The embedder's options are checked in one line before any model is loaded."""

from __future__ import annotations

import pytest

from cnnapps.apps.retrieve.embedder import Embedder
from cnnapps.errors import CnnappsError


@pytest.mark.parametrize("batch_size", [0, -1, "4", 2.5])
def test_a_batch_size_that_is_not_a_whole_number_of_at_least_1_is_one_line(batch_size) -> None:
    with pytest.raises(CnnappsError) as caught:
        Embedder("efficientnet_lite0", device="cpu", batch_size=batch_size)
    assert str(caught.value) == f"batch_size={batch_size!r}: images per forward pass, a whole number of at least 1"
