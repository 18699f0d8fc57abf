"""The training data stream: a mix of synthetic (still-image) and video clips, as batches from a DataLoader.

The stream is endless and deterministic: sample ``i`` of process ``rank`` is drawn from a generator seeded with
``(seed, rank, i)``, whatever worker makes it. Resuming at step ``s`` therefore just starts the index at
``s * batch_size`` -- no sampler state to save -- and two processes of a DDP run never draw the same clips.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .augment import photometric, relight_clip
from .clips import select_objects, to_tensors
from .config import DataConfig
from .data_static import StaticClipSource
from .data_video import VideoClipSource
from .files import TrainingDataError, check_not_held_out

#: Redraws when a clip ends up with no usable object (e.g. the reference object cropped away or fully occluded).
MAX_REDRAWS = 20


class TrainingClips(Dataset):
    """Map-style view of the endless stream: ``clips[i]`` is sample ``i`` (index only seeds the generator)."""

    def __init__(self, cfg: DataConfig, seed: int = 0, rank: int = 0, batch_size: int = 1):
        root = check_not_held_out(Path(cfg.root))
        if not root.is_dir():
            raise TrainingDataError(f"training data root not found: {cfg.root}")
        if len(cfg.curriculum_steps) != len(cfg.curriculum_sizes) or list(cfg.curriculum_steps) != sorted(
                cfg.curriculum_steps):
            raise TrainingDataError("data.curriculum_steps (increasing) and data.curriculum_sizes need one size per step")
        self.cfg, self.seed, self.rank, self.batch_size = cfg, seed, rank, batch_size
        self.static = StaticClipSource([root / s for s in cfg.static_sets], cfg) if cfg.static_sets else None
        self.video = VideoClipSource([root / s for s in cfg.video_sets], cfg) if cfg.video_sets else None
        if self.static is None and self.video is None:
            raise TrainingDataError("data.static_sets and data.video_sets are both empty")

    def __len__(self) -> int:
        return 2**62  # endless; the sampler decides where to start

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.rank, index])
        for _ in range(MAX_REDRAWS):
            use_static = self.video is None or (self.static is not None and rng.random() < self.cfg.static_fraction)
            source = self.static if use_static else self.video
            clip, num_objects = select_objects(source.sample(rng, self.size_at(index)), rng,
                                               self.max_objects_of_clip(rng), self.cfg.min_object_pixels)
            if num_objects > 0:
                clip.frames = [photometric(frame, rng, self.cfg.augment)
                               for frame in relight_clip(clip.frames, rng, self.cfg.augment)]
                return to_tensors(clip, num_objects)
        raise TrainingDataError(f"sample {index}: no clip with a visible object after {MAX_REDRAWS} draws; "
                                f"check data.min_object_pixels ({self.cfg.min_object_pixels}) against data.size")

    def max_objects_of_clip(self, rng: np.random.Generator) -> int:
        if self.cfg.single_target_prob <= 0.0:
            return self.cfg.max_objects  # no draw: the streams of configs without the option stay as they were
        return 1 if rng.random() < self.cfg.single_target_prob else self.cfg.max_objects

    def size_at(self, index: int) -> int:
        """Crop side of sample ``index``: the curriculum's size at its step (all clips of a batch share a step)."""
        step, size = index // self.batch_size, self.cfg.size
        for from_step, step_size in zip(self.cfg.curriculum_steps, self.cfg.curriculum_sizes):
            if step >= from_step:
                size = step_size
        return size


class EndlessSampler(Sampler[int]):
    """Yields ``start, start + 1, ...`` forever."""

    def __init__(self, start: int = 0):
        self.start = start

    def __iter__(self) -> Iterator[int]:
        index = self.start
        while True:
            yield index
            index += 1


def build_loader(cfg: DataConfig, batch_size: int, seed: int, rank: int, start_sample: int) -> DataLoader:
    return DataLoader(
        TrainingClips(cfg, seed=seed, rank=rank, batch_size=batch_size),
        batch_size=batch_size,
        sampler=EndlessSampler(start_sample),
        num_workers=cfg.workers,
        persistent_workers=cfg.workers > 0,
        prefetch_factor=2 if cfg.workers > 0 else None,
        worker_init_fn=_single_threaded_worker,
    )


def _single_threaded_worker(_: int) -> None:
    torch.set_num_threads(1)  # workers only decode and warp; compute threads belong to the training process
