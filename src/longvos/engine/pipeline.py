"""``segment_video``: a whole video to one palette PNG per frame, streamed, resumable. The CLI, the batch tool and
the web app all run videos through it.

Memory stays flat with video length: frames are decoded one at a time, the session holds constant-size state, and
outputs go through a bounded background writer. The files a run has written are always complete (atomic renames)
and form a prefix of the frames in processing order, which ``resume=True`` continues from.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from longvos.engine.frames import check_max_size
from longvos.engine.parts import check_part_distance
from longvos.engine.options import (DEFAULT_SNAPSHOT_EVERY, SegmentOptions, earlier_record_note,
                                    objects_per_pass_record, part_distance_record)
from longvos.engine.outputs import (check_output_folder, hold_output_folder, log_outputs, logged_names,
                                    prepare_output_folder, refuse_used_folder)
from longvos.engine.progress import (PROGRESS_FILE, STATE_FILE, RunProgress, UnusableSnapshot, encode_state,
                                     load_state, mask_digest, settings_difference, settings_digest,
                                     video_fingerprint)
from longvos.engine.prompt_masks import MaskInput, PromptMask, load_prompts
from longvos.engine.resources import device_peak_bytes, format_bytes, peak_rss_bytes, reset_device_peak
from longvos.engine.session import Session, StepResult
from longvos.io.errors import InputError, LongvosError, VideoReadError, one_line
from longvos.io.masks import read_index_mask, write_index_png, write_object_png, write_probs_npz
from longvos.io.overlay import OverlayWriter
from longvos.io.palette import DAVIS_PALETTE
from longvos.io.video import Frame, FrameSource, VideoTruncatedWarning, open_video
from longvos.io.writer import BackgroundWriter, atomic_write
from longvos.models.registry import DEFAULT_MODEL
from longvos.prompts import Box

__all__ = ["DEFAULT_MODEL", "DEFAULT_SNAPSHOT_EVERY", "SegmentOptions", "SegmentSummary", "SegmentationError",
           "segment_video"]

DEFAULT_FPS = 24.0  # overlay frame rate for frame folders, which carry none (DAVIS is 24 fps)


class SegmentationError(LongvosError, RuntimeError):
    """A run stopped part-way; the frames it completed are on disk and ``resume=True`` continues after them."""

    def __init__(self, message: str, frames_complete: int, interrupted: bool = False):
        super().__init__(message)
        self.frames_complete = frames_complete
        self.interrupted = interrupted


@dataclass
class SegmentSummary:
    """What a run did. ``fps`` is end-to-end (decode + model + writing); ``model_fps`` counts the model alone."""

    frames: int  # frames segmented by this call (excluding frames complete before a resume)
    seconds: float
    fps: float
    model_fps: float
    peak_rss_bytes: int
    peak_device_bytes: int | None
    state_bytes: int  # largest per-video model state seen
    object_ids: list[int]
    out_dir: Path
    resumed_after: int = 0  # frames already complete when the run started
    notes: list[str] = field(default_factory=list)
    network_size: tuple[int, int] | None = None  # (height, width) the network saw
    threads: int | None = None  # torch intra-op CPU threads the run used
    max_size: int | None = None  # the short-side cap the session resolved (pixels; None: native)
    restored_from: int = 0  # frames described by the model-state snapshot a resume restored (0: recomputed all)
    max_part_distance: float | None = None  # far parts dropped beyond this many object sizes (None: none dropped)

    def __str__(self) -> str:
        device = f", device peak {format_bytes(self.peak_device_bytes)}" if self.peak_device_bytes is not None else ""
        resumed = f" (resumed after {self.resumed_after})" if self.resumed_after else ""
        network = f" at network size {self.network_size[1]}x{self.network_size[0]}" if self.network_size else ""
        threads = f"; {self.threads} CPU thread{'s' if self.threads != 1 else ''}" if self.threads else ""
        return (f"{self.frames} frames{resumed}, {len(self.object_ids)} object(s){network} in {self.seconds:.1f} s: "
                f"{self.fps:.2f} fps ({self.model_fps:.2f} fps model only); peak memory: RSS "
                f"{format_bytes(self.peak_rss_bytes)}{device}, model state {format_bytes(self.state_bytes)}"
                f"{threads}; masks in {self.out_dir}")


def segment_video(
    video: str | Path | FrameSource,
    masks: MaskInput | dict[int | None, MaskInput] | None,
    out_dir: str | Path,
    options: SegmentOptions | None = None,
    *,
    boxes: list[Box] | None = None,
    overlay: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    records: bool = True,
    on_frame: Callable[[Frame, StepResult], None] | None = None,
    source: FrameSource | None = None,
    **changes: Any,
) -> SegmentSummary:
    """Segment frames ``options.start <= index < options.end`` of ``video`` into ``out_dir`` as ``options`` say
    (:class:`~longvos.engine.options.SegmentOptions`; keyword arguments named after its fields change single ones:
    ``segment_video(video, mask, out, max_size=320)``).

    ``masks`` is one mask for the first frame processed, or ``{frame_index: mask}`` with masks for objects that
    appear later (key ``None``: the first frame processed); a mask is a PNG path, an index-map array, or an
    :class:`~longvos.io.masks.IndexMask` (an index map with the palette the outputs take).
    ``boxes`` instead make the first mask with GrabCut.
    Writes ``out_dir/<frame name>.png`` (palette PNG with the first mask's palette, else DAVIS), plus
    ``objects/<id>/<frame>.png`` with ``per_object`` and ``probs/<frame>.npz`` with ``save_probs``, and an
    overlay video if ``overlay`` is a path. ``on_frame(frame, result)`` is called after each frame.
    A new run (not ``resume``) refuses an ``out_dir`` that holds files; ``overwrite`` first deletes the files an
    earlier longvos run wrote there (and nothing else). The run holds ``out_dir`` from its first look at it to its
    last file (:func:`~longvos.engine.outputs.hold_output_folder`): another run into it meanwhile is refused at once
    with one :class:`~longvos.io.errors.InputError` line. A video whose stream ends before its listed frame count is
    segmented up to its last decodable frame, with one warning; the summary counts the frames actually written.
    Every ``snapshot_every`` frames the model state is saved with the progress record (one file, overwritten), and
    ``resume`` restores it and recomputes the frames after it: a resumed run writes the same bytes as an
    uninterrupted one (on the same device, dtype and thread count). A model whose state grows with the video (DeAOT's
    ``growing`` memory, see :attr:`~longvos.models.base.VOSModel.state_is_fixed_size`) takes no snapshots (they
    would grow too, and be rewritten every time): its resume recomputes from the first frame, as exactly. A resume
    whose inputs changed (other video, other mask content, other weights file content, other options) is refused,
    as is one whose progress record cannot be read. A ``resume`` of a complete run segments nothing; with
    ``overlay`` it draws that video from the saved masks. Masks for frames after the end of a video stream that
    ends early were never used: one warning names them.
    ``threads`` sets torch's intra-op CPU threads for the run (restored afterwards); ``None`` keeps the current
    count, except that a resume uses the count the interrupted run recorded (another count may change the bytes;
    an explicit ``threads`` that differs from it is used, with a warning).
    ``records=False`` writes the masks alone, without the progress record, output list and state snapshots that
    make a run resumable and its folder longvos's own (the evaluation's prediction folders hold masks only): the
    folder is then neither checked nor cleared, and ``resume`` is refused.
    ``source`` is ``video`` (a path) already opened with :func:`~longvos.io.video.open_video`, reused instead of
    opening (and, for a video file, indexing) it again; the run is recorded under the path, as without it.
    Raises :class:`~longvos.io.errors.InputError` for bad input (before anything runs) and
    :class:`SegmentationError` if the run stops part-way.
    """
    options = (options or SegmentOptions()).replace(**changes)
    _check_options(options, resume, overwrite, records)  # before anything slow (the video, the model) is opened
    out_dir = check_output_folder(out_dir)
    # Held from before what the folder holds is judged until the last file is written: a second run into the same
    # folder is refused at once (before its model loads), instead of both passing the checks and mixing their files.
    # The run's own releases (its overlay's lock) go first, before the folder is let go.
    with hold_output_folder(out_dir), ExitStack() as releases:
        return _segment_held(video, masks, out_dir, options, boxes, overlay, resume, overwrite, records, on_frame,
                             source, releases)


def _segment_held(video: str | Path | FrameSource, masks: MaskInput | dict[int | None, MaskInput] | None,
                  out_dir: Path, options: SegmentOptions, boxes: list[Box] | None, overlay: str | Path | None,
                  resume: bool, overwrite: bool, records: bool, on_frame: Callable[[Frame, StepResult], None] | None,
                  source: FrameSource | None, releases: ExitStack) -> SegmentSummary:
    """:func:`segment_video`'s run, once its options are checked and it holds ``out_dir``; what it holds besides
    (its overlay) is let go by ``releases`` however it ends."""
    snapshot_every, threads = options.snapshot_every, options.threads
    record = _earlier_run(out_dir) if resume else None
    if source is not None and (isinstance(video, FrameSource)
                               or source.description not in (str(video), str(Path(video)))):
        raise InputError(f"source= must be the video opened from the path given as video ({video}), not "
                         f"{source.description}")
    source = open_video(video) if source is None else source
    start, stop = source.clamp_range(options.start, options.end)
    reverse = options.reverse
    if reverse:
        # A truncated stream decodes fewer frames than its container lists: reading the range's last frame finds
        # out (with the one warning), so that a reverse run starts from the last frame that decodes.
        for _ in source.frames(stop - 1, stop):
            pass
        start, stop = source.clamp_range(start, min(stop, source.num_frames))
    order = range(stop - 1, start - 1, -1) if reverse else range(start, stop)
    prompts = load_prompts(source, masks, boxes, (start, stop), order[0])
    palette = next((prompts[i].palette for i in order if i in prompts and prompts[i].palette is not None),
                   DAVIS_PALETTE)
    # An existing file at the overlay path is replaced only if it is an overlay the run being resumed or overwritten
    # drew (its record names it), and never if it is the video or a mask this run reads.
    earlier = record if resume else RunProgress.load(Path(out_dir)) if overwrite else None
    inputs = [] if isinstance(video, FrameSource) else [
        video, *(prompt.origin for prompt in prompts.values() if Path(prompt.origin).is_absolute())]
    overlay_writer = OverlayWriter(overlay, getattr(source, "fps", DEFAULT_FPS), palette, out_dir=out_dir,
                                   inputs=inputs, replaceable=earlier.overlays if earlier is not None else ()
                                   ) if overlay else None
    if overlay_writer is not None:
        releases.callback(overlay_writer.discard)  # a refused or failed run lets its overlay go (closed: no-op)
    segmenter = options.load_segmenter()
    session = options.session(segmenter)  # the video's size cap and memory interval
    if not session.state_is_fixed_size:
        snapshot_every = 0  # a growing state: snapshots too would grow, each rewritten whole (quadratic writes)

    # What must match for --resume to continue a run (the device and overlay may change): the options' settings as
    # they resolved, and what identifies the inputs. The memory design and interval are recorded as the session uses
    # them (the model's own where none is named): naming the model's own is the same run as naming none, and a run
    # recorded as None by an earlier longvos, whose own interval may have been another, is another run.
    checkpoint = None if options.checkpoint is None else str(Path(options.checkpoint).resolve())
    own_memory = (segmenter.model.default_memory, segmenter.model.default_mem_gap)
    settings = {
        **options.with_memory_resolved(*own_memory).replace(
            model=segmenter.name, checkpoint=checkpoint, dtype=str(segmenter.dtype), max_size=session.max_size,
            start=start, end=stop).resume_settings(),
        **part_distance_record(session.max_part_distance),
        "video": source.description if isinstance(video, FrameSource) else str(Path(source.description).resolve()),
        "num_frames": source.num_frames, "weights": segmenter.weights,
        "masks": {str(i): p.origin for i, p in sorted(prompts.items())},
        "mask_sha256": {str(i): mask_digest(p.ids, p.palette) for i, p in sorted(prompts.items())},
        "frame_size": list(source.frame_size),
        **objects_per_pass_record(segmenter.model.objects_per_pass,
                                  len({int(i) for prompt in prompts.values() for i in np.unique(prompt.ids) if i})),
        "video_fingerprint": None if isinstance(video, FrameSource) else video_fingerprint(video),
    }
    if record is not None:
        difference = settings_difference(record.settings, settings)
        if difference:
            note = earlier_record_note(record.settings, difference, *own_memory, segmenter.model.objects_per_pass,
                                       session.max_part_distance)
            advice = ("use --overwrite to segment the video again, or another output folder" if note else
                      "use another output folder or --overwrite to replace it")
            raise InputError(f"{out_dir} holds a run with other settings ({difference}){note}; {advice}")
        on_disk = _frames_on_disk(out_dir, source, order, record.completed)
        if on_disk < record.completed:  # the record says more than the folder holds: never report it as written
            missing = source.frame_name(order[on_disk])
            warnings.warn(f"{out_dir}: the mask files of frame {missing}, which this run wrote, are missing; "
                          f"segmenting again from there ({on_disk} of the {record.completed} frames recorded as "
                          f"complete are on disk)", UserWarning, stacklevel=3)
            record.completed, record.done = on_disk, False
            if record.snapshot > on_disk:  # a snapshot of later frames (a finished run keeps none) cannot be used
                record.snapshot = 0
        if record.done:
            notes = ["already complete"]
            # The overlay is drawn from the masks on disk: nothing is segmented or rewritten. A run of no frames (a
            # range past the end of a stream that ends early) has none to draw, and its overlay is not written (the
            # writer makes no file before its first frame).
            drawn = 0
            if overlay_writer is not None and record.completed:
                if record.note_overlay(overlay):  # named before it is drawn: a later resume may replace it
                    try:
                        record.save(out_dir)
                    except OSError:  # a folder that became read-only: the masks are only read; drawn unnamed, the
                        pass  # overlay is never replaced by a later resume (refused), so nothing is lost
                _log_overlay(out_dir, overlay)
                run = _Run(source, session, prompts, out_dir, palette, record, False, False)
                run.execute(order[:record.completed], overlay_writer, options.max_pending_writes, None,
                            lambda _frames: None, redraw=True)
                drawn = run.frames_done
            if overlay_writer is not None:
                notes.append(f"overlay {overlay} drawn from its {drawn} saved mask(s)" if drawn else
                             f"no overlay written to {overlay}: the run has no frames to draw")
            return SegmentSummary(0, 0.0, 0.0, 0.0, peak_rss_bytes(), None, 0, [], out_dir, record.completed, notes)
        if threads is None:
            threads = record.threads  # the count the written frames (and the snapshot) were computed with
        elif record.threads is not None and threads != record.threads and record.completed:
            warnings.warn(f"resuming with {threads} CPU threads where the interrupted run used {record.threads}: "
                          f"the frames may differ in bits from an uninterrupted run (omit the thread count to "
                          f"reuse {record.threads})", UserWarning, stacklevel=3)  # segment_video's caller
    else:
        if resume:  # a folder that holds no run (no progress record) is a new run's, unless it holds other files
            refuse_used_folder(out_dir, f"it holds no longvos run to resume (no {PROGRESS_FILE}): use --overwrite to "
                                        f"replace the files longvos wrote there, or another output folder")
        if records:
            prepare_output_folder(out_dir, overwrite)  # never mix this run's files with another run's
            (out_dir / STATE_FILE).unlink(missing_ok=True)  # another run's state snapshot
        record = RunProgress(settings)
    threads_before = torch.get_num_threads()
    record.threads = threads or threads_before
    if records:
        if overlay:
            record.note_overlay(overlay)  # named before it is drawn: a resume or --overwrite may replace it
        record.save(out_dir)
        _log_overlay(out_dir, overlay)

    run = _Run(source, session, prompts, out_dir, palette, record, options.per_object, options.save_probs,
               snapshot_every or 0, settings_digest(settings), records)
    reset_device_peak(segmenter.device)
    resumed_after = record.completed
    started = time.perf_counter()
    torch.set_num_threads(record.threads)
    try:
        with tqdm(total=len(order) - resumed_after, unit="frame", disable=not options.progress,
                  desc=source.display_name, dynamic_ncols=True, leave=False) as bar:
            run.execute(order, overlay_writer, options.max_pending_writes, on_frame, bar.update)
    finally:
        torch.set_num_threads(threads_before)
    seconds = time.perf_counter() - started
    frames = run.frames_done - resumed_after  # fewer than asked when the video stream ends early
    _warn_unused_prompts(source, order, run.frames_done, prompts, session.object_ids)
    if records:
        record.done, record.frames, record.seconds = True, frames, round(seconds, 3)
        record.save(out_dir)
        (out_dir / STATE_FILE).unlink(missing_ok=True)  # a finished run is never resumed
    return SegmentSummary(
        frames=frames, seconds=seconds, fps=frames / seconds if seconds else 0.0,
        model_fps=frames / run.model_seconds if run.model_seconds else 0.0, peak_rss_bytes=peak_rss_bytes(),
        peak_device_bytes=device_peak_bytes(segmenter.device), state_bytes=run.state_bytes,
        object_ids=session.object_ids, out_dir=out_dir, resumed_after=resumed_after,
        network_size=session.network_size, restored_from=run.restored, threads=record.threads,
        max_size=session.max_size, max_part_distance=session.max_part_distance,
    )


def _earlier_run(out_dir: Path) -> RunProgress | None:
    """The progress record of the run ``resume`` continues (``None``: there is none); one :class:`InputError` line
    naming the record if it cannot be read."""
    try:
        return RunProgress.read(out_dir)
    except ValueError as err:
        raise InputError(f"{out_dir / PROGRESS_FILE}: the progress record of the run there cannot be read "
                         f"({one_line(err)}), so it cannot be resumed: use --overwrite to start the run again, or "
                         f"another output folder") from None


def _frames_on_disk(out_dir: Path, source: FrameSource, order: range, completed: int) -> int:
    """How many of the first ``completed`` frames of ``order`` have every file the run wrote for them on disk (the
    mask PNG, and the per-object masks and probabilities the output list names for the frame): those a resume may
    take as written. One existence check per file."""
    listed: dict[str, list[str]] = {}  # frame name -> its files besides the mask, from the output list
    for entry in logged_names(out_dir) or ():
        parts = entry.split("/")
        if (len(parts) == 3 and parts[0] == "objects") or (len(parts) == 2 and parts[0] == "probs"):
            listed.setdefault(Path(parts[-1]).stem, []).append(entry)
    for position in range(completed):
        name = source.frame_name(order[position])
        if not all((out_dir / entry).is_file() for entry in (f"{name}.png", *listed.get(name, ()))):
            return position
    return completed


def _log_overlay(out_dir: Path, overlay: str | Path | None) -> None:
    """Note an overlay video written inside the output folder among the run's outputs (--overwrite deletes it)."""
    if overlay is not None and out_dir.resolve() in Path(overlay).resolve().parents:
        log_outputs(out_dir, Path(overlay).resolve().relative_to(out_dir.resolve()).as_posix())


