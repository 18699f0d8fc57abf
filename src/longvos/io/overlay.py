"""Overlay video: each frame with its objects tinted in their palette colours and outlined, encoded as it comes.

The video is encoded into a temporary file beside the target (``.<name>.partial.<ext>``) and renamed onto it only when
complete, so an interrupted run never leaves a truncated, unplayable overlay under the real name. That rename replaces
no file the caller has not named replaceable (see :func:`check_overlay_path`), and never one of the run's inputs.
The writer holds that temporary file locked (:func:`~longvos.io.locks.lock_file`) from when it is made until it is
closed or discarded, so that two runs never write one overlay: the second is refused at once, in one line.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from longvos.io.errors import InputError
from longvos.io.locks import FileHeld, is_file_at, lock_file
from longvos.io.palette import DAVIS_PALETTE
from longvos.io.writer import nearest_existing, partial_path

# Preferred encoders per container; the first one this FFmpeg build has is used.
_CODECS = {".webm": ("libvpx-vp9", "libvpx"), ".mp4": ("libx264", "h264", "mpeg4"),
           ".mov": ("libx264", "h264", "mpeg4"), ".mkv": ("libx264", "h264", "mpeg4")}


def render_overlay(image: np.ndarray, ids: np.ndarray, palette: np.ndarray | None = None,
                   alpha: float = 0.5) -> np.ndarray:
    """Blend object colours over an ``(H, W, 3)`` uint8 image and draw each object's outline at full colour."""
    palette = DAVIS_PALETTE if palette is None else palette
    colours = palette[ids if ids.dtype == np.uint8 else ids.astype(np.int64) % 256]
    inside = ids != 0
    out = image.astype(np.float32)
    out[inside] = (1 - alpha) * out[inside] + alpha * colours[inside]
    # Outline: pixels whose right or lower neighbour has a different id.
    edge = np.zeros_like(inside)
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
    edge &= inside
    out[edge] = colours[edge]
    return out.round().astype(np.uint8)


