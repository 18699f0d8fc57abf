"""The web app's security and robustness guarantees, over HTTP on 127.0.0.1 only, on small synthetic clips (no shared
data; the bundled mavos-lite at 48 px): no uploaded name reaches a header, a file name or a zip entry, and no request
text reaches a response header; uploads and other request bodies are bounded (the headers of an upload's parts too),
must state their size and are cut off when they stall, trickle past their deadline or overrun it; uploads and
requests in flight are bounded; only the routes the page uses are served; the work folder has a disk quota (the zip
included; an upload deletes no other session's video; nothing is deleted for room that cannot be made; the job list
is read under its lock), and a path a client names is never taken for an upload; the app writes nothing the zip does
not hold; a click runs GrabCut for the object it edits only; sessions that upload the same file do not break each other;
segmentations run one at a time behind a bounded queue, each within a time limit; images and videos are measured
before they are decoded or indexed; errors are one line naming no server path; stopping the app cancels the running
job, waits for it and deletes the work folder (also when the job does not stop), and nothing is written outside it,
by a second app in the process either; importing the app changes no environment; no telemetry and no network; a
non-loopback host needs an explicit flag, and requests for other host names or from other sites are refused."""
from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import ImageFile

from longvos.app.workspace import TooLarge, Workspace, disk_usage, format_size, public_message
from longvos.io.errors import InputError

from conftest import app_client, app_file, optional_import, serving_app, start_app

optional_import("gradio", "pip install 'longvos[app]'")
pytestmark = pytest.mark.usefixtures("one_thread_module")

SIZE = (64, 48)  # width, height of the test clips
MAX_SIZE = 48


