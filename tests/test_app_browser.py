"""The web app end to end in headless Chromium (Debian's `chromium`, driven by Playwright): upload a short real clip,
mark the swan with a box (two corner clicks), mark a second object with a + and a - click, segment, play the
overlay, download the zip; its PNGs are byte for byte what `segment_video` writes for the same marks through the
same prompt code. The page loads nothing from outside 127.0.0.1."""
from __future__ import annotations

import os
import re
import shutil
import zipfile
from urllib.parse import urlsplit

import numpy as np
import pytest

from longvos.engine.pipeline import segment_video
from longvos.io.video import open_video
from longvos.prompts import ObjectPrompt, prompt_mask

from conftest import APP_MAX_SIZE, optional_import, serving_app

optional_import("gradio", "pip install 'longvos[app]'")
sync_api = optional_import("playwright.sync_api", "pip install playwright (it drives the system's chromium)")
pytestmark = pytest.mark.usefixtures("one_thread_module")

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


def shows(page, selector: str, text: str, timeout: float = 60_000) -> None:
    """Wait until the element's text contains ``text``."""
    page.wait_for_function("([selector, text]) => (document.querySelector(selector)?.innerText || '').includes(text)",
                           arg=[selector, text], timeout=timeout)


def click_frame(page, x: int, y: int) -> None:
    """Click pixel ``(x, y)`` of the first frame as shown (the image keeps its aspect ratio inside its box)."""
    image = page.locator("#first-frame img")
    box = image.bounding_box()
    width, height = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    scale = min(box["width"] / width, box["height"] / height)
    left = box["x"] + (box["width"] - width * scale) / 2
    top = box["y"] + (box["height"] - height * scale) / 2
    page.mouse.click(left + (x + 0.5) * scale, top + (y + 0.5) * scale)


def preview_changes(page, before: str | None) -> None:
    """Wait until the first frame shows a new preview (the marks so far, drawn over their mask), loaded."""
    page.wait_for_function("before => { const img = document.querySelector('#first-frame img');"
                           " return img && img.src !== before && img.complete && img.naturalWidth > 0; }",
                           arg=before, timeout=60_000)


def parse_marks(listing: str) -> tuple[list[ObjectPrompt], list[int]]:
    """The objects the page lists ("1. box 1,2,3,4; clicks +5,6 -7,8"), as prompts and their ids."""
    prompts, ids = [], []
    for number, line in enumerate(listing.strip().splitlines(), 1):
        box = re.search(r"box (\d+),(\d+),(\d+),(\d+)", line)
        clicks = re.findall(r"([+-])(\d+),(\d+)", line.split("clicks", 1)[1]) if "clicks" in line else []
        prompts.append(ObjectPrompt(box=tuple(map(int, box.groups())) if box else None,
                                    points=tuple((int(x), int(y), sign == "+") for sign, x, y in clicks)))
        ids.append(number)
    return prompts, ids


def test_mark_segment_watch_and_download_in_chromium(browser, app_segmenter, app_swan_clip, app_swan_mask,
                                                     tmp_path):
    with serving_app(app_segmenter) as app:
        page = browser.new_page(accept_downloads=True)
        errors: list[str] = []
        outside: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))

        def local_only(route):
            if urlsplit(route.request.url).hostname in ("127.0.0.1", None) or route.request.url.startswith(
                    ("data:", "blob:")):
                return route.continue_()
            outside.append(route.request.url)
            return route.abort()

        page.route("**/*", local_only)
        page.goto(app.url)
        page.set_input_files("#video-input input[type=file]", str(app_swan_clip))
        shows(page, "#upload-status", "6 frames, 320x180")
        shows(page, "#prompt-status", "No object marked yet")
        preview_changes(page, None)

        ys, xs = np.nonzero(app_swan_mask)
        before = page.get_attribute("#first-frame img", "src")
        click_frame(page, xs.min() - 6, ys.min() - 6)
        shows(page, "#prompt-status", "click the opposite corner")
        click_frame(page, xs.max() + 6, ys.max() + 6)
        shows(page, "#prompt-status", "1 object ready")
        preview_changes(page, before)
        command = page.input_value("#segment-command textarea")
        box = tuple(map(int, re.fullmatch(r"longvos segment video.mp4 --box (\S+) --out masks/", command)
                        .group(1).split(",")))
        assert [abs(value - expected) <= 1 for value, expected in
                zip(box, (xs.min() - 6, ys.min() - 6, xs.max() + 7, ys.max() + 7))] == [True] * 4, box

        page.click("#new-object")
        shows(page, "#prompt-status", "marking object 2")
        page.get_by_label("+ click: on the object").check()
        click_frame(page, 40, 150)  # the leaves at the bottom left
        shows(page, "#prompt-status", "2 objects ready")
        before = page.get_attribute("#first-frame img", "src")
        page.get_by_label("− click: not the object").check()
        click_frame(page, 60, 120)
        shows(page, "#objects", "clicks +")
        page.wait_for_function("document.querySelector('#objects').innerText.match(/clicks \\+\\d+,\\d+ -/)",
                               timeout=60_000)
        preview_changes(page, before)
        assert page.is_hidden("#segment-command")  # clicks have no `segment` equivalent
        marks, object_ids = parse_marks(page.inner_text("#objects"))
        assert object_ids == [1, 2] and marks[0].box == box and [p[2] for p in marks[1].points] == [True, False]

        page.click("#run")
        shows(page, "#run-status", "Done: 6 frames", timeout=120_000)
        page.wait_for_function("document.querySelector('#overlay video')?.readyState >= 2", timeout=30_000)
        assert page.evaluate("document.querySelector('#overlay video').videoWidth") == 320  # Chromium decodes it
        with page.expect_download() as download:
            page.click("#download-masks")
        assert download.value.suggested_filename == "longvos-masks.zip"
        with zipfile.ZipFile(download.value.path()) as archive:
            got = {name: archive.read(name) for name in archive.namelist()}
        page.close()
    assert errors == [] and outside == []

    # The same marks through the prompt code and segment_video, outside the app.
    with open_video(app_swan_clip) as video:
        first = prompt_mask(video.read(0).image, marks, object_ids)
    assert set(np.unique(first)) == {0, 1, 2}
    segment_video(app_swan_clip, first, tmp_path / "direct", model=app_segmenter, max_size=APP_MAX_SIZE,
                  progress=False)
    expected = {f"masks/{path.name}": path.read_bytes() for path in sorted((tmp_path / "direct").glob("*.png"))}
    assert sorted(got) == sorted(expected) and len(got) == 6
    assert got == expected  # byte for byte
