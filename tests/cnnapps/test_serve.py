"""The HTTP service: routes per task, both request forms, micro-batching, bad requests, models listed."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from cnnapps.errors import CnnappsError
from cnnapps.serve.app import create_app
from cnnapps.serve.batcher import MicroBatcher


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory, chelsea: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("photos") / "chelsea.jpg"
    cv2.imwrite(str(path), chelsea[:, :, ::-1])
    return path


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained instance segmenter on a small ResNet-18 (random weights, seeded): it answers with
    whatever it finds; what matters here is the route, the JSON and the overlay."""
    import torch

    from cnnapps.apps.detect.model import create_detector, save_detector

    torch.manual_seed(0)
    model = create_detector("segment", "resnet18", num_classes=3, class_names=["__background__", "circle", "square"],
                            backbone_weights=None, fpn_channels=16, min_size=96, max_size=128)  # fmt: skip
    path = tmp_path_factory.mktemp("models") / "shapes.safetensors"
    save_detector(path, model)
    return path


@pytest.fixture(scope="module")
def client(segmenter: Path) -> TestClient:
    app = create_app(["efficientnet_lite0", str(segmenter)], max_batch=8, max_wait_ms=20, max_upload_mb=1)
    with TestClient(app, base_url="http://localhost") as c:  # the server refuses other Host names
        yield c


def test_classify_by_upload_and_by_base64_match_the_python_api(client: TestClient, photo: Path) -> None:
    import cnnapps

    expected = cnnapps.load().predict(str(photo), top_k=3)[0].to_dict()["predictions"]
    by_upload = client.post("/v1/classify?top_k=3", files={"image": ("cat.jpg", photo.read_bytes(), "image/jpeg")})
    assert by_upload.status_code == 200, by_upload.text
    by_json = client.post("/v1/classify?top_k=3", json={"image": base64.b64encode(photo.read_bytes()).decode()})
    assert by_json.status_code == 200
    # base64 as other tools write it: in lines of 76 (MIME, `base64` without -w0) and as a browser's data URL
    wrapped = client.post("/v1/classify?top_k=3", json={"image": base64.encodebytes(photo.read_bytes()).decode()})
    url = "data:image/jpeg;base64," + base64.b64encode(photo.read_bytes()).decode()
    by_url = client.post("/v1/classify?top_k=3", json={"images": [url]})
    assert wrapped.status_code == 200 and by_url.status_code == 200, (wrapped.text, by_url.text)
    assert by_url.json()[0]["predictions"] == expected
    for answer in (by_upload.json(), by_json.json(), wrapped.json()):
        assert answer["predictions"] == expected and answer["model"] == "efficientnet_lite0"
    assert "cat" in expected[0]["label"]


@pytest.mark.parametrize("kind", ["image/jpeg", "application/octet-stream", "image/png; charset=binary"])
def test_a_raw_image_body_gets_the_answer_of_an_upload(client: TestClient, photo: Path, kind: str) -> None:
    """``curl --data-binary @cat.jpg -H 'content-type: image/jpeg'``: the body is the file, on every route."""
    jpeg = photo.read_bytes()
    for route in ("/v1/classify?top_k=3", "/v1/segment", "/v1/predict?model=shapes"):
        by_upload = client.post(route, files={"image": ("cat.jpg", jpeg, "image/jpeg")})
        raw = client.post(route, content=jpeg, headers={"content-type": kind})
        assert raw.status_code == 200, (route, raw.text)
        assert raw.json() == by_upload.json()
    too_big = client.post("/v1/classify", content=jpeg + b"\0" * (1 << 20), headers={"content-type": kind})
    assert too_big.status_code == 413 and "over the 1,048,576-byte limit" in too_big.json()["error"]


def test_segment_route_returns_instances_and_an_overlay(client: TestClient, photo: Path) -> None:
    answer = client.post("/v1/segment?draw=true", files={"image": ("cat.jpg", photo.read_bytes(), "image/jpeg")})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["model"] == "shapes" and {"width", "height", "instances"} <= set(data)
    assert all({"label", "score", "box", "mask"} <= set(i) for i in data["instances"])
    png = base64.b64decode(data["overlay"].removeprefix("data:image/png;base64,"))
    overlay = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape[:2] == (data["height"], data["width"])


