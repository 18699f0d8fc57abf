""":func:`load_segmenter` and :class:`Segmenter`: a loaded model with its device and precision. It opens Cutie-style
sessions (:meth:`Segmenter.session`, one :meth:`~longvos.engine.session.Session.step` per frame) and offers SAM2's
offline verbs (:meth:`~Segmenter.init_state`, :meth:`~Segmenter.add_new_mask`,
:meth:`~Segmenter.propagate_in_video`, :meth:`~Segmenter.remove_object`, :meth:`~Segmenter.reset_state`).

The offline verbs: ``init_state`` opens the video lazily; masks given with ``add_new_mask`` wait, keyed by frame, until
propagation reaches their frame (so objects may appear on any frame, as with SAM2's "objects appearing later"). Each
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

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from longvos.device import DEFAULT_DTYPE, resolve_device, resolve_dtype
from longvos.engine.frames import MaxSize
from longvos.engine.parts import PartDistance
from longvos.engine.objects import to_index_map, whole_number
from longvos.engine.session import MaskLike, Session
from longvos.io.errors import InputError, MaskError, SessionError
from longvos.io.video import FrameSource, open_video
from longvos.models.base import VOSModel


class Segmenter:
    """A model with its weights on a device, and a dtype policy: the autocast compute dtype (``None`` = fp32).

    Weights and per-video state stay fp32; autocast decides the precision of each op, which keeps every
    matmul's inputs in one dtype (no "BFloat16 and Float" mismatches). One segmenter serves many sessions.
    """

    def __init__(self, model: VOSModel, device: str | torch.device = "auto",
                 dtype: str | torch.dtype | None = DEFAULT_DTYPE):
        self.device = usable_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if self.device.type == "cpu" and self.dtype == torch.float16:
            warnings.warn("fp16 on the CPU is very slow (about 35x slower than bf16 on a 2-core x86 machine): use "
                          "bf16 (--dtype bf16) or fp32 there; fp16 is for GPUs", UserWarning, stacklevel=2)
        self.model = model.to(self.device).eval()
        #: The weights file :func:`load_segmenter` loaded (path, size, sha256; see
        #: :func:`longvos.engine.progress.weights_record`), recorded with a run for ``resume``; ``None``: not known.
        self.weights: dict | None = None

    @property
    def name(self) -> str:
        return self.model.name or type(self.model).__name__

    def session(self, max_size: MaxSize = "auto", mem_gap: int | None = None, memory: str | None = None,
                max_part_distance: PartDistance = "auto") -> Session:
        """A new per-video :class:`Session`; ``max_size`` caps the short side the network sees (``"auto"``: the
        size the model's weights were trained for, ``None``: native), ``mem_gap`` and ``memory`` override the
        model's long-term memory interval and design for this session only, ``max_part_distance`` drops pieces of
        a mask farther than that many object sizes from the object's last mask (``"auto"``: the model's own,
        ``None``: off; :mod:`longvos.engine.parts`)."""
        try:
            return Session(self.model, self.device, self.dtype, max_size=max_size, mem_gap=mem_gap, memory=memory,
                           max_part_distance=max_part_distance)
        except ValueError as err:  # an interval the model cannot use, or a bad size
            raise InputError(f"model {self.name}: {err}") from None

    # -- SAM2's offline verbs (see the module docstring) ---------------------------------------------------

    def init_state(self, video: str | Path | FrameSource, max_size: MaxSize = "auto",
                   mem_gap: int | None = None, memory: str | None = None,
                   max_part_distance: PartDistance = "auto") -> VideoState:
        """Open ``video`` lazily (nothing is decoded) and return its state for the verbs below; ``max_size``,
        ``mem_gap``, ``memory`` and ``max_part_distance`` are those of :meth:`session`."""
        session = self.session(max_size, mem_gap, memory, max_part_distance)
        return VideoState(open_video(video), session)

    def add_new_mask(self, state: VideoState, frame_idx: int, obj_id: int, mask: MaskLike) -> tuple[int, list[int]]:
        """Give object ``obj_id``'s mask on frame ``frame_idx``; returns ``(frame_idx, all object ids)``."""
        _check_state(state, "add_new_mask")
        frame_idx = whole_number(frame_idx, "add_new_mask: frame_idx")  # 2.5 would be a frame never reached
        obj_id = whole_number(obj_id, "add_new_mask: obj_id", MaskError)  # 1.2 and 1.7 would both be object 1
        state.source.check_index(frame_idx)
        what = f"mask of object {obj_id} on frame {frame_idx}"
        if state.running is not None and state.running.passed(frame_idx):
            raise SessionError(f"{what}: frame {frame_idx} was already propagated (the running propagate_in_video is "
                               f"now at frame {state.running.frame_idx}); give masks for frames ahead of it, or "
                               f"finish iterating that generator or close it (generator.close(); a paused one kept "
                               f"in a variable still runs), then add this one and propagate again")
        if obj_id <= 0:
            raise MaskError(f"{what}: object ids must be positive integers")
        binary = to_index_map(mask, state.source.frame_size, what) != 0
        if not binary.any():
            raise MaskError(f"{what}: the mask is empty; use remove_object to drop an object")
        given = dict(state.prompts.get(frame_idx, {}))
        given.pop(obj_id, None)  # re-given: it moves to the end, so it wins where it overlaps the others
        given[obj_id] = binary
        hidden = [i for i, visible in zip(given, _visible(given)) if not visible]
        if hidden:  # where masks overlap the last one given wins: these would silently vanish
            raise MaskError(f"{what}: with it, the masks given later on that frame cover every pixel of object(s) "
                            f"{hidden}; remove_object them first, or give masks that leave each object some pixels")
        state.prompts[frame_idx] = given
        return frame_idx, state.object_ids

    def propagate_in_video(self, state: VideoState, start_frame_idx: int | None = None,
                           reverse: bool = False) -> Iterator[tuple[int, list[int], np.ndarray]]:
        """Yield ``(frame_idx, obj_ids, masks (N, H, W) bool)`` frame by frame through the video."""
        _check_state(state, "propagate_in_video")
        if not state.prompts:
            raise InputError("no masks to propagate: call add_new_mask first")
        if start_frame_idx is None:  # SAM2: from the first (or, in reverse, the last) frame with a mask
            start_frame_idx = max(state.prompts) if reverse else min(state.prompts)
        start_frame_idx = whole_number(start_frame_idx, "propagate_in_video: start_frame_idx")
        state.source.check_index(start_frame_idx)
        frames = (state.source.frames(0, start_frame_idx + 1, reverse=True) if reverse
                  else state.source.frames(start_frame_idx))
        state.session.reset_state()
        running = state.running = Propagation(reverse)
        try:
            for frame in frames:
                if state.running is not running:
                    raise SessionError("this propagate_in_video was superseded by a newer propagate_in_video or "
                                       "reset_state on the same state; iterate the newest one")
                given = state.prompts.get(frame.index)
                if given:
                    result = state.session.step(frame.image, _index_map(given), list(given))
                else:
                    result = state.session.step(frame.image)
                running.frame_idx = frame.index
                ids = np.asarray(result.object_ids, dtype=np.int64)
                yield frame.index, result.object_ids, result.mask[None] == ids[:, None, None]
        finally:
            if state.running is running:
                state.running = None

    def remove_object(self, state: VideoState, obj_id: int) -> list[int]:
        """Forget one object everywhere (its masks and, mid-propagation, its memory); returns the remaining ids."""
        _check_state(state, "remove_object")
        obj_id = whole_number(obj_id, "remove_object: obj_id")
        known = state.object_ids
        if obj_id not in known:
            raise InputError(f"cannot remove object {obj_id}: unknown (objects: {known})")
        for frame_idx in list(state.prompts):
            state.prompts[frame_idx].pop(obj_id, None)
            if not state.prompts[frame_idx]:
                del state.prompts[frame_idx]
        if obj_id in state.session.object_ids:
            state.session.remove_object(obj_id)
        return state.object_ids

    def reset_state(self, state: VideoState) -> None:
        """Forget every mask and object of ``state`` (the video stays open)."""
        _check_state(state, "reset_state")
        state.prompts.clear()
        state.running = None  # a propagation in progress is superseded
        state.session.reset_state()


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


