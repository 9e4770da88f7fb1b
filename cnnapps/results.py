"""Result objects shared by every task: plain data with ``to_dict()``, ``to_json()`` and ``draw()``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


@dataclass
class Result:
    """One input's outcome: ``source`` names it; ``error`` is set when it could not be processed; ``engine`` names
    the inference engine that gave it (metadata: not part of ``to_dict()``, whose answers do not change with it)."""

    source: str
    error: str | None = None
    engine: str | None = field(default=None, kw_only=True, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def with_engine(self) -> dict[str, Any]:
        """``to_dict()`` and, for an answer, the engine that gave it: what ``--json`` prints."""
        return {**self.to_dict(), "engine": self.engine} if self.ok and self.engine else self.to_dict()

    def to_json(self, **kwargs: Any) -> str:
        """The answer as valid JSON (NaN and infinities as null, as the command line prints them)."""
        from cnnapps.terminal import json_safe

        return json.dumps(json_safe(self.to_dict()), **kwargs)

    def headline(self) -> str:
        """What the answer says in a few words (the top class, the objects found, the caption), "" for nothing:
        a video's frames are kept as events where it changes."""
        return ""

    def summary(self) -> str:
        """The answer in one table cell, with its scores where it has them ("" for nothing)."""
        return self.headline()

    def overlay(self, image: np.ndarray) -> np.ndarray:
        """The answer drawn on one video frame (RGB uint8); frames of one video come out the same size."""
        return self.draw(image)  # type: ignore[attr-defined]


def as_rgb(image: Any) -> np.ndarray:
    """Whatever ``predict`` takes (a path, bytes, a PIL image, an array grey, RGBA, 16-bit or float) as the RGB
    uint8 array every ``draw`` works on (a grey or PIL picture made them fail, a float one came back float)."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return image  # a video's frame: as it is
    from cnnapps.datasets.io import read_image

    return read_image(image, max_pixels=None, max_aspect=None)


@dataclass
class Prediction:
    label: str
    index: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index, "score": round(float(self.score), 6)}


@dataclass
class ClassificationResult(Result):
    """The top-k classes, best first; a multi-label model's answer also has ``labels``: every class whose own
    probability reaches its threshold, most probable first (None for a single-label model)."""

    predictions: list[Prediction] = field(default_factory=list)
    labels: list[Prediction] | None = None

    @property
    def top1(self) -> Prediction | None:
        return self.predictions[0] if self.predictions else None

    @property
    def multilabel(self) -> bool:
        return self.labels is not None

    def headline(self) -> str:
        if self.labels is not None:
            return ", ".join(p.label for p in self.labels)
        return self.top1.label if self.top1 else ""

    def summary(self) -> str:
        if self.labels is not None:  # a multi-label head: every label over its threshold
            return ", ".join(f"{p.label} {p.score:.0%}" for p in self.labels) or "no label"
        return f"{self.top1.label} {self.top1.score:.0%}" if self.top1 else ""

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.source, "error": self.error}
        out: dict[str, Any] = {"path": self.source}
        if self.labels is not None:
            out["labels"] = [{"label": p.label, "score": round(float(p.score), 6)} for p in self.labels]
        out["predictions"] = [p.to_dict() for p in self.predictions]
        return out

    def draw(self, image: np.ndarray, width: int = 640) -> np.ndarray:
        """The image with its top-k as labelled bars underneath (RGB uint8); a multi-label answer's bars are its
        labels over their thresholds (then, greyed, the other top-k classes)."""
        import cv2

        image = as_rgb(image)
        h, w = image.shape[:2]
        scale = width / w
        img = cv2.resize(image, (width, max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        shown = list(self.predictions)
        chosen: set[int] = set()
        if self.labels is not None:
            chosen = {p.index for p in self.labels}
            shown = list(self.labels) + [p for p in self.predictions if p.index not in chosen]
        rows = max(1, len(shown))
        panel = np.full((28 * rows + 12, width, 3), 255, np.uint8)
        for i, p in enumerate(shown):
            y = 8 + 28 * i
            bar = int((width - 20) * min(max(float(p.score), 0.0), 1.0)) if math.isfinite(p.score) else 0
            colour = (66, 135, 245) if self.labels is None or p.index in chosen else (200, 200, 200)
            cv2.rectangle(panel, (10, y), (10 + bar, y + 22), colour, -1)
            text = f"{p.label}  {p.score:.1%}"
            cv2.putText(panel, text, (14, y + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        if self.error:
            cv2.putText(panel, self.error[:80], (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (200, 0, 0), 1, cv2.LINE_AA)
        return np.vstack([img, panel])


@dataclass
class EmbeddingResult(Result):
    """One input's L2-normalised embedding (cosine similarity of two images is the dot product of theirs)."""

    vector: np.ndarray | None = None

    def summary(self) -> str:
        return "" if self.vector is None else f"{len(self.vector)}-d vector"

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None or self.vector is None:
            return {"path": self.source, "error": self.error or "no embedding"}
        return {"path": self.source, "embedding": [round(float(x), 6) for x in self.vector]}


