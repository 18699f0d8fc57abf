"""The web app's jobs: one uploaded video each, with its first-frame mask, its run and its outputs on disk.

Everything big lives on disk in the job's folder and is streamed in and out (upload, masks, overlay, zip); a job
keeps in memory only its status and one small preview image of the latest frame, so a long video costs the server
no more memory than a short one. One runner thread segments the queued jobs one at a time with the shared model.

Nothing a client sends names a file or a header: uploads are stored under names the server picks (one staging
file per upload), the uploaded file's name is kept only for display (:func:`display_name`) and, reduced to safe
ASCII (:func:`safe_ascii_name`), to name the downloads. The work folder has a disk quota across all jobs, and image
sizes are checked from file headers before anything is decoded.
"""
from __future__ import annotations

import io
import os
import queue
import re
import secrets
import shutil
import struct
import tempfile
import threading
import time
import unicodedata
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, ContextManager

import numpy as np
from PIL import Image

from longvos.engine.frames import MaxSize
from longvos.engine.segmenter import Segmenter
from longvos.engine.session import StepResult
from longvos.io.errors import InputError
from longvos.io.masks import read_index_mask, write_index_png
from longvos.io.overlay import render_overlay
from longvos.io.video import VIDEO_EXTENSIONS, Frame, open_video
from longvos.io.writer import atomic_write

CHUNK_BYTES = 1 << 20
PREVIEW_WIDTH = 640  # live previews are scaled down to this width: small, and sent often
PREVIEW_INTERVAL = 0.3  # seconds between live preview renders
MAX_MASK_BYTES = 64 << 20
MAX_VIDEO_PIXELS = 7680 * 4320  # 8K UHD: larger frames are refused before the first one is decoded
DISK_MARGIN_BYTES = 256 << 20  # an upload must leave this much of the disk free

# Job states, in the order a job goes through them ("failed" can follow any of the last three).
READY, QUEUED, RUNNING, DONE, FAILED = "ready", "queued", "running", "done", "failed"


class JobNotFound(KeyError):
    pass


class JobBusy(InputError):
    """The request does not fit the job's state (e.g. a new prompt while it runs)."""


class TooLarge(InputError):
    """An upload or an image over a limit (size, pixels, the work folder's quota): HTTP 413."""

    status = 413


class JobCancelled(Exception):
    """Raised inside a run to stop it (the server is stopping)."""


def display_name(raw: str, default: str) -> str:
    """An uploaded file's name for display: its last path component, control characters replaced."""
    name = "".join(char if char.isprintable() else "_" for char in raw)
    name = name.rsplit("/", 1)[-1].strip()
    return name[:200] or default


