"""Per-video state of an AOT-family model: object bookkeeping over passes, and each pass's memory.

One *pass* is what the official code calls an engine: up to ``max_objects`` objects sharing one memory and one
E-LSTT run per frame. More objects use more passes; all passes share the frame's encoder features, and their
predictions are combined by soft aggregation (:func:`soft_aggregate`).

Object removal: the object's slot is retired. Its logit is masked out from then on, so it never wins a pixel and
later memory writes see its pixels as another object or background. A retired slot is never given to a new object,
because older memory frames (the permanent reference frame in particular) still carry its identity. A pass whose
objects are all removed is dropped with its memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from longvos.models.aot.memory import AOTMemory, LayerMemory, storage_nbytes

_PROBABILITY_CLAMP = 1e-5  # official soft aggregation clamps to [eps, 1 - eps] before taking logits
#: Logit of decoder channels that hold no object (official values; it must stay finite in half precision).
_EMPTY_SLOT_LOGIT_FULL, _EMPTY_SLOT_LOGIT_HALF = -1e10, -1e4


@dataclass
class AOTPass:
    """One pass: the objects in its slots and its memory (``None`` only while the pass is being created)."""

    slots: list[int | None]  # slots[s] = object id in slot s + 1 (slot 0 is background); None = free
    memory: AOTMemory | None = None
    retired: set[int] = field(default_factory=set)  # slot indices of removed objects; never reused

    def free_slot(self) -> int | None:
        return next((s for s, obj in enumerate(self.slots) if obj is None and s not in self.retired), None)

    def has_objects(self) -> bool:
        return any(obj is not None for obj in self.slots)


@dataclass
class AOTState:
    """Everything an AOT-family model remembers of one video (see :class:`longvos.models.base.TrackerState`)."""

    max_objects: int
    mem_gap: int  # long-term memory interval of this video, in frames
    object_ids: list[int] = field(default_factory=list)
    passes: list[AOTPass] = field(default_factory=list)
    input_hw: tuple[int, int] | None = None  # network input size, fixed for the video once the first frame is seen
    memory: str | None = None  # long-term memory design of this video (None: the model's own)

    def nbytes(self) -> int:
        return storage_nbytes([t for p in self.passes if p.memory is not None for t in p.memory.tensors()])

    def locate(self, object_id: int) -> tuple[int, int]:
        """``(pass index, slot index)`` of a tracked object."""
        for pass_index, pass_ in enumerate(self.passes):
            if object_id in pass_.slots:
                return pass_index, pass_.slots.index(object_id)
        raise KeyError(f"object id {object_id} is not tracked (tracked: {self.object_ids})")

    def add_objects(self, object_ids: list[int]) -> None:
        """Give each new object the first free slot, opening passes as needed (official order for new objects)."""
        for object_id in object_ids:
            pass_ = next((p for p in self.passes if p.free_slot() is not None), None)
            if pass_ is None:
                pass_ = AOTPass(slots=[None] * self.max_objects)
                self.passes.append(pass_)
            pass_.slots[pass_.free_slot()] = object_id
            self.object_ids.append(object_id)

    def remove_objects(self, object_ids: list[int]) -> None:
        unknown = [obj for obj in object_ids if obj not in self.object_ids]
        if unknown:
            raise KeyError(f"cannot remove object id(s) {unknown}: not tracked (tracked: {self.object_ids})")
        for object_id in object_ids:
            pass_index, slot = self.locate(object_id)
            self.passes[pass_index].slots[slot] = None
            self.passes[pass_index].retired.add(slot)
            self.object_ids.remove(object_id)
        self.passes = [p for p in self.passes if p.has_objects()]

    # -- snapshots (``segment --resume``): plain tensors, ints, strings and lists, for torch.load(weights_only) --

    SNAPSHOT_KIND = "aot"

    def to_snapshot(self) -> dict:
        """The whole state as plain data. Tensors are stored as they are (strides and shared storages included, so
        the restored state computes bit for bit what this one would)."""
        def layers(memory_layers: list[LayerMemory]) -> list[list[torch.Tensor]]:
            return [[layer.key_BNC, layer.value_BNC] for layer in memory_layers]

        passes = []
        for pass_ in self.passes:
            memory = pass_.memory
            passes.append({
                "slots": list(pass_.slots), "retired": sorted(pass_.retired),
                "memory": None if memory is None else {
                    "long_term": layers(memory.long_term), "short_term": layers(memory.short_term),
                    "grid_hw": list(memory.grid_hw), "frame_step": memory.frame_step,
                    "last_update_step": memory.last_update_step},
            })
        return {"kind": self.SNAPSHOT_KIND, "max_objects": self.max_objects, "mem_gap": self.mem_gap,
                "object_ids": list(self.object_ids), "passes": passes,
                "input_hw": None if self.input_hw is None else list(self.input_hw), "memory": self.memory}

    @classmethod
    def from_snapshot(cls, data: dict, device: torch.device | None = None) -> AOTState:
        """The state :meth:`to_snapshot` described, its tensors on ``device``."""
        if data.get("kind") != cls.SNAPSHOT_KIND:
            raise ValueError(f"not an AOT-family state snapshot (kind {data.get('kind')!r})")

        def layers(stored: list[list[torch.Tensor]]) -> list[LayerMemory]:
            return [LayerMemory(key.to(device), value.to(device)) for key, value in stored]

        passes = []
        for stored in data["passes"]:
            memory = stored["memory"]
            passes.append(AOTPass(
                slots=[None if s is None else int(s) for s in stored["slots"]], retired=set(stored["retired"]),
                memory=None if memory is None else AOTMemory(
                    long_term=layers(memory["long_term"]), short_term=layers(memory["short_term"]),
                    grid_hw=tuple(memory["grid_hw"]), frame_step=int(memory["frame_step"]),
                    last_update_step=int(memory["last_update_step"]))))
        return cls(max_objects=int(data["max_objects"]), mem_gap=int(data["mem_gap"]),
                   object_ids=[int(i) for i in data["object_ids"]], passes=passes,
                   input_hw=None if data["input_hw"] is None else tuple(data["input_hw"]),
                   memory=None if data.get("memory") is None else str(data["memory"]))

    def live_slots(self, device: torch.device | None = None) -> torch.Tensor:
        """``(P, 1 + max_objects)`` bool: which decoder channels of each pass belong to a tracked object (or bg)."""
        live_PK = torch.zeros(len(self.passes), 1 + self.max_objects, dtype=torch.bool, device=device)
        live_PK[:, 0] = True
        for pass_index, pass_ in enumerate(self.passes):
            for slot, obj in enumerate(pass_.slots):
                live_PK[pass_index, 1 + slot] = obj is not None
        return live_PK

    def merged_channels(self) -> list[int]:
        """Channel of background and of each object in ``object_ids`` order, in :func:`soft_aggregate`'s output."""
        channels = [0]
        for object_id in self.object_ids:
            pass_index, slot = self.locate(object_id)
            channels.append(1 + pass_index * self.max_objects + slot)
        return channels

    def pass_labels(self, labels_HW: torch.Tensor) -> torch.Tensor:
        """Global labels (0 = background, i = ``object_ids[i - 1]``) -> per-pass slot labels ``(P, H, W)``.

        Objects of other passes are background for a pass, as in the official engine's mask separation.
        """
        table_PL = torch.zeros(len(self.passes), 1 + len(self.object_ids), dtype=torch.long, device=labels_HW.device)
        for index, object_id in enumerate(self.object_ids):
            pass_index, slot = self.locate(object_id)
            table_PL[pass_index, 1 + index] = 1 + slot
        return table_PL[:, labels_HW.long()]


