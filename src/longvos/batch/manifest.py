"""Reading a batch manifest: a CSV or JSONL file of ``(video, mask[, frame][, name])`` rows, or a DAVIS-layout root.

- CSV: a header row naming the columns (``video,mask,frame,name``; ``frame`` and ``name`` optional), or no header
  and the columns in that order. A line whose first character (after spaces) is an unquoted ``#`` is a comment:
  skipped, and said so (:attr:`Manifest.note`: a note in ``run_batch``'s display, a :class:`ManifestWarning` from
  :func:`read_manifest`); a video path that starts with ``#`` is written in quotes (``"#take2.mp4",...``). JSONL:
  one object per line with those keys, no comments.
  Relative paths are relative to the manifest's folder. ``frame`` is the index of the frame the mask belongs to
  (default 0); segmentation starts there. ``name`` is the output folder under ``--out`` (default: the video's file
  or folder name without extension).
- DAVIS layout (read by :mod:`longvos.io.davis`): ``ROOT/JPEGImages[/480p]/<sequence>/*.jpg`` with
  ``ROOT/Annotations[/480p]/<sequence>/*.png``; each sequence starts from its first annotated frame.

Faults of the file as a whole (missing, unknown format, no ``video`` column) raise :class:`ManifestError` before
anything runs. Faults of one row (unreadable line, bad frame number, a path that cannot be resolved, an output
folder name that is not a plain name or is one of the batch's own files, two rows writing to one folder) only fail
that row: it is reported in the summary with its line number, and the other rows still run.
"""
from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from longvos.batch.items import WorkItem, name_problem
from longvos.io.davis import DavisLayout
from longvos.io.errors import InputError
from longvos.io.video import VIDEO_EXTENSIONS

COLUMNS = ("video", "mask", "frame", "name")
REQUIRED_COLUMNS = ("video", "mask")
MANIFEST_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class ManifestError(InputError):
    """The manifest as a whole cannot be used."""


class ManifestWarning(UserWarning):
    """Lines of a manifest that were skipped on purpose (comment lines): said once, never dropped in silence. Raised
    by :func:`read_manifest` only, whose plain list cannot carry the note; :meth:`Manifest.read` returns it."""


@dataclass(frozen=True)
class Manifest:
    """A read manifest: its work items, in manifest order, and the comment lines it skipped (their line numbers)."""

    path: Path
    items: tuple[WorkItem, ...]
    skipped_comment_lines: tuple[int, ...] = ()

    @property
    def note(self) -> str | None:
        """What was skipped on purpose, in one line for the user; None when nothing was."""
        comments = self.skipped_comment_lines
        if not comments:
            return None
        shown = ", ".join(map(str, comments[:10])) + (f" and {len(comments) - 10} more" if len(comments) > 10 else "")
        plural = "s" if len(comments) > 1 else ""
        return (f"{self.path.name}: skipped {len(comments)} comment line{plural} (starting with #): line{plural} "
                f"{shown}; write a video path that starts with # in quotes")

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """The manifest of a CSV/JSONL file or a DAVIS-layout folder; what it skipped is in :attr:`note`."""
        path = Path(path)
        comments: list[int] = []
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
            rows = _csv_rows(text, path, comments) if kind == "csv" else _jsonl_rows(text, path)
            items = [_row_item(row, origin, path.parent) for origin, row in rows]
            if comments and not items:
                raise ManifestError(f"{path}: the manifest lists no videos (only comment lines, which start with #)")
        if not items:
            raise ManifestError(f"{path}: the manifest lists no videos")
        return cls(path, tuple(with_unique_names(items)), tuple(comments))


def read_manifest(path: str | Path) -> list[WorkItem]:
    """The work items of a CSV/JSONL manifest or a DAVIS-layout folder, in manifest order. A plain list has no room
    for the comment lines it skipped, so they are told as a :class:`ManifestWarning`; :meth:`Manifest.read` gives
    them as data instead."""
    manifest = Manifest.read(path)
    if manifest.note is not None:
        warnings.warn(ManifestWarning(manifest.note), stacklevel=2)
    return list(manifest.items)


