"""The app's work folder: every file the app or Gradio writes lies in it, under a disk quota, and it goes on exit.

Layout (``root`` is a new folder, in the system's temporary folder or in ``--workdir``)::

    root/                  Gradio's upload and file cache (GRADIO_TEMP_DIR): <sha256>/<upload>, in flight
    root/jobs/<id>/        one uploaded video: input.<ext>, first.png (its first frame), prompt.png, mask-*.png
                           (uploaded first-frame masks), preview-*.png, masks/, overlay.mp4, longvos-masks.zip

Files Gradio hands out must lie in its cache, so the jobs live inside it and nothing is copied. Every name in a job
folder is ours: an uploaded file is hard-linked out of Gradio's cache into ``input.<ext>`` (only its extension is
kept, from a fixed list) and its name in the cache is deleted (its folder too once empty: two sessions that upload
the same content share that folder), so the uploaded name is not kept anywhere. Only a path of the form
``root/<sha256>/<name>`` is taken as an upload: any other path a client names is refused and never touched. Job ids
are random (the folder names are in the file URLs). The quota counts everything under ``root`` (hard links once); to
make room, stale uploads and then (for a run's outputs, not for an upload still streaming in) the oldest idle jobs
are deleted, never a job that is being segmented, and only where that makes enough room (on the disk as well as in
the quota).
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
from PIL import Image

from longvos.io.errors import InputError, one_line
from longvos.io.video import VIDEO_EXTENSIONS, VideoFileSource, VideoTooLong, header_frame_count

MAX_VIDEO_PIXELS = 7680 * 4320  # 8K UHD: larger frames are refused before the first one is decoded
#: Longer videos are refused from the container's header, before their frames are indexed (about 2.3 h at 24 fps), or
#: where the header undercounts, once the count of their packets passes it (the rest of the file is not read).
MAX_VIDEO_FRAMES = 200_000
DISK_MARGIN_BYTES = 256 << 20  # an upload must leave this much of the disk free
STALE_UPLOAD_SECONDS = 600  # an upload not taken into a job within this time is deleted when room is needed
_UPLOAD_FOLDER = re.compile(r"[0-9a-f]{64}")  # Gradio names an upload's folder after its SHA-256
_PARTIAL_UPLOAD = re.compile(r"tmp\w+")  # Gradio's temporary file of an upload in flight (left by a cut-off one)


class TooLarge(InputError):
    """An upload or an image over a limit: its size, its pixels, or the work folder's quota."""


class JobGone(InputError):
    """The session's video was deleted (to make room, or the server restarted)."""


@dataclass(frozen=True)
class Job:
    """One uploaded video and where its files go."""

    id: str
    folder: Path
    video: Path
    num_frames: int
    height: int
    width: int
    fps: float

    @property
    def first_frame_path(self) -> Path:  # decoded once, at upload: marking never decodes the video again
        return self.folder / "first.png"

    @property
    def prompt_path(self) -> Path:  # the first-frame mask the run starts from
        return self.folder / "prompt.png"

    @property
    def masks_dir(self) -> Path:
        return self.folder / "masks"

    @property
    def overlay_path(self) -> Path:
        return self.folder / "overlay.mp4"

    @property
    def zip_path(self) -> Path:  # its name is the download's name
        return self.folder / "longvos-masks.zip"

    def describe(self) -> str:
        return f"{self.num_frames} frames, {self.width}x{self.height}, {self.fps:g} fps"


