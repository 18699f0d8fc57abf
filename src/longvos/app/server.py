"""``longvos app``: a small web server (standard library only) for the page in ``static/`` and its JSON API.

Why not Gradio: the page needs an upload, a canvas to draw boxes and clicks on, a progress bar, a ``<video>`` and
two downloads. A hand-written page does all of that over this ~200-line server, installs nothing, starts in
milliseconds and never contacts the network, where Gradio would add some hundred megabytes of dependencies and
its own startup checks. The API (all under ``/api/jobs``; errors are ``{"error": message}``):

- ``POST /api/jobs`` (body: the video file; header ``X-Filename``) -> job status
- ``GET /api/jobs/<id>`` -> status: state (ready, queued, running, done, failed), frames, done, fps, objects, error
- ``GET /api/jobs/<id>/frame.jpg`` -> the first frame
- ``POST /api/jobs/<id>/prompt`` (JSON boxes/clicks, see :mod:`longvos.app.prompting`) -> status, the mask is set
- ``POST /api/jobs/<id>/mask`` (body: an index-mask PNG) -> status, the mask is set
- ``GET /api/jobs/<id>/prompt.png`` -> the first frame with the current mask over it
- ``POST /api/jobs/<id>/run`` -> status; ``GET .../latest.jpg`` -> the latest segmented frame while it runs
- ``GET /api/jobs/<id>/overlay.mp4`` (byte ranges, for seeking) and ``GET /api/jobs/<id>/masks.zip``
"""
from __future__ import annotations

import io
import json
import re
import shutil
import sys
import tempfile
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
from PIL import Image

from longvos.app.jobs import DONE, Job, JobNotFound, JobRunner, JobStore, first_frame, prompt_preview, \
    read_uploaded_mask, set_prompt_mask
from longvos.app.prompting import objects_from_json
from longvos.engine.frames import MaxSize
from longvos.engine.segmenter import Segmenter
from longvos.io.errors import InputError
from longvos.io.prompts import prompt_mask

STATIC_DIR = Path(__file__).with_name("static")
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}
COPY_BYTES = 1 << 16
MAX_JSON_BYTES = 1 << 20
_JOB_ROUTE = re.compile(r"^/api/jobs/([0-9a-f]{16})(?:/([a-z0-9.]+))?$")


