"""``segment_video``: a whole video to one palette PNG per frame, streamed, resumable. The CLI, the batch tool and
the web app all run videos through it.

Memory stays flat with video length: frames are decoded one at a time, the session holds constant-size state, and
outputs go through a bounded background writer. The files a run has written are always complete (atomic renames)
and form a prefix of the frames in processing order, which ``resume=True`` continues from.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from longvos.engine.frames import MaxSize
from longvos.engine.progress import RunProgress, settings_difference
from longvos.engine.prompt_masks import MaskInput, PromptMask, load_prompts
from longvos.engine.resources import device_peak_bytes, format_bytes, peak_rss_bytes, reset_device_peak
from longvos.engine.segmenter import Segmenter, load_model
from longvos.engine.session import Session, StepResult
from longvos.io.errors import InputError
from longvos.io.masks import read_index_mask, write_index_png, write_object_png, write_probs_npz
from longvos.io.overlay import OverlayWriter
from longvos.io.palette import DAVIS_PALETTE
from longvos.io.prompts import Box
from longvos.io.video import Frame, FrameSource, open_video
from longvos.io.writer import BackgroundWriter, atomic_write

DEFAULT_MODEL = "mavos-lite"
DEFAULT_FPS = 24.0  # overlay frame rate for frame folders, which carry none (DAVIS is 24 fps)


class SegmentationError(RuntimeError):
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

    def __str__(self) -> str:
        device = f", device peak {format_bytes(self.peak_device_bytes)}" if self.peak_device_bytes is not None else ""
        resumed = f" (resumed after {self.resumed_after})" if self.resumed_after else ""
        network = f" at network size {self.network_size[1]}x{self.network_size[0]}" if self.network_size else ""
        return (f"{self.frames} frames{resumed}, {len(self.object_ids)} object(s){network} in {self.seconds:.1f} s: "
                f"{self.fps:.2f} fps ({self.model_fps:.2f} fps model only); peak memory: RSS "
                f"{format_bytes(self.peak_rss_bytes)}{device}, model state {format_bytes(self.state_bytes)}; "
                f"masks in {self.out_dir}")


def segment_video(
    video: str | Path | FrameSource,
    masks: MaskInput | dict[int | None, MaskInput] | None,
    out_dir: str | Path,
    *,
    model: str | Segmenter = DEFAULT_MODEL,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    memory: str | None = None,
    mem_gap: int | None = None,
    max_size: MaxSize = "auto",
    start: int = 0,
    end: int | None = None,
    reverse: bool = False,
    boxes: list[Box] | None = None,
    overlay: str | Path | None = None,
    per_object: bool = False,
    save_probs: bool = False,
    resume: bool = False,
    progress: bool = True,
    max_pending_writes: int = 8,
    on_frame: Callable[[Frame, StepResult], None] | None = None,
) -> SegmentSummary:
    """Segment frames ``start <= index < end`` of ``video`` (backwards if ``reverse``) into ``out_dir``.

    ``masks`` is one mask for the first frame processed, or ``{frame_index: mask}`` with masks for objects that
    appear later (key ``None``: the first frame processed); a mask is a PNG path or an index-map array.
    ``boxes`` instead make the first mask with GrabCut.
    Writes ``out_dir/<frame name>.png`` (palette PNG with the first mask's palette, else DAVIS), plus
    ``objects/<id>/<frame>.png`` with ``per_object`` and ``probs/<frame>.npz`` with ``save_probs``, and an
    overlay video if ``overlay`` is a path. ``on_frame(frame, result)`` is called after each frame.
    Raises :class:`~longvos.io.errors.InputError` for bad input (before anything runs) and
    :class:`SegmentationError` if the run stops part-way.
    """
    source = open_video(video)
    start, stop = source.clamp_range(start, end)
    order = range(stop - 1, start - 1, -1) if reverse else range(start, stop)
    prompts = load_prompts(source, masks, boxes, (start, stop), order[0])
    palette = next((prompts[i].palette for i in order if i in prompts and prompts[i].palette is not None),
                   DAVIS_PALETTE)
    overlay_writer = OverlayWriter(overlay, getattr(source, "fps", DEFAULT_FPS), palette) if overlay else None
    if isinstance(model, Segmenter):
        if memory is not None or checkpoint is not None:
            raise InputError("memory and checkpoint apply when loading a model by name, not to a loaded Segmenter")
        segmenter, session = model, model.session(max_size, mem_gap)
    else:
        segmenter = load_model(model, checkpoint, device, dtype, memory=memory, mem_gap=mem_gap)
        session = segmenter.session(max_size)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "video": source.description if isinstance(video, FrameSource) else str(Path(source.description).resolve()),
        "num_frames": source.num_frames, "model": segmenter.name, "memory": memory, "mem_gap": mem_gap,
        "checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()), "dtype": str(segmenter.dtype),
        "max_size": session.max_size, "start": start, "stop": stop, "reverse": reverse, "per_object": per_object,
        "save_probs": save_probs, "masks": {str(i): p.origin for i, p in sorted(prompts.items())},
    }  # what must match for --resume to continue a run (the device and overlay may change)
    record = RunProgress.load(out_dir) if resume else None
    if record is not None:
        difference = settings_difference(record.settings, settings)
        if difference:
            raise InputError(f"{out_dir} holds a run with other settings ({difference}); use another output folder "
                             f"or run without resume")
        if record.done:
            return SegmentSummary(0, 0.0, 0.0, 0.0, peak_rss_bytes(), None, 0, [], out_dir, record.completed,
                                  ["already complete"])
    else:
        record = RunProgress(settings)
        record.save(out_dir)

    run = _Run(source, session, prompts, out_dir, palette, record, per_object, save_probs)
    reset_device_peak(segmenter.device)
    resumed_after = record.completed
    started = time.perf_counter()
    with tqdm(total=len(order) - resumed_after, unit="frame", disable=not progress, desc=source.description,
              dynamic_ncols=True, leave=False) as bar:
        run.execute(order, overlay_writer, max_pending_writes, on_frame, bar.update)
    seconds = time.perf_counter() - started
    record.done = True
    record.save(out_dir)
    frames = len(order) - resumed_after
    return SegmentSummary(
        frames=frames, seconds=seconds, fps=frames / seconds if seconds else 0.0,
        model_fps=frames / run.model_seconds if run.model_seconds else 0.0, peak_rss_bytes=peak_rss_bytes(),
        peak_device_bytes=device_peak_bytes(segmenter.device), state_bytes=run.state_bytes,
        object_ids=session.object_ids, out_dir=out_dir, resumed_after=resumed_after,
        network_size=session.network_size,
    )


class _Run:
    """The frame loop of one ``segment_video`` call, with its writer jobs and resume replay."""

    def __init__(self, source: FrameSource, session: Session, prompts: dict[int, PromptMask], out_dir: Path,
                 palette: np.ndarray, record: RunProgress, per_object: bool, save_probs: bool):
        self.source, self.session, self.prompts, self.out_dir = source, session, prompts, out_dir
        self.palette, self.record, self.per_object, self.save_probs = palette, record, per_object, save_probs
        self.model_seconds = 0.0
        self.state_bytes = 0

    def execute(self, order: range, overlay: OverlayWriter | None, max_pending: int,
                on_frame: Callable[[Frame, StepResult], None] | None, advance: Callable[[int], None]) -> None:
        completed = self.record.completed
        position = completed  # the frame being worked on, counted in processing order
        try:
            with BackgroundWriter(max_pending) as writer:
                if completed:
                    self._replay(order[:completed])
                # Frames already complete are decoded again only to redraw them into a new overlay video.
                todo = order if overlay is not None else order[completed:]
                position = len(order) - len(todo)
                frames = self.source.frames(min(todo), max(todo) + 1, order.step < 0) if todo else iter(())
                for frame in frames:
                    if position < completed:
                        saved = self._saved_mask(frame.name)
                        writer.submit(lambda image=frame.image, ids=saved: overlay.write(image, ids))
                    else:
                        self._segment(position, frame, writer, overlay, on_frame)
                        advance(1)
                    position += 1
                if overlay is not None:
                    writer.submit(overlay.close)
        except (Exception, KeyboardInterrupt) as err:
            where = f"at frame {order[position]} ({self.source.frame_name(order[position])})" \
                if position < len(order) else "after the last frame"
            interrupted = isinstance(err, KeyboardInterrupt)
            reason = ("interrupted" if interrupted else str(err) if isinstance(err, InputError)
                      else f"{type(err).__name__}: {err}")
            done = self.record.completed  # read after the writer has drained
            raise SegmentationError(f"stopped {where}: {reason}; {done} frame(s) complete in {self.out_dir} "
                                    f"(run again with resume to continue)", done, interrupted) from err

    def _segment(self, position: int, frame: Frame, writer: BackgroundWriter, overlay: OverlayWriter | None,
                 on_frame: Callable[[Frame, StepResult], None] | None) -> None:
        prompt = self.prompts.get(frame.index)
        result = self.session.step(frame.image, None if prompt is None else prompt.ids, return_probs=self.save_probs)
        self.model_seconds += result.model_seconds
        self.state_bytes = max(self.state_bytes, self.session.memory_bytes())
        writer.submit(self._write_job(position, frame, result, overlay))
        if on_frame is not None:
            on_frame(frame, result)

    def _replay(self, completed_order: range) -> None:
        """Rebuild the memory of an interrupted run: its starting masks in order, then the last complete frame
        re-anchored with the mask that was written for it. (The memory is rebuilt, not restored, so frames after
        a resume can differ slightly from an uninterrupted run.)"""
        last = completed_order[-1]
        for index in completed_order[:-1]:
            if index in self.prompts:
                self.session.step(self.source.read(index).image, self.prompts[index].ids)
        frame = self.source.read(last)
        saved = self._saved_mask(frame.name)
        self.session.step(frame.image, saved if saved.any() else None)

    def _saved_mask(self, name: str) -> np.ndarray:
        return read_index_mask(self.out_dir / f"{name}.png", self.source.frame_size, allow_empty=True).ids

    def _write_job(self, position: int, frame: Frame, result: StepResult,
                   overlay: OverlayWriter | None) -> Callable[[], None]:
        """Everything written for one frame, ending with the progress record (so it only counts finished files)."""
        out_dir, name, ids, palette, record = self.out_dir, frame.name, result.mask, self.palette, self.record
        per_object_ids = list(result.object_ids) if self.per_object else []
        image = frame.image if overlay is not None else None

        def job() -> None:
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
            record.save(out_dir)

        return job
