"""The web app's HTTP API without a browser, on a short real clip (mavos-lite with fixed random weights, 64 px):
a box prompt gives exactly the masks of `segment_video(boxes=...)` (the code behind `segment --box`), an uploaded
mask exactly those of `segment_video(mask)` with its palette kept; downloads, byte ranges, clear errors; and the
`longvos app` command serves the page and stops cleanly."""
from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longvos.app import AppServer
from longvos.engine.pipeline import segment_video
from longvos.engine.segmenter import load_model
from longvos.io.masks import decode_mask_image, read_index_mask, write_index_png
from longvos.io.palette import DAVIS_PALETTE
from longvos.io.video import open_video

from conftest import call, run_to_the_end, seeded_checkpoint, write_mp4

MAX_SIZE = 64
SIZE = (320, 180)  # width, height of the test clip


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def clip(dev_dir, tmp_path_factory) -> Path:
    """Six blackswan frames at 320x180 as an H.264 mp4."""
    frames = [np.asarray(Image.open(p).convert("RGB").resize(SIZE))
              for p in sorted((dev_dir / "JPEGImages" / "blackswan").glob("*.jpg"))[:6]]
    return write_mp4(frames, tmp_path_factory.mktemp("clip") / "swan.mp4")


@pytest.fixture(scope="module")
def swan_mask(dev_dir) -> np.ndarray:
    ids = read_index_mask(dev_dir / "Annotations" / "blackswan" / "00000.png").ids
    return np.asarray(Image.fromarray(ids).resize(SIZE, Image.NEAREST))


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    return load_model("mavos-lite", seeded_checkpoint(tmp_path_factory), "cpu")


@pytest.fixture(scope="module")
def server(segmenter, tmp_path_factory):
    app = AppServer(segmenter, port=0, max_size=MAX_SIZE, workdir=tmp_path_factory.mktemp("app"))
    app.start_background()
    yield app
    app.close()


def upload(server: AppServer, path: Path, name: str | None = None) -> dict:
    status, _, body = call(server, "POST", "/api/jobs", path.read_bytes(), {"X-Filename": name or path.name})
    assert status == 200, body
    return json.loads(body)


def error_of(response: tuple[int, dict[str, str], bytes]) -> tuple[int, str]:
    return response[0], json.loads(response[2])["error"]


def zipped_masks(server: AppServer, job_id: str) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    status, headers, body = call(server, "GET", f"/api/jobs/{job_id}/masks.zip")
    assert status == 200 and headers["Content-Disposition"] == 'attachment; filename="swan-masks.zip"'
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        masks = {}
        for name in archive.namelist():
            image = Image.open(io.BytesIO(archive.read(name)))
            mask = decode_mask_image(image, name)
            masks[name] = (mask.ids, mask.palette)
    return masks


