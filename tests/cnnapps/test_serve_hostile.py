"""The HTTP service against hostile clients, over real sockets: deep JSON, huge chunked bodies, a bad upload
batched with good ones, foreign Host headers, clients that stall. Each gets its 4xx (or is dropped) and the
good requests around it are answered as usual."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import httpx
import numpy as np
import pytest

from cnnapps.serve.batcher import MicroBatcher

REQUEST_TIMEOUT_S = 1.5
KEEP_ALIVE_S = 1.0
LIMIT = 2**20  # --max-upload-mb 1


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A small untrained instance segmenter (as in test_serve.py) behind a real uvicorn, with batches that
    wait long enough to gather concurrent requests, and short deadlines."""
    import torch

    from cnnapps.apps.detect.model import create_detector, save_detector
    from cnnapps.serve.app import create_app, running

    torch.manual_seed(0)
    model = create_detector("segment", "resnet18", num_classes=3, class_names=["__background__", "circle", "square"],
                            backbone_weights=None, fpn_channels=16, min_size=96, max_size=128)  # fmt: skip
    path = tmp_path_factory.mktemp("models") / "shapes.safetensors"
    save_detector(path, model)
    app = create_app([str(path)], max_batch=8, max_wait_ms=400, max_upload_mb=1, request_timeout_s=REQUEST_TIMEOUT_S,
                     allowed_hosts=["photos.lan"])  # fmt: skip
    with running(app, keep_alive_s=KEEP_ALIVE_S) as served:
        yield served


