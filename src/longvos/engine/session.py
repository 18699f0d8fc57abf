"""One video's streaming segmentation: a :class:`Session` owns every piece of per-video state.

The session turns user inputs (frames at any resolution, index masks with user ids) into the model contract of
:mod:`longvos.models.base` and back: it shrinks frames to the network size, hands new or corrected object masks to
``model.step``, and returns an index mask at the frame's original size. The model keeps whatever it remembers in
its state object; the session keeps only that state, the frame geometry and masks staged for the next frame, so
its memory does not grow with the number of frames. Where the model or the caller asks for it, the session also drops
the far pieces of each object's mask (:mod:`longvos.engine.parts`), for which it keeps the last frame's mask at the
network size.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from longvos.engine.frames import (MaxSize, frame_to_tensor, resize_ids_nearest, resolve_max_size, shrunk_size,
                                   to_network_input, upsample_probs)
from longvos.engine.objects import object_id_list, select_objects, to_index_map
from longvos.engine.parts import PartDistance, far_parts, resolve_part_distance
from longvos.io.errors import InputError, MaskError, SessionError
from longvos.io.masks import compact_ids
from longvos.models.base import TrackerState, VOSModel

ImageLike = np.ndarray | Image.Image | torch.Tensor  # (H, W, 3) uint8 RGB, PIL, or (3, H, W) tensor
MaskLike = np.ndarray | Image.Image | torch.Tensor  # (H, W) index map


@dataclass
class StepResult:
    """What one :meth:`Session.step` returns, at the frame's original resolution."""

    mask: np.ndarray  # (H, W) user ids; uint8 when every id < 256, int32 below 2^31, else int64
    object_ids: list[int]  # the objects tracked after this frame, in the order of ``probs``
    frame_index: int  # 0-based count of frames this session has processed
    model_seconds: float  # wall time of model.step (incl. memory update), device-synchronised
    probs: np.ndarray | None = None  # (N, H, W) float32 per-object probabilities, only on request


#: The fields every :meth:`Session.snapshot` holds (far parts add theirs only where they are on).
SNAPSHOT_FIELDS = ("model", "frames_processed", "frame_hw", "network_hw", "state")


