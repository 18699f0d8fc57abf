"""The plain records that travel between the batch runner and its workers (processes or Ray actors): the work
items, the options, the results, and the progress events workers send back.

They hold only strings and numbers, so they pickle cheaply and identically for every backend. Workers never draw
anything themselves (several processes writing bars to one terminal garble it): they send small events back
(through a pipe per worker process, or a Ray queue), and the runner's display shows them.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

from longvos.engine.options import SegmentOptions, setting
from longvos.engine.outputs import RECORD_PREFIX, is_os_metadata
from longvos.io.errors import InputError
from longvos.io.writer import partial_path

Status = Literal["done", "skipped", "failed"]

#: The batch's own file in ``--out``, beside the video folders.
SUMMARY_FILE = "batch-summary.csv"
#: The temporary name ``atomic_write`` gives the summary while it is written.
SUMMARY_PARTIAL = partial_path(SUMMARY_FILE).name
#: How longvos's own records begin (progress record, output list, state snapshot): the one prefix of
#: :mod:`longvos.engine.outputs`.
RECORD_START = RECORD_PREFIX
#: Names Windows gives to devices, whatever their extension ("nul.txt" too) and case: a folder cannot have them.
WINDOWS_DEVICE_NAMES = frozenset({"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
                                  *(f"{port}{digit}" for port in ("COM", "LPT") for digit in "0123456789¹²³")})
#: Characters no Windows file name may hold (besides the separators and control characters).
WINDOWS_FORBIDDEN = '<>:"|?*'


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

    #: "mp4" or "webm": also write <out>/<name>/overlay.<ext>; a setting (in each video's record), unlike the
    #: overlay path of a single ``segment`` run
    overlay: str | None = setting(None)
    #: Whether ``run_batch`` chose ``threads`` (none was given): an interrupted video then resumes with the count its
    #: run recorded (another count may change the bytes); a given count is used, with a warning if it differs.
    threads_chosen: bool = False


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


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a video's output folder under ``--out``, or ``None``: it must be one plain folder
    name on every system (never a path that leads out of ``--out``, nor ``--out`` itself, nor elsewhere on Windows:
    no drive, no character or device name Windows refuses, no trailing dot or space, which Windows drops), and none
    of the batch's own files there (the summary, its temporary file, longvos's records; compared ignoring case, as
    some file systems do) nor of the files operating systems leave in folders (``.DS_Store``, ``._*``, ...)."""
    if not name or name in (".", "..") or any(char in name for char in "/\\\0"):
        return f"name {name!r} must be a plain folder name"
    why = _windows_problem(name)
    if why is None and any((flavour("out") / name).parent != flavour("out") for flavour in (PurePosixPath,
                                                                                            PureWindowsPath)):
        why = "it leads out of --out"  # a last guard: whatever the rules above miss, the join must stay inside
    if why is not None:
        return f"name {name!r} must be a plain folder name ({why})"
    folded = name.casefold()
    # The whole ".longvos" namespace, not only the records' ".longvos-": no video folder passes for a record.
    if folded in (SUMMARY_FILE, SUMMARY_PARTIAL) or folded.startswith(RECORD_PREFIX.rstrip("-")):
        return (f"name {name!r} is taken by the batch's own files in --out ({SUMMARY_FILE}, {SUMMARY_PARTIAL}, "
                f"{RECORD_PREFIX}* records): give the video another name (a manifest's 'name' column)")
    if is_os_metadata(name):
        return (f"name {name!r} is that of a file operating systems leave in folders (.DS_Store, Thumbs.db, "
                f"desktop.ini, ._*): give the video another name (a manifest's 'name' column)")
    return None


def _windows_problem(name: str) -> str | None:
    """Why Windows would not take ``name`` as one folder inside another (``None``: it would)."""
    if PureWindowsPath(name).drive or PureWindowsPath(name).anchor:
        return "no drive"
    if any(char in WINDOWS_FORBIDDEN for char in name):
        return f"none of {WINDOWS_FORBIDDEN}"
    if any(unicodedata.category(char) == "Cc" for char in name):
        return "no control characters"
    if name[-1] in ". ":
        return "no trailing dot or space"
    if name.split(".", 1)[0].rstrip(" ").upper() in WINDOWS_DEVICE_NAMES:
        return "not a Windows device name such as CON, NUL, COM1 or LPT1"
    return None


def output_folder(out_root: str | Path, item: WorkItem) -> Path:
    """``out_root/<name>``; refuses (:class:`InputError`) a name that would lead elsewhere (:func:`name_problem`)."""
    problem = name_problem(item.name)
    if problem is not None:
        raise InputError(problem)
    return Path(out_root) / item.name


# -- progress events (worker -> runner) -------------------------------------------------------------------------

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
