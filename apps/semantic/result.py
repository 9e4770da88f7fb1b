"""What semantic and panoptic predictions return: a class for every pixel, or a segment for every pixel.

Plain numpy (OpenCV and PIL when drawing or saving), like the result types of ``cnnapps.results``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnapps.results import Result, as_rgb

_BACKGROUND = ("background", "__background__")


def _blend(image: np.ndarray, colour_map: np.ndarray, painted: np.ndarray, alpha: float) -> np.ndarray:
    out = image.copy()
    out[painted] = (image[painted] * (1 - alpha) + colour_map[painted] * alpha).astype(np.uint8)
    return out


def _legend(image: np.ndarray, entries: list[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """A strip under the image: a swatch and a name per entry."""
    import cv2

    if not entries:
        return image
    width = max(image.shape[1], 240)
    if image.shape[1] != width:
        image = cv2.resize(
            image, (width, round(image.shape[0] * width / image.shape[1])), interpolation=cv2.INTER_NEAREST
        )
    per_row = max(1, width // 150)
    rows = (len(entries) + per_row - 1) // per_row
    strip = np.full((22 * rows + 6, width, 3), 255, np.uint8)
    for i, (name, colour) in enumerate(entries):
        x, y = 6 + 150 * (i % per_row), 4 + 22 * (i // per_row)
        cv2.rectangle(strip, (x, y), (x + 16, y + 16), tuple(int(c) for c in colour), -1)
        cv2.putText(strip, name[:18], (x + 22, y + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([image, strip])


@dataclass
class ClassArea:
    label: str
    index: int
    pixels: int
    fraction: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index, "pixels": self.pixels, "fraction": round(self.fraction, 6)}


@dataclass
class SemanticResult(Result):
    """One image's class map (``labels``, (H, W) class indices in the image's own frame)."""

    labels: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    colours: list[list[int]] = field(default_factory=list)  # one RGB colour per class

    @property
    def height(self) -> int:
        return 0 if self.labels is None else int(self.labels.shape[0])

    @property
    def width(self) -> int:
        return 0 if self.labels is None else int(self.labels.shape[1])

    def areas(self) -> list[ClassArea]:
        """The classes present, largest first: pixels and share of the image."""
        if self.labels is None:
            return []
        counts = np.bincount(self.labels.reshape(-1).astype(np.int64), minlength=len(self.class_names))
        total = max(1, int(self.labels.size))
        found = [ClassArea(self._name(i), i, int(n), n / total) for i, n in enumerate(counts) if n]
        return sorted(found, key=lambda a: (-a.pixels, a.index))

    def _name(self, index: int) -> str:
        return self.class_names[index] if index < len(self.class_names) else str(index)

    def to_dict(self) -> dict[str, Any]:
        """``{"path", "width", "height", "classes": [{"label", "index", "pixels", "fraction"}, ...]}``."""
        if self.error is not None:
            return {"path": self.source, "error": self.error}
        return {"path": self.source, "width": self.width, "height": self.height,
                "classes": [a.to_dict() for a in self.areas()]}  # fmt: skip

    def headline(self) -> str:
        """The classes covering at least 1 % of the image, largest first."""
        return ", ".join(a.label for a in self.areas() if a.fraction >= 0.01)

    def summary(self) -> str:
        """The six largest classes with their share of the pixels: ``"sky 54%, grass 46%"``."""
        return ", ".join(f"{a.label} {a.fraction:.0%}" for a in self.areas()[:6])

    def palette(self) -> np.ndarray:
        from cnnapps.datasets.semantic import voc_colormap

        colours = [tuple(c) for c in self.colours] or []
        colours += voc_colormap(max(256, len(self.class_names)))[len(colours) :]
        return np.array(colours, np.uint8)

    def _background(self) -> list[int]:
        return [i for i, n in enumerate(self.class_names) if n in _BACKGROUND]

    def overlay(self, image: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        """The frame (RGB uint8) with each class's colour laid over its pixels (background left clear), at the
        frame's own size and without a legend: every frame of a video comes out its source's size."""
        image = as_rgb(image)
        if self.labels is None:
            return image.copy()
        return _blend(image, self.palette()[self.labels], ~np.isin(self.labels, self._background()), alpha)

    def draw(self, image: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        """The image (RGB uint8) with each class's colour laid over its pixels (background left clear) and a legend."""
        image = as_rgb(image)
        if self.labels is None:
            return image.copy()
        palette, background = self.palette(), self._background()
        entries = [(a.label, tuple(palette[a.index])) for a in self.areas() if a.index not in background]
        return _legend(self.overlay(image, alpha), entries)

    def save_mask(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the class map as an index PNG (a palette PNG whose pixel values are the class indices); an existing
        file is refused (:class:`~cnnapps.files.OutputExistsError`) unless ``overwrite``."""
        from cnnapps.datasets.semantic import write_mask

        return write_mask(path, self.labels, [tuple(c) for c in self.colours], overwrite=overwrite)


@dataclass
class PanopticSegment:
    """One segment: a thing instance (with its detection score) or a stuff region."""

    id: int
    label: str
    category: int  # class index in the model's class list
    isthing: bool
    area: int
    score: float | None = None
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # x0, y0, x1, y1

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "label": self.label, "isthing": self.isthing, "area": self.area,
                               "box": list(self.box)}  # fmt: skip
        if self.score is not None:
            out["score"] = round(float(self.score), 5)
        return out


@dataclass
class PanopticResult(Result):
    """One image's segments and its segment map (``ids``: (H, W), 0 where no segment was kept)."""

    ids: np.ndarray | None = None
    segments: list[PanopticSegment] = field(default_factory=list)
    colours: list[list[int]] = field(default_factory=list)  # one RGB colour per class

    def headline(self) -> str:
        """The things by class, then the stuff: ``"2 person, sky, grass"``."""
        from collections import Counter

        things = Counter(s.label for s in self.segments if s.isthing)
        stuff = dict.fromkeys(s.label for s in self.segments if not s.isthing)
        return ", ".join([*(f"{n} {label}" for label, n in things.most_common()), *stuff])

    def to_dict(self) -> dict[str, Any]:
        """``{"path", "width", "height", "segments": [{"id", "label", "isthing", "area", "box", "score"}, ...]}``."""
        if self.error is not None:
            return {"path": self.source, "error": self.error}
        height, width = (0, 0) if self.ids is None else self.ids.shape
        return {"path": self.source, "width": int(width), "height": int(height),
                "segments": [s.to_dict() for s in self.segments]}  # fmt: skip

    def _palette(self) -> list[tuple[int, int, int]]:
        from cnnapps.datasets.semantic import voc_colormap

        return [tuple(c) for c in self.colours] or voc_colormap(256)

    def draw(self, image: np.ndarray, alpha: float = 0.55) -> np.ndarray:
        """Stuff in its class colour, each thing in a shade of its class colour with its outline, and a legend."""
        image = as_rgb(image)
        if self.ids is None:
            return image.copy()
        palette = self._palette()
        names = dict.fromkeys((s.label, s.category) for s in self.segments)
        return _legend(self.overlay(image, alpha), [(name, palette[c % len(palette)]) for name, c in names])

    def overlay(self, image: np.ndarray, alpha: float = 0.55) -> np.ndarray:
        """Stuff in its class colour, each thing in a shade of its class colour with its outline, at the frame's own
        size and without a legend: every frame of a video comes out its source's size."""
        import cv2

        image = as_rgb(image)
        if self.ids is None:
            return image.copy()
        palette = self._palette()
        colour_map = np.zeros_like(image)
        rng = np.random.default_rng(0)
        for s in self.segments:
            base = np.array(palette[s.category % len(palette)], np.int64)
            colour = np.clip(base + (rng.integers(-50, 51, 3) if s.isthing else 0), 0, 255)
            colour_map[self.ids == s.id] = colour
        out = _blend(image, colour_map, self.ids > 0, alpha)
        for s in self.segments:
            if s.isthing:
                contours, _ = cv2.findContours((self.ids == s.id).astype(np.uint8), cv2.RETR_EXTERNAL,
                                               cv2.CHAIN_APPROX_SIMPLE)  # fmt: skip
                cv2.drawContours(out, contours, -1, (255, 255, 255), 1, cv2.LINE_AA)
        return out

    def save_png(self, path: str | os.PathLike) -> Path:
        """Write the segment map as a COCO panoptic PNG (id = R + 256 G + 256^2 B)."""
        import cv2

        from cnnapps.apps.semantic.pq import id_to_rgb

        path = Path(path)
        if not cv2.imwrite(str(path), id_to_rgb(self.ids)[:, :, ::-1]):
            from cnnapps.errors import CnnappsError

            raise CnnappsError(f"{path}: could not write the panoptic PNG")
        return path
