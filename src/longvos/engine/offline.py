"""SAM2-style offline verbs on top of a :class:`~longvos.engine.session.Session`.

``init_state`` opens the video lazily; masks given with ``add_new_mask`` wait, keyed by frame, until propagation
reaches their frame (so objects may appear on any frame, as with SAM2's "objects appearing later"). Each
``propagate_in_video`` call streams the video once from its start frame with a fresh memory: frames are decoded one
at a time and nothing per frame is kept; masks on frames the stream does not reach (before the start frame, in
the direction of travel) are not used. Unlike SAM2, ``add_new_mask`` does not run the model (no frame is decoded
until propagation), so it returns no logits.

While a propagation runs, masks may be added for frames ahead of it (they are used when it gets there); a mask for a
frame it has already passed would be ignored, so it is refused (:class:`~longvos.io.errors.SessionError`); add it
between propagations instead. A propagation runs until its generator is exhausted, closed (``.close()``) or
garbage-collected: one paused and kept in a variable still runs. A newer ``propagate_in_video`` (or
``reset_state``) supersedes a running one, which then stops with an error when iterated.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from longvos.engine.objects import to_index_map
from longvos.engine.session import MaskLike, Session
from longvos.io.errors import InputError, MaskError, SessionError
from longvos.io.video import FrameSource, open_video


@dataclass
class Propagation:
    """A running ``propagate_in_video``: its direction and the frame it yielded last."""

    reverse: bool
    frame_idx: int | None = None

    def passed(self, frame_idx: int) -> bool:
        """Whether ``frame_idx`` is behind the propagation (or is the frame it is on): a mask there is never used."""
        if self.frame_idx is None:
            return False
        return frame_idx >= self.frame_idx if self.reverse else frame_idx <= self.frame_idx


@dataclass
class VideoState:
    """An open video, its session, and the user's masks: ``prompts[frame_idx][obj_id]`` (H, W) bool."""

    source: FrameSource
    session: Session
    prompts: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)
    running: Propagation | None = field(default=None, repr=False)  # the propagation in progress, if any

    @property
    def object_ids(self) -> list[int]:
        """Every object given a mask or being tracked, in order of first appearance."""
        ids = list(self.session.object_ids)
        for frame_idx in sorted(self.prompts):
            ids += [i for i in self.prompts[frame_idx] if i not in ids]
        return ids

    @property
    def num_frames(self) -> int:
        return self.source.num_frames


def init_state(session: Session, video: str | Path | FrameSource) -> VideoState:
    return VideoState(open_video(video), session)


def _check_state(state: object, verb: str) -> None:
    if not isinstance(state, VideoState):
        raise SessionError(f"{verb} needs the state returned by init_state(video), got a {type(state).__name__}")


def add_new_mask(state: VideoState, frame_idx: int, obj_id: int, mask: MaskLike) -> tuple[int, list[int]]:
    _check_state(state, "add_new_mask")
    state.source.check_index(frame_idx)
    what = f"mask of object {obj_id} on frame {frame_idx}"
    if state.running is not None and state.running.passed(frame_idx):
        raise SessionError(f"{what}: frame {frame_idx} was already propagated (the running propagate_in_video is "
                           f"now at frame {state.running.frame_idx}); give masks for frames ahead of it, or finish "
                           f"iterating that generator or close it (generator.close(); a paused one kept in a "
                           f"variable still runs), then add this one and propagate again")
    if int(obj_id) <= 0:
        raise MaskError(f"{what}: object ids must be positive integers")
    binary = to_index_map(mask, state.source.frame_size, what) != 0
    if not binary.any():
        raise MaskError(f"{what}: the mask is empty; use remove_object to drop an object")
    state.prompts.setdefault(frame_idx, {})[int(obj_id)] = binary
    return frame_idx, state.object_ids


def propagate_in_video(state: VideoState, start_frame_idx: int | None = None,
                       reverse: bool = False) -> Iterator[tuple[int, list[int], np.ndarray]]:
    _check_state(state, "propagate_in_video")
    if not state.prompts:
        raise InputError("no masks to propagate: call add_new_mask first")
    if start_frame_idx is None:  # SAM2: from the first (or, in reverse, the last) frame with a mask
        start_frame_idx = max(state.prompts) if reverse else min(state.prompts)
    state.source.check_index(start_frame_idx)
    frames = (state.source.frames(0, start_frame_idx + 1, reverse=True) if reverse
              else state.source.frames(start_frame_idx))
    state.session.reset()
    running = state.running = Propagation(reverse)
    try:
        for frame in frames:
            if state.running is not running:
                raise SessionError("this propagate_in_video was superseded by a newer propagate_in_video or "
                                   "reset_state on the same state; iterate the newest one")
            given = state.prompts.get(frame.index)
            if given:
                index_map = np.zeros(frame.image.shape[:2], dtype=np.int64)
                for object_id, binary in given.items():  # where a frame's masks overlap, the last one given wins
                    index_map[binary] = object_id
                objects = [i for i in given if (index_map == i).any()]
                result = state.session.step(frame.image, index_map, objects)
            else:
                result = state.session.step(frame.image)
            running.frame_idx = frame.index
            ids = np.asarray(result.object_ids, dtype=np.int64)
            yield frame.index, result.object_ids, result.mask[None] == ids[:, None, None]
    finally:
        if state.running is running:
            state.running = None


def remove_object(state: VideoState, obj_id: int) -> list[int]:
    _check_state(state, "remove_object")
    known = state.object_ids
    if obj_id not in known:
        raise InputError(f"cannot remove object {obj_id}: unknown (objects: {known})")
    for frame_idx in list(state.prompts):
        state.prompts[frame_idx].pop(obj_id, None)
        if not state.prompts[frame_idx]:
            del state.prompts[frame_idx]
    if obj_id in state.session.object_ids:
        state.session.remove_objects([obj_id])
    return state.object_ids


def reset_state(state: VideoState) -> None:
    _check_state(state, "reset_state")
    state.prompts.clear()
    state.running = None  # a propagation in progress is superseded
    state.session.reset()
