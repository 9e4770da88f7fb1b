"""The service in production: many images per request, API keys, CORS, Prometheus metrics, liveness and
readiness, a per-client concurrency limit, request ids and JSON logs, and a graceful shutdown that loses no
accepted request (a real ``cnnapps serve`` process, sent SIGTERM while requests wait in its micro-batcher).

The model is the small LeNet-5 classifier of the model-file fixtures: cheap to load and to run."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from cnnapps.errors import CnnappsError
from cnnapps.serve.app import create_app, running
from cnnapps.serve.batcher import MicroBatcher
from cnnapps.serve.operations import load_api_keys

FIXTURES = Path(__file__).parents[1] / "fixtures" / "model_files_v1"
LENET = str(FIXTURES / "classify.safetensors")


def _png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))[1].tobytes()


@pytest.fixture(scope="module")
def pictures(chelsea: np.ndarray) -> dict[str, bytes]:
    from skimage import data

    return {
        "cat": cv2.imencode(".jpg", chelsea[::4, ::4, ::-1])[1].tobytes(),
        "coffee": _png(data.coffee()[::4, ::4]),
        "rocket": _png(data.rocket()[::4, ::4]),
        "strip": _png(np.zeros((1, 5000, 3), np.uint8)),  # past the reader's 100:1 aspect limit
        "garbage": b"plain text, not a picture",
        "tiny": _png(np.full((1, 1, 3), 9, np.uint8)),
    }


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app([LENET], max_batch=16, max_wait_ms=20, max_images=8, warm_up=False)
    with TestClient(app, base_url="http://localhost") as c:
        yield c


def _files(field: str, *images: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (f"{i}.png", image, "image/png")) for i, image in enumerate(images)]


def _metrics(text: str) -> dict[tuple[str, tuple], float]:
    """``(sample name, sorted labels) -> value`` from a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


# --- many images per request ----------------------------------------------------------------------------------


def test_many_images_are_answered_in_order_each_as_alone_and_in_one_batch(
    client: TestClient, pictures: dict[str, bytes]
) -> None:
    names = ["cat", "garbage", "coffee", "strip", "rocket"]
    alone = {n: client.post("/v1/classify?top_k=2", files=_files("image", pictures[n])) for n in names}
    assert [alone[n].status_code for n in names] == [200, 422, 200, 422, 200]
    before = client.get("/healthz").json()
    many = client.post("/v1/classify?top_k=2", files=_files("images", *(pictures[n] for n in names)))
    after = client.get("/healthz").json()
    assert many.status_code == 200, many.text
    answers = many.json()
    assert isinstance(answers, list) and len(answers) == 5
    for name, answer in zip(names, answers, strict=True):
        if alone[name].status_code == 200:
            assert answer == alone[name].json()  # the very answer of a request of its own
        else:
            assert answer == {"path": "<upload>", "error": alone[name].json()["error"], "model": "classify"}
    assert "not an image" in answers[1]["error"] and "elongated" in answers[3]["error"]
    # all five went to the micro-batcher together: one forward pass
    assert (after["requests"] - before["requests"], after["batches"] - before["batches"]) == (5, 1)


