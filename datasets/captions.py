"""Captioned images from COCO captions JSON (``annotations/captions_*.json``) or the Karpathy split
format (``dataset_coco.json``, with ``split`` and ``sentences`` per image)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnapps.errors import CnnappsError


class CaptionDataError(CnnappsError):
    """A caption file that is missing or in neither supported format."""


@dataclass
class CaptionedImage:
    path: Path
    captions: list[str]
    image_id: int
    #: the image's split in a Karpathy file (train, restval, val, test); None where unsaid, and in COCO captions
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
        items = _coco_items(data, path, root)
    elif data["images"] and "sentences" in data["images"][0]:  # Karpathy
        items = _karpathy_items(data, path, root, split)
    else:
        raise CaptionDataError(f"{path}: images carry no captions ('annotations' or per-image 'sentences')")
    if not items:
        raise CaptionDataError(f"{path}: no captioned images{f' in split {split!r}' if split else ''}")
    return items


def _coco_items(data: dict[str, Any], path: Path, root: Path) -> list[CaptionedImage]:
    """The captioned images of a COCO captions file; an entry without what it needs raises in one line."""
    if not isinstance(data["annotations"], list):
        raise CaptionDataError(f"{path}: 'annotations' is not a list")
    captions: dict[Any, list[str]] = {}
    for i, ann in enumerate(data["annotations"]):
        image_id, caption = _caption(ann, f"{path}: annotations[{i}]", path)
        captions.setdefault(image_id, []).append(caption.strip())
    images = [_image_entry(img, i, path) for i, img in enumerate(data["images"])]
    return [CaptionedImage(root / img["file_name"], captions[img["id"]], int(img["id"]))
            for img in images if img["id"] in captions]  # fmt: skip


def _karpathy_items(data: dict[str, Any], path: Path, root: Path, split: str | None) -> list[CaptionedImage]:
    """The captioned images of a Karpathy file in ``split`` (``train`` includes ``restval``; ``None``: all). A file
    whose images say no split is one split, as a COCO captions file is: all of it, whatever ``split``."""
    wanted = {"train", "restval"} if split == "train" else ({split} if split else None)
    if not any(isinstance(img, dict) and img.get("split") for img in data["images"]):
        wanted = None
    items = []
    for i, img in enumerate(data["images"]):
        sentences = _sentences(img, f"{path}: images[{i}]")
        if sentences and (wanted is None or img.get("split") in wanted):
            image_id = int(img.get("cocoid", img.get("imgid", i)))
            items.append(CaptionedImage(root / img.get("filepath", "") / img["filename"], sentences, image_id,
                                        str(img["split"]) if img.get("split") else None))  # fmt: skip
    return items


def _sentences(img: Any, where: str) -> list[str]:
    """The captions of one Karpathy image entry (``raw``, else the ``tokens`` joined)."""
    if not isinstance(img, dict) or not isinstance(img.get("filename"), str):
        raise CaptionDataError(f"{where}: not an image entry with a filename")
    if not isinstance(img.get("sentences"), list):
        raise CaptionDataError(f"{where} ({img['filename']}): no 'sentences' list")
    out = []
    for sentence in img["sentences"]:
        text = (sentence.get("raw") or " ".join(sentence.get("tokens") or [])) if isinstance(sentence, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise CaptionDataError(f"{where} ({img['filename']}): a sentence without 'raw' text or 'tokens'")
        out.append(text)
    return out


def _caption(ann: Any, where: str, path: Path) -> tuple[Any, str]:
    """(image id, caption) of one COCO captions annotation."""
    if not isinstance(ann, dict):
        raise CaptionDataError(f"{where}: not an annotation object")
    if "id" in ann:
        where = f"{path}: annotation {ann['id']}"
    if "caption" not in ann:
        raise CaptionDataError(f"{where}: no caption")
    if not isinstance(ann["caption"], str):
        raise CaptionDataError(f"{where}: caption is {ann['caption']!r}, not text")
    if not ann["caption"].strip():  # a reference of no words lowers every score; trained on, it ends at once
        raise CaptionDataError(f"{where}: an empty caption")
    if "image_id" not in ann:
        raise CaptionDataError(f"{where}: no image_id")
    return ann["image_id"], ann["caption"]


def _image_entry(img: Any, i: int, path: Path) -> dict[str, Any]:
    """One image entry of a COCO captions file, checked for its id and file_name."""
    if not isinstance(img, dict):
        raise CaptionDataError(f"{path}: images[{i}]: not an image object")
    if "id" not in img:
        name = f" ({img['file_name']})" if isinstance(img.get("file_name"), str) else ""
        raise CaptionDataError(f"{path}: images[{i}]{name}: no id")
    if "file_name" not in img:
        raise CaptionDataError(f"{path}: image {img['id']}: no file_name")
    if not isinstance(img["file_name"], str):
        raise CaptionDataError(f"{path}: image {img['id']}: file_name is {img['file_name']!r}, not text")
    return img
