"""Video files (mp4, mov, mkv, webm, ...) decoded with PyAV, one frame at a time.

Frame ``i`` is the ``i``-th frame in presentation order and is named ``{i:05d}`` (wider for very long videos).
Seeking and reverse reading use a timestamp index built from the packets alone (no decoding), made on first need.
The packet count is what the container lists; a damaged or truncated file can decode fewer frames. When decoding
ends before the listed count, ``num_frames`` becomes the count that decodes and one :class:`VideoTruncatedWarning`
names the last frame that decoded.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import warnings

import av
import numpy as np

from longvos.io.errors import VideoReadError
from longvos.io.video import Frame, FrameSource

# Reverse reading decodes this many frames forwards and yields them backwards, so it holds at most this many
# decoded frames at once (about 20 MB at 480p).
REVERSE_CHUNK_FRAMES = 16


class VideoTruncatedWarning(UserWarning):
    """The video stream ends before the frame count its container lists (a truncated or damaged file)."""


class VideoFileSource(FrameSource):
    """A video stream read with PyAV; memory stays at a few frames whatever the length."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.description = str(self.path)
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
        """Count frames and record their timestamps by demuxing packets (cheap: nothing is decoded)."""
        timestamps: list[int] = []
        count = 0
        try:
            with self._open() as container:
                for packet in container.demux(container.streams.video[0]):
                    if packet.size == 0:  # the flush packet at the end of the stream
                        continue
                    count += 1
                    if packet.pts is not None:
                        timestamps.append(packet.pts)
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
