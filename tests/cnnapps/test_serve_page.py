"""The web page in a real headless Chromium (Debian's, driven by Playwright): upload, run, see the result."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FIXTURES = Path(__file__).parents[1] / "fixtures" / "model_files_v1"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (make test installs Debian's chromium)")


KEY = "page-key-7f3a"


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory, chelsea: np.ndarray) -> str:
    """An index of two photos (chelsea.jpg, coffee.png), shared by the servers below."""
    return str(_index(tmp_path_factory.mktemp("gallery"), chelsea))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, gallery: str) -> str:
    """``cnnapps serve`` with two classifiers (the bundled one and a small LeNet file), a small captioner and an
    index of two photos, on a free loopback port."""
    from cnnapps.serve.app import create_app, running

    models = [
        "efficientnet_lite0",
        str(FIXTURES / "classify.safetensors"),
        str(_captioner(tmp_path_factory.mktemp("cap"))),
    ]
    app = create_app(models, index=gallery, max_wait_ms=2)
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def mounted(gallery: str) -> str:
    """Another app that mounts the service twice (the LeNet file and the index): at ``/ml`` open, and at
    ``/locked`` with an API key (``KEY``)."""
    from fastapi import FastAPI

    from cnnapps.serve.app import create_app, running

    def service(**options: object) -> FastAPI:
        return create_app([str(FIXTURES / "classify.safetensors")], index=gallery, warm_up=False, max_wait_ms=2,
                          **options)  # fmt: skip

    parent = FastAPI()
    parent.mount("/ml", service())
    parent.mount("/locked", service(api_keys=[KEY]))
    with running(parent) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the tests of this file (each test opens its own context: its own storage)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"])
        yield browser
        browser.close()


@pytest.fixture
def photo(chelsea: np.ndarray, tmp_path: Path) -> Path:
    photo = tmp_path / "chelsea.jpg"
    cv2.imwrite(str(photo), chelsea[:, :, ::-1])
    return photo


def _index(folder: Path, chelsea: np.ndarray) -> Path:
    """An index of two photos, built with the small embedder of the model-file fixtures."""
    from skimage import data

    from cnnapps.apps.retrieve.embedder import Embedder
    from cnnapps.apps.retrieve.index import Index

    cv2.imwrite(str(folder / "chelsea.jpg"), chelsea[:, :, ::-1])
    cv2.imwrite(str(folder / "coffee.png"), data.coffee()[:, :, ::-1])
    paths = [str(folder / "chelsea.jpg"), str(folder / "coffee.png")]
    Index.build(folder / "idx", paths, Embedder(str(FIXTURES / "retrieve.safetensors")))
    return folder / "idx"


def _captioner(folder: Path) -> Path:
    """An untrained captioner (seeded) with a tiny vocabulary: it writes some words, which is all we show."""
    import torch

    from cnnapps.apps.caption.model import build_captioner, save_captioner
    from cnnapps.apps.caption.vocab import Vocabulary

    torch.manual_seed(0)
    vocab = Vocabulary.build(["a red circle", "a blue square above a red circle"])
    model = build_captioner("resnet18", vocab, grid=2, weights=None)
    save_captioner(folder / "captioner.safetensors", model)
    return folder / "captioner.safetensors"


def test_page_shows_the_top5_a_chosen_model_a_caption_and_thumbnails(
    server: str, browser: Browser, photo: Path
) -> None:
    with browser.new_context() as context:
        page = context.new_page()
        page.goto(server)
        page.wait_for_selector("#task option[value='/v1/caption']", state="attached")
        assert "efficientnet_lite0 (classify)" in page.inner_text("#served")

        page.set_input_files("#file", str(photo))
        page.select_option("#task", "/v1/classify")
        page.click("#run")
        page.wait_for_selector(".bar")
        labels = page.locator(".bar .label").all_inner_texts()
        scores = [float(s.rstrip("%")) for s in page.locator(".bar .score").all_inner_texts()]
        assert len(labels) == 5 and "cat" in labels[0] and scores == sorted(scores, reverse=True)
        assert page.locator("#preview").is_visible()
        assert page.inner_text("#status").startswith("200")

        assert page.locator("#model option").all_inner_texts() == ["efficientnet_lite0", "classify"]
        page.select_option("#model", "classify")  # the LeNet file: its three colours
        page.click("#run")
        page.wait_for_function("document.querySelectorAll('.bar').length === 3")
        assert set(page.locator(".bar .label").all_inner_texts()) == {"red", "green", "blue"}

        page.select_option("#task", "/v1/caption")
        assert page.locator("#model").is_hidden()  # one captioner: nothing to choose
        page.click("#run")
        page.wait_for_selector(".caption")
        assert page.inner_text(".caption").strip() != ""

        page.select_option("#task", "/v1/retrieve")
        page.click("#run")
        page.wait_for_selector(".hit img")
        page.wait_for_function("[...document.querySelectorAll('.hit img')].every((i) => i.complete)")
        assert page.locator(".hit .name").all_inner_texts() == ["chelsea.jpg", "coffee.png"]
        widths = page.eval_on_selector_all(".hit img", "(imgs) => imgs.map((i) => i.naturalWidth)")
        assert widths == [160, 160]  # thumbnails served by the index, not bare paths


def _retrieve(page: Page, photo: Path) -> None:
    """Run the retrieve route on ``photo`` and wait for both thumbnails to be drawn."""
    page.set_input_files("#file", str(photo))
    page.select_option("#task", "/v1/retrieve")
    page.click("#run")
    page.wait_for_function("document.querySelectorAll('.hit img').length === 2")
    page.wait_for_function("[...document.querySelectorAll('.hit img')].every((i) => i.naturalWidth > 0)")
    assert page.locator(".hit .name").all_inner_texts() == ["chelsea.jpg", "coffee.png"]
    assert page.eval_on_selector_all(".hit img", "(imgs) => imgs.map((i) => i.naturalWidth)") == [160, 160]


def test_page_mounted_under_a_prefix_calls_the_routes_under_it(mounted: str, browser: Browser, photo: Path) -> None:
    """Mounted at /ml, the page asks /ml/v1/models, /ml/v1/<task> and /ml/v1/retrieve/thumbnail, not the root's."""
    with browser.new_context() as context:
        page = context.new_page()
        asked: list[str] = []
        page.on("request", lambda request: asked.append(request.url))
        page.goto(mounted + "/ml/")
        page.wait_for_selector("#task option[value='/v1/retrieve']", state="attached")
        assert "classify (classify)" in page.inner_text("#served")
        assert page.locator("#keyform").is_hidden()  # no key asked where none is needed

        page.set_input_files("#file", str(photo))
        page.select_option("#task", "/v1/classify")
        page.click("#run")
        page.wait_for_function("document.querySelectorAll('.bar').length === 3")
        assert page.inner_text("#status").startswith("200")
        _retrieve(page, photo)
        routes = [u[len(mounted) :] for u in asked if u.startswith(mounted)]
        assert routes and all(u.startswith("/ml/") for u in routes), routes
        assert any(u.startswith("/ml/v1/retrieve/thumbnail?") for u in routes), routes