@dataclass
class RetrievalResult(Result):
    """One query's ranked neighbours (``hits`` hold rank, path and cosine similarity)."""

    hits: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"query": self.source, "error": self.error}
        return {"query": self.source, "results": [h.to_dict() for h in self.hits]}


@dataclass
class Instance:
    """One detected object: class, score, box (x0, y0, x1, y1 in pixels), mask as COCO RLE, keypoints (K, 3)."""

    label: str
    label_index: int
    score: float
    box: tuple[float, float, float, float]
    mask: dict[str, Any] | None = None
    keypoints: list[tuple[float, float, float]] | None = None  # x, y, score
    embedding: np.ndarray | None = None  # (D,) unit vector of the box's appearance, when asked for (tracking)
    track_id: int | None = None  # the object's id across video frames, when tracked

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.track_id is None else {"id": int(self.track_id)}
        out |= {
            "label": self.label,
            "score": round(float(self.score), 5),
            "box": [round(float(v), 2) for v in self.box],
        }
        if self.mask is not None:
            out["mask"] = self.mask
        if self.keypoints is not None:
            out["keypoints"] = [
                [round(float(x), 2), round(float(y), 2), round(float(s), 4)] for x, y, s in self.keypoints
            ]
        return out


#: one colour per class index, distinct and readable on photos (RGB)
PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
)  # fmt: skip


