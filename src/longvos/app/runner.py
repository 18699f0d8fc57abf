"""Segmenting one job: ``segment_video`` with the app's options, bounded in time, stoppable, its masks zipped.

The run is the library's normal path (:func:`longvos.engine.pipeline.segment_video` with one
:class:`~longvos.engine.options.SegmentOptions` for every job), so the zip holds exactly the PNGs that
``segment_video`` writes for the same first mask. Gradio calls :meth:`JobRunner.run` on its worker thread, one run
at a time (the queue's concurrency limit); :meth:`JobRunner.stop` (the server is stopping) and the per-job time
limit end a run after the frame it is on. Progress goes up to ``frames / (frames + 1)`` while frames are segmented,
and stays below 1 while the zip is written: the page shows 100% only once the zip is ready.
"""
from __future__ import annotations

import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from longvos.app.workspace import Job, Workspace
from longvos.engine.options import SegmentOptions
from longvos.engine.pipeline import SegmentationError, SegmentSummary, segment_video
from longvos.io.errors import InputError, LongvosError, one_line
from longvos.io.video import Frame
from longvos.io.writer import atomic_write

ZIP_FOLDER = "masks"  # the folder inside the zip: a fixed name, never the uploaded file's
#: Frames between checks of the work folder's quota during a run (each walks the folder); over it, the oldest idle
#: videos are deleted, and if that is not enough the run stops.
QUOTA_CHECK_EVERY = 25
#: Bytes a zip adds per entry (its local header and central-directory record, with the name) and in all (the end
#: record), held in the quota before the zip is written.
ZIP_ENTRY_BYTES, ZIP_END_BYTES = 256, 1024


class RunStopped(LongvosError):
    """A run ended early on purpose: the server is stopping, or the run reached the time limit."""


class JobRunner:
    """Runs jobs with ``options`` (its ``model`` is the loaded Segmenter all jobs share), each at most
    ``max_seconds`` long (``None``: no limit)."""

    def __init__(self, workspace: Workspace, options: SegmentOptions, max_seconds: float | None = None):
        # Never a snapshot: a job is never resumed; never a terminal progress bar: the page shows progress. Never
        # per-object masks or probabilities either: the zip holds neither, yet they would count against the quota.
        self.options = options.replace(snapshot_every=0, progress=False, per_object=False, save_probs=False)
        self.workspace, self.max_seconds = workspace, max_seconds
        self._stopping = threading.Event()
        self._active = 0
        self._idle = threading.Condition()

    def run(self, job: Job, progress: Callable[[float, str], None] = lambda fraction, stage: None) -> SegmentSummary:
        """Segment ``job`` from its first-frame mask into ``job.masks_dir``, its overlay video and its zip;
        ``progress(fraction done, what is being done)`` after every frame and before the zip. Raises
        :class:`RunStopped` or an :class:`~longvos.io.errors.InputError` (bad input) with a message for the page."""
        if not job.prompt_path.is_file():
            raise InputError("mark at least one object on the first frame (a box, clicks or a mask file)")
        with self._counted(), self.workspace.running(job):
            self._check_stopping()
            for stale in (job.zip_path, job.overlay_path):  # outputs of an earlier run with other objects
                stale.unlink(missing_ok=True)
            started, done = time.monotonic(), 0

            def on_frame(_frame: Frame, _result: object) -> None:
                nonlocal done
                done += 1
                self._check_stopping()
                if self.max_seconds is not None and time.monotonic() - started > self.max_seconds:
                    raise RunStopped(f"the run reached the app's time limit of {self.max_seconds / 60:.3g} min "
                                     f"(longvos app --max-minutes)")
                if done % QUOTA_CHECK_EVERY == 0:  # outputs count against the quota too
                    self.workspace.reserve(0, "the outputs")
                progress(done / (job.num_frames + 1), f"Segmenting: frame {done} of {job.num_frames}")

            try:
                summary = segment_video(job.video, job.prompt_path, job.masks_dir, self.options,
                                        overlay=job.overlay_path, overwrite=True, on_frame=on_frame)
            except SegmentationError as err:  # its message tells how to resume, which the app does not offer
                cause = err.__cause__
                reason = (one_line(cause) if isinstance(cause, LongvosError) or cause is None
                          else f"{type(cause).__name__}: {one_line(cause)}")
                raise RunStopped(f"stopped after {done} of {job.num_frames} frames: {reason}") from None
            self._check_stopping()
            progress(job.num_frames / (job.num_frames + 1), "Writing the zip of the masks")
            pngs = [path.stat().st_size for path in job.masks_dir.glob("*.png")]
            size = sum(pngs) + ZIP_ENTRY_BYTES * len(pngs) + ZIP_END_BYTES  # stored, not compressed
            self.workspace.reserve(size, "the zip of the masks")
            try:
                zip_masks(job)
            finally:
                self.workspace.release(size)  # on disk now, and counted there
        return summary

    def stop(self, timeout: float) -> bool:
        """Stop the running job after the frame it is on and refuse new ones; True if none runs any more within
        ``timeout`` seconds."""
        self._stopping.set()
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    def _check_stopping(self) -> None:
        if self._stopping.is_set():
            raise RunStopped("the server is stopping")

    @contextmanager
    def _counted(self) -> Iterator[None]:
        """Counts the runs going on, for :meth:`stop` to wait for."""
        with self._idle:
            self._active += 1
        try:
            yield
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()


def zip_masks(job: Job) -> None:
    """Zip the mask PNGs of ``job`` (file by file: constant memory) as ``masks/<frame>.png``, atomically; PNGs
    are compressed already, so they are stored as they are."""
    def write(path) -> None:
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
            for file in sorted(job.masks_dir.glob("*.png")):
                if not file.name.startswith("."):
                    archive.write(file, f"{ZIP_FOLDER}/{file.name}")

    atomic_write(job.zip_path, write)
