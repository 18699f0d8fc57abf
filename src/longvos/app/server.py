"""``longvos app``: a small web server (standard library only) for the page in ``static/`` and its JSON API.

Why not Gradio: the page needs an upload, a canvas to draw boxes and clicks on, a progress bar, a ``<video>`` and
two downloads. A hand-written page does all of that over this ~200-line server, installs nothing, starts in
milliseconds and never contacts the network, where Gradio would add some hundred megabytes of dependencies and
its own startup checks. The API (all under ``/api/jobs``; errors are ``{"error": message}``):

- ``POST /api/jobs`` (body: the video file; header ``X-Filename``) -> job status
- ``GET /api/jobs/<id>`` -> status: state (ready, queued, running, done, failed), frames, done, fps, objects, error
- ``GET /api/jobs/<id>/frame.jpg`` -> the first frame
- ``POST /api/jobs/<id>/prompt`` (JSON boxes/clicks, see :func:`longvos.prompts.objects_from_json`) -> status, the
  mask is set
- ``POST /api/jobs/<id>/mask`` (body: an index-mask PNG) -> status, the mask is set
- ``GET /api/jobs/<id>/prompt.png`` -> the first frame with the current mask over it
- ``POST /api/jobs/<id>/run`` -> status; ``GET .../latest.jpg`` -> the latest segmented frame while it runs
- ``GET /api/jobs/<id>/overlay.mp4`` (byte ranges, for seeking) and ``GET /api/jobs/<id>/masks.zip``

What it guarantees, whatever serves the page: it listens on a loopback address unless ``allow_remote`` (it has no
login: anyone who reaches the port can use it), and then answers only requests addressed to a loopback name (no
DNS rebinding) and POSTs from its own page (no cross-site requests); no client text reaches a header, a path or a
zip entry (downloads are named in safe ASCII, the original name only percent-encoded in ``filename*``); a bounded
number of connections, each with a socket timeout, and a bounded number of image jobs (decoding, GrabCut) at once;
image sizes checked before decoding; a disk quota for the work folder; errors are one line without server paths
(400 for bad input, 413 over a limit, 503 when busy); :meth:`AppServer.close` cancels the running job, waits for it
and removes the work folder.
"""
from __future__ import annotations

import io
import ipaddress
import json
import re
import shutil
import socket
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import numpy as np
from PIL import Image

from longvos.app.jobs import DONE, MAX_VIDEO_PIXELS, Job, JobNotFound, JobRunner, JobStore, display_name, \
    first_frame, prompt_preview, public_message, read_uploaded_mask, set_prompt_mask
from longvos.engine.frames import MaxSize
from longvos.engine.segmenter import Segmenter
from longvos.io.errors import InputError
from longvos.prompts import objects_from_json, prompt_mask

