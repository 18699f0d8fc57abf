"""Which files of an output folder longvos wrote, so that a new run never mixes its outputs with an older run's.

Before a frame's files are written, the writer appends their paths (relative to the folder, one JSON string per line,
so that a frame name holding a line break cannot name another file) to ``<out>/.longvos-outputs``; the list therefore
always covers what a run left on disk, even after a crash. A new run (not ``resume``) refuses a folder that holds
anything but longvos's own records; with ``overwrite`` it first deletes exactly the files that list names, plus
longvos's records and temporary files, leaves everything else alone, and refuses the folder if anything else remains
(an output never replaces a file longvos did not write). The files operating systems leave in any folder they show
(:func:`is_os_metadata`: ``.DS_Store``, ``Thumbs.db``, ``desktop.ini``, ``._*``) count as neither: they never make
a folder "used", and no run deletes them.

A run holds its folder (:func:`hold_output_folder`) from before it judges what the folder holds until its last file is
written, so that a second run started meanwhile into the same folder is refused at once instead of mixing its files
with the first one's.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import takewhile
from pathlib import Path

from longvos.engine import progress
from longvos.io.errors import InputError
from longvos.io.locks import FileHeld, is_file_at, lock_file, remove_quietly
from longvos.io.writer import PARTIAL_MARK, nearest_existing

OUTPUTS_FILE = ".longvos-outputs"
RECORD_PREFIX = ".longvos-"  # longvos's own bookkeeping files (progress, output list, snapshots, batch records)
#: The file a running run holds its folder's lock on (:func:`hold_output_folder`), removed when the run ends: a record
#: (never a foreign file), but never deleted by :func:`clear_outputs`, which runs while the lock on it is held.
LOCK_FILE = f"{RECORD_PREFIX}lock"
#: How often a run tries to lock a lock file that the run holding it removes as it ends (see :func:`_lock_folder`).
LOCK_ATTEMPTS = 10
SUBFOLDERS = ("objects", "probs")  # made by --per-object and --probs
#: The names longvos writes a file or folder under before renaming it into place:
#: :func:`~longvos.io.writer.partial_path` (``.<stem>.partial<suffix>``) and
#: :func:`~longvos.io.writer.partial_folder` (``.<name>.partial``). Exactly these:
#: a user's ``thesis.partial.docx`` (no leading dot) or ``.draft.partial-old.txt`` is the user's, never longvos's.
TEMPORARY_NAME = re.compile(rf"\..+{re.escape(PARTIAL_MARK)}(\.[^.]+)?")


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of longvos's temporary names (:data:`TEMPORARY_NAME`): what a run killed while
    writing leaves, which no refusal counts and a new run deletes."""
    return TEMPORARY_NAME.fullmatch(name) is not None


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
                     and not entry.name.startswith(RECORD_PREFIX) and not is_temporary(entry.name)
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


@contextmanager
def hold_output_folder(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir`` (made here, with the folders above it, where it does not exist) for the run inside the
    ``with``: another run that tries to hold it meanwhile gets one :class:`InputError` line naming this run's
    process, at once. The lock is the operating system's (``flock`` on :data:`LOCK_FILE`): it ends with the run however
    the run ends, a killed one included, so a lock file left behind never blocks the next run. A run that ends
    removes the lock file; one that fails (refused input included) leaves the folder as it found it: no lock file it
    made, a killed run's untouched, and no folder it made and left empty. Where files cannot be locked (Windows, a
    file system without locks), runs go unguarded, as before there was a lock."""
    made = list(takewhile(lambda folder: not folder.exists(), (out_dir, *out_dir.parents)))  # deepest first
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{out_dir}: cannot make the output folder ({err.strerror or err})") from None
    held, finished = None, False
    try:
        held = _lock_folder(out_dir)
        yield
        finished = True
    finally:
        if held is not None:
            fd, made_file = held
            _unlock_folder(out_dir, fd, remove=finished or made_file)
        if not finished:
            for folder in made:
                try:
                    folder.rmdir()  # only if empty: what the run wrote, or anyone else put there, stays
                except OSError:
                    break


def _lock_folder(out_dir: Path) -> tuple[int, bool] | None:
    """Take the lock of ``out_dir`` without waiting (:func:`~longvos.io.locks.lock_file`); returns the open lock file
    and whether this made it (None: files cannot be locked here), or raises :class:`InputError` where another run
    holds it. A folder this run cannot write in is one no run writes in: nothing to guard, and the run goes on as it
    would have (the resume of a complete run reads only; any other fails at its first write)."""
    path = out_dir / LOCK_FILE
    try:
        held = lock_file(path, attempts=LOCK_ATTEMPTS)
    except FileHeld:
        holder = _read_pid(path)
        raise InputError(f"{out_dir} is being written by another longvos run"
                         f"{f' (pid {holder})' if holder else ''}; wait for it or use another folder") from None
    if held is not None and held[1]:  # a killed run's file stays untouched until this run ends (a refused run
        try:  # changes nothing)
            os.write(held[0], f"{os.getpid()}\n".encode())  # for the message of a run refused meanwhile
        except OSError:  # a full disk: the message then names no process
            pass
    return held


def _unlock_folder(out_dir: Path, fd: int, remove: bool) -> None:
    """Let the lock go; with ``remove``, remove the lock file first, while still holding it (see
    :func:`_lock_folder`)."""
    try:
        if remove and is_file_at(fd, out_dir / LOCK_FILE):  # ours: if deleted, another run may hold a new one
            remove_quietly(out_dir / LOCK_FILE)
    finally:
        os.close(fd)


def _read_pid(path: Path) -> int | None:
    """The process id the running run holding the lock file at ``path`` wrote there; None where it has not written
    it yet, it cannot be read, or it is not that of a running process: a run that holds a killed run's lock file
    leaves that file (and the killed run's id in it) untouched."""
    try:
        with open(path, "rb", opener=lambda name, flags: os.open(name, flags | getattr(os, "O_NOFOLLOW", 0))) as file:
            pid = int(file.read(32).decode("ascii").strip())
    except (OSError, ValueError):  # ValueError: empty (not written yet) or not a number
        return None
    if pid <= 0:  # os.kill would name a process group
        return None
    if os.name == "posix":  # elsewhere os.kill ends the process instead of checking it
        try:
            os.kill(pid, 0)  # signal 0: sends nothing, only checks that the process exists
        except PermissionError:  # another user's running process
            pass
        except (OSError, OverflowError):  # ProcessLookupError: it has ended
            return None
    return pid


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
        if (temporary.is_file() and is_temporary(temporary.name)  # the glob alone matches users' names too
                and not is_os_metadata(temporary.name)):  # "._.x.partial.png": the OS's, not ours
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