def _warn_unused_prompts(source: FrameSource, order: range, done: int, prompts: dict[int, PromptMask],
                         tracked: list[int]) -> None:
    """One warning naming the masks for frames the run never reached because the video stream ended early (its
    container listed more frames than decode), and the objects that therefore were never segmented."""
    unused = [index for index in order[done:] if index in prompts]
    if not unused:
        return
    masks = ", ".join(f"frame {index} ({_describe_origin(prompts[index].origin)})" for index in unused)
    new = sorted({int(i) for index in unused for i in np.unique(prompts[index].ids) if i} - set(tracked))
    ended = (f"the video stream ends at frame {order[done - 1]} ({_name_or_index(source, order[done - 1])})"
             if done else "no frame of the video stream decodes")
    lost = f", so object(s) {', '.join(map(str, new))} were never segmented" if new else ""
    warnings.warn(f"{source.description}: the mask{'s' if len(unused) > 1 else ''} for {masks} "
                  f"{'were' if len(unused) > 1 else 'was'} never used: {ended}, before "
                  f"{'them' if len(unused) > 1 else 'it'}{lost}", VideoTruncatedWarning, stacklevel=4)


def _describe_origin(origin: str) -> str:
    return "an array" if origin.startswith("array:") else origin


def _check_options(options: SegmentOptions, resume: bool, overwrite: bool, records: bool) -> None:
    """The checks of a run's options that need neither the video nor the model: one :class:`InputError` line."""
    if options.snapshot_every is not None and options.snapshot_every < 0:
        raise InputError(f"snapshot_every must be >= 0 frames (0: no snapshots), got {options.snapshot_every}")
    if options.threads is not None and options.threads < 1:
        raise InputError(f"threads must be at least 1, got {options.threads}")
    if options.max_pending_writes < 1:  # a queue of size 0 is unbounded: memory would grow with the video
        raise InputError(f"max_pending_writes must be at least 1 frame, got {options.max_pending_writes}")
    if resume and overwrite:
        raise InputError("--resume and --overwrite exclude each other: continue the run, or replace its files")
    if resume and not records:
        raise InputError("resume needs the records that records=False leaves out")
    try:
        check_max_size(options.max_size)
        check_part_distance(options.max_part_distance)
    except ValueError as err:
        raise InputError(str(err)) from None