def test_repeated_image_fields_and_a_json_list_are_many_images_too(
    client: TestClient, pictures: dict[str, bytes]
) -> None:
    cat, coffee = pictures["cat"], pictures["coffee"]
    by_fields = client.post("/v1/classify", files=_files("image", cat, coffee))
    b64 = [base64.b64encode(x).decode() for x in (cat, coffee)]
    by_json = client.post("/v1/classify", json={"images": [b64[0], "%% not base64", 12, "", b64[1]]})
    assert by_fields.status_code == by_json.status_code == 200, by_json.text
    first, second = by_fields.json()
    assert by_json.json()[0] == first and by_json.json()[4] == second
    assert [a.get("error") for a in by_json.json()[1:4]] == [
        "image: not valid base64", "image: not a base64 string", "the image is empty"
    ]  # fmt: skip
    one = client.post("/v1/classify", json={"images": [b64[0]]})
    assert one.json() == [first]  # asked as a list, answered as a list
    predicted = client.post("/v1/predict", files=_files("images", cat, pictures["garbage"])).json()
    assert predicted[0]["classify"] == {k: v for k, v in first.items() if k not in ("path", "model", "engine")}
    assert predicted[0]["engine"] == first["engine"]  # once, beside the heads' answers, as `predict --json` says it
    assert "error" in predicted[1] and predicted[1]["model"] == "classify"
    for shape in ({"images": []}, {"images": "x"}, {"image": b64[0], "images": b64}, [b64[0]]):
        refused = client.post("/v1/classify", json=shape)
        assert refused.status_code == 422 and '{"images": ["<base64>", ...]}' in refused.json()["error"]


def test_too_many_images_in_one_request_is_a_one_line_413(pictures: dict[str, bytes]) -> None:
    app = create_app([LENET], warm_up=False)  # --max-images 64, --max-upload-mb 20
    tiny = pictures["tiny"]
    with TestClient(app, base_url="http://localhost") as c:
        listed = c.post("/v1/classify", json={"images": [base64.b64encode(tiny).decode()] * 10_000})
        uploaded = c.post("/v1/classify", files=_files("images", *[tiny] * 10_000))
        at_limit = c.post("/v1/classify", files=_files("images", *[tiny] * 64))
        assert c.get("/v1/models").json()["max_images"] == 64
    for answer in (listed, uploaded):
        assert answer.status_code == 413, answer.text[:200]
        assert "\n" not in answer.text
    assert listed.json() == {"error": "more than 64 images in one request: send at most 64 (--max-images)"}
    assert uploaded.json() == {  # the multipart parser counts every file
        "error": "more than 80 files in one request: send at most 64 images (--max-images) and 16 other files"
    }
    assert at_limit.status_code == 200 and len(at_limit.json()) == 64


def test_micro_batcher_takes_the_images_of_one_request_together() -> None:
    sizes: list[int] = []
    waiting: list[int] = []

    def run(items: list[int]) -> list[int]:
        waiting.append(batcher.pending)
        return [i * 10 for i in items]

    batcher = MicroBatcher(run, max_batch=4, max_wait_ms=0, on_batch=sizes.append)

    async def main() -> list[object]:
        answers = await batcher.submit_many(range(6))
        batcher.close()
        return answers

    assert asyncio.run(main()) == [0, 10, 20, 30, 40, 50]
    assert sizes == [4, 2]  # with no wait at all, the six still filled the batches
    assert waiting == [2, 0]  # while the first four ran, the last two waited their turn


# --- API keys ---------------------------------------------------------------------------------------------------