def safe_ascii_name(name: str, default: str = "video") -> str:
    """``name`` reduced to letters, digits, spaces and ``._()+,-`` (accents dropped): safe in a quoted header
    value, a zip entry and a file name on any system. Never empty."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^A-Za-z0-9 ._()+,-]+", "_", text)
    text = re.sub(r"_{2,}", "_", text).strip(" ._-")
    return text[:100].strip(" ._-") or default


@dataclass
class Job:
    id: str
    folder: Path
    video: Path
    name: str  # the uploaded file's name without extension, for display (see display_name)
    num_frames: int
    height: int
    width: int
    fps: float
    state: str = READY
    object_ids: list[int] = field(default_factory=list)
    palette: np.ndarray | None = None
    done_frames: int = 0
    run_seconds: float = 0.0
    error: str | None = None
    preview_jpeg: bytes | None = None  # the latest overlay frame while running: the only image kept in memory
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def safe_name(self) -> str:
        """:attr:`name` as safe ASCII: names the downloads and the folder inside the zip."""
        return safe_ascii_name(self.name)

    @property
    def prompt_path(self) -> Path:
        return self.folder / "prompt.png"

    @property
    def masks_dir(self) -> Path:
        return self.folder / "masks"

    @property
    def overlay_path(self) -> Path:
        return self.folder / "overlay.mp4"

    @property
    def zip_path(self) -> Path:
        return self.folder / "masks.zip"

    def status(self) -> dict[str, Any]:
        with self.lock:
            fps = self.done_frames / self.run_seconds if self.run_seconds > 0 else 0.0
            return {"id": self.id, "name": self.name, "state": self.state, "frames": self.num_frames,
                    "done": self.done_frames, "fps": round(fps, 2), "width": self.width, "height": self.height,
                    "objects": self.object_ids, "error": self.error}


class JobStore:
    """Jobs by id, each in ``workdir/<id>/``; the oldest idle jobs are deleted beyond ``max_jobs``, or when an
    upload would take the work folder over ``quota_bytes`` (what all jobs hold on disk, uploads in flight
    included)."""

    def __init__(self, workdir: Path, max_jobs: int = 20, max_upload_bytes: int = 4 << 30,
                 quota_bytes: int = 20 << 30, max_video_pixels: int = MAX_VIDEO_PIXELS):
        self.workdir = workdir
        self.max_jobs = max_jobs
        self.max_upload_bytes = max_upload_bytes
        self.quota_bytes = quota_bytes
        self.max_video_pixels = max_video_pixels
        self._jobs: dict[str, Job] = {}
        self._reserved = 0  # bytes of uploads in flight
        self._lock = threading.Lock()

    def get(self, job_id: str) -> Job:
        with self._lock:
            try:
                return self._jobs[job_id]
            except KeyError:
                raise JobNotFound(job_id) from None

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def create(self, upload: BinaryIO, length: int, filename: str,
               decoding: Callable[[], ContextManager[Any]] = nullcontext) -> Job:
        """A job from an uploaded video of ``length`` bytes, read from ``upload`` in chunks; its first frame is
        decoded (to check the file) inside ``decoding()``, the server's bound on image work."""
        suffix = Path(filename).suffix.lower()
        if suffix not in VIDEO_EXTENSIONS:
            raise InputError(f"{filename}: not a video file; upload one of {', '.join(sorted(VIDEO_EXTENSIONS))}")
        if length > self.max_upload_bytes:
            raise TooLarge(f"{filename}: {_mib(length)} is over the upload limit of {_mib(self.max_upload_bytes)}")
        job_id = secrets.token_hex(8)
        folder = self.workdir / job_id
        with self.reserve(length, filename, evict=True):
            folder.mkdir(parents=True)
            video = folder / f"input{suffix}"
            try:
                _copy_exactly(upload, video, length)
                try:
                    with open_video(video) as source:
                        height, width = source.frame_size
                        if height * width > self.max_video_pixels:  # checked before anything is decoded
                            raise TooLarge(f"{filename}: frames of {width}x{height} are over the limit of "
                                           f"{self.max_video_pixels / 1e6:g} megapixels")
                        with decoding():
                            source.read(0)  # decodes: a file that only looks like a video fails here, not mid-run
                        job = Job(job_id, folder, video, display_name(Path(filename).stem, "video"),
                                  source.num_frames, height, width, float(getattr(source, "fps", 24.0)))
                except InputError as err:  # name the user's file, not the server's copy of it
                    raise _renamed(err, video, filename) from None
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        with self._lock:
            self._jobs[job_id] = job
            self._forget_old_jobs()
        return job

    @contextmanager
    def reserve(self, length: int, what: str, *, evict: bool = False) -> Iterator[None]:
        """Hold ``length`` bytes of the quota while an upload is written (refused with :class:`TooLarge` where it
        does not fit; with ``evict``, the oldest idle jobs are deleted to make room first)."""
        if length > self.quota_bytes:
            raise TooLarge(f"{what}: {_mib(length)} is over the work folder's quota of {_mib(self.quota_bytes)}")
        while True:
            used = _disk_usage(self.workdir)  # walked outside the lock: other requests go on meanwhile
            with self._lock:
                if used + self._reserved + length <= self.quota_bytes:
                    self._reserved += length
                    break
                idle = [job for job in self._jobs.values() if job.state in (READY, DONE, FAILED)] if evict else []
                if not idle:
                    raise TooLarge(f"{what}: the work folder is full ({_mib(used + self._reserved)} of its "
                                   f"{_mib(self.quota_bytes)} quota in use); try again when a video has finished")
                self._forget(idle[0])  # the oldest (dicts keep creation order); then measure again
        try:
            free = shutil.disk_usage(self.workdir).free
            if length + DISK_MARGIN_BYTES > free:
                raise TooLarge(f"{what}: {_mib(length)} would leave less than {_mib(DISK_MARGIN_BYTES)} free on "
                               f"the server's disk")
            yield
        finally:
            with self._lock:
                self._reserved -= length

    def _forget_old_jobs(self) -> None:
        finished = [job for job in self._jobs.values() if job.state in (READY, DONE, FAILED)]
        for job in finished[: max(0, len(self._jobs) - self.max_jobs)]:  # dicts keep creation order
            self._forget(job)

    def _forget(self, job: Job) -> None:
        del self._jobs[job.id]
        shutil.rmtree(job.folder, ignore_errors=True)


