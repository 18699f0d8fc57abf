"""The plain records that travel between the batch runner and its workers (processes or Ray actors).

They hold only strings and numbers, so they pickle cheaply and identically for every backend.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from longvos.engine.options import SegmentOptions

Status = Literal["done", "skipped", "failed"]


@dataclass(frozen=True)
class WorkItem:
    """One video to segment: where it is, its starting mask, and the output folder name under ``--out``."""

    name: str  # output sub-folder, unique within a batch
    video: str  # absolute path of a video file or frame folder
    mask: str | None  # absolute path of the index-mask PNG for frame ``frame`` (None: the manifest gave none)
    frame: int = 0  # the frame the mask belongs to; segmentation starts there
    origin: str = ""  # where the item came from, for messages ("manifest.csv line 4", "DAVIS sequence x")
    problem: str | None = None  # a fault found while reading the manifest: the item fails with it, unrun


@dataclass(frozen=True)
class BatchOptions(SegmentOptions):
    """How every video of a batch is segmented: the :class:`~longvos.engine.options.SegmentOptions` (``device``,
    ``start``, ``progress`` are set per worker and video), plus the overlay format and who chose ``threads``.
    ``threads`` is per worker (None: ``run_batch`` picks the free cores / workers)."""

    overlay: str | None = None  # "mp4" or "webm": also write <out>/<name>/overlay.<ext>
    #: Whether ``run_batch`` chose ``threads`` (none was given): an interrupted video then resumes with the count its
    #: run recorded (another count may change the bytes); a given count is used, with a warning if it differs.
    threads_chosen: bool = False

    def settings(self) -> dict[str, Any]:
        """What must match for a resumed batch to count an earlier result as its own (threads only set speed; the
        checkpoint, None: random weights, is in the record already)."""
        return {name: getattr(self, name) for name in BATCH_SETTINGS}


#: The fields of :class:`BatchOptions` in a batch's completion records.
BATCH_SETTINGS = ("model", "checkpoint", "dtype", "memory", "mem_gap", "max_size", "overlay", "per_object",
                  "save_probs")


@dataclass
class VideoResult:
    """What happened to one work item."""

    name: str
    status: Status
    frames: int = 0  # frames segmented by this run
    seconds: float = 0.0
    reason: str = ""  # why it failed or was skipped
    worker: str = ""  # which worker ran it ("cpu:0#1", "ray#0", ...)
    threads: int = 0  # torch intra-op CPU threads of the worker that ran it (0: no worker ran it)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def output_folder(out_root: str | Path, item: WorkItem) -> Path:
    return Path(out_root) / item.name
