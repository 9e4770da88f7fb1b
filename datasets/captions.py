"""Captioned images from COCO captions JSON (``annotations/captions_*.json``) or the Karpathy split
format (``dataset_coco.json``, with ``split`` and ``sentences`` per image)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cnnapps.errors import CnnappsError


class CaptionDataError(CnnappsError):
    """A caption file that is missing or in neither supported format."""


@dataclass
class CaptionedImage:
    path: Path
    captions: list[str]
    image_id: int
    #: the image's split in a Karpathy file (train, restval, val, test; "" if unsaid); None in COCO captions
    split: str | None = None


def read_captions(
    annotation_file: str | os.PathLike, images: str | os.PathLike, split: str | None = None
) -> list[CaptionedImage]:
    """Images with their reference captions. ``split`` picks a Karpathy split (``train`` includes
    ``restval``); COCO caption files are one split already. Images without captions are left out."""
    from cnnapps.datasets.coco import read_annotation_file

    path, root = Path(annotation_file), Path(images)
    data = read_annotation_file(path, CaptionDataError)
    if "annotations" in data:  # COCO captions
        captions: dict[int, list[str]] = {}
        for ann in data["annotations"]:
            captions.setdefault(ann["image_id"], []).append(str(ann["caption"]).strip())
        items = [CaptionedImage(root / img["file_name"], captions[img["id"]], int(img["id"]))
                 for img in data["images"] if img["id"] in captions]  # fmt: skip
    elif data["images"] and "sentences" in data["images"][0]:  # Karpathy
        wanted = {"train", "restval"} if split == "train" else ({split} if split else None)
        items = [
            CaptionedImage(
                root / img.get("filepath", "") / img["filename"],
                [s.get("raw") or " ".join(s["tokens"]) for s in img["sentences"]],
                int(img.get("cocoid", img.get("imgid", i))),
                str(img.get("split") or ""),
            )
            for i, img in enumerate(data["images"])
            if img["sentences"] and (wanted is None or img.get("split") in wanted)
        ]
    else:
        raise CaptionDataError(f"{path}: images carry no captions ('annotations' or per-image 'sentences')")
    if not items:
        raise CaptionDataError(f"{path}: no captioned images{f' in split {split!r}' if split else ''}")
    return items