def with_unique_names(items: list[WorkItem]) -> list[WorkItem]:
    """Items whose output folder name cannot be used (not a plain folder name, or one of the batch's own files:
    see :func:`~longvos.batch.items.name_problem`), or that an earlier item already uses (they would overwrite
    it), get a problem instead. Every item reaches the workers through here, from a manifest or from the API."""
    first_use: dict[str, str] = {}
    unique = []
    for item in items:
        key = item.name.casefold()  # case-insensitive file systems would merge "Cat" and "cat"
        if item.problem is None:
            problem = name_problem(item.name)
            if problem is None and key in first_use:
                problem = (f"writes to the same output folder {item.name!r} as {first_use[key]}; give the rows "
                           f"distinct names (a 'name' column)")
            if problem is not None:
                item = replace(item, problem=problem)
        first_use.setdefault(key, item.origin)
        unique.append(item)
    return unique


# -- CSV / JSONL -----------------------------------------------------------------------------------------------

Row = dict[str, Any] | str  # parsed fields, or the reason the line could not be parsed


def _csv_records(lines: list[str]) -> Iterator[tuple[int, list[str] | str]]:
    """``(first line number, cells)`` of each CSV record, or ``(number, why it cannot be parsed)``."""
    reader = csv.reader(lines)
    number = 1
    while True:
        try:
            cells: list[str] | str = next(reader)
        except StopIteration:
            return
        except csv.Error as err:  # e.g. a field over the csv module's size limit: that row fails, the rest is read
            cells = f"not a valid CSV row ({err})"
        yield number, cells
        number = reader.line_num + 1


def _csv_rows(text: str, path: Path, comments: list[int]) -> Iterator[tuple[str, Row]]:
    """The rows of a CSV manifest; appends the line numbers of the comment lines it skips to ``comments``."""
    lines = text.splitlines()
    numbered: list[tuple[int, list[str] | str]] = []
    for number, cells in _csv_records(lines):
        if isinstance(cells, str):
            numbered.append((number, cells))
        elif lines[number - 1].lstrip().startswith("#"):  # the raw line: a quoted "#take2" is a video, not a comment
            comments.append(number)
        elif any(cell.strip() for cell in cells):
            numbered.append((number, [cell.strip() for cell in cells]))
    first = next((cells for _, cells in numbered if not isinstance(cells, str)), None)
    if first is None:
        yield from ((f"{path.name} line {number}", cells) for number, cells in numbered)
        return
    header = [cell.lower() for cell in first]
    if "video" in header:
        unknown = [name for name in header if name not in COLUMNS]
        missing = [name for name in REQUIRED_COLUMNS if name not in header]
        if unknown or missing:
            problem = f"unknown column(s) {', '.join(unknown)}" if unknown else f"no {missing[0]!r} column"
            raise ManifestError(f"{path}: {problem}; the columns are {', '.join(COLUMNS)}")
        numbered = [(number, cells) for number, cells in numbered if cells is not first]
    else:
        header = list(COLUMNS)
    for number, cells in numbered:
        origin = f"{path.name} line {number}"
        if isinstance(cells, str):
            yield origin, cells
            continue
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
    mask = row.get("mask")
    try:
        video_path = _resolve(video, base, "video")
        mask_path = str(_resolve(mask, base, "mask")) if isinstance(mask, str) else None
    except InputError as err:
        return WorkItem(name=f"<{origin}>", video="", mask=None, origin=origin, problem=str(err))
    # The name as written (a link's own name: cam1 -> ../footage/a stays cam1), not the resolved target's; "." or
    # ".." name no folder, so they take the folder's own.
    written = Path(video.rstrip("/") or video)
    name = str(row.get("name") or default_name(written if written.name not in ("", ".", "..") else video_path))
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
    return WorkItem(name, str(video_path), mask_path, frame, origin, problem)  # the name: with_unique_names checks it


def _resolve(path: str, base: Path, field: str) -> Path:
    """``path`` made absolute (relative to ``base``); :class:`InputError` naming ``field`` if it cannot be (a NUL
    byte, a symlink loop, ...)."""
    try:
        resolved = Path(path).expanduser()
        return (resolved if resolved.is_absolute() else base / resolved).resolve()
    except (OSError, RuntimeError, ValueError) as err:
        raise InputError(f"{field} path {path!r} cannot be used: {err}") from None


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
