"""The web app end to end in headless Chromium (Debian's `chromium`, driven by Playwright): upload a short real
clip, draw a box around the swan, mark a second object with clicks, segment, play the overlay, download the zip;
the masks in it are exactly what `segment_video` gives for the same marks."""
from __future__ import annotations

import io
import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from longvos.engine.pipeline import segment_video
from longvos.io.masks import decode_mask_image
from longvos.prompts import ObjectPrompt, prompt_mask
from longvos.io.video import open_video

from conftest import optional_import
from test_app_api import MAX_SIZE, clip, segmenter, server, swan_mask  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("one_thread_module")

sync_api = optional_import("playwright.sync_api", "pip install playwright (it drives the system's chromium)")

CHROMIUM = os.environ.get("LONGVOS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Playwright's own browser download is not used (nothing may be downloaded in CI): the system's Chromium, offline.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        message = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set LONGVOS_CHROMIUM)"
        if os.environ.get("LONGVOS_REQUIRE_OPTIONAL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def status_says(page, element: str, text: str, timeout: float = 60_000) -> None:
    page.wait_for_function("([id, text]) => document.getElementById(id).textContent.includes(text)",
                           arg=[element, text], timeout=timeout)


def test_mark_segment_watch_and_download_in_chromium(browser, server, segmenter, clip, swan_mask, tmp_path):
    page = browser.new_page(accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url)
    page.set_input_files("#video-input", str(clip))
    status_says(page, "upload-status", "swan: 6 frames, 320x180")
    status_says(page, "prompt-status", "Drag a box")

    canvas = page.locator("#canvas").bounding_box()
    scale = canvas["width"] / 320

    def to_page(x: float, y: float) -> tuple[float, float]:
        return canvas["x"] + x * scale, canvas["y"] + y * scale

    ys, xs = np.nonzero(swan_mask)
    corner, opposite = (xs.min() - 6, ys.min() - 6), (xs.max() + 6, ys.max() + 6)
    page.mouse.move(*to_page(*corner))
    page.mouse.down()
    page.mouse.move(*to_page(*opposite), steps=8)
    page.mouse.up()
    status_says(page, "prompt-status", "1 object ready")
    box = page.get_attribute("#objects li[data-object-id='1']", "data-box")
    assert [abs(int(v) - e) <= 1 for v, e in zip(box.split(","), (*corner, *opposite))] == [True] * 4
    assert page.inner_text("#cli-command") == f"longvos segment swan --box {box} --out masks/"

    page.click("#new-object")
    page.click("[data-tool=positive]")
    page.mouse.click(*to_page(40, 150))  # the leaves at the bottom left
    status_says(page, "prompt-status", "2 objects ready")
    page.click("[data-tool=negative]")
    page.mouse.click(*to_page(60, 120))
    page.wait_for_function("document.querySelector(\"#objects li[data-object-id='2']\").dataset.points"
                           ".includes('0]')")
    status_says(page, "prompt-status", "2 objects ready")
    assert page.is_hidden("#cli-line")  # clicks have no `segment` equivalent
    points = json.loads(page.get_attribute("#objects li[data-object-id='2']", "data-points"))
    assert [p[2] for p in points] == [1, 0]

    page.click("#run")
    page.wait_for_selector("#step-result", state="visible", timeout=120_000)
    assert page.inner_text("#run-status").startswith("Done: 6 frames")
    page.wait_for_function("document.getElementById('overlay').readyState >= 2", timeout=30_000)
    assert page.evaluate("document.getElementById('overlay').videoWidth") == 320  # Chromium decodes the overlay
    with page.expect_download() as download:
        page.click("#download-masks")
    assert download.value.suggested_filename == "swan-masks.zip"
    with zipfile.ZipFile(download.value.path()) as archive:
        got = {name: decode_mask_image(Image.open(io.BytesIO(archive.read(name))), name).ids
               for name in archive.namelist()}
    assert errors == []
    page.close()

    # The same marks through the prompt code and segment_video, outside the app.
    x0, y0, x1, y1 = map(int, box.split(","))
    marks = [ObjectPrompt(box=(x0, y0, x1, y1)),
             ObjectPrompt(points=tuple((int(x), int(y), bool(positive)) for x, y, positive in points))]
    first = prompt_mask(open_video(clip).read(0).image, marks)
    assert set(np.unique(first)) == {0, 1, 2}
    segment_video(clip, first, tmp_path / "direct", model=segmenter, max_size=MAX_SIZE, progress=False)
    expected = {f"swan-masks/{p.name}": decode_mask_image(Image.open(p), p).ids
                for p in sorted((tmp_path / "direct").glob("*.png"))}
    assert sorted(got) == sorted(expected) and len(got) == 6
    assert all(np.array_equal(got[name], expected[name]) for name in expected)