class Workspace:
    """The work folder (see the module docstring): ``quota_bytes`` of disk in all, at most ``max_jobs`` videos.

    ``parent`` is where the folder is made (default: the system's temporary folder); :meth:`remove` deletes it.
    A video is at most ``max_video_pixels`` per frame and ``max_video_frames`` long.
    """

    def __init__(self, parent: str | Path | None = None, *, quota_bytes: int = 20 << 30, max_jobs: int = 20,
                 max_video_pixels: int = MAX_VIDEO_PIXELS, max_video_frames: int = MAX_VIDEO_FRAMES):
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="longvos-app-", dir=parent)).resolve()
        self.jobs_dir = self.root / "jobs"
        self.jobs_dir.mkdir()
        self.quota_bytes, self.max_jobs, self.max_video_pixels = quota_bytes, max_jobs, max_video_pixels
        self.max_video_frames = max_video_frames
        self._jobs: dict[str, Job] = {}  # in creation order: the first is the oldest
        self._busy: set[str] = set()  # jobs being segmented: never deleted
        self._discarded: set[str] = set()  # jobs whose session ended while they ran: deleted when they finish
        self._reserved = 0  # bytes of uploads in flight
        self._lock = threading.Lock()

    # -- the quota ------------------------------------------------------------------------------------------------

    def reserve(self, length: int, what: str, *, evict: bool = True) -> None:
        """Hold ``length`` bytes of the quota for what is about to be written (:meth:`release` once it is on disk),
        deleting stale uploads and (with ``evict``) the oldest idle jobs to make room where that is enough (never
        first deleting and then refusing); :class:`TooLarge` where it cannot fit the quota, or would leave less than
        :data:`DISK_MARGIN_BYTES` free on the disk. An upload reserves without ``evict``: bytes that may never
        arrive must not delete other sessions' videos."""
        if length > self.quota_bytes:
            raise TooLarge(f"{what}: {format_size(length)} is over the work folder's quota of "
                           f"{format_size(self.quota_bytes)}")
        deleted: set[str] = set()  # stale uploads deleted here (one that cannot be deleted is not counted twice)
        while True:
            # Measured outside the lock (walks the folder): other requests go on meanwhile.
            used, free = disk_usage(self.root), shutil.disk_usage(self.root).free
            with self._lock:  # the folders are taken under the lock (a job may go meanwhile), measured outside it
                folders = {job_id: job.folder for job_id, job in self._jobs.items()
                           if job_id not in self._busy} if evict else {}
            stale = [(path, size) for path, size in self._stale_uploads() if path not in deleted]
            sizes = {job_id: disk_usage(folder) for job_id, folder in folders.items()}
            with self._lock:
                over_quota = used + self._reserved + length - self.quota_bytes
                short_of_disk = self._reserved + length + DISK_MARGIN_BYTES - free
                if over_quota <= 0 and short_of_disk <= 0:
                    self._reserved += length
                    return
                idle = [job_id for job_id in sizes if job_id in self._jobs and job_id not in self._busy]
                room = sum(size for _, size in stale) + sum(sizes[job_id] for job_id in idle)
                if short_of_disk > room:
                    raise TooLarge(f"{what}: {format_size(length)} would leave less than "
                                   f"{format_size(DISK_MARGIN_BYTES)} free on the server's disk")
                if over_quota > room:
                    raise TooLarge(f"{what}: the work folder is full ({format_size(used + self._reserved)} of its "
                                   f"{format_size(self.quota_bytes)} quota in use); try again when a video has "
                                   f"finished")
                if stale:
                    for path, _ in stale:
                        _delete_path(path)
                        deleted.add(path)
                else:
                    self._delete(idle[0])  # the oldest

    def release(self, length: int) -> None:
        with self._lock:
            self._reserved -= length

    # -- jobs -----------------------------------------------------------------------------------------------------

    def create_job(self, upload: str | Path) -> Job:
        """A job from a video Gradio received at ``upload`` (in its cache, see :meth:`upload_path`): linked into a
        new job folder and checked (a frame size within ``max_video_pixels`` and a length within
        ``max_video_frames``, read from the header, then from at most ``max_video_frames + 1`` frame packets, so that a
        header that undercounts costs no more than a video at the limit; the first frame decodes, and is kept as
        ``first.png``)."""
        upload = self.upload_path(upload)
        suffix = upload.suffix.lower()
        if suffix not in VIDEO_EXTENSIONS:
            self.drop_upload(upload)
            raise InputError(f"not a video file; upload one of {', '.join(sorted(VIDEO_EXTENSIONS))}")
        job_id = secrets.token_hex(8)
        folder = self.jobs_dir / job_id
        folder.mkdir()
        video = folder / f"input{suffix}"
        try:
            self.adopt_upload(upload, video)
            # Bounded: counting the frames stops past the limit, whatever the container claims (VideoTooLong).
            with VideoFileSource(video, max_frames=self.max_video_frames) as source:
                height, width = source.coded_size
                if height * width > self.max_video_pixels:  # checked before anything is decoded
                    raise TooLarge(f"frames of {width}x{height} are over the limit of "
                                   f"{self.max_video_pixels / 1e6:g} megapixels")
                too_long = TooLarge(f"the video is longer than the limit of {self.max_video_frames} frames")
                if listed_frames(video) > self.max_video_frames:  # from the header, before any packet is read
                    raise too_long
                try:  # a header that undercounted: at most max_video_frames + 1 frame packets are read to find out
                    source.num_frames  # noqa: B018 - builds the (bounded) index before anything else reads the file
                except VideoTooLong:
                    raise too_long from None
                height, width = source.frame_size  # as shown (a portrait phone video turned): decodes a frame
                first = source.read(0)  # decodes: a file that only looks like a video fails here, not mid-run
                Image.fromarray(first.image).save(folder / "first.png", compress_level=1)
                job = Job(job_id, folder, video, source.num_frames, height, width,
                          float(getattr(source, "fps", 24.0)))
        except InputError as err:  # it names our copy of the file: name the user's upload instead
            shutil.rmtree(folder, ignore_errors=True)
            raise type(err)(str(err).replace(str(video), "the video")) from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        with self._lock:
            self._jobs[job_id] = job
            idle = [j for j in self._jobs if j not in self._busy]
            for old in idle[: max(0, len(self._jobs) - self.max_jobs)]:
                self._delete(old)
        return job

    def job(self, job_id: str | None) -> Job:
        with self._lock:
            job = self._jobs.get(job_id) if job_id else None
        if job is None:
            raise JobGone("upload a video first" if not job_id else
                          "this video is no longer on the server (deleted to make room); upload it again")
        return job

    def upload_path(self, upload: str | Path) -> Path:
        """``upload`` where it is a file Gradio received: ``root/<sha256>/<name>``, a file; any other path a client
        names (another job's file, a file elsewhere) is refused (:class:`InputError`) and left untouched."""
        path = Path(os.path.normpath(os.path.abspath(upload)))
        folder = path.parent
        if not (folder.parent == self.root and _UPLOAD_FOLDER.fullmatch(folder.name) and not folder.is_symlink()
                and not path.is_symlink() and path.is_file()):
            raise InputError("not a file uploaded to this server; upload the file again")
        return path

    def adopt_upload(self, upload: str | Path, destination: Path) -> None:
        """Take a file Gradio received (:meth:`upload_path`) as ``destination`` (one of our names): a hard link
        (a copy where the file system has none), then the upload's name is dropped (:meth:`drop_upload`)."""
        upload = self.upload_path(upload)
        try:
            os.link(upload, destination)
        except FileNotFoundError:  # another session with the same file took it meanwhile
            raise InputError("the upload is no longer on the server; upload the file again") from None
        except OSError:
            shutil.copyfile(upload, destination)
        self.drop_upload(upload)

    def drop_upload(self, upload: str | Path) -> None:
        """Delete a file Gradio received (:meth:`upload_path`; any other path is left alone), and its folder once
        empty: another session may have uploaded a file with the same content into it."""
        try:
            upload = self.upload_path(upload)
        except InputError:
            return
        upload.unlink(missing_ok=True)
        try:
            upload.parent.rmdir()
        except OSError:  # not empty: another upload of the same content
            pass

    @contextmanager
    def running(self, job: Job) -> Iterator[None]:
        """``with workspace.running(job):`` marks ``job`` busy (never deleted) while it is segmented."""
        with self._lock:
            if job.id not in self._jobs:
                raise JobGone("this video is no longer on the server (deleted to make room); upload it again")
            self._busy.add(job.id)
        try:
            yield
        finally:
            with self._lock:
                self._busy.discard(job.id)
                if job.id in self._discarded:  # its session ended meanwhile
                    self._discarded.discard(job.id)
                    self._delete(job.id)

    def discard(self, job_id: str | None) -> None:
        """Delete a job whose session ended (after its run, if one is going on)."""
        with self._lock:
            if job_id in self._busy:
                self._discarded.add(job_id)
            elif job_id in self._jobs:
                self._delete(job_id)

    def remove(self) -> None:
        """Delete the whole work folder."""
        shutil.rmtree(self.root, ignore_errors=True)

    # -- under the lock -------------------------------------------------------------------------------------------

    def _delete(self, job_id: str) -> None:
        job = self._jobs.pop(job_id)
        shutil.rmtree(job.folder, ignore_errors=True)

    def _stale_uploads(self) -> list[tuple[str, int]]:
        """Uploads Gradio received that no job took in time (e.g. sent to the API and never used), and temporary
        files of uploads cut off midway, with their sizes."""
        stale = []
        now = time.time()
        for entry in os.scandir(self.root):
            try:
                if ((_UPLOAD_FOLDER.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False))
                        or (_PARTIAL_UPLOAD.fullmatch(entry.name) and entry.is_file(follow_symlinks=False))):
                    if now - entry.stat(follow_symlinks=False).st_mtime > STALE_UPLOAD_SECONDS:
                        stale.append((entry.path, disk_usage(Path(entry.path)) if entry.is_dir() else
                                      entry.stat(follow_symlinks=False).st_size))
            except OSError:
                pass  # deleted meanwhile
        return stale