STATIC_DIR = Path(__file__).with_name("static")
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}
COPY_BYTES = 1 << 16
MAX_JSON_BYTES = 1 << 20
_JOB_ROUTE = re.compile(r"^/api/jobs/([0-9a-f]{16})(?:/([a-z0-9.]+))?$")
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is this machine only; ``""`` and ``0.0.0.0`` are every interface."""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)} if host else set()
    except (OSError, UnicodeError):
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%", 1)[0]).is_loopback for a in addresses)


class RemoteNotAllowed(ValueError):
    """A non-loopback address without ``allow_remote``."""


class ServerBusy(InputError):
    """Too many image jobs at once for too long: HTTP 503."""

    status = 503


class Forbidden(InputError):
    """A request from another site or for another host name: HTTP 403."""

    status = 403


class AppServer(ThreadingHTTPServer):
    """The HTTP server with the app's state: the model, the jobs and the runner. ``port=0`` picks a free port.

    The limits: ``max_connections`` connections are served at once (more wait to be accepted), each socket read
    or write waits at most ``request_timeout`` seconds, ``max_parallel_work`` requests decode frames or run GrabCut
    at once (others wait up to ``work_wait`` seconds, then get a 503), uploads are at most ``max_upload_bytes`` and
    all jobs together hold at most ``quota_bytes`` of disk, video frames at most ``max_video_pixels``.
    A non-loopback ``host`` needs ``allow_remote=True``: the app has no login.
    """

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, segmenter: Segmenter, *, host: str = "127.0.0.1", port: int = 7860,
                 max_size: MaxSize = "auto", workdir: str | Path | None = None, max_jobs: int = 20,
                 verbose: bool = False, allow_remote: bool = False, request_timeout: float = 30.0,
                 max_connections: int = 32, max_parallel_work: int = 2, work_wait: float = 60.0,
                 max_upload_bytes: int = 4 << 30, quota_bytes: int = 20 << 30,
                 max_video_pixels: int = MAX_VIDEO_PIXELS):
        if not allow_remote and not is_loopback(host):
            raise RemoteNotAllowed(f"{host or 'every interface'} is not a loopback address: anyone who can reach "
                                   f"it could use the app (it has no login); allow that explicitly "
                                   f"(allow_remote=True, `longvos app --allow-remote`)")
        self.verbose = verbose
        self.allow_remote = allow_remote
        self.request_timeout = request_timeout
        self.work_wait = work_wait
        self._connection_slots = threading.BoundedSemaphore(max(1, max_connections))
        self._work_slots = threading.BoundedSemaphore(max(1, max_parallel_work))
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._connections_lock = threading.Lock()
        self._closing = threading.Event()
        self._closed = False
        self._serving = False
        self._serve_lock = threading.Lock()
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="longvos-app-") if workdir is None else workdir)
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.jobs = JobStore(self.workdir, max_jobs, max_upload_bytes=max_upload_bytes, quota_bytes=quota_bytes,
                                 max_video_pixels=max_video_pixels)
            if ":" in host.strip("[]"):
                self.address_family = socket.AF_INET6
            super().__init__((host.strip("[]"), port), AppRequestHandler)
        except BaseException:
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        self.runner = JobRunner(segmenter, max_size)  # started last: nothing to stop if binding failed

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1" if self.address_family == socket.AF_INET else "::1"
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        with self._serve_lock:  # close() calls shutdown() only for a loop that runs or is about to
            if self._closing.is_set():
                return
            self._serving = True
        super().serve_forever(poll_interval)

    def start_background(self) -> threading.Thread:
        """Serve on a daemon thread (for tests and notebooks); stop with :meth:`close`."""
        thread = threading.Thread(target=self.serve_forever, name="longvos-app-http", daemon=True)
        thread.start()
        return thread

    # -- bounded concurrency: a fixed number of connection threads, each connection with a socket timeout ----------

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        """Serve the connection on its own thread once one of ``max_connections`` slots is free (until then the
        accept loop waits and new connections queue in the kernel)."""
        while not self._connection_slots.acquire(timeout=0.2):
            if self._closing.is_set():
                self.shutdown_request(request)
                return
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address),
                                  name="longvos-app-request", daemon=True)
        with self._connections_lock:
            self._connections[request] = thread
        thread.start()

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        try:
            if not self._closing.is_set():
                self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - one connection's failure never stops the server
            self.handle_error(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.pop(request, None)
            self.shutdown_request(request)
            self._connection_slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # timeouts, resets: the client's business
            return
        super().handle_error(request, client_address)

    @contextmanager
    def image_work(self) -> Iterator[None]:
        """Hold one of ``max_parallel_work`` slots for work that decodes frames or runs GrabCut (memory-heavy)."""
        if not self._work_slots.acquire(timeout=self.work_wait):
            raise ServerBusy("the server is busy with other images; try again in a moment")
        try:
            yield
        finally:
            self._work_slots.release()

    # -- stopping -------------------------------------------------------------------------------------------------

    def close(self, timeout: float = 30.0) -> None:
        """Stop: cancel the running job and wait for it (at most ``timeout`` seconds: a cancelled job stops after
        the frame it is on), stop serving, drop open connections (an upload in flight is abandoned and its folder
        removed), and delete the work folder if the server made it (and no job still writes into it)."""
        if self._closed:
            return
        self._closed = True
        with self._serve_lock:
            self._closing.set()
            serving = self._serving
        if not self.runner.stop(timeout=timeout):
            print(f"longvos app: warning: the running job did not stop within {timeout:g} s", file=sys.stderr)
        if serving:
            self.shutdown()
        with self._connections_lock:
            connections = dict(self._connections)
        for request in connections:
            try:
                request.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked reading an upload
            except OSError:
                pass
        for thread in connections.values():
            thread.join(timeout=5)
        self.server_close()
        if self._own_workdir and not self.runner.alive:  # never delete what a runner still writes into
            shutil.rmtree(self.workdir, ignore_errors=True)


class AppRequestHandler(BaseHTTPRequestHandler):
    server: AppServer
    protocol_version = "HTTP/1.1"  # keep-alive: the page polls status several times a second

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # StreamRequestHandler sets it on the socket
        super().setup()

    # -- routing ------------------------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        self._response_started = False
        path = self.path.split("?", 1)[0]
        try:
            self._check_origin()
            if method == "GET" and path in ("/", "/index.html"):
                return self._send_file(STATIC_DIR / "index.html", STATIC_TYPES[".html"])
            if method == "GET" and path.startswith("/static/"):
                return self._static(path.removeprefix("/static/"))
            if method == "POST" and path == "/api/jobs":
                return self._send_json(self._create_job())
            match = _JOB_ROUTE.match(path)
            if match is None:
                return self._send_error(HTTPStatus.NOT_FOUND, "no such page")
            job = self.server.jobs.get(match.group(1))
            action = match.group(2) or "status"
            # Action "x.y" on a job is the method _<get|post>_x_y below, as http.server's do_<METHOD> convention.
            handler = getattr(self, f"_{method.lower()}_{action.replace('.', '_')}", None)
            if handler is None:
                return self._send_error(HTTPStatus.NOT_FOUND, "no such page")
            handler(job)
        except JobNotFound as err:
            self._send_error(HTTPStatus.NOT_FOUND, f"no job {err.args[0]} (the server may have restarted)")
        except InputError as err:
            self._send_error(HTTPStatus(getattr(err, "status", HTTPStatus.BAD_REQUEST)), str(err))
        except (ConnectionError, TimeoutError):
            self.close_connection = True  # the client went away or stalled (a <video> drops requests it no
            # longer needs); an upload's folder is already gone
        except Exception as err:  # noqa: BLE001 - a bug or a disk error: answer, log, and keep serving
            traceback.print_exc()
            self._send_error(HTTPStatus.INTERNAL_SERVER_ERROR,
                             f"internal error ({type(err).__name__}); the server's log has the details")

    def _check_origin(self) -> None:
        """Refuse requests addressed to a host name that is not this machine's (a DNS-rebinding page) unless
        remote use is allowed, and POSTs from another site's page (cross-site request forgery)."""
        host = self.headers.get("Host")
        if host is not None and not self.server.allow_remote:
            try:
                name = urlsplit(f"//{host}").hostname or ""
            except ValueError:
                name = ""
            if not (name in LOOPBACK_NAMES or _is_loopback_ip(name)):
                raise Forbidden("this server answers only requests for 127.0.0.1 or localhost")
        origin = self.headers.get("Origin")
        if self.command == "POST" and origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            raise Forbidden("requests from other sites are not accepted")

    # -- job actions ----------------------------------------------------------------------------------------------

    def _create_job(self) -> dict[str, Any]:
        return self.server.jobs.create(self.rfile, self._content_length(), self._filename("video"),
                                       self.server.image_work).status()

    def _filename(self, default: str) -> str:
        """The uploaded file's name, for messages and display only (the page percent-encodes it: headers cannot
        carry every character). It never names a file on the server nor goes into a header as it is."""
        return display_name(unquote(self.headers.get("X-Filename", ""), errors="replace"), default)

    def _get_status(self, job: Job) -> None:
        self._send_json(job.status())

    def _get_frame_jpg(self, job: Job) -> None:
        with self.server.image_work():
            buffer = io.BytesIO()
            Image.fromarray(first_frame(job)).save(buffer, format="JPEG", quality=92)
        self._send_bytes(buffer.getvalue(), "image/jpeg")

    def _post_prompt(self, job: Job) -> None:
        length = self._content_length()
        if length > MAX_JSON_BYTES:
            raise InputError("the request is too large")
        try:
            payload = json.loads(self.rfile.read(length), parse_constant=_no_constant)
        except InputError:
            raise
        except (ValueError, RecursionError) as err:
            reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
            raise InputError(f"the request is not JSON: {reason}") from None
        objects = objects_from_json(payload)
        with self.server.image_work():
            image = first_frame(job)
            ids = prompt_mask(image, objects) if objects else np.zeros(image.shape[:2], dtype=np.uint8)
        set_prompt_mask(job, ids)
        self._send_json(job.status())

    def _post_mask(self, job: Job) -> None:
        length = self._content_length()
        with self.server.jobs.reserve(length, "the mask"):
            ids, palette = read_uploaded_mask(job, self.rfile, length, self._filename("the mask"),
                                              self.server.image_work)
        set_prompt_mask(job, ids, palette)
        self._send_json(job.status())

    def _get_prompt_png(self, job: Job) -> None:
        with self.server.image_work():
            png = prompt_preview(job, first_frame(job))
        self._send_bytes(png, "image/png")

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
        self._send_output(job, job.overlay_path, "video/mp4", "overlay.mp4")

    def _get_masks_zip(self, job: Job) -> None:
        self._send_output(job, job.zip_path, "application/zip", "masks.zip")

    # -- responses ------------------------------------------------------------------------------------------------

    def _static(self, name: str) -> None:
        path = STATIC_DIR / name
        if "/" in name or path.suffix not in STATIC_TYPES or not path.is_file():
            return self._send_error(HTTPStatus.NOT_FOUND, "no such file")
        self._send_file(path, STATIC_TYPES[path.suffix])

    def _send_output(self, job: Job, path: Path, content_type: str, kind: str) -> None:
        if job.state != DONE or not path.is_file():
            return self._send_error(HTTPStatus.CONFLICT, f"the {kind} is made when segmentation finishes")
        self._send_file(path, content_type, content_disposition(f"{job.safe_name}-{kind}", f"{job.name}-{kind}"))

    def _content_length(self) -> int:
        try:
            length = int(self.headers["Content-Length"])
        except (TypeError, ValueError):
            raise InputError("the request has no Content-Length") from None
        if length < 0:
            raise InputError("the request has a negative Content-Length")
        return length

    def send_response(self, code: int, message: str | None = None) -> None:
        self._response_started = True
        super().send_response(code, message)

    def send_header(self, keyword: str, value: str) -> None:
        """Every header is built by the server: one line of ASCII, or a bug (never sent)."""
        value = str(value)
        if not value.isascii() or any(char in value for char in "\r\n\0"):
            raise ValueError(f"refusing to send an unsafe {keyword} header")
        super().send_header(keyword, value)

    def _send_json(self, payload: dict[str, Any], status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send_bytes(json.dumps(payload).encode(), "application/json", status)

    def _send_error(self, status: HTTPStatus, message: str) -> None:
        if getattr(self, "_response_started", False):  # too late for another status line: end the connection
            self.close_connection = True
            return
        # A failed POST may have left part of its body unread, which would corrupt the next request on this
        # keep-alive connection: close it instead (cheaper than reading, say, a rejected upload).
        self.close_connection = self.close_connection or self.command == "POST"
        try:
            self._send_json({"error": public_message(message, self.server.workdir)}, status)
        except OSError:
            self.close_connection = True

    def _send_bytes(self, body: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_file(self, path: Path, content_type: str, disposition: str | None = None) -> None:
        """Stream a file in chunks; honours one byte range (``<video>`` seeks with them)."""
        size = path.stat().st_size
        start, end = 0, size - 1
        byte_range = re.fullmatch(r"bytes=(\d{1,18})?-(\d{1,18})?", self.headers.get("Range", "").strip())
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
        if disposition:
            self.send_header("Content-Disposition", disposition)
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
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
            text = (format % args).encode("unicode_escape").decode("ascii")  # a request cannot forge log lines
            sys.stderr.write(f"longvos app: {self.address_string()} {text}\n")


def content_disposition(safe_name: str, original: str) -> str:
    """``attachment`` with ``safe_name`` (safe ASCII, see :func:`~longvos.app.jobs.safe_ascii_name`) and, where the
    original differs, the original percent-encoded as UTF-8 (RFC 5987/6266 ``filename*``)."""
    header = f'attachment; filename="{safe_name}"'
    if original != safe_name:
        header += f"; filename*=UTF-8''{quote(original, safe='')}"
    return header


def _is_loopback_ip(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _no_constant(name: str) -> None:
    raise InputError(f"the request has {name}: coordinates must be finite numbers")
