"""Frame sources: one interface over video files, frame folders and globs, always streamed as RGB uint8.

``open_video(path)`` picks the reader. Every reader yields :class:`Frame` objects lazily, so a video of any length
costs the memory of a few frames; only small per-frame metadata (file names, or timestamps for seeking) is kept.

The readers: :class:`ImageSequenceSource` (a folder of jpg/png in :func:`frame_sort_key` order, or a glob pattern)
and :class:`VideoFileSource` (mp4, mov, mkv, webm, ... decoded with PyAV, one frame at a time). For video files, frame
``i`` is the ``i``-th frame in presentation order and is named ``{i:05d}`` (wider for very long videos). Seeking and
reverse reading use a timestamp index built from the packets alone (no decoding), made on first need; ``num_frames``
is the count of frame packets found. A truncated or damaged file holds fewer packets than its header lists (the
header is written whole, the packets are what was left), and can decode fewer frames than it holds packets. Either
way, when reading reaches the end of what decodes, ``num_frames`` becomes the count that decodes and one
:class:`VideoTruncatedWarning` names the last frame and the count the header (or else the packets) listed. For a file
nobody vouches for (an upload), ``VideoFileSource(path, max_frames=N)`` bounds that pass: it stops after ``N + 1``
frame packets (or ``N + 2`` empty ones) and raises :class:`VideoTooLong` instead of walking the rest of the file.
"""
from __future__ import annotations

import abc
import glob
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps

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


def natural_sort_key(text: str) -> tuple[list[object], str]:
    """Sort key that orders ``frame2`` before ``frame10``: digit runs compare as numbers, and a decimal number as
    one, exactly (timestamps: ``0.04`` before ``0.2``, ``1.25`` before ``1.5``). Text and numbers alternate from
    the start, so the two are never compared; names whose parts are equal (``0.1``, ``0.10``) then compare whole."""
    parts = re.split(r"(\d+(?:\.\d+)?)", text)
    return [Decimal(part) if index % 2 else part.lower() for index, part in enumerate(parts)], text


def frame_sort_key(path: Path) -> list[object]:
    """The temporal order of frame (and mask) files: their names without the extension, in natural order. Whole
    file names would put ``1.5.jpg`` before ``1.jpg`` (``.`` sorts before ``.jpg``), and a frame and its mask, named
    alike in other formats, must sort alike. Takes the path, not the stem: ``Path("1.5").stem`` is ``"1"``."""
    return natural_sort_key(path.stem)


# ---------------------------------------------------------------------------------------------------------------------
# Frames stored as image files: a folder of jpg/png (frame_sort_key order) or a glob pattern.
# ---------------------------------------------------------------------------------------------------------------------

def _is_frame_file(path: Path) -> bool:
    """Whether ``path`` is a file to read as a frame (a folder is not); a link to nothing is refused rather than
    skipped, since a frame silently left out shifts every later frame onto the wrong index (and mask)."""
    if path.is_file():
        return True
    if path.is_symlink():  # is_file() follows links: this one leads nowhere (or round in a loop)
        raise VideoReadError(f"{path}: a frame file that cannot be read (a broken link to {os.readlink(path)})")
    return False