class Session:
    """Streaming segmentation of one video, one :meth:`step` per frame, in constant memory.

    Object ids are the user's own positive integers, stable for the life of the session. New objects can enter
    on any frame with their mask, existing ones can be re-anchored with a corrected mask, and objects can be
    removed at any time.
    """

    def __init__(self, model: VOSModel, device: torch.device, dtype: torch.dtype | None = None,
                 max_size: MaxSize = "auto", mem_gap: int | None = None, memory: str | None = None,
                 max_part_distance: PartDistance = "auto"):
        self.model = model
        self.device = device
        self.dtype = dtype
        self.max_size = resolve_max_size(max_size, model.default_max_size)  # pixels, or None: native
        self.mem_gap = mem_gap  # None: the model's own interval
        self.memory = memory  # long-term memory design; None: the model's own
        # Object sizes beyond which a separate piece of a mask is dropped; None: off ("auto": the model's own).
        self.max_part_distance = resolve_part_distance(max_part_distance, model.default_max_part_distance)
        # Models on a corner-aligned grid (AOT with (H - 1) % 16 == 0) upsample with align_corners=True; matching
        # them puts the object boundaries where the official decoder puts them.
        self._align_corners = bool(model.align_corners)
        self._closed = False
        self.reset_state()

    @property
    def network_size(self) -> tuple[int, int] | None:
        """``(height, width)`` the network sees for this video's frames (``None`` before the first frame)."""
        return self._network_hw

    # -- lifecycle --------------------------------------------------------------------------------------------

    def reset_state(self) -> None:
        """Forget everything (objects, memory, staged masks, frame size): as good as a new session."""
        self._check_open("reset_state")
        self.state: TrackerState = self._new_state()
        self.frames_processed = 0
        self._frame_hw: tuple[int, int] | None = None
        self._network_hw: tuple[int, int] | None = None
        self._staged_ids: np.ndarray | None = None  # index map (original size) waiting for the next frame
        self._staged_objects: list[int] = []
        self._previous_ids: np.ndarray | None = None  # the last frame's mask at the network size (far parts only)

    def close(self) -> None:
        """Drop the model state now (it is also freed when the session is garbage collected). A closed session
        cannot be used again (:class:`~longvos.io.errors.SessionError`); open a new one."""
        self.state = self._new_state()
        self._staged_ids, self._staged_objects = None, []
        self._previous_ids = None
        self._closed = True

    def _new_state(self) -> TrackerState:
        if self.memory is None:
            return self.model.new_state(self.mem_gap)
        return self.model.new_state(self.mem_gap, memory=self.memory)

    @property
    def state_is_fixed_size(self) -> bool:
        """Whether this video's state stays the same size however long the video (see
        :meth:`~longvos.models.base.VOSModel.fixed_size`)."""
        return self.model.fixed_size(self.state)

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self, verb: str) -> None:
        if self._closed:
            raise SessionError(f"cannot {verb}: this session is closed (after {self.frames_processed} frame(s)); "
                               f"open a new one with segmenter.session()")

    def __enter__(self) -> Session:
        self._check_open("enter")
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- objects ----------------------------------------------------------------------------------------------

    @property
    def object_ids(self) -> list[int]:
        """Objects tracked now, in the order of ``StepResult.probs``."""
        return list(self.state.object_ids)

    def add_objects(self, mask: MaskLike, ids: Iterable[int] | None = None) -> list[int]:
        """Stage objects (new or corrected) for the **next** :meth:`step`; ``mask`` is for that next frame.

        Returns the staged ids. Equivalent to passing the mask to the next ``step`` (which may add its own).
        """
        self._check_open("add_objects")
        if self._frame_hw is None:
            raise InputError("add_objects needs the frame size: pass the first mask to step() with its frame")
        what = f"objects staged for frame {self.frames_processed}"
        index_map = to_index_map(mask, self._frame_hw, what)
        chosen = select_objects(index_map, ids, what)
        self._stage(index_map, chosen)
        return chosen

    def _stage(self, index_map: np.ndarray, chosen: list[int]) -> None:
        if self._staged_ids is None:
            self._staged_ids = np.zeros(index_map.shape, dtype=np.int64)
        selected = np.isin(index_map, chosen)
        self._staged_ids[np.isin(self._staged_ids, chosen)] = 0  # a re-staged object replaces its old mask
        self._staged_ids[selected] = index_map[selected]
        self._staged_objects = [i for i in self._staged_objects if i not in chosen] + chosen

    def remove_object(self, obj_id: int | Iterable[int]) -> None:
        """Stop tracking an object (or the objects of an iterable of ids) and drop its staged mask. Unknown ids
        are an error."""
        self._check_open("remove_object")
        ids = object_id_list(obj_id, "remove_object: object id")  # "12" is one id, not objects 1 and 2
        tracked = set(self.state.object_ids)
        unknown = [i for i in ids if i not in tracked and i not in self._staged_objects]
        if unknown:
            raise InputError(f"cannot remove object(s) {unknown}: not tracked (tracked: {sorted(tracked)})")
        if self._staged_ids is not None:
            self._staged_ids[np.isin(self._staged_ids, ids)] = 0
            self._staged_objects = [i for i in self._staged_objects if i not in ids]
        if self._previous_ids is not None:
            self._previous_ids[np.isin(self._previous_ids, ids)] = 0
        to_model = [i for i in ids if i in tracked]
        if to_model:
            self.model.remove_objects(self.state, to_model)

    def memory_bytes(self) -> int:
        """Bytes held by the model's per-video state."""
        return int(self.state.nbytes())

    # -- the step ---------------------------------------------------------------------------------------------

    def step(self, frame: ImageLike, mask: MaskLike | None = None, objects: Iterable[int] | None = None, *,
             return_probs: bool = False) -> StepResult:
        """Segment one frame. ``mask`` (an index map at the frame's size) starts or corrects the objects it holds,
        or only those in ``objects``; every other tracked object is predicted from memory."""
        self._check_open("step")
        what = f"frame {self.frames_processed}"
        image_3HW = frame_to_tensor(frame, what)
        frame_hw = (int(image_3HW.shape[-2]), int(image_3HW.shape[-1]))
        if self._frame_hw is None:  # kept only once the first mask is accepted: a refused call sets nothing
            network_hw = self.model.input_size(*shrunk_size(*frame_hw, self.max_size))
        elif frame_hw != self._frame_hw:
            raise InputError(f"{what} is {frame_hw[1]}x{frame_hw[0]} but this session's frames are "
                             f"{self._frame_hw[1]}x{self._frame_hw[0]}; use one session per video")
        else:
            network_hw = self._network_hw
        if mask is not None:
            index_map = to_index_map(mask, frame_hw, f"mask of {what}")
            chosen = select_objects(index_map, objects, f"mask of {what}")
            if not chosen:
                raise MaskError(f"mask of {what} has no object (all background); pass mask=None to track only")
            self._stage(index_map, chosen)
        elif objects is not None:
            raise InputError(f"{what}: objects={objects!r} given without a mask")
        self._frame_hw, self._network_hw = frame_hw, network_hw
        given_ids, self._staged_ids, self._staged_objects = self._staged_ids, None, []

        probs_KHW, seconds = self._run_model(image_3HW, given_ids)
        object_ids = list(self.state.object_ids)
        if self.max_part_distance is not None and self._previous_ids is not None and object_ids:
            probs_KHW = self._without_far_parts(probs_KHW, object_ids)
        probs_KHW = upsample_probs(probs_KHW, frame_hw, self._align_corners)
        if given_ids is not None:
            probs_KHW = _impose_given(probs_KHW, torch.from_numpy(given_ids).to(probs_KHW.device), object_ids)
        # The id of each channel in the narrowest type that holds them all, so that the full-resolution gather
        # below is already narrow (uint8 for ids < 256: no copy in compact_ids); compact_ids then narrows further
        # only where the largest ids are absent from this frame.
        lookup = compact_ids(np.asarray([0] + object_ids, dtype=np.int64))
        # .max(dim).indices: on CPU, argmax over a leading dim is ~10x slower for the same result.
        ids = compact_ids(lookup[probs_KHW.max(dim=0).indices.cpu().numpy()])
        if self.max_part_distance is not None:  # where each object is now, for the next frame's far parts
            self._previous_ids = resize_ids_nearest(torch.from_numpy(ids), self._network_hw).numpy().copy()
        self.frames_processed += 1
        return StepResult(
            mask=ids, object_ids=object_ids, frame_index=self.frames_processed - 1, model_seconds=seconds,
            probs=probs_KHW[1:].cpu().numpy() if return_probs else None,
        )

    def _without_far_parts(self, probs_KHW: torch.Tensor, object_ids: list[int]) -> torch.Tensor:
        """Network-size probabilities with each object's far parts given to the background: on those pixels the
        winning object's probability moves to the background channel, so the mask, ``probs`` and the saved
        probabilities agree."""
        winners_HW = probs_KHW.max(dim=0).indices
        far_HW = far_parts(winners_HW.cpu().numpy(), self._previous_ids, object_ids, self.max_part_distance)
        if not far_HW.any():
            return probs_KHW
        winners_1HW = winners_HW.unsqueeze(0)
        dropped_1HW = probs_KHW.gather(0, winners_1HW) * torch.from_numpy(far_HW).to(probs_KHW.device)
        probs_KHW = probs_KHW.scatter(0, winners_1HW, probs_KHW.gather(0, winners_1HW) - dropped_1HW)
        probs_KHW[0] += dropped_1HW[0]
        return probs_KHW

    # -- snapshots (exact resume) ---------------------------------------------------------------------------

    def snapshot(self) -> dict | None:
        """Everything this session remembers between frames, as plain data (tensors, ints, strings, lists, dicts)
        that ``torch.save`` writes and ``torch.load(..., weights_only=True)`` reads back; :meth:`restore` continues
        from it bit for bit. ``None`` when the model's state type has no snapshot support."""
        self._check_open("snapshot")
        if self._staged_ids is not None:
            raise SessionError("cannot snapshot a session with masks staged for its next frame; step() first")
        to_snapshot = getattr(self.state, "to_snapshot", None)
        if to_snapshot is None:
            return None
        return {"model": self.model.name or type(self.model).__name__, "frames_processed": self.frames_processed,
                "frame_hw": None if self._frame_hw is None else list(self._frame_hw),
                "network_hw": None if self._network_hw is None else list(self._network_hw),
                **self._far_parts_snapshot(), "state": to_snapshot()}

    def restore(self, snapshot: dict) -> None:
        """Replace everything this session remembers with a :meth:`snapshot` of a session of the same model.

        The snapshot is checked before anything is replaced: its model and network size, and, where the state class
        has the optional ``check_snapshot`` hook (see :class:`~longvos.models.base.TrackerState`; both bundled
        families do), every tensor's type, dtype and shape against the model's dimensions, this session's network
        size, memory settings and dtype, and its object bookkeeping. The state is then built by the class's
        ``from_snapshot(data, device)``. Anything wrong is an error (a ``ValueError`` that names the field, for the
        state) and leaves the session as it was; a snapshot that passes continues bit for bit (its tensors are
        restored as they are)."""
        self._check_open("restore")
        name = self.model.name or type(self.model).__name__
        from_snapshot = getattr(type(self.state), "from_snapshot", None)
        if from_snapshot is None:
            raise SessionError(f"model {name} cannot restore a state snapshot")
        if not isinstance(snapshot, dict):
            raise SessionError(f"a state snapshot is a dict (from Session.snapshot()), got {type(snapshot).__name__}")
        missing = [key for key in SNAPSHOT_FIELDS if key not in snapshot]
        if missing:
            raise SessionError(f"not a state snapshot: it lacks {', '.join(missing)}")
        if snapshot.get("model") != name:
            raise SessionError(f"a state snapshot of model {snapshot.get('model')!r} cannot be restored into {name!r}")
        # Every field is read and checked before anything is replaced: a snapshot that fails leaves the session as
        # it was.
        frames_processed = int(snapshot["frames_processed"])
        frame_hw = None if snapshot["frame_hw"] is None else tuple(int(n) for n in snapshot["frame_hw"])
        network_hw = None if snapshot["network_hw"] is None else tuple(int(n) for n in snapshot["network_hw"])
        expected_hw = None if frame_hw is None else tuple(self.model.input_size(*shrunk_size(*frame_hw,
                                                                                               self.max_size)))
        if network_hw != expected_hw:
            raise SessionError(f"a state snapshot taken at network size {network_hw} cannot be restored into a session "
                               f"that sees its {frame_hw} frames at {expected_hw} (another max_size)")
        previous_ids = self._previous_ids_of(snapshot, frames_processed, network_hw)
        check = getattr(type(self.state), "check_snapshot", None)
        if check is not None:
            try:
                check(snapshot["state"], model=self.model, input_hw=network_hw, like=self.state, dtype=self.dtype)
            except ValueError as err:  # the message names the field; a SessionError is still a ValueError
                raise SessionError(str(err)) from None
        state = from_snapshot(snapshot["state"], self.device)
        self.reset_state()
        self.state = state
        self.frames_processed = frames_processed
        self._frame_hw, self._network_hw = frame_hw, network_hw
        self._previous_ids = previous_ids

    def _far_parts_snapshot(self) -> dict:
        """What a snapshot holds of far parts: nothing for a session that keeps every piece (a snapshot as earlier
        longvos versions wrote them), else the distance and the last frame's mask."""
        if self.max_part_distance is None:
            return {}
        return {"max_part_distance": self.max_part_distance,
                "previous_ids": None if self._previous_ids is None else torch.from_numpy(self._previous_ids.copy())}

    def _previous_ids_of(self, snapshot: dict, frames_processed: int,
                         network_hw: tuple[int, int] | None) -> np.ndarray | None:
        """The last frame's mask a snapshot holds, checked against this session's far-part distance (``None`` for a
        session that keeps every piece, or before the first frame)."""
        taken_with = snapshot.get("max_part_distance")
        if frames_processed > 0 and taken_with != self.max_part_distance:
            raise SessionError(f"a state snapshot taken with max_part_distance {taken_with} cannot be continued by a "
                               f"session with {self.max_part_distance}: the frames after it would differ")
        previous = snapshot.get("previous_ids")
        if self.max_part_distance is None or frames_processed == 0:
            return None
        if (not isinstance(previous, torch.Tensor) or previous.dtype.is_floating_point or previous.is_complex()
                or previous.dtype == torch.bool or tuple(previous.shape) != network_hw):
            raise SessionError(f"a state snapshot's previous_ids must be an integer map of the network size "
                               f"{network_hw}, got {getattr(previous, 'dtype', type(previous).__name__)} "
                               f"{tuple(getattr(previous, 'shape', ()))}")
        return previous.cpu().numpy().copy()  # loaded onto the run's device (a GPU) with the rest of the snapshot

    def _run_model(self, image_3HW: torch.Tensor, given_ids: np.ndarray | None) -> tuple[torch.Tensor, float]:
        """``model.step`` under inference mode and the session's autocast policy; returns (probs, seconds)."""
        with torch.inference_mode():
            image_13HW = to_network_input(image_3HW, self._network_hw, self.device)
            masks = None
            if given_ids is not None:
                small_ids = resize_ids_nearest(torch.from_numpy(given_ids).to(self.device), self._network_hw)
                masks = {int(i): (small_ids == i).float() for i in np.unique(given_ids) if i != 0} or None
            _synchronize(self.device)
            start = time.perf_counter()
            autocast = self.dtype is not None and self.dtype != torch.float32
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=autocast):
                probs_KHW = self.model.step(self.state, image_13HW, masks)
            _synchronize(self.device)
            seconds = time.perf_counter() - start
            return probs_KHW.float(), seconds


def _impose_given(probs_KHW: torch.Tensor, given_HW: torch.Tensor, object_ids: list[int]) -> torch.Tensor:
    """On a frame with user masks, the given objects take exactly their masks at full resolution (the network
    saw them shrunk); elsewhere the other channels share what is left, renormalised."""
    given_channels = [c for c, object_id in enumerate(object_ids, start=1) if bool((given_HW == object_id).any())]
    probs_KHW = probs_KHW.clone()
    probs_KHW[given_channels] = 0.0
    covered_HW = given_HW != 0
    probs_KHW[:, covered_HW] = 0.0
    probs_KHW[0] += ((probs_KHW.sum(dim=0) <= 0) & ~covered_HW).float()  # nothing left for anyone: background
    probs_KHW /= probs_KHW.sum(dim=0, keepdim=True).clamp_min(1e-12)
    for channel in given_channels:
        probs_KHW[channel][given_HW == object_ids[channel - 1]] = 1.0
    return probs_KHW


def _synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that wall-clock timings measure the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
