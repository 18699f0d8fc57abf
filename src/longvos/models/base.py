"""The contract between the streaming engine and every model family (AOT/MAVOS, LiVOS, ...).

The engine (``longvos.engine``) knows nothing about how a model remembers: it resizes frames, maps user object ids,
validates masks and formats outputs. Everything a model needs to remember about one video lives in a state object
that the model creates (``new_state``) and mutates (``step``); the model itself holds only weights, so one loaded
model serves many videos at once.

Conventions shared by all families:
- ``image_B3HW`` is RGB float in [0, 1] at the network input size (see :meth:`VOSModel.input_size`); the model does
  its own mean/std normalisation so that preprocessing numerics live with the weights they belong to.
- Objects are identified by the engine's integer ids (any value, stable for the life of a session). A model keeps
  them in ``state.object_ids`` in the order it returns probabilities.
- Probabilities are returned as ``(1 + N, H, W)``: channel 0 is background, channel ``i`` is
  ``state.object_ids[i - 1]``; they sum to one over channels.
"""
from __future__ import annotations

import abc
import dataclasses
import warnings
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class TrackerState(Protocol):
    """Per-video state of one model. Fixed-shape tensors per object slot; never grows with video length
    (except for memory designs that grow by definition, such as DeAOT's ``growing``).

    Three optional hooks let ``segment_video`` snapshot the state and resume a run exactly from it (a state class
    without them is never snapshotted, and its resume recomputes every frame, as exactly):

    - ``to_snapshot(self) -> dict``: the whole state as plain data (tensors, ints, floats, strings, ``None``, lists
      and dicts of them) that ``torch.save`` writes and ``torch.load(..., weights_only=True)`` reads back.
    - ``from_snapshot(cls, data, device) -> state`` (a classmethod): the state ``data`` describes, its tensors moved
      to ``device`` (as they are, so that the restored state computes the same bits). Needed with ``to_snapshot``.
    - ``check_snapshot(cls, data, *, model, input_hw, like, dtype) -> None`` (a classmethod, optional even with the
      other two): raise a one-line ``ValueError`` naming the field if ``data`` is not a snapshot that ``model``
      could continue in this session: ``input_hw`` is the network size the session sees its frames at (``None``
      before the first frame), ``like`` a fresh state of the session (its per-video memory design and interval),
      ``dtype`` its autocast dtype (``None``: float32). :meth:`longvos.engine.session.Session.restore` calls it,
      where the class has it, before ``from_snapshot``; a snapshot it refuses is not restored (a resume then
      recomputes from the first frame, with one warning), so ``from_snapshot`` may assume a checked snapshot.
    """

    object_ids: list[int]

    def nbytes(self) -> int:
        """Bytes held by the state's tensors (the per-video memory a user pays for)."""
        ...


from longvos.models.registry import PAPER_MAX_SIZE  # noqa: E402 - the short side of DAVIS 480p, the papers' size