def write_clip(path: Path, frames: int) -> Path:
    """A square moving over a gradient, H.264."""
    width, height = SIZE
    xs, ys = np.meshgrid(np.linspace(40, 200, width), np.linspace(60, 180, height))
    background = np.stack([xs, ys, np.full((height, width), 90.0)], axis=-1).astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            image = background.copy()
            x = 8 + index % 30
            image[14:34, x:x + 20] = (230, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def header_only_png(width: int, height: int, pixels: bool = False) -> bytes:
    """A 1-bit grey PNG of ``width`` x ``height``: with ``pixels``, all its (zero) rows, which compress to almost
    nothing (10000x10000 is 12 KB); without, the header alone."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(bytes((width + 7) // 8 + 1) * height, 9) if pixels else zlib.compress(b"\0")
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", 6)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clips") / "long.mp4", 240)


@pytest.fixture(scope="module")
def segmenter():
    from longvos.engine.segmenter import load_segmenter

    return load_segmenter("mavos-lite", device="cpu")  # its bundled weights


def serving(segmenter, **settings):
    return serving_app(segmenter, MAX_SIZE, **settings)


def marked_session(app, clip: Path):
    """A client session with ``clip`` uploaded and a box marked."""
    from gradio_client import handle_file

    client = app_client(app)
    client.predict(handle_file(str(clip)), api_name="/upload_video")
    client.predict("8,12,40,36", api_name="/set_box")
    return client


def app_error(call) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as error:
        call()
    return str(error.value)


@contextmanager
def slow_frames(monkeypatch, seconds: float):
    """Every segmented frame takes at least ``seconds`` (whatever the machine), through the app's real path; yields
    the frames done so far and the most runs seen at once."""
    import longvos.app.runner as runner

    real_segment_video = runner.segment_video
    seen = {"frames": 0, "running": 0, "most": 0}
    lock = threading.Lock()

    def slow_segment_video(*args, on_frame, **kwargs):
        def slower(frame, result):
            with lock:
                seen["frames"] += 1
            time.sleep(seconds)
            on_frame(frame, result)

        with lock:
            seen["running"] += 1
            seen["most"] = max(seen["most"], seen["running"])
        try:
            return real_segment_video(*args, on_frame=slower, **kwargs)
        finally:
            with lock:
                seen["running"] -= 1

    monkeypatch.setattr(runner, "segment_video", slow_segment_video)
    yield seen


def app_port(app) -> int:
    return int(app.url.rstrip("/").rsplit(":", 1)[1])


def send_only(app, request: bytes, timeout: float = 60, source: str | None = None) -> socket.socket:
    """A connection that has sent ``request`` (perhaps a body cut short), its answer not read yet; ``source``: the
    client address to send from (another loopback address is another client)."""
    connection = socket.create_connection(("127.0.0.1", app_port(app)), timeout=timeout,
                                          source_address=None if source is None else (source, 0))
    connection.sendall(request)
    return connection


def read_answer(connection: socket.socket) -> tuple[list[str], bytes]:
    """Read until the server closes: the response's header lines and its body."""
    with connection:
        data = b""
        while chunk := connection.recv(1 << 16):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1").split("\r\n"), body


def raw_exchange(app, request: bytes, timeout: float = 30, source: str | None = None) -> tuple[list[str], bytes]:
    """Send ``request`` as it is and read until the server closes: the response's header lines and its body."""
    return read_answer(send_only(app, request, timeout, source))


def header_fields(lines: list[str]) -> dict[str, str]:
    return {key.lower(): value for key, value in (line.split(": ", 1) for line in lines[1:])}


def get(app, path: str, *headers: str) -> tuple[list[str], bytes]:
    extra = "".join(f"{header}\r\n" for header in headers)
    return raw_exchange(app, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n"
                        .encode())


def post(app, path: str, body: bytes, *headers: str, length: int | None = None) -> bytes:
    """A raw POST (``length``: the Content-Length it states; None: the body's)."""
    extra = "".join(f"{header}\r\n" for header in headers)
    stated = len(body) if length is None else length
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Content-Length: {stated}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


def guard_of(app):
    from longvos.app.guard import RequestGuard

    guard = app.blocks.server_app.middleware_stack
    assert isinstance(guard, RequestGuard)
    return guard


def wait_for(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def upload_request(length: int | None, host: str = "127.0.0.1", origin: str | None = None, name: str = "v.mp4",
                   size: int = 100) -> bytes:
    """A raw multipart upload to Gradio's upload route; ``length=None``: chunked, without a Content-Length."""
    body = (f'--b\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: video/mp4\r\n\r\n").encode() + bytes(size) + b"\r\n--b--\r\n"
    head = f"POST /gradio_api/upload HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    head += f"Origin: {origin}\r\n" if origin else ""
    if length is None:
        body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        head += "Transfer-Encoding: chunked\r\n"
    else:
        head += f"Content-Length: {length if length >= 0 else len(body)}\r\n"
    return (head + "Connection: close\r\n\r\n").encode() + body


def work_files(app) -> list[str]:
    return sorted(str(path.relative_to(app.workspace.root)) for path in app.workspace.root.rglob("*"))


@pytest.fixture(scope="module")
def app(segmenter):
    """One app with the default settings, for the tests that change nothing in it."""
    with serving(segmenter) as running:
        yield running


def upload_into(workspace: Workspace, clip: Path, name: str = "clip.mp4", digest: str = "ab" * 32) -> Path:
    """``clip`` as Gradio would have received it: ``root/<sha256>/<name>``."""
    path = workspace.root / digest / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(clip.read_bytes())
    return path


# -- nothing a client sends names a file, a header or a zip entry -------------------------------------------------

@pytest.mark.parametrize("name", ["a\r\nSet-Cookie: pwn=1.mp4", "Видео.mp4", 'a"b\\c <b>.mp4'])
def test_file_names_download_names_and_zip_entries_are_ours_never_the_uploaded_name(segmenter, clip, tmp_path,
                                                                                    name):
    from gradio_client import handle_file

    upload = tmp_path / name
    upload.write_bytes(clip.read_bytes())
    with serving(segmenter) as app:
        client = app_client(app)
        uploaded = client.predict(handle_file(str(upload)), api_name="/upload_video")
        stem = Path(name).stem
        assert stem not in json.dumps(uploaded, ensure_ascii=False) and uploaded[1].startswith("6 frames")
        assert not any(part in path for path in work_files(app) for part in (stem, "Set-Cookie", "Видео", '"'))
        client.predict("8,12,40,36", api_name="/set_box")
        done = client.predict(api_name="/segment")
        assert not any(stem in path for path in work_files(app))
        for output, download in ((done[1], "overlay.mp4"), (done[2]["value"], "longvos-masks.zip")):
            request = output["url"].split("/", 3)[3]
            lines, body = raw_exchange(app, f"GET /{request} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                            f"Connection: close\r\n\r\n".encode())
            assert lines[0] == "HTTP/1.1 200 OK" and sum(line.startswith("HTTP/") for line in lines) == 1, lines
            assert all(line.isascii() and stem not in line for line in lines)
            headers = header_fields(lines)
            assert "set-cookie" not in headers and len(body) == int(headers["content-length"])
            assert headers["content-disposition"].endswith(f'; filename="{download}"'), headers
            assert output["orig_name"] == download
        with zipfile.ZipFile(io.BytesIO(app_file(done[2]))) as archive:
            assert archive.namelist() == [f"masks/{index:05d}.png" for index in range(6)]


# -- bounded resources --------------------------------------------------------------------------------------------

def test_uploads_are_bounded_and_must_state_their_size(segmenter, tmp_path):
    with serving(segmenter, workdir=tmp_path, max_upload_bytes=10_000) as app:
        lines, body = raw_exchange(app, upload_request(-1, size=20_000))
        assert lines[0].startswith("HTTP/1.1 413") and body == b"the file is over the upload limit of 10 KiB\n"
        lines, body = raw_exchange(app, upload_request(None))
        assert lines[0].startswith("HTTP/1.1 411") and b"Content-Length" in body
        assert work_files(app) == ["jobs"]
        lines, _ = raw_exchange(app, upload_request(-1, size=100))  # within the limit: Gradio stores it
        assert lines[0] == "HTTP/1.1 200 OK"


def test_the_work_folder_has_a_disk_quota_and_an_upload_never_deletes_another_video(segmenter, long_clip, tmp_path,
                                                                                    monkeypatch):
    import longvos.app.runner as runner
    from longvos.app.guard import WORK_FOLDER_FULL

    # The quota counts the blocks files take: 25 frames of masks (a 4 KiB block each) outgrow these tiny videos,
    # so the run checks every frame here, and deleting an idle video is enough room for the next frames.
    monkeypatch.setattr(runner, "QUOTA_CHECK_EVERY", 1)

    with serving(segmenter, workdir=tmp_path) as app:
        first = marked_session(app, long_clip)
        [folder] = app.workspace.jobs_dir.iterdir()
        per_video = disk_usage(folder)  # the video, its first frame, first-frame mask and preview
        # Room for one more video, not two (the work folder holds more than the jobs: Matplotlib's cache, ...).
        app.workspace.quota_bytes = quota = disk_usage(app.workspace.root) + int(1.5 * per_video)
        # Refused from the stated size (the body is not sent: a server closing on an unread body resets it).
        lines, body = raw_exchange(app, post(app, "/gradio_api/upload", b"", UPLOAD_TYPE, length=quota + 1))
        assert lines[0].startswith("HTTP/1.1 413") and body == (
            f"the file is over the work folder's quota of {format_size(quota)}\n".encode())
        second = marked_session(app, long_clip)
        jobs = sorted(app.workspace.jobs_dir.iterdir())
        # A third video does not fit beside them: refused with a fixed message, and the idle videos of the other
        # sessions stay (the bytes it claims may never arrive).
        lines, body = raw_exchange(app, post(app, "/gradio_api/upload", b"", UPLOAD_TYPE, length=per_video))
        assert lines[0].startswith("HTTP/1.1 507") and body == f"{WORK_FOLDER_FULL}\n".encode(), (lines, body)
        assert sorted(app.workspace.jobs_dir.iterdir()) == jobs and len(jobs) == 2
        assert first.predict("8,12,40,36", api_name="/set_box")[1] == "1 object ready; marking object 1."
        assert disk_usage(app.workspace.root) <= quota and app.workspace._reserved == 0
        # Outputs count too: a run that would take the folder over its quota (others idle: deleted first) stops.
        message = app_error(lambda: second.predict(api_name="/segment"))
        assert re.match(r"stopped after \d+ of 240 frames: the outputs: the work folder is full", message), message
        assert len(list(app.workspace.jobs_dir.iterdir())) == 1
        assert app_error(lambda: first.predict(api_name="/segment")) == (  # the idle one made room for the run
            "this video is no longer on the server (deleted to make room); upload it again")


def test_an_edit_runs_grabcut_for_the_edited_object_only(clip, tmp_path, monkeypatch):
    """Each object's GrabCut result is kept by its marks: a click recomputes the object it edits, no other one, and
    the first-frame mask is still exactly what the shared prompt code makes of all the marks."""
    import longvos.app.ui as ui
    from longvos.app.marks import POSITIVE, Marks
    from longvos.io.masks import read_index_mask
    from longvos.prompts import prompt_mask

    workspace = Workspace(tmp_path)
    job = workspace.create_job(upload_into(workspace, clip))
    page = ui.AppPage(workspace, runner=None)
    computed = []
    real_object_foreground = ui.object_foreground

    def counted(image, prompt, object_id, *args, **kwargs):
        computed.append(object_id)
        return real_object_foreground(image, prompt, object_id, *args, **kwargs)

    monkeypatch.setattr(ui, "object_foreground", counted)

    def edited(marks, step, *args) -> Marks:
        computed.clear()
        return step(job.id, marks, *args)[0]

    marks = edited(Marks(), page.type_box, "8,12,40,36")
    assert computed == [1]
    marks = edited(marks, lambda job_id, marks: page.edit(Marks.new_object, job_id, marks))
    assert computed == []  # object 1 is unchanged
    marks = edited(marks, page.type_box, "2,2,20,20")
    assert computed == [2]
    for x, y in [(10, 10), (12, 8)]:
        marks = edited(marks, page.click, POSITIVE, type("Select", (), {"index": (x, y)})())
        assert computed == [2]  # the object being marked, not object 1
    marks = edited(marks, lambda job_id, marks: page.edit(Marks.undo, job_id, marks))
    assert computed == []  # marks seen before
    prompts, object_ids = marks.prompts()
    expected = prompt_mask(np.asarray(ui.Image.open(job.first_frame_path).convert("RGB")), prompts, object_ids)
    assert np.array_equal(read_index_mask(job.prompt_path).ids, expected)
    # Another job with the same marks has its own results.
    other = workspace.create_job(upload_into(workspace, clip, digest="cd" * 32))
    computed.clear()
    page.type_box(other.id, Marks(), "8,12,40,36")
    assert computed == [1]


def test_the_cache_of_grabcut_results_is_bounded():
    from longvos.app.ui import ForegroundCache

    cache = ForegroundCache(max_bytes=3 * 600)  # 3 results of 80x60 (600 bytes each, one bit a pixel)
    masks = {key: np.random.default_rng(key).random((60, 80)) > 0.5 for key in range(5)}
    for key in range(3):
        cache.put(key, masks[key])
    assert np.array_equal(cache.get(0, (60, 80)), masks[0])  # now the most recently used
    cache.put(3, masks[3])
    assert cache.get(1, (60, 80)) is None and len(cache) == 3 and cache.size == 1800  # the least recently used went
    assert all(np.array_equal(cache.get(key, (60, 80)), masks[key]) for key in (0, 2, 3))
    cache.put(9, np.ones((100, 200), bool))  # larger than the whole cache: not kept, nothing dropped for it
    assert cache.get(9, (100, 200)) is None and len(cache) == 3


def test_segmentations_run_one_at_a_time_and_the_queue_is_bounded(segmenter, clip, monkeypatch):
    with serving(segmenter, max_queue=1) as app, slow_frames(monkeypatch, 0.1) as seen:
        sessions = [marked_session(app, clip) for _ in range(3)]
        runs = [session.submit(api_name="/segment") for session in sessions]
        outcomes = []
        for run in runs:
            try:
                outcomes.append(run.result(timeout=120)[0][:5])
            except Exception as error:  # noqa: BLE001 - the refused one
                outcomes.append(str(error))
    assert sorted(outcomes)[:2] == ["Done:", "Done:"] and "Queue is full" in sorted(outcomes)[2], outcomes
    assert seen["most"] == 1


def test_a_run_over_the_time_limit_is_stopped(segmenter, long_clip, monkeypatch):
    with serving(segmenter, max_minutes=0.01) as app, slow_frames(monkeypatch, 0.05) as seen:
        client = marked_session(app, long_clip)
        message = app_error(lambda: client.predict(api_name="/segment"))
    assert re.fullmatch(r"stopped after \d+ of 240 frames: the run reached the app's time limit of 0\.01 min "
                        r"\(longvos app --max-minutes\)", message), message
    assert seen["frames"] < 240


def test_images_are_measured_before_they_are_decoded(segmenter, clip, tmp_path, monkeypatch):
    from gradio_client import handle_file

    decoded = []
    load = ImageFile.ImageFile.load

    def watched_load(image):
        if image.size[0] * image.size[1] > 10**6:
            decoded.append(image.size)
            raise AssertionError(f"decoded a {image.size} image")
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", watched_load)
    (tmp_path / "big.png").write_bytes(header_only_png(10000, 10000, pixels=True))
    (tmp_path / "bomb.png").write_bytes(header_only_png(20000, 20000))
    with serving(segmenter) as app:
        client = marked_session(app, clip)
        assert app_error(lambda: client.predict(handle_file(str(tmp_path / "big.png")), api_name="/upload_mask")) == (
            "the mask is 10000x10000 but the video is 64x48")
        assert app_error(lambda: client.predict(handle_file(str(tmp_path / "bomb.png")), api_name="/upload_mask")) \
            == "the mask is 20000x20000 but the video is 64x48"
        assert decoded == []

        monkeypatch.setattr(app.workspace, "max_video_pixels", 1000)  # the clip's 64x48 frames are over it
        jobs = list(app.workspace.jobs_dir.iterdir())
        assert app_error(lambda: client.predict(handle_file(str(clip)), api_name="/upload_video")) == (
            "frames of 64x48 are over the limit of 0.001 megapixels")
        assert list(app.workspace.jobs_dir.iterdir()) == []  # the refused upload, and the session's earlier video
        assert len(jobs) == 1


# -- errors: one line, no server path -----------------------------------------------------------------------------

def test_errors_are_one_line_and_name_no_server_path(segmenter, clip, monkeypatch, capsys):
    import longvos.app.ui as ui

    with serving(segmenter) as app:
        root = app.workspace.root
        message = public_message(OSError(f"{root}/jobs/0123456789abcdef/masks/00001.png: disk full\n"
                                         f"while writing /home/someone/secret/thing.txt"), app.workspace)
        assert message == "masks/00001.png: disk full; while writing thing.txt"
        assert len(public_message("x" * 5000)) == 500

        def broken_grabcut(*_args, **_kwargs):
            raise ZeroDivisionError(f"{root}/somewhere")

        monkeypatch.setattr(ui, "object_foreground", broken_grabcut)
        client = app_client(app)
        from gradio_client import handle_file

        client.predict(handle_file(str(clip)), api_name="/upload_video")
        assert app_error(lambda: client.predict("8,12,40,36", api_name="/set_box")) == (
            "internal error (ZeroDivisionError); the server's log has the details")
        assert "Traceback" in capsys.readouterr().err  # the details are in the server's log


# -- stopping: the job is cancelled and waited for, the work folder goes, nothing is written elsewhere -----------

def test_closing_mid_job_cancels_it_waits_for_it_and_removes_the_work_folder(segmenter, long_clip, monkeypatch):
    with slow_frames(monkeypatch, 0.05) as seen:
        with serving(segmenter) as app:
            client = marked_session(app, long_clip)
            client.submit(api_name="/segment")
            deadline = time.monotonic() + 60
            while seen["frames"] < 2:
                assert time.monotonic() < deadline, "the job did not start"
                time.sleep(0.05)
            started = time.monotonic()
        seconds = time.monotonic() - started
    # The rest of the job takes at least 238 x 0.05 = 11.9 s; a close takes about 0.2 s, but Gradio's own shutdown
    # once took 5.0 s during a full test run on the shared 2-core machine.
    assert seconds < 10, f"close took {seconds:.1f} s"
    assert seen["running"] == 0 and not app.workspace.root.exists() and seen["frames"] < 240


def test_closing_removes_the_work_folder_even_when_the_job_does_not_stop(segmenter, clip, capsys):
    with serving(segmenter) as app:
        marked_session(app, clip)
        app.runner.stop = lambda timeout: False  # a job stuck in a frame
    assert not app.workspace.root.exists()
    assert "did not stop within" in capsys.readouterr().err


def job_pngs(temp: Path) -> int:
    return len(list(temp.glob("longvos-app-*/jobs/*/masks/*.png")))


def test_sigterm_mid_job_exits_promptly_and_nothing_is_written_outside_the_work_folder(long_clip, tmp_path):
    temp = tmp_path / "tmp"
    process, line = start_app(["-m", "longvos"], temp)
    try:
        client = marked_session(line.split()[3], long_clip)
        client.submit(api_name="/segment")
        deadline = time.monotonic() + 60
        while job_pngs(temp) < 2:
            assert time.monotonic() < deadline and process.poll() is None, "the job did not start"
            time.sleep(0.05)
        assert [path.name.startswith("longvos-app-") for path in temp.iterdir()] == [True]  # the work folder only
        assert list((tmp_path / "home").iterdir()) == [] and list((tmp_path / "cwd").iterdir()) == []
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0  # most frames were left: the job was cancelled, not waited for
        errors = process.stderr.read()
        assert "stopped" in errors and "Traceback" not in errors, errors
        assert [list(folder.iterdir()) for folder in (temp, tmp_path / "home", tmp_path / "cwd")] == [[], [], []]
    finally:
        process.kill()
        process.wait()


HANGING_CLOSE = """
import signal, sys, time
from longvos.app.server import LongvosApp
from longvos.cli.main import main

def hanging_close(self, timeout=None):  # a job that does not stop: the clean-up waits (for good, here)
    print("closing", flush=True)
    time.sleep(300)

LongvosApp.close = hanging_close
signal.signal(signal.SIGINT, signal.default_int_handler)  # even where the test runner ignores SIGINT
sys.exit(main(sys.argv[1:]))
"""


def test_a_second_ctrl_c_during_a_hung_shutdown_exits_at_once_and_removes_the_work_folder(tmp_path):
    temp = tmp_path / "tmp"
    process, _ = start_app(["-c", HANGING_CLOSE], temp)
    try:
        assert len(list(temp.iterdir())) == 1  # the work folder
        process.send_signal(signal.SIGINT)  # the first: the graceful stop begins, and hangs
        assert process.stdout.readline() == "closing\n"
        process.send_signal(signal.SIGINT)  # the second: out now
        assert process.wait(timeout=10) == 128 + signal.SIGINT
        errors = process.stderr.read()
        assert "stopping now" in errors and "Traceback" not in errors, errors
        assert list(temp.iterdir()) == []
    finally:
        process.kill()
        process.wait()


# -- no telemetry, no network -------------------------------------------------------------------------------------

EXTERNAL_RESOURCE = re.compile(r"""(?:\b(?:src|href)\s*=\s*["']?|url\(\s*["']?|@import\s+["'])(?:https?:)?//""")


def test_no_telemetry_and_nothing_loaded_from_the_network(segmenter, clip, monkeypatch):
    """Every outbound connection and name lookup of the process is refused while a whole session runs; the page
    and its styles load nothing from another host (Gradio's default theme loads Google fonts)."""
    attempts = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def local_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            attempts.append(address)
            raise OSError("the network is off in this test")
        return connect(sock, address)

    def local_getaddrinfo(host, *args, **kwargs):
        if host not in (None, "127.0.0.1", "::1", "localhost"):
            attempts.append(host)
            raise socket.gaierror("the network is off in this test")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", local_connect)
    monkeypatch.setattr(socket, "getaddrinfo", local_getaddrinfo)
    with serving(segmenter) as app:
        assert app.blocks.analytics_enabled is False and os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
        assert marked_session(app, clip).predict(api_name="/segment")[0].startswith("Done: 6 frames")
        with urllib.request.urlopen(app.url, timeout=30) as response:
            page = response.read().decode()
        styles = [urllib.request.urlopen(app.url + path.lstrip("./"), timeout=30).read().decode()
                  for path in re.findall(r'href="([^"]+\.css)"', page)]
        styles.append(urllib.request.urlopen(app.url + "theme.css", timeout=30).read().decode())
    assert attempts == []
    for text in (page, *styles):
        assert EXTERNAL_RESOURCE.findall(text) == []
    assert "fonts.googleapis" not in "".join(styles)


OFFLINE_SESSION = """
import sys
sys.path.insert(0, sys.argv[1])
from conftest import app_client, serving_app
from gradio_client import handle_file
from longvos.engine.segmenter import load_segmenter

with serving_app(load_segmenter("mavos-lite", device="cpu"), 48) as app:
    client = app_client(app)
    client.predict(handle_file(sys.argv[2]), api_name="/upload_video")
    client.predict("8,12,40,36", api_name="/set_box")
    print(client.predict(api_name="/segment")[0])
"""


def test_the_app_works_with_the_network_unavailable(clip, tmp_path):
    """A whole session in a network namespace of its own (loopback only), where one can be made (root, Linux)."""
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a network namespace here (unshare --net needs root on Linux)")
    script = (f"ip link set lo up 2>/dev/null; exec {sys.executable} -c '{OFFLINE_SESSION}' "
              f"{Path(__file__).parent} {clip}")
    done = subprocess.run(["unshare", "--net", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)})
    assert done.returncode == 0 and done.stdout.startswith("Done: 6 frames"), done.stderr[-3000:]


# -- loopback unless explicitly allowed, only requests for it, no changes from other sites ------------------------

def test_a_non_loopback_host_needs_an_explicit_flag(segmenter, monkeypatch, capsys):
    from longvos.app.guard import RemoteNotAllowed
    from longvos.app.server import LongvosApp
    from longvos.cli.main import main
    from longvos.engine.options import SegmentOptions

    def no_model(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the host was checked")

    monkeypatch.setattr("longvos.engine.segmenter.load_segmenter", no_model)
    assert main(["app", "--host", "0.0.0.0", "--port", "0"]) == 1
    assert "--allow-remote" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["app", "--help"])
    assert done.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--allow-remote" in help_text and "anyone who can reach the port" in help_text.lower()
    with pytest.raises(RemoteNotAllowed, match="allow_remote"):
        LongvosApp(SegmentOptions(model=segmenter), host="0.0.0.0", port=0)  # refused before binding anything
    assert main(["app", "--public-name", "gpu-box.lan", "--port", "0"]) == 1
    assert "--public-name needs --allow-remote" in capsys.readouterr().err


def test_requests_for_another_host_name_or_from_another_site_are_refused(segmenter):
    with serving(segmenter) as app:
        port = int(app.url.rstrip("/").rsplit(":", 1)[1])
        for host in ("evil.example", f"evil.example:{port}", "192.168.1.5"):  # a DNS-rebinding page
            lines, body = raw_exchange(app, f"GET /config HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                                       .encode())
            assert lines[0].startswith("HTTP/1.1 403") and body.count(b"\n") == 1, (host, lines)
        for host in ("localhost", f"127.0.0.1:{port}", f"[::1]:{port}"):
            lines, _ = raw_exchange(app, f"GET /config HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                                    .encode())
            assert lines[0] == "HTTP/1.1 200 OK", (host, lines)
        before = work_files(app)
        lines, _ = raw_exchange(app, upload_request(-1, origin="http://evil.example"))  # cross-site request forgery
        assert lines[0].startswith("HTTP/1.1 403") and work_files(app) == before
        lines, _ = raw_exchange(app, upload_request(-1, host=f"127.0.0.1:{port}", origin=f"http://127.0.0.1:{port}"))
        assert lines[0] == "HTTP/1.1 200 OK"


# -- request bodies: a stated, bounded size; cut off when they stall or overrun it; bounded at once ----------------

def multipart(*parts: tuple[str, str | None, bytes]) -> bytes:
    """A multipart body (boundary ``b``) of ``(field name, file name or None, data)`` parts."""
    body = b""
    for field, filename, data in parts:
        disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--b\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return body + b"--b--\r\n"


UPLOAD_TYPE = "Content-Type: multipart/form-data; boundary=b"


def test_request_bodies_must_state_a_bounded_size(app):
    join = "Content-Type: application/json"
    lines, body = raw_exchange(app, b"POST /gradio_api/queue/join HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                    b"Content-Type: application/json\r\nConnection: close\r\n\r\n")
    assert lines[0].startswith("HTTP/1.1 411") and body == b"a request must state its size (Content-Length)\n"
    lines, body = raw_exchange(app, post(app, "/gradio_api/queue/join", b"", join, length=2 << 20))  # not sent
    assert lines[0].startswith("HTTP/1.1 413") and body == b"a request body is at most 1.0 MiB\n"
    # h11 would frame the body by its chunks, whatever the Content-Length says
    chunked = b'{"data": []}'
    lines, body = raw_exchange(app, post(app, "/gradio_api/queue/join", f"{len(chunked):x}\r\n".encode() + chunked
                                         + b"\r\n0\r\n\r\n", join, "Transfer-Encoding: chunked", length=5))
    assert lines[0].startswith("HTTP/1.1 411") and b"Transfer-Encoding" in body
    # In an upload, a form field that is not a file is kept in memory by Gradio: cut off past 64 KiB.
    before = work_files(app)
    lines, body = raw_exchange(app, post(app, "/gradio_api/upload", multipart(
        ("note", None, b"x" * (70 << 10)), ("files", "v.mp4", bytes(100))), UPLOAD_TYPE))
    assert lines[0].startswith("HTTP/1.1 413") and body == (
        b"a form field of an upload that is not a file is over 64 KiB\n"), (lines, body)
    lines, body = raw_exchange(app, post(app, "/gradio_api/upload", multipart(
        ("note", None, b"x" * 1000), ("files", "v.mp4", bytes(100))), UPLOAD_TYPE))
    assert lines[0] == "HTTP/1.1 200 OK", (lines, body)
    added = sorted(set(work_files(app)) - set(before))  # the accepted upload alone: <sha256>/v.mp4
    assert len(added) == 2 and re.fullmatch(r"[0-9a-f]{64}/v\.mp4", added[1]), added
    assert guard_of(app).uploads == 0
    assert app.workspace._reserved == 0  # every reservation was released


def test_stalled_bodies_are_cut_off_and_uploads_and_requests_at_once_are_bounded(segmenter, monkeypatch):
    import longvos.app.guard as guard

    monkeypatch.setattr(guard, "CHUNK_TIMEOUT", 10.0)  # long enough for the checks below on a loaded CPU
    monkeypatch.setattr(guard, "MAX_UPLOADS", 2)
    monkeypatch.setattr(guard, "MAX_REQUESTS", 4)
    upload = multipart(("files", "v.mp4", bytes(5000)))
    with serving(segmenter) as app:
        state = guard_of(app)
        sent = time.monotonic()
        stalled = [send_only(app, post(app, "/gradio_api/upload", upload[:200], UPLOAD_TYPE, length=len(upload)))
                   for _ in range(2)]  # each says 5 KB, sends 200 bytes and stops
        # Each upload is counted, then reserves its stated size (in a thread): wait for both.
        wait_for(lambda: state.uploads == 2 and app.workspace._reserved == 2 * len(upload),
                 "the uploads did not start, or did not reserve their stated size")
        lines, body = raw_exchange(app, post(app, "/gradio_api/upload", upload, UPLOAD_TYPE))
        assert lines[0].startswith("HTTP/1.1 503") and b"uploads are going on" in body
        stalled += [send_only(app, post(app, "/gradio_api/queue/join", b'{"da', "Content-Type: application/json",
                                         length=100)) for _ in range(2)]
        wait_for(lambda: state.requests == 4, "the requests did not arrive")
        lines, body = get(app, "/config")
        assert lines[0].startswith("HTTP/1.1 503") and body == b"the server is busy; try again in a moment\n"
        for connection in stalled:  # answered, and closed, once nothing arrived for 10 s
            lines, body = read_answer(connection)
            assert lines[0].startswith("HTTP/1.1 408") and body == (
                b"the request body stopped arriving (nothing for 10 s)\n"), (lines, body)
        assert 10 <= time.monotonic() - sent < 90
        wait_for(lambda: state.requests == 0 and state.uploads == 0, "the requests are still counted")
        assert app.workspace._reserved == 0
        assert get(app, "/config")[0][0] == "HTTP/1.1 200 OK"
        assert raw_exchange(app, post(app, "/gradio_api/upload", upload, UPLOAD_TYPE))[0][0] == "HTTP/1.1 200 OK"


def test_a_trickling_upload_is_cut_off_at_its_deadline_and_releases_its_slot(segmenter, monkeypatch):
    """Bytes now and then, each well within the chunk timeout: the whole body still has a deadline (a base plus its
    size at a minimum rate), so a trickle cannot hold an upload slot and its reservation for long."""
    import longvos.app.guard as guard

    monkeypatch.setattr(guard, "BODY_BASE_SECONDS", 3.0)
    monkeypatch.setattr(guard, "MIN_BODY_RATE", 1 << 30)  # 5 KB adds nothing: the deadline is 3 s
    upload = multipart(("files", "v.mp4", bytes(5000)))
    with serving(segmenter) as app:
        state = guard_of(app)
        assert (state.body_base_seconds, state.chunk_timeout) == (3.0, 30.0)
        started = time.monotonic()
        connection = send_only(app, post(app, "/gradio_api/upload", upload[:200], UPLOAD_TYPE, length=len(upload)))
        wait_for(lambda: state.uploads == 1 and app.workspace._reserved == len(upload), "the upload did not start")
        sent = 200
        # A byte every 0.2 s (the whole body would take 16 minutes), until just before the deadline: no byte is on
        # its way when the server answers and closes. Without the deadline, the chunk timeout would cut it off
        # 30 s after the last byte.
        while time.monotonic() - started < 2.5:
            connection.sendall(upload[sent:sent + 1])
            sent += 1
            time.sleep(0.2)
        lines, body = read_answer(connection)
        elapsed = time.monotonic() - started
        assert lines[0].startswith("HTTP/1.1 408") and body == (
            b"the request body arrived too slowly (under 1024 MiB/s after its first 3 s)\n"), (lines, body)
        assert 3 <= elapsed < 20 and sent < len(upload), (elapsed, sent)
        wait_for(lambda: state.uploads == 0 and state.requests == 0, "the upload still holds its slot")
        assert app.workspace._reserved == 0
        assert raw_exchange(app, post(app, "/gradio_api/upload", upload, UPLOAD_TYPE))[0][0] == "HTTP/1.1 200 OK"


def test_one_client_cannot_hold_every_request_or_upload_slot(segmenter, monkeypatch):
    """Requests that stay open (the page's event streams, stalled bodies) and uploads are capped per client address
    below the global caps: one client filling its share leaves the server to the others."""
    import longvos.app.guard as guard

    monkeypatch.setattr(guard, "CHUNK_TIMEOUT", 10.0)
    monkeypatch.setattr(guard, "MAX_CLIENT_REQUESTS", 3)
    monkeypatch.setattr(guard, "MAX_CLIENT_UPLOADS", 1)
    upload = multipart(("files", "v.mp4", bytes(5000)))
    with serving(segmenter) as app:
        state = guard_of(app)
        stalled = [send_only(app, post(app, "/gradio_api/upload", upload[:200], UPLOAD_TYPE, length=len(upload)))]
        wait_for(lambda: state.uploads == 1, "the upload did not start")
        lines, body = raw_exchange(app, post(app, "/gradio_api/upload", upload, UPLOAD_TYPE))
        assert lines[0].startswith("HTTP/1.1 429") and body == (
            b"1 uploads from this address are going on; try again when one has finished\n"), (lines, body)
        lines, _ = raw_exchange(app, post(app, "/gradio_api/upload", upload, UPLOAD_TYPE), source="127.0.0.2")
        assert lines[0] == "HTTP/1.1 200 OK", lines  # another client uploads
        stalled += [send_only(app, post(app, "/gradio_api/queue/join", b'{"da', "Content-Type: application/json",
                                         length=100)) for _ in range(2)]
        wait_for(lambda: state.requests == 3, "the requests did not arrive")
        lines, body = get(app, "/config")
        assert lines[0].startswith("HTTP/1.1 429") and body == (
            b"3 requests from this address are going on; try again when one has finished\n"), (lines, body)
        lines, _ = raw_exchange(app, b"GET /config HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                                source="127.0.0.2")
        assert lines[0] == "HTTP/1.1 200 OK", lines
        for connection in stalled:
            assert read_answer(connection)[0][0].startswith("HTTP/1.1 408")
        wait_for(lambda: state.requests == 0 and not state.client_requests and not state.client_uploads,
                 "the clients are still counted")
        assert get(app, "/config")[0][0] == "HTTP/1.1 200 OK"


def test_a_trickle_is_cut_off_as_soon_as_it_falls_behind_the_minimum_rate(segmenter, monkeypatch):
    """A body that states a large size cannot trickle until the deadline of that size: past the grace seconds it
    must keep up with the minimum rate all along."""
    import longvos.app.guard as guard

    monkeypatch.setattr(guard, "BODY_BASE_SECONDS", 1.0)
    monkeypatch.setattr(guard, "MIN_BODY_RATE", 1000)  # 50 KB stated: all of it would be due after 51 s
    upload = multipart(("files", "v.mp4", bytes(50_000)))
    with serving(segmenter) as app:
        state = guard_of(app)
        started = time.monotonic()
        connection = send_only(app, post(app, "/gradio_api/upload", upload[:200], UPLOAD_TYPE, length=len(upload)))
        wait_for(lambda: state.uploads == 1, "the upload did not start")
        sent = 200
        while time.monotonic() - started < 1.0:  # a byte every 0.1 s: 10 B/s
            connection.sendall(upload[sent:sent + 1])
            sent += 1
            time.sleep(0.1)
        lines, body = read_answer(connection)
        assert lines[0].startswith("HTTP/1.1 408") and body == (
            b"the request body arrived too slowly (under 1 KiB/s after its first 1 s)\n"), (lines, body)
        assert time.monotonic() - started < 15
        wait_for(lambda: state.uploads == 0, "the upload still holds its slot")


def test_an_upload_with_a_boundary_the_parser_refuses_is_a_one_line_400(app, capsys):
    boundary = "x" * 300
    body = f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"v.mp4\"\r\n\r\n".encode()
    lines, answer = raw_exchange(app, post(app, "/gradio_api/upload", body,
                                           f"Content-Type: multipart/form-data; boundary={boundary}"))
    assert lines[0].startswith("HTTP/1.1 400") and answer == (
        b"the upload is not a valid multipart form: its boundary is refused (at most 256 characters)\n"), lines
    assert "Traceback" not in capsys.readouterr().err


def test_the_headers_of_a_part_of_an_upload_are_bounded(app):
    """A part's headers, which the guard's parser and Gradio's keep in memory, are cut off (413) past 8 KiB in all,
    and past python-multipart's own limits of a header line and of headers per part where it has them."""
    from longvos.app.guard import MAX_PART_HEADER_BYTES, _FieldWatch

    def part(headers: str) -> bytes:
        return (f'--b\r\nContent-Disposition: form-data; name="files"; filename="v.mp4"\r\n{headers}'
                f"Content-Type: video/mp4\r\n\r\n").encode() + bytes(100) + b"\r\n--b--\r\n"

    over = b"the headers of a part of an upload are over 8 KiB\n"
    parser_limit = b"a part of an upload has a header line too long or too many headers\n"
    before = work_files(app)
    for headers, refusals in [
        ("".join(f"X-Pad-{index}: {'x' * 3000}\r\n" for index in range(3)), {over}),  # lines within any limit
        (f"X-Pad: {'x' * (9 << 10)}\r\n", {over, parser_limit}),  # one long line
        ("".join(f"X-Pad-{index}: {'x' * 100}\r\n" for index in range(100)), {over, parser_limit}),  # many
    ]:
        lines, body = raw_exchange(app, post(app, "/gradio_api/upload", part(headers), UPLOAD_TYPE))
        assert lines[0].startswith("HTTP/1.1 413") and body in refusals, (lines, body)
    assert work_files(app) == before and guard_of(app).uploads == 0 and app.workspace._reserved == 0
    headers = "".join(f"X-Pad-{index}: {'x' * 2000}\r\n" for index in range(3))
    lines, body = raw_exchange(app, post(app, "/gradio_api/upload", part(headers), UPLOAD_TYPE))
    assert lines[0] == "HTTP/1.1 200 OK", (lines, body)  # within the limits
    # What the guard buffers of a part's headers stays within the limit, however the body is cut into chunks.
    watch = _FieldWatch(b"b", 1 << 10)
    body = part("".join(f"X-Pad-{index}: {'x' * 3000}\r\n" for index in range(6)))
    fed = [watch.feed(body[start:start + 100]) for start in range(0, len(body), 100)]
    assert False in fed and fed.index(False) <= MAX_PART_HEADER_BYTES // 100 + 2 and watch.over == over[:-1].decode()
    assert len(watch._header) + len(watch._disposition) <= MAX_PART_HEADER_BYTES


def test_a_field_cannot_pass_for_a_file_through_repeated_headers(app):
    """The guard read the last of two Content-Type headers (Gradio the first), and joined a part's two
    Content-Disposition headers (Gradio keeps the last): either way a 60 MiB form field went unwatched into memory.
    Repeated request headers, and a part with two dispositions, are refused; an upload holds a few files at most."""
    from longvos.app.guard import MAX_UPLOAD_FILES

    field = multipart(("junk", None, b"x" * 100))  # small: the refusal comes before the body is read
    lines, body = raw_exchange(app, post(app, "/gradio_api/upload", field, UPLOAD_TYPE, "Content-Type: text/plain"))
    assert lines[0].startswith("HTTP/1.1 400") and body == b"a request may not repeat its content-type header\n"
    two = (b'--b\r\nContent-Disposition: form-data; name="files"; filename="v.mp4"\r\n'
           b'Content-Disposition: form-data; name="junk"\r\n\r\n' + b"x" * 100 + b"\r\n--b--\r\n")
    lines, body = raw_exchange(app, post(app, "/gradio_api/upload", two, UPLOAD_TYPE))
    assert lines[0].startswith("HTTP/1.1 413") and body == b"a part of an upload has two Content-Disposition headers\n"
    many = multipart(*[("files", f"v{index}.mp4", b"1234") for index in range(MAX_UPLOAD_FILES + 1)])
    lines, body = raw_exchange(app, post(app, "/gradio_api/upload", many, UPLOAD_TYPE))
    assert lines[0].startswith("HTTP/1.1 413") and body == f"an upload holds at most {MAX_UPLOAD_FILES} files\n".encode()
    assert guard_of(app).uploads == 0 and app.workspace._reserved == 0


def test_the_quota_counts_the_disk_small_files_take(tmp_path):
    """4-byte files each take a block of disk (and a folder each, as Gradio stores uploads): counted by size, 30,000
    of them were 120 KB of quota for 120 MB of disk."""
    for index in range(50):
        (tmp_path / f"{index:064x}").mkdir()
        (tmp_path / f"{index:064x}" / "v.mp4").write_bytes(b"1234")
    used = disk_usage(tmp_path)
    assert used >= 50 * 4096 > 50 * 4


def test_a_box_or_click_that_is_not_finite_is_one_line():
    from longvos.prompts import parse_box

    with pytest.raises(InputError, match="expected four numbers"):
        parse_box("1e400,0,10,10")


def test_a_body_longer_than_it_said_is_cut_off(tmp_path):
    """h11 frames a body by its Content-Length; the guard counts it all the same, and cuts off one that runs over."""
    import asyncio

    from longvos.app.guard import RequestGuard

    seen, sent = [], []

    async def gradio(scope, receive, send):
        while (message := await receive())["type"] == "http.request" and message["more_body"]:
            seen.append(message["body"])
        seen.append(message["type"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-echo", b"1")]})
        await send({"type": "http.response.body", "body": b"{}"})

    chunks = iter([b"01234", b"56789", b""])

    async def receive():
        body = next(chunks)
        return {"type": "http.request", "body": body, "more_body": bool(body)}

    async def send(message):
        sent.append(message)

    guard = RequestGuard(gradio, workspace=Workspace(tmp_path), allow_remote=False, max_upload_bytes=1000)
    scope = {"type": "http", "method": "POST", "path": "/gradio_api/queue/join",
             "headers": [(b"host", b"127.0.0.1"), (b"content-length", b"5")]}
    asyncio.run(guard(scope, receive, send))
    assert seen == [b"01234", "http.disconnect"]  # Gradio saw the stated 5 bytes, then the end of the connection
    assert sent[0]["status"] == 413 and (b"connection", b"close") in sent[0]["headers"]
    assert sent[1]["body"] == b"the request body is longer than its Content-Length\n" and len(sent) == 2


# -- only the routes the page uses; no URL fetched; no request text in a response header ---------------------------

def test_only_the_routes_the_page_uses_are_served(app, clip):
    root = app.workspace.root
    before = work_files(app)
    recording = multipart(("video", "rec.mp4", clip.read_bytes()), ("replay_regions", None, b"[]"))
    for request in [
        post(app, "/gradio_api/process_recording", recording, UPLOAD_TYPE),  # writes to the system's temp folder
        post(app, "/gradio_api/run/set_box", b'{"data": ["1,2,30,40"]}', "Content-Type: application/json"),
        post(app, "/gradio_api/call/set_box", b'{"data": ["1,2,30,40"]}', "Content-Type: application/json"),
        post(app, "/gradio_api/vibe-edit", b'{"prompt": "x"}', "Content-Type: application/json"),
        b"GET /gradio_api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        b"GET /gradio_api/openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        b"GET /gradio_api/proxy=http://127.0.0.1:9/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        b"GET /monitoring HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    ]:
        lines, body = raw_exchange(app, request)
        assert lines[0].startswith("HTTP/1.1 404") and body == b"not found\n", (request[:60], lines)
    for target in ["https://example.com/x.png", "http://127.0.0.1:9/x.png", "//example.com/x.png",
                   "/etc/hostname", f"{root}/../{root.name}-elsewhere/x.png", str(Path(__file__))]:
        lines, _ = get(app, f"/gradio_api/file={target}")
        assert lines[0].startswith("HTTP/1.1 404"), (target, lines)
    assert work_files(app) == before
    for path in ("/", "/config", "/gradio_api/info", "/theme.css"):
        assert get(app, path)[0][0] == "HTTP/1.1 200 OK", path
    assert json.loads(get(app, "/config")[1])["run_history"] is False  # no /runs page, nothing recorded


def test_no_request_text_reaches_a_response_header(app, clip):
    client = marked_session(app, clip)
    preview = client.predict(api_name="/new_object")[0]["url"].split("/", 3)[3]  # a file in the work folder
    port = app_port(app)
    # Gradio copies the request's headers into a ranged answer: those whose names may pass the response filter too.
    lines, body = get(app, f"/{preview}", "Range: bytes=0-9", "X-Evil: injected", "Cookie: secret=1",
                      "Content-Type: text/html; x=injected", "Content-Disposition: attachment; filename=injected.html",
                      "Cache-Control: injected", "ETag: injected", "Vary: injected", "Last-Modified: injected",
                      "X-Content-Type-Options: injected", "Content-Encoding: injected")
    assert lines[0] == "HTTP/1.1 206 Partial Content" and len(body) == 10, lines
    headers = header_fields(lines)
    assert headers["content-range"].startswith("bytes 0-9/") and headers["content-disposition"] == "inline"
    assert not [line for line in lines if re.search("evil|injected|secret|cookie|host", line, re.I)], lines
    assert len([line for line in lines if line.lower().startswith("content-type:")]) == 1, lines
    # Gradio's CORS layer echoes the Origin and the requested headers: not passed on either.
    lines, _ = raw_exchange(app, f"OPTIONS /gradio_api/queue/join HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                 f"Origin: http://127.0.0.1:{port}\r\nAccess-Control-Request-Method: POST\r\n"
                                 f"Access-Control-Request-Headers: x-injected\r\nConnection: close\r\n\r\n".encode())
    assert not [line for line in lines if re.search("injected|origin|access-control", line, re.I)], lines
    lines, _ = get(app, "/config", f"Origin: http://localhost:{port}")
    assert lines[0] == "HTTP/1.1 200 OK" and not [line for line in lines if "localhost" in line], lines
    # An upload not yet taken by a job is served under the name it was sent with: not named in a header.
    lines, body = raw_exchange(app, post(app, "/gradio_api/upload", multipart(("files", "my secret.mp4",
                                                                              clip.read_bytes())), UPLOAD_TYPE))
    uploaded = json.loads(body)[0]
    lines, _ = get(app, f"/gradio_api/file={urllib.parse.quote(uploaded)}")
    assert lines[0] == "HTTP/1.1 200 OK" and not [line for line in lines if "secret" in line], lines


def test_with_remote_use_allowed_only_its_own_host_names_are_answered(segmenter):
    from longvos.app.guard import served_host_names

    assert served_host_names("0.0.0.0", ["App.Example:8080", "[fe80::1]", "10.0.0.5"]) == {
        "app.example", "fe80::1", "10.0.0.5"}
    assert served_host_names("192.168.1.5") == {"192.168.1.5"}
    with serving(segmenter, allow_remote=True, public_names=["app.example"]) as app:
        port = app_port(app)
        for host, status in [("evil.example", "403"), (f"evil.example:{port}", "403"), ("192.168.1.5", "403"),
                             (f"app.example:{port}", "200"), ("app.example", "200"), (f"127.0.0.1:{port}", "200"),
                             ("localhost", "200")]:
            lines, _ = raw_exchange(app, f"GET /config HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                                    .encode())
            assert lines[0].split()[1] == status, (host, lines)


# -- the work folder: uploads are paths of the form Gradio makes, shared content, room that cannot be made ---------

def test_sessions_that_upload_the_same_file_do_not_break_each_other(clip, tmp_path):
    workspace = Workspace(tmp_path)
    first, second = upload_into(workspace, clip, "a.mp4"), upload_into(workspace, clip, "b.mp4")  # one folder
    jobs = [workspace.create_job(first), workspace.create_job(second)]
    assert [job.video.read_bytes() for job in jobs] == [clip.read_bytes()] * 2
    assert sorted(path.name for path in workspace.root.iterdir()) == ["jobs"]  # the names went, then the folder
    same = upload_into(workspace, clip, "a.mp4")  # both sessions were handed this one path
    workspace.create_job(same)
    with pytest.raises(InputError, match="upload the file again"):
        workspace.create_job(same)


def test_a_path_a_client_names_is_never_taken_for_an_upload(clip, tmp_path):
    workspace = Workspace(tmp_path)
    job = workspace.create_job(upload_into(workspace, clip))
    elsewhere = tmp_path / "elsewhere.mp4"
    elsewhere.write_bytes(clip.read_bytes())
    (workspace.root / ("cd" * 32)).mkdir()
    (workspace.root / ("cd" * 32) / "link.mp4").symlink_to(elsewhere)
    for path in [job.video, job.first_frame_path, elsewhere, workspace.root / ("cd" * 32) / "link.mp4",
                 workspace.root / ("ab" * 32) / ".." / "jobs" / job.id / "input.mp4", workspace.root / "x.mp4"]:
        with pytest.raises(InputError, match="not a file uploaded to this server"):
            workspace.create_job(path)
        workspace.drop_upload(path)
    assert job.video.is_file() and job.first_frame_path.is_file() and elsewhere.is_file()
    assert len(list(workspace.jobs_dir.iterdir())) == 1


def test_no_idle_job_is_deleted_for_room_the_disk_cannot_give(clip, tmp_path, monkeypatch):
    import longvos.app.workspace as workspace_module

    workspace = Workspace(tmp_path)
    jobs = [workspace.create_job(upload_into(workspace, clip, digest=f"{index}" * 64)) for index in range(2)]
    workspace.quota_bytes = disk_usage(workspace.root) + 1000  # 5 KB more: deleting an idle job makes room
    disk = {"free": workspace_module.DISK_MARGIN_BYTES - 100_000}  # but the disk is short even with both gone
    monkeypatch.setattr(workspace_module.shutil, "disk_usage", lambda path: type("Usage", (), disk))
    with pytest.raises(TooLarge, match="would leave less than 256 MiB free on the server's disk"):
        workspace.reserve(5000, "the outputs")
    assert [workspace.job(job.id) for job in jobs] == jobs and workspace._reserved == 0
    disk["free"] = 1 << 40
    workspace.reserve(5000, "the outputs")  # now an idle job makes room, the oldest
    assert [job.id in workspace._jobs for job in jobs] == [False, True] and workspace._reserved == 5000


def test_the_job_list_is_read_under_the_lock_while_room_is_made(clip, tmp_path, monkeypatch):
    """Making room measures the idle jobs outside the lock (it walks their folders): their folders are taken under
    it, so a job deleted meanwhile (its session ended) is neither an error nor counted."""
    import longvos.app.workspace as workspace_module

    workspace = Workspace(tmp_path)
    jobs = [workspace.create_job(upload_into(workspace, clip, digest=f"{index}" * 64)) for index in range(3)]

    class Guarded(dict):
        def __getitem__(self, key):
            assert workspace._lock.locked(), "the job list was read outside the lock"
            return super().__getitem__(key)

        def __contains__(self, key):
            assert workspace._lock.locked(), "the job list was read outside the lock"
            return super().__contains__(key)

    workspace._jobs = Guarded(workspace._jobs)
    real_disk_usage = workspace_module.disk_usage

    def measured(folder):
        if folder == jobs[0].folder:  # while the oldest is measured, the second one's session ends
            workspace.discard(jobs[1].id)
        return real_disk_usage(folder)

    monkeypatch.setattr(workspace_module, "disk_usage", measured)
    workspace.quota_bytes = real_disk_usage(workspace.root) + 1000  # 5 KB more: the oldest idle job must go
    workspace.reserve(5000, "the outputs")
    with workspace._lock:
        assert [job.id in workspace._jobs for job in jobs] == [False, False, True] and workspace._reserved == 5000


def test_the_app_writes_no_per_object_masks_or_probabilities(segmenter, clip, tmp_path):
    """Options that would write ``objects/`` and ``probs/`` (which the zip does not hold, but the quota counts) are
    turned off for the app's runs."""
    from longvos.app.runner import JobRunner
    from longvos.engine.options import SegmentOptions
    from longvos.io.masks import write_index_png

    workspace = Workspace(tmp_path)
    job = workspace.create_job(upload_into(workspace, clip))
    ids = np.zeros((job.height, job.width), np.uint8)
    ids[14:34, 8:28] = 1
    write_index_png(job.prompt_path, ids)
    options = SegmentOptions(model=segmenter, max_size=MAX_SIZE, per_object=True, save_probs=True)
    runner = JobRunner(workspace, options)
    assert runner.options.per_object is False and runner.options.save_probs is False
    runner.run(job)
    written = sorted(str(path.relative_to(job.folder)) for path in job.folder.rglob("*") if path.is_dir())
    assert written == ["masks"], written
    with zipfile.ZipFile(job.zip_path) as archive:
        assert archive.namelist() == [f"masks/{index:05d}.png" for index in range(6)]


def test_the_zip_is_held_in_the_quota_before_it_is_written(segmenter, clip, tmp_path):
    from longvos.app.runner import JobRunner
    from longvos.engine.options import SegmentOptions
    from longvos.io.masks import write_index_png

    workspace = Workspace(tmp_path)
    job = workspace.create_job(upload_into(workspace, clip))
    ids = np.zeros((job.height, job.width), np.uint8)
    ids[14:34, 8:28] = 1
    write_index_png(job.prompt_path, ids)
    runner = JobRunner(workspace, SegmentOptions(model=segmenter, max_size=MAX_SIZE))
    runner.run(job)
    zip_size = job.zip_path.stat().st_size
    workspace.quota_bytes = quota = disk_usage(workspace.root) - zip_size // 2  # the same run's zip cannot fit
    with pytest.raises(TooLarge, match="the zip of the masks: the work folder is full"):
        runner.run(job)
    assert not job.zip_path.exists() and disk_usage(workspace.root) <= quota and workspace._reserved == 0


def test_long_videos_are_refused_from_the_header_before_they_are_indexed(app, clip, monkeypatch):
    from gradio_client import handle_file

    from longvos.io.video import VideoFileSource

    def no_index(*_args, **_kwargs):
        raise AssertionError("the frames were indexed")

    monkeypatch.setattr(VideoFileSource, "_build_index", no_index)
    monkeypatch.setattr(app.workspace, "max_video_frames", 5)  # the clip has 6
    client = app_client(app)
    assert app_error(lambda: client.predict(handle_file(str(clip)), api_name="/upload_video")) == (
        "the video is longer than the limit of 5 frames")



def tiny_mkv_with_a_lying_header(path: Path, frames: int) -> Path:
    """``frames`` 2x2 grey frames (rawvideo, so nothing is encoded) in an mkv whose Segment Duration then claims
    40 ms: a header that undercounts, as an upload can have."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("rawvideo", rate=25)
        stream.width, stream.height, stream.pix_fmt = 2, 2, "gray"
        frame = av.VideoFrame.from_ndarray(np.zeros((2, 2), np.uint8), format="gray")
        for index in range(frames):
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = bytearray(path.read_bytes())
    duration = data.find(b"\x44\x89\x88")  # the Duration element: an 8-byte float, in milliseconds
    assert duration > 0
    data[duration + 3:duration + 11] = struct.pack(">d", 40.0)
    data = re.sub(rb"\d\d:\d\d:\d\d\.\d{9}", b"00:00:00.040000000", bytes(data))  # and each track's DURATION tag
    path.write_bytes(data)
    return path


def test_a_video_whose_header_undercounts_is_refused_after_at_most_limit_plus_one_packets(tmp_path, monkeypatch):
    """The header check passes (it says 1 frame); counting the 400 packets must stop past the limit, not walk
    them all (with 300,000 tiny packets that walk took minutes and its index megabytes, per upload)."""
    from longvos.app.workspace import listed_frames
    from longvos.io.video import VideoFileSource

    video = tiny_mkv_with_a_lying_header(tmp_path / "lying.mkv", 400)
    assert listed_frames(video) <= 50  # the header lies: only the packets tell
    demuxed = []
    real_open = VideoFileSource._open

    class Counted:  # the container, with every packet it demuxes counted
        def __init__(self, container):
            self._container = container

        def __getattr__(self, name):
            return getattr(self._container, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self._container.close()

        def demux(self, *args, **kwargs):
            for packet in self._container.demux(*args, **kwargs):
                demuxed.append(packet.size)
                yield packet

    monkeypatch.setattr(VideoFileSource, "_open", lambda self: Counted(real_open(self)))
    workspace = Workspace(tmp_path / "work", max_video_frames=50)
    with pytest.raises(TooLarge, match="^the video is longer than the limit of 50 frames$"):
        workspace.create_job(upload_into(workspace, video, name="lying.mkv"))
    assert 0 < len(demuxed) <= 51, len(demuxed)
    assert list(workspace.jobs_dir.iterdir()) == []
    demuxed.clear()
    assert VideoFileSource(video).num_frames == 400 and len(demuxed) == 401  # no limit: every packet (and flush)


# -- the environment, and a second app in one process ---------------------------------------------------------------

def test_importing_the_app_changes_no_environment():
    code = ("import os; import longvos.app.server; "
            "print([os.environ.get(name) for name in ('HF_HUB_OFFLINE', 'GRADIO_ANALYTICS_ENABLED', "
            "'HF_HUB_DISABLE_TELEMETRY', 'GRADIO_TEMP_DIR')])")
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("HF_HUB_OFFLINE", "GRADIO_ANALYTICS_ENABLED", "HF_HUB_DISABLE_TELEMETRY",
                                   "GRADIO_TEMP_DIR")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "[None, None, None, None]", done.stderr[-2000:]


def test_a_second_app_in_the_process_writes_only_into_its_own_work_folder(segmenter, clip, tmp_path, monkeypatch):
    import gradio.route_utils
    import gradio.routes

    with serving(segmenter, workdir=tmp_path) as first:
        pass
    # As if the first app had been the process's first: Gradio keeps the cache folder it saw on import.
    for module in (gradio.route_utils, gradio.routes):
        monkeypatch.setattr(module, "DEFAULT_TEMP_DIR", str(first.workspace.root))
    with serving(segmenter, workdir=tmp_path) as second:
        marked_session(second, clip).predict(api_name="/segment")
        assert [path.name for path in tmp_path.iterdir()] == [second.workspace.root.name]
        assert [path for path in work_files(second) if not path.startswith(("jobs", "matplotlib"))] == []
    assert list(tmp_path.iterdir()) == []
