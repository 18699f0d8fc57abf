"""Which files of an output folder longvos wrote, so that a new run never mixes its outputs with an older run's.

Before a frame's files are written, the writer appends their paths (relative to the folder, one per line) to
``<out>/.longvos-outputs``; the list therefore always covers what a run left on disk, even after a crash. A new run
(not ``resume``) refuses a folder that holds anything but longvos's own records; with ``overwrite`` it first deletes
exactly the files that list names, plus longvos's records and temporary files, and leaves everything else alone.
"""
from __future__ import annotations

from pathlib import Path

from longvos.engine import progress
from longvos.io.errors import InputError
from longvos.io.writer import PARTIAL_MARK

OUTPUTS_FILE = ".longvos-outputs"
RECORD_PREFIX = ".longvos-"  # longvos's own bookkeeping files (progress, output list, snapshots, batch records)
SUBFOLDERS = ("objects", "probs")  # made by --per-object and --probs


def log_outputs(out_dir: Path, *relative: str) -> None:
    """Record that the files ``relative`` (to ``out_dir``) are about to be written."""
    if relative:
        with open(out_dir / OUTPUTS_FILE, "a", encoding="utf-8") as log:
            log.write("".join(f"{name}\n" for name in relative))


def prepare_output_folder(out_dir: Path, overwrite: bool) -> None:
    """Make ``out_dir`` ready for a new run: refuse it if it holds files (unless ``overwrite``), else clear what
    longvos wrote there. Raises :class:`InputError` with one line naming ``--resume`` and ``--overwrite``."""
    foreign = sorted(entry.name for entry in out_dir.iterdir()
                     if not entry.name.startswith(RECORD_PREFIX) and PARTIAL_MARK not in entry.name)
    if foreign and not overwrite:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise InputError(f"{out_dir} is not empty ({shown}): use --resume to continue the run there, --overwrite "
                         f"to replace the files longvos wrote there, or another output folder")
    clear_outputs(out_dir)


def clear_outputs(out_dir: Path) -> list[Path]:
    """Delete the files a longvos run wrote into ``out_dir`` (masks, per-object masks, probabilities, an overlay
    inside it, its records and temporary files) and nothing else; returns what was deleted."""
    names = _logged_names(out_dir)
    if names is None:
        names = _names_from_record(out_dir)
    own = {OUTPUTS_FILE, progress.PROGRESS_FILE, getattr(progress, "STATE_FILE", progress.PROGRESS_FILE)}
    root = out_dir.resolve()
    removed = []
    for name in [*names, *own]:
        path = out_dir / name
        if root not in path.resolve().parents or not path.is_file():  # never outside the folder, never a folder
            continue
        path.unlink()
        removed.append(path)
    for folder in [out_dir, *(out_dir / sub for sub in SUBFOLDERS if (out_dir / sub).is_dir())]:
        for temporary in folder.glob(f".*{PARTIAL_MARK}*"):
            if temporary.is_file():
                temporary.unlink()
                removed.append(temporary)
    for sub in SUBFOLDERS:  # folders longvos made, once they are empty
        folder = out_dir / sub
        if folder.is_dir():
            for child in folder.iterdir():
                if child.is_dir() and not any(child.iterdir()):
                    child.rmdir()
            if not any(folder.iterdir()):
                folder.rmdir()
    return removed


def _logged_names(out_dir: Path) -> list[str] | None:
    try:
        text = (out_dir / OUTPUTS_FILE).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    return [line for line in dict.fromkeys(text.splitlines()) if line and not line.startswith("/")]


def _names_from_record(out_dir: Path) -> list[str]:
    """The outputs of a run that kept no output list (an older longvos): its frame names from its record."""
    record = progress.RunProgress.load(out_dir)
    if record is None:
        return []
    from longvos.io.video import open_video

    settings = record.settings
    try:
        source = open_video(settings["video"])
        frames = [source.frame_name(i) for i in range(int(settings["start"]), int(settings["stop"]))]
    except (InputError, OSError, KeyError, TypeError, ValueError):
        raise InputError(f"{out_dir}: cannot tell which files longvos wrote there (the video of its run, "
                         f"{settings.get('video')}, cannot be read); clear it yourself or use another output folder"
                         ) from None
    names = [f"{frame}.png" for frame in frames] + [f"probs/{frame}.npz" for frame in frames]
    objects = out_dir / "objects"
    if objects.is_dir():
        names += [f"objects/{folder.name}/{frame}.png" for folder in objects.iterdir() for frame in frames]
    return names
