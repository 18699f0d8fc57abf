"""Frame sources: one interface over video files, frame folders and globs, always streamed as RGB uint8.

``open_video(path)`` picks the reader. Every reader yields :class:`Frame` objects lazily, so a video of any length
costs the memory of a few frames; only small per-frame metadata (file names, or timestamps for seeking) is kept.

The readers: :class:`ImageSequenceSource` (a folder of jpg/png in natural sort order, or a glob pattern) and
:class:`VideoFileSource` (mp4, mov, mkv, webm, ... decoded with PyAV, one frame at a time). For video files, frame
``i`` is the ``i``-th frame in presentation order and is named ``{i:05d}`` (wider for very long videos). Seeking and
reverse reading use a timestamp index built from the packets alone (no decoding), made on first need. The packet
count is what the container lists; a damaged or truncated file can decode fewer frames. When decoding ends before
the listed count, ``num_frames`` becomes the count that decodes and one :class:`VideoTruncatedWarning` names the last
frame that decoded. For a file nobody vouches for (an upload), ``VideoFileSource(path, max_frames=N)`` bounds that
pass: it stops after ``N + 1`` frame packets (or ``N + 2`` empty ones) and raises :class:`VideoTooLong` instead of
walking the rest of the file.
"""
from __future__ import annotations

import abc
import glob
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

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


# ---------------------------------------------------------------------------------------------------------------------
# Frames stored as image files: a folder of jpg/png (natural sort) or a glob pattern.
# ---------------------------------------------------------------------------------------------------------------------

