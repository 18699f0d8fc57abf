"""The app's front door: an ASGI middleware around all of Gradio's app (outside its own middleware), and the loopback
test of ``--host``.

Gradio serves the page, the uploads and the event queue; this middleware adds what a local tool with no login
needs on top (Gradio's own CORS rules only hide responses from other sites' scripts, they refuse nothing):

- requests addressed to a host name other than a loopback name, the bound address or a configured public name are
  refused (403): a page on another site that rebinds its DNS name to this machine cannot drive the app;
- requests that change something (POST, PUT, ...) from another site's page are refused (403): a form on another
  site cannot upload into the work folder (cross-site request forgery);
- only the routes the page and Gradio's client use are served (:data:`ROUTES`; others: 404), and a ``file=`` URL
  only for a file in the work folder (Gradio would otherwise fetch a URL, or write a screen recording to the
  system's temporary folder);
- a request body has a stated size (``Content-Length``; a ``Transfer-Encoding`` is refused with 411, as h11 would
  let ``chunked`` override the stated size): an upload at most ``max_upload_bytes``, which must fit the work
  folder's disk quota as it is (a reservation is held while it streams in; an upload never deletes another
  session's video to make room: a full work folder refuses it, 507), anything else at most :data:`MAX_BODY_BYTES`
  (413). The body is counted as it arrives and cut off past its stated size; in an upload, a form field that is not
  a file (Gradio keeps those in memory) is cut off past :data:`MAX_FIELD_BYTES`, and the headers of a part past
  :data:`MAX_PART_HEADER_BYTES` (413). A body that stops arriving for ``chunk_timeout`` seconds, or that falls
  behind :data:`MIN_BODY_RATE` after its first :data:`BODY_BASE_SECONDS` (checked as it arrives, not only at the
  end: a trickle cannot hold an upload slot and its reservation for long), is cut off (408); an upload that is not
  a well-formed multipart form is refused (400);
- at most ``max_uploads`` uploads and ``max_requests`` requests are served at once (more: 503), and at most
  ``max_client_uploads`` and ``max_client_requests`` of them for one client address (more: 429), so that one
  client cannot hold them all (the page's event streams and heartbeat are requests that stay open);
- responses carry only the headers in :data:`RESPONSE_HEADERS`, and a ``GET`` reaches Gradio without request
  headers of those names (Gradio copies request headers into the response of a ``Range`` request, and its CORS
  layer echoes request headers): no request text reaches a response header.

Refusals are one line of plain text built here: no request text is echoed into them. Nothing here imports Gradio.
"""
from __future__ import annotations

