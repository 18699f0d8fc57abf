"""One batch worker: loads the model once, then segments work items one after another, each in isolation.

Both backends run this same code (in a spawned process, or in a Ray actor), so a video gives the same masks
whichever backend ran it. Isolation: every failure of one video (bad input, a decode error, an exception in the
model) becomes a ``failed`` result with its reason, and the worker goes on with the next video; each video gets a
fresh session, and memory is released before the next one starts.
"""
from __future__ import annotations

import gc
import os
import time
import warnings
from collections.abc import Callable

import torch

from longvos.batch.completion import CompletionRecord, item_settings
from longvos.batch.events import Event, FramesDone, VideoStarted, WorkerNote
from longvos.batch.items import BatchOptions, VideoResult, WorkItem, output_folder
from longvos.io.errors import one_line
from longvos.engine.outputs import refuse_used_folder
from longvos.engine.progress import RunProgress
from longvos.engine.segmenter import Segmenter
from longvos.engine.threads import set_threads
from longvos.io.errors import InputError
from longvos.io.video import open_video
from longvos.io.video import VideoTruncatedWarning

Emit = Callable[[Event], None]

#: torch inter-op threads of every worker, whichever backend runs it.
WORKER_INTEROP_THREADS = 1

#: Seconds between frame-progress events (each one is a message between processes).
PROGRESS_INTERVAL = 0.25


class VideoWorker:
    """Segments work items on one device with one model, loaded on first use."""

    def __init__(self, options: BatchOptions, device: str, label: str, threads: int | None = None):
        self.options, self.device, self.label = options, device, label
        # Fixed thread settings, the same in every backend (run_batch resolves the count once, in the driver):
        # the same input then gives the same bits whichever backend runs it.
        self.threads = set_threads(threads or options.threads, interop=WORKER_INTEROP_THREADS)
        self._segmenter: Segmenter | None = None
        self._load_error: str | None = None

    def _load(self, emit: Emit) -> Segmenter:
        if self._load_error is not None:
            raise InputError(self._load_error)
        if self._segmenter is None:
            options = self.options
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    self._segmenter = options.replace(device=self.device).load_model()
            except Exception as err:  # noqa: BLE001 - every video of this worker fails with this reason
                self._load_error = f"cannot load model {options.model!r}: {one_line(err)}"
                raise InputError(self._load_error) from None
            for warning in caught:
                emit(WorkerNote(self.label, str(warning.message)))
        return self._segmenter

    def process(self, item: WorkItem, out_root: str, resume: bool, emit: Emit) -> VideoResult:
        """Segment one item into ``out_root/<name>``; never raises (failures become ``failed`` results)."""
        started = time.perf_counter()
        try:
            segmenter = self._load(emit)
            started = time.perf_counter()  # the model loads once per worker: not part of any video's time
            frames, note, threads = self._segment(item, segmenter, out_root, resume, emit)
            return VideoResult(item.name, "done", frames, time.perf_counter() - started, note, self.label, threads)
        except Exception as err:  # noqa: BLE001 - isolation: one video's failure is reported, never propagated
            reason = one_line(err) if isinstance(err, InputError) else f"{type(err).__name__}: {one_line(err)}"
            return VideoResult(item.name, "failed", 0, time.perf_counter() - started, reason, self.label,
                               torch.get_num_threads())
        finally:
            gc.collect()
            if self.device.startswith("cuda") and torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _segment(self, item: WorkItem, segmenter: Segmenter, out_root: str, resume: bool,
                 emit: Emit) -> tuple[int, str, int]:
        """Segment one item; returns the frames segmented, a note for the summary ("" or why fewer frames) and the
        CPU threads it ran with (a resumed video keeps the count its interrupted run recorded)."""
        from longvos.engine.pipeline import SegmentationError, segment_video

        if item.mask is None:
            raise InputError("no first-frame mask")
        with open_video(item.video) as source:  # a missing or unreadable video fails before any folder exists
            total = source.num_frames - item.frame
        folder = output_folder(out_root, item)
        if not resume:  # run_batch has cleared longvos's files (--overwrite): what is left there is someone else's
            refuse_used_folder(folder, "longvos never writes beside files it did not write: move them, or use "
                                       "another --out")
        folder.mkdir(parents=True, exist_ok=True)
        earlier = RunProgress.load(folder) if resume else None  # frames an interrupted run already finished
        already = earlier.completed if earlier is not None else 0
        emit(VideoStarted(item.name, self.label, max(total - already, 0), os.getpid()))
        record = CompletionRecord(item_settings(item, self.options))
        record.save(folder)  # done=False: a run killed from here on is never taken for complete

        counter = _FrameCounter(item.name, emit)
        options = self.options
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", VideoTruncatedWarning)
                # Never overwrite=True: run_batch has refused (or, with --overwrite, cleared) earlier results, so
                # the folder is empty but for the batch record; anything else in it is not longvos's and is refused.
                # The loaded model carries the checkpoint; each video's session takes max_size, memory and mem_gap.
                run = options.replace(model=segmenter, checkpoint=None, start=item.frame, progress=False,
                                      threads=None if options.threads_chosen else self.threads)  # None: resume's
                summary = segment_video(
                    item.video, {item.frame: item.mask}, folder, run, resume=resume, overwrite=False,
                    overlay=folder / f"overlay.{options.overlay}" if options.overlay else None, on_frame=counter,
                )
        except SegmentationError as err:
            raise InputError(str(err)) from None  # its message already says where it stopped and how to resume
        notes = [str(warning.message) for warning in caught if issubclass(warning.category, VideoTruncatedWarning)]
        for warning in caught:  # one line each in the runner's display, not a traceback-style line per process
            emit(WorkerNote(self.label, str(warning.message)))
        counter.flush()
        record.done, record.frames, record.seconds = True, summary.frames, summary.seconds
        record.save(folder)  # the completion marker: always the last write of a video
        return summary.frames, "; ".join(notes), summary.threads or torch.get_num_threads()


class _FrameCounter:
    """``on_frame`` callback that reports progress at most every :data:`PROGRESS_INTERVAL` seconds."""

    def __init__(self, name: str, emit: Emit):
        self.name, self.emit = name, emit
        self.frames = 0
        self._last = 0.0

    def __call__(self, *_args: object) -> None:
        self.frames += 1
        now = time.monotonic()
        if now - self._last >= PROGRESS_INTERVAL:
            self._last = now
            self.emit(FramesDone(self.name, self.frames))

    def flush(self) -> None:
        self.emit(FramesDone(self.name, self.frames))
