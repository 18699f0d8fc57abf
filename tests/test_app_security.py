"""The web app's security and robustness guarantees (issue 15, items 5-9), over HTTP on 127.0.0.1 only, on small
synthetic clips (no shared data): no client text reaches a header, a path or a zip entry; stalled connections time
out and use a bounded number of threads; image work runs a bounded number at once; images are measured before they
are decoded; the work folder has a quota; stopping the app cancels the running job, waits for it and cleans up;
bad numbers and deep JSON are a 400 with one line and no server path; uploads never share a staging file; a
non-loopback host needs an explicit flag, and requests for other host names or from other sites are refused."""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, unquote

import av
import numpy as np
import pytest
from PIL import Image, ImageFile

from longvos.app import AppServer
from longvos.engine.segmenter import load_model

from conftest import call, run_to_the_end

SIZE = (64, 48)  # width, height of the test clips
MAX_SIZE = 48
SAFE_NAME = r"[A-Za-z0-9 ._()+,-]+"

pytestmark = pytest.mark.usefixtures("one_thread_module")


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


def mask_png(objects: int = 1) -> bytes:
    ids = np.zeros(SIZE[::-1], dtype=np.uint8)
    for number in range(1, objects + 1):
        ids[12 + 8 * number: 18 + 8 * number, 8:30] = number
    image = Image.frombytes("P", SIZE, ids.tobytes())
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


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
    return load_model("mavos-lite", device="cpu")  # its bundled weights


@contextmanager
def serving(segmenter, **options):
    server = AppServer(segmenter, port=0, max_size=MAX_SIZE, **options)
    server.start_background()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def server(segmenter, tmp_path_factory):
    with serving(segmenter, workdir=tmp_path_factory.mktemp("app")) as app:
        yield app


def error_of(response: tuple[int, dict[str, str], bytes]) -> tuple[int, str]:
    return response[0], json.loads(response[2])["error"]


def raw_exchange(server: AppServer, request: bytes, timeout: float = 30) -> tuple[list[str], bytes]:
    """Send ``request`` as it is and read until the server closes: the response's header lines and its body."""
    with socket.create_connection(server.server_address[:2], timeout=timeout) as connection:
        connection.sendall(request)
        data = b""
        while chunk := connection.recv(1 << 16):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1").split("\r\n"), body


def upload(server: AppServer, path: Path, encoded_name: str) -> dict:
    status, _, body = call(server, "POST", "/api/jobs", path.read_bytes(), {"X-Filename": encoded_name})
    assert status == 200, body
    return json.loads(body)


def post_mask(server: AppServer, job_id: str, objects: int = 1) -> dict:
    status, _, body = call(server, "POST", f"/api/jobs/{job_id}/mask", mask_png(objects))
    assert status == 200, body
    return json.loads(body)


def wait_for_frames(server: AppServer, job_id: str, frames: int) -> None:
    deadline = time.monotonic() + 60
    while json.loads(call(server, "GET", f"/api/jobs/{job_id}")[2])["done"] < frames:
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.05)


def job_folders(server: AppServer) -> list[Path]:
    return [path for path in server.workdir.iterdir() if path.is_dir()]


# -- 5. nothing a client sends reaches a header or a zip entry ------------------------------------------------------

