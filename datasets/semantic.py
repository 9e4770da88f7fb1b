"""Semantic segmentation data: a class for every pixel, read from three layouts.

- an image folder and a mask folder (``images/`` + ``masks/``, or ``--masks DIR``): masks are PNGs with the
  image's file stem, holding class indices (grey or palette PNGs; an alpha channel is left out) or class colours
  (RGB, with colours in the class list);
- Pascal VOC's layout: ``JPEGImages/``, ``SegmentationClass/`` (palette PNGs) and
  ``ImageSets/Segmentation/{train,val}.txt``;
- a COCO JSON: instance (and stuff) annotations painted into one class map per image; with stuff categories
  (``"isthing": 0``, COCO-stuff and panoptic style) every class is a category and unannotated pixels are ignored,
  otherwise class 0 is ``background`` (unannotated pixels, and a category named ``background`` when there is one).
  Two categories of one name are an error.

A class list file names one class per line, optionally with its colour (``sky 70 130 180`` or ``sky #4682b4``); a
line named ``ignore`` or ``void`` gives the colour of ignored pixels. Pixels equal to the ignore index (255) are
left out of losses and scores; in a palette mask read by colour, index 255 is ignored whatever colour its palette
gives it (Pascal VOC's convention). A mask that does not fit (another size than its image, a class beyond the list, a
colour the list does not have) is a one-line :class:`MaskError` naming the file; training skips it with a warning
and goes on.

Plain Python and numpy at import; albumentations (training) and torch are imported where they are used.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnapps.errors import CnnappsError
from cnnapps.terminal import plural

log = logging.getLogger("cnnapps")

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: Pascal VOC's classes, in index order
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
_IGNORE_NAMES = ("ignore", "void")
#: COCO category names (lower case) that are the background class of a file without stuff categories
_BACKGROUND_NAMES = ("background", "__background__")


class SemanticDataError(CnnappsError):
    """A semantic segmentation data set that cannot be read (layout, class list, annotation file)."""


class MaskError(CnnappsError):
    """One mask that does not fit its image or its class list; its data set goes on without it."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def voc_colormap(n: int = 256) -> list[tuple[int, int, int]]:
    """Pascal VOC's colour map (bit-interleaved index bits): the palette its mask PNGs carry."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return colours


@dataclass
class ClassList:
    """Class names in index order, their colours (when the list gives them) and the colour of ignored pixels."""

    names: list[str]
    colours: list[tuple[int, int, int]] | None = None
    ignore_colour: tuple[int, int, int] | None = None
    source: str = "classes"

    def colour_index(self, ignore_index: int) -> dict[tuple[int, int, int], int]:
        """Colour -> class index (the ignore colour -> ``ignore_index``)."""
        table = {c: i for i, c in enumerate(self.colours or [])}
        if self.ignore_colour is not None:
            table[self.ignore_colour] = ignore_index
        return table


def _colour(tokens: list[str]) -> tuple[tuple[int, int, int] | None, list[str]]:
    """A trailing colour (``R G B`` or ``#RRGGBB``) and the tokens before it."""
    if tokens and re.fullmatch(r"#[0-9a-fA-F]{6}", tokens[-1]):
        h = tokens[-1][1:]
        return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)), tokens[:-1]
    if len(tokens) >= 4 and all(t.isdigit() and int(t) <= 255 for t in tokens[-3:]):
        r, g, b = (int(t) for t in tokens[-3:])
        return (r, g, b), tokens[:-3]
    return None, tokens


