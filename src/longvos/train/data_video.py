"""Clips sampled from DAVIS-layout video sets (mavos-spec §5, stage 2).

A clip is a reference frame on which an object is visible, then ``clip_len - 1`` later frames at random gaps of
``1..max_gap`` annotated frames (reflecting at the end of the sequence), with the whole sequence played backwards
with probability ``reverse_prob``. One crop, scale and flip is shared by all frames of a clip, so the only motion is
the video's own. With probability ``video_merge_prob`` the objects of a clip from another sequence are pasted on top.

Layout of a set (read by :mod:`longvos.io.davis`): ``<set>/JPEGImages/<seq>/<frame>.jpg`` and
``<set>/Annotations/<seq>/<frame>.png`` with the same frame names. Only annotated frames are used, so sparsely
annotated sequences work (the gaps are then in annotations).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longvos.io.davis import DavisLayout
from longvos.io.masks import VOID

from .augment import crop_homography, random_object_point, warp_image, warp_label
from .clips import TrainingClip, paste
from .config import DataConfig
from .files import TrainingDataError, check_not_held_out, read_image, read_label

#: Draws of a reference frame before giving up on a sequence with (almost) no visible object.
REFERENCE_TRIES = 10


@dataclass(frozen=True)
class Sequence:
    name: str
    frames: tuple[Path, ...]   # JPEGs that have an annotation, in time order
    labels: tuple[Path, ...]


class VideoClipSource:
    """Draws clips from every sequence of the given DAVIS-layout sets, each sequence equally likely."""

    def __init__(self, set_dirs: list[Path], cfg: DataConfig):
        self.cfg = cfg
        self.sequences: list[Sequence] = []
        names = [set_dir.name for set_dir in set_dirs]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:  # holdout keys are <set folder name>/<sequence>: two sets of one name cannot be told apart
            raise TrainingDataError(f"data.video_sets names the set {repeated[0]!r} twice (or two sets share that "
                                    f"folder name)")
        holdout, used = frozenset(cfg.holdout), set()
        for set_dir in set_dirs:
            for sequence in find_sequences(check_not_held_out(set_dir)):
                key = f"{set_dir.name}/{sequence.name}"
                if key in holdout:  # the validation split: never trained on
                    used.add(key)
                else:
                    self.sequences.append(sequence)
        unused_holdout = holdout - used
        if unused_holdout:  # a typo would silently train on the validation split
            raise TrainingDataError(f"data.holdout names no sequence of the video sets: {', '.join(sorted(unused_holdout))}"
                                    " (write <video set>/<sequence>)")
        if not self.sequences:
            raise TrainingDataError(f"no annotated sequences found in {', '.join(map(str, set_dirs))}")

    def __len__(self) -> int:
        return len(self.sequences)

    def sample(self, rng: np.random.Generator, size: int) -> TrainingClip:
        first = int(rng.integers(len(self.sequences)))
        clip = self.clip_from(first, rng, size)
        if len(self.sequences) > 1 and rng.random() < self.cfg.video_merge_prob:
            other = (first + 1 + int(rng.integers(len(self.sequences) - 1))) % len(self.sequences)
            clip = paste(clip, self.clip_from(other, rng, size))
        return clip

    def clip_from(self, index: int, rng: np.random.Generator, size: int) -> TrainingClip:
        sequence = self.sequences[index]
        order = list(range(len(sequence.frames)))
        if rng.random() < self.cfg.reverse_prob:
            order.reverse()
        reference, reference_label = self.pick_reference(sequence, order, rng)
        positions = clip_positions(reference, len(order), self.cfg.clip_len, self.cfg.max_gap, rng)
        indices = [order[p] for p in positions]

        image0 = read_image(sequence.frames[indices[0]])
        aug = self.cfg.augment
        matrix = crop_homography(image0.shape[:2], size, rng, aug.scale_range,
                                 keep_point_xy=random_object_point(reference_label, rng),
                                 hflip=rng.random() < aug.hflip_prob)
        frames, labels = [], []
        for step, i in enumerate(indices):
            image = image0 if step == 0 else read_image(sequence.frames[i])
            label = reference_label if step == 0 else read_label(sequence.labels[i])
            if label.shape != image.shape[:2]:
                raise TrainingDataError(f"{sequence.labels[i]} is {label.shape[::-1]} but its frame is "
                                        f"{image.shape[1::-1]}")
            frames.append(warp_image(image, matrix, size))
            labels.append(warp_label(label, matrix, size))
        return TrainingClip(frames, labels)

    def pick_reference(
        self, sequence: Sequence, order: list[int], rng: np.random.Generator
    ) -> tuple[int, np.ndarray]:
        """A position in ``order`` whose frame shows an object (the largest over a few draws if none is big)."""
        best: tuple[int, int, np.ndarray] | None = None
        for _ in range(REFERENCE_TRIES):
            position = int(rng.integers(len(order)))
            label = read_label(sequence.labels[order[position]])
            largest = largest_object_pixels(label)
            if largest >= self.cfg.min_object_pixels:
                return position, label
            if best is None or largest > best[1]:
                best = (position, largest, label)
        assert best is not None
        return best[0], best[2]


def clip_positions(start: int, length: int, clip_len: int, max_gap: int, rng: np.random.Generator) -> list[int]:
    """``clip_len`` positions from ``start`` onwards at gaps of 1..max_gap, reflected at the sequence end (so a
    reference near the end walks back, and very short sequences repeat frames)."""
    if length == 1:
        return [0] * clip_len
    period = 2 * (length - 1)
    positions, unfolded = [start], start
    for _ in range(clip_len - 1):
        unfolded += int(rng.integers(1, max_gap + 1))
        folded = unfolded % period
        positions.append(folded if folded < length else period - folded)
    return positions


def largest_object_pixels(label: np.ndarray) -> int:
    counts = np.bincount(label.ravel(), minlength=256)
    counts[0] = counts[VOID] = 0
    return int(counts.max())


def find_sequences(set_dir: Path) -> list[Sequence]:
    """The sequences of a video set with at least one annotated JPEG, in plain name order (the order clip sampling
    indexes into: keep it, or seeded runs draw other clips)."""
    layout = DavisLayout.of(set_dir)
    if not layout.images_root.is_dir() or not layout.annotations_root.is_dir():
        raise TrainingDataError(f"video set {set_dir} needs the folders JPEGImages/ and Annotations/")
    sequences = []
    for name in layout.sequences(sort_key=None):
        pairs = layout.annotated_jpegs(name)
        if pairs:
            frames, labels = zip(*pairs)
            sequences.append(Sequence(name, frames, labels))
    return sequences
