"""The run record that makes ``segment --resume`` safe.

``<out>/.longvos-progress.json`` holds the run's settings and how many frames (in processing order) are complete.
The background writer advances it only after a frame's files have been renamed into place, and it is itself
replaced atomically, so a frame it counts is never a half-written PNG. A resumed run must have the same settings.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from longvos.io.writer import atomic_write

PROGRESS_FILE = ".longvos-progress.json"
FORMAT_VERSION = 1


@dataclass
class RunProgress:
    settings: dict[str, Any]
    completed: int = 0  # frames complete, counted in processing order
    last_frame: str | None = None  # name of the last complete frame
    done: bool = False

    def save(self, out_dir: Path) -> None:
        record = {"version": FORMAT_VERSION, **asdict(self)}
        atomic_write(out_dir / PROGRESS_FILE, lambda path: path.write_text(json.dumps(record, indent=1)))

    @classmethod
    def load(cls, out_dir: Path) -> RunProgress | None:
        """The saved record, or ``None`` if there is none or it is unreadable (then the run starts over)."""
        try:
            record = json.loads((out_dir / PROGRESS_FILE).read_text())
        except (OSError, ValueError):
            return None
        if record.get("version") != FORMAT_VERSION:
            return None
        return cls(record["settings"], int(record["completed"]), record.get("last_frame"), bool(record["done"]))


def settings_difference(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first setting that differs between two runs, as ``"name: old -> new"``, or ``None``."""
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            return f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
    return None
