"""The training clip and the operations both clip sources share: compositing, object selection, tensors.

A clip is a list of frames with one label map each, already cut to the training size. Object ids inside a clip are
arbitrary until :func:`select_objects` maps the objects visible on the reference frame to ``1..N`` in random order
(the model's slots), as semi-supervised VOS defines them: an object that is not given on the reference frame is
background, whatever it is.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from longvos.io.masks import VOID


@dataclass
class TrainingClip:
    frames: list[np.ndarray]   # T x (S, S, 3) uint8 RGB
    labels: list[np.ndarray]   # T x (S, S) uint8; 0 background, 255 void, other values arbitrary object ids

    def __post_init__(self) -> None:
        if len(self.frames) != len(self.labels):
            raise ValueError(f"clip has {len(self.frames)} frames but {len(self.labels)} labels")


def object_ids(label: np.ndarray) -> list[int]:
    return [int(v) for v in np.unique(label) if v not in (0, VOID)]


def paste(base: TrainingClip, overlay: TrainingClip, as_background: bool = False) -> TrainingClip:
    """Composite the overlay's objects over the base clip, frame by frame, under fresh ids.

    Only object pixels are pasted: the overlay's background and void pixels leave the base untouched, so the base's
    labels stay exact there. Pasted objects occlude whatever they cover, which is the point (occlusion training).
    With ``as_background`` the pasted pixels are labelled background: a distractor the model must not follow.
    """
    if len(base.frames) != len(overlay.frames):
        raise ValueError("paste needs clips of the same length")
    taken = sorted({i for label in base.labels for i in object_ids(label)})
    offset = max(taken, default=0)
    incoming = sorted({i for label in overlay.labels for i in object_ids(label)})
    if offset + len(incoming) >= VOID:
        raise ValueError("too many objects to composite into one clip")
    remap = np.zeros(256, dtype=np.uint8)
    if not as_background:
        for new_id, old_id in enumerate(incoming, start=offset + 1):
            remap[old_id] = new_id
    frames, labels = [], []
    for frame, label, top_frame, top_label in zip(base.frames, base.labels, overlay.frames, overlay.labels):
        on_top = (top_label > 0) & (top_label != VOID)
        frames.append(np.where(on_top[..., None], top_frame, frame))
        labels.append(np.where(on_top, remap[top_label], label).astype(np.uint8))
    return TrainingClip(frames, labels)


def select_objects(
    clip: TrainingClip, rng: np.random.Generator, max_objects: int, min_pixels: int
) -> tuple[TrainingClip, int]:
    """Keep up to ``max_objects`` objects that are visible (``>= min_pixels``) on the reference frame, renumbered
    ``1..N`` in random order; every other object becomes background. Returns the clip and N (0 if none qualify)."""
    reference = clip.labels[0]
    ids, counts = np.unique(reference, return_counts=True)
    visible = [int(i) for i, c in zip(ids, counts) if i not in (0, VOID) and c >= min_pixels]
    rng.shuffle(visible)
    kept = visible[:max_objects]
    remap = np.zeros(256, dtype=np.uint8)
    remap[VOID] = VOID
    for new_id, old_id in enumerate(kept, start=1):
        remap[old_id] = new_id
    return TrainingClip(clip.frames, [remap[label] for label in clip.labels]), len(kept)


def to_tensors(clip: TrainingClip, num_objects: int) -> dict[str, torch.Tensor]:
    """``images`` (T, 3, S, S) float in [0, 1]; ``labels`` (T, S, S) int64; ``num_objects`` () int64."""
    images = torch.from_numpy(np.stack(clip.frames)).permute(0, 3, 1, 2).float().div_(255.0)
    labels = torch.from_numpy(np.stack(clip.labels).astype(np.int64))
    return {"images": images, "labels": labels, "num_objects": torch.tensor(num_objects)}
