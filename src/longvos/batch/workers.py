"""The batch workers: :class:`VideoWorker`, which loads the model once and segments work items one after another,
each in isolation, and the two backends that run it, ``local`` (worker processes) and ``ray`` (Ray actors).

Both backends run the same :class:`VideoWorker` (in a spawned process, or in a Ray actor), so a video gives the same
masks whichever backend ran it. Isolation: every failure of one video (bad input, a decode error, an exception in
the model) becomes a ``failed`` result with its reason, and the worker goes on with the next video; each video gets
a fresh session, and memory is released before the next one starts.

**local**: one worker process per device (or several), each handed the next video when it is free. This is the
pattern of aot-benchmark's multi-GPU evaluation: processes are spawned (safe with CUDA), each loads the model once
and asks for more work when it finishes a video, so uneven video lengths balance themselves. The parent is the work
queue, and each worker talks to it over its own pipe: a worker process that dies (killed, out of memory, a crash in
native code) can never leave a shared lock held that would hang the others (as a shared ``multiprocessing.Queue``
can), fails only the video it was working on, and is replaced for the rest.

**ray** (optional extra): the same workers as Ray actors spread over a cluster. Each actor holds one GPU
(``num_gpus=1``; Ray sets ``CUDA_VISIBLE_DEVICES``, so the actor's ``cuda`` is its GPU) or, on a cluster without
GPUs, a share of CPUs. An actor takes one whole video at a time (VOS is sequential within a video), and the driver
hands the next video to whichever actor finishes first. Progress travels through a Ray queue; an actor that dies
fails only its current video and is replaced. Runs on an existing cluster when Ray is already initialised or
``address`` is given (``"auto"``, ``"ray://..."``); otherwise it starts a local Ray instance for the run and stops it
afterwards. Every node needs longvos installed.
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import signal
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import torch

from longvos.batch.items import (BatchOptions, Event, FramesDone, VideoFinished, VideoResult, VideoStarted, WorkerNote,
                                 WorkItem, output_folder)
from longvos.device import resolve_device
from longvos.engine.outputs import refuse_used_folder
from longvos.engine.progress import RunProgress
from longvos.engine.segmenter import Segmenter, usable_device
from longvos.engine.threads import set_threads
from longvos.io.errors import InputError, one_line
from longvos.io.video import VideoTruncatedWarning, open_video

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
                    self._segmenter = options.replace(device=self.device).load_segmenter()
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
        # Opened (a video file indexed) once: a missing or unreadable video fails before any folder exists, its
        # frame count sizes the progress display, and segment_video reuses it (the run is recorded under the path).
        with open_video(item.video) as source:
            total = source.num_frames - item.frame
            folder = output_folder(out_root, item)
            if not resume:  # run_batch has cleared longvos's files (--overwrite): what is left there is someone else's
                refuse_used_folder(folder, "longvos never writes beside files it did not write: move them, or use "
                                           "another --out")
            folder.mkdir(parents=True, exist_ok=True)
            earlier = RunProgress.load(folder) if resume else None  # frames an interrupted run already finished
            already = earlier.completed if earlier is not None else 0
            emit(VideoStarted(item.name, self.label, max(total - already, 0), os.getpid()))
            counter = _FrameCounter(item.name, emit)
            options = self.options
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", VideoTruncatedWarning)
                    # Never overwrite=True: run_batch has refused (or, with --overwrite, cleared) earlier results, so
                    # the folder is empty; anything in it is not longvos's and is refused. segment_video's progress
                    # record is the video's record: the runner reads it to skip finished videos on --resume.
                    # The loaded model carries the checkpoint; each video's session takes max_size, memory and mem_gap.
                    run = options.replace(model=segmenter, checkpoint=None, start=item.frame, progress=False,
                                          threads=None if options.threads_chosen else self.threads)  # None: resume's
                    summary = segment_video(
                        item.video, {item.frame: item.mask}, folder, run, resume=resume, overwrite=False,
                        overlay=folder / f"overlay.{options.overlay}" if options.overlay else None, on_frame=counter,
                        source=source,
                    )
            except SegmentationError as err:
                raise InputError(str(err)) from None  # its message already says where it stopped and how to resume
            notes = [str(warning.message) for warning in caught if issubclass(warning.category, VideoTruncatedWarning)]
            for warning in caught:  # one line each in the runner's display, not a traceback-style line per process
                emit(WorkerNote(self.label, str(warning.message)))
            counter.flush()
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


# -- the local backend: worker processes ------------------------------------------------------------------------

#: Seconds between checks on the worker processes while no message arrives.
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class WorkerSpec:
    label: str  # "cpu#0", "cuda:1#0": device and worker number on it
    device: str
    threads: int | None  # torch CPU threads (None: torch's default)


def plan_workers(devices: list[str] | None = None, workers: int | None = None,
                 threads: int | None = None) -> list[WorkerSpec]:
    """Workers over ``devices`` (default: every CUDA GPU, else MPS, else the CPU), one per device unless
    ``workers`` says how many in all (spread round-robin). CPU workers share the cores unless ``threads`` is set."""
    if not devices:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        devices = [f"cuda:{i}" for i in range(count)] or [str(resolve_device("auto"))]
    for device in devices:
        usable_device(device)  # a device this machine lacks fails here, not once per video in every worker
    count = workers or len(devices)
    if count < 1:
        raise InputError(f"workers must be >= 1, got {count}")
    assigned = [devices[i % len(devices)] for i in range(count)]
    cpu_workers = sum(device == "cpu" for device in assigned)
    specs = []
    for i, device in enumerate(assigned):
        share = threads or (max(1, (os.cpu_count() or 1) // cpu_workers) if device == "cpu" else None)
        specs.append(WorkerSpec(f"{device}#{assigned[:i].count(device)}", device, share))
    return specs


class _Worker:
    """The parent's handle on one worker process: its pipe and the video it is working on."""

    def __init__(self, context: mp.context.SpawnContext, spec: WorkerSpec, options: BatchOptions, out_root: str,
                 resume: bool):
        self.spec = spec
        self.connection, child_end = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(spec, options, out_root, resume, child_end),
                                       name=f"longvos-batch-{spec.label}", daemon=True)
        self.process.start()
        child_end.close()  # the child holds its own copy; the parent then sees EOF when the child dies
        self.item: WorkItem | None = None

    def give(self, item: WorkItem | None) -> None:
        """Send the next video, or ``None``: no more work, stop."""
        self.item = item
        self.connection.send(item)