def read_class_list(path: str | os.PathLike) -> ClassList:
    """A class list file: one class per line (``name`` or ``name R G B`` or ``name #RRGGBB``), ``#`` comments."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise SemanticDataError(f"{path}: class list not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SemanticDataError(f"{path}: cannot read the class list ({exc})") from None
    names: list[str] = []
    colours: list[tuple[int, int, int] | None] = []
    ignore = None
    for number, line in enumerate(lines, 1):
        text = re.sub(r"(^|\s)#(?![0-9a-fA-F]{6}(\s|$)).*$", "", line).strip()  # comments, not #rrggbb colours
        if not text:
            continue
        colour, rest = _colour(text.split())
        name = " ".join(rest)
        if not name:
            raise SemanticDataError(f"{path}:{number}: a colour without a class name")
        if name.lower() in _IGNORE_NAMES:
            ignore = colour
            continue
        if name in names:
            raise SemanticDataError(f"{path}:{number}: class {name!r} is listed twice")
        names.append(name)
        colours.append(colour)
    if not names:
        raise SemanticDataError(f"{path}: no class names")
    given = [c is not None for c in colours]
    if any(given) and not all(given):
        missing = names[given.index(False)]
        raise SemanticDataError(f"{path}: class {missing!r} has no colour; give every class a colour, or none")
    if any(given) and len(set(colours)) != len(colours):
        raise SemanticDataError(f"{path}: two classes share one colour")
    return ClassList(names, [c for c in colours if c is not None] if any(given) else None, ignore, str(path))


def write_class_list(path: str | os.PathLike, classes: ClassList) -> Path:
    """Write a class list file (names, and colours when there are)."""
    path = Path(path)
    lines = []
    for i, name in enumerate(classes.names):
        lines.append(f"{name} {' '.join(map(str, classes.colours[i]))}" if classes.colours else name)
    if classes.ignore_colour is not None:
        lines.append(f"ignore {' '.join(map(str, classes.ignore_colour))}")
    path.write_text("\n".join(lines) + "\n")
    return path


def read_mask(path: str | os.PathLike, classes: ClassList, ignore_index: int = IGNORE_INDEX,
              size: tuple[int, int] | None = None) -> np.ndarray:  # fmt: skip
    """A mask PNG as class indices (H, W) int64, checked against the class list and, with ``size`` (height,
    width), against its image; anything that does not fit is a :class:`MaskError` naming the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            mode, palette = img.mode, img.getpalette()
            pixels = np.array(img)
    except FileNotFoundError:
        raise MaskError(path, "mask not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise MaskError(path, f"not a readable mask image ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    if size is not None and pixels.shape[:2] != tuple(size):
        h, w = pixels.shape[:2]
        raise MaskError(path, f"mask is {w}x{h} but its image is {size[1]}x{size[0]}")
    if mode in ("LA", "La", "PA"):  # grey or palette with alpha: the alpha says nothing about the class
        pixels, mode = pixels[..., 0], mode[0]
    if mode == "P" and classes.colours is not None and palette is not None:
        # the ignore index is ignored whatever colour the palette gives it (Pascal VOC's convention)
        table = np.array(palette[: len(palette) - len(palette) % 3], np.int64).reshape(-1, 3)
        ignored = pixels == ignore_index
        used = [int(i) for i in np.unique(pixels[~ignored])]
        beyond = [i for i in used if i >= len(table)]
        if beyond:
            count = int(np.isin(pixels, beyond).sum())
            raise MaskError(path, f"palette index {beyond[0]} at {count} pixels is beyond the {len(table)} colours "
                            "of its palette")  # fmt: skip
        out = _by_colour(path, pixels, {i: tuple(int(v) for v in table[i]) for i in used}, classes, ignore_index)
        out[ignored] = ignore_index
        return out
    if pixels.ndim == 3:
        if pixels.shape[2] < 3:
            raise MaskError(path, f"a {mode} mask with {pixels.shape[2]} channels: neither class indices (grey or "
                            "palette) nor colours (RGB)")  # fmt: skip
        if classes.colours is None:
            raise MaskError(path, f"a colour ({mode}) mask, but {classes.source} gives no class colours")
        rgb = pixels[..., :3].astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        used = np.unique(code)
        colours = {int(c): (int(c) >> 16, (int(c) >> 8) & 255, int(c) & 255) for c in used}
        return _by_colour(path, code, colours, classes, ignore_index)
    indices = pixels.astype(np.int64)
    bad = (indices >= len(classes.names)) & (indices != ignore_index)
    if bad.any():
        values = np.unique(indices[bad])
        shown = ", ".join(str(v) for v in values[:5])
        reason = (f"class index {shown} at {int(bad.sum())} pixels, beyond the {len(classes.names)} classes of "
                  f"{classes.source} (ignore index {ignore_index})")  # fmt: skip
        raise MaskError(path, reason)
    return indices


def _by_colour(path: Path, codes: np.ndarray, colours: dict[int, tuple[int, int, int]], classes: ClassList,
               ignore_index: int) -> np.ndarray:  # fmt: skip
    table = classes.colour_index(ignore_index)
    unknown = {code: colour for code, colour in colours.items() if colour not in table}
    if unknown:
        code, colour = next(iter(unknown.items()))
        count = int((codes == code).sum())
        more = f" and {len(unknown) - 1} other colours" if len(unknown) > 1 else ""
        raise MaskError(path, f"colour {colour} at {count} pixels{more} is not in {classes.source}")
    lut = {code: table[colour] for code, colour in colours.items()}
    out = np.zeros(codes.shape, np.int64)
    for code, index in lut.items():
        out[codes == code] = index
    return out


def write_mask(path: str | os.PathLike, mask: np.ndarray, colours: list[tuple[int, int, int]] | None = None,
               overwrite: bool = False) -> Path:  # fmt: skip
    """Write class indices as a palette PNG (pixel values are the indices; ``colours`` or VOC's colour map show
    them), or as a 16-bit grey PNG when an index is above 255. Written atomically: an existing file is refused
    (:class:`~cnnapps.files.OutputExistsError`) unless ``overwrite``, and a symlink is never written through."""
    import io

    from PIL import Image

    from cnnapps.files import OutputExistsError, atomic_write

    path = Path(path)
    if not overwrite and os.path.lexists(path):
        raise OutputExistsError(path)
    if int(mask.max(initial=0)) > 255:
        img = Image.fromarray(mask.astype(np.uint16))
    else:
        img = Image.fromarray(mask.astype(np.uint8), mode="P")
        palette = list(colours or []) + voc_colormap()[len(colours or []) :]
        img.putpalette([v for c in palette[:256] for v in c])
    encoded = io.BytesIO()
    img.save(encoded, "PNG")
    return atomic_write(path, encoded.getvalue(), overwrite=overwrite)


@dataclass
class SemanticItem:
    image: Path
    mask: Path | None = None  # a mask PNG, or None for a COCO image (painted from its annotations)
    image_id: int | None = None


@dataclass
class SemanticSet:
    """Images with their class maps: ``load(i)`` -> (RGB uint8, class indices int64), errors naming the file."""

    classes: ClassList
    items: list[SemanticItem]
    ignore_index: int = IGNORE_INDEX
    source: str = ""
    coco: Any = None  # a pycocotools COCO for COCO JSON data
    coco_labels: dict[int, int] = field(default_factory=dict)  # category id -> class index
    unlabeled: int = 0  # what unannotated COCO pixels become (0: background, or the ignore index)

    @property
    def class_names(self) -> list[str]:
        return self.classes.names

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices: list[int]) -> SemanticSet:
        return SemanticSet(self.classes, [self.items[i] for i in indices], self.ignore_index, self.source, self.coco,
                           self.coco_labels, self.unlabeled)  # fmt: skip

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``i`` and its class map; :class:`ImageError` or :class:`MaskError` (one line, naming the file)."""
        from cnnapps.datasets.io import read_image

        rgb = read_image(self.items[i].image)
        return rgb, self.mask(i, rgb.shape[:2])

    def mask(self, i: int, size: tuple[int, int]) -> np.ndarray:
        item = self.items[i]
        if item.mask is not None:
            return read_mask(item.mask, self.classes, self.ignore_index, size)
        return self._painted(item, size)

    def _painted(self, item: SemanticItem, size: tuple[int, int]) -> np.ndarray:
        """A COCO image's annotations painted largest first (small objects stay on top); crowds are ignored."""
        info = self.coco.imgs[item.image_id]
        height, width = int(info["height"]), int(info["width"])
        if (height, width) != tuple(size):
            raise MaskError(item.image, f"image is {size[1]}x{size[0]} but {self.source} says {width}x{height}")
        out = np.full((height, width), self.unlabeled, np.int64)
        anns = [a for a in self.coco.imgToAnns.get(item.image_id, []) if a["category_id"] in self.coco_labels]
        for ann in sorted(anns, key=lambda a: -float(a.get("area", 0.0))):
            if not ann.get("segmentation"):
                continue
            try:
                painted = self.coco.annToMask(ann).astype(bool)
            except Exception as exc:  # pycocotools raises whatever its C code meets
                raise MaskError(item.image, f"annotation {ann.get('id')} cannot be drawn ({exc})") from None
            out[painted] = self.ignore_index if ann.get("iscrowd") else self.coco_labels[ann["category_id"]]
        return out


