"""longvos's one non-blocking file lock: downloads hold their temporary files with it, a segmentation run its
output folder (:func:`~longvos.engine.outputs.hold_output_folder`) and an overlay writer its temporary file."""
from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; callers decide what that means for them
    fcntl = None


def try_lock(fd: int) -> bool | None:
    """Try once, without waiting, to take an exclusive lock on the open file ``fd``: True taken, False held by
    another process, None where files cannot be locked (no :mod:`fcntl`, as on Windows, or a file system without
    locks). What each of those means is the caller's to decide, so the three are kept apart. The lock ends when
    ``fd`` is closed, or with the process, however it ends."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # held: a subclass of OSError, so caught first, never taken for "no locks here"
        return False
    except OSError:  # a file system without locks
        return None
    return True


class FileHeld(Exception):
    """Another process holds the lock of the file :func:`lock_file` was asked for."""


def lock_file(path: Path, attempts: int = 3) -> tuple[int, bool] | None:
    """Open the file at ``path`` (made empty where there is none; a link there is not followed) and lock it without
    waiting: returns the open file, to close when done, and whether this made it; None where it cannot be locked
    here (the folder is not writable, a link is in the way, no locks); raises :class:`FileHeld` where another
    process holds it. A holder removes (or renames) the file before it lets go, so a lock taken on a file removed
    meanwhile guards nothing: it is tried again, ``attempts`` times in all, on the file then at that name (the last
    attempt's lock is kept: a file system whose file identities do not hold still)."""
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0)
    for attempt in range(1, attempts + 1):
        try:
            try:
                fd, made = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                fd, made = os.open(path, flags), False
        except FileNotFoundError:  # removed between the two opens by the process that held it
            continue
        except OSError:
            return None
        taken = try_lock(fd)
        if taken is None:
            os.close(fd)
            if made:
                remove_quietly(Path(path))  # it guards nothing here
            return None
        if taken is False:
            os.close(fd)
            raise FileHeld(str(path))
        if is_file_at(fd, Path(path)) or attempt == attempts:
            return fd, made
        os.close(fd)
    return None


def is_file_at(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is the file at ``path`` (not one removed, or replaced, since it was opened)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
    except OSError:  # gone, or its folder with it
        return False


def remove_quietly(path: Path) -> None:
    """Remove the (lock) file at ``path`` where it can be: Windows removes no file another process has open, which
    is harmless for a file that guards nothing there either."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