class ImageSequenceSource(FrameSource):
    """Image files in :func:`frame_sort_key` order; frame ``i`` is named after the stem of the ``i``-th file."""

    def __init__(self, paths: list[Path], description: str):
        if not paths:
            raise VideoReadError(f"{description}: no image frames found ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        self.paths = sorted(paths, key=frame_sort_key)
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
        paths = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
                 and _is_frame_file(p)]
        return cls(paths, str(folder))

    @classmethod
    def from_glob(cls, pattern: str) -> ImageSequenceSource:
        """Image files matching ``pattern``; the longest leading part of it that exists as a folder is taken
        literally (``take [1]/*.png`` globs inside the folder ``take [1]``)."""
        paths = [Path(p) for p in glob.glob(_literal_existing_prefix(pattern)) if _is_frame_file(Path(p))]
        return cls(paths, pattern)

    @property
    def num_frames(self) -> int:
        return len(self.paths)

    @property
    def frame_size(self) -> tuple[int, int]:
        if self._size is None:
            try:
                with Image.open(self.paths[0]) as image:  # header only: pixels are decoded on .load()
                    turned = _exif_orientation(image) in (5, 6, 7, 8)  # a camera's portrait
                    self._size = (image.width, image.height) if turned else (image.height, image.width)
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
                # Turned as viewers show it; only where there is a turn: exif_transpose copies even an upright frame.
                if _exif_orientation(image) != 1:
                    image = ImageOps.exif_transpose(image)
                rgb = _rgb8(image, path, index)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise VideoReadError(f"{path}: cannot decode frame {index}: {err}") from None
        if rgb.shape[:2] != self.frame_size:
            height, width = self.frame_size
            raise VideoReadError(f"{path}: frame {index} is {rgb.shape[1]}x{rgb.shape[0]} but the first frame is "
                                 f"{width}x{height}")
        return Frame(index, path.stem, rgb)


