"""Result objects shared by every task: plain data with ``to_dict()``, ``to_json()`` and ``draw()``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Result:
    """One input's outcome: ``source`` names it; ``error`` is set when it could not be processed."""

    source: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


@dataclass
class Prediction:
    label: str
    index: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index, "score": round(float(self.score), 6)}


@dataclass
class ClassificationResult(Result):
    predictions: list[Prediction] = field(default_factory=list)

    @property
    def top1(self) -> Prediction | None:
        return self.predictions[0] if self.predictions else None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.source, "error": self.error}
        return {"path": self.source, "predictions": [p.to_dict() for p in self.predictions]}

    def draw(self, image: np.ndarray, width: int = 640) -> np.ndarray:
        """The image with its top-k as labelled bars underneath (RGB uint8)."""
        import cv2

        h, w = image.shape[:2]
        scale = width / w
        img = cv2.resize(image, (width, max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        rows = max(1, len(self.predictions))
        panel = np.full((28 * rows + 12, width, 3), 255, np.uint8)
        for i, p in enumerate(self.predictions):
            y = 8 + 28 * i
            bar = int((width - 20) * float(p.score))
            cv2.rectangle(panel, (10, y), (10 + bar, y + 22), (66, 135, 245), -1)
            text = f"{p.label}  {p.score:.1%}"
            cv2.putText(panel, text, (14, y + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        if self.error:
            cv2.putText(panel, self.error[:80], (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (200, 0, 0), 1, cv2.LINE_AA)
        return np.vstack([img, panel])


@dataclass
class RetrievalResult(Result):
    """One query's ranked neighbours (``hits`` hold rank, path and cosine similarity)."""

    hits: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"query": self.source, "error": self.error}
        return {"query": self.source, "results": [h.to_dict() for h in self.hits]}