def mask_empty_slots(logits_PKhw: torch.Tensor, live_PK: torch.Tensor) -> torch.Tensor:
    """Set the logits of channels that hold no object (``live_PK`` False) to -1e10 (-1e4 in half precision), as
    the official engine does before upsampling, so that they never win a pixel."""
    half = logits_PKhw.dtype in (torch.float16, torch.bfloat16)
    empty = _EMPTY_SLOT_LOGIT_HALF if half else _EMPTY_SLOT_LOGIT_FULL
    return logits_PKhw.masked_fill(~live_PK[:, :, None, None], empty)


def soft_aggregate(logits_PKHW: torch.Tensor) -> torch.Tensor:
    """Combine the logits of several passes over one frame into ``(1, 1 + P * (K - 1), H, W)`` logits.

    Official soft aggregation: per-pass softmax; background probability = product of the passes' background
    probabilities; foreground probabilities concatenated pass after pass; clamped to ``[1e-5, 1 - 1e-5]``; logit.
    One pass is returned unchanged. Computed in float32: ``1 - 1e-5`` is 1 in half precision.
    """
    if logits_PKHW.shape[0] == 1:
        return logits_PKHW
    probs_PKHW = torch.softmax(logits_PKHW.float(), dim=1)
    background_1HW = probs_PKHW[:, 0].prod(dim=0, keepdim=True)
    foreground_FHW = probs_PKHW[:, 1:].flatten(0, 1)
    merged_KHW = torch.cat([background_1HW, foreground_FHW], dim=0)
    return torch.logit(merged_KHW.clamp(_PROBABILITY_CLAMP, 1 - _PROBABILITY_CLAMP)).unsqueeze(0)