#: The EXIF tag of a camera's orientation: 1 upright, 5-8 turned a quarter (the picture is stored on its side).
_EXIF_ORIENTATION = 0x0112


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation of an opened image (1, upright, where it has none): header only, nothing decoded."""
    return image.getexif().get(_EXIF_ORIENTATION, 1)


def _rgb8(image: Image.Image, path: Path, index: int) -> np.ndarray:
    """An image file's picture as ``(H, W, 3)`` uint8 RGB. 16-bit grey (PNG, TIFF) is scaled to 8 bits: PIL's
    ``convert("RGB")`` clips it, turning a whole frame white. A float image is refused: whether it spans 0..1 or
    0..255 is not written in it."""
    if image.mode.startswith("I;16") or image.mode == "I":
        grey = np.asarray(image, dtype=np.int64)
        if grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise VideoReadError(f"{path}: frame {index} is a {image.mode} image with values outside 0..65535; "
                                 f"save frames as 8- or 16-bit images")
        return np.repeat((grey >> 8).astype(np.uint8)[..., None], 3, axis=2)
    if image.mode == "F":
        raise VideoReadError(f"{path}: frame {index} is a floating-point image, whose range (0..1 or 0..255) is "
                             f"not written in it; save frames as 8- or 16-bit images")
    return np.array(image.convert("RGB"))


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


#: A stream measured against a duration (its header lists no frame count) is short only when more than this many
#: frames' worth of it, and more than :data:`ESTIMATE_SLACK_FRACTION` of it, are missing: rounded durations and an
#: average frame rate put whole files a frame or two off.
ESTIMATE_SLACK_FRAMES = 2
ESTIMATE_SLACK_FRACTION = 0.02


@dataclass(frozen=True)
class HeaderFrameCount:
    """The frames a video's header lists: counted (an mp4's sample table, an avi's header), or, where it lists no
    count (mkv, webm), its duration in ``seconds`` times its frame ``rate``. Headers are written whole, so a file
    cut short still lists what it had."""

    count: int
    seconds: float | None = None  # None: ``count`` is counted, exact
    rate: float | None = None
    #: The timestamp (in seconds) ``seconds`` is measured from, where the header tells: the stream's start (a
    #: matroska ``DURATION`` tag is the track's end time, made a length from its start, or from 0 when unknown).
    start: float | None = None

    def is_short(self, found: int, found_seconds: float | None = None) -> bool:
        """Whether ``found`` frames (spanning ``found_seconds``, where their timestamps tell) fall short of what
        the header lists, by more than an estimate can be off. An estimate is compared in time when it can be:
        with a variable frame rate the frames found and duration x average rate differ in a whole file too."""
        if self.seconds is None:
            return found < self.count
        missing = self.count - found if found_seconds is None else (self.seconds - found_seconds) * self.rate
        return missing > max(ESTIMATE_SLACK_FRAMES, ESTIMATE_SLACK_FRACTION * self.count)

    @property
    def origin(self) -> str:
        """Where :attr:`count` comes from, for messages."""
        if self.seconds is None:
            return "its header lists"
        return f"its header lists ({self.seconds:g} s at {self.rate:g} fps)"


#: Packets of the video stream read at most to find the first frame's display rotation.
TURN_PACKETS = 64


def _quarter_turns(container: av.container.InputContainer) -> int:
    """How many quarter turns counterclockwise (``np.rot90``'s ``k``) show the first video stream's frames as its
    display matrix says (FFmpeg's own ``autorotate``); 0 where it has none, or no frame decodes from its first
    :data:`TURN_PACKETS` packets."""
    stream = container.streams.video[0]
    try:
        for count, packet in enumerate(container.demux(stream)):
            if count >= TURN_PACKETS:
                break
            for frame in packet.decode():
                rotation = getattr(frame, "rotation", 0) or 0  # degrees counterclockwise (PyAV >= 13)
                return int(round(rotation / 90)) % 4 if rotation % 90 == 0 else 0
    except av.FFmpegError:
        pass
    return 0


def header_frame_count(container: av.container.InputContainer) -> HeaderFrameCount | None:
    """The frame count the header of ``container``'s first video stream gives, read without demuxing anything;
    ``None`` where it gives neither a count nor both a duration and a frame rate."""
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    seconds, start = _stream_span(container, stream)
    # An mp4 whose edit list shows less than its samples (a clip trimmed with stream copy) counts them all, the
    # hidden ones too, but lasts as long as the edit: the duration is what it shows. Only mp4/mov have edit lists:
    # elsewhere a shorter duration is FFmpeg's estimate for a file that lost its end (an AVI without its index),
    # and the count is the truth a truncation is measured against.
    edit_list = any(name in ("mov", "mp4") for name in container.format.name.split(","))
    if stream.frames > 0 and not (edit_list and rate and seconds and seconds * float(rate) + 0.5 < stream.frames):
        return HeaderFrameCount(stream.frames)
    if not rate or not seconds:
        return None
    return HeaderFrameCount(round(seconds * float(rate)), seconds, float(rate), start)


def _stream_span(container: av.container.InputContainer,
                 stream: av.video.stream.VideoStream) -> tuple[float | None, float | None]:
    """How long the video stream lasts, and the timestamp (seconds) that is measured from where the header tells:
    its duration, else matroska's per-track ``DURATION`` tag (``00:00:05.000000000``), else the container's, but
    only where the video is its only stream: the container lasts as long as its longest stream, and audio that
    outlasts the picture would make a whole file look cut short.

    A stream's and a container's duration are lengths, from the stream's (container's) start. Matroska's
    ``DURATION`` tag is the track's end time: a video that starts at 3 s and lasts 2 s is tagged 5 s, so it is
    made a length from the stream's start (from 0, which overstates it, where that start is unknown)."""
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base \
        else None
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base), start
    tagged = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d*)?)", stream.metadata.get("DURATION", "").strip())
    if tagged:
        hours, minutes, seconds = tagged.groups()
        end = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        start = start if start is not None and 0 <= start < end else 0.0
        return end - start, start
    if container.duration and len(container.streams) == 1:
        return container.duration / av.time_base, (None if container.start_time is None
                                                    else container.start_time / av.time_base)
    return None, None


class VideoTooLong(VideoReadError):
    """The video stream has more packets (frames) than the ``max_frames`` its :class:`VideoFileSource` was given,
    or the file more packets of other streams than such a video has: at most ``max_frames + 1`` frame packets,
    ``max_frames + 2`` empty ones and the other streams' bound were read to know it."""

    def __init__(self, message: str, limit: int | None = None):  # limit optional: exceptions pickle their message
        super().__init__(message)
        self.limit = limit


