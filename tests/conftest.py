"""Shared fixtures: tiny data made on the fly (a labelled colour set, one small trained model); no network."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import cv2
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Downloads fail as they do offline, and the hub cache is an empty temporary folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))

    def refuse(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network disabled in tests")

    try:
        import torch.hub
    except ImportError:  # pragma: no cover
        return
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture()
def run_cli(capsys: pytest.CaptureFixture[str]):
    """Run the ``cnnapps`` command in-process: ``run_cli(*args) -> (exit code, stdout, stderr)``."""
    from cnnapps.cli import main

    def run(*args: object) -> tuple[int, str, str]:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def chelsea():
    from skimage import data

    return data.chelsea()


COLOURS = {"blue": (40, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}


def write_colour_set(root: Path, per_class: int = 10, seed: int = 0) -> Path:
    """Class folders of 40x40 PNGs: a noisy square of the class colour on a grey background."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.full((40, 40, 3), 128, np.uint8)
            x, y = rng.integers(0, 16, size=2)
            img[y : y + 24, x : x + 24] = rgb
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / f"{i:02d}.png"), img[:, :, ::-1])
    return root


@pytest.fixture(scope="session")
def colour_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colour_set(tmp_path_factory.mktemp("colours"))


def _tiny_config(data: Path, out: Path, **overrides):
    """A LeNet-5 run small enough for tests: a few epochs of batches of 8, no worker processes."""
    from cnnapps.apps.common.config import load_config

    settings = dict(
        data=str(data), backbone="lenet5", weights="none", epochs=4, batch_size=8, lr=0.01, workers=0,
        progress=False, augment="none", out=str(out), val_split=0.3, dropout=0.0, backbone_kwargs={"in_channels": 3},
    )  # fmt: skip
    settings.update(overrides)
    return load_config(None, **settings)


@pytest.fixture(scope="session")
def tiny_config():
    return _tiny_config


@pytest.fixture(scope="session")
def trained(colour_set: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A LeNet-5 run on the colour set: (run folder, metrics)."""
    from cnnapps.apps.classify.train import train_classifier

    out = tmp_path_factory.mktemp("runs") / "colours"
    metrics = train_classifier(_tiny_config(colour_set, out))
    return out, metrics


def rewrite_metadata_file(source: Path, target: Path, edit) -> Path:
    """A copy of a model file whose cnnapps header went through ``edit`` (tensors untouched), as a file of another
    version or a hand-edited one would be; ``edit`` returns the new header, or None having changed it in place."""
    import json
    import struct

    data = source.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + size])
    meta = json.loads(header["__metadata__"]["cnnapps"])
    edited = edit(meta)
    header["__metadata__"]["cnnapps"] = json.dumps(meta if edited is None else edited)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    target.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + size :])
    return target


@pytest.fixture(scope="session")
def rewrite_metadata():
    """:func:`rewrite_metadata_file`, for tests that take it as a fixture."""
    return rewrite_metadata_file
