"""Output writing: atomic file replacement and a bounded background writer.

Encoding PNGs and video costs about as much as a small model step on CPU, so it runs on one background thread while
the model works. The queue is bounded (the model waits when the disk is slower, instead of piling frames up in
memory), jobs run in submission order (so the frames written are always a prefix of the frames submitted, which
``--resume`` relies on), and the first failure stops the writer and is raised in the caller's thread.
"""
from __future__ import annotations

import os
import queue
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

PARTIAL_MARK = ".partial"


def partial_path(path: str | Path) -> Path:
    """The temporary name :func:`atomic_write` writes ``path`` under before renaming it: ``.<stem>.partial<suffix>``
    beside it (hidden, and with the suffix kept so that format detection by extension still works). The one place
    that names it, for those that must recognise such a file (a batch's reserved names, a download's leftovers)."""
    path = Path(path)
    return path.with_name(f".{path.stem}{PARTIAL_MARK}{path.suffix}")


def nearest_existing(path: Path) -> Path:
    """``path`` itself or the nearest path above it that exists: what decides whether ``path`` can be made there (a
    file in the way, a folder not writable). Where none exists, the top of ``path`` (its anchor, ``.`` for a relative
    path), which does not exist either, so callers check ``exists()`` before they judge what it returns."""
    # The top is its own parent: stopping there always yields a path, even where nothing exists (a deleted cwd).
    return next(folder for folder in (path, *path.parents) if folder.exists() or folder == folder.parent)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary_path)``, then rename the result onto ``path``.

    Readers therefore see either the old file or the complete new one, never a half-written file; the temporary
    name (:func:`partial_path`) starts with a dot and keeps the suffix (so format detection by extension still works).
    """
    path = Path(path)
    temporary = partial_path(path)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException as err:
        temporary.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None and err.filename is None:
            # A full disk or an I/O error says nothing of the file (the errno's own subclass is kept: the
            # constructor picks it): name the file meant, not its temporary.
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def partial_folder(path: str | Path) -> Path:
    """A new, empty folder beside ``path`` (``.<name>.partial``) to fill and then :func:`commit_folder` onto it, so
    that ``path`` never holds a mixture of an old and a new set of files. A leftover of an interrupted run is
    deleted first."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}{PARTIAL_MARK}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    return temporary


def commit_folder(temporary: str | Path, path: str | Path) -> None:
    """Put the complete folder ``temporary`` (from :func:`partial_folder`) in place of ``path``, replacing whatever
    folder was there as a whole: readers see the old folder, then (after a moment with none) the new one, never a
    mixture."""
    temporary, path = Path(temporary), Path(path)
    replaced = path.with_name(f".{path.name}.replaced")
    shutil.rmtree(replaced, ignore_errors=True)
    if path.exists():
        os.replace(path, replaced)
    os.replace(temporary, path)
    shutil.rmtree(replaced, ignore_errors=True)


_STOP = object()


class BackgroundWriter:
    """Runs write jobs in order on one thread, with at most ``max_pending`` jobs waiting."""

    def __init__(self, max_pending: int = 8):
        if max_pending < 1:  # queue.Queue(0) has no bound: memory would grow with the video
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self._jobs: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="longvos-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is _STOP:
                    return
                if self._error is None:  # after a failure, later jobs are dropped so written frames stay a prefix
                    job()
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = err
            finally:
                self._jobs.task_done()

    @property
    def error(self) -> BaseException | None:
        """The error of the job that failed (the jobs after it were dropped), or None."""
        return self._error

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, job: Callable[[], None]) -> None:
        """Queue a job; blocks while ``max_pending`` jobs wait. Raises the error of an earlier failed job."""
        self._raise_if_failed()
        if not self._thread.is_alive():
            raise RuntimeError("the writer is closed")
        self._jobs.put(job)

    def flush(self) -> None:
        """Wait until every queued job has run; raises the first error."""
        self._jobs.join()
        self._raise_if_failed()

    def close(self) -> None:
        """Finish the queued jobs and stop the thread; raises the first error."""
        if self._thread.is_alive():
            self._jobs.put(_STOP)
            self._thread.join()
        self._raise_if_failed()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
            return
        # The caller is already failing: still finish the frames computed so far, but keep its error.
        try:
            self.close()
        except BaseException as close_err:  # noqa: BLE001 - the caller's error is raised, naming this one
            if exc is not None and hasattr(exc, "add_note"):  # Python >= 3.11
                exc.add_note(f"and writing the frames computed before it failed too: {close_err!r}")
