"""Walking an evaluation dataset: which sequences, which ground-truth frames, where their predictions are.

Two layouts are understood:

- a plain ground-truth root ``<gt_root>/<sequence>/<frame>.png`` scored against ``<pred_root>/<sequence>/<frame>.png``
  (what ``evaluate`` takes);
- the DAVIS layout ``<root>/JPEGImages/<sequence>/*.jpg`` + ``<root>/Annotations/<sequence>/*.png`` (optionally with
  the DAVIS ``480p`` level in between), which :class:`DavisLayout` resolves to the plain form.

Ground truth may be sparse: only the frames that have a PNG are annotated, and only those are ever scored.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from longvos.io.errors import InputError
from longvos.io.video import natural_sort_key

#: The DAVIS release keeps frames and masks one level deeper, under the resolution name.
_DAVIS_RESOLUTION_LEVELS = ("480p", "Full-Resolution")


@dataclass(frozen=True)
class SequenceFiles:
    """The annotated frames of one sequence (temporal order) and the folder its predictions live in."""

    name: str
    gt_paths: tuple[Path, ...]
    pred_dir: Path

    @property
    def frame_names(self) -> tuple[str, ...]:
        return tuple(path.stem for path in self.gt_paths)

    def pred_path(self, gt_path: Path) -> Path:
        """A prediction has the file name of its ground-truth frame."""
        return self.pred_dir / gt_path.name


def annotated_frames(gt_dir: Path) -> tuple[Path, ...]:
    """The ground-truth PNGs of one sequence in temporal (natural) order; zero-padded names sort as DAVIS does."""
    return tuple(sorted((p for p in gt_dir.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")),
                        key=lambda p: natural_sort_key(p.name)))


def resolve_sequence_names(gt_root: Path, sequences: Sequence[str] | str | Path | None = None) -> list[str]:
    """Sequence names to evaluate: all sub-folders of ``gt_root`` by default, a list, or a text file of names."""
    if not gt_root.is_dir():
        raise InputError(f"{gt_root}: ground-truth folder does not exist")
    if sequences is None:
        names = sorted((d.name for d in gt_root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                       key=natural_sort_key)
        if not names:
            raise InputError(f"{gt_root}: no sequence folders with ground truth found")
        return names
    if isinstance(sequences, (str, Path)):
        listing = Path(sequences)
        if not listing.is_file():
            raise InputError(f"{listing}: sequence list file does not exist")
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    else:
        names = list(sequences)
    missing = [name for name in names if not (gt_root / name).is_dir()]
    if missing:
        raise InputError(f"{gt_root}: no ground truth for sequence(s) {', '.join(missing)}")
    if len(set(names)) != len(names):
        raise InputError(f"sequence list names a sequence twice: {', '.join(names)}")
    return names


def find_sequences(gt_root: Path, pred_root: Path, sequences: Sequence[str] | str | Path | None = None,
                   ) -> list[SequenceFiles]:
    """Pair every requested ground-truth sequence with its prediction folder; missing folders are errors."""
    gt_root, pred_root = Path(gt_root), Path(pred_root)
    if not pred_root.is_dir():
        raise InputError(f"{pred_root}: prediction folder does not exist")
    found = []
    for name in resolve_sequence_names(gt_root, sequences):
        gt_paths = annotated_frames(gt_root / name)
        if not gt_paths:
            raise InputError(f"{gt_root / name}: sequence {name} has no ground-truth PNG")
        pred_dir = pred_root / name
        if not pred_dir.is_dir():
            raise InputError(f"{pred_dir}: predictions for sequence {name} are missing (expected a folder of PNGs "
                             f"named like its ground truth)")
        found.append(SequenceFiles(name, gt_paths, pred_dir))
    return found


@dataclass(frozen=True)
class DavisLayout:
    """A dataset in the DAVIS layout: ``JPEGImages/<seq>`` frames and ``Annotations/<seq>`` (possibly sparse) masks.

    Only ``Annotations`` must exist (scoring existing predictions needs no frames); running a model checks the
    frames of each sequence it reads.
    """

    root: Path
    images_root: Path
    annotations_root: Path

    @classmethod
    def at(cls, root: str | Path) -> DavisLayout:
        """The dataset at ``root``, or the one dataset inside it (``data/dev`` holding ``data/dev/davis2016-dev``)."""
        root = Path(root)
        if not (root / "Annotations").is_dir() and root.is_dir():
            inside = sorted(child for child in root.iterdir() if (child / "Annotations").is_dir())
            if len(inside) == 1:
                root = inside[0]
            elif inside:
                names = ", ".join(path.name for path in inside)
                raise InputError(f"{root} holds {len(inside)} DAVIS-layout datasets ({names}); pass one of them")
        images, annotations = root / "JPEGImages", root / "Annotations"
        if not annotations.is_dir():
            raise InputError(f"{root}: not a DAVIS-layout dataset (no Annotations/ folder; expected "
                             f"JPEGImages/<sequence>/*.jpg and Annotations/<sequence>/*.png)")
        for level in _DAVIS_RESOLUTION_LEVELS:
            if (annotations / level).is_dir():
                return cls(root, images / level, annotations / level)
        return cls(root, images, annotations)

    def frames_dir(self, sequence: str) -> Path:
        """The folder of a sequence's frames (the video the model runs over)."""
        folder = self.images_root / sequence
        if not folder.is_dir():
            raise InputError(f"{folder}: frames of sequence {sequence} are missing")
        return folder

    def annotation_paths(self, sequence: str) -> dict[str, Path]:
        """Ground-truth masks of a sequence keyed by frame name (only annotated frames have one)."""
        folder = self.annotations_root / sequence
        if not folder.is_dir():
            raise InputError(f"{folder}: annotations of sequence {sequence} are missing")
        return {path.stem: path for path in annotated_frames(folder)}