def expected_masks(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    masks = {}
    for path in sorted(folder.glob("[0-9]*.png")):
        mask = read_index_mask(path, allow_empty=True)
        masks[f"swan-masks/{path.name}"] = (mask.ids, mask.palette)
    return masks


def assert_same_masks(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected) and len(got) == 6
    for name in expected:
        assert np.array_equal(got[name][0], expected[name][0]), name
        assert np.array_equal(got[name][1], expected[name][1]), name


def test_box_prompt_gives_the_masks_of_segment_box(server, segmenter, clip, swan_mask, tmp_path):
    job = upload(server, clip)
    assert (job["frames"], job["width"], job["height"], job["state"], job["name"]) == (6, 320, 180, "ready", "swan")
    status, headers, frame = call(server, "GET", f"/api/jobs/{job['id']}/frame.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and Image.open(io.BytesIO(frame)).size == SIZE
    assert error_of(call(server, "POST", f"/api/jobs/{job['id']}/run")) == (
        400, "mark at least one object on the first frame (a box, clicks or a mask file)")
    assert call(server, "GET", f"/api/jobs/{job['id']}/masks.zip")[0] == 409

    ys, xs = np.nonzero(swan_mask)
    box = [int(xs.min()) - 6, int(ys.min()) - 6, int(xs.max()) + 6, int(ys.max()) + 6]
    status, _, body = call(server, "POST", f"/api/jobs/{job['id']}/prompt", json.dumps({"objects": [{"box": box}]})
                           .encode(), {"Content-Type": "application/json"})
    assert status == 200 and json.loads(body)["objects"] == [1]
    preview = Image.open(io.BytesIO(call(server, "GET", f"/api/jobs/{job['id']}/prompt.png")[2]))
    assert preview.size == SIZE

    finished = run_to_the_end(server, job["id"])
    assert finished["state"] == "done" and finished["done"] == 6, finished
    segment_video(clip, None, tmp_path / "cli", model=segmenter, max_size=MAX_SIZE, boxes=[tuple(box)],
                  progress=False)
    assert_same_masks(zipped_masks(server, job["id"]), expected_masks(tmp_path / "cli"))

    status, headers, overlay = call(server, "GET", f"/api/jobs/{job['id']}/overlay.mp4")
    assert status == 200 and headers["Content-Type"] == "video/mp4" and headers["Accept-Ranges"] == "bytes"
    (tmp_path / "overlay.mp4").write_bytes(overlay)
    video = open_video(tmp_path / "overlay.mp4")
    assert len(video) == 6 and video.frame_size == (180, 320)
    status, headers, part = call(server, "GET", f"/api/jobs/{job['id']}/overlay.mp4", headers={"Range": "bytes=10-19"})
    assert status == 206 and part == overlay[10:20] and headers["Content-Range"] == f"bytes 10-19/{len(overlay)}"
    status, _, tail = call(server, "GET", f"/api/jobs/{job['id']}/overlay.mp4", headers={"Range": "bytes=-7"})
    assert status == 206 and tail == overlay[-7:]


def test_uploaded_mask_keeps_its_palette_and_gives_the_masks_of_segment_video(server, segmenter, clip, swan_mask,
                                                                            tmp_path):
    job = upload(server, clip)
    palette = DAVIS_PALETTE.copy()
    palette[1] = (250, 200, 0)
    write_index_png(tmp_path / "first.png", swan_mask, palette)
    write_index_png(tmp_path / "small.png", swan_mask[::2, ::2], palette)
    small = call(server, "POST", f"/api/jobs/{job['id']}/mask", (tmp_path / "small.png").read_bytes(),
                 {"X-Filename": "small.png"})
    assert error_of(small) == (400, "small.png: mask is 160x90 but the video (swan) is 320x180")
    status, _, body = call(server, "POST", f"/api/jobs/{job['id']}/mask", (tmp_path / "first.png").read_bytes())
    assert status == 200 and json.loads(body)["objects"] == [1]

    assert run_to_the_end(server, job["id"])["state"] == "done"
    segment_video(clip, tmp_path / "first.png", tmp_path / "direct", model=segmenter, max_size=MAX_SIZE,
                  progress=False)
    got = zipped_masks(server, job["id"])
    assert_same_masks(got, expected_masks(tmp_path / "direct"))
    assert tuple(got["swan-masks/00003.png"][1][1]) == (250, 200, 0)


def test_bad_requests_get_clear_errors(server, clip, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    assert error_of(call(server, "POST", "/api/jobs", b"hello", {"X-Filename": "notes.txt"}))[1].startswith(
        "notes.txt: not a video file; upload one of .avi, .m4v, .mkv, .mov, .mp4, .webm")
    status, message = error_of(call(server, "POST", "/api/jobs", b"not a video", {"X-Filename": "broken.mp4"}))
    assert status == 400 and "cannot open video" in message
    assert error_of(call(server, "GET", "/api/jobs/0123456789abcdef"))[0] == 404
    assert error_of(call(server, "GET", "/etc/passwd"))[0] == 404
    assert error_of(call(server, "GET", "/static/../server.py"))[0] == 404

    job = upload(server, clip, "my clip.mp4")
    assert job["name"] == "my clip"
    prompt = f"/api/jobs/{job['id']}/prompt"
    assert error_of(call(server, "POST", prompt, b"{not json"))[1].startswith("the request is not JSON")
    assert error_of(call(server, "POST", prompt, json.dumps({"objects": [{"box": [400, 10, 500, 90]}]}).encode())) \
        == (400, "box (400, 10, 500, 90) for object 1: smaller than 4 px inside the 320x180 frame")
    assert error_of(call(server, "POST", prompt, json.dumps({"objects": [{"points": [[5, 5, 0]]}]}).encode())) \
        == (400, "object 1: an object needs a box or at least one click on it")
    assert error_of(call(server, "GET", f"/api/jobs/{job['id']}/latest.jpg")) == (404, "no frame segmented yet")


def test_the_app_command_serves_the_page_and_stops_on_sigterm(tmp_path_factory):
    command = [sys.executable, "-m", "longvos", "app", "--port", "0", "--model", "mavos-lite", "--checkpoint",
               str(seeded_checkpoint(tmp_path_factory)), "--device", "cpu", "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("longvos app: serving http://127.0.0.1:"), (line, process.stderr.read())
        url = line.split()[3]
        with urllib.request.urlopen(url, timeout=30) as response:
            page = response.read().decode()
        assert "<canvas" in page and 'id="video-input"' in page
        with urllib.request.urlopen(url + "static/app.js", timeout=30) as response:
            assert response.headers["Content-Type"].startswith("text/javascript")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert "stopped" in process.stderr.read()
    finally:
        process.kill()
        process.wait()
