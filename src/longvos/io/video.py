"""Frame sources: one interface over video files, frame folders and globs, always streamed as RGB uint8.

``open_video(path)`` picks the reader. Every reader yields :class:`Frame` objects lazily, so a video of any length
costs the memory of a few frames; only small per-frame metadata (file names, or timestamps for seeking) is kept.
"""
from __future__ import annotations

import abc
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longvos.io.errors import VideoReadError

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class Frame:
    """One decoded frame. ``index`` is its 0-based position in the source; ``name`` names its outputs."""

    index: int
    name: str
    image: np.ndarray  # (H, W, 3) uint8 RGB


class FrameSource(abc.ABC):
    """A sequence of frames that is decoded on demand, never preloaded."""

    #: What the source was opened from, for messages.
    description: str

    @property
    def display_name(self) -> str:
        """A short name for progress bars: the video file's or frame folder's name (a glob keeps its folder), not
        the whole path (the demo's clip lies deep in site-packages)."""
        path = Path(self.description)
        if not path.name:
            return self.description
        is_glob = any(char in path.name for char in "*?[") and not path.exists()
        return f"{path.parent.name}/{path.name}" if is_glob and path.parent.name else path.name

    @property
    @abc.abstractmethod
    def num_frames(self) -> int:
        """Number of frames (video files may need a quick pass over their packets to know it)."""

    @property
    @abc.abstractmethod
    def frame_size(self) -> tuple[int, int]:
        """``(height, width)`` of every frame, read from headers without decoding pixels."""

    @abc.abstractmethod
    def frame_name(self, index: int) -> str:
        """The stem that the outputs of frame ``index`` are named after."""

    @abc.abstractmethod
    def frames(self, start: int = 0, stop: int | None = None, reverse: bool = False) -> Iterator[Frame]:
        """Frames ``start <= index < stop`` in order, or from ``stop - 1`` down to ``start`` when ``reverse``."""

    def read(self, index: int) -> Frame:
        """One frame by index (random access; prefer :meth:`frames` for runs of frames)."""
        self.check_index(index)
        return next(iter(self.frames(index, index + 1)))

    def close(self) -> None:
        """Release file handles (sources reopen lazily if used again)."""

    def __len__(self) -> int:
        return self.num_frames

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def check_index(self, index: int) -> None:
        if not 0 <= index < self.num_frames:
            raise VideoReadError(f"{self.description}: frame {index} does not exist (it has {self.num_frames} frames)")

    def clamp_range(self, start: int, stop: int | None) -> tuple[int, int]:
        """Validate a ``[start, stop)`` range against the source length (``stop=None`` means the end)."""
        total = self.num_frames
        stop = total if stop is None else stop
        if start < 0 or stop > total or start >= stop:
            raise VideoReadError(f"{self.description}: frame range [{start}, {stop}) is empty or outside 0..{total}")
        return start, stop


def natural_sort_key(text: str) -> list[object]:
    """Sort key that orders ``frame2`` before ``frame10`` (digit runs compare as numbers)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def open_video(source: str | Path | FrameSource) -> FrameSource:
    """Open a video file (mp4/mov/mkv/webm/avi via PyAV), a folder of images, or a glob such as ``"clip/*.png"``."""
    if isinstance(source, FrameSource):
        return source
    # Imported here so that each reader's dependencies load only when that kind of input is used.
    from longvos.io.frame_folder import ImageSequenceSource
    from longvos.io.video_file import VideoFileSource

    text = str(source)
    path = Path(text)
    # An existing file or folder wins over a glob: `clip [1080p].mp4` and `take [1]/` are paths, not patterns.
    if any(char in text for char in "*?[") and not path.exists():
        return ImageSequenceSource.from_glob(text)
    if path.is_dir():
        return ImageSequenceSource.from_folder(path)
    if not path.exists():
        raise VideoReadError(f"{path}: no such file or folder")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise VideoReadError(f"{path}: a single image is not a video; pass its folder or a glob")
    return VideoFileSource(path)