def test_page_with_api_keys_asks_for_one_and_sends_it_as_a_header(mounted: str, browser: Browser, photo: Path) -> None:
    """With keys configured, the page shows a key field on 401, keeps the key for the tab (sessionStorage), sends
    it as X-API-Key on every call (thumbnails too, fetched) and never in a URL."""
    with browser.new_context() as context:
        page = context.new_page()
        sent: list[tuple[str, str | None]] = []
        page.on("request", lambda request: sent.append((request.url, request.headers.get("x-api-key"))))
        page.goto(mounted + "/locked/")
        page.wait_for_selector("#keyform", state="visible")
        assert "could not list models" in page.inner_text("#served")
        assert "needs an API key" in page.inner_text("#keystatus")

        page.fill("#key", "not-the-key")
        page.click("#usekey")
        page.wait_for_function("document.querySelector('#keystatus').textContent.includes('refused')")
        page.fill("#key", KEY)
        page.click("#usekey")
        page.wait_for_selector("#task option[value='/v1/retrieve']", state="attached")
        assert "classify (classify)" in page.inner_text("#served")
        assert page.locator("#keyform").is_hidden()
        _retrieve(page, photo)
        assert page.inner_text("#status").startswith("200")

        page.reload()  # the key is kept for the tab: no asking again
        page.wait_for_selector("#task option[value='/v1/retrieve']", state="attached")
        assert page.locator("#keyform").is_hidden()

        calls = [(u, key) for u, key in sent if "/v1/" in u]
        assert {u.split("?")[0][len(mounted) :] for u, key in calls if key == KEY} == {
            "/locked/v1/models", "/locked/v1/retrieve", "/locked/v1/retrieve/thumbnail"}  # fmt: skip
        assert not any(KEY in u or "not-the-key" in u for u, _ in sent)  # never in a URL