import asyncio
import ipaddress
import math
import re
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from longvos.app.workspace import TooLarge, Workspace, format_size
from longvos.io.errors import InputError

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
#: Largest body of a request that is not an upload (event data, a cancel): they are small JSON.
MAX_BODY_BYTES = 1 << 20
#: Largest form field of an upload that is not a file (Gradio keeps such fields in memory).
MAX_FIELD_BYTES = 64 << 10
#: Largest headers of one part of an upload (its Content-Disposition, Content-Type, ...), all together.
MAX_PART_HEADER_BYTES = 8 << 10
#: Files one upload request may hold: the page sends one. Gradio takes up to 1000, each an open temporary file
#: and a folder of its own in the work folder.
MAX_UPLOAD_FILES = 4
#: Request headers the guard judges, which a request may send once: a second copy could be the one Gradio reads.
SINGLE_HEADERS = frozenset({"host", "origin", "content-type", "content-length", "transfer-encoding"})
MAX_UPLOADS = 4
MAX_REQUESTS = 64
#: Of those, at most this many for one client address (a browser opens at most 6 connections to a server).
MAX_CLIENT_UPLOADS = 2
MAX_CLIENT_REQUESTS = 16
#: Seconds a request body may go without a byte arriving.
CHUNK_TIMEOUT = 30.0
#: A request body must have arrived, at any time ``t`` seconds after it began, up to ``(t - BODY_BASE_SECONDS) *
#: MIN_BODY_RATE`` bytes (so all of it within this many seconds plus its stated size at that rate).
BODY_BASE_SECONDS = 60.0
#: Slowest average rate (bytes per second) a request body may arrive at, past :data:`BODY_BASE_SECONDS`.
MIN_BODY_RATE = 256 << 10
#: The refusal of an upload that does not fit the work folder's quota (or the disk) as it is: fixed text.
WORK_FOLDER_FULL = "the work folder is full; try again when a video has finished or been closed"
_GET = ("GET", "HEAD")
#: What is served: (methods, path pattern). The page (``/``, its config, assets and theme), Gradio's client
#: (``/gradio_api/info``), the event queue (join, its event stream, cancel), the session heartbeat, uploads and their
#: progress, Gradio's start-up call, and files (``file=``, further checked: only files in the work folder).
ROUTES = [(methods, re.compile(pattern)) for methods, pattern in [
    (_GET, r"/"),
    (_GET, r"/config/?"),
    (_GET, r"/theme\.css"),
    (_GET, r"/favicon\.ico"),
    (_GET, r"/(?:assets|static|svelte)/[^\x00]+"),
    (_GET, r"/gradio_api/info/?"),
    (_GET, r"/gradio_api/heartbeat/[\w-]+"),
    (_GET, r"/gradio_api/queue/data"),
    (_GET, r"/gradio_api/upload_progress"),
    (_GET, r"/gradio_api/startup-events"),  # Gradio's launch starts its queue through it
    (_GET, r"/gradio_api/file=[^\x00]+"),
    (("POST",), r"/gradio_api/queue/join"),
    (("POST",), r"/gradio_api/cancel"),
    (("POST",), r"/gradio_api/upload"),
]]
UPLOAD_PATH = "/gradio_api/upload"
FILE_PREFIX = "/gradio_api/file="
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
#: The response headers passed on; any other header (and every header of a refusal) is dropped.
RESPONSE_HEADERS = frozenset({
    b"content-type", b"content-length", b"content-disposition", b"content-range", b"content-encoding",
    b"accept-ranges", b"cache-control", b"etag", b"last-modified", b"vary", b"x-content-type-options",
    b"connection",
})

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class RemoteNotAllowed(InputError):
    """A host that other machines can reach, without ``allow_remote``."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is this machine only; ``""`` and ``0.0.0.0`` are every interface."""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES or _is_loopback_address(host):
        return True
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)} if host else set()
    except (OSError, UnicodeError):
        return False
    return bool(addresses) and all(_is_loopback_address(address) for address in addresses)


def _is_loopback_address(text: str) -> bool:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    """``127.0.0.1:7860`` -> ``127.0.0.1``, ``[::1]:7860`` -> ``::1``; ``""`` for what does not parse."""
    try:
        return (urlsplit(f"//{host_header}").hostname or "").lower()
    except ValueError:
        return ""


def served_host_names(host: str, public_names: Iterable[str] = ()) -> frozenset[str]:
    """The host names (beyond the loopback ones) that requests may be addressed to: the bound address (unless it is
    every interface) and ``public_names`` (names or addresses, with or without a port)."""
    names = {_host_name(name) or name.strip().strip("[]").lower() for name in public_names}
    if host.strip().strip("[]") not in WILDCARD_HOSTS:
        names.add(host.strip().strip("[]").lower())
    return frozenset(name for name in names if name)


