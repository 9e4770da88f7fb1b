"""The service against what a review of its HTTP answers found: a clip whose header gives no length cut silently at
the seconds limit, the /video routes missing from the metrics, the 404 and /v1/models, a clip the model refuses from
its first frame answered 200 with a command-line hint, a multipart clip of too many files, and answers without the
engine that every --json answer carries.

The models are the small ones of the model-file fixtures: LeNet-5 classifier, and a segmenter whose own resize takes
at most 96:1."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from cnnapps.serve.app import create_app

FIXTURES = Path(__file__).parents[1] / "fixtures" / "model_files_v1"
LENET = str(FIXTURES / "classify.safetensors")
SEGMENTER = str(FIXTURES / "segment.safetensors")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app([LENET, SEGMENTER], max_clip_s=1.0, warm_up=False)
    with TestClient(app, base_url="http://localhost") as c:
        yield c


def _raw_m4v(frames: int, width: int = 64, height: int = 48) -> bytes:
    """An MPEG-4 elementary stream at 25 frames a second: no container, so no length in a header."""
    import av

    out = io.BytesIO()
    container = av.open(out, "w", format="m4v")
    stream = container.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), i * 4 % 256, np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    return out.getvalue()


def _mjpeg(frames: int) -> bytes:
    """JPEGs one after another (.mjpeg): read at 25 frames a second, with no length anywhere."""
    return b"".join(cv2.imencode(".jpg", np.full((48, 64, 3), i * 4, np.uint8))[1].tobytes() for i in range(frames))


def _lines(answer: httpx.Response) -> list[dict]:
    import json

    return [json.loads(line) for line in answer.text.splitlines() if line]


def _metrics(text: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


# --- the seconds limit of a clip whose header gives no length --------------------------------------------------------


@pytest.mark.parametrize("make", [_raw_m4v, _mjpeg], ids=["m4v", "mjpeg"])
def test_a_clip_without_a_length_in_its_header_ends_with_an_error_at_the_seconds_limit(
    client: TestClient, make
) -> None:
    answer = client.post("/v1/classify/video", content=make(60), headers={"content-type": "video/mp4"})
    assert answer.status_code == 200, answer.text[:300]
    lines = _lines(answer)
    assert [line["frame"] for line in lines[:-1]] == list(range(25))  # 0.00 .. 0.96 s: within the second
    assert lines[-1] == {"model": "classify", "error": "video: longer than the 1-second limit; send a shorter clip"}
    short = _lines(client.post("/v1/classify/video", content=make(10), headers={"content-type": "video/mp4"}))
    assert len(short) == 10 and all("error" not in line for line in short)  # 0.4 s: answered whole


# --- /metrics: the frames and the error lines of the /video routes ---------------------------------------------------


def test_metrics_count_a_clip_s_frames_as_images_and_its_error_line_as_an_error() -> None:
    app = create_app([LENET], max_clip_s=1.0, warm_up=False)
    with TestClient(app, base_url="http://localhost") as c:
        too_long = c.post("/v1/classify/video", content=_raw_m4v(30), headers={"content-type": "video/mp4"})
        whole = c.post("/v1/classify/video", content=_raw_m4v(4), headers={"content-type": "video/mp4"})
        m = _metrics(c.get("/metrics").text)
    assert too_long.status_code == 200 and whole.status_code == 200
    route = (("route", "/v1/classify/video"),)
    assert m[("cnnapps_images_total", route)] == 25 + 4  # the frames that went through the model
    assert m[("cnnapps_requests_total", (("method", "POST"), *route, ("status", "200")))] == 2
    assert m[("cnnapps_errors_total", (("kind", "too_large"),))] == 1  # the line that ended the long clip


# --- a clip refused from its first frame, and the command line's hints ---------------------------------------------


def test_a_clip_the_model_refuses_from_its_first_frame_is_a_422_without_command_line_hints(
    client: TestClient, tmp_path: Path
) -> None:
    path = tmp_path / "thin.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (1568, 16))
    for i in range(3):
        writer.write(np.full((16, 1568, 3), 60 * i, np.uint8))
    writer.release()
    answer = client.post("/v1/segment/video", content=path.read_bytes(), headers={"content-type": "video/mp4"})
    assert answer.status_code == 422, answer.text[:300]
    assert answer.json() == {"error": "video: frame 0: 1568x16 image is more elongated than this detector takes "
                                      "(96:1 at most: it resizes the long side to 96 px)"}  # fmt: skip
    still = cv2.imencode(".png", np.full((16, 1568, 3), 60, np.uint8))[1].tobytes()
    image = client.post("/v1/segment", content=still, headers={"content-type": "image/png"})
    assert image.status_code == 422 and "--" not in image.json()["error"], image.text
    assert image.json()["error"].startswith("image: 1568x16 image is more elongated than this detector takes")


# --- the routes a 404 and /v1/models name ------------------------------------------------------------------------


def test_the_404_and_the_model_list_name_the_video_routes(client: TestClient) -> None:
    missing = client.post("/v1/predict/video", content=b"x", headers={"content-type": "video/mp4"})
    assert missing.status_code == 404
    assert missing.json()["error"] == (
        "no route POST /v1/predict/video; this server answers POST /v1/classify, /v1/classify/video, /v1/predict, "
        "/v1/segment, /v1/segment/video"
    )
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["classify"]["video_route"] == "/v1/classify/video"
    assert models["classify"]["video_options"] == ["model", "top_k", "vid_stride"]
    assert models["segment"]["video_route"] == "/v1/segment/video"
    assert models["segment"]["video_options"] == ["model", "vid_stride"]  # nothing is drawn on a frame's answer
    for m in models.values():  # every option listed is taken by the route it is listed for
        query = "&".join(f"{o}=1" if o != "model" else f"model={m['name']}" for o in m["video_options"])
        answer = client.post(f"{m['video_route']}?{query}", content=_raw_m4v(2), headers={"content-type": "video/mp4"})
        assert answer.status_code == 200, answer.text[:300]


# --- a multipart clip of too many files --------------------------------------------------------------------------


def test_a_multipart_clip_of_too_many_files_is_a_413_as_for_images(client: TestClient) -> None:
    clip = _raw_m4v(2)
    notes = [("notes", (f"{i}.txt", b"x", "text/plain")) for i in range(4)]
    files = [("video", ("clip.m4v", clip, "video/mp4")), *notes]
    answer = client.post("/v1/classify/video", files=files)
    assert answer.status_code == 413  # it was a 422 in the parser's words
    error = "more than 4 files in one request: send one 'video' file and at most 3 other files"
    assert answer.json() == {"error": error}
    assert client.post("/v1/classify/video", files=files[:4]).status_code == 200
    none = client.post("/v1/classify/video", files=[("clip", ("clip.m4v", clip, "video/mp4"))])
    assert none.status_code == 422 and none.json() == {"error": "multipart request without a 'video' file field"}


# --- the engine in every answer ----------------------------------------------------------------------------------


def test_answers_carry_the_engine_as_the_command_line_s_json_does(client: TestClient, tmp_path: Path) -> None:
    import cnnapps

    rgb = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    png = cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes()
    expected = cnnapps.load(LENET).predict(rgb)[0].with_engine()
    assert expected["engine"]
    answer = client.post("/v1/classify", content=png, headers={"content-type": "image/png"}).json()
    assert answer == {**expected, "path": "<upload>", "model": "classify"}
    many = client.post("/v1/classify", files=[("images", ("a.png", png, "image/png"))] * 2).json()
    assert [a["engine"] for a in many] == [expected["engine"]] * 2
    every = client.post("/v1/predict?model=classify", content=png, headers={"content-type": "image/png"}).json()
    assert every["engine"] == expected["engine"]
    lines = _lines(client.post("/v1/classify/video", content=_raw_m4v(2), headers={"content-type": "video/mp4"}))
    assert [line["engine"] for line in lines] == [expected["engine"]] * 2
    # the index's queries too, as `cnnapps retrieve --json`
    from cnnapps.apps.retrieve.embedder import Embedder
    from cnnapps.apps.retrieve.index import Index

    cv2.imwrite(str(tmp_path / "a.png"), rgb[:, :, ::-1])
    embedder = Embedder(str(FIXTURES / "retrieve.safetensors"))
    Index.build(tmp_path / "idx", [str(tmp_path / "a.png")], embedder)[0].close()
    with TestClient(create_app([], index=str(tmp_path / "idx"), warm_up=False), base_url="http://localhost") as c:
        hits = c.post("/v1/retrieve?k=1", content=png, headers={"content-type": "image/png"}).json()
        embedded = c.post("/v1/embed", content=png, headers={"content-type": "image/png"}).json()
    assert hits["engine"] and hits["engine"] == embedded["engine"] and list(hits)[-1] == "model"