def _is_discarded(packet: av.Packet) -> bool:
    """Whether the demuxer marks ``packet`` to be decoded but not shown (``AV_PKT_FLAG_DISCARD``: mp4 samples
    outside its edit list); the decoder drops the frame it makes."""
    return bool(getattr(packet, "is_discard", False))


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
            #: (height, width) as stored, from the header: nothing decoded (what a size limit is checked on)
            self.coded_size = (stream.codec_context.height, stream.codec_context.width)
            self.fps = float(stream.average_rate) if stream.average_rate else 25.0
        # A phone's portrait video is stored landscape with a display matrix that says how to turn it: frames are
        # turned as players show them (and a mask drawn on what the user sees fits). Only a decoded frame tells
        # (PyAV reads no display matrix from the header), so it is found when the size is first asked for.
        self._turns: int | None = None
        # Presentation timestamps in display order, or None before the index is built / when the stream has none.
        self._timestamps: np.ndarray | None = None
        self._frame_count: int | None = None
        # The count a shortened stream is measured against (what its header lists, else the packets found), and
        # whether the shortfall was said: once per source, when reading finds where the stream ends.
        self._listed_count: int | None = None
        self._listed_by = "its container lists"  # where that count comes from, for the warning
        self._truncation_reported = False
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
        :class:`VideoTooLong`, and nothing is recorded: at most ``2 * max_frames + 2`` video packets are read, plus
        at most the other streams' bound of skipped ones (below). The other streams' packets are read as well
        (demuxing a file reads them all, only to drop them), so they are bounded too, by
        :data:`OTHER_PACKETS_PER_FRAME` per allowed frame.

        Packets the container marks to discard are not frames: an mp4 whose edit list starts after its first
        samples (trimmed with stream copy, ``ffmpeg -ss 0.5 -c copy``) keeps the samples from the keyframe before
        the cut (and, cut with ``-t``, some after its end), which the decoder needs but never outputs. Counted,
        they would make the count exceed what decodes, and their timestamps, sorted first, would shift every seek
        by as many frames."""
        limit = self.max_frames
        other_limit = None if limit is None else OTHER_PACKETS_PER_FRAME * limit + OTHER_PACKETS_BASE
        timestamps: list[int] = []
        count = 0
        empty = 0
        dropped = 0  # empty packets with a timestamp: an avi's drop chunks (frames repeated), where yielded
        other = 0
        skipped = 0  # video packets the container marks to discard (outside an edit list)
        try:
            with self._open() as container:
                video = container.streams.video[0]
                header = header_frame_count(container)
                time_base = video.time_base
                frame_rate = video.average_rate or video.guessed_rate
                start_time = video.start_time
                for packet in container.demux():
                    if packet.stream.index != video.index:
                        other += 1
                        if other_limit is not None and other > other_limit:
                            raise VideoTooLong(f"{self.path}: the file's other streams (audio, subtitles, data) hold "
                                               f"more than {other_limit} packets, more than a video of {limit} "
                                               f"frames has", limit)
                        continue
                    if packet.size == 0:  # the flush packet at the end of the stream (no pts), or a drop chunk
                        empty += 1
                        dropped += packet.pts is not None
                    elif _is_discarded(packet):  # decoded for the frames after it, never output
                        skipped += 1
                        if other_limit is not None and skipped > other_limit:
                            raise VideoTooLong(f"{self.path}: the video stream holds more than {other_limit} "
                                               f"packets that its edit list skips, more than a video of {limit} "
                                               f"frames has", limit)
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
        self._name_width = max(5, len(str(count - 1)))  # fixed, so names never change if fewer frames decode
        # Without a timestamp for every frame, seeking cannot be exact: fall back to decoding from the start.
        self._timestamps = np.sort(np.asarray(timestamps, dtype=np.int64)) if len(timestamps) == count else None
        self._frame_count = self._listed_count = count
        if header is None:
            return
        if header.seconds is None:  # an exact count: of frame slots, where a container counts dropped ones too
            short = header.is_short(max(count + dropped, self._slots_found(time_base, frame_rate, start_time)))
        else:
            short = header.is_short(count, self._seconds_found(time_base, header.start))
        if short:
            # Not warned here but when reading reaches the end, which also finds whether fewer frames decode than
            # there are packets: one line then gives the count that was read.
            self._listed_count, self._listed_by = header.count, header.origin

    def _seconds_found(self, time_base: Fraction | None, start: float | None = None) -> float | None:
        """How long the indexed frames last, to the end of the last frame, in the terms of a header's duration:
        from ``start`` (the stream's start, which the duration is measured from; the first timestamp, where earlier
        or where ``start`` is None); None without timestamps."""
        if self._timestamps is None or not time_base:
            return None
        first = float(int(self._timestamps[0]) * time_base)
        origin = first if start is None else min(start, first)
        return float(int(self._timestamps[-1]) * time_base) - origin + 1 / self.fps

    def _slots_found(self, time_base: Fraction | None, rate: Fraction | None, start: int | None) -> int:
        """The frame slots the indexed frames span, where the stream's timestamps count frames (its time base is
        one frame, as in avi): an avi's header counts the zero-length chunks a variable frame rate writes for the
        frames it drops, which the demuxer does not yield. 0 (nothing to add) elsewhere, or without timestamps."""
        if self._timestamps is None or not time_base or not rate or time_base * rate != 1:
            return 0
        first = int(self._timestamps[0])
        return int(self._timestamps[-1]) - (first if start is None else min(start, first)) + 1

    @property
    def num_frames(self) -> int:
        if self._frame_count is None:
            self._build_index()
        return self._frame_count

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the frames as they are read: turned as the display matrix says."""
        height, width = self.coded_size
        return (width, height) if self.quarter_turns % 2 else (height, width)

    @property
    def quarter_turns(self) -> int:
        """``np.rot90``'s ``k`` that shows the frames as players do (0 for most videos): decodes the first frame
        once, reading at most :data:`TURN_PACKETS` packets of the video stream."""
        if self._turns is None:
            with self._open() as container:
                self._turns = _quarter_turns(container)
        return self._turns

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
        seek_by_timestamp = start > 0 and self._timestamps is not None
        index = -1
        ended = True  # the decoder ran out of frames (rather than the range being complete)
        positioned = self._decode_from(start if seek_by_timestamp else 0)
        try:
            for index, decoded in positioned:
                if index < start:
                    continue
                if index >= stop:
                    ended = False
                    break
                image = decoded.to_ndarray(format="rgb24")
                if self.quarter_turns:
                    image = np.ascontiguousarray(np.rot90(image, self.quarter_turns))
                if image.shape[:2] != self.frame_size:
                    height, width = self.frame_size
                    raise VideoReadError(f"{self.path}: frame {index} is {image.shape[1]}x{image.shape[0]}, "
                                         f"but the video is {width}x{height}")
                if index == self.num_frames - 1:  # the last frame there is: a run that gets here read it all
                    self._stream_ends_at(index)
                yield Frame(index, self.frame_name(index), image)
                if index == stop - 1:
                    ended = False
                    break
        except av.FFmpegError as err:  # the frame after the last one decoded (the first asked for, if none was)
            failed = index + 1 if index >= 0 else start
            towards = f" (reading towards frame {start})" if failed < start else ""
            raise VideoReadError(f"{self.path}: cannot decode frame {failed}{towards}: {err}") from None
        finally:
            positioned.close()
        if ended and index < stop - 1:
            self._stream_ends_at(index if index >= 0 or not seek_by_timestamp else self._count_decoded() - 1)

    def _decode_from(self, start: int) -> Iterator[tuple[int, av.VideoFrame]]:
        """``(index, frame)`` for the decoded frames from one at or before frame ``start`` on (from frame 0 when
        ``start`` is 0), seeking by timestamp. A seek should land on the keyframe at or before its target, but some
        containers (MPEG-TS, which has no index) land after it, or past every frame that decodes: then the seek is
        retried further back (:data:`REVERSE_CHUNK_FRAMES` frames, then four times as far each time), and at last
        the stream is decoded from its start, counting frames. Owns its container (closed when the generator is)."""
        container = self._open()
        try:
            stream = container.streams.video[0]
            back = 0
            while start > 0 and self._timestamps is not None and back < start:
                container.seek(int(self._timestamps[start - back]), stream=stream, backward=True, any_frame=False)
                decoded = container.decode(stream)
                try:
                    first = next(decoded, None)
                except av.FFmpegError:  # landed in the damaged tail of a cut file: as past the end, seek back
                    first = None
                if first is not None:
                    index = self._index_after_seek(first, -1)
                    if index <= start:  # landed at or before the target: every frame from there on is exact
                        yield index, first
                        for frame in decoded:
                            index = self._index_after_seek(frame, index)
                            yield index, frame
                        return
                back = max(REVERSE_CHUNK_FRAMES, 4 * back)
            if start > 0:  # every seek landed past the target: decode from the start instead
                container.close()
                container = self._open()
                stream = container.streams.video[0]
            for index, frame in enumerate(container.decode(stream)):
                yield index, frame
        finally:
            container.close()

    def _index_after_seek(self, frame: av.VideoFrame, previous: int) -> int:
        """The index of a frame decoded after a seek: found by its timestamp, else the one after ``previous``."""
        if frame.pts is None:
            return previous + 1
        return int(np.searchsorted(self._timestamps, frame.pts))

    def _count_decoded(self) -> int:
        """Frames the whole stream decodes to (only needed when a seek landed past the end of what decodes)."""
        with self._open() as container:
            try:
                return sum(1 for _ in container.decode(container.streams.video[0]))
            except av.FFmpegError as err:
                raise VideoReadError(f"{self.path}: cannot decode the video stream: {err}") from None

    def _stream_ends_at(self, last: int) -> None:
        """Decoding found frame ``last`` to be the stream's last: make that the frame count, and say once if that
        is short of the listed count."""
        if last + 1 > self.num_frames:
            return
        if last < 0:
            raise VideoReadError(f"{self.path}: no frame of the video stream decodes (the file is damaged or "
                                 f"truncated)")
        self._frame_count = last + 1
        if self._truncation_reported or last + 1 >= self._listed_count:
            return
        self._truncation_reported = True
        warnings.warn(f"{self.path}: the video stream ends early (truncated or damaged file): the last frame that "
                      f"decodes is frame {last} ({self.frame_name(last)}), so the video has {last + 1} frames, "
                      f"not the {self._listed_count} {self._listed_by}", VideoTruncatedWarning, stacklevel=3)


def is_glob(text: str) -> bool:
    """Whether :func:`open_video` takes ``text`` for a glob of frame files. An existing file or folder wins over a
    glob: `clip [1080p].mp4` and `take [1]/` are paths, not patterns."""
    return any(char in text for char in "*?[") and not Path(text).exists()


def open_video(source: str | Path | FrameSource) -> FrameSource:
    """Open a video file (mp4/mov/mkv/webm/avi via PyAV), a folder of images, or a glob such as ``"clip/*.png"``."""
    if isinstance(source, FrameSource):
        return source
    text = str(source)
    path = Path(text)
    if is_glob(text):
        return ImageSequenceSource.from_glob(text)
    if path.is_dir():
        return ImageSequenceSource.from_folder(path)
    if not path.exists():
        raise VideoReadError(f"{path}: no such file or folder")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise VideoReadError(f"{path}: a single image is not a video; pass its folder or a glob")
    return VideoFileSource(path)