class _Run:
    """The frame loop of one ``segment_video`` call (the one frame loop of longvos's runs: segment, batch, app and
    eval), with its writer jobs, state snapshots and exact resume. Without ``records`` the progress record is kept
    in memory only, and no output list or snapshot is written."""

    def __init__(self, source: FrameSource, session: Session, prompts: dict[int, PromptMask], out_dir: Path,
                 palette: np.ndarray, record: RunProgress, per_object: bool, save_probs: bool,
                 snapshot_every: int = 0, digest: str = "", records: bool = True):
        self.source, self.session, self.prompts, self.out_dir = source, session, prompts, out_dir
        self.palette, self.record, self.per_object, self.save_probs = palette, record, per_object, save_probs
        self.snapshot_every, self.digest, self.records = snapshot_every if records else 0, digest, records
        self.model_seconds = 0.0
        self.snapshot_seconds = 0.0  # main-thread time spent taking snapshots (the writer writes them)
        self.state_bytes = 0
        self.restored = 0  # frames described by the restored state snapshot
        self.differed = False  # a recomputed frame differed from the one on disk (warned once)
        self.total = 0
        self.frames_done = 0  # frames complete in processing order, once execute returns
        self.unreadable_mask: Path | None = None  # a saved mask that could not be read back (the run stopped)

    def execute(self, order: range, overlay: OverlayWriter | None, max_pending: int,
                on_frame: Callable[[Frame, StepResult], None] | None, advance: Callable[[int], None],
                redraw: bool = False) -> None:
        """Segment the frames of ``order`` not yet complete. ``redraw``: every frame of ``order`` is complete,
        and only the ``overlay`` is drawn, from the saved masks (nothing is segmented or written but the video)."""
        completed, self.total = self.record.completed, len(order)
        position = 0  # the frame being worked on, counted in processing order
        writer: BackgroundWriter | None = None
        try:
            self.restored = len(order) if redraw else self._restore() if completed else 0
            with BackgroundWriter(max_pending) as writer:
                # Frames before the restored state are decoded again only to redraw them into a new overlay video;
                # complete frames after it are recomputed (to bring the state up to date), never rewritten.
                todo = order if overlay is not None else order[self.restored:]
                position = len(order) - len(todo)
                # A stream that ends early may have been found out since the range was set (by an earlier read of
                # the source): ask only for frames that decode; the loop ends there.
                stop = min(max(todo) + 1, self.source.num_frames) if todo else 0
                frames = self.source.frames(min(todo), stop, order.step < 0) if todo and min(todo) < stop \
                    else iter(())
                for frame in frames:
                    if frame.index != order[position]:  # frames missing from the decoded stream
                        raise VideoReadError(f"{self.source.description}: frame {order[position]} is missing from "
                                             f"the decoded video (the stream has {self.source.num_frames} frames)")
                    if position < self.restored:
                        saved = self._saved_mask(frame.name)
                        writer.submit(lambda image=frame.image, ids=saved: overlay.write(image, ids))
                    elif position < completed:
                        self._recompute(frame, writer, overlay)
                    else:
                        self._segment(position, frame, writer, overlay, on_frame)
                        advance(1)
                    position += 1
                if overlay is not None:
                    writer.submit(overlay.close)
            self.frames_done = position
        except (Exception, KeyboardInterrupt) as err:
            if overlay is not None:
                overlay.discard()  # never leave a half-written overlay video behind
            done = self.record.completed  # read after the writer has drained
            if writer is not None and err is writer.error:  # the writes lag the model: name where they stopped
                where = (f"writing, after frame {order[done - 1]} ({_name_or_index(self.source, order[done - 1])})"
                         if done else "writing, before the first frame")
            elif position < len(order):
                where = f"at frame {order[position]} ({_name_or_index(self.source, order[position])})"
            else:
                where = "after the last frame"
            interrupted = isinstance(err, KeyboardInterrupt)
            reason = ("interrupted" if interrupted else str(err) if isinstance(err, InputError)
                      else f"{type(err).__name__}: {err}")
            reason = "; ".join([reason, *getattr(err, "__notes__", ())])  # a write that failed meanwhile, too
            if self.unreadable_mask is not None:
                # A resume would read the same saved mask again (to draw it, or to compare its recomputed frame).
                advice = (f" (a resume would read the saved mask {self.unreadable_mask.name} again: use --overwrite "
                          f"to segment the video again)")
            elif redraw:  # a complete run: a resume draws the overlay again, and segments nothing
                advice = (" (run again with resume to draw the overlay)" if interrupted else
                          " (its masks are complete and untouched; run again with resume to draw the overlay once "
                          "the cause is fixed)")
            elif isinstance(err, VideoReadError):  # the input itself: a resume would stop at the same frame
                advice = " (kept; a resume stops at the same frame until the input is repaired)" if self.records else ""
            else:
                advice = " (run again with resume to continue)" if self.records else ""
            what = "the overlay of a complete run was not drawn: " if redraw else ""
            raise SegmentationError(f"{what}stopped {where}: {reason}; {done} frame(s) complete in {self.out_dir}"
                                    f"{advice}", done, interrupted) from err

    def _segment(self, position: int, frame: Frame, writer: BackgroundWriter, overlay: OverlayWriter | None,
                 on_frame: Callable[[Frame, StepResult], None] | None) -> None:
        prompt = self.prompts.get(frame.index)
        result = self.session.step(frame.image, None if prompt is None else prompt.ids, return_probs=self.save_probs)
        self.model_seconds += result.model_seconds
        self.state_bytes = max(self.state_bytes, self.session.memory_bytes())
        writer.submit(self._write_job(position, frame, result, overlay))
        if self.snapshot_every and (position + 1) % self.snapshot_every == 0 and position + 1 < self.total:
            self._snapshot(position + 1, writer)
        if on_frame is not None:
            on_frame(frame, result)

    def _snapshot(self, frames: int, writer: BackgroundWriter) -> None:
        """Queue the model state after ``frames`` frames: written (atomically, over the last one) after those
        frames' files and before the next frame's, then noted in the record."""
        started = time.perf_counter()
        snapshot = self.session.snapshot()
        if snapshot is None:  # a model state without snapshot support: a resume recomputes from the start
            self.snapshot_every = 0
            return
        data = encode_state(snapshot, frames, self.digest)  # taken now: later steps change the state
        self.snapshot_seconds += time.perf_counter() - started
        out_dir, record = self.out_dir, self.record

        def job() -> None:
            atomic_write(out_dir / STATE_FILE, lambda path: path.write_bytes(data))
            record.snapshot = frames
            record.save(out_dir)

        writer.submit(job)

    def _restore(self) -> int:
        """Restore the interrupted run's state snapshot; returns the frames it describes (0: there is no usable
        one, and the run is recomputed from its first frame, which gives the same bytes, only slower). A snapshot
        that cannot be used (missing though the record names it, unreadable, damaged, lacking a field or with one of
        the wrong type, of another model or frame size, with a tensor of another dtype or shape than the model's
        state has) is not an error: the session is reset and the run recomputed, with one warning naming the reason.
        Tensors are checked without running the model: :meth:`Session.restore` has the model family's
        ``check_snapshot`` (where its state class has one) check each one's type, dtype and shape against the
        model's dimensions and the session's network size, so a resume steps each frame after the snapshot once, as
        the interrupted run would have."""
        try:
            data = load_state(self.out_dir, self.session.device, self.digest, self.record)
            if data is None:
                return 0
            completed, snapshot = data["completed"], data["session"]
            if int(snapshot["frames_processed"]) != completed:
                raise ValueError(f"it describes {snapshot['frames_processed']} frames, its header {completed}")
            if snapshot["frame_hw"] is not None and tuple(snapshot["frame_hw"]) != tuple(self.source.frame_size):
                raise ValueError(f"its frames are {snapshot['frame_hw']}, the video's {list(self.source.frame_size)}")
            self.session.restore(snapshot)
        except Exception as err:  # noqa: BLE001 - any unusable snapshot: recomputing from the start is always exact
            self.session.reset_state()  # a restore that failed part-way may have replaced some of the state
            reason = one_line(err) if isinstance(err, UnusableSnapshot) else f"{type(err).__name__}: {one_line(err)}"
            warnings.warn(f"{self.out_dir / STATE_FILE}: the model-state snapshot cannot be restored ({reason[:300]}); "
                          f"recomputing the {self.record.completed} complete frame(s) from the first one instead "
                          f"(same result, slower)", UserWarning, stacklevel=2)
            return 0
        return completed

    def _recompute(self, frame: Frame, writer: BackgroundWriter, overlay: OverlayWriter | None) -> None:
        """Step a frame that is already complete on disk (after a resume), to bring the state up to date."""
        prompt = self.prompts.get(frame.index)
        result = self.session.step(frame.image, None if prompt is None else prompt.ids)
        if not self.differed and not np.array_equal(result.mask, self._saved_mask(frame.name)):
            self.differed = True
            warnings.warn(f"frame {frame.name} recomputed after the resume differs from the one written before: "
                          f"the interrupted run used another device, dtype or thread count", UserWarning, stacklevel=2)
        if overlay is not None:
            writer.submit(lambda image=frame.image, ids=result.mask: overlay.write(image, ids))

    def _saved_mask(self, name: str) -> np.ndarray:
        path = self.out_dir / f"{name}.png"
        try:
            return read_index_mask(path, self.source.frame_size, allow_empty=True).ids
        except InputError:
            self.unreadable_mask = path  # missing, damaged or of another size: named in the run's error
            raise

    def _write_job(self, position: int, frame: Frame, result: StepResult,
                   overlay: OverlayWriter | None) -> Callable[[], None]:
        """Everything written for one frame, ending with the progress record (so it only counts finished files)."""
        out_dir, name, ids, palette, record, records = (self.out_dir, frame.name, result.mask, self.palette,
                                                        self.record, self.records)
        per_object_ids = list(result.object_ids) if self.per_object else []
        image = frame.image if overlay is not None else None

        def job() -> None:
            if records:
                log_outputs(out_dir, f"{name}.png", *(f"objects/{o}/{name}.png" for o in per_object_ids),
                            *([f"probs/{name}.npz"] if result.probs is not None else []))
            atomic_write(out_dir / f"{name}.png", lambda path: write_index_png(path, ids, palette))
            for object_id in per_object_ids:
                folder = out_dir / "objects" / str(object_id)
                folder.mkdir(parents=True, exist_ok=True)
                atomic_write(folder / f"{name}.png", lambda path, o=object_id: write_object_png(path, ids == o))
            if result.probs is not None:
                (out_dir / "probs").mkdir(exist_ok=True)
                atomic_write(out_dir / "probs" / f"{name}.npz",
                             lambda path: write_probs_npz(path, result.probs, result.object_ids))
            if overlay is not None:
                overlay.write(image, ids)
            record.completed, record.last_frame = position + 1, name
            if records:
                record.save(out_dir)

        return job


def _name_or_index(source: FrameSource, index: int) -> str:
    """The frame's output name for messages, or its index where the source has fewer frames than it listed."""
    try:
        return source.frame_name(index)
    except InputError:
        return str(index)