class VOSModel(nn.Module, abc.ABC):
    """A semi-supervised VOS model with stateless verbs; all per-video state is in the state object."""

    #: Registry name this instance was built under (e.g. ``"mavos-mnv2"``): declared by the family's builder
    #: (``VOSModel.__init__(name=...)``) or the class, under the name it registers.
    name: str = ""
    #: Short side (pixels) frames are shrunk to when the caller asks for ``max_size="auto"`` (the default): the size
    #: the weights were trained for and are most accurate at. Declared by the family's builder, like ``name``.
    default_max_size: int = PAPER_MAX_SIZE
    #: Object sizes beyond which a separate piece of an object's mask is dropped when the caller asks for
    #: ``max_part_distance="auto"`` (the default; :mod:`longvos.engine.parts`); ``None``: every piece is kept, as
    #: the official models' published numbers were made. Declared by the family's builder, like ``name``.
    default_max_part_distance: float | None = None

    def __init__(self, *, name: str | None = None, default_max_size: int | None = None,
                 default_max_part_distance: float | None = None):
        """``name``, ``default_max_size`` and ``default_max_part_distance`` declare this instance's (else the class
        attributes apply)."""
        super().__init__()
        if name is not None:
            self.name = name
        if default_max_size is not None:
            self.default_max_size = default_max_size
        if default_max_part_distance is not None:
            self.default_max_part_distance = default_max_part_distance

    @property
    def align_corners(self) -> bool:
        """Whether the model's grid is corner-aligned (AOT with ``(H - 1) % 16 == 0``): the engine then upsamples
        probabilities with ``align_corners=True``, which puts object boundaries where the model's decoder does."""
        return False

    @property
    def default_memory(self) -> str | None:
        """The model's own long-term memory design (what ``new_state(memory=None)`` uses); ``None`` for a model with
        one design only."""
        return None

    @property
    def default_mem_gap(self) -> int | None:
        """The model's own long-term memory interval in frames (what ``new_state(None)`` uses); ``None`` for a
        model without one (one that writes its memory on every frame)."""
        return None

    @property
    def objects_per_pass(self) -> int | None:
        """How many objects share one pass of the network where the model is set to run fewer together than its
        own design does (AOT's ``objects_per_pass``: mavos-lite runs one); ``None``: the design's own way (the
        official AOT packing, LiVOS's one state for all). It changes the result, so a run records it."""
        return None

    @property
    def state_is_fixed_size(self) -> bool:
        """Whether a video's state stays the same size however long the video (the default). ``False`` for memory
        designs that grow by definition (DeAOT's ``growing``): ``segment_video`` then takes no state snapshots, which
        would grow with it (its resume recomputes from the first frame instead)."""
        return True

    @abc.abstractmethod
    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Network input size for a frame already resized to about ``height x width`` (stride rounding)."""

    def fixed_size(self, state: TrackerState) -> bool:
        """Whether this video's state stays the same size however long the video (its memory design may be its
        own, see ``new_state``); by default :attr:`state_is_fixed_size`."""
        return self.state_is_fixed_size

    @abc.abstractmethod
    def new_state(self, mem_gap: int | None = None, memory: str | None = None) -> TrackerState:
        """A fresh, empty per-video state (no objects).

        ``mem_gap`` is this video's long-term memory interval in frames (None: the model's own), ``memory`` its
        long-term memory design (None: the model's own; AOT: ``growing``, ``ref+prev``, ``mca``). They live in the
        state, not the model, so one loaded model serves videos with different intervals and designs. A model that
        writes its memory on every frame accepts only None or 1 as ``mem_gap``, a model with one design only None
        or its name (``ValueError`` otherwise). The engine passes ``memory`` only when a design is asked for."""

    def init_state(self, mem_gap: int | None = None, memory: str | None = None) -> TrackerState:
        """Deprecated name of :meth:`new_state` (``init_state`` is SAM2's verb for opening a video, which
        :meth:`longvos.engine.segmenter.Segmenter.init_state` keeps); left for the frozen golden tests."""
        warnings.warn("VOSModel.init_state is deprecated: use new_state", DeprecationWarning, stacklevel=2)
        return self.new_state(mem_gap) if memory is None else self.new_state(mem_gap, memory)

    @abc.abstractmethod
    def step(
        self,
        state: TrackerState,
        image_B3HW: torch.Tensor,
        masks: dict[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Process one frame and write it to memory as the design prescribes.

        ``masks`` maps object id -> ``(H, W)`` float mask in [0, 1] at the network input size, for objects that are
        new on this frame or re-anchored by the user. On such a frame the given masks win where they are set and
        the prediction fills in the remaining objects; the merged result is what gets memorised. Objects given
        for the first time are appended to ``state.object_ids``.

        Returns probabilities ``(1 + N, H, W)`` for ``state.object_ids`` after the step. On a frame with no object
        at all, returns a single background channel of ones.
        """

    @abc.abstractmethod
    def remove_objects(self, state: TrackerState, object_ids: list[int]) -> None:
        """Forget objects: they leave ``state.object_ids`` and stop influencing later frames."""


class ModelConfig:
    """What the families' frozen config dataclasses share: ``replace`` with a clear error for an unknown field, and
    ``to_dict`` (plain types only, so that a config can sit in a ``weights_only`` checkpoint)."""

    #: The family's name in messages ("unknown LiVOS config field(s) ...").
    family: ClassVar[str] = "model"

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed; unknown field names give a clear error."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown {self.family} config field(s) {', '.join(unknown)}; known: "
                            f"{', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so it can sit in a ``weights_only`` checkpoint."""
        return dataclasses.asdict(self)


def check_frame(image_B3HW: torch.Tensor, model_name: str) -> tuple[int, int]:
    """``(H, W)`` of a step's input, which must be one float RGB frame ``(1, 3, H, W)``."""
    if image_B3HW.ndim != 4 or image_B3HW.shape[:2] != (1, 3):
        raise ValueError(f"{model_name} expects one RGB frame (1, 3, H, W), got shape {tuple(image_B3HW.shape)}")
    if not image_B3HW.is_floating_point():
        raise ValueError(f"{model_name} expects a float RGB frame in [0, 1], got dtype {image_B3HW.dtype}")
    return int(image_B3HW.shape[2]), int(image_B3HW.shape[3])


def check_masks(masks: dict[int, torch.Tensor] | None, frame_hw: tuple[int, int],
                device: torch.device) -> dict[int, torch.Tensor]:
    """A step's given masks as float32 ``(H, W)`` tensors on ``device``; each must match the frame's size."""
    checked = {}
    for object_id, mask in (masks or {}).items():
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask of object {object_id} must be a torch.Tensor, got {type(mask).__name__}")
        if mask.ndim == 3 and mask.shape[0] == 1:
            mask = mask[0]
        if tuple(mask.shape) != tuple(frame_hw):
            raise ValueError(f"mask of object {object_id} has shape {tuple(mask.shape)}; expected {tuple(frame_hw)} "
                             "(the network input size of the frame)")
        checked[object_id] = mask.to(device=device, dtype=torch.float32)
    return checked