class AppServer(ThreadingHTTPServer):
    """The HTTP server with the app's state: the model, the jobs and the runner. ``port=0`` picks a free port."""

    daemon_threads = True

    def __init__(self, segmenter: Segmenter, *, host: str = "127.0.0.1", port: int = 7860,
                 max_size: MaxSize = "auto", workdir: str | Path | None = None, max_jobs: int = 20,
                 verbose: bool = False):
        self.verbose = verbose
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="longvos-app-") if workdir is None else workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.jobs = JobStore(self.workdir, max_jobs)
        self.runner = JobRunner(segmenter, max_size)
        super().__init__((host, port), AppRequestHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/"

    def start_background(self) -> threading.Thread:
        """Serve on a daemon thread (for tests and notebooks); stop with :meth:`close`."""
        thread = threading.Thread(target=self.serve_forever, name="longvos-app-http", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Stop serving, stop the runner, and delete the work folder if the server made it."""
        self.shutdown()
        self.server_close()
        self.runner.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


class AppRequestHandler(BaseHTTPRequestHandler):
    server: AppServer
    protocol_version = "HTTP/1.1"  # keep-alive: the page polls status several times a second

    # -- routing ------------------------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if method == "GET" and path in ("/", "/index.html"):
                return self._send_file(STATIC_DIR / "index.html", STATIC_TYPES[".html"])
            if method == "GET" and path.startswith("/static/"):
                return self._static(path.removeprefix("/static/"))
            if method == "POST" and path == "/api/jobs":
                return self._send_json(self._create_job())
            match = _JOB_ROUTE.match(path)
            if match is None:
                return self._send_error(HTTPStatus.NOT_FOUND, f"no such page: {path}")
            job = self.server.jobs.get(match.group(1))
            action = match.group(2) or "status"
            # Action "x.y" on a job is the method _<get|post>_x_y below, as http.server's do_<METHOD> convention.
            handler = getattr(self, f"_{method.lower()}_{action.replace('.', '_')}", None)
            if handler is None:
                return self._send_error(HTTPStatus.NOT_FOUND, f"no such page: {method} {path}")
            handler(job)
        except JobNotFound as err:
            self._send_error(HTTPStatus.NOT_FOUND, f"no job {err.args[0]} (the server may have restarted)")
        except InputError as err:
            self._send_error(HTTPStatus.BAD_REQUEST, str(err))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away (a <video> often drops requests it no longer needs)
        except Exception as err:  # noqa: BLE001 - a bug or a disk error: answer, log, and keep serving
            traceback.print_exc()
            self._send_error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(err).__name__}: {err}")

    # -- job actions ----------------------------------------------------------------------------------------------

    def _create_job(self) -> dict[str, Any]:
        return self.server.jobs.create(self.rfile, self._content_length(), self._filename("video")).status()

    def _filename(self, default: str) -> str:
        """The uploaded file's name (the page percent-encodes it: headers cannot carry every character)."""
        return Path(unquote(self.headers.get("X-Filename", ""))).name or default

    def _get_status(self, job: Job) -> None:
        self._send_json(job.status())

    def _get_frame_jpg(self, job: Job) -> None:
        buffer = io.BytesIO()
        Image.fromarray(first_frame(job)).save(buffer, format="JPEG", quality=92)
        self._send_bytes(buffer.getvalue(), "image/jpeg")

    def _post_prompt(self, job: Job) -> None:
        length = self._content_length()
        if length > MAX_JSON_BYTES:
            raise InputError("the request is too large")
        try:
            payload = json.loads(self.rfile.read(length))
        except ValueError as err:
            raise InputError(f"the request is not JSON: {err}") from None
        objects = objects_from_json(payload)
        image = first_frame(job)
        ids = prompt_mask(image, objects) if objects else np.zeros(image.shape[:2], dtype=np.uint8)
        set_prompt_mask(job, ids)
        self._send_json(job.status())

    def _post_mask(self, job: Job) -> None:
        ids, palette = read_uploaded_mask(job, self.rfile, self._content_length(), self._filename("the mask"))
        set_prompt_mask(job, ids, palette)
        self._send_json(job.status())

    def _get_prompt_png(self, job: Job) -> None:
        self._send_bytes(prompt_preview(job, first_frame(job)), "image/png")

    def _post_run(self, job: Job) -> None:
        self.server.runner.submit(job)
        self._send_json(job.status())

    def _get_latest_jpg(self, job: Job) -> None:
        with job.lock:
            jpeg = job.preview_jpeg
        if jpeg is None:
            return self._send_error(HTTPStatus.NOT_FOUND, "no frame segmented yet")
        self._send_bytes(jpeg, "image/jpeg")

    def _get_overlay_mp4(self, job: Job) -> None:
        self._send_output(job, job.overlay_path, "video/mp4", f"{job.name}-overlay.mp4")

    def _get_masks_zip(self, job: Job) -> None:
        self._send_output(job, job.zip_path, "application/zip", f"{job.name}-masks.zip")

    # -- responses ------------------------------------------------------------------------------------------------

    def _static(self, name: str) -> None:
        path = STATIC_DIR / name
        if "/" in name or path.suffix not in STATIC_TYPES or not path.is_file():
            return self._send_error(HTTPStatus.NOT_FOUND, f"no such file: {name}")
        self._send_file(path, STATIC_TYPES[path.suffix])

    def _send_output(self, job: Job, path: Path, content_type: str, download_name: str) -> None:
        if job.state != DONE or not path.is_file():
            return self._send_error(HTTPStatus.CONFLICT, f"{download_name} is made when segmentation finishes")
        self._send_file(path, content_type, download_name)

    def _content_length(self) -> int:
        try:
            length = int(self.headers["Content-Length"])
        except (TypeError, ValueError):
            raise InputError("the request has no Content-Length") from None
        if length < 0:
            raise InputError("the request has a negative Content-Length")
        return length

    def _send_json(self, payload: dict[str, Any], status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send_bytes(json.dumps(payload).encode(), "application/json", status)

    def _send_error(self, status: HTTPStatus, message: str) -> None:
        # A failed POST may have left part of its body unread, which would corrupt the next request on this
        # keep-alive connection: close it instead (cheaper than reading, say, a rejected upload).
        self.close_connection = self.close_connection or self.command == "POST"
        self._send_json({"error": message}, status)

    def _send_bytes(self, body: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_file(self, path: Path, content_type: str, download_name: str | None = None) -> None:
        """Stream a file in chunks; honours one byte range (``<video>`` seeks with them)."""
        size = path.stat().st_size
        start, end = 0, size - 1
        byte_range = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        partial = byte_range is not None and byte_range.group(0) != "bytes=-" and size > 0
        if partial:
            first, last = byte_range.group(1), byte_range.group(2)
            start, end = (size - int(last), size - 1) if not first else (int(first), min(int(last or end), end))
            start = max(start, 0)
            if start > end:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self.send_response(HTTPStatus.PARTIAL_CONTENT if partial else HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        if download_name:
            self.send_header("Content-Disposition", f'attachment; filename="{download_name}"')
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(path, "rb") as source:
            source.seek(start)
            remaining = end - start + 1
            while remaining > 0:
                chunk = source.read(min(COPY_BYTES, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server signature
        if self.server.verbose:
            sys.stderr.write(f"longvos app: {self.address_string()} {format % args}\n")