def test_bad_requests_get_a_reason_and_the_server_keeps_serving(client: TestClient, photo: Path) -> None:
    jpeg = photo.read_bytes()
    upload = lambda data: {"files": {"image": ("x.jpg", data, "image/jpeg")}}  # noqa: E731
    cases = [
        (client.post("/v1/classify", **upload(b"plain text, not a picture")), 422, "not an image"),
        (client.post("/v1/classify", **upload(jpeg[: len(jpeg) // 3])), 422, "truncated"),
        (client.post("/v1/classify", **upload(jpeg + b"\0" * (1 << 20))), 413, "over the 1,048,576-byte limit"),
        (client.post("/v1/classify", content=jpeg, headers={"content-type": "text/plain"}), 415, "content type"),
        (client.post("/v1/classify", content=b"", headers={"content-type": "image/png"}), 422, "the image is empty"),
        (client.post("/v1/classify", json={"image": "%%% not base64"}), 422, "image: not valid base64"),
        (client.post("/v1/classify", json={"image": "ünïcode"}), 422, "image: not valid base64"),
        (client.post("/v1/classify", json={"picture": "x"}), 422, '{"image": "<base64'),
        (client.post("/v1/classify", json={"image": 12}), 422, '{"image": "<base64'),
        (client.post("/v1/classify", files={"other": ("x.jpg", jpeg, "image/jpeg")}), 422, "'image' file field"),
        (client.post("/v1/classify?model=nope", **upload(jpeg)), 404, "no classify model named 'nope'"),
        (client.post("/v1/classify?top_k=0", **upload(jpeg)), 422, "top_k"),
        (
            client.post("/v1/classify?topk=3", **upload(jpeg)),
            422,
            "topk: not an option of /v1/classify (it takes model, top_k)",
        ),
        # each route takes its task's options: a classifier draws nothing, a segmenter has no top-k
        (client.post("/v1/classify?draw=true", **upload(jpeg)), 422, "draw: not an option of /v1/classify"),
        (client.post("/v1/segment?top_k=3", **upload(jpeg)), 422, "it takes model, draw)"),
        (client.post("/v1/predict?beam=3", **upload(jpeg)), 422, "beam: not an option of /v1/predict"),
        (client.post("/v1/classify/video?draw=true", **upload(jpeg)), 422, "draw: not an option of /v1/classify/video"),
        (
            client.post("/v1/caption", **upload(jpeg)),
            404,
            "answers POST /v1/classify, /v1/classify/video, /v1/predict, /v1/segment, /v1/segment/video",
        ),
    ]
    for response, status, reason in cases:
        assert response.status_code == status, (reason, response.text)
        assert reason in response.json()["error"]
    assert client.post("/v1/classify", **upload(jpeg)).status_code == 200


def test_health_models_docs_and_page(client: TestClient) -> None:
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["models"] == 2
    models = client.get("/v1/models").json()["models"]
    assert [(m["name"], m["task"], m["route"]) for m in models] == [
        ("efficientnet_lite0", "classify", "/v1/classify"), ("shapes", "segment", "/v1/segment")
    ]  # fmt: skip
    schema = client.get("/openapi.json").json()
    assert {"/v1/classify", "/v1/segment", "/healthz", "/v1/models"} <= set(schema["paths"])
    assert {"multipart/form-data", "application/json", "image/jpeg", "application/octet-stream"} <= set(
        schema["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    )
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text


FIXTURES = Path(__file__).parents[1] / "fixtures" / "model_files_v1"


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory, photo: Path) -> TestClient:
    """Two classifiers (the bundled one and a small LeNet file) and an index of three photos, built with the
    small embedder of the model-file fixtures."""
    from skimage import data

    from cnnapps.apps.retrieve.embedder import Embedder
    from cnnapps.apps.retrieve.index import Index

    root = tmp_path_factory.mktemp("gallery")
    cv2.imwrite(str(root / "big.png"), cv2.resize(data.coffee()[:, :, ::-1], (900, 600)))
    cv2.imwrite(str(root / "rocket.jpg"), data.rocket()[:, :, ::-1])
    paths = [str(photo), str(root / "big.png"), str(root / "rocket.jpg")]
    Index.build(root / "idx", paths, Embedder(str(FIXTURES / "retrieve.safetensors")))
    app = create_app(["efficientnet_lite0", str(FIXTURES / "classify.safetensors")], index=str(root / "idx"))
    with TestClient(app, base_url="http://localhost") as c:
        yield c


def test_a_task_route_answers_from_the_model_it_names(gallery: TestClient, photo: Path) -> None:
    listed = [m["name"] for m in gallery.get("/v1/models").json()["models"] if m["route"] == "/v1/classify"]
    assert listed == ["efficientnet_lite0", "classify"]
    upload = {"files": {"image": ("cat.jpg", photo.read_bytes(), "image/jpeg")}}
    for name in listed:
        answer = gallery.post(f"/v1/classify?model={name}", **upload)
        assert answer.status_code == 200 and answer.json()["model"] == name
    unknown = gallery.post("/v1/classify?model=classifyy", **upload)
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "no classify model named 'classifyy'; loaded: efficientnet_lite0, classify"


def test_retrieve_answers_name_the_model_and_hits_have_thumbnails(gallery: TestClient, photo: Path) -> None:
    answer = gallery.post("/v1/retrieve?k=3", content=photo.read_bytes(), headers={"content-type": "image/jpeg"})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["model"] == "retrieve" and data["query"] == "<upload>"
    hits = {Path(h["path"]).name: h for h in data["results"]}
    assert set(hits) == {"chelsea.jpg", "big.png", "rocket.jpg"} and hits["chelsea.jpg"]["rank"] == 1
    thumb = gallery.get(f"/v1/retrieve/thumbnail?id={hits['big.png']['id']}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    picture = cv2.imdecode(np.frombuffer(thumb.content, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (107, 160, 3)  # 900 x 600, downscaled to 160 on its longer side
    small = gallery.get(f"/v1/retrieve/thumbnail?id={hits['rocket.jpg']['id']}&size=64").content
    assert max(cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_COLOR).shape[:2]) == 64


def test_thumbnails_come_only_from_the_index_s_own_rows(gallery: TestClient, photo: Path) -> None:
    hits = gallery.post("/v1/retrieve", json={"image": base64.b64encode(photo.read_bytes()).decode()}).json()["results"]
    ids = [h["id"] for h in hits]
    cases = [
        ("/v1/retrieve/thumbnail?id=9999", 404, "no image with id 9999 in the index"),
        ("/v1/retrieve/thumbnail?id=-1", 404, "no image with id -1 in the index"),
        ("/v1/retrieve/thumbnail?id=99999999999999999999999", 404, "no image with id 99999999999999999999999 in"),
        (f"/v1/retrieve/thumbnail?id={2**63}", 404, f"no image with id {2**63} in the index"),
        (f"/v1/retrieve/thumbnail?id={ids[0]}&size=5000", 422, "size 5000: must be between 16 and 512"),
        ("/v1/retrieve/thumbnail?path=/etc/passwd", 422, "id"),
        ("/v1/retrieve/thumbnail?id=../../etc/passwd", 422, "id"),
    ]
    for url, status, reason in cases:
        answer = gallery.get(url)
        assert answer.status_code == status, (url, answer.text)
        assert reason in answer.json()["error"] and "\n" not in answer.json()["error"]
    rocket = next(h for h in hits if h["path"].endswith("rocket.jpg"))
    Path(rocket["path"]).unlink()  # indexed, then deleted: the thumbnail says so (the last test of `gallery`)
    gone = gallery.get(f"/v1/retrieve/thumbnail?id={rocket['id']}")
    assert gone.status_code == 404 and gone.json()["error"].endswith("no such file (run `cnnapps index sync`)")


def test_concurrent_requests_share_batches(client: TestClient, photo: Path) -> None:
    before = client.get("/healthz").json()
    jpeg = photo.read_bytes()
    answers: list[int] = []

    def ask() -> None:
        answers.append(client.post("/v1/classify", files={"image": ("x.jpg", jpeg, "image/jpeg")}).status_code)

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = client.get("/healthz").json()
    assert answers == [200] * 16
    assert after["requests"] - before["requests"] == 16
    assert after["batches"] - before["batches"] < 16  # some requests rode together


def test_micro_batcher_closes_batches_at_size_or_wait_and_keeps_order() -> None:
    sizes: list[int] = []

    def run(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return [i * 10 for i in items]

    async def main() -> list[int]:
        batcher = MicroBatcher(run, max_batch=4, max_wait_ms=50)
        outputs = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        late = await batcher.submit(99)  # alone: waits max_wait_ms, then runs by itself
        batcher.close()
        return [*outputs, late]

    assert asyncio.run(main()) == [i * 10 for i in range(10)] + [990]
    assert sizes == [4, 4, 2, 1]


def test_a_failing_batch_answers_every_request_with_the_error() -> None:
    def run(items: list[int]) -> list[int]:
        raise RuntimeError("model fell over")

    async def main() -> list[object]:
        batcher = MicroBatcher(run, max_batch=4, max_wait_ms=5)
        return await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)

    assert [str(e) for e in asyncio.run(main())] == ["model fell over"] * 3


def test_predictors_are_safe_from_many_threads(photo: Path) -> None:
    """Eight threads classifying at once get exactly what one thread gets."""
    import cnnapps

    predictor = cnnapps.load()
    images = [str(photo), io.BytesIO(photo.read_bytes()).getvalue()]
    expected = [r.to_dict()["predictions"] for r in predictor.predict(images)]
    seen: list[list] = []

    def work() -> None:
        for _ in range(3):
            seen.append([r.to_dict()["predictions"] for r in predictor.predict(images)])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 24 and all(s == expected for s in seen)
    assert cnnapps.load() is predictor  # the same spec and options: the same predictor, no second copy


def test_serve_runs_the_exported_graph_with_engine_onnxruntime(photo: Path) -> None:
    import cnnapps

    # like with like: both in fp32 on the CPU (onnxruntime's CPU provider; on a GPU PyTorch would use TF32)
    eager = cnnapps.load("efficientnet_lite0", engine="eager", device="cpu")
    expected = eager.predict(str(photo))[0].to_dict()["predictions"]
    app = create_app(["efficientnet_lite0"], engine="onnxruntime", device="cpu")
    with TestClient(app, base_url="http://localhost") as client:
        answer = client.post("/v1/classify", files={"image": ("x.jpg", photo.read_bytes(), "image/jpeg")}).json()
    assert [p["label"] for p in answer["predictions"]] == [p["label"] for p in expected]
    assert np.allclose([p["score"] for p in answer["predictions"]], [p["score"] for p in expected], atol=1e-4)


_SERVE_COMMAND = """
import json, sys
import uvicorn
from fastapi import FastAPI
import cnnapps.serve.app as serve_app
from cnnapps.cli import main

seen = {}

def fake_create_app(specs, *args, **kwargs):
    seen.update(specs=specs, allowed_hosts=kwargs["allowed_hosts"], request_timeout_s=kwargs["request_timeout_s"])
    app = FastAPI()
    app.state.request_timeout_s = kwargs["request_timeout_s"]
    return app

class FakeServer:
    def __init__(self, config):
        seen.update(host=config.host, keep_alive=config.timeout_keep_alive, protocol=config.http.__name__)
        self.started = False

    def run(self, sockets=None):
        seen["ran"] = self.started = True
        seen["bound"] = [sock.getsockname()[0] for sock in sockets or []]

serve_app.create_app = fake_create_app
uvicorn.Server = FakeServer
try:
    main(sys.argv[1:])
except SystemExit as exc:
    seen["code"] = exc.code or 0
print(json.dumps(seen))
"""


def test_serve_command_passes_host_names_and_deadlines_on() -> None:
    # in a process of its own: uvicorn configures the logging of the whole process it runs in
    args = ["serve", "--host", "0.0.0.0", "--port", "0", "--allowed-host", "photos.lan", "--allowed-host", "gpu1",
            "--request-timeout", "7", "--keep-alive", "2"]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", _SERVE_COMMAND, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen.get("code", 0) == 0 and seen["ran"], done.stderr[-2000:]
    assert seen["allowed_hosts"] == ["0.0.0.0", "photos.lan", "gpu1"] and seen["request_timeout_s"] == 7
    assert (seen["host"], seen["keep_alive"], seen["bound"]) == ("0.0.0.0", 2, ["0.0.0.0"])
    assert seen["protocol"] == "DeadlineProtocol"


def _clip(path: Path, chelsea: np.ndarray, frames: int, fps: float = 10.0) -> bytes:
    from cnnapps.datasets.video import VideoWriter

    with VideoWriter(path, fps) as writer:
        for i in range(frames):
            writer.write(np.ascontiguousarray(chelsea[:96, 5 * i : 5 * i + 128]))
    return path.read_bytes()


def test_a_short_clip_is_answered_with_a_json_line_per_frame(client: TestClient, chelsea, tmp_path) -> None:
    import json

    import cnnapps

    clip = _clip(tmp_path / "clip.mp4", chelsea, 6)
    answer = client.post("/v1/classify/video?top_k=2&vid_stride=2", content=clip,
                         headers={"content-type": "video/mp4"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert [line["frame"] for line in lines] == [0, 2, 4] and lines[1]["time"] == pytest.approx(0.2)
    assert all(line["model"] == "efficientnet_lite0" and len(line["predictions"]) == 2 for line in lines)
    from cnnapps.datasets.video import VideoSource

    first = next(iter(VideoSource(str(tmp_path / "clip.mp4"))))  # the same frame through the Python API
    assert lines[0]["predictions"] == cnnapps.load().predict([first.rgb], top_k=2)[0].to_dict()["predictions"]
    detected = client.post("/v1/segment/video", files={"video": ("clip.mp4", clip, "video/mp4")})
    assert detected.status_code == 200 and all("instances" in json.loads(x) for x in detected.text.splitlines())


def test_a_frame_the_model_fails_on_ends_the_clip_after_the_frames_answered(
    client: TestClient, chelsea, tmp_path, monkeypatch
) -> None:
    import json

    from cnnapps.apps.multitask import OneHead  # how the server runs the bundled classifier

    predict, alone = OneHead.predict, []

    def third_frame_runs_out_of_memory(self, images, *args, **kwargs):  # batches fail, then frames run one by one
        if len(images) > 1 or len(alone) >= 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        alone.append(images)
        return predict(self, images, *args, **kwargs)

    monkeypatch.setattr(OneHead, "predict", third_frame_runs_out_of_memory)
    answer = client.post("/v1/classify/video", content=_clip(tmp_path / "clip.mp4", chelsea, 6),
                         headers={"content-type": "video/mp4"})  # fmt: skip
    assert answer.status_code == 200, answer.text  # not a 500 that loses the frames answered
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert [line["frame"] for line in lines] == [0, 1, 2] and all("predictions" in line for line in lines[:2])
    assert lines[2]["error"].startswith("out of memory") and "predictions" not in lines[2]


def test_clips_too_long_too_big_or_not_video_are_refused(chelsea, tmp_path) -> None:
    app = create_app(["efficientnet_lite0"], max_clip_mb=0.05, max_clip_s=1.0, warm_up=False)
    with TestClient(app, base_url="http://localhost") as c:
        long = _clip(tmp_path / "long.mp4", chelsea, 15)  # 1.5 s
        answer = c.post("/v1/classify/video", content=long, headers={"content-type": "video/mp4"})
        assert answer.status_code == 413 and "over the 1-second limit" in answer.json()["error"]
        answer = c.post("/v1/classify/video", content=b"x" * 60_000, headers={"content-type": "video/mp4"})
        assert answer.status_code == 413
        answer = c.post("/v1/classify/video", content=b"not a video", headers={"content-type": "video/mp4"})
        assert answer.status_code == 422 and answer.json()["error"].startswith("video: ")
        answer = c.post("/v1/classify/video", content=b"{}", headers={"content-type": "application/json"})
        assert answer.status_code == 415


def test_a_clip_of_too_many_frames_is_refused_or_cut_at_the_limit(chelsea, tmp_path, monkeypatch) -> None:
    """Seconds alone let a small file of many small frames hold the model for minutes: a clip's frames (after
    vid_stride) are capped too, from the header where it says, else by an error line at the limit."""
    from cnnapps.datasets.video import VideoSource

    app = create_app([str(FIXTURES / "classify.safetensors")], max_clip_frames=4, warm_up=False)
    clip = _clip(tmp_path / "clip.mp4", chelsea, 10)
    with TestClient(app, base_url="http://localhost") as c:
        answer = c.post("/v1/classify/video", content=clip, headers={"content-type": "video/mp4"})
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"] == ("video of 10 frames (at vid_stride 1) is over the 4-frame limit: send a "
                                          "larger vid_stride")  # fmt: skip
        answer = c.post("/v1/classify/video?vid_stride=3", content=clip, headers={"content-type": "video/mp4"})
        assert [json.loads(line)["frame"] for line in answer.text.splitlines()] == [0, 3, 6, 9]
        describe = VideoSource._describe_av

        def unknown_length(self: VideoSource) -> None:  # a container that does not say how many frames
            describe(self)
            self.frames = None

        monkeypatch.setattr(VideoSource, "_describe_av", unknown_length)
        answer = c.post("/v1/classify/video?vid_stride=2", content=clip, headers={"content-type": "video/mp4"})
        lines = [json.loads(line) for line in answer.text.splitlines()]
    assert answer.status_code == 200 and [line.get("frame") for line in lines] == [0, 2, 4, 6, None]
    assert lines[-1]["error"].startswith("video: more than 4 frames (at vid_stride 2): the frame limit")
    with pytest.raises(CnnappsError, match="--max-clip-frames 0 must be >= 1"):
        create_app([str(FIXTURES / "classify.safetensors")], max_clip_frames=0, warm_up=False)


def test_a_clip_whose_client_went_away_stops_taking_the_model(chelsea, tmp_path) -> None:
    """Lines go out as the model gives them, and a client that leaves stops the clip (it ran to its end before)."""
    import socket
    import tempfile
    import time

    import httpx

    from cnnapps.datasets.video import VideoWriter
    from cnnapps.serve.app import running

    with VideoWriter(tmp_path / "long.mp4", 100.0) as writer:  # 600 frames in 6 s
        for i in range(600):
            writer.write(np.ascontiguousarray(chelsea[i % 200 : i % 200 + 64, :64]))
    clip = (tmp_path / "long.mp4").read_bytes()
    app = create_app(["efficientnet_lite0"], warm_up=False)
    before = set(Path(tempfile.gettempdir()).glob("cnnapps-clip-*"))
    with running(app) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/classify/video HTTP/1.1\r\nHost: localhost\r\ncontent-type: video/mp4\r\n"
                         + f"content-length: {len(clip)}\r\n\r\n".encode() + clip)  # fmt: skip
            got = b""
            while b'"frame": 0' not in got:  # the first line, before the clip is done
                chunk = sock.recv(4096)
                assert chunk, got
                got += chunk
        time.sleep(2)  # the lines in hand, and the batch under way, finish
        done = httpx.get(f"{url}/healthz").json()["requests"]
        time.sleep(2)
        assert httpx.get(f"{url}/healthz").json()["requests"] == done < 300
        assert set(Path(tempfile.gettempdir()).glob("cnnapps-clip-*")) <= before  # its folder is gone, not left to GC
