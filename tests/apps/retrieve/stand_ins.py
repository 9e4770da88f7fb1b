"""What the index tests share, also with the processes they start and kill: tiny PNGs and an embedder without a
network (each image's vector is drawn from a generator seeded by its pixels), fast enough to build in a subprocess.

Load it in a script with ``exec(PRELUDE)`` (a subprocess does not see the tests' import path).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import cv2
import numpy as np

PRELUDE = (
    "import importlib.util\n"
    f"_spec = importlib.util.spec_from_file_location('stand_ins', {str(Path(__file__).resolve())!r})\n"
    "stand_ins = importlib.util.module_from_spec(_spec)\n"
    "_spec.loader.exec_module(stand_ins)\n"
)


def write_png(path: str | os.PathLike, seed: int, size: int = 24) -> str:
    """A small random colour image, written through Python so that any file name works."""
    image = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(cv2.imencode(".png", image)[1].tobytes())
    return os.fspath(path)


class PixelEmbedder:
    """Decodes each file (a file that does not decode fails, as with a network) and draws its unit vector from
    a generator seeded by the pixels. ``delay`` seconds per image make a build slow enough to kill midway."""

    spec, pooling, fingerprint = "pixels", "avg", "pixels"

    def __init__(self, dim: int = 32, delay: float = 0.0) -> None:
        self.dim = dim
        self.delay = delay
        self.embedded: list[str] = []

    def describe(self) -> dict:
        return {"model": self.spec, "fingerprint": self.fingerprint, "pooling": self.pooling, "dim": self.dim}

    def vector(self, pixels: np.ndarray) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(pixels.tobytes()).digest()[:8], "little")
        v = np.random.default_rng(seed).normal(size=self.dim)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def embed(self, paths, progress=None):
        vectors = np.full((len(paths), self.dim), np.nan, np.float32)
        errors: list[str | None] = []
        for i, path in enumerate(paths):
            time.sleep(self.delay)
            try:
                data = np.frombuffer(Path(path).read_bytes(), np.uint8)
            except FileNotFoundError:
                errors.append("no such file")
                continue
            pixels = cv2.imdecode(data, cv2.IMREAD_COLOR) if len(data) else None
            if pixels is None:
                errors.append("not an image")
                continue
            vectors[i] = self.vector(pixels)
            errors.append(None)
            self.embedded.append(os.fspath(path))
            if progress is not None:
                progress(1)
        return [os.fspath(p) for p in paths], vectors, errors
