"""Hostile inputs, made on the fly, through every reader path: ``read_image``, ``cnnapps classify``,
``cnnapps index build`` and the training dataset. Each bad input must be reported in one line naming it,
every good input processed, exit codes as documented, and memory bounded. ``make fuzz`` runs only these.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from cnnapps.datasets.io import read_image
from cnnapps.errors import ImageError

pytestmark = pytest.mark.hostile

FIXTURES = Path(__file__).parent / "fixtures" / "model_files_v1"
CLASSIFIER = FIXTURES / "classify.safetensors"
EMBEDDER = FIXTURES / "retrieve.safetensors"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def black_png(width: int, height: int) -> bytes:
    """A complete, valid all-black RGB PNG of any size in well under a second and a few MB of memory:
    one deflate segment (closed by a full flush, so it stands alone) repeated, then an empty last block."""
    row = b"\x00" * (1 + 3 * width)
    rows = max(1, (1 << 20) // len(row))
    while height % rows:
        rows -= 1
    block = row * rows
    deflate = zlib.compressobj(9)
    head = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    segment = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    adler = ((len(block) * (height // rows)) % 65521) << 16 | 1  # Adler-32 of that many zero bytes
    stream = head + segment * (height // rows - 1) + b"\x03\x00" + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", stream) + png_chunk(b"IEND", b"")


def forged_jpeg(width: int, height: int, side: int = 240) -> bytes:
    """A real JPEG of side x side noise (about 35 KB) whose header claims width x height."""
    noise = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG", quality=75)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def encoded(rgb: np.ndarray, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **params)
    return buf.getvalue()


def small_strip(width: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, 1)).save(buf, format="PNG")
    return buf.getvalue()  # 92 bytes at 4,000 pixels wide, 115 at 12,000


# name -> (bytes, the reason its error must give); written into one folder with the good images
BAD = {
    "strip_1x1000000.png": (lambda: small_strip(1_000_000), "more elongated than the limit of 100:1"),
    "strip_1x4000.png": (lambda: small_strip(4000), "more elongated than the limit of 100:1"),
    "strip_1x12000.png": (lambda: small_strip(12_000), "more elongated than the limit of 100:1"),
    "claims_12000x12000.jpg": (lambda: forged_jpeg(12_000, 12_000), "over the limit of 67,108,864"),
    "claims_1200x1200.jpg": (lambda: forged_jpeg(1200, 1200), "JPEG data ends before the 1200x1200 image does"),
    "black_13000x13000.png": (lambda: black_png(13_000, 13_000), "over the limit of 67,108,864"),
    "cut.jpg": (lambda: encoded(np.full((64, 64, 3), 90, np.uint8), "JPEG")[:300], "truncated"),
    "empty.png": (lambda: b"", "file is empty"),
    "notes.jpg": (lambda: b"these are not pixels", "not an image"),
}
WORST = ["strip_1x1000000.png", "strip_1x12000.png", "claims_12000x12000.jpg", "black_13000x13000.png"]


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[::8, ::8][:61, :47])


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, photo: np.ndarray) -> dict:
    """One folder (``mixed``) of good and bad images, links and oddities; returns what is where."""
    root = tmp_path_factory.mktemp("hostile")
    mixed = root / "mixed"
    mixed.mkdir()
    good = {}
    good["photo.jpg"] = encoded(photo, "JPEG", quality=90)
    good["photo.webp"] = encoded(photo, "WEBP", lossless=True)
    frames = [Image.fromarray(photo).convert("P"), Image.fromarray(255 - photo).convert("P")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    good["animated.gif"] = buf.getvalue()
    for orientation in range(1, 9):
        img = Image.fromarray(photo)
        exif = img.getexif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        img.save(buf, format="TIFF", exif=exif)
        good[f"oriented_{orientation}.tif"] = buf.getvalue()
    for top in (255, 65535):  # 16-bit grey: small values too must be scaled like big ones
        deep = (np.linspace(0, top, 47 * 61).reshape(61, 47)).astype(np.uint16)
        good[f"grey16_max{top}.png"] = cv2.imencode(".png", deep)[1].tobytes()
    for name, data in good.items():
        (mixed / name).write_bytes(data)
    for name, (make, _) in BAD.items():
        (mixed / name).write_bytes(make())

    (mixed / "dangling.png").symlink_to(mixed / "deleted.png")
    (mixed / "loop").mkdir()
    (mixed / "loop" / "up").symlink_to(mixed)
    (mixed / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (mixed / "readme.txt").write_text("not an image and not picked up")
    good_paths = sorted(str(mixed / name) for name in good)
    try:  # a file name that is not UTF-8, where the file system allows one
        raw = os.path.join(os.fsencode(mixed), b"caf\xe9.jpg")
        with open(raw, "wb") as fh:
            fh.write(good["photo.jpg"])
        good_paths.append(os.fsdecode(raw))
    except OSError:
        pass
    return {
        "root": root,
        "mixed": mixed,
        "good": sorted(good_paths),
        "bad": {str(mixed / name): reason for name, (_, reason) in BAD.items()},
        "skipped": {str(mixed / "dangling.png"): "dangling symlink", str(mixed / "loop" / "up"): "symlink loop"},
    }


def test_read_image_reports_every_bad_input_and_reads_every_good_one(hostile: dict) -> None:
    for path, reason in hostile["bad"].items():
        with pytest.raises(ImageError) as info:
            read_image(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and reason in message and "\n" not in message
    for path in hostile["good"]:
        rgb = read_image(path)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.flags.c_contiguous
    with pytest.raises(ImageError, match="dangling symlink"):
        read_image(hostile["mixed"] / "dangling.png")


def test_tiff_orientations_and_deep_pngs_match_the_references(hostile: dict) -> None:
    mixed = hostile["mixed"]
    for orientation in range(1, 9):
        path = mixed / f"oriented_{orientation}.tif"
        with Image.open(path) as img:
            expected = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
        assert np.array_equal(read_image(path), expected), f"orientation {orientation}"
    for top in (255, 65535):
        path = mixed / f"grey16_max{top}.png"
        with Image.open(path) as img:
            assert np.array_equal(read_image(img), read_image(path))


def test_classify_reports_bad_inputs_and_classifies_the_rest(hostile: dict, run_cli, tmp_path: Path) -> None:
    inputs = hostile["good"] + list(hostile["bad"])
    code, out, err = run_cli("classify", *inputs, "--model", CLASSIFIER, "--json", "-k", "1")
    results = json.loads(out)
    assert code == 1
    assert [r["path"] for r in results] == inputs
    assert all("predictions" in r and "error" not in r for r in results[: len(hostile["good"])])
    for r in results[len(hostile["good"]) :]:
        assert hostile["bad"][r["path"]] in r["error"]
    assert f"{len(hostile['bad'])} of {len(inputs)} inputs failed" in err
    for path in hostile["bad"]:
        assert sum(line.strip().startswith(f"{path}: ") for line in err.splitlines()) == 1

    code, out, _ = run_cli("classify", *hostile["good"], "--model", CLASSIFIER, "--json")
    assert code == 0 and all("error" not in r for r in json.loads(out))
    code, out, err = run_cli("classify", tmp_path, "--model", CLASSIFIER)  # an empty folder: nothing ran
    assert code == 2 and "no images found" in err and err.strip().count("\n") == 0


def test_classify_a_folder_walks_it_once_and_says_what_it_skipped(
    hostile: dict, run_cli, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="cnnapps"):
        code, out, _ = run_cli("classify", hostile["mixed"], "--model", CLASSIFIER, "--json")
    results = {r["path"]: r for r in json.loads(out)}
    assert code == 1
    assert sorted(results) == sorted(hostile["good"] + list(hostile["bad"]))
    assert all("error" in results[p] for p in hostile["bad"])
    assert not any("error" in results[p] for p in hostile["good"])
    warnings = [r.getMessage() for r in caplog.records if r.name == "cnnapps"]
    for path, reason in hostile["skipped"].items():
        assert sum(m.startswith(f"skipping {path}: {reason}") for m in warnings) == 1
    heic = hostile["mixed"] / "photo.heic"
    assert any(m.startswith(f"skipping {heic}: image format not supported") for m in warnings)


def test_index_build_indexes_the_good_images(hostile: dict, run_cli, tmp_path: Path) -> None:
    index = tmp_path / "index"
    code, out, err = run_cli("index", "build", hostile["mixed"], "--index", index, "--model", EMBEDDER, "--json")
    assert code == 1
    assert json.loads(out)["items"] == len(hostile["good"])
    for path, reason in hostile["bad"].items():
        assert sum(line.strip().startswith(f"{path}: ") and reason in line for line in err.splitlines()) == 1
    code, out, _ = run_cli("index", "info", "--index", index, "--json")
    assert code == 0 and json.loads(out)["items"] == len(hostile["good"])


def test_training_dataset_skips_bad_images_once_each(hostile: dict, caplog: pytest.LogCaptureFixture) -> None:
    from cnnapps.datasets.folders import class_folders
    from cnnapps.datasets.training import LabeledImageDataset

    with caplog.at_level("WARNING", logger="cnnapps"):
        items = class_folders(hostile["root"], ["mixed"])
        dataset = LabeledImageDataset(items, lambda rgb: cv2.resize(rgb, (16, 16)).transpose(2, 0, 1).copy())
        served = [dataset[i] for i in range(len(dataset))] + [dataset[i] for i in range(len(dataset))]
    assert sorted(items.paths) == sorted(hostile["good"] + list(hostile["bad"]))
    assert all(tuple(x.shape) == (3, 16, 16) and label == 0 for x, label in served)
    warnings = [r.getMessage() for r in caplog.records if r.name == "cnnapps"]
    for path, reason in hostile["bad"].items():
        lines = [m for m in warnings if m.startswith(f"skipping {path}: ")]
        assert len(lines) == 1 and reason in lines[0] and "\n" not in lines[0]


def test_worst_cases_cost_little_memory(hostile: dict) -> None:
    """Before the limits these cost 0.8-2.4 GB to classify and 5-7.5 GB to detect, each."""
    script = "\n".join(
        [
            "import json, resource, sys",
            "import cnnapps",
            "from cnnapps.apps.detect.predictor import DetectionPredictor",
            "from cnnapps.datasets.io import read_for_batch",
            "classifier_file, detector_file, good, *worst = sys.argv[1:]",
            "classifier = cnnapps.load(classifier_file, device='cpu', engine='eager')",
            "detector = DetectionPredictor(detector_file, device='cpu')",
            "assert classifier.predict(good)[0].ok and detector.predict(good)[0].error is None",
            "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024",
            "before = peak()",
            "errors = {p: [read_for_batch(p)[2], classifier.predict(p)[0].error, detector.predict(p)[0].error]",
            "          for p in worst}",
            "print(json.dumps({'grew': peak() - before, 'errors': errors}))",
        ]
    )
    worst = [str(hostile["mixed"] / name) for name in WORST]
    detector = FIXTURES / "segment.safetensors"
    args = [sys.executable, "-c", script, str(CLASSIFIER), str(detector), hostile["good"][0], *worst]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for path, errors in report["errors"].items():
        assert all(e and hostile["bad"][path] in e for e in errors), errors
    assert report["grew"] < 200 * 2**20, f"peak memory grew by {report['grew'] / 2**20:.0f} MB"
