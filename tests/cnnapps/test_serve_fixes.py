"""The service against what a reviewer found: video frames past the image limits and still images on the video
routes, an app served twice, made-up methods and paths in the metrics, X-Forwarded-For from untrusted peers, the
answer to an unexpected exception, and the sizes of a model file's heads in /v1/models.

The model is the small LeNet-5 classifier of the model-file fixtures: cheap to load and to run."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from cnnapps.serve.app import create_app, server_config
from cnnapps.serve.batcher import MicroBatcher

FIXTURES = Path(__file__).parents[1] / "fixtures" / "model_files_v1"
LENET = str(FIXTURES / "classify.safetensors")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app([LENET], warm_up=False)
    with TestClient(app, base_url="http://localhost") as c:
        yield c


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Five 64 x 48 frames of MPEG-4 in MP4."""
    path = tmp_path_factory.mktemp("clips") / "short.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(5):
        writer.write(np.full((48, 64, 3), i * 40, np.uint8))
    writer.release()
    return path.read_bytes()


def _video(client: TestClient, data: bytes, kind: str = "video/mp4") -> httpx.Response:
    return client.post("/v1/classify/video", content=data, headers={"content-type": kind})


# --- the video routes ----------------------------------------------------------------------------------------


def test_a_clip_whose_frames_pass_the_image_limits_is_refused_before_a_frame_is_decoded(
    client: TestClient, clip: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cnnapps.datasets.io as io
    import cnnapps.datasets.video as video

    assert _video(client, clip).status_code == 200
    decoded = []
    monkeypatch.setattr(video.VideoSource, "__iter__", lambda source: decoded.append(source) or iter(()))
    monkeypatch.setattr(io, "DEFAULT_MAX_PIXELS", 3000)  # a 64 x 48 frame has 3,072
    answer = _video(client, clip)
    assert answer.status_code == 422 and answer.json() == {
        "error": "video: 64x48 frames have 3,072 pixels, over the limit of 3,000 a frame may have"
    }
    monkeypatch.setattr(io, "DEFAULT_MAX_PIXELS", 64 * 48)
    monkeypatch.setattr(io, "DEFAULT_MAX_ASPECT", 1.3)  # 64 / 48 = 1.33
    answer = _video(client, clip)
    assert answer.status_code == 422 and answer.json() == {
        "error": "video: 64x48 frames are more elongated than the limit of 1.3:1 a frame may have"
    }
    assert not decoded


def test_a_still_image_sent_to_a_video_route_is_a_422(client: TestClient, clip: bytes) -> None:
    from PIL import Image

    picture = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    gif = Path(__file__).with_name("_one_frame.gif")  # PIL writes GIFs to files
    stills = {"JPEG": cv2.imencode(".jpg", picture)[1].tobytes(), "PNG": cv2.imencode(".png", picture)[1].tobytes()}
    try:
        Image.fromarray(picture).save(gif, format="GIF")
        stills["GIF"] = gif.read_bytes()
    finally:
        gif.unlink(missing_ok=True)
    for name, data in stills.items():
        for kind in ("video/mp4", "application/octet-stream"):
            answer = _video(client, data, kind)
            assert answer.status_code == 422, (name, answer.text)
            assert answer.json() == {"error": f"video: a still {name} image, not a video: send it to /v1/classify"}
    frames = [line for line in _video(client, clip).text.splitlines() if line]
    assert len(frames) == 5  # a clip is still a clip


def test_a_clip_is_opened_once_per_request(client: TestClient, clip: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """One container header read for the checks (still image, frame size, length) and the frames alike."""
    import av

    opened = []
    open_container = av.open
    monkeypatch.setattr(av, "open", lambda *args, **kwargs: opened.append(args[0]) or open_container(*args, **kwargs))
    answer = _video(client, clip)
    assert answer.status_code == 200 and len(answer.text.splitlines()) == 5
    assert len(opened) == 1
    opened.clear()
    still = cv2.imencode(".png", np.zeros((48, 64, 3), np.uint8))[1].tobytes()
    assert _video(client, still).status_code == 422 and len(opened) == 1


def _growing_clip() -> bytes:
    """MPEG-4 in MPEG-TS: three 64 x 48 frames, then three 128 x 96 ones (the header says 64 x 48)."""
    import io

    import av

    data = io.BytesIO()
    for width, height in ((64, 48), (128, 96)):
        with av.open(data, "w", format="mpegts") as container:
            stream = container.add_stream("mpeg4", rate=10)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for i in range(3):
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.full((height, width, 3), 40 * i, np.uint8))):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
    return data.getvalue()