def test_api_keys_guard_every_v1_route_and_leave_probes_open(pictures: dict[str, bytes]) -> None:
    app = create_app([LENET], warm_up=False, api_keys=["first-key-0001", "second-key-0002"])
    upload = {"files": _files("image", pictures["cat"])}
    with TestClient(app, base_url="http://localhost") as c:
        missing = c.post("/v1/classify", **upload)
        wrong = c.post("/v1/classify", headers={"authorization": "Bearer first-key-0002"}, **upload)
        assert (missing.status_code, wrong.status_code) == (401, 401)
        assert "Authorization: Bearer KEY" in missing.json()["error"] and wrong.json() == {"error": "wrong API key"}
        assert missing.headers["www-authenticate"] == "Bearer"
        for headers in ({"authorization": "Bearer second-key-0002"}, {"authorization": "bearer first-key-0001"},
                        {"x-api-key": "first-key-0001"}):  # fmt: skip
            assert c.post("/v1/classify", headers=headers, **upload).status_code == 200, headers
        # an empty X-API-Key is no key: the Bearer one is taken, and with none the server asks for one
        both = c.post("/v1/classify", headers={"x-api-key": "", "authorization": "Bearer first-key-0001"}, **upload)
        assert both.status_code == 200, both.text
        blank = c.post("/v1/classify", headers={"x-api-key": " "}, **upload)
        assert blank.status_code == 401 and "needs an API key" in blank.json()["error"]
        for path in ("/v1/models", "/v1/nothing-here", "/elsewhere"):  # closed by default, even unknown paths
            assert c.get(path).status_code == 401, path
        for path in ("/livez", "/readyz", "/healthz", "/metrics", "/docs", "/openapi.json", "/"):
            assert c.get(path).status_code == 200, path
        schema = c.get("/openapi.json").json()  # /docs offers to send a key ("Authorize")
        assert set(schema["components"]["securitySchemes"]) == {"apiKey", "bearer"}
        assert schema["security"] == [{"apiKey": []}, {"bearer": []}]
    closed = create_app([LENET], warm_up=False, api_keys=["k-1"], metrics_need_key=True)
    with TestClient(closed, base_url="http://localhost") as c:
        assert c.get("/metrics").status_code == 401
        assert "securitySchemes" in c.get("/openapi.json").json()["components"]
        assert c.get("/metrics", headers={"x-api-key": "k-1"}).status_code == 200


def test_the_key_sent_is_compared_with_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    from cnnapps.serve import operations

    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(operations.hmac, "compare_digest", spy)
    check = operations.ApiKeyCheck(None, ["aaa", "bbb", "ccc"])  # type: ignore[arg-type]
    assert check.accepts(b"aaa") and not check.accepts(b"zzz")
    assert [b for _, b in compared] == [b"aaa", b"bbb", b"ccc"] * 2  # the first one matched: all three compared


