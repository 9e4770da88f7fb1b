from __future__ import annotations

import io
import os
import re
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from cnnapps.datasets.io import (
    DEFAULT_MAX_ASPECT,
    IMAGE_SUFFIXES,
    ElongatedImageError,
    read_image,
    sniff_format,
    write_image,
)
from cnnapps.errors import (
    EmptyImageError,
    ImageError,
    ImageNotFoundError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedInputError,
)
from cnnapps.files import OutputExistsError


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


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(photo: np.ndarray, fmt: str, orientation: int) -> None:
    img = Image.fromarray(photo)
    exif = img.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    params = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}.get(fmt, {})
    img.save(buf, format=fmt, exif=exif, **params)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))).convert("RGB"))
    out = read_image(buf.getvalue())
    assert out.shape == expected.shape
    if fmt == "JPEG":
        assert np.abs(out.astype(int) - expected).mean() < 2  # IDCT rounding differs between decoders
    else:
        assert np.array_equal(out, expected)


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


@pytest.mark.parametrize("url", ["https://example.org/cat.jpg", "s3://bucket/cat.jpg"])
def test_a_url_is_said_to_be_one(url: str) -> None:
    # "no such file", as if a local file were missing
    with pytest.raises(ImageNotFoundError, match=re.escape(f"{url}: a URL: cnnapps reads files and does not download")):
        read_image(url)


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


def test_sixteen_bit_grey_reads_the_same_from_a_path_and_as_a_pil_image(tmp_path: Path) -> None:
    for values in ([0, 100, 200, 255], [0, 100, 3000, 65535]):  # all <= 255 was left unscaled from a PIL image
        path = tmp_path / f"grey16_{max(values)}.png"
        assert cv2.imwrite(str(path), np.array([values, values[::-1]], np.uint16))
        with Image.open(path) as img:
            assert img.mode == "I;16"
            from_pil = read_image(img)
        from_path = read_image(path)
        assert np.array_equal(from_pil, from_path)
        assert from_path[0, :, 0].tolist() == [(v + 128) // 257 for v in values]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("peak", [1.0, 255.0])
def test_float_tiff_decodes_scaled_like_float_arrays(dtype: type, peak: float, tmp_path: Path) -> None:
    import tifffile

    rgb = np.random.default_rng(0).random((9, 7, 3)).astype(dtype) * peak
    rgb[0, 0] = [np.inf, -0.5, np.nan]  # +inf is white, below 0 is black, NaN is 0: none of them sets the scale
    rgb[0, 1] = [300.0 if peak > 1 else 1.0, -np.inf, peak]  # 0..255 values above 255: clipped to white
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")
    expected = (np.clip(np.nan_to_num(rgb / peak), 0, 1) * 255 + 0.5).astype(np.uint8)
    assert expected[0, :2].tolist() == [[255, 0, 0], [255, 0, 255]]
    assert np.array_equal(read_image(path), expected)
    assert np.array_equal(read_image(rgb), expected)
    tifffile.imwrite(path, rgb[:, :, 1], photometric="minisblack")
    assert np.array_equal(read_image(path), np.repeat(expected[:, :, 1:2], 3, axis=2))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_arrays_of_0_to_255_read_like_their_uint8_pixels(photo: np.ndarray, dtype: type) -> None:
    """A float array whose finite values reach above 1 holds 0..255 values (``photo.astype(np.float32)``): it was
    clipped to [0, 1] and came out all white."""
    assert np.array_equal(read_image(photo.astype(dtype)), photo)
    assert np.array_equal(read_image(photo[:, :, 0].astype(dtype)), np.repeat(photo[:, :, :1], 3, axis=2))
    assert np.array_equal(read_image(photo.astype(dtype) / 255), photo)  # 0..1 as before


def test_float_arrays_and_float_pil_images_follow_one_rule(photo: np.ndarray) -> None:
    """The same float pixels read the same as an array and as a PIL "F" image, whichever scale they are in."""
    grey = photo[:, :, 0].astype(np.float32)
    bright = grey > 200
    for pixels in (grey, grey / 255, grey * 1.2, np.where(bright, np.inf, grey), np.where(bright, np.nan, grey)):
        from_array, from_pil = read_image(pixels), read_image(Image.fromarray(pixels))
        assert Image.fromarray(pixels).mode == "F"
        assert np.array_equal(from_array, from_pil)
    brighter = read_image(grey * 1.2)  # 0..306: a 0..255 image whose brightest pixels are clipped, not divided twice
    assert np.array_equal(brighter[:, :, 0], np.clip(grey * 1.2 + 0.5, 0, 255).astype(np.uint8))
    assert read_image(np.full((2, 2), np.inf, np.float32)).tolist() == [[[255] * 3] * 2] * 2  # no finite pixel: 0..1


def test_tiff_with_tiles_larger_than_the_image_falls_back_to_pillow(photo: np.ndarray, tmp_path: Path) -> None:
    import tifffile

    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, photo[:20, :20], tile=(32, 32), photometric="rgb")
    assert np.array_equal(read_image(path), photo[:20, :20])


