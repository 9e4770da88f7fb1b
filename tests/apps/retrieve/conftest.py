from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

#: a LeNet-5 retrieval model file (random weights, GeM pooling, 8-d): a real network that loads in seconds
TINY_MODEL = Path(__file__).resolve().parents[2] / "fixtures" / "model_files_v1" / "retrieve.safetensors"


@pytest.fixture(scope="session")
def stand_ins() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stand_ins", Path(__file__).with_name("stand_ins.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_embedder():
    from cnnapps.apps.retrieve.embedder import Embedder

    return Embedder(TINY_MODEL, device="cpu")
