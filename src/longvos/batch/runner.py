"""``run_batch``: many videos through ``segment_video``, each isolated, resumable, on a local or Ray backend; the
check that lets ``--resume`` skip finished videos; the display and the summary.

Each video's record is ``segment_video``'s own progress record in its folder (``<out>/<name>/.longvos-progress.json``,
:mod:`longvos.engine.progress`): written before the first frame, marked done only after the last frame's files, with
the settings of the run (a sha256 of the mask's content and of the weights file, a fingerprint of the video). A
resumed batch compares it with the settings the video would be run with, as far as they do not depend on the worker
(:func:`item_settings`), without loading the model: a finished video with the same settings is skipped, one with
other settings fails with the difference, and an unfinished one continues through ``segment_video``'s own resume
(state snapshot), so a resumed video has the same bytes as an uninterrupted one.
"""
from __future__ import annotations

import functools

import csv
import io
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from longvos.batch.items import (RECORD_START, SUMMARY_FILE, BatchOptions, Event, FramesDone, VideoFinished,
                                 VideoResult, VideoStarted, WorkerNote, WorkItem, name_problem, output_folder)
from longvos.batch.manifest import Manifest, with_unique_names
from longvos.engine.outputs import (LOCK_FILE, OUTPUTS_FILE, check_output_folder, clear_outputs,
                                    hold_output_folder, logged_names, refuse_used_folder)
from longvos.engine.progress import (PROGRESS_FILE, RunProgress, mask_digest, settings_difference, video_fingerprint,
                                     weights_record)
from longvos.io.errors import InputError
from longvos.io.masks import IndexMask, read_index_mask
from longvos.io.writer import atomic_write

if TYPE_CHECKING:
    from longvos.models.base import VOSModel

BACKENDS = ("local", "ray")
OVERLAY_FORMATS = ("mp4", "webm")
CSV_COLUMNS = ("name", "status", "frames", "seconds", "fps", "worker", "reason")