@dataclass
class DetectionResult(Result):
    """One image's detected instances (``detect``, ``segment`` or ``pose``), in the image's pixel frame."""

    instances: list[Instance] = field(default_factory=list)
    width: int = 0
    height: int = 0
    skeleton: list[list[int]] = field(default_factory=list)  # 1-based keypoint pairs for drawing

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.source, "error": self.error}
        return {
            "path": self.source,
            "width": self.width,
            "height": self.height,
            "instances": [i.to_dict() for i in self.instances],
        }

    def headline(self) -> str:
        """The objects found by class, most first: ``"2 circle, 1 square"``."""
        from collections import Counter

        return ", ".join(f"{n} {label}" for label, n in Counter(i.label for i in self.instances).most_common())

    def summary(self) -> str:
        return self.headline() or "nothing found"

    def draw(self, image: np.ndarray, mask_alpha: float = 0.45) -> np.ndarray:
        """The image (RGB uint8) with translucent masks, boxes, labels with scores and keypoint skeletons; tracked
        objects are coloured by their id and labelled ``#id``."""
        import cv2

        out = as_rgb(image).copy()
        thick = max(1, round(max(out.shape[:2]) / 400))

        def colour_of(inst: Instance) -> tuple[int, int, int]:
            return PALETTE[(inst.label_index if inst.track_id is None else inst.track_id) % len(PALETTE)]

        for inst in self.instances:
            colour = colour_of(inst)
            if inst.mask is not None:
                from pycocotools import mask as mask_utils

                rle = {"size": inst.mask["size"], "counts": inst.mask["counts"].encode("ascii")}
                m = mask_utils.decode(rle).astype(bool)
                out[m] = (out[m] * (1 - mask_alpha) + np.array(colour) * mask_alpha).astype(np.uint8)
        for inst in self.instances:
            colour = colour_of(inst)
            x0, y0, x1, y1 = (round(v) for v in inst.box)
            cv2.rectangle(out, (x0, y0), (x1, y1), colour, thick, cv2.LINE_AA)
            text = f"{'' if inst.track_id is None else f'#{inst.track_id} '}{inst.label} {inst.score:.0%}"
            scale = 0.4 * thick
            (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            top = max(th + 4, y0)
            cv2.rectangle(out, (x0, top - th - 4), (x0 + tw + 4, top), colour, -1)
            cv2.putText(out, text, (x0 + 2, top - 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
            if inst.keypoints is not None:
                pts = [(round(x), round(y)) for x, y, _ in inst.keypoints]
                for a, b in self.skeleton:
                    if a - 1 < len(pts) and b - 1 < len(pts):
                        cv2.line(out, pts[a - 1], pts[b - 1], colour, thick + 1, cv2.LINE_AA)
                for p in pts:
                    cv2.circle(out, p, thick + 2, (255, 255, 255), -1, cv2.LINE_AA)
                    cv2.circle(out, p, thick + 2, colour, 1, cv2.LINE_AA)
        return out


@dataclass
class CaptionResult(Result):
    """One image's caption, its log-probability and, per word, the attention over the feature grid."""

    caption: str = ""
    words: list[str] = field(default_factory=list)
    score: float = 0.0
    attention: list[np.ndarray] = field(default_factory=list)  # (grid, grid) per word, over the network's input
    # how the preprocessing moved the photo's pixels into the network's input (``Preprocess.geometry``: ``x_in =
    # x * sx - ox``), and that input's (height, width): where in the photo each grid cell looked. None: the whole
    # photo squashed into the input
    geometry: tuple[float, float, float, float] | None = field(default=None, kw_only=True, repr=False)
    input_size: tuple[int, int] | None = field(default=None, kw_only=True, repr=False)

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.source, "error": self.error}
        return {"path": self.source, "caption": self.caption, "score": round(float(self.score), 4)}

    def headline(self) -> str:
        return self.caption

    def overlay(self, image: np.ndarray) -> np.ndarray:
        """The frame with the caption on a dark strip along its bottom (the attention panels are for stills)."""
        import cv2

        out = as_rgb(image).copy()
        height = min(out.shape[0], 26)
        out[-height:] = (out[-height:] * 0.35).astype(np.uint8)
        cv2.putText(out, self.caption, (6, out.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)  # fmt: skip
        return out

    def draw(self, image: np.ndarray, panel: int = 224, columns: int = 5) -> np.ndarray:
        """The caption as a title, then the image as the network saw it (resized and, for a cropping preprocessing,
        centre-cropped: what the attention grid covers) and one panel per word with its attention map over that
        view (RGB uint8)."""
        import cv2

        base = _network_view(as_rgb(image), self.geometry, self.input_size, panel)
        tiles = [_titled(base, "")]
        for word, grid in zip(self.words, self.attention, strict=False):
            heat = cv2.resize(grid.astype(np.float32), (panel, panel), interpolation=cv2.INTER_CUBIC)
            heat = np.clip((heat - heat.min()) / (np.ptp(heat) + 1e-8), 0, 1)
            lit = (base * (0.25 + 0.75 * heat[..., None])).astype(np.uint8)
            tiles.append(_titled(lit, word))
        while len(tiles) % columns:
            tiles.append(np.full_like(tiles[0], 255))
        rows = [np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
        grid = np.vstack(rows)
        return np.vstack([text_band(self.caption, grid.shape[1]), grid])


def _network_view(
    image: np.ndarray,
    geometry: tuple[float, float, float, float] | None,
    input_size: tuple[int, int] | None,
    panel: int,
) -> np.ndarray:
    """The part of ``image`` the network's input holds (``geometry``: ``x_in = x * sx - ox``, ``y_in = y * sy - oy``
    in continuous coordinates, corners at 0; ``input_size``: its height and width), drawn ``panel`` x ``panel``;
    where a crop is larger than the resized photo, black as the network's padding. None: the whole photo."""
    import cv2

    if geometry is None or input_size is None:
        return cv2.resize(image, (panel, panel), interpolation=cv2.INTER_AREA)
    sx, sy, ox, oy = geometry
    in_h, in_w = input_size
    height, width = image.shape[:2]
    # shrink by area first where the panel is smaller than the photo (a warp alone would alias fine detail)
    fx, fy = sx * panel / in_w, sy * panel / in_h  # photo pixels to panel pixels
    small = (min(width, max(1, round(width * fx))), min(height, max(1, round(height * fy))))
    if small != (width, height):
        image = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
    # panel pixel centre u + 0.5 = ((i + 0.5) * width / small_w * sx - ox) * panel / in_w, for pixel i of ``image``
    ax, ay = width / small[0] * fx, height / small[1] * fy
    bx, by = -ox * panel / in_w, -oy * panel / in_h
    matrix = np.array([[ax, 0.0, 0.5 * ax + bx - 0.5], [0.0, ay, 0.5 * ay + by - 0.5]])
    return cv2.warpAffine(image, matrix, (panel, panel), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))  # fmt: skip


def text_band(text: str, width: int, scale: float = 0.7, line: int = 28) -> np.ndarray:
    """A white band holding ``text`` in black, wrapped at word boundaries to ``width`` pixels."""
    import cv2

    lines: list[str] = []
    for word in text.split():
        wider = f"{lines[-1]} {word}" if lines else word
        if lines and cv2.getTextSize(wider, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] <= width - 16:
            lines[-1] = wider
        else:
            lines.append(word)
    band = np.full((line * max(1, len(lines)) + 10, width, 3), 255, np.uint8)
    for i, text_line in enumerate(lines):
        cv2.putText(band, text_line, (8, 26 + line * i), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return band


def _titled(img: np.ndarray, text: str) -> np.ndarray:
    import cv2

    strip = np.full((26, img.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    return np.pad(np.vstack([strip, img]), ((2, 2), (2, 2), (0, 0)), constant_values=255)


@dataclass
class MultiTaskResult(Result):
    """One input's answers from every head of a multi-head model, by head name (one trunk pass gave them all)."""

    #: the keys its answer holds beside the heads' (its own, ``--json``'s engine, the server's model and overlay, a
    #: video line's source, frame and time): no head may be named so, its answer would overwrite one
    OWN_KEYS: ClassVar[tuple[str, ...]] = ("path", "error", "engine", "model", "overlay", "source", "frame", "time")

    results: dict[str, Result] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``{"path": ..., "<head>": <that head's answer without its path>, ...}`` (or ``{"path", "error"}``)."""
        if self.error is not None:
            return {"path": self.source, "error": self.error}
        out: dict[str, Any] = {"path": self.source}
        for name, result in self.results.items():
            out[name] = {k: v for k, v in result.to_dict().items() if k != "path"}
        return out

    def headline(self) -> str:
        return "; ".join(f"{name}: {said}" for name, result in self.results.items() if (said := result.headline()))

    def draw(self, image: np.ndarray) -> np.ndarray:
        """Boxes, masks and skeletons of the detection heads on the image, then a panel with the other answers."""
        import cv2

        out = as_rgb(image).copy()
        lines = []
        for name, result in self.results.items():
            if isinstance(result, DetectionResult):
                out = result.draw(out)
            elif isinstance(result, ClassificationResult) and result.predictions:
                shown = result.predictions[:3] if result.labels is None else result.labels
                top = ", ".join(f"{p.label} {p.score:.0%}" for p in shown) or "no label"
                lines.append(f"{name}: {top}")
            elif isinstance(result, CaptionResult):
                lines.append(f"{name}: {result.caption}")
        if not lines:
            return out
        width = max(out.shape[1], 320)
        if out.shape[1] != width:
            out = cv2.resize(out, (width, round(out.shape[0] * width / out.shape[1])), interpolation=cv2.INTER_AREA)
        panel = np.full((24 * len(lines) + 10, width, 3), 255, np.uint8)
        for i, text in enumerate(lines):
            cv2.putText(panel, text[:90], (8, 22 + 24 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        return np.vstack([out, panel])