@pytest.mark.parametrize("encoded, shown", [
    ("a%0D%0ASet-Cookie:%20pwn=1.mp4", "a__Set-Cookie: pwn=1"),  # CR LF: header injection
    (quote("Видео.mp4"), "Видео"),  # not Latin-1: broke every download (two status lines)
    (quote('a"b\\c.mp4'), 'a"b\\c'),  # a quote and a backslash: leaked into the header and the zip entries
])
def test_download_headers_and_zip_entries_never_echo_the_uploaded_name(server, clip, encoded, shown):
    job = upload(server, clip, encoded)
    assert job["name"] == shown
    post_mask(server, job["id"])
    assert run_to_the_end(server, job["id"])["state"] == "done"
    for download in ("masks.zip", "overlay.mp4"):
        lines, body = raw_exchange(server, f"GET /api/jobs/{job['id']}/{download} HTTP/1.1\r\n"
                                           f"Host: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        assert lines[0] == "HTTP/1.1 200 OK" and sum(line.startswith("HTTP/") for line in lines) == 1, lines
        headers = dict(line.split(": ", 1) for line in lines[1:])
        assert all(name.lower() != "set-cookie" for name in headers) and all(line.isascii() for line in lines)
        assert len(body) == int(headers["Content-Length"])
        disposition = headers["Content-Disposition"].split("; ")
        assert disposition[0] == "attachment" and len(disposition) == 3, disposition
        assert disposition[1].startswith('filename="') and disposition[1].endswith(f'-{download}"')
        assert set(disposition[1][len('filename="'):-1]) <= set("abcdefghijklmnopqrstuvwxyz"
                                                                  "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ._()+,-")
        assert disposition[2].startswith("filename*=UTF-8''")  # RFC 5987: the original name, percent-encoded
        assert unquote(disposition[2].removeprefix("filename*=UTF-8''")) == f"{shown}-{download}"
        if download == "masks.zip":
            with zipfile.ZipFile(io.BytesIO(body)) as archive:
                names = archive.namelist()
            assert len(names) == 6
            for name in names:
                folder, file = name.split("/")
                assert folder.endswith("-masks") and set(folder) <= set(disposition[1]) | set("-masks")
                assert file[:5].isdigit() and file.endswith(".png") and '"' not in name and "\\" not in name


# -- 6. bounded resources -----------------------------------------------------------------------------------------

def test_stalled_uploads_time_out_on_a_bounded_number_of_threads(segmenter, tmp_path):
    with serving(segmenter, workdir=tmp_path, request_timeout=1, max_connections=3) as server:
        threads_before = threading.active_count()
        stalled = []
        for _ in range(6):  # each promises 1 MB and sends 100 bytes
            connection = socket.create_connection(server.server_address[:2], timeout=20)
            connection.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filename: v.mp4\r\n"
                               b"Content-Length: 1000000\r\n\r\n" + bytes(100))
            stalled.append(connection)
        time.sleep(0.5)
        assert threading.active_count() - threads_before <= 3  # one thread per connection, at most 3
        for connection in stalled:  # each is dropped after its timeout (6 connections, 3 at a time: ~2 s)
            try:
                while connection.recv(1 << 16):
                    pass
            except ConnectionResetError:
                pass
            connection.close()
        assert job_folders(server) == []  # the half uploads are gone
        assert call(server, "GET", "/")[0] == 200


