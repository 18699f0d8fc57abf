"""Synthetic clips from still images with masks: the static pretraining of AOT/MAVOS (mavos-spec §5, stage 1).

One photo becomes a clip by a random walk of small homographies (rotation, shift, zoom, shear, perspective), so the
object moves, turns and deforms from frame to frame. Compositing the object(s) of a second photo, moving on their
own walk, makes multi-object clips with occlusion (the "dynamic merge"). Pasting a second copy of the photo's own
object(s) as background makes a look-alike distractor (``data.distractor_prob``).

Layout of a static set: ``<set>/images/<name>.jpg`` with ``<set>/masks/<name>.png`` (index PNG, 255 = void).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .augment import crop_homography, motion_step, random_object_point, warp_image, warp_label
from .clips import TrainingClip, paste
from .config import DataConfig
from .files import TrainingDataError, check_not_held_out, read_image, read_label

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class StaticClipSource:
    """Draws synthetic clips from every image/mask pair of the given static sets."""

    def __init__(self, set_dirs: list[Path], cfg: DataConfig):
        self.cfg = cfg
        self.pairs: list[tuple[Path, Path]] = []
        for set_dir in set_dirs:
            self.pairs.extend(find_image_mask_pairs(check_not_held_out(set_dir)))
        if not self.pairs:
            raise TrainingDataError(f"no image/mask pairs found in {', '.join(map(str, set_dirs))}")

    def __len__(self) -> int:
        return len(self.pairs)

    def sample(self, rng: np.random.Generator, size: int) -> TrainingClip:
        index = int(rng.integers(len(self.pairs)))
        clip = self.clip_from(index, rng, size)
        if rng.random() < self.cfg.distractor_prob:
            # The same object(s) again, on a walk of their own and labelled background: a look-alike (the other red
            # car, a second dancer) that appearance alone cannot tell apart, so only where the target was can.
            lookalike = self.clip_from(index, rng, size)
            if self.cfg.distractor_enters:  # absent from the reference frame: it walks in later (car-shadow's car)
                enter = int(rng.integers(1, self.cfg.clip_len))
                lookalike.labels[:enter] = [np.zeros_like(label) for label in lookalike.labels[:enter]]
            clip = paste(clip, lookalike, as_background=True)
        if rng.random() < self.cfg.static_merge_prob:
            clip = paste(clip, self.clip_from(int(rng.integers(len(self.pairs))), rng, size))
        return clip

    def clip_from(self, index: int, rng: np.random.Generator, size: int) -> TrainingClip:
        """``clip_len`` frames of one photo moving along a random walk; frame 0 shows the object."""
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path)
        label = read_label(mask_path, expected_hw=image.shape[:2])
        aug = self.cfg.augment
        matrix = crop_homography(image.shape[:2], size, rng, aug.scale_range,
                                 keep_point_xy=random_object_point(label, rng),
                                 hflip=rng.random() < aug.hflip_prob)
        frames, labels = [], []
        for t in range(self.cfg.clip_len):
            if t > 0:
                matrix = motion_step(size, rng, aug) @ matrix
            frames.append(warp_image(image, matrix, size))
            labels.append(warp_label(label, matrix, size))
        return TrainingClip(frames, labels)


def find_image_mask_pairs(set_dir: Path) -> list[tuple[Path, Path]]:
    images_dir, masks_dir = set_dir / "images", set_dir / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise TrainingDataError(f"static set {set_dir} needs the folders images/ and masks/")
    pairs = []
    for image_path in sorted(images_dir.iterdir()):
        if image_path.suffix.lower() in IMAGE_SUFFIXES:
            mask_path = masks_dir / f"{image_path.stem}.png"
            if mask_path.is_file():  # an image without a mask has nothing to teach
                pairs.append((image_path, mask_path))
    return pairs