def run_local(items: list[WorkItem], out_root: str, options: BatchOptions, resume: bool,
              on_event: Callable[[Event], None], specs: list[WorkerSpec] | None = None) -> list[VideoResult]:
    """Segment ``items`` with worker processes; returns one result per item, in the order they finished."""
    specs = (specs or plan_workers(threads=options.threads))[: len(items)]  # no idle workers to start
    context = mp.get_context("spawn")
    pending = deque(items)
    results: list[VideoResult] = []
    restarts_left = len(items)  # bounds a worker that keeps dying before it can finish anything
    workers: list[_Worker] = []

    def finish(result: VideoResult) -> None:
        results.append(result)
        on_event(VideoFinished(result))

    def start(spec: WorkerSpec) -> None:
        worker = _Worker(context, spec, options, out_root, resume)
        workers.append(worker)
        feed(worker)

    def feed(worker: _Worker) -> None:
        try:
            worker.give(pending.popleft() if pending else None)
        except OSError:  # it died before it could take the video: the video goes back to the queue
            if worker.item is not None:
                pending.appendleft(worker.item)
                worker.item = None

    def bury(worker: _Worker) -> None:
        """A worker that stopped: fail its video if it died during one, and replace it if work remains."""
        nonlocal restarts_left
        workers.remove(worker)
        worker.process.join(timeout=10)
        worker.connection.close()
        if worker.item is not None:
            finish(VideoResult(worker.item.name, "failed", worker=worker.spec.label, reason=(
                f"worker process {worker.spec.label} died (exit code {worker.process.exitcode}) while segmenting "
                f"it")))
        if pending and restarts_left > 0:
            restarts_left -= 1
            start(worker.spec)

    completed = False
    try:
        for spec in specs:
            start(spec)
        while workers:
            by_connection = {worker.connection: worker for worker in workers}
            by_sentinel = {worker.process.sentinel: worker for worker in workers}
            for ready in wait([*by_connection, *by_sentinel], timeout=POLL_SECONDS):
                worker = by_connection.get(ready) or by_sentinel[ready]
                if worker not in workers:
                    continue  # both its pipe and its sentinel were ready: already handled
                if ready is worker.connection:
                    try:
                        event = worker.connection.recv()
                    except (EOFError, OSError, pickle.UnpicklingError):  # died, maybe mid-message
                        bury(worker)
                        continue
                    if isinstance(event, VideoFinished):
                        worker.item = None
                        finish(event.result)
                        feed(worker)
                    else:
                        on_event(event)
                elif not worker.connection.poll():  # exited, and nothing it said is left unread
                    bury(worker)
        for item in pending:  # only when workers kept dying and the restarts ran out
            finish(VideoResult(item.name, "failed", reason="not run: the worker processes kept dying"))
        completed = True
    finally:
        for worker in workers:
            if not completed:
                worker.process.terminate()  # Ctrl+C or an error here: stop mid-video (every written frame is whole)
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()
            worker.connection.close()
    return results