def test_prompts_run_a_bounded_number_at_once(segmenter, clip, tmp_path, monkeypatch):
    import longvos.app.server as app_server

    running, most = [0], [0]
    lock = threading.Lock()

    def slow_prompt_mask(image, objects):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.3)
        with lock:
            running[0] -= 1
        ids = np.zeros(image.shape[:2], dtype=np.uint8)
        ids[10:20, 10:20] = 1
        return ids

    monkeypatch.setattr(app_server, "prompt_mask", slow_prompt_mask)
    with serving(segmenter, workdir=tmp_path, max_parallel_work=1) as server:
        job = upload(server, clip, "clip.mp4")
        body = json.dumps({"objects": [{"box": [5, 5, 40, 40]}]}).encode()
        statuses = []
        threads = [threading.Thread(target=lambda: statuses.append(
            call(server, "POST", f"/api/jobs/{job['id']}/prompt", body)[0])) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert statuses == [200] * 5 and most[0] == 1


def test_images_are_measured_before_they_are_decoded(server, clip, monkeypatch):
    decoded = []
    load = ImageFile.ImageFile.load

    def watched_load(image):
        if image.size[0] * image.size[1] > 10**6:
            decoded.append(image.size)
            raise AssertionError(f"decoded a {image.size} image")
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", watched_load)
    job = upload(server, clip, "clip.mp4")
    big = header_only_png(10000, 10000, pixels=True)
    assert len(big) < 20000
    assert error_of(call(server, "POST", f"/api/jobs/{job['id']}/mask", big, {"X-Filename": "big.png"})) == (
        400, "big.png: mask is 10000x10000 but the video (clip) is 64x48")
    status, message = error_of(call(server, "POST", f"/api/jobs/{job['id']}/mask", header_only_png(20000, 20000),
                                    {"X-Filename": "bomb.png"}))
    assert status == 400 and message.startswith("bomb.png: mask is 20000x20000") and "\n" not in message
    assert decoded == []

    monkeypatch.setattr(server.jobs, "max_video_pixels", 1000)  # the clip's 64x48 frames are over it
    folders = job_folders(server)
    status, message = error_of(call(server, "POST", "/api/jobs", clip.read_bytes(), {"X-Filename": "clip.mp4"}))
    assert (status, message) == (413, "clip.mp4: frames of 64x48 are over the limit of 0.001 megapixels")
    assert job_folders(server) == folders


def test_the_work_folder_has_a_disk_quota(segmenter, clip, tmp_path):
    size = clip.stat().st_size
    with serving(segmenter, workdir=tmp_path, quota_bytes=int(2.5 * size)) as server:
        status, message = error_of(call(server, "POST", "/api/jobs", bytes(3 * size), {"X-Filename": "big.mp4"}))
        assert status == 413 and "quota" in message and job_folders(server) == []
        first, second, third = (upload(server, clip, "clip.mp4") for _ in range(3))
        assert call(server, "GET", f"/api/jobs/{first['id']}")[0] == 404  # the oldest made room
        assert call(server, "GET", f"/api/jobs/{third['id']}")[0] == 200
        used = sum(path.stat().st_size for path in tmp_path.rglob("*") if path.is_file())
        assert used <= 2.5 * size and len(job_folders(server)) == 2


# -- 7. stopping mid-job ------------------------------------------------------------------------------------------

def test_closing_mid_job_cancels_it_waits_for_it_and_removes_the_work_folder(segmenter, long_clip, monkeypatch):
    import longvos.app.jobs as jobs

    preview = jobs._LivePreview.__call__

    def slow_preview(self, frame, result):  # at least 12 s for the whole clip, whatever the machine
        preview(self, frame, result)
        time.sleep(0.05)

    monkeypatch.setattr(jobs._LivePreview, "__call__", slow_preview)
    server = AppServer(segmenter, port=0, max_size=MAX_SIZE)
    server.start_background()
    try:
        job = upload(server, long_clip, "long.mp4")
        post_mask(server, job["id"])
        assert call(server, "POST", f"/api/jobs/{job['id']}/run")[0] == 200
        wait_for_frames(server, job["id"], 2)
    finally:
        started = time.monotonic()
        server.close()
        seconds = time.monotonic() - started
    assert seconds < 5, f"close took {seconds:.1f} s"
    assert not server.runner._thread.is_alive()
    assert not server.workdir.exists()
    status = server.jobs.get(job["id"]).status()
    assert status["state"] == "failed" and status["error"] == "the server stopped" and status["done"] < 240


def start_app(python_args: list[str], temp: Path) -> tuple[subprocess.Popen, str]:
    """``python <python_args> app ...`` on a free port with ``TMPDIR=temp``; the process and its "serving" line."""
    temp.mkdir()
    command = [sys.executable, *python_args, "app", "--port", "0", "--model", "mavos-lite", "--device", "cpu",
               "--threads", "1", "--max-size", str(MAX_SIZE)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TMPDIR": str(temp), "OMP_NUM_THREADS": "1"})
    line = process.stdout.readline()
    assert line.startswith("longvos app: serving http://127.0.0.1:"), (line, process.stderr.read())
    return process, line


def test_sigterm_mid_job_exits_promptly_and_leaves_no_temp_folder(long_clip, tmp_path):
    temp = tmp_path / "tmp"
    process, line = start_app(["-m", "longvos"], temp)
    try:
        url = line.split()[3].rstrip("/")
        request = urllib.request.Request(f"{url}/api/jobs", data=long_clip.read_bytes(),
                                         headers={"X-Filename": "long.mp4"})
        job = json.loads(urllib.request.urlopen(request, timeout=60).read())
        for action, body in (("mask", mask_png()), ("run", b"")):
            urllib.request.urlopen(urllib.request.Request(f"{url}/api/jobs/{job['id']}/{action}", data=body),
                                   timeout=60).read()
        deadline = time.monotonic() + 60
        while json.loads(urllib.request.urlopen(f"{url}/api/jobs/{job['id']}", timeout=60).read())["done"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0  # 238 frames were left: the job was cancelled, not waited for
        errors = process.stderr.read()
        assert "stopped" in errors and "Traceback" not in errors, errors
        assert list(temp.iterdir()) == []
    finally:
        process.kill()
        process.wait()


HANGING_CLOSE = """
import signal, sys, time
from longvos.app.server import AppServer
from longvos.cli.main import main

def hanging_close(self, timeout=None):  # a job that does not stop: the clean-up waits (for good, here)
    print("closing", flush=True)
    time.sleep(300)

AppServer.close = hanging_close
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


# -- 8. bad input: 400 with one line, no server paths; one staging file per upload --------------------------------

@pytest.mark.parametrize("body", [
    '{"objects": [{"box": [Infinity, 0, 10, 10]}]}',
    '{"objects": [{"box": [NaN, 0, 10, 10]}]}',
    '{"objects": [{"box": [1e400, 0, 10, 10]}]}',
    '{"objects": [{"box": [0, 0, 1' + "0" * 400 + ', 10]}]}',
    '{"objects": [{"points": [[-Infinity, 3, 1]]}]}',
    '{"objects": [{"points": [[3, 1e400, 1]]}]}',
    "[" * 100000 + "]" * 100000,
    '{"objects": [{"points": ' + "[" * 5000 + "]" * 5000 + "}]}",
])
def test_bad_numbers_and_deep_json_are_a_400_with_one_line(server, clip, body):
    job = upload(server, clip, "clip.mp4")
    status, message = error_of(call(server, "POST", f"/api/jobs/{job['id']}/prompt", body.encode()))
    assert status == 400 and "\n" not in message and "Traceback" not in message and len(message) < 300, message


def test_error_messages_name_no_server_path(server):
    status, message = error_of(call(server, "POST", "/api/jobs", b"not a video", {"X-Filename": "broken.mp4"}))
    assert status == 400 and message.startswith("broken.mp4: cannot open video"), message
    assert str(server.workdir) not in message and "input.mp4" not in message and "/" not in message


def test_two_mask_uploads_to_one_job_do_not_share_a_staging_file(server, clip):
    job = upload(server, clip, "clip.mp4")
    first, second = mask_png(1), mask_png(2)
    with socket.create_connection(server.server_address[:2], timeout=30) as slow:
        slow.sendall(f"POST /api/jobs/{job['id']}/mask HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     f"Content-Length: {len(first)}\r\n\r\n".encode() + first[:50])
        time.sleep(0.3)  # the first upload is being written when the second one comes and goes
        status, _, body = call(server, "POST", f"/api/jobs/{job['id']}/mask", second)
        assert status == 200 and json.loads(body)["objects"] == [1, 2]
        slow.sendall(first[50:])
        response = b""
        while chunk := slow.recv(1 << 16):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), response
    assert json.loads(body)["objects"] == [1]
    assert [path.name for path in server.jobs.get(job["id"]).folder.iterdir() if "upload" in path.name] == []


# -- 9. loopback unless explicitly allowed ------------------------------------------------------------------------

def test_a_non_loopback_host_needs_an_explicit_flag(segmenter, monkeypatch, capsys):
    from longvos.cli.main import main

    def no_model(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the host was checked")

    monkeypatch.setattr("longvos.engine.segmenter.load_model", no_model)
    assert main(["app", "--host", "0.0.0.0", "--port", "0"]) == 1
    assert "--allow-remote" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["app", "--help"])
    assert done.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--allow-remote" in help_text and "anyone who can reach the port" in help_text.lower()
    with pytest.raises(ValueError, match="allow_remote"):
        AppServer(segmenter, host="0.0.0.0", port=0)  # refused before binding anything


def test_requests_for_another_host_name_or_from_another_site_are_refused(server, clip):
    job = upload(server, clip, "clip.mp4")
    port = server.server_address[1]
    for host in ("evil.example", f"evil.example:{port}", "192.168.1.5"):  # a DNS-rebinding page
        lines, _ = raw_exchange(server, f"GET /api/jobs/{job['id']} HTTP/1.1\r\nHost: {host}\r\n"
                                        f"Connection: close\r\n\r\n".encode())
        assert lines[0].startswith("HTTP/1.1 403"), (host, lines)
    for host in ("localhost", f"127.0.0.1:{port}", f"[::1]:{port}"):
        lines, _ = raw_exchange(server, f"GET /api/jobs/{job['id']} HTTP/1.1\r\nHost: {host}\r\n"
                                        f"Connection: close\r\n\r\n".encode())
        assert lines[0] == "HTTP/1.1 200 OK", (host, lines)
    status, message = error_of(call(server, "POST", f"/api/jobs/{job['id']}/mask", mask_png(),
                                    {"Origin": "http://evil.example"}))  # cross-site request forgery
    assert status == 403 and json.loads(call(server, "GET", f"/api/jobs/{job['id']}")[2])["objects"] == []
    same_site = call(server, "POST", f"/api/jobs/{job['id']}/mask", mask_png(),
                     {"Origin": f"http://127.0.0.1:{port}"})
    assert same_site[0] == 200
