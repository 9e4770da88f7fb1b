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


def test_a_file_s_unknown_pooling_is_named_as_its_header_key(tmp_path) -> None:
    """It was "--pooling max??: choose one of avg, gem", an option the user never gave."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    import cnnapps
    from cnnapps.apps.retrieve.embedder import EmbeddingModel, save_embedding_model
    from cnnapps.backbones import create_backbone
    from cnnapps.backbones.preprocess import Preprocess

    model = EmbeddingModel(create_backbone("lenet5", weights=None, in_channels=3), "avg", 8)
    path = tmp_path / "model.safetensors"
    save_embedding_model(path, model, trunk_name="lenet5", trunk_kwargs={"in_channels": 3},
                         preprocess=Preprocess(input_size=(3, 32, 32), resize=32))  # fmt: skip
    with safe_open(str(path), framework="pt") as fh:
        tensors, header = {k: fh.get_tensor(k) for k in fh.keys()}, json.loads(fh.metadata()["cnnapps"])  # noqa: SIM118
    header["heads"]["retrieve"]["kwargs"]["pooling"] = "max??"
    save_file(tensors, str(path), metadata={"cnnapps": json.dumps(header)})
    with pytest.raises(CnnappsError) as caught:
        cnnapps.load(path, task="retrieve", device="cpu")
    assert str(caught.value) == (f"{path}: heads.retrieve: its settings do not build a retrieve head (ValueError: "
                                 "pooling must be one of avg, gem, not 'max??')")  # fmt: skip
