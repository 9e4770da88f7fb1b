"""The web page in a real headless Chromium (Debian's, driven by Playwright): upload, run, see the result."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FIXTURES = Path(__file__).parents[1] / "fixtures" / "model_files_v1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, chelsea: np.ndarray) -> str:
    """``cnnapps serve`` with two classifiers (the bundled one and a small LeNet file), a small captioner and an
    index of two photos, on a free loopback port."""
    from cnnapps.serve.app import create_app, running

    models = [
        "efficientnet_lite0",
        str(FIXTURES / "classify.safetensors"),
        str(_captioner(tmp_path_factory.mktemp("cap"))),
    ]
    app = create_app(models, index=str(_index(tmp_path_factory.mktemp("gallery"), chelsea)), max_wait_ms=2)
    with running(app) as url:
        yield url


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


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (make test installs Debian's chromium)")
def test_page_shows_the_top5_a_chosen_model_a_caption_and_thumbnails(
    server: str, chelsea: np.ndarray, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    photo = tmp_path / "chelsea.jpg"
    cv2.imwrite(str(photo), chelsea[:, :, ::-1])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"])
        page = browser.new_page()
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
        browser.close()
