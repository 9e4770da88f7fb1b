from __future__ import annotations

import io
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from cnnapps.datasets.io import read_image
from cnnapps.errors import (
    EmptyImageError,
    ImageError,
    ImageNotFoundError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedInputError,
)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photo, cropped small and with odd sides so orientation mistakes show."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[::4, ::4][:101, :77])


def encode(rgb: np.ndarray, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **params)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_round_trip_exactly(photo: np.ndarray, fmt: str, tmp_path: Path) -> None:
    params = {"lossless": True} if fmt == "WEBP" else {}
    path = tmp_path / f"img.{fmt.lower()}"
    path.write_bytes(encode(photo, fmt, **params))
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == photo.shape
    assert np.array_equal(out, photo)


def test_jpeg_decodes_like_pillow(photo: np.ndarray) -> None:
    data = encode(photo, "JPEG", quality=95)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    out = read_image(data)
    assert out.shape == photo.shape
    assert np.abs(out.astype(int) - expected).mean() < 1.5  # IDCT rounding differs between decoders


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(photo: np.ndarray, orientation: int) -> None:
    img = Image.fromarray(photo)
    exif = img.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))).convert("RGB"))
    out = read_image(buf.getvalue())
    assert out.shape == expected.shape
    assert np.abs(out.astype(int) - expected).mean() < 2


def test_grayscale_becomes_three_equal_channels(photo: np.ndarray) -> None:
    grey = photo.mean(axis=2).astype(np.uint8)
    out = read_image(encode(grey, "PNG"))
    assert out.shape == (*grey.shape, 3)
    for c in range(3):
        assert np.array_equal(out[:, :, c], grey)


def test_rgba_drops_alpha(photo: np.ndarray) -> None:
    rgba = np.dstack([photo, np.full(photo.shape[:2], 7, np.uint8)])
    assert np.array_equal(read_image(encode(rgba, "PNG")), photo)
    assert np.array_equal(read_image(rgba), photo)


def test_palette_png_expands_to_its_colours() -> None:
    img = Image.new("P", (4, 2))
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.putdata([0, 1, 0, 1, 1, 0, 1, 0])
    out = read_image(encode_image(img))
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 1].tolist() == [0, 255, 0]


def encode_image(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_sixteen_bit_png_scales_to_eight_bits() -> None:
    deep = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    ok, encoded = cv2.imencode(".png", deep)
    assert ok
    out = read_image(encoded.tobytes())
    assert out[0, :, 0].tolist() == [0, 128, 255]
    deep_rgb = np.zeros((2, 2, 3), np.uint16)
    deep_rgb[..., 0] = 65535  # red in RGB order
    ok, encoded = cv2.imencode(".png", deep_rgb[..., ::-1].copy())
    assert read_image(encoded.tobytes())[0, 0].tolist() == [255, 0, 0]


def test_arrays_and_pil_images_are_accepted(photo: np.ndarray) -> None:
    assert np.array_equal(read_image(Image.fromarray(photo)), photo)
    assert np.array_equal(read_image(photo.astype(np.float32) / 255.0), photo)
    grey = read_image(photo[:, :, 0])
    assert grey.shape == photo.shape and np.array_equal(grey[:, :, 2], photo[:, :, 0])
    assert read_image(Image.fromarray(np.full((3, 3), 65535, np.uint16)))[0, 0].tolist() == [255, 255, 255]


def test_inputs_are_not_modified(photo: np.ndarray) -> None:
    original = photo.copy()
    out = read_image(photo)
    out[:] = 0
    assert np.array_equal(photo, original)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageNotFoundError, match=re.escape(f"{path}: no such file")):
        read_image(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(EmptyImageError, match=r"empty\.png: file is empty"):
        read_image(path)


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels")
    with pytest.raises(NotAnImageError, match=r"notes\.jpg: not an image"):
        read_image(path)
    with pytest.raises(NotAnImageError, match="is a directory"):
        read_image(tmp_path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
def test_truncated_files(photo: np.ndarray, fmt: str, tmp_path: Path) -> None:
    data = encode(photo, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(TruncatedImageError, match=re.escape(f"cut.{fmt.lower()}")):
        read_image(path)


def test_truncated_header(photo: np.ndarray) -> None:
    with pytest.raises(TruncatedImageError, match="<bytes>: corrupt or truncated PNG header"):
        read_image(encode(photo, "PNG")[:20])


def test_jpeg_with_trailing_data_still_decodes(photo: np.ndarray) -> None:
    data = encode(photo, "JPEG", quality=95) + b"extra bytes a phone appended"
    assert read_image(data).shape == photo.shape


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.new("L", (4000, 3000)).save(path)
    with pytest.raises(
        ImageTooLargeError, match=r"bomb.png: 4000x3000 image has 12,000,000 pixels, over the limit of 1,000,000"
    ):
        read_image(path, max_pixels=1_000_000)
    assert read_image(path, max_pixels=None).shape == (3000, 4000, 3)
    with pytest.raises(ImageTooLargeError):
        read_image(np.zeros((2000, 1000), np.uint8), max_pixels=1000)


def test_unsupported_inputs() -> None:
    with pytest.raises(UnsupportedInputError, match="expected a path, bytes, numpy array or PIL image"):
        read_image(42)
    with pytest.raises(UnsupportedInputError, match="shape"):
        read_image(np.zeros((4, 4, 2), np.uint8))


def test_every_error_is_one_line_and_an_image_error(tmp_path: Path) -> None:
    for bad in (tmp_path / "missing.png", b"", b"garbage"):
        with pytest.raises(ImageError) as info:
            read_image(bad)
        assert "\n" not in str(info.value)
