"""The DAVIS dataset layout, read in one place (evaluation, the batch manifest and training all use it).

``<root>/JPEGImages/<sequence>/<frame>.jpg`` with ``<root>/Annotations/<sequence>/<frame>.png`` (index PNGs, 255 is
void); the DAVIS release keeps both one level deeper, under a resolution name (``480p``, ``Full-Resolution``).
Annotations may be sparse: only the frames that have a PNG are annotated. Sequence, frame and annotation names skip
hidden files (``.DS_Store``, ``._00000.png``).

What each caller checks differs and stays with the caller: evaluation needs ``Annotations/`` (scoring predictions
needs no frames) and accepts a folder holding one dataset (:meth:`DavisLayout.at`); the batch manifest needs
``JPEGImages/``; training needs both.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from longvos.io.errors import InputError
from longvos.io.video import IMAGE_EXTENSIONS, frame_sort_key, natural_sort_key

#: The DAVIS release keeps frames and masks one level deeper, under the resolution name.
RESOLUTION_LEVELS = ("480p", "Full-Resolution")


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def sequence_names(folder: Path, sort_key: Callable[[str], object] | None = natural_sort_key) -> list[str]:
    """The (non-hidden) sub-folders of ``folder``: natural order by default, plain string order with ``None``."""
    return sorted((child.name for child in folder.iterdir() if child.is_dir() and _visible(child)), key=sort_key)


def annotated_frames(folder: Path) -> tuple[Path, ...]:
    """The mask PNGs of one sequence in the frame reader's order (:func:`~longvos.io.video.frame_sort_key`), so
    that the first mask is the first annotated frame; zero-padded names sort as DAVIS does."""
    return tuple(sorted((p for p in folder.iterdir() if p.suffix.lower() == ".png" and _visible(p)),
                        key=frame_sort_key))


@dataclass(frozen=True)
class DavisLayout:
    """Where a DAVIS-layout dataset keeps its frames and annotations (after the optional resolution level)."""

    root: Path
    images_root: Path
    annotations_root: Path

    @classmethod
    def of(cls, root: str | Path) -> DavisLayout:
        """The layout rooted at ``root``, one resolution level down where ``Annotations/`` or ``JPEGImages/`` has
        one. Checks nothing: callers check the folders they need."""
        root = Path(root)
        images, annotations = root / "JPEGImages", root / "Annotations"
        for level in RESOLUTION_LEVELS:
            if (annotations / level).is_dir() or (images / level).is_dir():
                return cls(root, images / level, annotations / level)
        return cls(root, images, annotations)

    @classmethod
    def at(cls, root: str | Path) -> DavisLayout:
        """The dataset at ``root``, or the one dataset inside it (``data/dev`` holding ``data/dev/davis2016-dev``);
        it must have ``Annotations/``."""
        root = Path(root)
        if not (root / "Annotations").is_dir() and root.is_dir():
            inside = sorted(child for child in root.iterdir() if (child / "Annotations").is_dir())
            if len(inside) == 1:
                root = inside[0]
            elif inside:
                names = ", ".join(path.name for path in inside)
                raise InputError(f"{root} holds {len(inside)} DAVIS-layout datasets ({names}); pass one of them")
        if not (root / "Annotations").is_dir():
            raise InputError(f"{root}: not a DAVIS-layout dataset (no Annotations/ folder; expected "
                             f"JPEGImages/<sequence>/*.jpg and Annotations/<sequence>/*.png)")
        return cls.of(root)

    def sequences(self, sort_key: Callable[[str], object] | None = natural_sort_key) -> list[str]:
        """The sequences that have a frame folder (see :func:`sequence_names` for the order)."""
        return sequence_names(self.images_root, sort_key)

    def frames_dir(self, sequence: str) -> Path:
        """The folder of a sequence's frames (the video the model runs over)."""
        folder = self.images_root / sequence
        if not folder.is_dir():
            raise InputError(f"{folder}: frames of sequence {sequence} are missing")
        return folder

    def frame_names(self, sequence: str) -> list[str]:
        """The names (without extension) of a sequence's frame images, in the frame reader's order, so that the
        ``i``-th name is the reader's frame ``i``."""
        return [p.stem for p in sorted((p for p in (self.images_root / sequence).iterdir()
                                        if p.suffix.lower() in IMAGE_EXTENSIONS and _visible(p)), key=frame_sort_key)]

    def annotations(self, sequence: str) -> tuple[Path, ...]:
        """A sequence's mask PNGs in temporal order; none if it has no annotation folder."""
        folder = self.annotations_root / sequence
        return annotated_frames(folder) if folder.is_dir() else ()

    def annotation_paths(self, sequence: str) -> dict[str, Path]:
        """Ground-truth masks of a sequence keyed by frame name (only annotated frames have one)."""
        folder = self.annotations_root / sequence
        if not folder.is_dir():
            raise InputError(f"{folder}: annotations of sequence {sequence} are missing")
        return {path.stem: path for path in annotated_frames(folder)}

    def annotated_jpegs(self, sequence: str) -> list[tuple[Path, Path]]:
        """``(frame, mask)`` of the JPEG frames that have a mask of the same name, in file-name (string) order."""
        masks = self.annotations_root / sequence
        pairs = []
        for frame in sorted((self.images_root / sequence).glob("*.jpg")):
            mask = masks / f"{frame.stem}.png"
            if mask.is_file():
                pairs.append((frame, mask))
        return pairs
