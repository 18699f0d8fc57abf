"""The per-video record that makes ``batch --resume`` skip finished videos and never trust half-finished ones.

``<out>/<name>/.longvos-batch.json`` holds the settings a video was run with. It is written (atomically) with
``done: false`` before the video starts and rewritten with ``done: true`` only after ``segment_video`` has returned,
so it is the last file a video's run writes: a run killed at any point leaves either no record or an unfinished one.
The settings include a sha256 of the mask's content and of the weights file, and a fingerprint of the video, so a
resume never counts results made from other inputs at the same paths as its own. An unfinished video continues through
``segment_video``'s own record and state snapshot, so a resumed video has the same bytes as an uninterrupted one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longvos.batch.items import BatchOptions, WorkItem
from longvos.engine.progress import mask_digest, settings_difference, video_fingerprint, weights_record
from longvos.io.errors import InputError
from longvos.io.masks import read_index_mask
from longvos.io.writer import atomic_write

RECORD_FILE = ".longvos-batch.json"
FORMAT_VERSION = 1


def item_settings(item: WorkItem, options: BatchOptions) -> dict[str, Any]:
    """Everything that decides a video's outputs (the device and worker count do not), with the weights file that
    the model loads (path, size, sha256: :func:`~longvos.engine.progress.weights_record`)."""
    return {"video": item.video, "mask": item.mask, "frame": item.frame,
            "mask_sha256": {str(item.frame): mask_sha256(item.mask)},
            "video_fingerprint": video_fingerprint(item.video), **options.settings(),
            "weights": weights_record(_weights_path(options))}


def mask_sha256(path: str | Path | None) -> str | None:
    """The sha256 of a mask's content, as ``segment_video`` records it (:func:`~longvos.engine.progress.mask_digest`
    of its index map and palette: the same mask saved with other PNG settings has the same digest); ``None``: no
    mask, or one that cannot be read (the video then fails with the reason)."""
    if path is None:
        return None
    try:
        mask = read_index_mask(path, allow_empty=True)
    except (InputError, OSError):
        return None
    return mask_digest(mask.ids, mask.palette)


def _weights_path(options: BatchOptions) -> str | Path | None:
    from longvos.engine.segmenter import weights_for

    try:
        return weights_for(options.model, options.checkpoint, options.allow_random_weights)
    except (InputError, ValueError):  # run_batch refuses these before any video
        return None


@dataclass
class CompletionRecord:
    settings: dict[str, Any]
    done: bool = False
    frames: int = 0  # frames segmented by the run that finished the video
    seconds: float = 0.0

    def save(self, folder: Path) -> None:
        record = {"version": FORMAT_VERSION, "settings": self.settings, "done": self.done, "frames": self.frames,
                  "seconds": round(self.seconds, 3)}
        atomic_write(folder / RECORD_FILE, lambda path: path.write_text(json.dumps(record, indent=1)))

    @classmethod
    def load(cls, folder: Path) -> CompletionRecord | None:
        """The saved record, or ``None`` when there is none or it cannot be read (the video then runs again)."""
        try:
            record = json.loads((folder / RECORD_FILE).read_text())
            if record.get("version") != FORMAT_VERSION:
                return None
            return cls(record["settings"], bool(record["done"]), int(record["frames"]), float(record["seconds"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None


def resume_conflict(folder: Path, settings: dict[str, Any]) -> str | None:
    """Why ``folder`` cannot be resumed with ``settings`` (it holds another run's results), or ``None``."""
    record = CompletionRecord.load(folder)
    if record is None:
        return None
    difference = settings_difference(record.settings, settings)
    if difference is None:
        return None
    return (f"{folder} holds results made with other settings ({difference}); use another --out, or --overwrite "
            f"(without --resume) to redo the batch")


def is_complete(folder: Path, settings: dict[str, Any]) -> bool:
    record = CompletionRecord.load(folder)
    return record is not None and record.done and record.settings == settings
