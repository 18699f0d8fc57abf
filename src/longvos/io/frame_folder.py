"""Frames stored as image files: a folder of jpg/png (natural sort) or a glob pattern."""
from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from longvos.io.errors import VideoReadError
from longvos.io.video import IMAGE_EXTENSIONS, Frame, FrameSource, natural_sort_key


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