class OverlayWriter:
    """Streams overlay frames into a video file (one frame in, one frame encoded; nothing is kept).

    From construction (where the target's folder exists; else from the first frame) until :meth:`close` or
    :meth:`discard` (or until it is garbage-collected), it holds its temporary file ``.<stem>.partial<suffix>``
    locked: another writer of the same overlay, in this process or another, is refused with one :class:`InputError`
    line. A temporary left by a killed run is not locked, and is taken over. Where files cannot be locked it goes
    unguarded, as before."""

    _lock_fd: int | None = None  # the open, locked temporary file (None: not held)
    _finished = False  # closed into place, or discarded: nothing left to release

    def __init__(self, path: str | Path, fps: float, palette: np.ndarray | None = None, *,
                 out_dir: str | Path | None = None, inputs: Iterable[str | Path] = (),
                 replaceable: Iterable[str | Path] = ()):
        """Check the destination at once (see :func:`check_overlay_path`: ``out_dir`` is the output folder the run
        creates, which may hold the overlay before it exists; ``inputs`` the files the run reads; ``replaceable`` the
        overlays an existing file may be) and pick the encoder; nothing is written until the first frame."""
        self.path = check_overlay_path(path, out_dir, inputs=inputs, replaceable=replaceable)
        suffix = self.path.suffix.lower()
        self.palette = palette
        self._rate = Fraction(fps).limit_denominator(1001)
        self._codec = next((c for c in _CODECS[suffix] if _has_encoder(c)), None)
        if self._codec is None:
            raise InputError(f"{self.path}: this FFmpeg build has no encoder for {suffix}")
        self._container = None
        self._stream = None
        self._temporary = partial_path(self.path)
        if self.path.parent.is_dir():  # else the folder is the caller's to make: held from the first frame
            self._hold()

    def _hold(self) -> None:
        """Lock the temporary file (made empty if there is none; a killed run's is kept until the encoder truncates
        it), or refuse in one line where another writer holds it. Goes on unguarded where it cannot be locked (not
        writable, a link in the way: the encoder's open refuses those, as before; no locks here)."""
        try:
            held = lock_file(self._temporary)
        except FileHeld:
            raise InputError(f"overlay {self.path} is being written by another longvos run; give another "
                             f"path") from None
        if held is not None:
            self._lock_fd = held[0]

    def _release(self, remove: bool) -> None:
        """Let the lock go; with ``remove``, first remove the temporary file if it is still the one held."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:
            if remove and is_file_at(fd, self._temporary):
                self._temporary.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _start(self, height: int, width: int) -> None:
        if not self.path.parent.is_dir():  # a folder the caller was to create, or one removed since the check
            raise InputError(f"overlay {self.path}: folder {self.path.parent} does not exist")
        if self._lock_fd is None or not is_file_at(self._lock_fd, self._temporary):
            # Not held yet (its folder was made since), or the held file was removed (an output folder cleared).
            self._release(remove=False)
            self._hold()
        try:
            self._container = av.open(str(self._temporary), mode="w")
        except (OSError, av.FFmpegError, ValueError) as err:
            raise InputError(f"overlay {self.path}: cannot write {self._temporary.name} in "
                             f"{self.path.parent}: {_reason(err)}") from err
        self._stream = self._container.add_stream(self._codec, rate=self._rate)
        # 4:2:0 chroma needs even sizes; odd frames get their last row/column repeated.
        self._stream.height, self._stream.width = height + height % 2, width + width % 2
        self._stream.pix_fmt = "yuv420p"

    def write(self, image: np.ndarray, ids: np.ndarray) -> None:
        """Encode one frame: ``image`` (H, W, 3) uint8 RGB and its index mask (H, W)."""
        if self._container is None:
            self._start(*image.shape[:2])
        pixels = render_overlay(image, ids, self.palette)
        pad_rows, pad_cols = self._stream.height - pixels.shape[0], self._stream.width - pixels.shape[1]
        if pad_rows or pad_cols:
            pixels = np.pad(pixels, ((0, pad_rows), (0, pad_cols), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        """Flush the encoder, finish the file and rename it into place (with no frame written, write nothing); then
        let the lock go."""
        if self._container is None:
            if not self._finished:
                self._finished = True
                self._release(remove=True)  # the empty file made to hold the name
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None
        os.replace(self._temporary, self.path)  # still held: no other writer opens the name meanwhile
        self._finished = True
        self._release(remove=False)

    def discard(self) -> None:
        """Abandon an unfinished video: delete the temporary file (a finished overlay is left as it is) and let the
        lock go."""
        if self._container is not None:
            try:
                self._container.close()
            except (av.FFmpegError, OSError, ValueError):
                pass
            self._container = None
        if self._finished:  # the name may since be another writer's
            return
        self._finished = True
        if self._lock_fd is not None:
            self._release(remove=True)
        else:  # unguarded (files cannot be locked here, or nothing held yet)
            self._temporary.unlink(missing_ok=True)

    def __del__(self) -> None:
        # A run refused or failed before it closed or discarded its writer must not keep the name held.
        if self._lock_fd is not None:
            try:
                self.discard()
            except Exception:
                pass


def check_overlay_path(path: str | Path, out_dir: str | Path | None = None, *, inputs: Iterable[str | Path] = (),
                       replaceable: Iterable[str | Path] = ()) -> Path:
    """Refuse (one :class:`InputError` line naming ``path``) an overlay destination that cannot be written: a
    folder, a suffix without a video container (mp4/mov/mkv/webm), a parent that is a file, missing or not
    writable. A missing parent is accepted where the run creates it: ``out_dir`` or a folder above it (the run makes
    ``out_dir`` with its parents); with ``out_dir=None`` a missing parent is left to the caller to create, and the
    first frame written refuses it if it still does not exist.
    An existing file (or link) at ``path`` is refused unless it is one of ``replaceable``: the overlays that the
    caller may replace (those the run it resumes or overwrites wrote; by default none, so no user's file is ever
    lost). It is refused in any case if it is one of ``inputs``, the files the run reads (the video, the masks;
    entries that are not existing files, such as a frame folder, are skipped). Returns ``path`` as a :class:`Path`."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"overlay {path} is a folder: give the video file to write, e.g. {path / 'overlay.mp4'}")
    if path.suffix.lower() not in _CODECS:
        raise InputError(f"{path}: overlay must be one of {', '.join(sorted(_CODECS))}")
    if os.path.lexists(path):
        _check_replaceable(path, inputs, replaceable)
    parent = path.parent
    existing = nearest_existing(parent)
    if existing.exists() and not existing.is_dir():
        raise InputError(f"overlay {path}: {existing} is a file, not a folder")
    if existing != parent:  # the parent does not exist
        made = out_dir is None or _is_same_or_above(parent, Path(out_dir))
        if not made:
            raise InputError(f"overlay {path}: folder {parent} does not exist")
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"overlay {path}: folder {parent} is not writable")
    return path


def _check_replaceable(path: Path, inputs: Iterable[str | Path], replaceable: Iterable[str | Path]) -> None:
    """Refuse the existing file at ``path`` unless it is one of ``replaceable`` and none of ``inputs``."""
    for source in inputs:
        if Path(source).is_file() and _same_file(path, Path(source)):
            raise InputError(f"overlay {path} would replace {source}, an input of this run: give the overlay "
                             f"another path")
    if not any(_same_file(path, Path(own)) for own in replaceable):
        raise InputError(f"overlay {path} already exists: give another path, or delete that file first (longvos "
                         f"replaces an existing overlay only when resuming or overwriting the run that wrote it)")


def _same_file(path: Path, other: Path) -> bool:
    """Whether two paths name one file: the same file through links or another spelling of its path, or (where
    either does not exist, such as a dangling link) the same absolute path."""
    try:
        return os.path.samefile(path, other)
    except OSError:
        return Path(os.path.abspath(path)) == Path(os.path.abspath(other))


def _is_same_or_above(folder: Path, out_dir: Path) -> bool:
    folder, out_dir = Path(os.path.abspath(folder)), Path(os.path.abspath(out_dir))
    return folder == out_dir or folder in out_dir.parents


def _reason(err: BaseException) -> str:
    """An OS or FFmpeg error's reason without the path it may repeat (the message names the file already)."""
    reason = getattr(err, "strerror", None) or str(err)
    return " ".join(str(reason).split()) or type(err).__name__


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except (av.FFmpegError, ValueError):
        return False
    return True