def _index_map(given: dict[int, np.ndarray]) -> np.ndarray:
    """One frame's masks ``{obj_id: (H, W) bool}`` as an index map: where they overlap, the last one given wins."""
    index_map = np.zeros(next(iter(given.values())).shape, dtype=np.int64)
    for object_id, binary in given.items():
        index_map[binary] = object_id
    return index_map


def _visible(given: dict[int, np.ndarray]) -> list[bool]:
    """For each object of ``given``, whether it keeps any pixel in :func:`_index_map`."""
    index_map = _index_map(given)
    return [bool((index_map == object_id).any()) for object_id in given]


def _check_state(state: object, verb: str) -> None:
    if not isinstance(state, VideoState):
        raise SessionError(f"{verb} needs the state returned by init_state(video), got a {type(state).__name__}")


def usable_device(device: str | torch.device | None) -> torch.device:
    """``resolve_device``, with a clear error for a device name torch does not know or cannot use here."""
    try:
        resolved = resolve_device(device)
    except RuntimeError as err:
        raise InputError(f"unknown device {device!r} ({err}); use auto, cpu, cuda, cuda:N or mps") from None
    available = {"cuda": torch.cuda.is_available, "mps": lambda: torch.backends.mps.is_available()}
    if resolved.type in available and not available[resolved.type]():
        raise InputError(f"device {device!r} is not available on this machine (try --device auto or cpu)")
    return resolved


