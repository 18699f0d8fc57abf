"""The library's errors: every failure longvos reports on purpose is a :class:`LongvosError`.

Each message names the file, frame or object it is about. The CLI turns every :class:`LongvosError` into a one-line
message with a non-zero exit code instead of a traceback, in one place (``longvos.cli.main``). Input errors also
subclass ``ValueError`` so that library users can catch them broadly.
"""
from __future__ import annotations


class LongvosError(Exception):
    """Base class of the errors longvos raises on purpose (bad input, a run stopped part-way, ...)."""


class InputError(LongvosError, ValueError):
    """Something the user gave us (a video, a mask, an object id, a box) cannot be used as it is."""


class VideoReadError(InputError):
    """A video file, frame folder or glob cannot be opened, or one of its frames cannot be decoded."""


class MaskError(InputError):
    """A mask is unreadable, has the wrong size, is not an index mask, or names objects that do not exist."""


class SessionError(InputError):
    """A session or offline video state used in a way its life cycle does not allow (after ``close()``, or a mask
    for a frame that the running propagation has already passed)."""


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on (escape sequences, carriage returns, other control and
    format characters) written as its Python escape, newlines kept: a message quoting a server's reply or a file's
    keys then cannot clear the screen or print a fake "OK" over itself."""
    return "".join(char if char.isprintable() or char == "\n" else repr(char)[1:-1] for char in text)


def one_line(err: BaseException | str, limit: int = 2000) -> str:
    """An error (or a message) as one line (checkpoint key reports, for one, span many lines): how the CLI, the batch
    workers, the downloader and the app report any error, control characters escaped (:func:`printable`). An error
    without a message gives its class name."""
    text = "; ".join(printable(line.strip()) for line in str(err).splitlines() if line.strip())
    if not text and isinstance(err, BaseException):
        text = type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
