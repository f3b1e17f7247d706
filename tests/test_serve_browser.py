"""``sidraw serve``'s page in a real headless browser: Debian's chromium and chromedriver, driven
by selenium, against uvicorn on a free loopback port.

Two files are chosen in the page (one a raw file, one broken), converted with the keyboard, the
before/after preview is opened, and the zip of all results is downloaded and read. Skips where no
browser (or no ``web`` extra, or no selenium) is installed; ``.ci/run`` installs them.

``SIDRAW_SCREENSHOT=docs/serve.png`` (a path; ``1`` for that one) also saves a screenshot of the
page for the README; it then converts with the bundled models, so the preview shows what sidraw
really does (the tiny test model's output is noise).
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("selenium")

import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from serve_helpers import serve_config

from sidraw.sample import write_sample
from sidraw.serve.app import create_app
from sidraw.serve.server import bind

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip("no chromium and chromedriver installed", allow_module_level=True)

SCREENSHOT = os.environ.get("SIDRAW_SCREENSHOT")
SHOT_PATH = REPO / "docs" / "serve.png" if SCREENSHOT == "1" else Path(SCREENSHOT or ".")


@pytest.fixture
def live_server(tmp_path: Path, tiny_models: Path) -> Iterator[str]:
    """uvicorn serving a fresh application in a thread; yields the page's URL."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    model = None if SCREENSHOT else tiny_models
    config = serve_config(tmp_path / "work", model, port=port, threads=None)
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(30)
    sock.close()
    assert not (tmp_path / "work" / "jobs").exists()  # the shutdown deleted everything


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=820,1180", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    driver.downloads = downloads  # type: ignore[attr-defined]
    try:
        yield driver
    finally:
        driver.quit()


def _inputs(folder: Path) -> tuple[Path, Path]:
    folder.mkdir()
    good = folder / "night.dng"
    size = {"width": 720, "height": 480} if SCREENSHOT else {"width": 320, "height": 224}
    write_sample(good, realistic=True, ratio=150, **size)
    broken = folder / "card_error.ARW"
    broken.write_bytes(np.random.default_rng(1).integers(0, 256, 40_000, np.uint8).tobytes())
    return good, broken


def _downloaded(folder: Path, name: str, timeout: float = 30) -> Path:
    path = folder / name
    deadline = time.monotonic() + timeout
    while not path.is_file() or list(folder.glob("*.crdownload")):
        assert time.monotonic() < deadline, f"no download: {list(folder.iterdir())}"
        time.sleep(0.1)
    return path


def test_page_converts_two_files_one_broken_and_downloads_the_zip(
    live_server: str, browser: Any, tmp_path: Path
) -> None:
    good, broken = _inputs(tmp_path / "inputs")
    browser.get(live_server)
    wait = WebDriverWait(browser, 90)
    wait.until(lambda d: d.find_element(By.ID, "footer").text.startswith("sidraw "))
    browser.find_element(By.ID, "files").send_keys(f"{good}\n{broken}")
    assert browser.find_element(By.ID, "picked").text.startswith("2 files")
    browser.find_element(By.ID, "convert").send_keys(Keys.ENTER)  # the keyboard is enough

    wait.until(lambda d: "1 converted, 1 failed" in d.find_element(By.ID, "summary").text)
    rows = browser.find_elements(By.CSS_SELECTOR, "#jobs li")
    states = {
        r.find_element(By.CLASS_NAME, "name").text: r.get_attribute("data-state") for r in rows
    }
    assert states == {"night.dng": "done", "card_error.ARW": "failed"}
    failed = next(r for r in rows if r.get_attribute("data-state") == "failed")
    assert "not a raw file" in failed.find_element(By.CLASS_NAME, "state").text
    done = next(r for r in rows if r.get_attribute("data-state") == "done")
    assert "s" in done.find_element(By.CLASS_NAME, "state").text  # ratio and seconds

    toggle = done.find_element(By.CSS_SELECTOR, ".actions button")
    toggle.send_keys(Keys.SPACE)
    image = done.find_element(By.CSS_SELECTOR, "figure img")
    wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", image) > 0)
    assert toggle.get_attribute("aria-expanded") == "true"
    if SCREENSHOT:
        _save_screenshot(browser, SHOT_PATH)

    browser.find_element(By.ID, "zip").click()
    archive = zipfile.ZipFile(_downloaded(browser.downloads, "sidraw.zip"))
    assert archive.namelist() == ["night.tif"]
    import tifffile

    image_data = tifffile.imread(io.BytesIO(archive.read("night.tif")))
    assert image_data.dtype == np.uint16 and image_data.ndim == 3


def _save_screenshot(browser: Any, path: Path) -> None:
    """The whole page as a small PNG (a palette of 128 colours keeps it light in the repository)."""
    import base64

    from PIL import Image

    width, height = browser.execute_script(
        "const e = document.documentElement; return [e.scrollWidth, e.scrollHeight];"
    )
    clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
    shot = browser.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
