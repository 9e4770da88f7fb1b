"""Decode any image input to an RGB ``uint8`` array of shape (H, W, 3).

Files and bytes are decoded with OpenCV (Pillow only for the TIFF layouts OpenCV cannot read). Before
any pixel is decoded, the header alone is checked against a memory budget (``max_pixels``) and an
aspect-ratio limit (``max_aspect``), so a small file can neither cost gigabytes nor abort a batch.
Every failure raises a typed :class:`~cnnapps.errors.ImageError` naming the input.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import warnings
from dataclasses import dataclass
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

#: Memory budget per image, counted in 8-bit pixels: 8192 x 8192 (67 megapixels, so every camera up to
#: 64 MP passes). Decoding peaks at about 6 bytes per 8-bit pixel (the decoder's buffer and its output),
#: so the budget is about 400 MB besides the file itself; deeper samples cost more (16-bit: 12 bytes,
#: 32-bit float: 24) and such images are refused at proportionally fewer pixels. ``None`` lifts the budget.
DEFAULT_MAX_PIXELS = 8192 * 8192

#: Longest side over shortest side. Models scale the short side to 224-800 pixels, so a 1 x 1,000,000
#: strip would ask for 196 GB; at 100:1 that step needs under 20 MB at 256 pixels, while panoramas
#: (rarely beyond 10:1) and scrolling screenshots (20-50:1) pass. ``max_aspect=None`` lifts the limit.
DEFAULT_MAX_ASPECT = 100.0

#: File suffixes treated as images when walking folders.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

_BYTES_PER_8BIT_PIXEL = 6  # decoding peak: the decoder's 3-channel buffer and its output
_NOT_AN_IMAGE = "not an image (expected JPEG, PNG, WebP, BMP, TIFF or GIF)"

# Pillow's notes on the damaged metadata of images it decodes here (EXIF and TIFF tags, APNG chunks, MPO data) and
# on the palette conversion of GIFs, ignored once for the process: a catch_warnings block in each decode thread
# would swap the process's one filter list under other threads (it is not thread-safe) and could leave "ignore
# every warning" in place for good. Each damaged input still gets its own error.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.(Tiff|Png|Jpeg)ImagePlugin\b")
warnings.filterwarnings("ignore", message="Palette images with Transparency", category=UserWarning, module=r"PIL\.")


class ElongatedImageError(ImageError):
    """An image whose sides are further apart than the aspect-ratio limit allows."""

    reason = "image is too elongated"


def read_image(
    src: ImageInput,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_aspect: float | None = DEFAULT_MAX_ASPECT,
    name: str | None = None,
) -> np.ndarray:
    """Return ``src`` as a contiguous RGB uint8 array (H, W, 3).

    ``src`` may be a path, encoded bytes, a numpy array (H, W), (H, W, 1|3|4) in RGB(A) order, or a
    PIL image. 16-bit pixels are scaled by 1/257. Float pixels (arrays, PIL "F" images, float TIFFs) hold
    0..255 values when their largest finite value is above 1, else 0..1 values; either way they are clipped to
    that range and rounded (NaN reads as 0, +inf as the top, -inf as 0), so a ``uint8`` image cast to float
    reads the same as the image itself unless all its pixels are 0 or 1 (then read as 0..1), and a 0..1 image with a
    value above 1 (a resize's overshoot) reads as 0..255: clip such an image to 0..1 first. Limits, checked from the
    header before any pixel is decoded:

    - ``max_pixels``: the memory budget, in 8-bit pixels (default 8192 x 8192; decoding peaks at about
      6 bytes per such pixel, so about 400 MB). 16-bit (12 bytes) and float images (24) cost more per
      pixel and are refused at proportionally fewer pixels. ``None`` lifts it (e.g. for tiled detection).
    - ``max_aspect``: the longest side over the shortest (default 100), because models scale the
      short side up and an elongated strip would explode there. ``None`` lifts it.

    ``name`` labels the input in error messages (defaults to the path, or ``<bytes>``/``<array>``/``<PIL image>``).
    """
    label = name or describe_input(src)
    limits = {"max_pixels": max_pixels, "max_aspect": max_aspect}
    if isinstance(src, (str, os.PathLike)):
        return decode_bytes(_read_file(Path(src), label), name=label, **limits)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return decode_bytes(bytes(src), name=label, **limits)
    if isinstance(src, np.ndarray):
        return _from_array(src, label, **limits)
    if _is_pil_image(src):
        return _from_pil(src, label, **limits)
    raise UnsupportedInputError(
        label, f"unsupported input type {type(src).__name__} (expected a path, bytes, numpy array or PIL image)"
    )


def read_for_batch(
    src: ImageInput,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_aspect: float | None = DEFAULT_MAX_ASPECT,
) -> tuple[str, np.ndarray | None, str | None]:
    """``(name, rgb, None)``, or ``(name, None, reason)`` when the input cannot be read: what batch jobs use
    to report a bad input and go on (a decoder crash on one file must not end the batch either)."""
    return decode_opened(open_for_batch(src, max_pixels, max_aspect))


@dataclass(frozen=True)
class OpenedImage:
    """An input read as far as its header, no pixel decoded yet (:func:`open_for_batch`): what decoding it will cost,
    so that a batch can be cut before its images are all decoded, and what :func:`decode_opened` decodes."""

    name: str
    src: object = None  # encoded bytes (a file's, read once), or the array or PIL image as given
    header: _Header | None = None  # of encoded bytes (read once, checked against the limits); an array's size
    limits: dict[str, float | None] | None = None  # max_pixels and max_aspect, checked as an array is read
    error: str | None = None  # why it cannot be read (it fails before a pixel is decoded)

    @property
    def pixels(self) -> int:
        """What decoding costs at its peak, in the 8-bit pixels ``max_pixels`` counts (a 16-bit image's count twice;
        an array's or PIL image's own pixels); 0 for an input that fails before a pixel is decoded."""
        return 0 if self.header is None else self.header.decode_bytes // _BYTES_PER_8BIT_PIXEL


def open_for_batch(
    src: ImageInput,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_aspect: float | None = DEFAULT_MAX_ASPECT,
) -> OpenedImage:
    """The first half of :func:`read_for_batch`: a file read (once) and its header checked against the limits, or
    the reason the input cannot be read."""
    name = describe_input(src)
    limits = {"max_pixels": max_pixels, "max_aspect": max_aspect}
    try:
        if isinstance(src, (str, os.PathLike)):
            src = _read_file(Path(src), name)
        if isinstance(src, (bytes, bytearray, memoryview)):
            data = bytes(src)
            return OpenedImage(name, data, _checked_header(data, name, **limits))
        if isinstance(src, np.ndarray):
            return OpenedImage(name, src, _Header(src.shape[1], src.shape[0]) if src.ndim >= 2 else None, limits)
        return OpenedImage(name, src, _Header(src.width, src.height) if _is_pil_image(src) else None, limits)
    except Exception as exc:
        return OpenedImage(name, error=_reason(exc))


def decode_opened(opened: OpenedImage) -> tuple[str, np.ndarray | None, str | None]:
    """The second half of :func:`read_for_batch`: ``(name, rgb, None)``, or ``(name, None, reason)``."""
    if opened.error is not None:
        return opened.name, None, opened.error
    try:
        if isinstance(opened.src, bytes):
            return opened.name, _decode(opened.src, opened.header, opened.name), None
        return opened.name, read_image(opened.src, name=opened.name, **(opened.limits or {})), None
    except Exception as exc:
        return opened.name, None, _reason(exc)


def _reason(exc: Exception) -> str:
    """An input's error as a batch reports it: an :class:`ImageError`'s detail, any other exception's type and text."""
    return exc.detail if isinstance(exc, ImageError) else f"{type(exc).__name__}: {exc}"


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
    """Save an RGB uint8 array (format from the suffix) atomically; refuses to replace a file unless told
    (:class:`~cnnapps.files.OutputExistsError`), and never writes through a symlink planted at or beside it."""
    import cv2

    from cnnapps.files import OutputExistsError, atomic_write

    path = Path(path)
    if not overwrite and os.path.lexists(path):
        raise OutputExistsError(path)
    if not writes_images(path):
        raise ImageError(str(path), f"cannot encode an image as {path.suffix}; use .png or .jpg")
    ok, encoded = cv2.imencode(path.suffix or ".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise ImageError(str(path), f"cannot encode an image as {path.suffix or '.png'}")
    return atomic_write(path, encoded.tobytes(), overwrite=overwrite)


def writes_images(path: str | os.PathLike) -> bool:
    """Whether :func:`write_image` can write a picture with this name's suffix (none: PNG), to ask before work."""
    import cv2

    return bool(cv2.haveImageWriter(f"x{Path(path).suffix or '.png'}"))


def decode_bytes(
    data: bytes,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_aspect: float | None = DEFAULT_MAX_ASPECT,
    name: str = "<bytes>",
) -> np.ndarray:
    """Decode an encoded image (JPEG/PNG/WebP/BMP/TIFF/GIF's first frame) to RGB uint8, applying EXIF
    orientation; the limits are those of :func:`read_image`."""
    return _decode(data, _checked_header(data, name, max_pixels, max_aspect), name)


def _checked_header(data: bytes, name: str, max_pixels: int | None, max_aspect: float | None) -> _Header:
    """The header of encoded bytes, checked against the limits before any pixel is decoded."""
    if len(data) == 0:
        raise EmptyImageError(name)
    fmt = sniff_format(data)
    if fmt is None:
        raise NotAnImageError(name, _NOT_AN_IMAGE)
    header = _read_header(data, fmt, name)
    _check_size(header, name, max_pixels, max_aspect)
    return header


def _decode(data: bytes, header: _Header, name: str) -> np.ndarray:
    """Encoded bytes whose header :func:`_checked_header` read and checked, decoded."""
    fmt = sniff_format(data)
    if fmt == "JPEG":
        _check_jpeg_length(data, header, name)
    if _looks_truncated(data, fmt):
        _verify_with_pil(data, name)
    if fmt == "TIFF":
        return _decode_tiff(data, header, name)  # OpenCV applies the TIFF orientation itself
    if fmt == "GIF":
        return _decode_gif(data, name)

    import cv2

    flags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if decoded is None:
        raise TruncatedImageError(name, f"corrupt or truncated {fmt} data")
    if fmt == "JPEG":
        _check_jpeg_complete(data, decoded, header, name)
    return apply_exif_orientation(_bgr_to_rgb(decoded, name), header.orientation)


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
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
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


_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+:/")  # a scheme of two letters or more: C:/ is a drive


def _read_file(path: Path, label: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if path.is_symlink():
            target = os.readlink(path)
            raise ImageNotFoundError(label, f"dangling symlink (its target {target} does not exist)") from None
        if _URL.match(str(path)) or _URL.match(label):  # "https://...": Path() folds the // to one
            raise ImageNotFoundError(label, "a URL: cnnapps reads files and does not download; fetch it first, or "
                                            "pass its bytes") from None  # fmt: skip
        raise ImageNotFoundError(label) from None
    except IsADirectoryError:
        raise NotAnImageError(label, "is a directory, not an image file") from None
    except PermissionError:
        raise ImageError(label, "permission denied") from None
    except OSError as exc:
        raise ImageError(label, f"cannot read file ({exc.strerror or exc})") from None


# --- headers: size, sample depth and orientation, without decoding a pixel -------------------------------


@dataclass(frozen=True)
class _Header:
    width: int
    height: int
    orientation: int = 1
    bytes_per_sample: int = 1  # of the decoder's output
    samples: int = 3  # channels the decoder outputs (at least 3 for colour conversion)
    depth: str = "8-bit"
    jpeg_blocks: int = 0  # for Huffman-coded JPEGs: 8x8 blocks the scan data must code, at least 1 bit each

    @property
    def decode_bytes_per_pixel(self) -> int:
        """OpenCV's decoders peak at twice their output (measured: 6.3 bytes a pixel for 8-bit RGB, 12.3 for
        16-bit, 24.5 for 32-bit float); converting to RGB uint8 happens in place or after that peak."""
        return 2 * max(self.samples, 3) * self.bytes_per_sample

    @property
    def decode_bytes(self) -> int:
        """What decoding the image costs at its peak, in bytes (``max_pixels`` allows that many 8-bit pixels' worth)."""
        return self.width * self.height * self.decode_bytes_per_pixel


def _read_header(data: bytes, fmt: str, name: str) -> _Header:
    """Width, height, sample depth and EXIF orientation from the header alone (no pixel decode)."""
    readers = {
        "JPEG": _jpeg_header,
        "PNG": _png_header,
        "WebP": _webp_header,
        "BMP": _bmp_header,
        "TIFF": _tiff_header,
        "GIF": _gif_header,
    }
    try:
        header = readers[fmt](data)
    except (struct.error, IndexError, ValueError, ZeroDivisionError):
        header = None
    if header is None:
        raise TruncatedImageError(name, f"corrupt or truncated {fmt} header")
    return header


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_HUFFMAN_DCT = {0xC0, 0xC1, 0xC2}  # baseline, extended, progressive: every block costs a bit or more
_XMP_JPEG = b"http://ns.adobe.com/xap/1.0/\x00"


def _jpeg_header(data: bytes) -> _Header | None:
    i, frame, exif, xmp = 2, None, None, None
    while i + 4 <= len(data):
        if data[i] != 0xFF:  # stray bytes between segments: decoders skip them, so do we
            i += 1
            continue
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: the header is over
            break
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        segment = data[i + 4 : i + 2 + length]
        if marker in _JPEG_SOF and frame is None:
            frame = (marker, segment)
        elif marker == 0xE1 and segment.startswith(b"Exif\x00\x00") and exif is None:
            exif = segment
        elif marker == 0xE1 and segment.startswith(_XMP_JPEG) and xmp is None:
            xmp = segment
        i += 2 + length
    if frame is None:
        return None
    marker, sof = frame
    precision, height, width, count = sof[0], *struct.unpack(">HH", sof[1:5]), sof[5]
    factors = [(sof[7 + 3 * k] >> 4, sof[7 + 3 * k] & 15) for k in range(count)]
    if not factors or min(min(f) for f in factors) == 0:
        return None
    blocks = 0
    if marker in _JPEG_HUFFMAN_DCT:
        h_max, v_max = max(h for h, _ in factors), max(v for _, v in factors)
        for h, v in factors:
            blocks += math.ceil(math.ceil(width * h / h_max) / 8) * math.ceil(math.ceil(height * v / v_max) / 8)
    deep = precision > 8
    return _Header(width, height, _orientation(exif, xmp), 2 if deep else 1, 3, f"{precision}-bit", blocks)


def _png_header(data: bytes) -> _Header | None:
    if data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    bits = data[24]
    i, exif, xmp = 8, None, None
    while i + 8 <= len(data):  # chunk headers only: eXIf may come after the pixel data
        length = int.from_bytes(data[i : i + 4], "big")
        kind = data[i + 4 : i + 8]
        if kind == b"eXIf" and exif is None:
            exif = data[i + 8 : i + 8 + length]
        elif kind == b"iTXt" and data[i + 8 : i + 26] == b"XML:com.adobe.xmp\x00" and xmp is None:
            xmp = data[i + 8 : i + 8 + length]
        elif kind == b"IEND":
            break
        i += 12 + length
    return _Header(width, height, _orientation(exif, xmp), 2 if bits > 8 else 1, 3, f"{bits}-bit")


def _webp_header(data: bytes) -> _Header | None:
    kind = data[12:16]
    if kind == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = (v & 0x3FFF for v in struct.unpack("<HH", data[26:30]))
    elif kind == b"VP8L":
        if data[20] != 0x2F:
            return None
        bits = int.from_bytes(data[21:25], "little")
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif kind == b"VP8X":
        width, height = int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    else:
        return None
    i, exif, xmp = 12, None, None
    while i + 8 <= len(data):
        chunk, length = data[i : i + 4], int.from_bytes(data[i + 4 : i + 8], "little")
        if chunk == b"EXIF":
            exif = data[i + 8 : i + 8 + length]
        elif chunk == b"XMP ":
            xmp = data[i + 8 : i + 8 + length]
        i += 8 + length + (length & 1)
    return _Header(width, height, _orientation(exif, xmp))


def _bmp_header(data: bytes) -> _Header | None:
    size = int.from_bytes(data[14:18], "little")
    if size == 12:  # OS/2 core header
        width, height = struct.unpack("<HH", data[18:22])
    elif size >= 40:
        width, height = struct.unpack("<ii", data[18:26])
        height = abs(height)  # negative: rows stored top-down
    else:
        return None
    return _Header(width, height) if width > 0 else None


def _gif_header(data: bytes) -> _Header | None:
    width, height = struct.unpack("<HH", data[6:10])
    return _Header(width, height)


_TIFF_TYPES = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4)}  # BYTE, SHORT, LONG
_TIFF_TAGS = {256: "width", 257: "height", 258: "bits", 274: "orientation", 277: "samples", 339: "format"}


def _tiff_header(data: bytes) -> _Header | None:
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
    tags: dict[str, int] = {}
    for k in range(count):
        at = ifd + 2 + 12 * k
        tag, kind, n = struct.unpack(order + "HHI", data[at : at + 8])
        if tag not in _TIFF_TAGS or kind not in _TIFF_TYPES or n < 1:
            continue
        code, size = _TIFF_TYPES[kind]
        where = at + 8 if size * n <= 4 else struct.unpack(order + "I", data[at + 8 : at + 12])[0]
        tags[_TIFF_TAGS[tag]] = struct.unpack(order + code, data[where : where + size])[0]
    if "width" not in tags or "height" not in tags:
        return None
    bits, samples = tags.get("bits", 1), tags.get("samples", 1)
    depth = f"{bits}-bit" + (" float" if tags.get("format") == 3 else "")
    bytes_per_sample = max(1, math.ceil(bits / 8))
    return _Header(tags["width"], tags["height"], tags.get("orientation", 1), bytes_per_sample, samples, depth)


def _orientation(exif: bytes | None, xmp: bytes | None) -> int:
    """The EXIF orientation tag, else XMP's ``tiff:Orientation`` (as Pillow's ``getexif`` reads them); 1 if none."""
    value = None
    if exif:
        from PIL import Image

        try:
            parsed = Image.Exif()
            parsed.load(exif)
            value = parsed.get(0x0112)
        except Exception:  # a broken EXIF block must not hide a good image
            value = None
    if value is None and xmp:
        match = re.search(rb'tiff:Orientation(?:="|>)([0-9])', xmp)
        value = int(match.group(1)) if match else None
    try:
        value = int(value) if value is not None else 1
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


# --- limits, checked before decoding ---------------------------------------------------------------------


def _amount(size: int) -> str:
    """Bytes in the unit that shows them (a small budget was "0 MB")."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:,.{0 if size >= 10 * scale else 1}f} {unit}"
    return f"{size:,} bytes"


def _check_size(header: _Header, name: str, max_pixels: int | None, max_aspect: float | None) -> None:
    width, height = header.width, header.height
    if width <= 0 or height <= 0:
        raise EmptyImageError(name, f"{width}x{height} image has no pixels")
    if max_pixels is not None:
        cost, budget = header.decode_bytes, max_pixels * _BYTES_PER_8BIT_PIXEL
        if cost > budget and header.decode_bytes_per_pixel <= _BYTES_PER_8BIT_PIXEL:
            raise ImageTooLargeError(
                name,
                f"{width}x{height} image has {width * height:,} pixels, over the limit of {max_pixels:,} "
                "(downscale it; in Python, max_pixels of cnnapps.load or read_image raises the limit)",
            )
        if cost > budget:
            raise ImageTooLargeError(
                name,
                f"{width}x{height} {header.depth} image needs about {_amount(cost)} to decode, over the "
                f"budget of {_amount(budget)} that max_pixels={max_pixels:,} allows (downscale it; in Python, "
                "max_pixels of cnnapps.load or read_image raises the limit)",
            )
    if max_aspect is not None and max(width, height) > max_aspect * min(width, height):
        raise ElongatedImageError(
            name,
            f"{width}x{height} image is more elongated than the limit of {max_aspect:g}:1 "
            "(crop it, or run a detector on it in tiles: --tile; in Python, max_aspect of read_image raises it)",
        )


def _check_jpeg_length(data: bytes, header: _Header, name: str) -> None:
    """A Huffman-coded JPEG spends at least one bit on every 8x8 block: fewer bytes than that cannot be
    the image its header claims (a cut-off download, or a forged header)."""
    if len(data) * 8 < header.jpeg_blocks:
        raise TruncatedImageError(
            name,
            f"JPEG header claims {header.width}x{header.height} but the file's {len(data):,} bytes cannot hold "
            f"that many pixels (at least {math.ceil(header.jpeg_blocks / 8):,} needed): truncated or forged",
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
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Image.DecompressionBombError:
        return  # beyond Pillow's own limit, which the caller lifted: let OpenCV judge the data
    except Exception:
        raise TruncatedImageError(name) from None


def _check_jpeg_complete(data: bytes, bgr: np.ndarray, header: _Header, name: str) -> None:
    """Catch scan data that ends before the image does. libjpeg then only warns on stderr and paints the
    rest flat grey (128); when the last block is such grey, decode again with junk bytes before the end
    marker: complete data ignores them, cut-short data decodes them into the missing blocks."""
    import cv2

    corner = bgr[-8:, -8:]
    if corner.dtype != np.uint8 or not (corner == 128).all() or not header.jpeg_blocks:
        return
    end = data.rfind(b"\xff\xd9")
    if end < 0:
        return
    junk = bytes(range(0x21, 0x7F)) * 8  # no 0xFF: nothing a decoder could take for a marker
    flags = cv2.IMREAD_REDUCED_COLOR_8 | cv2.IMREAD_IGNORE_ORIENTATION
    before = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    after = cv2.imdecode(np.frombuffer(data[:end] + junk + data[end:], np.uint8), flags)
    if before is not None and after is not None and not np.array_equal(before, after):
        raise TruncatedImageError(
            name, f"JPEG data ends before the {header.width}x{header.height} image does (the rest would be grey)"
        )


# --- decoding --------------------------------------------------------------------------------------------


def _decode_tiff(data: bytes, header: _Header, name: str) -> np.ndarray:
    """OpenCV reads most TIFFs (8/16-bit, float, any orientation, which it applies); Pillow the layouts
    it cannot (e.g. tiles larger than the image)."""
    import cv2

    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is not None:
        return _bgr_to_rgb(decoded, name)
    from PIL import Image

    what = f"cannot decode this {header.depth} TIFF: corrupt data, or a layout neither OpenCV nor Pillow reads"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return _from_pil(img, name, max_pixels=None, max_aspect=None)
    except ImageError:
        raise
    except Exception:
        raise ImageError(name, what) from None


def _decode_gif(data: bytes, name: str) -> np.ndarray:
    """The first frame, with Pillow (OpenCV's GIF decoder rejects valid files): palette indices looked up
    in numpy, which costs 4 bytes a pixel where Pillow's RGB conversion would cost 7."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode not in ("P", "L"):
                return _from_pil(img, name)
            indices = np.asarray(img)
            palette = img.getpalette("RGB") if img.mode == "P" else None
    except Image.DecompressionBombError:
        raise ImageTooLargeError(name, "GIF is larger than Pillow's own pixel limit") from None
    except Exception:
        raise TruncatedImageError(name, "corrupt or truncated GIF data") from None
    if palette is None:
        return np.repeat(indices[:, :, None], 3, axis=2)
    colours = np.zeros((256, 3), np.uint8)
    given = np.asarray(palette, np.uint8).reshape(-1, 3)[:256]
    colours[: len(given)] = given
    return colours[indices]


def _bgr_to_rgb(decoded: np.ndarray, name: str) -> np.ndarray:
    """OpenCV's grey, BGR or BGRA output as RGB uint8, converting in place where it can."""
    import cv2

    arr = _to_uint8(decoded, name, owned=True)
    if arr.ndim == 3 and arr.shape[2] == 2:  # grey and alpha
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    if arr.shape[2] == 4:
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB, dst=arr)


def _to_uint8(arr: np.ndarray, name: str, owned: bool = False) -> np.ndarray:
    """8-bit values: 16-bit scaled by 1/257 (rounded), floats as :func:`_float_to_uint8` reads them.
    ``owned`` lets a float array be converted in place (no extra copy of a large decode)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        import cv2

        if arr.ndim == 2 or arr.shape[2] <= 4:
            return cv2.convertScaleAbs(arr, alpha=1 / 257)  # == (x + 128) // 257 for every 16-bit x
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        return _float_to_uint8(arr if owned and arr.flags.writeable else arr.copy())
    raise UnsupportedInputError(name, f"unsupported pixel type {arr.dtype}")


def _float_to_uint8(work: np.ndarray) -> np.ndarray:
    """Float pixels (converted in place) as 8-bit: 0..255 values when the largest finite value is above 1, else
    0..1 values; then clipped to that range (+inf is white, -inf black, NaN 0) and rounded. The one rule for
    float arrays, float images from files and PIL's float ("F") images."""
    scale = 255.0 if _finite_max(work) > 1.0 else 1.0
    np.nan_to_num(work, copy=False)
    np.clip(work, 0.0, scale, out=work)
    if scale == 1.0:
        work *= 255.0
    work += 0.5
    return work.astype(np.uint8)


def _finite_max(arr: np.ndarray) -> float:
    """The largest finite value of ``arr`` (0 when it has none); NaN and infinities never set an image's scale."""
    peak = float(np.fmax.reduce(arr, axis=None, initial=-np.inf))  # NaN skipped, without a mask
    if math.isfinite(peak):
        return peak
    return float(np.max(arr, where=np.isfinite(arr), initial=0.0))  # +inf somewhere: look past it


def _from_array(
    arr: np.ndarray, name: str, max_pixels: int | None = None, max_aspect: float | None = None
) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    elif arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise UnsupportedInputError(name, f"array of shape {arr.shape} is not an image (expected HxW or HxWx1/3/4)")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise EmptyImageError(name, f"array of shape {arr.shape} has no pixels")
    _check_size(_Header(arr.shape[1], arr.shape[0]), name, max_pixels, max_aspect)
    return np.array(_to_uint8(arr[:, :, :3], name), copy=True, order="C")


def _from_pil(
    img: Image.Image, name: str, max_pixels: int | None = None, max_aspect: float | None = None
) -> np.ndarray:
    from PIL import ImageOps

    if img.width == 0 or img.height == 0:
        raise EmptyImageError(name, f"{img.width}x{img.height} image has no pixels")
    _check_size(_Header(img.width, img.height), name, max_pixels, max_aspect)
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16"):  # 16-bit grey: scaled by 1/257 whatever its values, as from a file
        return _from_array(np.asarray(img).astype(np.uint16), name)
    if img.mode == "I":  # 32-bit integers: 16-bit data when any value needs it, else 8-bit
        arr = np.asarray(img)
        big = arr.max(initial=0) > 255
        return _from_array(np.clip(arr, 0, 65535 if big else 255).astype(np.uint16 if big else np.uint8), name)
    if img.mode == "F":  # float grey: 0..1, or 0..255 as convert("F") gives; read as float arrays are
        return _from_array(np.asarray(img, np.float32), name)
    return _from_array(np.asarray(img.convert("RGB")), name)


def _is_pil_image(obj: object) -> bool:
    module = type(obj).__module__
    if not module.startswith("PIL."):
        return False
    from PIL import Image

    return isinstance(obj, Image.Image)
