"""Reading a batch manifest: a CSV or JSONL file of ``(video, mask[, frame][, name])`` rows, or a DAVIS-layout root.

- CSV: a header row naming the columns (``video,mask,frame,name``; ``frame`` and ``name`` optional), or no header
  and the columns in that order. JSONL: one object per line with those keys. Relative paths are relative to the
  manifest's folder. ``frame`` is the index of the frame the mask belongs to (default 0); segmentation starts there.
  ``name`` is the output folder under ``--out`` (default: the video's file or folder name without extension).
- DAVIS layout (read by :mod:`longvos.io.davis`): ``ROOT/JPEGImages[/480p]/<sequence>/*.jpg`` with
  ``ROOT/Annotations[/480p]/<sequence>/*.png``; each sequence starts from its first annotated frame.

Faults of the file as a whole (missing, unknown format, no ``video`` column) raise :class:`ManifestError` before
anything runs. Faults of one row (unreadable line, bad frame number, two rows writing to one folder) only fail that
row: it is reported in the summary with its line number, and the other rows still run.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from longvos.batch.items import WorkItem
from longvos.io.davis import DavisLayout
from longvos.io.errors import InputError
from longvos.io.video import VIDEO_EXTENSIONS

COLUMNS = ("video", "mask", "frame", "name")
REQUIRED_COLUMNS = ("video", "mask")
MANIFEST_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class ManifestError(InputError):
    """The manifest as a whole cannot be used."""


def read_manifest(path: str | Path) -> list[WorkItem]:
    """The work items of a CSV/JSONL manifest or a DAVIS-layout folder, in manifest order."""
    path = Path(path)
    if path.is_dir():
        items = list(_davis_items(path))
    elif not path.exists():
        raise ManifestError(f"{path}: no such manifest file or folder")
    else:
        kind = MANIFEST_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise ManifestError(f"{path}: a manifest is a .csv or .jsonl file, or a DAVIS-layout folder "
                                f"(JPEGImages/ and Annotations/)")
        try:
            text = path.read_text(encoding="utf-8-sig")  # utf-8-sig: spreadsheets like to prepend a BOM
        except (OSError, UnicodeDecodeError) as err:
            raise ManifestError(f"{path}: cannot read manifest: {err}") from None
        rows = _csv_rows(text, path) if kind == "csv" else _jsonl_rows(text, path)
        items = [_row_item(row, origin, path.parent) for origin, row in rows]
    if not items:
        raise ManifestError(f"{path}: the manifest lists no videos")
    return with_unique_names(items)


def with_unique_names(items: list[WorkItem]) -> list[WorkItem]:
    """Items whose output folder an earlier item already uses get a problem instead: they would overwrite it."""
    first_use: dict[str, str] = {}
    unique = []
    for item in items:
        key = item.name.casefold()  # case-insensitive file systems would merge "Cat" and "cat"
        if key in first_use and item.problem is None:
            item = replace(item, problem=f"writes to the same output folder {item.name!r} as {first_use[key]}; "
                                       f"give the rows distinct names (a 'name' column)")
        first_use.setdefault(key, item.origin)
        unique.append(item)
    return unique


# -- CSV / JSONL -----------------------------------------------------------------------------------------------

Row = dict[str, Any] | str  # parsed fields, or the reason the line could not be parsed


def _csv_rows(text: str, path: Path) -> Iterator[tuple[str, Row]]:
    lines = list(csv.reader(text.splitlines()))
    numbered = [(number, [cell.strip() for cell in cells]) for number, cells in enumerate(lines, 1)
                if any(cell.strip() for cell in cells) and not cells[0].lstrip().startswith("#")]
    if not numbered:
        return
    header = [cell.lower() for cell in numbered[0][1]]
    if "video" in header:
        unknown = [name for name in header if name not in COLUMNS]
        missing = [name for name in REQUIRED_COLUMNS if name not in header]
        if unknown or missing:
            problem = f"unknown column(s) {', '.join(unknown)}" if unknown else f"no {missing[0]!r} column"
            raise ManifestError(f"{path}: {problem}; the columns are {', '.join(COLUMNS)}")
        numbered = numbered[1:]
    else:
        header = list(COLUMNS)
    for number, cells in numbered:
        origin = f"{path.name} line {number}"
        if len(cells) > len(header):
            yield origin, f"{len(cells)} values but {len(header)} columns ({', '.join(header)})"
            continue
        yield origin, {name: cell for name, cell in zip(header, cells) if cell != ""}


def _jsonl_rows(text: str, path: Path) -> Iterator[tuple[str, Row]]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        origin = f"{path.name} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            yield origin, f"not valid JSON ({err.msg} at column {err.colno})"
            continue
        if not isinstance(row, dict):
            yield origin, f"expected an object with keys {', '.join(COLUMNS)}, got {type(row).__name__}"
            continue
        unknown = sorted(set(row) - set(COLUMNS))
        if unknown:
            yield origin, f"unknown key(s) {', '.join(unknown)}; the keys are {', '.join(COLUMNS)}"
            continue
        yield origin, {key: value for key, value in row.items() if value is not None and value != ""}


def _row_item(row: Row, origin: str, base: Path) -> WorkItem:
    if isinstance(row, str):
        return WorkItem(name=f"<{origin}>", video="", mask=None, origin=origin, problem=row)
    video = row.get("video")
    if not isinstance(video, str):
        return WorkItem(name=f"<{origin}>", video="", mask=None, origin=origin, problem="no video given")
    video_path = _resolve(video, base)
    name = str(row.get("name") or default_name(video_path))
    mask = row.get("mask")
    problem = None
    if mask is None:
        problem = "no mask given"
    elif not isinstance(mask, str):
        problem = f"mask must be a path, got {mask!r}"
    frame = row.get("frame", 0)
    try:
        frame = int(str(frame))  # str first: int(2.7) would quietly truncate
        if frame < 0:
            raise ValueError
    except ValueError:
        problem, frame = f"frame must be a frame index (0, 1, ...), got {row.get('frame')!r}", 0
    if "/" in name or "\\" in name or name in (".", ".."):
        problem = f"name {name!r} must be a plain folder name"
    mask_path = str(_resolve(mask, base)) if isinstance(mask, str) else None
    return WorkItem(name, str(video_path), mask_path, frame, origin, problem)


def _resolve(path: str, base: Path) -> Path:
    resolved = Path(path).expanduser()
    return (resolved if resolved.is_absolute() else base / resolved).resolve()


def default_name(video: Path) -> str:
    """A video's output folder name: a file's name without its video extension, or a frame folder's name."""
    return video.stem if video.suffix.lower() in VIDEO_EXTENSIONS else video.name


# -- DAVIS layout ----------------------------------------------------------------------------------------------

def _davis_items(root: Path) -> Iterator[WorkItem]:
    layout = DavisLayout.of(root)
    if not layout.images_root.is_dir():
        raise ManifestError(f"{root}: not a DAVIS-layout folder (it has no {layout.images_root.relative_to(root)}/; a "
                            f"manifest is a .csv or .jsonl file, or a folder with JPEGImages/ and Annotations/)")
    for name in layout.sequences():
        sequence = (layout.images_root / name).resolve()
        origin = f"DAVIS sequence {name}"
        masks = layout.annotations(name)
        if not masks:
            yield WorkItem(name, str(sequence), None, 0, origin, f"no annotation in {layout.annotations_root / name}")
            continue
        frame_names = layout.frame_names(name)
        first = masks[0]
        if first.stem not in frame_names:
            yield WorkItem(name, str(sequence), str(first.resolve()), 0, origin,
                           f"annotation {first.name} has no frame of that name in {layout.images_root / name}")
            continue
        yield WorkItem(name, str(sequence), str(first.resolve()), frame_names.index(first.stem), origin)