def test_api_keys_come_from_options_a_file_and_the_environment(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# rotated monthly\nfile-key-1\n\n  file-key-2  \nopt-key\n")
    found = load_api_keys(["opt-key"], keys, environ={"CNNAPPS_API_KEYS": "env-key-1, env-key-2,,"})
    assert found == ["opt-key", "file-key-1", "file-key-2", "env-key-1", "env-key-2"]
    assert load_api_keys([], None, environ={}) == []
    keys.write_bytes(b"\xef\xbb\xbfnotepad-key\r\nsecond-key\r\n")  # saved by Windows Notepad: a BOM, CRLF
    assert load_api_keys([], keys, environ={}) == ["notepad-key", "second-key"]
    with pytest.raises(CnnappsError, match=r"^API key 2 of 2: .*printable ASCII characters without spaces$"):
        load_api_keys(["fine", "with space"], environ={})
    with pytest.raises(CnnappsError, match=r"--api-keys-file .*missing\.txt: cannot read it"):
        load_api_keys([], tmp_path / "missing.txt", environ={})


def test_a_keys_file_or_variable_without_keys_and_metrics_need_key_without_keys_are_errors(
    run_cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = tmp_path / "keys.txt"
    empty.write_text("# rotated monthly\n\n   \n# next: none yet\n")
    with pytest.raises(CnnappsError, match=r"^--api-keys-file .*keys\.txt: no API keys in it \(one a line; #"):
        load_api_keys(["opt-key"], empty, environ={})
    for value in (",", " , ,", ""):
        with pytest.raises(CnnappsError, match=r"^\$CNNAPPS_API_KEYS is set but holds no API keys"):
            load_api_keys([], None, environ={"CNNAPPS_API_KEYS": value})
    with pytest.raises(CnnappsError, match=r"^serve: --metrics-need-key without any API key: give --api-key"):
        create_app([LENET], warm_up=False, metrics_need_key=True)
    monkeypatch.delenv("CNNAPPS_API_KEYS", raising=False)
    for options in (["--api-keys-file", empty], ["--metrics-need-key"]):  # refused before any model is loaded
        code, _, err = run_cli("serve", "--model", LENET, *options)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "no API keys in it" in err or "--metrics-need-key without any API key" in err
    monkeypatch.setenv("CNNAPPS_API_KEYS", ",")
    code, _, err = run_cli("serve", "--model", LENET)
    assert code == 2 and "$CNNAPPS_API_KEYS is set but holds no API keys" in err, err


def test_a_port_taken_or_out_of_range_is_one_line_before_any_model_loads(run_cli) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_cli("serve", "--model", LENET, "--port", str(port))
    # no 'serving ... on' line for an address the server never had, and no uvicorn traceback (exit 3 before)
    assert (code, out) == (2, "") and err == (
        f"error: --port {port}: cannot listen on 127.0.0.1:{port} (address already in use); choose another --port\n"
    )
    for port in ("70000", "-1"):
        code, _, err = run_cli("serve", "--model", LENET, "--port", port)
        assert code == 2 and "Invalid value for '--port'" in err


# --- CORS -------------------------------------------------------------------------------------------------------


def test_cors_is_off_by_default_and_on_for_the_origins_given(client: TestClient) -> None:
    preflight = {"origin": "https://photos.example", "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type"}  # fmt: skip
    default = client.options("/v1/classify", headers=preflight)
    assert "access-control-allow-origin" not in default.headers
    app = create_app([LENET], warm_up=False, cors_origins=["https://photos.example"], api_keys=["k-1"])
    with TestClient(app, base_url="http://localhost") as c:
        allowed = c.options("/v1/classify", headers=preflight)  # answered before the key is asked for
        assert allowed.status_code == 200, allowed.text
        assert allowed.headers["access-control-allow-origin"] == "https://photos.example"
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        other = c.options("/v1/classify", headers={**preflight, "origin": "https://evil.example"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        answered = c.get("/v1/models", headers={"origin": "https://photos.example", "x-api-key": "k-1"})
        assert answered.headers["access-control-allow-origin"] == "https://photos.example"
        assert "x-request-id" in answered.headers["access-control-expose-headers"].lower()


# --- metrics, liveness, readiness -------------------------------------------------------------------------------


def test_metrics_count_requests_latency_batches_queue_and_errors(pictures: dict[str, bytes]) -> None:
    app = create_app([LENET], max_batch=16, max_wait_ms=5, warm_up=False)
    other = create_app([LENET], warm_up=False)  # a second app in the same process: registries of their own
    with TestClient(app, base_url="http://localhost") as c:
        for _ in range(3):
            assert c.post("/v1/classify", files=_files("image", pictures["cat"])).status_code == 200
        assert c.post("/v1/classify", files=_files("images", pictures["cat"], pictures["garbage"])).status_code == 200
        assert c.post("/v1/classify", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
        assert c.get("/nowhere").status_code == 404
        exposed = c.get("/metrics")
    assert exposed.headers["content-type"].startswith("text/plain")
    m = _metrics(exposed.text)
    route = (("route", "/v1/classify"),)
    assert m[("cnnapps_requests_total", (("method", "POST"), *route, ("status", "200")))] == 4
    assert m[("cnnapps_requests_total", (("method", "POST"), *route, ("status", "415")))] == 1
    assert m[("cnnapps_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1
    assert m[("cnnapps_request_duration_seconds_count", route)] == 5
    assert m[("cnnapps_request_duration_seconds_sum", route)] > 0
    assert m[("cnnapps_images_total", route)] == 5
    model = (("model", "classify"),)
    assert m[("cnnapps_batch_size_count", model)] == 4 and m[("cnnapps_batch_size_sum", model)] == 5
    assert m[("cnnapps_batch_size_bucket", (("le", "1.0"), *model))] == 3  # three alone, one pair
    assert m[("cnnapps_queue_length", model)] == 0
    for kind, count in (("image", 1), ("unsupported_media_type", 1), ("not_found", 1)):
        assert m[("cnnapps_errors_total", (("kind", kind),))] == count, kind
    with TestClient(other, base_url="http://localhost") as c:
        assert ("cnnapps_images_total", route) not in _metrics(c.get("/metrics").text)


def test_liveness_and_readiness(client: TestClient) -> None:
    app = create_app([LENET], warm_up=False)
    bare = TestClient(app, base_url="http://localhost")  # no lifespan: the models are loaded all the same
    assert bare.get("/livez").json() == {"status": "ok"}
    assert bare.get("/readyz").json() == {"status": "ready", "models": 1}
    app.state.lifecycle.ready = False  # not loaded yet
    assert bare.get("/readyz").status_code == 503 and "loading" in bare.get("/readyz").json()["error"]
    app.state.lifecycle.ready = True
    with TestClient(app, base_url="http://localhost") as c:
        assert c.get("/readyz").json() == {"status": "ready", "models": 1}
        app.state.lifecycle.draining = True  # what SIGTERM does
        gone = c.get("/readyz")
        assert gone.status_code == 503 and gone.json() == {"error": "shutting down: answering the requests in flight"}
        assert c.get("/livez").status_code == 200


def test_an_app_mounted_in_another_is_ready_and_counts_its_routes(pictures: dict[str, bytes]) -> None:
    """Starlette runs no lifespan of a mounted app: the models are loaded and warm when ``create_app`` returns."""
    from fastapi import FastAPI

    ml = create_app([LENET], api_keys=["k-1"])
    parent = FastAPI()
    parent.mount("/ml", ml)
    with TestClient(parent, base_url="http://localhost") as c:
        assert c.get("/ml/readyz").json() == {"status": "ready", "models": 1}
        upload = {"files": _files("image", pictures["cat"])}
        assert c.post("/ml/v1/classify", headers={"x-api-key": "k-1"}, **upload).status_code == 200
        assert c.post("/ml/v1/classify", **upload).status_code == 401
        m = _metrics(c.get("/ml/metrics").text)
    route = ("route", "/v1/classify")
    assert m[("cnnapps_requests_total", (("method", "POST"), route, ("status", "200")))] == 1
    assert m[("cnnapps_requests_total", (("method", "POST"), route, ("status", "401")))] == 1


def test_requests_refused_before_their_route_are_counted_under_it(pictures: dict[str, bytes]) -> None:
    app = create_app([LENET], warm_up=False, api_keys=["k-1"])
    upload = {"files": _files("image", pictures["cat"])}
    with TestClient(app, base_url="http://localhost") as c:
        assert c.post("/v1/classify", **upload).status_code == 401  # no key
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/classify").status_code == 401  # the route's path, another method
        assert c.get("/v1/retrieve/thumbnail?id=1").status_code == 401  # not a route here (no index)
        assert c.post("/v1/classify", headers={"host": "evil.example", "x-api-key": "k-1"}, **upload).status_code == 400
        m = _metrics(c.get("/metrics").text)

    def count(method: str, route: str, status: int) -> float:
        return m.get(("cnnapps_requests_total", (("method", method), ("route", route), ("status", str(status)))), 0)

    assert count("POST", "/v1/classify", 401) == 1 and count("POST", "/v1/classify", 400) == 1
    assert count("GET", "/v1/models", 401) == 1 and count("GET", "/v1/classify", 401) == 1
    assert count("GET", "unmatched", 401) == 1  # a path no route answers: unmatched, whatever it was
    assert m[("cnnapps_request_duration_seconds_count", (("route", "/v1/classify"),))] == 3


# --- several models of one name ---------------------------------------------------------------------------------


def test_models_alike_in_name_and_task_get_names_of_their_own(
    tmp_path: Path, pictures: dict[str, bytes], chelsea: np.ndarray
) -> None:
    from cnnapps.apps.retrieve.embedder import Embedder
    from cnnapps.apps.retrieve.index import Index

    (tmp_path / "export").mkdir()
    copy = tmp_path / "export" / "classify.safetensors"  # like a file and its ONNX export: one name, one task
    copy.write_bytes(Path(LENET).read_bytes())
    app = create_app([LENET, str(copy)], warm_up=False)
    upload = {"files": _files("image", pictures["cat"])}
    with TestClient(app, base_url="http://localhost") as c:
        names = [m["name"] for m in c.get("/v1/models").json()["models"]]
        assert names == ["classify-classify", "classify-classify-2"]
        for name in names:
            answer = c.post(f"/v1/classify?model={name}", **upload)
            assert answer.status_code == 200 and answer.json()["model"] == name
        m = _metrics(c.get("/metrics").text)
    assert {labels for name, labels in m if name == "cnnapps_queue_length"} == {
        (("model", "classify-classify"),), (("model", "classify-classify-2"),)
    }  # fmt: skip
    retriever = str(FIXTURES / "retrieve.safetensors")
    photo = tmp_path / "cat.png"
    photo.write_bytes(_png(chelsea[::8, ::8]))
    Index.build(tmp_path / "idx", [str(photo)], Embedder(retriever))
    app = create_app([retriever], index=str(tmp_path / "idx"), warm_up=False)  # the index's own model too
    with TestClient(app, base_url="http://localhost") as c:
        names = [m["name"] for m in c.get("/v1/models").json()["models"] if m["route"] == "/v1/embed"]
        assert len(names) == 2 and len(set(names)) == 2, names
        for name in names:
            answer = c.post(f"/v1/embed?model={name}", **upload)
            assert answer.status_code == 200 and answer.json()["model"] == name
        assert c.post("/v1/retrieve", **upload).json()["model"] == names[1]


# --- per-client limit, request ids, JSON logs -------------------------------------------------------------------


def test_a_client_over_its_concurrency_limit_gets_429_and_others_are_served(pictures: dict[str, bytes]) -> None:
    app = create_app([LENET], max_batch=64, max_wait_ms=3000, warm_up=False, max_concurrent_per_client=2)
    upload = _files("image", pictures["cat"])
    with running(app, forwarded_allow_ips="127.0.0.1") as url:  # a proxy on this machine
        answers: dict[int, httpx.Response] = {}

        def ask(k: int) -> None:
            answers[k] = httpx.post(f"{url}/v1/classify", files=upload, timeout=30)

        slow = [threading.Thread(target=ask, args=(k,)) for k in range(2)]
        for t in slow:
            t.start()
        deadline = time.monotonic() + 10
        while _metrics(httpx.get(f"{url}/metrics").text)[("cnnapps_queue_length", (("model", "classify"),))] < 2:
            assert time.monotonic() < deadline, "the two requests never reached the micro-batcher"
            time.sleep(0.02)
        third = httpx.post(f"{url}/v1/classify", files=upload, timeout=30)
        proxied = threading.Thread(target=lambda: answers.update({9: httpx.post(  # another client behind a proxy
            f"{url}/v1/classify", files=upload, headers={"x-forwarded-for": "10.0.0.9"}, timeout=30)}))  # fmt: skip
        proxied.start()
        assert httpx.get(f"{url}/healthz").status_code == 200  # probes are not counted
        assert httpx.get(f"{url}/v1/models").status_code == 200  # nor reads that run no model (thumbnails...)
        for t in [*slow, proxied]:
            t.join()
    assert third.status_code == 429 and third.headers["retry-after"] == "1"
    assert third.json() == {
        "error": "too many requests at once from 127.0.0.1: at most 2 (--max-concurrent-per-client)"
    }
    assert [answers[k].status_code for k in (0, 1, 9)] == [200, 200, 200]


def test_json_logs_one_line_per_request_with_its_id(pictures: dict[str, bytes], capsys: pytest.CaptureFixture) -> None:
    app = create_app([LENET], warm_up=False, log_format="json")
    with TestClient(app, base_url="http://localhost") as c:
        capsys.readouterr()
        sent = c.post("/v1/classify", files=_files("images", *[pictures["cat"]] * 3), headers={"x-request-id": "ab-12"})
        made = c.get("/v1/models")
        odd = c.get("/livez", headers={"x-request-id": "two words\tand a tab"})
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert sent.headers["x-request-id"] == "ab-12"
    assert len(made.headers["x-request-id"]) == 32 and odd.headers["x-request-id"] != "two words\tand a tab"
    access = [line for line in lines if line["logger"] == "cnnapps.serve.access"]
    assert [line["request_id"] for line in access] == [
        "ab-12",
        made.headers["x-request-id"],
        odd.headers["x-request-id"],
    ]
    first = access[0]
    assert {k: first[k] for k in ("method", "route", "path", "status", "images")} == {
        "method": "POST", "route": "/v1/classify", "path": "/v1/classify", "status": 200, "images": 3
    }  # fmt: skip
    assert first["latency_ms"] > 0 and first["level"] == "info" and "time" in first
    assert access[1]["images"] == 0 and access[1]["route"] == "/v1/models"


def test_serve_command_maps_production_options_to_the_app(
    run_cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import uvicorn
    from fastapi import FastAPI

    import cnnapps.serve.app as serve_app

    seen: dict = {}

    def fake_create_app(specs: list, *args: object, **kwargs: object) -> FastAPI:
        seen.update(kwargs)
        return FastAPI()

    class FakeServer:
        def __init__(self, config: uvicorn.Config) -> None:
            seen["server"], self.started = self, False

        def run(self, sockets: list | None = None) -> None:
            self.started = True

    monkeypatch.setattr(serve_app, "create_app", fake_create_app)
    monkeypatch.setattr(uvicorn, "Server", FakeServer)
    monkeypatch.setenv("CNNAPPS_API_KEYS", "env-key")
    (tmp_path / "keys").write_text("file-key\n")
    options = ["--port", "0", "--max-images", "8", "--api-key", "opt-key", "--api-keys-file", tmp_path / "keys",
               "--metrics-need-key", "--cors-origin", "https://a.example", "--cors-origin", "https://b.example",
               "--max-concurrent-per-client", "3", "--log-format", "json", "--shutdown-delay", "2"]  # fmt: skip
    code, _, err = run_cli("serve", *options)
    assert code == 0, err
    expected = {"max_images": 8, "api_keys": ["opt-key", "file-key", "env-key"], "metrics_need_key": True,
                "cors_origins": ["https://a.example", "https://b.example"], "max_concurrent_per_client": 3,
                "log_format": "json"}  # fmt: skip
    assert {k: seen[k] for k in expected} == expected
    assert type(seen["server"]).__name__ == "GracefulServer" and "3 API keys" in err
    code, _, err = run_cli("serve", "--api-key", "has space")
    assert code == 2 and "printable ASCII characters without spaces" in err and "has space" not in err


# --- graceful shutdown, in a real process -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_answers_every_accepted_request_then_exits_0(pictures: dict[str, bytes], tmp_path: Path) -> None:
    """Twelve requests wait in the micro-batcher (--max-wait-ms 4000) when SIGTERM comes. With --shutdown-delay 1,
    /readyz turns 503 at once and the server serves on for a second (four more requests); then (at once with no
    delay) it stops accepting, answers every request it has and exits 0. A stream of requests sent meanwhile is
    either answered 200 or never accepted (refused): every request the server logged is one its client got a
    200 for. (Run with the delay only: 11 s a run; without one the same drain starts at once.)"""
    delay = 1
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    env.pop("CNNAPPS_API_KEYS", None)
    command = [sys.executable, "-m", "cnnapps", "serve", "--model", LENET, "--port", str(port), "--device", "cpu",
               "--max-batch", "64", "--max-wait-ms", "4000", "--log-format", "json",
               "--shutdown-delay", str(delay)]  # fmt: skip
    with log.open("wb") as err:
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the server did not become ready"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        upload = _files("image", pictures["cat"])
        results: dict[str, int | str] = {}

        def ask(request_id: str) -> None:
            try:
                answer = httpx.post(
                    f"{url}/v1/classify", files=upload, headers={"x-request-id": request_id}, timeout=60
                )
                results[request_id] = answer.status_code
            except httpx.TransportError as exc:
                results[request_id] = type(exc).__name__

        first = [threading.Thread(target=ask, args=(f"first-{k}",)) for k in range(12)]
        for t in first:
            t.start()
        while _metrics(httpx.get(f"{url}/metrics").text).get(("cnnapps_queue_length", (("model", "classify"),))) != 12:
            assert time.monotonic() < deadline, "the twelve requests never all reached the micro-batcher"
            time.sleep(0.02)
        server.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        draining = httpx.get(f"{url}/readyz", timeout=5) if delay else None
        during = [threading.Thread(target=ask, args=(f"during-{k}",)) for k in range(4 if delay else 0)]
        for t in during:
            t.start()
        stop = threading.Event()

        def stream() -> None:
            k = 0
            while not stop.is_set():
                ask(f"stream-{k}")
                k += 1
                time.sleep(0.05)

        streamer = threading.Thread(target=stream)
        streamer.start()
        code = server.wait(timeout=60)
        stop.set()
        for t in [*first, *during, streamer]:
            t.join(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    text = log.read_text()
    assert code == 0, text
    assert [results[f"first-{k}"] for k in range(12)] == [200] * 12
    if delay:
        assert draining is not None and draining.status_code == 503, draining
        assert draining.json()["error"].startswith("shutting down")
        assert [results[f"during-{k}"] for k in range(4)] == [200] * 4
    streamed = {k: v for k, v in results.items() if k.startswith("stream-")}
    assert all(v == 200 or v in ("ConnectError", "RemoteProtocolError", "ReadError") for v in streamed.values()), (
        streamed
    )
    assert list(streamed.values())[-1] != 200  # it ended refused: the server had stopped accepting
    logged = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    answered = {line["request_id"]: line["status"] for line in logged if line.get("route") == "/v1/classify"}
    assert answered == {k: 200 for k, v in results.items() if v == 200}  # no accepted request lost, none failed
    assert len(answered) >= 12 + 4 * delay


_STUCK_SERVICE = """
import sys, threading
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
import cnnapps.serve.app as serve_app
from cnnapps.cli import main

def stuck_app(specs, *args, **kwargs):
    app = FastAPI()
    never = threading.Event()

    @app.post("/v1/stuck")
    async def stuck():  # a read that never returns (a hung network file system)
        await run_in_threadpool(never.wait)

    return app

serve_app.create_app = stuck_app
main(sys.argv[1:])
"""


def test_ctrl_c_twice_stops_a_server_whose_request_is_stuck_in_a_thread() -> None:
    """The second Ctrl+C does not wait for requests: the process ends (130) though a request's thread never returns;
    the interpreter waited for that thread before, and no signal ended it."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-c", _STUCK_SERVICE, "serve", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            try:
                httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)

        def ask() -> None:
            with contextlib.suppress(httpx.HTTPError):  # answered 500, or not at all
                httpx.post(f"http://127.0.0.1:{port}/v1/stuck", timeout=30)

        threading.Thread(target=ask, daemon=True).start()
        time.sleep(1)
        server.send_signal(signal.SIGINT)
        time.sleep(1)
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=20) == 130
        said = server.stderr.read().decode()
        assert "Traceback" not in said  # uvicorn's of the cancelled request, 45 lines for a streamed clip
        assert said.strip().endswith("stopped at the second Ctrl+C, without answering the requests in progress")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
