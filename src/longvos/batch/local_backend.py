"""The ``local`` backend: one worker process per device (or several), pulling videos from a shared work queue.

This is the pattern of aot-benchmark's multi-GPU evaluation: processes are spawned (safe with CUDA), each loads the
model once and takes the next video when it finishes one, so uneven video lengths balance themselves. A worker
process that dies (killed, out of memory, a crash in native code) fails only the video it was working on; a
replacement process takes over the rest of the queue.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from longvos.batch.events import Event, VideoFinished, VideoStarted
from longvos.batch.items import BatchOptions, VideoResult, WorkItem
from longvos.device import resolve_device
from longvos.engine.segmenter import usable_device
from longvos.io.errors import InputError

#: Seconds between checks that every worker process is still alive.
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


def run_local(items: list[WorkItem], out_root: str, options: BatchOptions, resume: bool,
              on_event: Callable[[Event], None], specs: list[WorkerSpec] | None = None) -> list[VideoResult]:
    """Segment ``items`` with worker processes; returns one result per item, in the order they finished."""
    specs = (specs or plan_workers(threads=options.threads))[: len(items)]  # no idle workers to start
    context = mp.get_context("spawn")
    tasks, events = context.Queue(), context.Queue()
    for item in items:
        tasks.put(item)
    for _ in specs:
        tasks.put(None)  # one stop sign per worker

    def start(spec: WorkerSpec) -> mp.process.BaseProcess:
        process = context.Process(target=_worker_main, args=(spec, options, out_root, resume, tasks, events),
                                  name=f"longvos-batch-{spec.label}", daemon=True)
        process.start()
        return process

    processes = {spec.label: (spec, start(spec)) for spec in specs}
    in_flight: dict[str, str] = {}  # worker label -> name of the video it works on
    results: list[VideoResult] = []
    restarts_left = len(items)  # bounds a worker that dies before it can take any video

    def handle(event: Event) -> None:
        if isinstance(event, VideoStarted):
            in_flight[event.worker] = event.name
        elif isinstance(event, VideoFinished):
            in_flight.pop(event.result.worker, None)
            results.append(event.result)
        on_event(event)

    def replace_dead_workers() -> None:
        nonlocal restarts_left
        for label, (spec, process) in list(processes.items()):
            if process.is_alive() or process.exitcode == 0:
                continue
            _drain(events, handle)  # what it said before it died
            name = in_flight.pop(label, None)
            if name is not None:
                handle(VideoFinished(VideoResult(name, "failed", worker=label, reason=(
                    f"worker process {label} died (exit code {process.exitcode}) while segmenting it"))))
            del processes[label]
            if len(results) + len(in_flight) < len(items) and restarts_left > 0:
                restarts_left -= 1
                processes[label] = (spec, start(spec))  # it takes over the dead worker's stop sign too

    completed = False
    try:
        last_check = time.monotonic()
        while len(results) < len(items) and processes:
            try:
                handle(events.get(timeout=POLL_SECONDS))
            except queue.Empty:
                pass
            if time.monotonic() - last_check >= POLL_SECONDS:
                last_check = time.monotonic()
                replace_dead_workers()
        finished = {result.name for result in results}
        for item in items:  # only when every worker died and none could be restarted
            if item.name not in finished:
                handle(VideoFinished(VideoResult(item.name, "failed", reason="not run: every worker process died")))
        completed = True
    finally:
        for _, process in processes.values():
            if not completed:
                process.terminate()  # Ctrl+C or an error here: stop mid-video (every written frame is whole)
            process.join(timeout=10)  # after a complete run, workers stop at their stop sign
            if process.is_alive():
                process.kill()
        tasks.close()
        events.close()
    return results


def _drain(events: mp.Queue, handle: Callable[[Event], None]) -> None:
    while True:
        try:
            handle(events.get(timeout=0.1))
        except queue.Empty:
            return


def _worker_main(spec: WorkerSpec, options: BatchOptions, out_root: str, resume: bool, tasks: mp.Queue,
                 events: mp.Queue) -> None:
    """A worker process: videos from ``tasks`` until its stop sign, results and progress to ``events``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle: it stops the workers
    from longvos.batch.worker import VideoWorker  # imported here: torch loads in the child, after spawn

    worker = VideoWorker(options, spec.device, spec.label, spec.threads)
    while (item := tasks.get()) is not None:
        result = worker.process(item, out_root, resume, events.put)
        events.put(VideoFinished(result))
