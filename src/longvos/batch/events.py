"""Progress events that workers send to the batch runner, and the terminal display built from them.

Workers never draw anything themselves (several processes writing bars to one terminal garble it): they send small
events back (through a pipe per worker process, or a Ray queue), and the runner's :class:`ProgressDisplay` shows one
overall bar plus one bar per video in progress.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from tqdm import tqdm

from longvos.batch.items import VideoResult


@dataclass(frozen=True)
class VideoStarted:
    name: str
    worker: str
    total_frames: int  # frames this run will segment
    pid: int  # of the process segmenting it (for operators, and for tests that need to kill a worker)


@dataclass(frozen=True)
class FramesDone:
    name: str
    frames: int  # frames segmented so far by this run


@dataclass(frozen=True)
class VideoFinished:
    result: VideoResult


@dataclass(frozen=True)
class WorkerNote:
    """Something a worker wants the user to read once (e.g. "random weights"), not once per worker."""

    worker: str
    message: str


Event = VideoStarted | FramesDone | VideoFinished | WorkerNote


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