def test_gif_first_frame_is_read(photo: np.ndarray, tmp_path: Path) -> None:
    assert ".gif" in IMAGE_SUFFIXES
    frames = [Image.fromarray(photo).convert("P"), Image.fromarray(255 - photo).convert("P")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], transparency=0)
    assert sniff_format(path.read_bytes()) == "GIF"
    with Image.open(path) as img:
        expected = np.asarray(img.convert("RGB"))
    assert np.array_equal(read_image(path), expected)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(TruncatedImageError, match=re.escape(f"{path}: corrupt or truncated GIF data")):
        read_image(path)


def encode_any(fmt: str, width: int, height: int) -> bytes:
    """A small image of each format and flavour whose header the size checks read."""
    rgb = np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    buf = io.BytesIO()
    if fmt == "WEBP-VP8X":
        exif = img.getexif()
        exif[0x0112] = 1
        img.save(buf, format="WEBP", quality=80, exif=exif)
    elif fmt == "JPEG-progressive":
        img.save(buf, format="JPEG", progressive=True)
    elif fmt == "TIFF-big-endian":
        import tifffile

        tifffile.imwrite(buf, rgb, byteorder=">", photometric="rgb")
    else:
        name, _, flavour = fmt.partition("-")
        img.save(buf, format=name, **({"lossless": True} if flavour == "lossless" else {}))
    return buf.getvalue()


@pytest.mark.parametrize(
    "fmt",
    ["JPEG", "JPEG-progressive", "PNG", "WEBP", "WEBP-lossless", "WEBP-VP8X", "BMP", "TIFF", "TIFF-big-endian", "GIF"],
)
def test_size_limits_read_the_header_right_for_every_format(fmt: str) -> None:
    data = encode_any(fmt, 37, 23)
    assert read_image(data, max_pixels=37 * 23).shape == (23, 37, 3)
    with pytest.raises(ImageTooLargeError, match="<bytes>: 37x23 image has 851 pixels, over the limit of 850"):
        read_image(data, max_pixels=37 * 23 - 1)
    with pytest.raises(ElongatedImageError, match=r"<bytes>: 37x23 image is more elongated than the limit of 1\.5:1"):
        read_image(data, max_aspect=1.5)