def _worker_main(spec: WorkerSpec, options: BatchOptions, out_root: str, resume: bool, connection: Connection) -> None:
    """A worker process: videos from ``connection`` until ``None``; progress and results back through it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle: it stops the workers
    worker = VideoWorker(options, spec.device, spec.label, spec.threads)
    while (item := connection.recv()) is not None:
        result = worker.process(item, out_root, resume, connection.send)
        connection.send(VideoFinished(result))
    connection.close()


# -- the ray backend: Ray actors --------------------------------------------------------------------------------

#: Seconds the driver waits for a finished video before it forwards queued progress events.
WAIT_SECONDS = 0.2


@dataclass(frozen=True)
class ActorPlan:
    count: int
    device: str  # "cuda" (one GPU each) or "cpu"
    num_cpus: float
    num_gpus: float
    threads: int


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError("the ray backend needs Ray: pip install 'longvos[ray]'") from None
    return ray


def plan_actors(resources: dict[str, float], items: int, workers: int | None, threads: int | None,
                use_gpus: bool = True) -> ActorPlan:
    """How many actors, with what resources: one per GPU of the cluster, else one per ``threads`` CPUs."""
    gpus = int(resources.get("GPU", 0)) if use_gpus else 0
    if gpus:
        return ActorPlan(min(workers or gpus, items), "cuda", 1, 1, threads or 1)
    threads = threads or 1
    cpus = int(resources.get("CPU", 1))
    # An actor never asks for more CPUs than the cluster has (it would wait forever); its torch threads stay
    # ``threads``, the count every backend runs workers with.
    return ActorPlan(min(workers or max(1, cpus // threads), items), "cpu", min(threads, max(cpus, 1)), 0, threads)


class RayVideoWorker:
    """The actor: a :class:`VideoWorker` that sends its progress to a Ray queue."""

    def __init__(self, options: BatchOptions, device: str, label: str, threads: int, progress_queue: Any):
        self._worker = VideoWorker(options, device, label, threads)
        self._queue = progress_queue

    def process(self, item: WorkItem, out_root: str, resume: bool) -> VideoResult:
        return self._worker.process(item, out_root, resume, self._queue.put)


def run_ray(items: list[WorkItem], out_root: str, options: BatchOptions, resume: bool,
            on_event: Callable[[Event], None], *, workers: int | None = None, address: str | None = None,
            use_gpus: bool = True) -> list[VideoResult]:
    """Segment ``items`` with Ray actors; returns one result per item, in the order they finished."""
    ray = import_ray()
    from ray.util.queue import Queue

    started_here = not ray.is_initialized()
    if started_here:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # clusters are often offline; respect a user's choice
        ray.init(address=address, include_dashboard=False)
    progress = Queue(actor_options={"num_cpus": 0})
    plan = plan_actors(ray.cluster_resources(), len(items), workers, options.threads, use_gpus)
    actor_class = ray.remote(RayVideoWorker).options(num_cpus=plan.num_cpus, num_gpus=plan.num_gpus)

    def make_actor(index: int) -> Any:
        return actor_class.remote(options, plan.device, f"ray:{plan.device}#{index}", plan.threads, progress)

    def forward_progress() -> None:
        while not progress.empty():
            on_event(progress.get_nowait())

    actors = [make_actor(i) for i in range(plan.count)]
    idle, pending = list(range(plan.count)), deque(items)
    running: dict[Any, tuple[int, WorkItem]] = {}  # result reference -> (actor index, item)
    results: list[VideoResult] = []
    try:
        while pending or running:
            while idle and pending:
                index, item = idle.pop(0), pending.popleft()
                running[actors[index].process.remote(item, out_root, resume)] = (index, item)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_SECONDS)
            forward_progress()
            for reference in ready:
                index, item = running.pop(reference)
                try:
                    result = ray.get(reference)
                except ray.exceptions.RayActorError as err:
                    label = f"ray:{plan.device}#{index}"
                    result = VideoResult(item.name, "failed", worker=label, reason=(
                        f"Ray worker {label} died while segmenting it ({type(err).__name__})"))
                    actors[index] = make_actor(index)
                except ray.exceptions.RayError as err:  # e.g. an item that cannot be sent to the cluster
                    result = VideoResult(item.name, "failed", reason=f"Ray: {type(err).__name__}: {err}")
                forward_progress()
                results.append(result)
                on_event(VideoFinished(result))
                idle.append(index)
    finally:
        for actor in actors:
            ray.kill(actor)
        progress.shutdown()
        if started_here:
            ray.shutdown()
    return results