def run_batch(
    items: list[WorkItem] | str | Path,
    out_dir: str | Path,
    options: BatchOptions | None = None,
    *,
    backend: str = "local",
    devices: list[str] | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_event: Callable[[Event], None] | None = None,
) -> BatchSummary:
    """Segment every item (or every row of the manifest at ``items``) into ``out_dir/<name>/``.

    ``backend="local"`` runs worker processes over ``devices`` (default: every GPU, else the CPU; ``workers`` in
    all); ``"ray"`` runs ``workers`` Ray actors (default: one per cluster GPU, else per ``options.threads`` CPUs).
    A video that fails is reported with its reason and never stops the others. With ``resume``, videos whose
    record is done with the same settings are skipped and interrupted ones continue from their last complete frame.
    Without ``resume``, a non-empty ``out_dir`` is refused unless ``overwrite``, which first deletes the files an
    earlier longvos run wrote there (and nothing else); with or without either, an ``out_dir`` holding anything but
    video folders and the summary (a ``segment`` run, a user's file) is refused before anything is deleted or
    written. Items whose name is not a plain folder name (or is one of the batch's own files) or whose paths
    cannot be resolved fail with the reason, like faulty manifest rows. Writes ``out_dir/batch-summary.csv`` when
    the batch ends (an earlier summary is removed when it starts) and returns the summary; raises
    :class:`InputError` only for problems that concern every video (an unknown model or backend, a missing
    checkpoint, an unusable manifest or output folder).
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if resume and overwrite:
        raise InputError("--resume and --overwrite exclude each other: continue the batch, or replace its files")
    options = worker_options(_checked(options or BatchOptions()), devices, workers)
    notes: list[str] = []
    if isinstance(items, (str, Path)):
        manifest = Manifest.read(items)
        items = list(manifest.items)
        if manifest.note is not None:  # shown in the display, above the bars, not as a Python warning
            notes.append(manifest.note)
    else:  # workers may run elsewhere (another process, a Ray node): give them absolute paths
        items = with_unique_names([_absolute(item, number) for number, item in enumerate(items, 1)])
    out = Path(check_output_folder(out_dir, "--out")).resolve()
    # Held for the whole batch (as a segment run holds its folder): a second batch into it is refused at once,
    # before anything is cleared or written.
    with hold_output_folder(out):
        _refuse_foreign(out)  # another run's files, or a user's: never mixed with this batch, never deleted
        if not resume:
            _prepare_folder(out, overwrite, {item.name for item in items if item.name})
        # A summary of an earlier run would contradict the folders as soon as this run changes them.
        (out / SUMMARY_FILE).unlink(missing_ok=True)
        started = time.perf_counter()

        results: list[VideoResult | None] = [_known_result(item, out, options, resume) for item in items]
        todo = [item for item, result in zip(items, results) if result is None]
        position = {item.name: i for i, item in enumerate(items) if results[i] is None}
        display = ProgressDisplay(len(items), initial=len(items) - len(todo), enabled=progress)
        for note in notes:
            display.write(f"note: {note}")
        for result in results:
            if result is not None and result.status == "failed":
                display.write(f"failed: {result.name}: {result.reason}")

        def handle(event: Event) -> None:
            if isinstance(event, VideoFinished):
                results[position[event.result.name]] = event.result
            display(event)
            if on_event is not None:
                on_event(event)

        try:
            if todo and backend == "local":
                from longvos.batch.workers import plan_workers, run_local

                run_local(todo, str(out), options, resume, handle, plan_workers(devices, workers, options.threads))
            elif todo:
                from longvos.batch.workers import run_ray

                run_ray(todo, str(out), options, resume, handle, workers=workers, address=ray_address)
        finally:
            display.close()
        summary = BatchSummary([result for result in results if result is not None], time.perf_counter() - started, out)
        summary.write_csv()
        return summary


def _absolute(item: WorkItem, number: int) -> WorkItem:
    """An item given through the API with absolute paths and an origin for messages ("item 3"); a path that cannot
    be resolved (a NUL byte, a symlink loop) is the item's problem, as it is a manifest row's."""
    item = replace(item, origin=item.origin or f"item {number}")
    try:
        return replace(item, video=str(Path(item.video).resolve()), mask=item.mask and str(Path(item.mask).resolve()))
    except (OSError, RuntimeError, ValueError) as err:
        return item if item.problem is not None else replace(item, problem=f"path cannot be used: {err}")


def _is_video_folder(entry: Path) -> bool:
    """Whether ``entry`` of a batch folder may be one of its video folders: a folder with a name a video may have.
    What it holds is that video's concern: a worker refuses a video whose folder holds files longvos did not write,
    and ``--resume`` a folder made with other settings."""
    return entry.is_dir() and name_problem(entry.name) is None


def _refuse_foreign(out: Path) -> None:
    """Refuse (one :class:`InputError` line naming ``out`` and what is foreign there) a batch folder that holds
    anything but the batch's video folders and its summary: a ``segment`` run's record and frames, a user's files.
    Checked before anything is deleted or written, whatever ``resume`` and ``overwrite`` say: a batch never mixes
    its files with another run's, and ``--overwrite`` never deletes what a batch did not write."""
    if not out.is_dir():
        return
    entries = list(out.iterdir())
    records = sorted((entry.name != PROGRESS_FILE, entry.name) for entry in entries  # its progress record first
                     if entry.name.startswith(RECORD_START) and entry.name != LOCK_FILE)  # the lock: this batch's
    if records:
        raise InputError(f"{out} holds the records of another longvos run ({records[0][1]}: a segment or eval "
                         f"run's), not a batch's video folders: a "
                         f"batch never mixes its files with another run's, nor deletes them (even with --overwrite); "
                         f"use another --out")
    own = tuple(entry.name for entry in entries
                if _is_video_folder(entry) or (entry.name == SUMMARY_FILE and entry.is_file()))
    refuse_used_folder(out, f"a batch folder holds only video folders and {SUMMARY_FILE}; a batch never writes "
                            f"beside other files (nor deletes them, even with --overwrite): move them, or use another "
                            f"--out", keep=own)


def _prepare_folder(out: Path, overwrite: bool, names: set[str]) -> None:
    """Refuse a batch folder that holds files (unless ``overwrite``); with ``overwrite`` delete what longvos wrote
    in the folders of this batch's videos (``names``, exactly: ``Cat`` is not ``cat``'s; :func:`_refuse_foreign` has
    refused a batch folder holding anything but folders and the summary). A folder of a longvos run that is not
    one of them (a `segment` run put there, a video dropped from the manifest) is refused, not deleted. Files
    longvos did not write stay, and each worker refuses a video whose folder holds any."""
    if not overwrite:
        refuse_used_folder(out, "use --resume to continue the batch there, --overwrite to replace the files longvos "
                                "wrote there, or another --out")
    folders = [folder for folder in sorted(entry for entry in out.iterdir() if _is_video_folder(entry))
               # not a video folder of a longvos batch: left alone (its video is refused if it has files)
               if any((folder / name).is_file() for name in (PROGRESS_FILE, OUTPUTS_FILE))]
    others = [folder.name for folder in folders if folder.name not in names]
    if others:
        raise InputError(f"{out} holds {', '.join(others[:5])}{' ...' if len(others) > 5 else ''}: the output of a "
                         f"longvos run that is not a video of this batch; --overwrite deletes only the folders of "
                         f"the manifest's videos: move {'it' if len(others) == 1 else 'them'}, or use another --out")
    # Every folder checked before any is cleared: one that a run (a `longvos segment` into it) is writing refuses the
    # batch before anything is deleted, in that folder or another. One at a time (a lock is an open file, and a
    # batch may have more folders than a process may open files); each is held again while it is cleared.
    for folder in folders:
        with hold_output_folder(folder):
            pass
    for folder in folders:
        with hold_output_folder(folder):
            clear_outputs(folder)  # an overlay longvos wrote is in its output list; any other file stays
    for folder in folders:
        if not any(folder.iterdir()):
            folder.rmdir()