@pytest.fixture(scope="module")
def jpeg(chelsea: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", chelsea[::4, ::4, ::-1])[1].tobytes()


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def _upload(data: bytes) -> dict:
    return {"files": {"image": ("x.png", data, "image/png")}}


def _closed_after(sock: socket.socket, limit_s: float) -> tuple[float, bytes]:
    """Read until the server closes the connection: (seconds it took, what it sent); fails after ``limit_s``."""
    start, received = time.monotonic(), b""
    sock.settimeout(limit_s)
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept a stalled connection open for {limit_s} s (got {received[:80]!r})")
    return time.monotonic() - start, received


def _assert_serving(url: str, jpeg: bytes) -> None:
    assert httpx.get(f"{url}/healthz", timeout=10).json()["status"] == "ok"
    assert httpx.post(f"{url}/v1/segment", timeout=30, **_upload(jpeg)).status_code == 200


def test_json_nested_100000_deep_is_a_422(url: str, jpeg: bytes) -> None:
    deep = b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    answer = httpx.post(f"{url}/v1/segment", content=deep, headers={"content-type": "application/json"}, timeout=30)
    assert answer.status_code == 422 and "base64" in answer.json()["error"]
    _assert_serving(url, jpeg)


@pytest.mark.parametrize("kind", ["multipart/form-data; boundary=XX", "application/json", "image/jpeg"])
def test_a_huge_chunked_body_gets_413_while_it_streams(url: str, jpeg: bytes, kind: str) -> None:
    """No Content-Length to refuse up front: the server counts as it reads and answers 413 once past the
    limit, long before the 64 MB the client means to send, then drops the connection."""
    sock = _connect(url)
    sock.sendall(f"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode())  # fmt: skip
    chunk = b"%x\r\n%s\r\n" % (2**16, b"A" * 2**16)
    sent, received = 0, b""
    sock.settimeout(0.01)
    while sent < 64 * 2**20:
        try:
            received = sock.recv(65536)
            break
        except TimeoutError:
            pass
        try:
            sock.sendall(chunk)
            sent += 2**16
        except OSError:  # closed while we were sending
            break
    taken, rest = _closed_after(sock, 5 * KEEP_ALIVE_S)
    answer = received + rest
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"over the 1,048,576-byte limit" in answer
    assert sent < 16 * LIMIT  # it answered as soon as the limit was passed (plus what the socket buffers held)
    assert taken < KEEP_ALIVE_S + 1.0  # the rest of the body is not read for long
    _assert_serving(url, jpeg)


def test_a_declared_huge_body_and_an_unknown_type_are_refused_before_reading(url: str) -> None:
    for headers, status in [({"content-type": "application/json", "content-length": str(300 * 2**20)}, 413),
                            ({"content-type": "image/jpeg", "content-length": str(300 * 2**20)}, 413),
                            ({"content-type": "text/html", "transfer-encoding": "chunked"}, 415)]:  # fmt: skip
        sock = _connect(url)
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(f"POST /v1/segment HTTP/1.1\r\nHost: localhost\r\n{lines}\r\n".encode() + b"A" * 1000)
        assert sock.recv(65536).startswith(f"HTTP/1.1 {status}".encode())
        sock.close()


def test_a_bad_upload_fails_alone_and_its_batch_mates_are_answered(
    url: str, jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight concurrent requests share a batch; the model raises on one of the pictures (a stand-in for any
    input a model trips over) and another is a 1 x 5000 strip: those two get their 422, the six others
    their 200s."""
    poison = cv2.imencode(".jpg", np.full((48, 48, 3), 77, np.uint8))[1].tobytes()
    strip = cv2.imencode(".png", np.zeros((1, 5000, 3), np.uint8))[1].tobytes()
    run_batch, run_alone, retried = MicroBatcher._run_batch, MicroBatcher._run_alone, []

    def model_trips_on_poison(self: MicroBatcher, items: list) -> list:
        if any(image == poison for image, _ in items):
            raise RuntimeError("the model fell over")
        return run_batch(self, items)

    def spy(self: MicroBatcher, items: list) -> list:
        retried.append(len(items))
        return run_alone(self, items)

    monkeypatch.setattr(MicroBatcher, "_run_batch", model_trips_on_poison)
    monkeypatch.setattr(MicroBatcher, "_run_alone", spy)
    uploads = {3: poison, 5: strip}
    answers: dict[int, httpx.Response] = {}
    start = threading.Barrier(8)

    def ask(k: int) -> None:
        start.wait()
        answers[k] = httpx.post(f"{url}/v1/segment", timeout=60, **_upload(uploads.get(k, jpeg)))

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers[3].status_code == 422, answers[3].text
    assert "the model could not run on it (RuntimeError: the model fell over)" in answers[3].json()["error"]
    assert answers[5].status_code == 422 and answers[5].json()["error"].startswith("image: ")
    good = [answers[k] for k in range(8) if k not in uploads]
    assert [a.status_code for a in good] == [200] * 6 and all("instances" in a.json() for a in good)
    assert retried and max(retried) > 1  # the poisoned picture did share a batch with others
    _assert_serving(url, jpeg)


def test_a_batch_that_fails_as_a_whole_is_retried_one_by_one() -> None:
    import asyncio

    def run(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("13 is unlucky")
        return [i * 10 for i in items]

    async def main() -> list[object]:
        batcher = MicroBatcher(run, max_batch=4, max_wait_ms=50)
        answers = await asyncio.gather(*(batcher.submit(i) for i in (1, 13, 2, 3)), return_exceptions=True)
        batcher.close()
        return answers

    answers = asyncio.run(main())
    assert answers[0] == 10 and answers[2:] == [20, 30]
    assert isinstance(answers[1], ValueError) and str(answers[1]) == "13 is unlucky"


@pytest.mark.parametrize(
    ("host", "status"),
    [("evil.example", 400), ("evil.example:80", 400), ("localhost.evil.example", 400), ("", 400),
     ("localhost", 200), ("LOCALHOST.:1234", 200), ("127.0.0.1:8000", 200), ("[::1]:8000", 200),
     ("10.1.2.3", 200), ("photos.lan", 200)],
)  # fmt: skip
def test_only_this_machine_s_names_are_accepted_as_host(url: str, host: str, status: int) -> None:
    """A page whose DNS name was rebound to this machine sends its own name: it gets 400, not the answers."""
    answer = httpx.get(f"{url}/v1/models", headers={"host": host}, timeout=10)
    assert answer.status_code == status, answer.text
    if status == 400:
        assert "--allowed-host" in answer.json()["error"]
    else:
        assert answer.json()["models"][0]["name"] == "shapes"


def test_slow_clients_are_dropped_at_the_deadline_and_others_are_served(url: str, jpeg: bytes) -> None:
    """Clients that stall in their headers, in their body, say nothing, or trickle a byte at a time, are
    closed within the request deadline (one stalled in its body first hears 408); a good request meanwhile
    is answered at once."""
    opened = time.monotonic()
    stalled = [_connect(url) for _ in range(4)]
    stalled[0].sendall(b"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")  # headers, then nothing
    stalled[1].sendall(b"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b'Content-Length: 1000\r\n\r\n{"ima')  # fmt: skip
    # stalled[2] connects and sends nothing at all; stalled[3] sends a header byte every 0.1 s

    def trickle() -> None:
        with contextlib.suppress(OSError):
            for byte in b"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200:
                stalled[3].send(bytes([byte]))
                time.sleep(0.1)

    threading.Thread(target=trickle, daemon=True).start()
    good = httpx.post(f"{url}/v1/segment", timeout=30, **_upload(jpeg))
    assert good.status_code == 200 and time.monotonic() - opened < REQUEST_TIMEOUT_S
    results = [_closed_after(s, REQUEST_TIMEOUT_S + 3) for s in stalled]
    for sock, (_, received) in zip(stalled, results, strict=True):
        assert time.monotonic() - opened < REQUEST_TIMEOUT_S + 2
        sock.close()
        if sock is stalled[1]:
            assert received.startswith(b"HTTP/1.1 408"), received[:200]
            assert "did not all arrive within 1.5 s" in json.loads(received.split(b"\r\n\r\n", 1)[1])["error"]
        else:
            assert received == b""
    _assert_serving(url, jpeg)


def test_an_idle_kept_alive_connection_is_closed(url: str) -> None:
    sock = _connect(url)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    taken, received = _closed_after(sock, KEEP_ALIVE_S + 3)
    assert received.startswith(b"HTTP/1.1 200") and taken < KEEP_ALIVE_S + 1


def test_docs_use_only_files_this_server_serves(url: str) -> None:
    """The API page works offline: every script, style sheet and icon it names comes from this server."""
    import re

    page = httpx.get(f"{url}/docs", timeout=10)
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(assets) == 3 and all(a.startswith("/") and not a.startswith("//") for a in assets), assets
    assert "http://" not in page.text and "https://" not in page.text
    for asset in assets:
        answer = httpx.get(f"{url}{asset}", timeout=10)
        assert answer.status_code == 200 and len(answer.content) > 500, asset
    assert "Apache License" in httpx.get(f"{url}/docs/assets/swagger-ui-LICENSE.txt", timeout=10).text
    assert httpx.get(f"{url}/docs/assets/index.html", timeout=10).status_code == 404  # only Swagger UI's files
    assert httpx.get(f"{url}/openapi.json", timeout=10).status_code == 200
    assert httpx.get(f"{url}/redoc", timeout=10).status_code == 404  # it would load from a CDN


def test_swagger_ui_files_ship_in_the_package_with_their_licence() -> None:
    """They sit where pyproject's package data takes them from, so an installed wheel has them too."""
    import fnmatch

    import tomllib

    import cnnapps.serve

    folder = Path(cnnapps.serve.__file__).with_name("static")
    root = Path(cnnapps.serve.__file__).parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files = sorted(p for p in folder.glob("swagger-ui*"))
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-LICENSE.txt", "swagger-ui-NOTICE.txt"} <= {
        p.name for p in files
    }
    for path in files:
        # the folder is the data package cnnapps.serve.static: its patterns are relative to it
        assert any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns["cnnapps.serve.static"]), path.name
    assert "Apache License" in (folder / "swagger-ui-LICENSE.txt").read_text()


def test_a_star_accepts_any_host_name() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from cnnapps.serve.app import HostCheck

    inner = Starlette(routes=[Route("/", lambda request: PlainTextResponse("hi"))])
    for allowed, status in [(["photos.lan"], 400), (["photos.lan", "*"], 200)]:
        client = TestClient(HostCheck(inner, allowed), base_url="http://anything.example")
        assert client.get("/").status_code == status