def _image_paths(folder: Path, leave_out: Path | None = None) -> list[Path]:
    """Image files under ``folder``, sorted (those under ``leave_out``, the mask folder, are not images)."""
    skip = leave_out.resolve() if leave_out is not None else None
    return [
        path
        for path in sorted(folder.rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
        and not (skip is not None and skip in path.resolve().parents)
    ]


def _image_files(folder: Path) -> dict[str, Path]:
    """Image files under ``folder`` by file stem (VOC's JPEGImages: one flat folder)."""
    return {path.stem: path for path in _image_paths(folder)}


def _paired(images: list[Path], masks: list[Path], image_dir: Path,
            mask_dir: Path) -> tuple[list[tuple[Path, Path]], list[Path]]:  # fmt: skip
    """(image, mask) pairs and the images without a mask. A mask pairs with the image at the same place under its
    folder (``images/a/1.jpg`` with ``masks/a/1.png``), else with the image of its name where that name is found
    once among the images and once among the masks (subfolders on one side only): images of one name in two
    subfolders are never given each other's masks."""
    key = lambda path, root: path.relative_to(root).with_suffix("").as_posix()  # noqa: E731
    by_place = {key(m, mask_dir): m for m in masks}
    pairs, unplaced = [], []
    for image in images:
        mask = by_place.pop(key(image, image_dir), None)
        if mask is not None:
            pairs.append((image, mask))
        else:
            unplaced.append(image)
    stems = collections.Counter(i.stem for i in images)
    mask_stems = collections.Counter(m.stem for m in masks)
    by_name = {m.stem: m for m in by_place.values()}
    missing = []
    for image in unplaced:
        if stems[image.stem] == 1 and mask_stems[image.stem] == 1 and image.stem in by_name:
            pairs.append((image, by_name[image.stem]))
        else:
            missing.append(image)
    return sorted(pairs), missing


def _class_list(classes: str | os.PathLike | None, *places: Path) -> ClassList | None:
    if classes is not None:
        return read_class_list(classes)
    for place in places:
        if (place / "classes.txt").is_file():
            return read_class_list(place / "classes.txt")
    return None


def own_masks(root: str | os.PathLike) -> str | None:
    """The layout of a data folder that holds its own masks (read with no mask folder given): ``"voc"``
    (``JPEGImages/`` + ``SegmentationClass/``), ``"folders"`` (``images/`` + ``masks/``), else None."""
    root = Path(root)
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        return "voc"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "folders"
    return None


#: what to do with a folder that holds no masks, said by a command with a --masks option (``masks_hint``: a command
#: without one gives :data:`LAYOUT_HINT`)
MASKS_HINT = "give the mask folder with --masks, or a COCO JSON"
LAYOUT_HINT = "put the images in images/ and their masks in masks/ (the same file names), or give a COCO JSON"


def read_semantic_data(data: str | os.PathLike, *, masks: str | os.PathLike | None = None,
                       images: str | os.PathLike | None = None, classes: str | os.PathLike | None = None,
                       split: str | None = None, ignore_index: int = IGNORE_INDEX,
                       masks_hint: str = MASKS_HINT) -> SemanticSet:  # fmt: skip
    """A data set from a VOC root, an image folder with masks, or a COCO JSON (see the module's help).

    ``split``: the VOC ``ImageSets/Segmentation/<split>.txt`` list to read (default ``train``). ``masks_hint``: what
    to do, said when ``data`` is a folder without masks and none are given."""
    root = Path(data)
    if root.suffix.lower() == ".json":
        return read_coco_semantic(root, images, classes, ignore_index)
    if not root.exists():
        raise SemanticDataError(f"{root}: no such folder or file")
    if not root.is_dir():
        raise SemanticDataError(f"{root}: expected a folder (VOC root or images) or a COCO JSON")
    layout = own_masks(root) if masks is None else None
    if layout == "voc":
        return read_voc(root, split or "train", classes, ignore_index)
    image_dir = root
    if masks is None:
        if layout is None:
            raise SemanticDataError(
                f"{root}: not a VOC root (JPEGImages/, SegmentationClass/) nor images/ + masks/; {masks_hint}"
            )
        image_dir, masks = root / "images", root / "masks"
    mask_dir = Path(masks)
    if not mask_dir.is_dir():
        raise SemanticDataError(f"{mask_dir}: mask folder not found")
    class_list = _class_list(classes, root, mask_dir)
    if class_list is None:
        raise SemanticDataError(f"{root}: no class list (classes.txt beside the data, or --classes FILE)")
    mask_paths = sorted(mask_dir.rglob("*.png"))
    pairs, missing = _paired(_image_paths(image_dir, leave_out=mask_dir), mask_paths, image_dir, mask_dir)
    items = [SemanticItem(image, mask) for image, mask in pairs]
    if missing:
        log.warning("%s of %s %s no mask in %s (e.g. %s); left out", plural(len(missing), "image"), image_dir,
                    "has" if len(missing) == 1 else "have", mask_dir, missing[0].name)  # fmt: skip
    paired = {mask for _, mask in pairs}
    lone = [mask for mask in mask_paths if mask not in paired]  # an image deleted or renamed: said, not silent
    if lone:
        log.warning("%s of %s %s no image in %s (e.g. %s); left out", plural(len(lone), "mask"), mask_dir,
                    "has" if len(lone) == 1 else "have", image_dir, lone[0].name)  # fmt: skip
    if not items:
        raise SemanticDataError(f"{image_dir}: no image has a mask of the same name in {mask_dir}")
    return SemanticSet(class_list, items, ignore_index, str(root))


def read_voc(root: Path, split: str, classes: str | os.PathLike | None, ignore_index: int) -> SemanticSet:
    """Pascal VOC's layout; its 21 classes and colour map unless a class list says otherwise."""
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        have = sorted(p.stem for p in (root / "ImageSets" / "Segmentation").glob("*.txt"))
        raise SemanticDataError(f"{listing}: no such split list (found: {', '.join(have) or 'none'})")
    class_list = _class_list(classes, root) or ClassList(list(VOC_CLASSES), voc_colormap(len(VOC_CLASSES)),
                                                         (224, 224, 192), "Pascal VOC's classes")  # fmt: skip
    found = _image_files(root / "JPEGImages")
    items = []
    for name in listing.read_text().split():
        if name not in found:
            raise SemanticDataError(f"{listing}: {name} has no image in {root / 'JPEGImages'}")
        items.append(SemanticItem(found[name], root / "SegmentationClass" / f"{name}.png"))
    if not items:
        raise SemanticDataError(f"{listing}: lists no images")
    return SemanticSet(class_list, items, ignore_index, str(root))


def read_coco_semantic(path: Path, images: str | os.PathLike | None, classes: str | os.PathLike | None,
                       ignore_index: int) -> SemanticSet:  # fmt: skip
    """COCO annotations painted into class maps (classes from the file's categories, in id order)."""
    from cnnapps.datasets.coco import load_coco

    if images is None:
        raise SemanticDataError(f"{path}: a COCO JSON needs its image folder (--images)")
    coco = load_coco(path)
    cats = sorted(coco.dataset.get("categories", []), key=lambda c: c["id"])
    if not cats:
        raise SemanticDataError(f"{path}: no categories")
    stuff = any(c.get("isthing", 1) == 0 for c in cats)
    names, labels = _coco_classes(path, cats, stuff)
    given = _class_list(classes)
    if given is not None and given.names != names:
        raise SemanticDataError(f"{given.source}: its classes differ from {path}'s categories ({', '.join(names[:6])})")
    folder = Path(images)
    items = [SemanticItem(folder / coco.imgs[i]["file_name"], None, i) for i in sorted(coco.getImgIds())]
    if not items:
        raise SemanticDataError(f"{path}: no images")
    class_list = given or ClassList(names, None, None, str(path))
    return SemanticSet(class_list, items, ignore_index, str(path), coco, labels, ignore_index if stuff else 0)


def _coco_classes(path: Path, cats: list[dict[str, Any]], stuff: bool) -> tuple[list[str], dict[int, int]]:
    """Class names and category id -> class index. Without stuff categories class 0 is ``background``: unannotated
    pixels, and the category named background (or ``__background__``) when the file has one. Two categories of one
    name are an error: classes meet by name."""
    seen: dict[str, tuple[Any, str]] = {}
    for cat in cats:
        name = str(cat["name"])
        key = "background" if not stuff and name.lower() in _BACKGROUND_NAMES else name
        if key in seen:
            first, first_name = seen[key]
            both = f"named {name!r}" if first_name == name else f"background ({first_name!r}, {name!r})"
            raise SemanticDataError(f"{path}: categories {first} and {cat['id']} are both {both}; classes meet by "
                                    "name, so give each category a name of its own")  # fmt: skip
        seen[key] = (cat["id"], name)
    if stuff:
        return [str(c["name"]) for c in cats], {int(c["id"]): i for i, c in enumerate(cats)}
    names, labels = ["background"], {}
    for cat in cats:
        if str(cat["name"]).lower() in _BACKGROUND_NAMES:
            labels[int(cat["id"])] = 0
        else:
            labels[int(cat["id"])] = len(names)
            names.append(str(cat["name"]))
    return names, labels


def split_set(data: SemanticSet, fraction: float, seed: int = 0) -> tuple[SemanticSet, SemanticSet]:
    """A random (training, validation) split holding out ``fraction`` of the images (at least one)."""
    order = list(range(len(data)))
    random.Random(seed).shuffle(order)
    n_val = min(len(order) - 1, max(1, round(len(order) * fraction)))
    return data.subset(sorted(order[n_val:])), data.subset(sorted(order[:n_val]))


# -- training --------------------------------------------------------------------------------------------------------

SEMANTIC_PRESETS = {
    "default": "horizontal flip, scale 0.75-1.25, shift and small rotation (masks: nearest, new border ignored), "
    "colour jitter",
    "none": "no augmentation",
}


def semantic_transform(preset: str, fit: Any, ignore_index: int = IGNORE_INDEX) -> Callable[..., Any]:
    """``apply(rgb, mask) -> (float32 (C, H, W), int64 (H, W))``: augmentation that moves the mask with the pixels
    (nearest-neighbour for the mask; pixels brought in from outside the image are ignored), then the resize of
    ``fit`` (a Preprocess: squash, or resize and centre crop) and its normalisation. Training only."""
    if preset not in SEMANTIC_PRESETS:
        raise CnnappsError(f"--augment {preset}: unknown semantic preset; choose from {', '.join(SEMANTIC_PRESETS)}")
    import albumentations as A
    import cv2

    steps: list[Any] = []
    if preset == "default":
        steps = [
            A.HorizontalFlip(p=0.5),
            A.Affine(
                scale=(0.75, 1.25),
                translate_percent=(-0.1, 0.1),
                rotate=(-10, 10),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=ignore_index,
                p=0.7,
            ),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
        ]
    channels, height, width = fit.input_size
    if fit.resize_mode == "squash":
        steps.append(A.Resize(height, width))
    else:
        steps += [A.SmallestMaxSize(max_size=fit.resize),
                  A.PadIfNeeded(height, width, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index),
                  A.CenterCrop(height, width)]  # fmt: skip
    pipeline = A.Compose([*steps, A.Normalize(mean=fit.mean, std=fit.std, max_pixel_value=255.0)])

    def apply(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        img = rgb if channels == 3 else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]
        out = pipeline(image=img, mask=mask.astype(np.int32))
        image = out["image"] if out["image"].ndim == 3 else out["image"][:, :, None]
        return np.ascontiguousarray(image.transpose(2, 0, 1), np.float32), np.asarray(out["mask"], np.int64)

    apply.pipeline = pipeline  # type: ignore[attr-defined]  # for seeding (pipeline.set_random_seed)
    return apply