def _disk_usage(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass  # deleted meanwhile
    return total


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size < 10 << 20 else f"{size / 2**20:.0f} MiB"


def first_frame(job: Job) -> np.ndarray:
    with open_video(job.video) as source:
        return source.read(0).image


def set_prompt_mask(job: Job, ids: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Make ``ids`` the job's first-frame mask (written to disk: that file is what the run starts from)."""
    with job.lock:
        if job.state in (QUEUED, RUNNING):
            raise JobBusy("the video is being segmented; wait for it to finish before changing the objects")
        object_ids = [int(i) for i in np.unique(ids) if i != 0]
        if object_ids:
            atomic_write(job.prompt_path, lambda path: write_index_png(path, ids, palette))
        else:
            job.prompt_path.unlink(missing_ok=True)
        job.object_ids, job.palette = object_ids, palette
        job.state, job.error = READY, None


def read_uploaded_mask(job: Job, upload: BinaryIO, length: int, filename: str = "the mask",
                       decoding: Callable[[], ContextManager[Any]] = nullcontext
                       ) -> tuple[np.ndarray, np.ndarray | None]:
    """A first-frame mask PNG uploaded for ``job``, validated like ``segment --mask`` validates one. Its size is
    read from the file's header and must be the video's before a single pixel is decoded (inside ``decoding()``,
    the server's bound on image work; the upload itself is read outside it)."""
    if length > MAX_MASK_BYTES:
        raise TooLarge(f"{filename}: over {_mib(MAX_MASK_BYTES)}; a mask is a PNG the size of the video")
    handle, name = tempfile.mkstemp(prefix=".upload-", suffix=".png", dir=job.folder)  # one file per upload
    os.close(handle)
    staged = Path(name)
    try:
        _copy_exactly(upload, staged, length)
        width, height = image_size(staged, filename)
        if (height, width) != (job.height, job.width):
            raise InputError(f"{filename}: mask is {width}x{height} but the video ({job.name}) is "
                             f"{job.width}x{job.height}")
        with decoding():
            mask = read_index_mask(staged, (job.height, job.width), what=f"the video ({job.name})")
    except InputError as err:  # name the user's file, not the server's copy of it
        raise _renamed(err, staged, filename) from None
    finally:
        staged.unlink(missing_ok=True)
    return mask.ids, mask.palette


def _renamed(err: InputError, path: Path, name: str) -> InputError:
    """``err`` (of the same class: the HTTP status follows it) with the server's ``path`` replaced by ``name``."""
    message = str(err).replace(str(path), name)
    try:
        return type(err)(message)
    except TypeError:
        return InputError(message)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_size(path: Path, what: str) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header alone (a PNG's IHDR; other formats through PIL's
    lazy open, which reads no pixels). Raises :class:`InputError` for what cannot be read, including files whose
    header promises a decompression bomb."""
    with open(path, "rb") as file:
        head = file.read(24)
    if head.startswith(_PNG_SIGNATURE):
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise InputError(f"{what}: cannot read mask: a broken PNG header")
        return struct.unpack(">II", head[16:24])
    try:
        with Image.open(path) as image:  # lazy: the header only
            return image.size
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds (DecompressionBombError among them)
        raise InputError(f"{what}: cannot read mask: {err}") from None


def prompt_preview(job: Job, image: np.ndarray) -> bytes:
    """The first frame with the current mask drawn over it, as PNG bytes."""
    ids = (read_index_mask(job.prompt_path, allow_empty=True).ids if job.prompt_path.is_file()
           else np.zeros(image.shape[:2], dtype=np.uint8))
    buffer = io.BytesIO()
    Image.fromarray(render_overlay(image, ids, job.palette)).save(buffer, format="PNG")
    return buffer.getvalue()


class JobRunner:
    """Segments queued jobs one at a time on a background thread, with the shared ``segmenter``.
    :meth:`stop` cancels the running job at its next frame and the queued ones, and waits for the thread."""

    def __init__(self, segmenter: Segmenter, max_size: MaxSize):
        from longvos.engine.options import SegmentOptions

        self.segmenter, self.max_size = segmenter, max_size
        self.options = SegmentOptions(model=segmenter, max_size=max_size, progress=False)  # the same for every job
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._work, name="longvos-app-runner", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with job.lock:
            if self._stopping.is_set():
                raise JobBusy("the server is stopping")
            if job.state in (QUEUED, RUNNING):
                raise JobBusy("the video is already being segmented")
            if not job.object_ids or not job.prompt_path.is_file():
                raise InputError("mark at least one object on the first frame (a box, clicks or a mask file)")
            job.state, job.error, job.done_frames, job.run_seconds, job.preview_jpeg = QUEUED, None, 0, 0.0, None
        self._queue.put(job)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 60.0) -> bool:
        """Cancel the running job (it stops after the frame it is on) and the queued ones, and wait for the
        runner to finish; True if it did within ``timeout`` seconds."""
        self._stopping.set()
        self._queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._stopping.is_set():
                with job.lock:
                    job.state, job.error = FAILED, "the server stopped"
                continue
            self.run(job)

    def run(self, job: Job) -> None:
        """Segment ``job`` (synchronously; the runner thread calls this for each queued job)."""
        from longvos.io.errors import one_line
        from longvos.engine.pipeline import segment_video

        with job.lock:
            job.state = RUNNING
        started = time.perf_counter()
        try:
            shutil.rmtree(job.masks_dir, ignore_errors=True)  # outputs of an earlier run with other objects
            job.zip_path.unlink(missing_ok=True)
            job.overlay_path.unlink(missing_ok=True)
            self._check_stopping()
            segment_video(job.video, job.prompt_path, job.masks_dir, self.options, overlay=job.overlay_path,
                          snapshot_every=0,  # a job is never resumed
                          on_frame=_LivePreview(job, started, self._check_stopping))
            self._check_stopping()
            _zip_folder(job.masks_dir, job.zip_path, f"{job.safe_name}-masks")
            with job.lock:
                job.state, job.run_seconds = DONE, time.perf_counter() - started
        except Exception as err:  # noqa: BLE001 - shown to the user; the server keeps serving
            message = "the server stopped" if self._stopping.is_set() else one_line(err)
            with job.lock:
                job.state, job.error = FAILED, public_message(message, job.folder.parent)

    def _check_stopping(self) -> None:
        if self._stopping.is_set():
            raise JobCancelled("the server stopped")


_ABSOLUTE_PATH = re.compile(r"(?<![\w/.~])/(?:[^\s/:;,'\"()\[\]]+/)+(?P<name>[^\s/:;,'\"()\[\]]*)")


def public_message(message: str, workdir: Path | None = None, limit: int = 500) -> str:
    """An error message fit for a client: one line, at most ``limit`` characters, no absolute server paths
    (paths inside the work folder lose it, other absolute paths keep only their last component)."""
    import sys

    from longvos.io.errors import one_line

    text = one_line(str(message), limit=sys.maxsize)  # paths are scrubbed before the text is cut to ``limit``
    if workdir is not None:
        for root in {str(workdir), str(Path(workdir).resolve())}:
            text = re.sub(re.escape(root) + r"/(?:[0-9a-f]{16}/)?", "", text)
    text = _ABSOLUTE_PATH.sub(lambda match: match.group("name"), text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _LivePreview:
    """``on_frame`` callback: counts frames and keeps a small JPEG of the latest overlay frame."""

    def __init__(self, job: Job, started: float, check_stopping: Callable[[], None] = lambda: None):
        self.job, self.started, self.check_stopping = job, started, check_stopping
        self._last = 0.0

    def __call__(self, frame: Frame, result: StepResult) -> None:
        self.check_stopping()  # raises JobCancelled: segment_video stops after this frame
        now = time.perf_counter()
        jpeg = None
        if now - self._last >= PREVIEW_INTERVAL or frame.index == self.job.num_frames - 1:
            self._last = now
            jpeg = _preview_jpeg(render_overlay(frame.image, result.mask, self.job.palette))
        with self.job.lock:
            self.job.done_frames += 1
            self.job.run_seconds = now - self.started
            if jpeg is not None:
                self.job.preview_jpeg = jpeg


def _preview_jpeg(image: np.ndarray) -> bytes:
    picture = Image.fromarray(image)
    if picture.width > PREVIEW_WIDTH:
        picture = picture.resize((PREVIEW_WIDTH, round(picture.height * PREVIEW_WIDTH / picture.width)))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _zip_folder(folder: Path, destination: Path, root_name: str) -> None:
    """Zip the PNGs of ``folder`` (file by file: constant memory), atomically. PNGs are compressed already."""
    def write(path: Path) -> None:
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
            for file in sorted(p for p in folder.rglob("*.png") if not p.name.startswith(".")):
                archive.write(file, f"{root_name}/{file.relative_to(folder).as_posix()}")

    atomic_write(destination, write)


def _copy_exactly(upload: BinaryIO, destination: Path, length: int) -> None:
    """Copy ``length`` bytes from ``upload`` to ``destination`` in chunks (never the whole file in memory)."""
    remaining = length
    with open(destination, "wb") as out:
        while remaining > 0:
            chunk = upload.read(min(CHUNK_BYTES, remaining))
            if not chunk:
                raise InputError(f"the upload ended after {length - remaining} of {length} bytes")
            out.write(chunk)
            remaining -= len(chunk)
