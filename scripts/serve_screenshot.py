"""Draw docs/serve_page.png: the page of `cnnapps serve` after classifying scikit-image's chelsea.

python scripts/serve_screenshot.py docs/serve_page.png      (needs Chromium: make browser)
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import uvicorn
from playwright.sync_api import sync_playwright
from skimage import data

from cnnapps.serve.app import create_app


def main(out: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(["efficientnet_lite0"]), port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        photo = Path(tmp) / "chelsea.jpg"
        cv2.imwrite(str(photo), data.chelsea()[:, :, ::-1])
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--headless=new"])
        page = browser.new_page(viewport={"width": 1000, "height": 560})
        page.goto(f"http://127.0.0.1:{port}")
        page.wait_for_selector("#task option", state="attached")
        page.set_input_files("#file", str(photo))
        page.click("#run")
        page.wait_for_selector(".bar")
        page.screenshot(path=out)
        browser.close()
    server.should_exit = True
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1])
