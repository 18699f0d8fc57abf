"""Overlay video: each frame with its objects tinted in their palette colours and outlined, encoded as it comes.

The video is encoded into a temporary file beside the target (``.<name>.partial.<ext>``) and renamed onto it only when
complete, so an interrupted run never leaves a truncated, unplayable overlay under the real name.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from longvos.io.errors import InputError
from longvos.io.palette import DAVIS_PALETTE
from longvos.io.writer import PARTIAL_MARK

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
    """Streams overlay frames into a video file (one frame in, one frame encoded; nothing is kept)."""

    def __init__(self, path: str | Path, fps: float, palette: np.ndarray | None = None):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in _CODECS:
            raise InputError(f"{self.path}: overlay must be one of {', '.join(sorted(_CODECS))}")
        self.palette = palette
        self._rate = Fraction(fps).limit_denominator(1001)
        self._codec = next((c for c in _CODECS[suffix] if _has_encoder(c)), None)
        if self._codec is None:
            raise InputError(f"{self.path}: this FFmpeg build has no encoder for {suffix}")
        self._container = None
        self._stream = None
        self._temporary = self.path.with_name(f".{self.path.stem}{PARTIAL_MARK}{self.path.suffix}")

    def _start(self, height: int, width: int) -> None:
        self._container = av.open(str(self._temporary), mode="w")
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
        """Flush the encoder, finish the file and rename it into place."""
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None
        os.replace(self._temporary, self.path)

    def discard(self) -> None:
        """Abandon an unfinished video: delete the temporary file (a finished overlay is left as it is)."""
        if self._container is not None:
            try:
                self._container.close()
            except (av.FFmpegError, OSError, ValueError):
                pass
            self._container = None
        self._temporary.unlink(missing_ok=True)


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except (av.FFmpegError, ValueError):
        return False
    return True
