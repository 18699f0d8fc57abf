"""Which files of an output folder longvos wrote, so that a new run never mixes its outputs with an older run's.

Before a frame's files are written, the writer appends their paths (relative to the folder, one JSON string per line,
so that a frame name holding a line break cannot name another file) to ``<out>/.longvos-outputs``; the list therefore
always covers what a run left on disk, even after a crash. A new run (not ``resume``) refuses a folder that holds
anything but longvos's own records; with ``overwrite`` it first deletes exactly the files that list names, plus
longvos's records and temporary files, leaves everything else alone, and refuses the folder if anything else remains
(an output never replaces a file longvos did not write). The files operating systems leave in any folder they show
(:func:`is_os_metadata`: ``.DS_Store``, ``Thumbs.db``, ``desktop.ini``, ``._*``) count as neither: they never make
a folder "used", and no run deletes them.
"""
from __future__ import annotations

import json
from pathlib import Path

from longvos.engine import progress
from longvos.io.errors import InputError
from longvos.io.writer import PARTIAL_MARK, nearest_existing

OUTPUTS_FILE = ".longvos-outputs"
RECORD_PREFIX = ".longvos-"  # longvos's own bookkeeping files (progress, output list, snapshots, batch records)
SUBFOLDERS = ("objects", "probs")  # made by --per-object and --probs


#: Files an operating system's file browser leaves in the folders it shows (macOS Finder's ``.DS_Store`` and, on
#: volumes without its metadata, ``._<name>`` AppleDouble files; Windows Explorer's ``Thumbs.db`` and
#: ``desktop.ini``), compared ignoring case: a user opening an output folder must not make it look used.
OS_METADATA_FILES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
OS_METADATA_PREFIX = "._"


def is_os_metadata(name: str) -> bool:
    """Whether ``name`` is that of a file an operating system leaves in folders (:data:`OS_METADATA_FILES`,
    ``._*``): never a user's file nor longvos's, so no refusal counts it and no run deletes it."""
    return name.casefold() in OS_METADATA_FILES or name.startswith(OS_METADATA_PREFIX)


def log_outputs(out_dir: Path, *relative: str, once: bool = False) -> None:
    """Record that the files ``relative`` (to ``out_dir``) are about to be written; with ``once``, only those the
    list does not name yet (a folder that runs write again and again, such as eval's, then names each once)."""
    if once:
        listed = set(logged_names(out_dir) or ())
        relative = tuple(name for name in dict.fromkeys(relative) if name not in listed)
    if relative:
        with open(out_dir / OUTPUTS_FILE, "a", encoding="utf-8") as log:
            log.write("".join(f"{json.dumps(name)}\n" for name in relative))


#: What a refused folder's message advises when ``--overwrite`` has already deleted longvos's files there.
FOREIGN_FILES_ADVICE = ("--overwrite deletes only the files longvos wrote and never writes beside others: move "
                        "them, or use another output folder")


def refuse_used_folder(folder: Path, advice: str, keep: tuple[str, ...] = ()) -> None:
    """Raise :class:`InputError` (one line: the folder, up to three of its entries, then ``advice``) if ``folder``
    holds anything but longvos's own records and temporary files, the files operating systems leave there
    (:func:`is_os_metadata`; also all that remains of a longvos subfolder, ``objects/`` or ``probs/``, once an
    ``overwrite`` has deleted longvos's files there), and the entries named in ``keep``."""
    if not folder.is_dir():
        return
    foreign = sorted(entry.name for entry in folder.iterdir() if entry.name not in keep
                     and not entry.name.startswith(RECORD_PREFIX) and PARTIAL_MARK not in entry.name
                     and not (is_os_metadata(entry.name) and entry.is_file() and not entry.is_symlink())
                     and not (entry.name in SUBFOLDERS and _holds_only_os_metadata(entry)))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise InputError(f"{folder} is not empty ({shown}): {advice}")


def _holds_only_os_metadata(folder: Path) -> bool:
    """Whether ``folder`` (a real folder, not a link) holds nothing but folders and the files operating systems
    leave in them."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    return all((path.is_dir() and not path.is_symlink()) or (is_os_metadata(path.name) and path.is_file()
                                                              and not path.is_symlink()) for path in folder.rglob("*"))


def check_output_folder(out_dir: str | Path, name: str = "out_dir") -> Path:
    """Refuse (one :class:`InputError` line, ``name`` being how the caller calls the folder, e.g. ``--out``) an
    output folder that cannot be made: an existing file, or a path under one. Needs neither the video nor the model,
    so callers run it before they load anything. Returns ``out_dir`` as a :class:`Path`."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{name} {out_dir} is a file, not a folder")
    above = nearest_existing(out_dir.parent)  # out_dir itself was judged above
    if above.exists() and not above.is_dir():  # exists(): where nothing above exists, the top is returned
        raise InputError(f"{name} {out_dir}: {above} is a file, not a folder")
    return out_dir


def prepare_output_folder(out_dir: Path, overwrite: bool) -> None:
    """Make ``out_dir`` ready for a new run: refuse it if it holds files (unless ``overwrite``), clear what longvos
    wrote there, and (with ``overwrite``) refuse it if files longvos did not write remain, so that no output ever
    replaces them. Raises :class:`InputError` with one line."""
    check_output_folder(out_dir)
    if not overwrite:
        refuse_used_folder(out_dir, "use --resume to continue the run there, --overwrite to replace the files "
                                    "longvos wrote there, or another output folder")
    clear_outputs(out_dir)
    if overwrite:
        refuse_used_folder(out_dir, FOREIGN_FILES_ADVICE)


def clear_outputs(out_dir: Path) -> list[Path]:
    """Delete the files a longvos run wrote into ``out_dir`` (masks, per-object masks, probabilities, an overlay
    inside it, its records and temporary files) and nothing else (never a user's file, nor one an operating system
    left there: :func:`is_os_metadata`); returns what was deleted."""
    names = logged_names(out_dir)
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
    subfolders = [out_dir / sub for sub in SUBFOLDERS if (out_dir / sub).is_dir()]
    temporaries = [*out_dir.glob(f".*{PARTIAL_MARK}*"),
                   *(path for folder in subfolders for path in folder.rglob(f".*{PARTIAL_MARK}*"))]
    for temporary in temporaries:  # also in objects/<id>/, where per-object masks are written
        if temporary.is_file() and not is_os_metadata(temporary.name):  # "._.x.partial.png": the OS's, not ours
            temporary.unlink()
            removed.append(temporary)
    for folder in subfolders:  # folders longvos made, once they are empty, deepest first
        children = [path for path in folder.rglob("*") if path.is_dir() and not path.is_symlink()]
        for child in sorted(children, key=lambda path: len(path.parts), reverse=True):
            if not any(child.iterdir()):
                child.rmdir()
        if not any(folder.iterdir()):
            folder.rmdir()
    return removed


def logged_names(out_dir: Path) -> list[str] | None:
    """The files (relative to ``out_dir``) its output list names, each once, in the order first listed; ``None``
    where the folder has no list (nothing written there, or by a longvos that kept none)."""
    try:
        text = (out_dir / OUTPUTS_FILE).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    names = []
    for line in dict.fromkeys(text.split("\n")):  # not splitlines(): a JSON string holds no bare "\n", but may hold
        try:                                      # other characters that splitlines() breaks at
            name = json.loads(line) if line.startswith('"') else line  # plain lines: lists of older versions
        except ValueError:
            continue  # a line cut short by a crash names nothing
        if isinstance(name, str) and name and not name.startswith("/"):
            names.append(name)
    return names


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
