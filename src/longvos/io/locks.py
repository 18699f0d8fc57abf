"""longvos's one non-blocking file lock: downloads hold their temporary files with it, and a segmentation run its
output folder (:func:`~longvos.engine.outputs.hold_output_folder`)."""
from __future__ import annotations

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