def _delete_path(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass


def listed_frames(video: Path) -> int:
    """The frames the header of ``video`` lists (:func:`~longvos.io.video.header_frame_count`: its count, or its
    duration x frame rate); 0 where it tells neither (then only the bounded count of
    :class:`~longvos.io.video.VideoFileSource` can tell). Nothing is demuxed or decoded."""
    try:
        with av.open(str(video)) as container:
            listed = header_frame_count(container)
    except (av.FFmpegError, OSError, IndexError) as err:
        raise InputError(f"the video: cannot read its header: {one_line(err)}") from None
    return 0 if listed is None else listed.count


def disk_usage(folder: Path) -> int:
    """Bytes of disk that ``folder`` takes: each file (inode) and folder counted once, at the larger of its size and
    the blocks it holds (a 4-byte file takes a 4 KiB block: 30,000 of them are 120 MB of disk, not 120 KB)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in _walk_entries(folder):
        try:
            info = os.lstat(path)
        except OSError:
            continue  # deleted meanwhile
        if (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            size = 0 if stat.S_ISDIR(info.st_mode) else info.st_size
            total += max(size, getattr(info, "st_blocks", 0) * 512)  # no st_blocks on Windows: the size
    return total


def _walk_entries(folder: Path) -> Iterator[str]:
    """``folder`` and every folder and file below it (links not followed)."""
    yield str(folder)
    for root, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            yield os.path.join(root, name)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_size(path: Path, what: str) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header alone (a PNG's IHDR; other formats through PIL's lazy
    open, which reads no pixels), so that a decompression bomb is refused before a pixel is decoded."""
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
        raise InputError(f"{what}: cannot read mask: {type(err).__name__}") from None


_ABSOLUTE_PATH = re.compile(r"(?<![\w/.~])/(?:[^\s/:;,'\"()\[\]]+/)+(?P<name>[^\s/:;,'\"()\[\]]*)")


def public_message(error: BaseException | str, workspace: Workspace | None = None, limit: int = 500) -> str:
    """An error fit for the page: one line (:func:`one_line`), at most ``limit`` characters, naming no server path
    (a file in the work folder becomes its name there, e.g. ``input.mp4``; any other absolute path keeps only its
    last component)."""
    text = one_line(error, limit=sys.maxsize)  # paths are scrubbed before the text is cut to ``limit``
    if workspace is not None:
        text = re.sub(re.escape(str(workspace.root)) + r"/(?:jobs/[0-9a-f]{16}/|[0-9a-f]{64}/)?", "", text)
    text = _ABSOLUTE_PATH.sub(lambda match: match.group("name"), text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_size(size: int) -> str:
    """A size for messages: KiB below 1 MiB, MiB with one decimal below 10 MiB, whole MiB above."""
    if size < 1 << 20:
        return f"{size / 1024:.0f} KiB"
    return f"{size / 2**20:.1f} MiB" if size < 10 << 20 else f"{size / 2**20:.0f} MiB"
