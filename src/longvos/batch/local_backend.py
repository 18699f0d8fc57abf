"""The ``local`` backend: one worker process per device (or several), each handed the next video when it is free.

This is the pattern of aot-benchmark's multi-GPU evaluation: processes are spawned (safe with CUDA), each loads the
model once and asks for more work when it finishes a video, so uneven video lengths balance themselves. The parent
is the work queue, and each worker talks to it over its own pipe: a worker process that dies (killed, out of
memory, a crash in native code) can never leave a shared lock held that would hang the others (as a shared
``multiprocessing.Queue`` can), fails only the video it was working on, and is replaced for the rest.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

import torch

from longvos.batch.events import Event, VideoFinished
from longvos.batch.items import BatchOptions, VideoResult, WorkItem
from longvos.device import resolve_device
from longvos.engine.segmenter import usable_device
from longvos.io.errors import InputError

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
    from longvos.batch.worker import VideoWorker  # imported here: torch loads in the child, after spawn

    worker = VideoWorker(options, spec.device, spec.label, spec.threads)
    while (item := connection.recv()) is not None:
        result = worker.process(item, out_root, resume, connection.send)
        connection.send(VideoFinished(result))
    connection.close()
