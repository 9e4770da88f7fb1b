"""Shared fixtures: tiny data made on the fly, and no network ever."""

from __future__ import annotations

import urllib.error

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


@pytest.fixture(scope="session")
def chelsea():
    from skimage import data

    return data.chelsea()
