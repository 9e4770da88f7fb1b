"""Decode any image input to an RGB ``uint8`` array of shape (H, W, 3).

Files and bytes are decoded with OpenCV; PIL reads only the header (size, EXIF
orientation) so that decompression bombs are refused before any pixel is decoded.
Every failure raises a typed :class:`~cnnapps.errors.ImageError` naming the input.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnnapps.errors import (
    EmptyImageError,
    ImageError,
    ImageNotFoundError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedInputError,
)

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    ImageInput = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray | Image.Image

#: Same default as Pillow's decompression-bomb guard (about 179 megapixels).
DEFAULT_MAX_PIXELS = 178_956_970

#: File suffixes treated as images when walking folders.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

_EXIF_ORIENTATION = 0x0112


def read_image(src: ImageInput, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str | None = None) -> np.ndarray:
    """Return ``src`` as a contiguous RGB uint8 array (H, W, 3).

    ``src`` may be a path, encoded bytes, a numpy array (H, W), (H, W, 1|3|4) in RGB(A)
    order, or a PIL image. ``max_pixels=None`` lifts the size limit. ``name`` labels the
    input in error messages (defaults to the path, or ``<bytes>``/``<array>``/``<PIL image>``).
    """
    label = name or describe_input(src)
    if isinstance(src, (str, os.PathLike)):
        return decode_bytes(_read_file(Path(src), label), max_pixels=max_pixels, name=label)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return decode_bytes(bytes(src), max_pixels=max_pixels, name=label)
    if isinstance(src, np.ndarray):
        return _from_array(src, max_pixels, label)
    if _is_pil_image(src):
        return _from_pil(src, max_pixels, label)
    raise UnsupportedInputError(
        label, f"unsupported input type {type(src).__name__} (expected a path, bytes, numpy array or PIL image)"
    )


def read_for_batch(
    src: ImageInput, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[str, np.ndarray | None, str | None]:
    """``(name, rgb, None)``, or ``(name, None, reason)`` when the input cannot be read: what batch jobs use
    to report a bad input and go on (a decoder crash on one file must not end the batch either)."""
    name = describe_input(src)
    try:
        return name, read_image(src, max_pixels=max_pixels, name=name), None
    except ImageError as exc:
        return name, None, exc.detail
    except Exception as exc:
        return name, None, f"{type(exc).__name__}: {exc}"


def describe_input(src: object) -> str:
    """How an input is named in results and messages: its path, or ``<bytes>``/``<array>``/``<PIL image>``."""
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(src, np.ndarray):
        return "<array>"
    if _is_pil_image(src):
        return "<PIL image>"
    return f"<{type(src).__name__}>"


def write_image(path: str | os.PathLike, rgb: np.ndarray, overwrite: bool = False) -> Path:
    """Save an RGB uint8 array (format from the suffix) atomically; refuses to replace a file unless told."""
    import cv2

    path = Path(path)
    if path.exists() and not overwrite:
        raise ImageError(str(path), "already exists; choose another output path")
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(path.suffix or ".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise ImageError(str(path), f"cannot encode an image as {path.suffix or '.png'}")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(encoded.tobytes())
    os.replace(tmp, path)
    return path


def decode_bytes(data: bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str = "<bytes>") -> np.ndarray:
    """Decode an encoded image (JPEG/PNG/WebP/BMP/TIFF) to RGB uint8, applying EXIF orientation."""
    import cv2

    if len(data) == 0:
        raise EmptyImageError(name)
    fmt = sniff_format(data)
    if fmt is None:
        raise NotAnImageError(name)
    width, height, orientation = _read_header(data, fmt, name)
    _check_pixels(width, height, max_pixels, name)
    if _looks_truncated(data, fmt):
        _verify_with_pil(data, name)

    flags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if bgr is None:
        raise TruncatedImageError(name, f"corrupt or truncated {fmt} data")
    rgb = cv2.cvtColor(_to_uint8(bgr, name), cv2.COLOR_BGR2RGB)
    return apply_exif_orientation(rgb, orientation)


def sniff_format(data: bytes) -> str | None:
    """Name the image format from its magic bytes, or None when it is not one we decode."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def apply_exif_orientation(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip an array as EXIF orientation tag values 1..8 prescribe."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return rgb if op is None else np.ascontiguousarray(op(rgb))


def _read_file(path: Path, label: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageNotFoundError(label) from None
    except IsADirectoryError:
        raise NotAnImageError(label, "is a directory, not an image file") from None
    except PermissionError:
        raise ImageError(label, "permission denied") from None
    except OSError as exc:
        raise ImageError(label, f"cannot read file ({exc.strerror or exc})") from None


def _read_header(data: bytes, fmt: str, name: str) -> tuple[int, int, int]:
    """Width, height and EXIF orientation from the header alone (no pixel decode)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                try:
                    orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1))
                except Exception:  # a broken EXIF block must not hide a good image
                    orientation = 1
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(name, f"image is larger than the pixel limit ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise TruncatedImageError(name, f"corrupt or truncated {fmt} header") from None
    return width, height, orientation


def _check_pixels(width: int, height: int, max_pixels: int | None, name: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            name,
            f"{width}x{height} image has {width * height:,} pixels, over the limit of {max_pixels:,} "
            "(raise max_pixels to allow it)",
        )


def _looks_truncated(data: bytes, fmt: str) -> bool:
    """Cheap end-of-stream checks; decoders often fill a truncated image with grey instead of failing."""
    tail = data.rstrip(b"\x00\r\n ")
    if fmt == "JPEG":
        return not tail.endswith(b"\xff\xd9")
    if fmt == "PNG":
        return b"IEND" not in tail[-16:]
    if fmt == "WebP":
        return int.from_bytes(data[4:8], "little") + 8 > len(data)
    if fmt == "BMP":
        declared = int.from_bytes(data[2:6], "little")
        return declared > len(data)
    return False


def _verify_with_pil(data: bytes, name: str) -> None:
    """Full decode with Pillow, which raises on a truncated stream (files with trailing data pass)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                img.load()
    except Exception:
        raise TruncatedImageError(name) from None


def _to_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        return (np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise UnsupportedInputError(name, f"unsupported pixel type {arr.dtype}")


def _from_array(arr: np.ndarray, max_pixels: int | None, name: str) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    elif arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise UnsupportedInputError(name, f"array of shape {arr.shape} is not an image (expected HxW or HxWx1/3/4)")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise EmptyImageError(name, f"array of shape {arr.shape} has no pixels")
    _check_pixels(arr.shape[1], arr.shape[0], max_pixels, name)
    return np.array(_to_uint8(arr[:, :, :3], name), copy=True, order="C")


def _from_pil(img: Image.Image, max_pixels: int | None, name: str) -> np.ndarray:
    from PIL import ImageOps

    _check_pixels(img.width, img.height, max_pixels, name)
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit integer or float grey
        arr = np.asarray(img)
        if img.mode == "F":
            arr = arr.astype(np.float32) / (255.0 if arr.max(initial=0) > 1 else 1.0)
        else:
            arr = arr.astype(np.uint16 if arr.max(initial=0) > 255 else np.uint8)
        return _from_array(arr, None, name)
    return _from_array(np.asarray(img.convert("RGB")), None, name)


def _is_pil_image(obj: object) -> bool:
    module = type(obj).__module__
    if not module.startswith("PIL."):
        return False
    from PIL import Image

    return isinstance(obj, Image.Image)
