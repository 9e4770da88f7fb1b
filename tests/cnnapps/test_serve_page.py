"""The web page in a real headless Chromium (Debian's, driven by Playwright): upload, run, see the result."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``cnnapps serve`` with the bundled classifier and a small captioner, on a free loopback port."""
    from cnnapps.serve.app import create_app, running

    app = create_app(["efficientnet_lite0", str(_captioner(tmp_path_factory.mktemp("cap")))], max_wait_ms=2)
    with running(app) as url:
        yield url


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
def test_page_shows_the_top5_and_a_caption(server: str, chelsea: np.ndarray, tmp_path: Path) -> None:
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

        page.select_option("#task", "/v1/caption")
        page.click("#run")
        page.wait_for_selector(".caption")
        assert page.inner_text(".caption").strip() != ""
        browser.close()