def test_page_shows_semantic_panoptic_and_multilabel_answers_and_sends_only_a_routes_options(
    mounted: str, browser: Browser, photo: Path
) -> None:
    """Answers of the shapes the routes give (the server's replaced in the browser): a multi-label classifier's
    labels over their thresholds, a semantic map's class shares, panoptic segments; ``draw`` is sent only to a
    route that takes it (another is refused)."""
    from urllib.parse import parse_qs, urlsplit

    models = {"models": [
        {"name": "tags", "task": "classify", "route": "/v1/classify", "options": ["model", "top_k"]},
        {"name": "voc", "task": "semantic", "route": "/v1/semantic", "options": ["model", "draw"]},
        {"name": "coco", "task": "panoptic", "route": "/v1/panoptic", "options": ["model", "draw"]},
    ]}  # fmt: skip
    answers = {
        "/v1/classify": {"labels": [{"label": "cat", "score": 0.91}, {"label": "indoor", "score": 0.62}],
                         "predictions": [{"label": "cat", "index": 0, "score": 0.91},
                                         {"label": "indoor", "index": 3, "score": 0.62},
                                         {"label": "dog", "index": 1, "score": 0.2}]},
        "/v1/semantic": {"width": 10, "height": 10, "classes": [
            {"label": "sky", "index": 1, "pixels": 60, "fraction": 0.6},
            {"label": "grass", "index": 2, "pixels": 40, "fraction": 0.4}]},
        "/v1/panoptic": {"width": 10, "height": 10, "segments": [
            {"id": 1, "label": "person", "isthing": True, "area": 30, "box": [0, 0, 5, 6], "score": 0.93},
            {"id": 2, "label": "sky", "isthing": False, "area": 70, "box": [0, 0, 10, 10]}]},
    }  # fmt: skip
    asked: dict[str, dict[str, list[str]]] = {}

    def answer(route: Route) -> None:
        parts = urlsplit(route.request.url)
        path = parts.path.removeprefix("/ml")
        if path == "/v1/models":
            return route.fulfill(json=models)
        asked[path] = parse_qs(parts.query)
        return route.fulfill(json={"path": "<upload>", **answers[path], "model": "x"})

    with browser.new_context() as context:
        page = context.new_page()
        page.route("**/ml/v1/**", answer)
        page.goto(mounted + "/ml/")
        page.wait_for_selector("#task option[value='/v1/panoptic']", state="attached")
        page.set_input_files("#file", str(photo))

        page.select_option("#task", "/v1/classify")
        page.click("#run")
        page.wait_for_selector(".labels")
        assert page.inner_text(".labels") == "labels: cat, indoor"
        assert page.locator(".bar .label").all_inner_texts() == ["cat", "indoor", "dog"]

        page.select_option("#task", "/v1/semantic")
        page.click("#run")
        page.wait_for_function("document.querySelector('.bar .label').textContent === 'sky'")
        assert page.locator(".bar .label").all_inner_texts() == ["sky", "grass"]
        assert page.locator(".bar .score").all_inner_texts() == ["60.0%", "40.0%"]

        page.select_option("#task", "/v1/panoptic")
        page.click("#run")
        page.wait_for_selector(".segment")
        assert page.inner_text(".count") == "2 segments"
        assert page.locator(".segment").all_inner_texts() == ["person (thing) 30 px 93%", "sky (stuff) 70 px"]
    assert asked == {"/v1/classify": {}, "/v1/semantic": {"draw": ["true"]}, "/v1/panoptic": {"draw": ["true"]}}


def test_docs_mounted_under_a_prefix_load_their_files_and_schema_from_under_it(mounted: str) -> None:
    """/ml/docs named /docs/assets/... and /openapi.json: the parent's (404, or its own schema)."""
    import re

    import httpx

    page = httpx.get(f"{mounted}/ml/docs", timeout=10).text
    named = re.findall(r"""(?:href|src|url)\s*[=:]\s*['"]([^'"]+)['"]""", page)
    assert {"/ml/docs/assets/swagger-ui.css", "/ml/docs/assets/swagger-ui-bundle.js", "/ml/openapi.json"} <= set(named)
    for path in named:
        if path.startswith("/"):
            assert httpx.get(mounted + path, timeout=10).status_code == 200, path
    assert "/v1/classify" in httpx.get(f"{mounted}/ml/openapi.json", timeout=10).json()["paths"]