class RequestGuard:
    """ASGI middleware (see the module docstring). ``workspace`` keeps the disk quota; ``host`` is the bound address
    and ``public_names`` further host names that requests may be addressed to (with ``allow_remote`` only). The
    other limits default to this module's constants (:data:`MAX_BODY_BYTES`, ...) as they are when it is made."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, workspace: Workspace, allow_remote: bool,
                 max_upload_bytes: int, host: str = "127.0.0.1", public_names: Iterable[str] = (),
                 max_body_bytes: int | None = None, max_field_bytes: int | None = None,
                 max_uploads: int | None = None, max_requests: int | None = None,
                 max_client_uploads: int | None = None, max_client_requests: int | None = None,
                 chunk_timeout: float | None = None, body_base_seconds: float | None = None,
                 min_body_rate: float | None = None, max_part_header_bytes: int | None = None,
                 verbose: bool = False):
        self.app, self.workspace = app, workspace
        self.allow_remote, self.max_upload_bytes, self.verbose = allow_remote, max_upload_bytes, verbose
        self.host_names = served_host_names(host, public_names) if allow_remote else frozenset()
        self.max_body_bytes = MAX_BODY_BYTES if max_body_bytes is None else max_body_bytes
        self.max_field_bytes = MAX_FIELD_BYTES if max_field_bytes is None else max_field_bytes
        self.max_uploads = MAX_UPLOADS if max_uploads is None else max_uploads
        self.max_requests = MAX_REQUESTS if max_requests is None else max_requests
        self.max_client_uploads = MAX_CLIENT_UPLOADS if max_client_uploads is None else max_client_uploads
        self.max_client_requests = MAX_CLIENT_REQUESTS if max_client_requests is None else max_client_requests
        self.chunk_timeout = CHUNK_TIMEOUT if chunk_timeout is None else chunk_timeout
        self.body_base_seconds = BODY_BASE_SECONDS if body_base_seconds is None else body_base_seconds
        self.min_body_rate = MIN_BODY_RATE if min_body_rate is None else min_body_rate
        self.max_part_header_bytes = MAX_PART_HEADER_BYTES if max_part_header_bytes is None else max_part_header_bytes
        self.uploads = self.requests = 0  # in flight (only changed on the event loop's thread)
        self.client_uploads: dict[str, int] = {}  # in flight per client address (none: not listed)
        self.client_requests: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # the page uses no WebSocket
            return await _refuse(scope, send, 404, "not found")
        if self.requests >= self.max_requests:
            return await _refuse(scope, send, 503, "the server is busy; try again in a moment")
        client = _client(scope)
        if self.client_requests.get(client, 0) >= self.max_client_requests:
            return await _refuse(scope, send, 429, f"{self.max_client_requests} requests from this address are "
                                                   f"going on; try again when one has finished")
        self.requests += 1
        _count(self.client_requests, client, 1)
        try:
            await self._request(scope, receive, send)
        finally:
            self.requests -= 1
            _count(self.client_requests, client, -1)

    async def _request(self, scope: Scope, receive: Receive, send: Send) -> None:
        names = [key.decode("latin-1").lower() for key, _ in scope["headers"]]
        repeated = sorted({name for name in names if name in SINGLE_HEADERS and names.count(name) > 1})
        if repeated:  # the guard would judge one copy and Gradio read another (the first, where this kept the last)
            return await _refuse(scope, send, 400, f"a request may not repeat its {repeated[0]} header")
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        method, path = scope["method"], scope["path"]
        if self.verbose:  # escaped: a request cannot forge log lines
            client = (scope.get("client") or ("?",))[0]
            line = f"{client} {method} {path}"
            print(f"longvos app: {line.encode('unicode_escape').decode('ascii')}", file=sys.stderr, flush=True)
        host = headers.get("host", "")
        name = _host_name(host)
        if not (name in LOOPBACK_NAMES or _is_loopback_address(name) or name in self.host_names):
            names = "127.0.0.1 or localhost" + (" or its public names" if self.allow_remote else "")
            return await _refuse(scope, send, 403, f"this server answers only requests for {names}")
        origin = headers.get("origin")
        if method not in (*_GET, "OPTIONS") and origin is not None and _netloc(origin) != host.lower():
            return await _refuse(scope, send, 403, "requests from other sites are not accepted")
        if not self._served(method, path):
            return await _refuse(scope, send, 404, "not found")
        if "transfer-encoding" in headers:
            return await _refuse(scope, send, 411, "a request must state its size (Content-Length), not use a "
                                                   "Transfer-Encoding")
        length_header = headers.get("content-length")
        if length_header is None and method not in _GET:
            return await _refuse(scope, send, 411, "a request must state its size (Content-Length)")
        length = int(length_header or 0)  # h11 has checked it: digits only
        if method == "POST" and path == UPLOAD_PATH:
            return await self._upload(scope, receive, send, length, headers.get("content-type", ""))
        if length > self.max_body_bytes:
            return await _refuse(scope, send, 413, f"a request body is at most {format_size(self.max_body_bytes)}")
        if method in _GET:  # nothing Gradio could copy into its answer passes the response filter
            scope = {**scope, "headers": [(key, value) for key, value in scope["headers"]
                                          if key.lower() not in RESPONSE_HEADERS]}
        await self._serve(scope, self._body(receive, length), send)

    def _body(self, receive: Receive, length: int, watch: _FieldWatch | None = None) -> _Body:
        """The body of a request that states ``length`` bytes, with its chunk timeout and its minimum rate."""
        return _Body(receive, length, self.chunk_timeout, self.body_base_seconds, self.min_body_rate, watch)

    def _served(self, method: str, path: str) -> bool:
        if not any(method in methods and pattern.fullmatch(path) for methods, pattern in ROUTES):
            return False
        if path.startswith(FILE_PREFIX):  # no URL (Gradio would fetch it), only files in the work folder
            target = path[len(FILE_PREFIX):]
            if _URL_SCHEME.match(target) or target.startswith("//"):
                return False
            try:
                return Path(target).is_absolute() and Path(target).resolve().is_relative_to(self.workspace.root)
            except (OSError, ValueError):
                return False
        return True

    async def _upload(self, scope: Scope, receive: Receive, send: Send, length: int, content_type: str) -> None:
        if length > self.max_upload_bytes:
            return await _refuse(scope, send, 413, f"the file is over the upload limit of "
                                                   f"{format_size(self.max_upload_bytes)}")
        if self.uploads >= self.max_uploads:
            return await _refuse(scope, send, 503, f"{self.max_uploads} uploads are going on; try again when one "
                                                   f"has finished")
        client = _client(scope)
        if self.client_uploads.get(client, 0) >= self.max_client_uploads:
            return await _refuse(scope, send, 429, f"{self.max_client_uploads} uploads from this address are "
                                                   f"going on; try again when one has finished")
        try:
            watch = _FieldWatch.of(content_type, self.max_field_bytes, self.max_part_header_bytes)
        except ValueError:  # python-multipart refuses a boundary over 256 characters
            return await _refuse(scope, send, 400, "the upload is not a valid multipart form: its boundary is "
                                                   "refused (at most 256 characters)")
        self.uploads += 1
        _count(self.client_uploads, client, 1)
        try:
            try:  # measuring the work folder walks it: off the event loop. Bytes that may never arrive delete
                # no other session's video: only room the work folder has (stale uploads aside) is reserved.
                await asyncio.to_thread(self.workspace.reserve, length, "the upload", evict=False)
            except TooLarge:
                if length > self.workspace.quota_bytes:
                    return await _refuse(scope, send, 413, f"the file is over the work folder's quota of "
                                                           f"{format_size(self.workspace.quota_bytes)}")
                return await _refuse(scope, send, 507, WORK_FOLDER_FULL)
            try:
                await self._serve(scope, self._body(receive, length, watch), send)
            finally:
                self.workspace.release(length)  # the file is on disk now (and counted there), or was never written
        finally:
            self.uploads -= 1
            _count(self.client_uploads, client, -1)

    def _names_ours(self, path: str) -> bool:
        """Whether a file Gradio serves at ``path`` has a name longvos gave it (a job's files: their download name
        may go into a Content-Disposition); an upload not yet taken by a job keeps the name it was sent with."""
        if not path.startswith(FILE_PREFIX):
            return True
        try:
            return Path(path[len(FILE_PREFIX):]).resolve().is_relative_to(self.workspace.jobs_dir.resolve())
        except (OSError, ValueError):
            return False

    async def _serve(self, scope: Scope, body: _Body, send: Send) -> None:
        """Gradio's answer, with only :data:`RESPONSE_HEADERS`; where the body was cut off, a refusal instead
        (the connection is then closed)."""
        started = False
        allowed = RESPONSE_HEADERS if self._names_ours(scope["path"]) else RESPONSE_HEADERS - {b"content-disposition"}

        async def filtered_send(message: dict[str, Any]) -> None:
            nonlocal started
            if body.cut is not None:  # Gradio's answer to a body cut off short (an error): ours goes instead
                return
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [(key, value) for key, value in message.get("headers", [])
                                                  if key.lower() in allowed]}
            await send(message)

        try:
            await self.app(scope, body, filtered_send)
        except Exception:  # noqa: BLE001 - what cutting the body off short makes Gradio raise
            if body.cut is None:
                raise
        if body.cut is not None:
            if started:  # too late for an answer: an error ends the connection
                raise ConnectionAbortedError(body.cut[1])
            await _refuse(scope, send, *body.cut)


class _Body:
    """The request body as it arrives (an ASGI ``receive``): counted against its stated ``length``, each chunk
    awaited at most ``timeout`` seconds, and ``base + n / rate`` seconds after this is made at least ``n`` bytes
    received (``rate`` bytes per second after a grace of ``base`` seconds, all along: a trickle is cut off early,
    not only at the end), upload fields checked by ``watch``. Where one of these fails, the app gets a disconnect
    and :attr:`cut` holds the refusal (status, message)."""

    def __init__(self, receive: Receive, length: int, timeout: float, base: float = math.inf, rate: float = 1.0,
                 watch: _FieldWatch | None = None):
        self.receive, self.length, self.timeout, self.watch = receive, length, timeout, watch
        self.base, self.rate, self.started = base, rate, time.monotonic()
        self.received = 0
        self.complete = False  # the whole body arrived: from here on, receive only waits for a disconnect
        self.cut: tuple[int, str] | None = None

    async def __call__(self) -> dict[str, Any]:
        if self.cut is not None:
            return {"type": "http.disconnect"}
        if self.complete:
            return await self.receive()
        # When the bytes received so far stop being enough: the next one must come before then.
        left = self.started + self.base + self.received / self.rate - time.monotonic()
        try:
            message = await asyncio.wait_for(self.receive(), max(0.0, min(self.timeout, left)))
        except asyncio.TimeoutError:
            if left < self.timeout:
                return self._cut(408, f"the request body arrived too slowly (under {format_size(self.rate)}/s "
                                      f"after its first {self.base:g} s)")
            return self._cut(408, f"the request body stopped arriving (nothing for {self.timeout:g} s)")
        if message["type"] != "http.request":
            return message
        chunk = message.get("body", b"")
        self.received += len(chunk)
        if self.received > self.length:
            return self._cut(413, "the request body is longer than its Content-Length")
        if self.watch is not None and chunk and not self.watch.feed(chunk):
            return self._cut(413, self.watch.over)
        if not message.get("more_body", False):
            self.complete = True
        return message

    def _cut(self, status: int, message: str) -> dict[str, Any]:
        self.cut = (status, message)
        return {"type": "http.disconnect"}


class _FieldWatch:
    """Follows a multipart upload as it streams in and tells when a part without a file name (a plain form field,
    which Gradio keeps in memory) grows past ``limit`` bytes, or the headers of a part (which the parser buffers,
    and so does this) past ``header_limit`` bytes; :attr:`over` is then the refusal's message."""

    def __init__(self, boundary: bytes, limit: int, header_limit: int = MAX_PART_HEADER_BYTES):
        from python_multipart.multipart import MultipartParser

        self.limit, self.header_limit, self.field_bytes, self.in_field = limit, header_limit, 0, False
        self.over: str | None = None
        self.header_bytes = 0  # of the part's headers so far, names and values
        self.files = 0  # parts with a file name so far
        self._dispositions = 0  # Content-Disposition headers of the part so far
        self._disposition = b""
        self._header = b""
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data})

    @classmethod
    def of(cls, content_type: str, limit: int, header_limit: int = MAX_PART_HEADER_BYTES) -> _FieldWatch | None:
        """A watch for a body of ``content_type``; None where it is not multipart (Gradio refuses it)."""
        from python_multipart.multipart import parse_options_header

        kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        return cls(boundary, limit, header_limit) if kind == b"multipart/form-data" and boundary else None

    def feed(self, chunk: bytes) -> bool:
        """False once a field or a part's headers are over their limit (a broken body is left to Gradio, which
        refuses it)."""
        if not self.over:
            try:
                self.parser.write(chunk)
            except Exception as err:  # noqa: BLE001 - python-multipart's parse errors: Gradio answers them
                self.parser.callbacks = {}
                if str(err).startswith("Maximum header"):  # its own limits (recent versions): refused here too
                    self.over = "a part of an upload has a header line too long or too many headers"
        return not self.over

    def _part_begin(self) -> None:
        self.field_bytes, self.in_field, self._disposition, self._header = 0, False, b"", b""
        self.header_bytes, self._dispositions = 0, 0

    def _header_data(self, size: int) -> bool:
        """Count ``size`` bytes of the part's headers; False (and :attr:`over` set) past the limit."""
        self.header_bytes += size
        if self.header_bytes > self.header_limit and not self.over:
            self.over = f"the headers of a part of an upload are over {format_size(self.header_limit)}"
            self.parser.callbacks = {}  # nothing more is buffered: the request is cut off
        return not self.over

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        if self._header_data(end - start):
            self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        if self._header_data(end - start) and self._header.lower() == b"content-disposition":
            self._disposition += data[start:end]

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._dispositions += 1
            if self._dispositions > 1:  # Gradio reads the last: this part could pass for a file and be a field
                self._refuse("a part of an upload has two Content-Disposition headers")
        self._header = b""

    def _headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        self.in_field = b"filename" not in parse_options_header(self._disposition)[1]
        if not self.in_field:
            self.files += 1
            if self.files > MAX_UPLOAD_FILES:
                self._refuse(f"an upload holds at most {MAX_UPLOAD_FILES} files")

    def _refuse(self, message: str) -> None:
        if not self.over:
            self.over = message
            self.parser.callbacks = {}  # nothing more is parsed: the request is cut off

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_field:
            self.field_bytes += end - start
            if self.field_bytes > self.limit and not self.over:
                self.over = f"a form field of an upload that is not a file is over {format_size(self.limit)}"


def _client(scope: Scope) -> str:
    """The address a request came from (``""`` where the server does not say)."""
    return str((scope.get("client") or ("",))[0])


def _count(counts: dict[str, int], key: str, change: int) -> None:
    """Add ``change`` to ``counts[key]``, dropping keys that reach 0 (the table holds only clients in flight)."""
    value = counts.get(key, 0) + change
    if value:
        counts[key] = value
    else:
        counts.pop(key, None)


def _netloc(url: str) -> str:
    try:
        return urlsplit(url).netloc.lower()
    except ValueError:
        return ""


async def _refuse(scope: Scope, send: Send, status: int, message: str) -> None:
    if scope["type"] == "websocket":  # closed before it is accepted: the client sees a 403
        await send({"type": "websocket.close", "code": 1008})
        return
    body = (message + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