def png_header_only(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A PNG signature and IHDR claiming any size, with no pixel data: decoding it would fail."""
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def test_elongated_images_are_refused_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "strip.png"
    path.write_bytes(png_header_only(1_000_000, 1))
    with pytest.raises(ElongatedImageError) as info:
        read_image(path)
    assert str(info.value) == (
        f"{path}: 1000000x1 image is more elongated than the limit of 100:1 (crop it, or run a detector on it in "
        "tiles: --tile; in Python, max_aspect of read_image raises it)"
    )
    assert DEFAULT_MAX_ASPECT == 100
    Image.new("RGB", (4000, 1)).save(path)
    with pytest.raises(ElongatedImageError):
        read_image(path)
    assert read_image(path, max_aspect=None).shape == (1, 4000, 3)
    assert read_image(np.zeros((1, 100), np.uint8)).shape == (1, 100, 3)  # exactly 100:1 passes
    with pytest.raises(ElongatedImageError, match="<array>: 101x1"):
        read_image(np.zeros((1, 101), np.uint8))
    with pytest.raises(ElongatedImageError, match="<PIL image>: 1x500"):
        read_image(Image.new("L", (1, 500)))


def test_memory_budget_counts_deep_samples(tmp_path: Path) -> None:
    deep = np.zeros((30, 30), np.uint16)
    ok, encoded = cv2.imencode(".png", deep)
    assert ok
    # 900 16-bit pixels need 12 bytes each to decode: over a budget of 1,000 8-bit pixels (6 bytes each)
    said = r"<bytes>: 30x30 16-bit image needs about 11 kB to decode, over the budget of 6.0 kB that "
    with pytest.raises(ImageTooLargeError, match=said):
        read_image(encoded.tobytes(), max_pixels=1000)
    assert read_image(encoded.tobytes(), max_pixels=1800).shape == (30, 30, 3)
    assert read_image(encode(np.zeros((30, 30, 3), np.uint8), "PNG"), max_pixels=900).shape == (30, 30, 3)
    with pytest.raises(
        ImageTooLargeError, match="13000x13000 image has 169,000,000 pixels, over the limit of 67,108,864"
    ):
        read_image(png_header_only(13_000, 13_000))  # refused before decoding: there is no pixel data at all


def forged_jpeg(photo: np.ndarray, width: int, height: int) -> bytes:
    """A real JPEG whose frame header is edited to claim a larger size than its data holds."""
    data = bytearray(encode(photo, "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_jpeg_claiming_more_than_its_data_holds_is_truncated(photo: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "forged.jpg"
    path.write_bytes(forged_jpeg(photo, 600, 600))  # ends with a proper end marker: only the pixels are missing
    with pytest.raises(TruncatedImageError, match=re.escape(f"{path}: JPEG data ends before the 600x600 image does")):
        read_image(path)
    path.write_bytes(forged_jpeg(photo, 12_000, 12_000))  # refused from its length alone, even with no size limit
    with pytest.raises(TruncatedImageError, match=re.escape(f"{path}: JPEG header claims 12000x12000 but the file")):
        read_image(path, max_pixels=None)


def test_jpeg_with_a_flat_grey_corner_is_not_mistaken_for_a_truncated_one(photo: np.ndarray) -> None:
    grey = photo.copy()
    grey[50:, 40:] = 128  # the bottom-right blocks decode to exactly 128, like libjpeg's filler
    for params in ({"quality": 90}, {"quality": 90, "progressive": True}, {"quality": 90, "subsampling": 0}):
        out = read_image(encode(grey, "JPEG", **params))
        assert out.shape == photo.shape and (out[-8:, -8:] == 128).all()


def test_write_image_does_not_follow_a_planted_symlink(photo: np.ndarray, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".filters.png.tmp").symlink_to(victim)  # the name the writer used to take for its temporary file
    target = out / "filters.png"
    write_image(target, photo)
    assert victim.read_text() == "keep me"
    assert np.array_equal(read_image(target), photo)
    assert sorted(p.name for p in out.iterdir()) == [".filters.png.tmp", "filters.png"]  # no temporary file left

    link = out / "link.png"
    link.symlink_to(victim)
    with pytest.raises(OutputExistsError, match=re.escape(f"{link}: already exists; choose another output path")):
        write_image(link, photo)
    write_image(link, photo, overwrite=True)  # replaces the link itself, never writes through it
    assert victim.read_text() == "keep me" and not link.is_symlink()


def test_written_images_get_the_usual_mode(photo: np.ndarray, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_image(tmp_path / "a.png", photo)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_an_input_opened_for_a_batch_says_what_decoding_it_costs_and_decodes_as_read_image(
    photo: np.ndarray, tmp_path: Path
) -> None:
    """A file is read once, its header checked, before any pixel is decoded; the cost counts 16-bit pixels twice
    and an array's own pixels; what cannot be read costs nothing and gives the error ``read_image`` gives."""
    from cnnapps.datasets.io import decode_opened, open_for_batch

    path = tmp_path / "photo.png"
    assert cv2.imwrite(str(path), photo[:, :, ::-1])
    deep = encode_image(Image.fromarray(np.zeros((30, 40), np.uint16)))
    opened = {src if isinstance(src, str) else type(src).__name__: open_for_batch(src)
              for src in (str(path), deep, photo, Image.fromarray(photo), str(tmp_path / "gone.png"))}  # fmt: skip
    assert [o.pixels for o in opened.values()] == [101 * 77, 2 * 30 * 40, 101 * 77, 101 * 77, 0]
    assert isinstance(opened[str(path)].src, bytes)
    for src, one in opened.items():
        name, rgb, error = decode_opened(one)
        if src.endswith("gone.png"):
            with pytest.raises(ImageNotFoundError) as caught:
                read_image(src)
            assert rgb is None and error == caught.value.detail and name == src
            continue
        np.testing.assert_array_equal(rgb, read_image(one.src if src == "bytes" else photo))
    small = open_for_batch(str(path), max_pixels=100)
    assert small.pixels == 0 and small.error.startswith("77x101 image has 7,777 pixels, over the limit of 100")