def worker_options(options: BatchOptions, devices: list[str] | None, workers: int | None) -> BatchOptions:
    """``options`` with the torch threads per worker decided once, here in the driver, for every backend alike:
    ``options.threads`` if given, else the free cores (:func:`longvos.engine.threads.default_threads`) shared
    among the workers (``workers``, else one per listed device, else one). Local processes and Ray actors then
    run with the same thread settings, and the same input gives the same bits whichever backend ran it."""
    if options.threads is not None:
        return options
    from longvos.engine import threads

    count = workers or (len(devices) if devices else 1)
    return replace(options, threads=max(1, threads.default_threads() // count), threads_chosen=True)


def _known_result(item: WorkItem, out: Path, options: BatchOptions, resume: bool) -> VideoResult | None:
    """The result of an item that needs no worker: a manifest fault, a finished video, a conflicting folder."""
    if item.problem is not None:
        reason = f"{item.origin}: {item.problem}" if item.origin else item.problem
        return VideoResult(item.name, "failed", reason=reason)
    if not resume:
        return None
    folder, settings = output_folder(out, item), item_settings(item, options)
    conflict = resume_conflict(folder, settings)
    if conflict is not None:
        return VideoResult(item.name, "failed", reason=conflict)
    if is_complete(folder, settings):
        return VideoResult(item.name, "skipped", reason="already complete")
    return None


def _checked(options: BatchOptions) -> BatchOptions:
    """Options with an absolute checkpoint path, after the checks that would otherwise fail every video alike: the
    model is built once here with the run's memory settings, and a given checkpoint loaded into it."""
    from longvos.device import resolve_dtype
    from longvos.engine.parts import check_part_distance
    from longvos.models.registry import create_model

    try:
        resolve_dtype(options.dtype)
        model = create_model(options.model, memory=options.memory, mem_gap=options.mem_gap)
    except ValueError as err:  # an unknown model, dtype or memory design, an interval below 1
        raise InputError(str(err)) from None
    if options.overlay is not None and options.overlay not in OVERLAY_FORMATS:
        raise InputError(f"overlay format {options.overlay!r}: use one of {', '.join(OVERLAY_FORMATS)}")
    if options.threads is not None and options.threads < 1:
        raise InputError(f"threads must be >= 1, got {options.threads}")
    try:
        check_part_distance(options.max_part_distance)
    except ValueError as err:
        raise InputError(str(err)) from None
    if options.checkpoint is None:
        from longvos.checkpoints import weights_for

        weights_for(options.model, None, options.allow_random_weights)  # no weights: refused once, not per video
        return options
    checkpoint = Path(options.checkpoint).expanduser().resolve()
    if not checkpoint.is_file():
        raise InputError(f"{options.checkpoint}: checkpoint file not found")
    from longvos.checkpoints import load_checkpoint

    load_checkpoint(model, checkpoint)  # not a checkpoint, or another model's: one CheckpointError line, once
    return replace(options, checkpoint=str(checkpoint))


# -- the resume check: each video's progress record -------------------------------------------------------------

def item_settings(item: WorkItem, options: BatchOptions) -> dict[str, Any]:
    """The settings ``segment_video`` records for ``item`` (see :func:`~longvos.engine.pipeline.segment_video`), as
    far as the driver knows them without the worker's device or the video's frame count: the options' settings
    resolved as a worker resolves them (the model's size for ``max_size="auto"``, its own far-part distance for
    ``max_part_distance="auto"``, the loaded weights file's path,
    size and sha256 instead of ``checkpoint``, an explicit dtype; ``dtype="auto"`` depends on the device and is
    left out), the memory design and interval the session uses (the model's own where none is named:
    :meth:`~longvos.engine.options.SegmentOptions.with_memory_resolved`), and what identifies the inputs."""
    from longvos.engine.frames import resolve_max_size
    from longvos.engine.options import objects_per_pass_record, part_distance_record
    from longvos.engine.parts import resolve_part_distance
    from longvos.models.registry import model_entry

    frame = str(item.frame)
    mask = _read_mask(item.mask)  # read once: its digest and how many objects it names
    # The memory design and interval resolved as segment_video records them (the model's own where none is named).
    options = options.with_memory_resolved(*_own_memory(options.model))
    settings = options.replace(checkpoint=None, start=item.frame).resume_settings()
    del settings["stop"]  # the end of the video, clamped by the worker
    if str(options.dtype).lower() == "auto":
        del settings["dtype"]
    else:
        from longvos.device import resolve_dtype

        settings["dtype"] = str(resolve_dtype(options.dtype))
    try:
        settings["max_size"] = resolve_max_size(options.max_size, model_entry(options.model).max_size)
    except ValueError:  # a bad size or model: every video fails with the reason
        pass
    try:
        settings.update(part_distance_record(resolve_part_distance(options.max_part_distance,
                                                                   _own_part_distance(options.model))))
    except ValueError:  # refused by run_batch before any video
        pass
    return {**settings, "video": str(Path(item.video).resolve()),
            "masks": {frame: None if item.mask is None else str(Path(item.mask).resolve())},
            "mask_sha256": {frame: None if mask is None else mask_digest(mask.ids, mask.palette)},
            "video_fingerprint": video_fingerprint(item.video), "weights": weights_record(_weights_path(options)),
            **objects_per_pass_record(_objects_per_pass(options.model),
                                      0 if mask is None else len(set(np.unique(mask.ids).tolist()) - {0}))}


def _read_mask(path: str | Path | None) -> IndexMask | None:
    """A prompt mask as a record needs it (``None``: no mask, or one that cannot be read; the video then fails
    with the reason)."""
    if path is None:
        return None
    try:
        return read_index_mask(path, allow_empty=True)
    except (InputError, OSError):
        return None


def _weights_path(options: BatchOptions) -> str | Path | None:
    from longvos.checkpoints import weights_for

    try:
        return weights_for(options.model, options.checkpoint, options.allow_random_weights)
    except (InputError, ValueError):  # run_batch refuses these before any video
        return None


#: Settings a run records only where they change its masks and whose absence changes them too: a run that leaves out
#: max_part_distance keeps every piece (engine/options.py:part_distance_record). (objects_per_pass is left out only
#: where it cannot change the masks, and earlier versions recorded it for single objects too.)
_RECORDED_WHERE_USED = ("max_part_distance",)


def _recorded(folder: Path, settings: dict[str, Any]) -> tuple[RunProgress | None, str | None]:
    """The video's progress record in ``folder`` and the first difference between its settings and ``settings``
    (on the keys of ``settings``: those the driver knows)."""
    record = RunProgress.load(folder)
    if record is None:
        return None, None
    # Settings recorded only where they change the masks are compared even when this run leaves them out: a video
    # made with far parts dropped is not a finished video of a run that keeps every piece.
    known = [*settings, *(key for key in _RECORDED_WHERE_USED if key in record.settings and key not in settings)]
    return record, settings_difference({key: record.settings[key] for key in known if key in record.settings},
                                       settings)


@functools.lru_cache(maxsize=8)
def _meta_model(model_name: str) -> VOSModel | None:
    """A registered model as ``segment_video``'s loaded model is configured, built once per name on the meta device
    where it can be (no weight memory, no file read); ``None`` for an unknown name (every video fails with it)."""
    from longvos.checkpoints import meta_model

    try:
        return meta_model(model_name)
    except (KeyError, ValueError):
        return None


def _own_memory(model_name: str) -> tuple[str | None, int | None]:
    """``(default_memory, default_mem_gap)`` of a registered model (``None, None`` for an unknown one)."""
    model = _meta_model(model_name)
    return (None, None) if model is None else (model.default_memory, model.default_mem_gap)


def _own_part_distance(model_name: str) -> float | None:
    """A registered model's ``default_max_part_distance`` (``None`` for an unknown one)."""
    model = _meta_model(model_name)
    return None if model is None else model.default_max_part_distance


def _objects_per_pass(model_name: str) -> int | None:
    model = _meta_model(model_name)
    return None if model is None else model.objects_per_pass


def resume_conflict(folder: Path, settings: dict[str, Any]) -> str | None:
    """Why ``folder`` cannot be resumed with ``settings`` (it holds another run's results), or ``None``."""
    from longvos.engine.options import earlier_record_note

    record, difference = _recorded(folder, settings)
    if difference is None:
        return None
    model = settings.get("model")
    note = (earlier_record_note(record.settings, difference, *_own_memory(model), _objects_per_pass(model),
                                settings.get("max_part_distance")) if isinstance(model, str) else "")
    advice = ("use --overwrite (without --resume) to redo the batch, or another --out" if note else
              "use another --out, or --overwrite (without --resume) to redo the batch")
    return f"{folder} holds results made with other settings ({difference}){note}; {advice}"


def is_complete(folder: Path, settings: dict[str, Any]) -> bool:
    """Whether ``folder`` holds this video's finished run with ``settings`` and every mask file it wrote (a deleted
    one sends the video to its worker, whose resume writes it again)."""
    record, difference = _recorded(folder, settings)
    if record is None or not record.done or difference is not None:
        return False
    return all((folder / entry).is_file() for entry in logged_names(folder) or () if entry.endswith((".png", ".npz")))


# -- the display and the summary --------------------------------------------------------------------------------

class ProgressDisplay:
    """An overall bar (videos) and a bar per running video (frames), drawn on stderr; silent when disabled."""

    def __init__(self, total_videos: int, initial: int = 0, enabled: bool = True):
        self.enabled = enabled
        self._overall = tqdm(total=total_videos, initial=initial, unit="video", desc="batch", disable=not enabled,
                             dynamic_ncols=True, file=sys.stderr)
        self._videos: dict[str, tqdm] = {}
        self._notes: set[str] = set()

    def __call__(self, event: Event) -> None:
        if isinstance(event, VideoStarted):
            self._videos[event.name] = tqdm(total=event.total_frames, unit="frame", leave=False, file=sys.stderr,
                                            desc=f"{event.name} [{event.worker}]", disable=not self.enabled,
                                            dynamic_ncols=True)
        elif isinstance(event, FramesDone) and event.name in self._videos:
            bar = self._videos[event.name]
            bar.update(event.frames - bar.n)
        elif isinstance(event, VideoFinished):
            bar = self._videos.pop(event.result.name, None)
            if bar is not None:
                bar.close()
            self._overall.update(1)
            if event.result.status == "failed":
                self.write(f"failed: {event.result.name}: {event.result.reason}")
        elif isinstance(event, WorkerNote) and event.message not in self._notes:
            self._notes.add(event.message)
            self.write(f"note: {event.message}")

    def write(self, message: str) -> None:
        """A line above the bars; printed with or without bars, since failures and notes matter either way."""
        tqdm.write(message, file=sys.stderr)

    def close(self) -> None:
        for bar in self._videos.values():
            bar.close()
        self._videos.clear()
        self._overall.close()


@dataclass
class BatchSummary:
    results: list[VideoResult]  # in manifest order
    seconds: float  # wall time of the whole batch
    out_dir: Path

    def count(self, status: str) -> int:
        return sum(result.status == status for result in self.results)

    @property
    def frames(self) -> int:
        return sum(result.frames for result in self.results)

    @property
    def fps(self) -> float:
        """Frames segmented per second of wall time, over all workers together."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def csv_path(self) -> Path:
        return self.out_dir / SUMMARY_FILE

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0

    def table(self, reason_width: int = 100) -> str:
        """A plain-text table: one row per video, then the totals."""
        rows = [("video", "status", "frames", "seconds", "fps", "reason")]
        for r in self.results:
            reason = r.reason if len(r.reason) <= reason_width else r.reason[: reason_width - 3] + "..."
            rows.append((r.name, r.status, str(r.frames), f"{r.seconds:.1f}", f"{r.fps:.2f}", reason))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        lines = ["  ".join([cell.ljust(width) if i < 2 else cell.rjust(width)
                            for i, (cell, width) in enumerate(zip(row, widths))] + [row[-1]]).rstrip()
                 for row in rows]
        lines.insert(1, "-" * max(len(line) for line in lines))
        lines.append(f"{self.count('done')} done, {self.count('skipped')} skipped, {self.count('failed')} failed; "
                     f"{self.frames} frames in {self.seconds:.1f} s ({self.fps:.2f} fps overall)")
        return "\n".join(lines)

    def write_csv(self, path: Path | None = None) -> Path:
        """Write the per-video results (full reasons) to ``out_dir/batch-summary.csv``, atomically."""
        path = path or self.csv_path
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        for r in self.results:
            writer.writerow((r.name, r.status, r.frames, f"{r.seconds:.3f}", f"{r.fps:.3f}", r.worker, r.reason))
        atomic_write(path, lambda temporary: temporary.write_text(buffer.getvalue()))
        return path

    def __str__(self) -> str:
        return self.table()
