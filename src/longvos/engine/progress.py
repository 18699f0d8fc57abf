"""The run record and state snapshot that make ``segment --resume`` exact.

``<out>/.longvos-progress.json`` holds the run's settings (with a sha256 of every prompt mask's content, of the
weights file and a fingerprint of the video), how many frames (in processing order) are complete, and the torch
CPU thread count they were computed with (not a setting: a resume reuses it unless told otherwise). The background
writer advances it only after a frame's files have been renamed into place, and it is itself replaced atomically, so
a frame it counts is never a half-written PNG. A resumed run must have the same settings.

``<out>/.longvos-state.pt`` is one snapshot of the model state (the session's, see
:meth:`~longvos.engine.session.Session.snapshot`), overwritten every N frames: ``torch.save`` of plain tensors,
ints, strings and lists, read back with ``torch.load(..., weights_only=True)``. It names the frame count it
describes and the settings digest of its run. The writer writes it (atomically) after that frame's files and
before the next frame's, then records it in the progress record, so the snapshot never describes a frame that the
record does not count; a resume restores it and recomputes the frames from there on (rewriting none that are
complete), which gives the same bytes as an uninterrupted run.

The batch tool keeps no record of its own: each video's folder holds this record, which ``batch --resume`` reads to
skip finished videos (:func:`longvos.batch.runner.item_settings`). ``done`` is set only after the last frame's files,
with the frames that run segmented and its seconds.

The record also names the overlay videos the run drew (:meth:`RunProgress.note_overlay`, before drawing one): the only
existing files a resume or an ``--overwrite`` of that run may replace with an overlay (any other file at an overlay
path is the user's, and refused).
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from longvos.io.errors import VideoReadError
from longvos.io.video import ImageSequenceSource, is_glob
from longvos.io.writer import atomic_write

PROGRESS_FILE = ".longvos-progress.json"
STATE_FILE = ".longvos-state.pt"
FORMAT_VERSION = 1  # records without the content hashes (older longvos) differ in settings: no resume
STATE_VERSION = 1


@dataclass
class RunProgress:
    settings: dict[str, Any]
    completed: int = 0  # frames complete, counted in processing order
    last_frame: str | None = None  # name of the last complete frame
    done: bool = False
    snapshot: int = 0  # frames (processing order) described by the state snapshot, 0: none
    #: torch intra-op CPU threads the frames were computed with (not a setting: a resume reuses it unless told
    #: otherwise, since another count may change the bytes)
    threads: int | None = None
    frames: int = 0  # once done: frames segmented by the run that finished (after those a resume found complete)
    seconds: float = 0.0  # once done: that run's wall time
    #: absolute paths of the overlay videos this run drew (noted before drawing), which it may replace
    overlays: list[str] = field(default_factory=list)

    def note_overlay(self, path: str | Path) -> bool:
        """Name the overlay ``path`` among this run's (call it, and save the record, before the overlay is drawn,
        so that no overlay of the run exists unnamed); True if it was not named yet."""
        name = str(Path(path).resolve())
        if name in self.overlays:
            return False
        self.overlays.append(name)
        return True

    def save(self, out_dir: Path) -> None:
        record = {"version": FORMAT_VERSION, **asdict(self)}
        atomic_write(out_dir / PROGRESS_FILE, lambda path: path.write_text(json.dumps(record, indent=1)))

    @classmethod
    def load(cls, out_dir: Path) -> RunProgress | None:
        """The saved record, or ``None`` if there is none or it is unreadable (then the run starts over)."""
        try:
            return cls.read(out_dir)
        except ValueError:
            return None

    @classmethod
    def read(cls, out_dir: Path) -> RunProgress | None:
        """The saved record, or ``None`` if there is none; raises :class:`ValueError` with the reason (one line) if
        there is one that cannot be read (damaged, truncated, or written by another longvos version)."""
        try:
            text = (out_dir / PROGRESS_FILE).read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read it: {err.strerror if isinstance(err, OSError) else err}") from None
        try:
            record = json.loads(text)
        except RecursionError:
            raise ValueError("it is not a record (nested too deeply)") from None
        except ValueError as err:
            raise ValueError(f"it is not valid JSON: {err}" if text.strip() else "it is empty") from None
        if not isinstance(record, dict):
            raise ValueError(f"it holds a JSON {type(record).__name__}, not a record")
        if record.get("version") != FORMAT_VERSION:
            raise ValueError(f"it has format version {record.get('version')!r}, this longvos reads version "
                             f"{FORMAT_VERSION} (written by another longvos version)")
        try:
            threads = record.get("threads")
            if not isinstance(record["settings"], dict):
                raise TypeError("settings")
            overlays = record.get("overlays", [])  # absent from the records of older longvos: none named
            if not isinstance(overlays, list) or not all(isinstance(path, str) for path in overlays):
                raise TypeError("overlays is not a list of paths")
            return cls(record["settings"], int(record["completed"]), record.get("last_frame"), bool(record["done"]),
                       int(record.get("snapshot", 0)),
                       int(threads) if isinstance(threads, int) and threads > 0 else None,
                       int(record.get("frames", 0)), float(record.get("seconds", 0.0)), overlays)
        except KeyError as err:
            raise ValueError(f"it lacks the field {err}") from None
        except (ValueError, TypeError, AttributeError, OverflowError) as err:
            raise ValueError(f"a field has the wrong type ({err})") from None


def settings_digest(settings: dict[str, Any]) -> str:
    """sha256 of a run's settings: ties a state snapshot to the run that wrote it."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def mask_digest(ids: np.ndarray, palette: np.ndarray | None) -> str:
    """sha256 of a prompt mask's content (its index map, and the palette its outputs are written with)."""
    digest = hashlib.sha256(f"{ids.shape}".encode())
    digest.update(np.ascontiguousarray(ids, dtype=np.int64).tobytes())
    if palette is not None:
        digest.update(np.ascontiguousarray(palette, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def weights_record(path: str | Path | None) -> dict[str, Any] | None:
    """What identifies the weights a run loads (``None``: random weights): the file's absolute path, size and
    sha256, so that a resume with other weights at the same path (a new download, a replaced bundled file) is
    refused. The sha256 is computed once per file version in a process (cached on path, size and mtime)."""
    if path is None:
        return None
    path = Path(path).expanduser().resolve()
    try:
        stat = path.stat()
    except OSError:
        return {"path": str(path), "size": None, "sha256": None}
    return {"path": str(path), "size": stat.st_size,
            "sha256": _file_sha256(str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)}


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int, inode: int) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def video_fingerprint(path: str | Path) -> str | None:
    """A cheap fingerprint of a video: for a file its size and the sha256 of its first and last MiB; for a frame
    folder the names of the frames its reader reads (a frame repaired after a failure may change; frames are not
    re-read), so that other files there (a README, ``.DS_Store``, an overlay or its temporary file) change nothing.
    for a glob the paths it matches, as for a folder. ``None`` for anything else (an in-memory source)."""
    text, path = str(path), Path(path)
    try:
        if is_glob(text):
            matched = ImageSequenceSource.from_glob(text).paths
            return _frames_fingerprint(matched, [os.path.abspath(frame) for frame in matched])  # however written
        if path.is_file():
            size = path.stat().st_size
            digest = hashlib.sha256()
            with path.open("rb") as file:
                digest.update(file.read(1 << 20))
                if size > 1 << 20:
                    file.seek(max(1 << 20, size - (1 << 20)))
                    digest.update(file.read())
            return f"{size}:{digest.hexdigest()}"
        if path.is_dir():
            frames = ImageSequenceSource.from_folder(path).paths  # the reader's own listing: the frames it reads
            return _frames_fingerprint(frames, [frame.name for frame in frames])
    except (OSError, VideoReadError):
        return None
    return None


def _frames_fingerprint(frames: list[Path], names: list[str]) -> str:
    """The fingerprint of image frames read in the order of ``frames``, named by ``names`` (file names in a folder,
    paths for a glob)."""
    digest = hashlib.sha256()
    # In name order, not reading order: the names alone decide the order, and a folder of frames only keeps the
    # fingerprint that records of earlier longvos versions hold.
    for name in sorted(names):
        digest.update(f"{name}\n".encode())
    # Earlier versions read some folders in another order: a run they recorded is another run, and its resume is
    # refused rather than continued on other frames.
    if frames != sorted(frames, key=lambda frame: _digit_runs_key(frame.name)):  # by whole name: 1.5.jpg first
        digest.update(b"frames in the order of their names without extension\n")
    if frames != sorted(frames, key=lambda frame: _digit_runs_key(frame.stem)):  # 0.2 before 0.04
        digest.update(b"decimal numbers in names in their order\n")
    return digest.hexdigest()


def _digit_runs_key(text: str) -> list[object]:
    """The natural order of earlier versions: digit runs as whole numbers, a decimal point as text."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def encode_state(snapshot: dict[str, Any], completed: int, digest: str) -> bytes:
    """A session snapshot describing ``completed`` frames of the run with settings ``digest``, as file bytes."""
    import torch

    buffer = io.BytesIO()
    torch.save({"version": STATE_VERSION, "completed": completed, "settings_sha256": digest, "session": snapshot},
               buffer)
    return buffer.getvalue()


class UnusableSnapshot(ValueError):
    """A state snapshot that cannot be used (its message says why, as one clause): the run is recomputed."""


def load_state(out_dir: Path, device: Any, digest: str, record: RunProgress) -> dict[str, Any] | None:
    """The state snapshot in ``out_dir`` if it belongs to the run with settings ``digest`` and agrees with its
    ``record``: it describes no more frames than the record counts complete, and no fewer than the snapshot the
    record names (newer is possible: a kill between writing it and noting it). ``None`` when there is no snapshot
    and the record names none; :class:`UnusableSnapshot` (with the reason) for any other snapshot, or for a missing
    one that the record names (the run is then recomputed from its start, which gives the same bytes, only slower).
    Only the header is checked here; the session part is checked when it is restored."""
    import torch

    path = out_dir / STATE_FILE
    try:
        data = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        if record.snapshot:
            raise UnusableSnapshot(f"the file is missing, though the progress record names a snapshot of "
                                   f"{record.snapshot} frame(s)") from None
        return None
    except Exception as err:  # noqa: BLE001 - an unreadable snapshot is not used: the resume recomputes instead
        reason = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise UnusableSnapshot(f"it cannot be read: {reason[:200]}") from None
    if not isinstance(data, dict):
        raise UnusableSnapshot(f"it holds a {type(data).__name__}, not a snapshot")
    if data.get("version") != STATE_VERSION:
        raise UnusableSnapshot(f"it has version {data.get('version')!r}, this longvos reads version {STATE_VERSION}")
    if data.get("settings_sha256") != digest:
        raise UnusableSnapshot("it belongs to a run with other settings")
    completed = data.get("completed")
    if not isinstance(completed, int) or isinstance(completed, bool):
        raise UnusableSnapshot(f"its frame count {completed!r} is not a whole number")
    if not max(record.snapshot, 1) <= completed <= record.completed:
        raise UnusableSnapshot(f"it describes {completed} frame(s), where the progress record counts "
                               f"{record.completed} complete and names a snapshot of {record.snapshot}")
    if not isinstance(data.get("session"), dict):
        raise UnusableSnapshot("it holds no session state")
    return data


def settings_difference(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first setting that differs between two runs, as ``"name: old -> new"``, or ``None``. A prompt mask
    whose content changed reads ``"the mask of frame N changed content since that run: PATH, sha256 ..."``."""
    old_masks, new_masks = saved.get("mask_sha256"), current.get("mask_sha256")
    if isinstance(old_masks, dict) and isinstance(new_masks, dict) and saved.get("masks") == current.get("masks"):
        for frame in sorted(set(old_masks) | set(new_masks), key=str):
            if old_masks.get(frame) != new_masks.get(frame):
                origin = (current.get("masks") or {}).get(frame) or current.get("mask") or "?"
                return (f"the mask of frame {frame} changed content since that run: {origin}, sha256 "
                        f"{str(old_masks.get(frame))[:12]} -> {str(new_masks.get(frame))[:12]}")
    old_weights, new_weights = saved.get("weights"), current.get("weights")
    if isinstance(old_weights, dict) and isinstance(new_weights, dict) and old_weights != new_weights:
        if old_weights.get("path") != new_weights.get("path"):
            return f"weights: {old_weights.get('path')} -> {new_weights.get('path')}"
        return (f"the weights {new_weights.get('path')} changed content since that run: sha256 "
                f"{str(old_weights.get('sha256'))[:12]} -> {str(new_weights.get('sha256'))[:12]}")
    if ("video_fingerprint" in saved and saved.get("video") == current.get("video")
            and saved["video_fingerprint"] != current.get("video_fingerprint")):
        return f"the video {current.get('video')} changed content since that run"
    # A setting the saved run did not record (one an earlier longvos did not know) is named only when nothing else
    # differs, and max_part_distance last of all: the advice for it (--max-part-distance none names what that run
    # used) must not hide a difference it cannot mend.
    for key in sorted(set(saved) | set(current), key=lambda key: (key not in saved, key == "max_part_distance", key)):
        if saved.get(key) != current.get(key):
            return f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
    return None
