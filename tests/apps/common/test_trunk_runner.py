"""A shared trunk is prepared on its batch's shape without the batch's memory, and running out of memory while
preparing it is one line naming the model."""

from __future__ import annotations

import pytest
import torch

from cnnapps.apps.common import trunk as trunk_module
from cnnapps.errors import CnnappsError


def test_the_trunk_is_prepared_on_one_image_expanded_and_out_of_memory_is_one_line(monkeypatch):
    seen = []

    def fake_prepare(model, example, device, engine, owned=False):
        seen.append(example)
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 3221225472 bytes")

    class Trunk:
        stages = ()

    monkeypatch.setattr(trunk_module, "prepare_runner", fake_prepare)
    with pytest.raises(
        CnnappsError, match=r"^big\.safetensors: not enough memory for its input size \(3, 4096, 4096\)"
    ):
        trunk_module.TrunkRunner(Trunk(), (3, 4096, 4096), 32, torch.device("cpu"), name="big.safetensors")
    (example,) = seen
    assert example.shape == (32, 3, 4096, 4096) and example.stride(0) == 0  # one image's memory