def test_a_clip_whose_frames_grow_past_the_limit_ends_with_one_error_after_the_frames_before(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import cnnapps.datasets.io as io

    monkeypatch.setattr(io, "DEFAULT_MAX_PIXELS", 64 * 48)  # the header's size passes, the later frames do not
    answer = _video(client, _growing_clip(), "video/mp2t")
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert answer.status_code == 200 and [line.get("frame") for line in lines] == [0, 1, 2, None]
    assert lines[-1] == {"model": "classify", "error": "video: frame 3 (128x96) has 12,288 pixels, over the limit of "
                         "3,072 a frame may have after 3 frames"}  # fmt: skip


# --- an app served twice -----------------------------------------------------------------------------------------


def test_a_micro_batcher_serves_again_on_another_event_loop_and_after_close() -> None:
    batcher = MicroBatcher(lambda items: [2 * i for i in items], max_batch=4, max_wait_ms=1)

    async def ask(item: int) -> int:
        return await asyncio.wait_for(batcher.submit(item), 5)

    try:
        assert asyncio.run(ask(1)) == 2
        assert asyncio.run(ask(2)) == 4  # a new loop, the old one gone
        batcher.close()
        assert asyncio.run(ask(3)) == 6  # closed: a new worker and thread
        assert batcher.pending == 0 and batcher.items == 3
    finally:
        batcher.close()


def test_an_app_served_again_answers_again() -> None:
    """Served (lifespan: the batchers close at its end), then without a lifespan (an event loop per request), then
    served again: every time answered, and ready."""
    app = create_app([LENET], warm_up=False)
    jpeg = cv2.imencode(".jpg", np.full((32, 32, 3), 80, np.uint8))[1].tobytes()

    def answered(c: TestClient) -> bool:  # on a thread of its own: a request that hangs fails the test
        answers: list[httpx.Response] = []
        ask = threading.Thread(target=lambda: answers.append(
            c.post("/v1/classify", content=jpeg, headers={"content-type": "image/jpeg"})), daemon=True)  # fmt: skip
        ask.start()
        ask.join(10)
        return bool(answers) and answers[0].status_code == 200

    with TestClient(app, base_url="http://localhost") as c:
        assert answered(c)
    assert answered(TestClient(app, base_url="http://localhost")), "no answer in 10 s after a lifespan ended"
    with TestClient(app, base_url="http://localhost") as c:
        assert answered(c) and c.get("/readyz").status_code == 200


# --- metrics, proxies, unexpected exceptions ---------------------------------------------------------------------


def test_made_up_methods_and_paths_are_counted_under_a_few_fixed_labels(client: TestClient) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    for i in range(20):
        client.request(f"X{i:03d}", "/v1/classify")
        client.get(f"/made/up/{i}")
    samples = [s for family in text_string_to_metric_families(client.get("/metrics").text) for s in family.samples
               if s.name == "cnnapps_requests_total"]  # fmt: skip
    fixed = {"GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH", "other"}
    assert {s.labels["method"] for s in samples} <= fixed
    assert not any(s.labels["route"].startswith("/made") for s in samples)
    other = {s.labels["route"]: s.value for s in samples if s.labels["method"] == "other"}
    assert other == {"/v1/classify": 20}
    made_up = [s for s in samples if s.labels["route"] == "unmatched" and s.labels["method"] == "GET"]
    assert [s.value for s in made_up] == [20]


def _client_seen(forwarded_allow_ips: str | None) -> list[str]:
    """The client address a route sees, through ``server_config``'s app, for a peer at 127.0.0.1 that sends
    ``X-Forwarded-For: 10.0.0.9`` (as a client could, to pass for another one)."""
    echo = FastAPI()

    @echo.get("/who")
    async def who(request: Request) -> str:
        return request.client.host if request.client else ""

    trusted = {} if forwarded_allow_ips is None else {"forwarded_allow_ips": forwarded_allow_ips}
    config = server_config(echo, **trusted)
    config.load()

    async def ask() -> list[str]:
        transport = httpx.ASGITransport(app=config.loaded_app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            return [(await c.get("/who", headers=headers)).json() for headers in ({}, {"x-forwarded-for": "10.0.0.9"})]

    return asyncio.run(ask())


def test_x_forwarded_for_is_believed_only_from_the_proxies_named() -> None:
    assert _client_seen(None) == ["127.0.0.1", "127.0.0.1"]
    assert _client_seen("10.1.1.1") == ["127.0.0.1", "127.0.0.1"]  # another proxy
    assert _client_seen("127.0.0.1") == ["127.0.0.1", "10.0.0.9"]


def test_serve_passes_forwarded_allow_ips_to_the_server(run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    import cnnapps.serve.app as serve_app

    configs: list[uvicorn.Config] = []

    class FakeServer:
        def __init__(self, config: uvicorn.Config) -> None:
            configs.append(config)
            self.started = False

        def run(self, sockets: list | None = None) -> None:
            self.started = True

    monkeypatch.setattr(serve_app, "create_app", lambda *args, **kwargs: FastAPI())
    monkeypatch.setattr(uvicorn, "Server", FakeServer)
    assert run_cli("serve", "--port", "0")[0] == 0
    assert run_cli("serve", "--port", "0", "--forwarded-allow-ips", "10.0.0.1,10.0.0.2")[0] == 0
    assert [(c.proxy_headers, c.forwarded_allow_ips) for c in configs][1] == (True, "10.0.0.1,10.0.0.2")
    assert configs[0].proxy_headers is False


def test_an_unexpected_exception_is_a_500_with_the_request_id_and_no_details() -> None:
    app = create_app([LENET], warm_up=False)

    @app.get("/v1/broken")
    async def broken() -> None:
        raise OverflowError("secret internals 12345")

    logged: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = logged.append  # type: ignore[method-assign]
    logger = logging.getLogger("cnnapps.serve.error")  # operations.ERROR_LOG
    logger.addHandler(handler)
    try:
        with TestClient(app, base_url="http://localhost") as c:
            answer = c.get("/v1/broken", headers={"x-request-id": "abc-123"})
            fresh = c.get("/v1/broken")
    finally:
        logger.removeHandler(handler)
    assert answer.status_code == 500 and answer.headers["x-request-id"] == "abc-123"
    assert answer.json() == {"error": "internal error; see the server log, request id abc-123"}
    assert fresh.json()["error"].endswith(fresh.headers["x-request-id"]) and "secret" not in fresh.text
    assert len(logged) == 2 and "abc-123" in logged[0].getMessage()
    assert logged[0].exc_info is not None and isinstance(logged[0].exc_info[1], OverflowError)


# --- /v1/models ----------------------------------------------------------------------------------------------------


def test_models_lists_the_classes_or_embedding_size_of_every_head_of_a_model_file(tmp_path: Path) -> None:
    import torch

    from cnnapps.apps.classify.model import Classifier
    from cnnapps.apps.modelfile import compose, save_model
    from cnnapps.apps.retrieve.embedder import EmbeddingModel
    from cnnapps.backbones import create_backbone

    torch.manual_seed(0)
    trunk = create_backbone("lenet5")
    preprocess = trunk.preprocess.to_dict()
    parts = {"colours": Classifier(trunk, 3), "embed": EmbeddingModel(trunk, "avg", 6),
             "raw": EmbeddingModel(trunk, "avg")}  # fmt: skip
    for name, model in parts.items():
        task = "classify" if name == "colours" else "retrieve"
        save_model(tmp_path / f"{name}.safetensors", task, model, "lenet5", {}, preprocess, head_name=name)
    multi = compose([tmp_path / f"{name}.safetensors" for name in parts], tmp_path / "multi.safetensors")
    jpeg = cv2.imencode(".jpg", np.full((32, 32, 3), 80, np.uint8))[1].tobytes()
    with TestClient(create_app([str(multi), LENET], warm_up=False), base_url="http://localhost") as c:
        models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        embedded = {name: c.post(f"/v1/embed?model={name}", content=jpeg, headers={"content-type": "image/jpeg"})
                    for name in ("multi/embed", "multi/raw")}  # fmt: skip
    assert models["multi"]["classes"] == 3 and models["classify"]["classes"] == 3
    for name, answer in embedded.items():
        assert models[name]["dim"] == len(answer.json()["embedding"]), name
    assert models["multi/embed"]["dim"] == 6


# --- memory: the images of a request ------------------------------------------------------------------------------


def test_a_request_of_large_images_holds_one_decoded_image_at_a_time(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images as large as the limit allows, many in one request: the model decodes (and resizes) them one after
    another, so the memory a request takes does not grow with its number of images; the answers are the same, and
    each image's header is read once (to cut the batch and to decode)."""
    import weakref

    import cnnapps.datasets.io as io

    rng = np.random.default_rng(1)
    files = [("images", (f"{i}.png", cv2.imencode(".png", rng.integers(0, 255, (80, 80, 3), np.uint8))[1].tobytes(),
                         "image/png")) for i in range(6)]  # fmt: skip
    alone = [client.post("/v1/classify", files={"image": file}).json() for _, file in files]
    live: set[int] = set()
    most = [0]
    decode, read_header = io._bgr_to_rgb, io._read_header  # each PNG's pixels come from the one, its size the other
    headers = [0]

    def counted(*args: object) -> np.ndarray:
        rgb = decode(*args)
        live.add(id(rgb))
        most[0] = max(most[0], len(live))
        weakref.finalize(rgb, live.discard, id(rgb))
        return rgb

    def header_read(*args: object) -> object:
        headers[0] += 1
        return read_header(*args)

    monkeypatch.setattr(io, "_bgr_to_rgb", counted)
    monkeypatch.setattr(io, "_read_header", header_read)
    monkeypatch.setattr(io, "DEFAULT_MAX_PIXELS", 100 * 100)  # an 80 x 80 image has 6,400 pixels: two are over
    together = client.post("/v1/classify", files=files)
    assert together.status_code == 200 and together.json() == alone
    assert most[0] == 1, f"{most[0]} decoded images alive at once"
    assert headers[0] == len(files)
    small = [("images", (f"{i}.png", cv2.imencode(".png", np.full((40, 40, 3), 9 * i, np.uint8))[1].tobytes(),
                         "image/png")) for i in range(6)]  # fmt: skip
    most[0] = 0
    assert client.post("/v1/classify", files=small).status_code == 200
    assert most[0] > 1  # small ones (1,600 pixels each) still share the model's batches