def load_segmenter(name: str, checkpoint: str | Path | None = None, device: str | torch.device = "auto",
                   dtype: str | torch.dtype | None = DEFAULT_DTYPE, *, allow_random_weights: bool = False) -> Segmenter:
    """Build a registered model (``longvos models`` lists them), load its weights, and return it as a
    :class:`Segmenter` on ``device`` with the ``dtype`` policy.

    ``checkpoint`` is a longvos or an official checkpoint (auto-detected). Without one, the weights the package
    ships for that model are used; a model with none is refused (:class:`InputError`) unless
    ``allow_random_weights`` (benchmarks, tests), when it runs with random weights and a ``UserWarning``.
    The long-term memory design and interval are chosen per video: :meth:`Segmenter.session` (``memory``,
    ``mem_gap``).
    """
    from longvos.models.registry import create_model

    from longvos.checkpoints import weights_for

    device = usable_device(device)  # fail before the (slow) model build
    try:
        dtype = resolve_dtype(dtype, device)
        checkpoint = weights_for(name, checkpoint, allow_random_weights)
    except InputError:
        raise
    except ValueError as err:  # an unknown model name or dtype: bad input like any other
        raise InputError(str(err)) from None
    model = create_model(name)
    if checkpoint is None:
        warnings.warn(f"model {name!r} runs with random weights, as allowed: its masks are meaningless",
                      UserWarning, stacklevel=2)
    else:
        from longvos.checkpoints import load_checkpoint

        if not Path(checkpoint).is_file():
            raise InputError(f"{checkpoint}: checkpoint file not found")
        load_checkpoint(model, checkpoint)
    segmenter = Segmenter(model, device=device, dtype=dtype)
    if checkpoint is not None:
        from longvos.engine.progress import weights_record

        segmenter.weights = weights_record(checkpoint)  # the bundled or downloaded file too
    return segmenter
