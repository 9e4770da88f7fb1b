"""The service's limits as clients meet them: health probes without a Host header, the image count of a multipart
request with other files in it, and the message for an image over the pixel limit."""

from __future__ import annotations

import socket
import struct
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from cnnapps.serve.app import create_app, running

LENET = str(Path(__file__).parents[1] / "fixtures" / "model_files_v1" / "classify.safetensors")


def _png(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` (its pixel data is a stub: the size is refused first)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def app() -> object:
    return create_app([LENET], max_batch=8, max_wait_ms=5, max_images=4, warm_up=False)


def _raw(url: str, request: bytes) -> bytes:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def test_probes_without_a_host_header_are_answered_and_foreign_hosts_still_refused(app) -> None:
    with running(app) as url:
        for path in ("/livez", "/readyz"):
            answer = _raw(url, f"GET {path} HTTP/1.0\r\n\r\n".encode())
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        foreign = _raw(url, b"GET /readyz HTTP/1.0\r\nHost: evil.example\r\n\r\n")
        assert foreign.startswith(b"HTTP/1.1 400") and b"is not served here" in foreign
        empty = _raw(url, b"GET /readyz HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n")
        assert empty.startswith(b"HTTP/1.1 400")  # a Host header there but empty is no probe's


def test_only_image_fields_count_towards_max_images(app) -> None:
    tiny = cv2.imencode(".png", np.full((8, 8, 3), 9, np.uint8))[1].tobytes()
    images = [("images", (f"{i}.png", tiny, "image/png")) for i in range(4)]
    other = [("notes", ("notes.txt", b"taken on Monday", "text/plain"))]
    with TestClient(app, base_url="http://localhost") as c:
        at_limit = c.post("/v1/classify", files=images + other)
        over = c.post("/v1/classify", files=[*images, images[0], *other])
        many_others = c.post("/v1/classify", files=images + other * 17)
    assert at_limit.status_code == 200 and len(at_limit.json()) == 4, at_limit.text[:300]
    assert over.status_code == 413
    assert over.json() == {"error": "more than 4 images in one request: send at most 4 (--max-images)"}
    assert many_others.status_code == 413  # 4 images and 17 other files: not "more than 4 images"
    assert many_others.json() == {
        "error": "more than 20 files in one request: send at most 4 images (--max-images) and 16 other files"
    }


def test_an_image_over_the_pixel_limit_says_what_the_client_can_do(app) -> None:
    with TestClient(app, base_url="http://localhost") as c:
        answer = c.post("/v1/classify", files={"image": ("big.png", _png(30_000, 30_000), "image/png")})
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert "30000x30000 image has 900,000,000 pixels, over the limit of 67,108,864" in error
    assert error.endswith("(downscale it; in Python, max_pixels of cnnapps.load or read_image raises the limit)")
    assert "raise max_pixels to allow it" not in error