class ImageSequenceSource(FrameSource):
    """Image files in natural order; frame ``i`` is named after the stem of the ``i``-th file."""

    def __init__(self, paths: list[Path], description: str):
        if not paths:
            raise VideoReadError(f"{description}: no image frames found ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        self.paths = sorted(paths, key=lambda p: natural_sort_key(p.name))
        self.description = description
        stems: dict[str, Path] = {}
        for path in self.paths:
            if path.stem in stems:
                # Outputs are named after the stem, so two frames with one stem would overwrite each other.
                raise VideoReadError(f"{description}: {stems[path.stem].name} and {path.name} share the name "
                                     f"{path.stem!r}; keep one image format per folder")
            stems[path.stem] = path
        self._size: tuple[int, int] | None = None

    @classmethod
    def from_folder(cls, folder: Path) -> ImageSequenceSource:
        paths = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                 and not p.name.startswith(".")]
        return cls(paths, str(folder))

    @classmethod
    def from_glob(cls, pattern: str) -> ImageSequenceSource:
        """Image files matching ``pattern``; the longest leading part of it that exists as a folder is taken
        literally (``take [1]/*.png`` globs inside the folder ``take [1]``)."""
        paths = [Path(p) for p in glob.glob(_literal_existing_prefix(pattern)) if Path(p).is_file()]
        return cls(paths, pattern)

    @property
    def num_frames(self) -> int:
        return len(self.paths)

    @property
    def frame_size(self) -> tuple[int, int]:
        if self._size is None:
            try:
                with Image.open(self.paths[0]) as image:  # header only: pixels are decoded on .load()
                    self._size = (image.height, image.width)
            except OSError as err:
                raise VideoReadError(f"{self.paths[0]}: cannot read frame 0: {err}") from None
        return self._size

    def frame_name(self, index: int) -> str:
        self.check_index(index)
        return self.paths[index].stem

    def frames(self, start: int = 0, stop: int | None = None, reverse: bool = False) -> Iterator[Frame]:
        start, stop = self.clamp_range(start, stop)
        order = range(stop - 1, start - 1, -1) if reverse else range(start, stop)
        for index in order:
            yield self._decode(index)

    def _decode(self, index: int) -> Frame:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                rgb = np.array(image.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise VideoReadError(f"{path}: cannot decode frame {index}: {err}") from None
        if rgb.shape[:2] != self.frame_size:
            height, width = self.frame_size
            raise VideoReadError(f"{path}: frame {index} is {rgb.shape[1]}x{rgb.shape[0]} but the first frame is "
                                 f"{width}x{height}")
        return Frame(index, path.stem, rgb)


def _literal_existing_prefix(pattern: str) -> str:
    """``pattern`` with its longest leading folder that exists on disk escaped, so that glob characters in an
    existing folder's name (``take [1]``) match that folder rather than act as wildcards."""
    parts = Path(pattern).parts
    for split in range(len(parts) - 1, 0, -1):
        folder = Path(*parts[:split])
        if folder.is_dir():
            rest = parts[split:]
            return str(Path(glob.escape(str(folder)), *rest))
    return pattern


# ---------------------------------------------------------------------------------------------------------------------
# Video files decoded with PyAV.
# ---------------------------------------------------------------------------------------------------------------------

# Reverse reading decodes this many frames forwards and yields them backwards, so it holds at most this many
# decoded frames at once (about 20 MB at 480p).
REVERSE_CHUNK_FRAMES = 16


#: With ``max_frames``, packets of the file's other streams (audio, subtitles, data) that its walk may read: this
#: many per allowed frame plus :data:`OTHER_PACKETS_BASE` (AAC audio has about 2 packets per video frame; 8 tracks
#: of it fit).
OTHER_PACKETS_PER_FRAME = 16
OTHER_PACKETS_BASE = 1024


class VideoTruncatedWarning(UserWarning):
    """The video stream ends before the frame count its container lists (a truncated or damaged file)."""


class VideoTooLong(VideoReadError):
    """The video stream has more packets (frames) than the ``max_frames`` its :class:`VideoFileSource` was given,
    or the file more packets of other streams than such a video has: at most ``max_frames + 1`` frame packets,
    ``max_frames + 2`` empty ones and the other streams' bound were read to know it."""

    def __init__(self, message: str, limit: int | None = None):  # limit optional: exceptions pickle their message
        super().__init__(message)
        self.limit = limit


class VideoFileSource(FrameSource):
    """A video stream read with PyAV; memory stays at a few frames whatever the length.

    With ``max_frames``, the pass over the packets that counts the frames stops once the stream has more than
    ``max_frames`` (:class:`VideoTooLong`), so an untrusted file costs at most ``2 * max_frames + 2`` video packets
    of work and index whatever its container claims, and its other streams' packets (audio, ...) are bounded too
    (:data:`OTHER_PACKETS_PER_FRAME`); without it (the default) every packet is counted.
    """

    def __init__(self, path: str | Path, *, max_frames: int | None = None):
        self.path = Path(path)
        self.description = str(self.path)
        self.max_frames = max_frames
        with self._open() as container:
            stream = container.streams.video[0]
            self._size = (stream.codec_context.height, stream.codec_context.width)
            self.fps = float(stream.average_rate) if stream.average_rate else 25.0
        # Presentation timestamps in display order, or None before the index is built / when the stream has none.
        self._timestamps: np.ndarray | None = None
        self._frame_count: int | None = None
        self._listed_count: int | None = None  # packets the container lists, before decoding proved otherwise
        self._name_width = 5

    def _open(self) -> av.container.InputContainer:
        try:
            container = av.open(str(self.path))
        except (av.FFmpegError, OSError) as err:
            raise VideoReadError(f"{self.path}: cannot open video: {err}") from None
        if not container.streams.video:
            container.close()
            raise VideoReadError(f"{self.path}: the file has no video stream")
        container.streams.video[0].thread_type = "AUTO"
        return container

    def _build_index(self) -> None:
        """Count frames and record their timestamps by demuxing packets (cheap: nothing is decoded). The list holds
        one small int per frame (about 40 bytes each while it is built, 8 in the sorted array that is kept).

        With :attr:`max_frames`, a frame packet past the limit, or more empty packets than frames allowed (empty
        packets, which some files hold between frames, must not make the walk unbounded either), means
        :class:`VideoTooLong`, and nothing is recorded: at most ``2 * max_frames + 2`` video packets are read. The
        other streams' packets are read as well (demuxing a file reads them all, only to drop them), so they are
        bounded too, by :data:`OTHER_PACKETS_PER_FRAME` per allowed frame."""
        limit = self.max_frames
        other_limit = None if limit is None else OTHER_PACKETS_PER_FRAME * limit + OTHER_PACKETS_BASE
        timestamps: list[int] = []
        count = 0
        empty = 0
        other = 0
        try:
            with self._open() as container:
                video = container.streams.video[0]
                for packet in container.demux():
                    if packet.stream.index != video.index:
                        other += 1
                        if other_limit is not None and other > other_limit:
                            raise VideoTooLong(f"{self.path}: the file's other streams (audio, subtitles, data) hold "
                                               f"more than {other_limit} packets, more than a video of {limit} "
                                               f"frames has", limit)
                        continue
                    if packet.size == 0:  # the flush packet at the end of the stream
                        empty += 1
                    else:
                        count += 1
                        if packet.pts is not None:
                            timestamps.append(packet.pts)
                    if limit is not None and count > limit:
                        raise VideoTooLong(f"{self.path}: the video is longer than {limit} frames", limit)
                    if limit is not None and empty > limit + 1:
                        raise VideoTooLong(f"{self.path}: the video stream holds more than {limit + 1} empty "
                                           f"packets (more than a video of {limit} frames can)", limit)
        except av.FFmpegError as err:
            raise VideoReadError(f"{self.path}: cannot read the video stream: {err}") from None
        if count == 0:
            raise VideoReadError(f"{self.path}: the video stream has no frames")
        self._frame_count = self._listed_count = count
        self._name_width = max(5, len(str(count - 1)))  # fixed, so names never change if fewer frames decode
        # Without a timestamp for every frame, seeking cannot be exact: fall back to decoding from the start.
        self._timestamps = np.sort(np.asarray(timestamps, dtype=np.int64)) if len(timestamps) == count else None

    @property
    def num_frames(self) -> int:
        if self._frame_count is None:
            self._build_index()
        return self._frame_count

    @property
    def frame_size(self) -> tuple[int, int]:
        return self._size

    def frame_name(self, index: int) -> str:
        self.check_index(index)
        return f"{index:0{self._name_width}d}"

    def frames(self, start: int = 0, stop: int | None = None, reverse: bool = False) -> Iterator[Frame]:
        start, stop = self.clamp_range(start, stop)
        if not reverse:
            yield from self._decode_range(start, stop)
            return
        chunk_stop = stop
        while chunk_stop > start:
            chunk_start = max(start, chunk_stop - REVERSE_CHUNK_FRAMES)
            yield from reversed(list(self._decode_range(chunk_start, chunk_stop)))
            chunk_stop = chunk_start

    def _decode_range(self, start: int, stop: int) -> Iterator[Frame]:
        """Decode frames ``start <= index < stop`` in order, seeking near ``start`` when timestamps allow."""
        container = self._open()
        stream = container.streams.video[0]
        seek_by_timestamp = start > 0 and self._timestamps is not None
        if seek_by_timestamp:
            # Lands on the keyframe at or before the target; the frames before it are decoded and dropped.
            container.seek(int(self._timestamps[start]), stream=stream, backward=True, any_frame=False)
        index = -1
        ended = True  # the decoder ran out of frames (rather than the range being complete)
        try:
            for decoded in container.decode(stream):
                if seek_by_timestamp and decoded.pts is not None:
                    index = int(np.searchsorted(self._timestamps, decoded.pts))
                else:
                    index += 1
                if index < start:
                    continue
                if index >= stop:
                    ended = False
                    break
                image = decoded.to_ndarray(format="rgb24")
                if image.shape[:2] != self._size:
                    raise VideoReadError(f"{self.path}: frame {index} is {image.shape[1]}x{image.shape[0]}, "
                                         f"but the video is {self._size[1]}x{self._size[0]}")
                yield Frame(index, self.frame_name(index), image)
                if index == stop - 1:
                    ended = False
                    break
        except av.FFmpegError as err:
            raise VideoReadError(f"{self.path}: cannot decode frame {index + 1}: {err}") from None
        finally:
            container.close()
        if ended and index < stop - 1:
            self._ended_early(index if index >= 0 or not seek_by_timestamp else self._count_decoded() - 1)

    def _count_decoded(self) -> int:
        """Frames the whole stream decodes to (only needed when a seek landed past the end of what decodes)."""
        with self._open() as container:
            try:
                return sum(1 for _ in container.decode(container.streams.video[0]))
            except av.FFmpegError as err:
                raise VideoReadError(f"{self.path}: cannot decode the video stream: {err}") from None

    def _ended_early(self, last: int) -> None:
        """The decoder stopped after frame ``last``: make that the frame count, and say so once."""
        if last + 1 >= self.num_frames:
            return
        if last < 0:
            raise VideoReadError(f"{self.path}: no frame of the video stream decodes (the file is damaged or "
                                 f"truncated)")
        self._frame_count = last + 1
        warnings.warn(f"{self.path}: the video stream ends early (truncated or damaged file): the last frame that "
                      f"decodes is frame {last} ({self.frame_name(last)}), so the video has {last + 1} frames, "
                      f"not the {self._listed_count} its container lists", VideoTruncatedWarning, stacklevel=3)


def open_video(source: str | Path | FrameSource) -> FrameSource:
    """Open a video file (mp4/mov/mkv/webm/avi via PyAV), a folder of images, or a glob such as ``"clip/*.png"``."""
    if isinstance(source, FrameSource):
        return source
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
