"""The ``ray`` backend: the same workers as ``local``, as Ray actors spread over a cluster (optional extra).

Each actor holds one GPU (``num_gpus=1``; Ray sets ``CUDA_VISIBLE_DEVICES``, so the actor's ``cuda`` is its GPU) or,
on a cluster without GPUs, a share of CPUs. An actor loads the model once and takes one whole video at a time (VOS
is sequential within a video), and the driver hands the next video to whichever actor finishes first. Progress
travels through a Ray queue; an actor that dies fails only its current video and is replaced.

Runs on an existing cluster when Ray is already initialised or ``address`` is given (``"auto"``, ``"ray://..."``);
otherwise it starts a local Ray instance for the run and stops it afterwards. Every node needs longvos installed.
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from longvos.batch.events import Event, VideoFinished
from longvos.batch.items import BatchOptions, VideoResult, WorkItem
from longvos.io.errors import InputError

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
    """The actor: a :class:`~longvos.batch.worker.VideoWorker` that sends its progress to a Ray queue."""

    def __init__(self, options: BatchOptions, device: str, label: str, threads: int, progress_queue: Any):
        from longvos.batch.worker import VideoWorker

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
