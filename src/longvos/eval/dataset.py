"""Walking an evaluation dataset: which sequences, which ground-truth frames, where their predictions are.

Two layouts are understood:

- a plain ground-truth root ``<gt_root>/<sequence>/<frame>.png`` scored against ``<pred_root>/<sequence>/<frame>.png``
  (what ``evaluate`` takes);
- the DAVIS layout, which :class:`longvos.io.davis.DavisLayout` resolves to the plain form (its
  ``annotations_root``).

Ground truth may be sparse: only the frames that have a PNG are annotated, and only those are ever scored.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from longvos.io.davis import annotated_frames, sequence_names
from longvos.io.errors import InputError


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


def resolve_sequence_names(gt_root: Path, sequences: Sequence[str] | str | Path | None = None) -> list[str]:
    """Sequence names to evaluate: all sub-folders of ``gt_root`` by default, a list, or a text file of names."""
    if not gt_root.is_dir():
        raise InputError(f"{gt_root}: ground-truth folder does not exist")
    if sequences is None:
        names = sequence_names(gt_root)
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
    for name in names:  # a path would escape the dataset: "/data/Annotations/x" made eval write over its ground truth
        if not isinstance(name, str) or name in ("", ".", "..") or any(char in name for char in "/\\\0"):
            raise InputError(f"sequence {name!r}: sequence names must be plain folder names of {gt_root}, not paths")
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
