"""Draw docs/serve_page.png: the page of `cnnapps serve` after classifying scikit-image's chelsea.

python scripts/serve_screenshot.py docs/serve_page.png      (needs Chromium: make browser)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import cv2
from playwright.sync_api import sync_playwright
from skimage import data

from cnnapps.serve.app import create_app, running


def main(out: str) -> None:
    app = create_app(["efficientnet_lite0"])
    with running(app) as url, tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        photo = Path(tmp) / "chelsea.jpg"
        cv2.imwrite(str(photo), data.chelsea()[:, :, ::-1])
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--headless=new"])
        page = browser.new_page(viewport={"width": 1000, "height": 560})
        page.goto(url)
        page.wait_for_selector("#task option", state="attached")
        page.set_input_files("#file", str(photo))
        page.click("#run")
        page.wait_for_selector(".bar")
        page.screenshot(path=out)
        browser.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1])
