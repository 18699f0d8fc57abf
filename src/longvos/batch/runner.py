"""``run_batch``: many videos through ``segment_video``, each isolated, resumable, on a local or Ray backend."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from longvos.batch.completion import RECORD_FILE, is_complete, item_settings, resume_conflict
from longvos.batch.events import Event, ProgressDisplay, VideoFinished
from longvos.batch.items import BatchOptions, VideoResult, WorkItem, output_folder
from longvos.batch.manifest import read_manifest, with_unique_names
from longvos.batch.summary import SUMMARY_FILE, BatchSummary
from longvos.engine.outputs import OUTPUTS_FILE, clear_outputs, refuse_used_folder
from longvos.engine.progress import PROGRESS_FILE
from longvos.io.errors import InputError

BACKENDS = ("local", "ray")
OVERLAY_FORMATS = ("mp4", "webm")


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
    completion record matches are skipped and interrupted ones continue from their last complete frame.
    Without ``resume``, a non-empty ``out_dir`` is refused unless ``overwrite``, which first deletes the files an
    earlier longvos run wrote there (and nothing else). Writes ``out_dir/batch-summary.csv`` when the batch ends
    (an earlier summary is removed when it starts) and returns the summary; raises :class:`InputError` only for problems
    that concern every video (an unknown model or backend, a missing checkpoint, an unusable manifest).
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if resume and overwrite:
        raise InputError("--resume and --overwrite exclude each other: continue the batch, or replace its files")
    options = worker_options(_checked(options or BatchOptions()), devices, workers)
    if isinstance(items, (str, Path)):
        items = read_manifest(items)
    else:  # workers may run elsewhere (another process, a Ray node): give them absolute paths
        items = with_unique_names([replace(item, video=str(Path(item.video).resolve()),
                                           mask=item.mask and str(Path(item.mask).resolve())) for item in items])
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        _prepare_folder(out, overwrite)
    # A summary of an earlier run would contradict the folders as soon as this run changes them.
    (out / SUMMARY_FILE).unlink(missing_ok=True)
    started = time.perf_counter()

    results: list[VideoResult | None] = [_known_result(item, out, options, resume) for item in items]
    todo = [item for item, result in zip(items, results) if result is None]
    position = {item.name: i for i, item in enumerate(items) if results[i] is None}
    display = ProgressDisplay(len(items), initial=len(items) - len(todo), enabled=progress)
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
            from longvos.batch.local_backend import plan_workers, run_local

            run_local(todo, str(out), options, resume, handle, plan_workers(devices, workers, options.threads))
        elif todo:
            from longvos.batch.ray_backend import run_ray

            run_ray(todo, str(out), options, resume, handle, workers=workers, address=ray_address)
    finally:
        display.close()
    summary = BatchSummary([result for result in results if result is not None], time.perf_counter() - started, out)
    summary.write_csv()
    return summary


def _prepare_folder(out: Path, overwrite: bool) -> None:
    """Refuse a batch folder that holds files (unless ``overwrite``); with ``overwrite`` delete what longvos wrote
    in its video folders. Files longvos did not write stay, and each worker refuses a video whose folder holds any."""
    if not overwrite:
        refuse_used_folder(out, "use --resume to continue the batch there, --overwrite to replace the files longvos "
                                "wrote there, or another --out")
    for folder in sorted(entry for entry in out.iterdir() if entry.is_dir()):
        if not any((folder / name).is_file() for name in (RECORD_FILE, PROGRESS_FILE, OUTPUTS_FILE)):
            continue  # not a video folder of a longvos batch: left alone (its video is refused if it has files)
        clear_outputs(folder)  # an overlay longvos wrote is in its output list; any other file stays
        (folder / RECORD_FILE).unlink(missing_ok=True)
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
        return VideoResult(item.name, "failed", reason=f"{item.origin}: {item.problem}")
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
    """Options with an absolute checkpoint path, after the checks that would otherwise fail every video alike."""
    from longvos.models.registry import model_entry

    try:
        model_entry(options.model)
    except ValueError as err:
        raise InputError(str(err)) from None
    if options.overlay is not None and options.overlay not in OVERLAY_FORMATS:
        raise InputError(f"overlay format {options.overlay!r}: use one of {', '.join(OVERLAY_FORMATS)}")
    if options.threads is not None and options.threads < 1:
        raise InputError(f"threads must be >= 1, got {options.threads}")
    if options.checkpoint is None:
        from longvos.engine.segmenter import weights_for

        weights_for(options.model, None, options.allow_random_weights)  # no weights: refused once, not per video
        return options
    checkpoint = Path(options.checkpoint).expanduser().resolve()
    if not checkpoint.is_file():
        raise InputError(f"{options.checkpoint}: checkpoint file not found")
    return replace(options, checkpoint=str(checkpoint))
