"""The web app's jobs: one uploaded video each, with its first-frame mask, its run and its outputs on disk.

Everything big lives on disk in the job's folder and is streamed in and out (upload, masks, overlay, zip); a job
keeps in memory only its status and one small preview image of the latest frame, so a long video costs the server
no more memory than a short one. One runner thread segments the queued jobs one at a time with the shared model.
"""
from __future__ import annotations

import io
import queue
import secrets
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

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

# Job states, in the order a job goes through them ("failed" can follow any of the last three).
READY, QUEUED, RUNNING, DONE, FAILED = "ready", "queued", "running", "done", "failed"


class JobNotFound(KeyError):
    pass


class JobBusy(InputError):
    """The request does not fit the job's state (e.g. a new prompt while it runs)."""


@dataclass
class Job:
    id: str
    folder: Path
    video: Path
    name: str  # the uploaded file's name without extension: names the downloads
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
    """Jobs by id, each in ``workdir/<id>/``; the oldest finished jobs are deleted beyond ``max_jobs``."""

    def __init__(self, workdir: Path, max_jobs: int = 20, max_upload_bytes: int = 4 << 30):
        self.workdir = workdir
        self.max_jobs = max_jobs
        self.max_upload_bytes = max_upload_bytes
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def get(self, job_id: str) -> Job:
        with self._lock:
            try:
                return self._jobs[job_id]
            except KeyError:
                raise JobNotFound(job_id) from None

    def create(self, upload: BinaryIO, length: int, filename: str) -> Job:
        """A job from an uploaded video of ``length`` bytes, read from ``upload`` in chunks."""
        suffix = Path(filename).suffix.lower()
        if suffix not in VIDEO_EXTENSIONS:
            raise InputError(f"{filename}: not a video file; upload one of {', '.join(sorted(VIDEO_EXTENSIONS))}")
        if length > self.max_upload_bytes:
            raise InputError(f"{filename}: {length / 2**20:.0f} MiB is over the upload limit of "
                             f"{self.max_upload_bytes / 2**20:.0f} MiB")
        job_id = secrets.token_hex(8)
        folder = self.workdir / job_id
        folder.mkdir(parents=True)
        video = folder / f"input{suffix}"
        try:
            _copy_exactly(upload, video, length)
            with open_video(video) as source:
                source.read(0)  # decodes: a file that only looks like a video fails here, not mid-run
                height, width = source.frame_size
                job = Job(job_id, folder, video, Path(filename).stem or "video", source.num_frames, height, width,
                          float(getattr(source, "fps", 24.0)))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        with self._lock:
            self._jobs[job_id] = job
            self._forget_old_jobs()
        return job

    def _forget_old_jobs(self) -> None:
        finished = [job for job in self._jobs.values() if job.state in (READY, DONE, FAILED)]
        for job in finished[: max(0, len(self._jobs) - self.max_jobs)]:  # dicts keep creation order
            del self._jobs[job.id]
            shutil.rmtree(job.folder, ignore_errors=True)


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


def read_uploaded_mask(job: Job, upload: BinaryIO, length: int,
                       filename: str = "the mask") -> tuple[np.ndarray, np.ndarray | None]:
    """A first-frame mask PNG uploaded for ``job``, validated like ``segment --mask`` validates one."""
    if length > 64 << 20:
        raise InputError(f"{filename}: over 64 MiB; a mask is a PNG the size of the video")
    staged = job.folder / "upload-mask.png"
    _copy_exactly(upload, staged, length)
    try:
        mask = read_index_mask(staged, (job.height, job.width), what=f"the video ({job.name})")
    except InputError as err:  # name the user's file, not the server's copy of it
        raise InputError(str(err).replace(str(staged), filename)) from None
    finally:
        staged.unlink(missing_ok=True)
    return mask.ids, mask.palette


def prompt_preview(job: Job, image: np.ndarray) -> bytes:
    """The first frame with the current mask drawn over it, as PNG bytes."""
    ids = (read_index_mask(job.prompt_path, allow_empty=True).ids if job.prompt_path.is_file()
           else np.zeros(image.shape[:2], dtype=np.uint8))
    buffer = io.BytesIO()
    Image.fromarray(render_overlay(image, ids, job.palette)).save(buffer, format="PNG")
    return buffer.getvalue()


class JobRunner:
    """Segments queued jobs one at a time on a background thread, with the shared ``segmenter``."""

    def __init__(self, segmenter: Segmenter, max_size: MaxSize):
        self.segmenter, self.max_size = segmenter, max_size
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="longvos-app-runner", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with job.lock:
            if job.state in (QUEUED, RUNNING):
                raise JobBusy("the video is already being segmented")
            if not job.object_ids or not job.prompt_path.is_file():
                raise InputError("mark at least one object on the first frame (a box, clicks or a mask file)")
            job.state, job.error, job.done_frames, job.run_seconds, job.preview_jpeg = QUEUED, None, 0, 0.0, None
        self._queue.put(job)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            self.run(job)

    def run(self, job: Job) -> None:
        """Segment ``job`` (synchronously; the runner thread calls this for each queued job)."""
        from longvos.cli.segment import one_line
        from longvos.engine.pipeline import segment_video

        with job.lock:
            job.state = RUNNING
        started = time.perf_counter()
        try:
            shutil.rmtree(job.masks_dir, ignore_errors=True)  # outputs of an earlier run with other objects
            job.zip_path.unlink(missing_ok=True)
            job.overlay_path.unlink(missing_ok=True)
            segment_video(job.video, job.prompt_path, job.masks_dir, model=self.segmenter, max_size=self.max_size,
                          overlay=job.overlay_path, progress=False, on_frame=_LivePreview(job, started))
            _zip_folder(job.masks_dir, job.zip_path, f"{job.name}-masks")
            with job.lock:
                job.state, job.run_seconds = DONE, time.perf_counter() - started
        except Exception as err:  # noqa: BLE001 - shown to the user; the server keeps serving
            with job.lock:
                job.state, job.error = FAILED, one_line(err)


class _LivePreview:
    """``on_frame`` callback: counts frames and keeps a small JPEG of the latest overlay frame."""

    def __init__(self, job: Job, started: float):
        self.job, self.started = job, started
        self._last = 0.0

    def __call__(self, frame: Frame, result: StepResult) -> None:
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
