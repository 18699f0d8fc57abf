"""Per-video state of an AOT-family model: object bookkeeping over passes, and each pass's memory.

One *pass* is what the official code calls an engine: up to the model's ``objects_per_pass`` objects (at most
``max_objects``, the decoder's object channels) sharing one memory and one E-LSTT run per frame. More objects use
more passes; all passes share the frame's encoder features, and their predictions are combined by soft aggregation
(:func:`soft_aggregate`).

Object removal: the object's slot is retired. Its logit is masked out from then on, so it never wins a pixel and
later memory writes see its pixels as another object or background. A retired slot is never given to a new object,
because older memory frames (the permanent reference frame in particular) still carry its identity. A pass whose
objects are all removed is dropped with its memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from longvos.models.aot.memory import AOTMemory, LayerMemory, storage_nbytes
from longvos.models.snapshot_checks import check_kind, check_object_ids, check_tensor, is_whole, list_field, whole_field

if TYPE_CHECKING:
    from longvos.models.aot.model import AOTModel

_PROBABILITY_CLAMP = 1e-5  # official soft aggregation clamps to [eps, 1 - eps] before taking logits
#: Logit of decoder channels that hold no object (official values; it must stay finite in half precision).
_EMPTY_SLOT_LOGIT_FULL, _EMPTY_SLOT_LOGIT_HALF = -1e10, -1e4


@dataclass
class AOTPass:
    """One pass: the objects in its slots and its memory (``None`` only while the pass is being created)."""

    slots: list[int | None]  # slots[s] = object id in slot s + 1 (slot 0 is background); None = free
    memory: AOTMemory | None = None
    retired: set[int] = field(default_factory=set)  # slot indices of removed objects; never reused

    def free_slot(self, capacity: int) -> int | None:
        """The slot a new object gets, or None once ``capacity`` slots have been used (retired ones count: their
        identity stays in the memory)."""
        used = sum(obj is not None for obj in self.slots) + len(self.retired)
        if used >= capacity:
            return None
        return next((s for s, obj in enumerate(self.slots) if obj is None and s not in self.retired), None)

    def has_objects(self) -> bool:
        return any(obj is not None for obj in self.slots)


@dataclass
class AOTState:
    """Everything an AOT-family model remembers of one video (see :class:`longvos.models.base.TrackerState`)."""

    max_objects: int  # slots per pass (the decoder's object channels)
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

    def add_objects(self, object_ids: list[int], capacity: int) -> None:
        """Give each new object the first free slot of a pass that has used fewer than ``capacity`` slots (the
        model's ``pass_capacity``), opening passes as needed (official order for new objects). The capacity is the
        model's, not the video's: it is not part of the state, so snapshots of every version read alike."""
        for object_id in object_ids:
            pass_ = next((p for p in self.passes if p.free_slot(capacity) is not None), None)
            if pass_ is None:
                pass_ = AOTPass(slots=[None] * self.max_objects)
                self.passes.append(pass_)
            pass_.slots[pass_.free_slot(capacity)] = object_id
            self.object_ids.append(object_id)

    def remove_objects(self, object_ids: list[int]) -> None:
        """Free the slots of ``object_ids`` (all must be tracked; a repeated id counts once) and drop the passes
        left empty. Nothing changes when one is unknown."""
        object_ids = list(dict.fromkeys(object_ids))
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
        """The state :meth:`to_snapshot` described, its tensors on ``device`` (stored as they are: a tensor already
        there is neither copied nor made contiguous). It is not checked against a model here: a session's restore
        calls :meth:`check_snapshot` first."""
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

    @classmethod
    def check_snapshot(cls, data: Any, model: AOTModel, input_hw: tuple[int, int] | None, *,
                       like: AOTState | None = None, dtype: torch.dtype | None = None) -> None:
        """Refuse a snapshot that ``model`` could not continue in a session that sees its frames at ``input_hw``
        (``None``: no frame seen yet): a ``ValueError`` whose one line names the field and what was expected.

        Every field must have its type; ``max_objects`` is the model's, and ``mem_gap`` and ``memory`` are those of
        ``like`` (the session's fresh state) if given. Each pass has ``max_objects`` slots, retired slots among them
        and free, at least one object and at most the model's ``pass_capacity`` used slots (objects and retired),
        and the objects of all passes are ``object_ids``, each once. Its memory is
        on the stride-``max_stride`` token grid of ``input_hw`` (``h x w``), with one key/value pair per E-LSTT layer,
        batch 1 (one pass), in the shapes :meth:`GatedPropagationLayer.memory_from` makes them:
        keys ``(1, frames * h*w, qk_dim)``, values ``(1, frames * h*w, 2 * value_dim)``, one frame in the
        short-term memory and, in the long-term one, the same number in every layer, from 1 to what the memory
        design holds. Tensors are float32 or, under autocast, ``dtype``.
        """
        config = model.config
        check_kind(data, cls.SNAPSHOT_KIND, "an AOT-family state snapshot")
        max_objects = whole_field(data, "max_objects", "max_objects")
        if max_objects != config.max_objects:
            raise ValueError(f"max_objects is {max_objects}, the model's is {config.max_objects}")
        mem_gap = whole_field(data, "mem_gap", "mem_gap")
        if mem_gap < 1:
            raise ValueError(f"mem_gap is {mem_gap}, expected at least 1 frame")
        memory_design = data.get("memory")
        if memory_design is not None and not isinstance(memory_design, str):
            raise ValueError(f"memory is of type {type(memory_design).__name__}, expected a design name or None")
        if like is not None:
            if mem_gap != like.mem_gap:
                raise ValueError(f"mem_gap is {mem_gap}, this session's is {like.mem_gap}")
            if memory_design != like.memory:
                raise ValueError(f"memory is {_design_name(memory_design)}, this session's is "
                                 f"{_design_name(like.memory)}")
        try:
            max_frames = model.long_term_design(memory_design).max_frames
        except ValueError as err:
            raise ValueError(f"memory: {err}") from None
        stored_hw = data.get("input_hw")
        expected_hw = None if input_hw is None else [int(n) for n in input_hw]
        if stored_hw != expected_hw:
            raise ValueError(f"input_hw is {stored_hw!r}, expected {expected_hw!r} (the session's network size)")
        object_ids = check_object_ids(list_field(data, "object_ids", "object_ids"), "are not all whole numbers")
        passes = list_field(data, "passes", "passes")
        if passes and expected_hw is None:
            raise ValueError(f"passes holds {len(passes)} pass(es) before any frame was seen (input_hw None)")
        # The token grid: the identity bank's strided convolution lands on the encoder's grid, and it makes
        # ceil(size / max_stride) tokens of a network input size (kernel max_stride + 1 with padding max_stride / 2
        # for corner-aligned sizes, kernel max_stride without padding for multiples of it).
        grid_hw = None if input_hw is None else [-(-int(n) // config.max_stride) for n in input_hw]
        dtypes = _dtypes(dtype)
        in_slots: list[int] = []
        for index, stored in enumerate(passes):
            where = f"passes[{index}]"
            if not isinstance(stored, dict):
                raise ValueError(f"{where} is of type {type(stored).__name__}, expected a dict")
            slots = list_field(stored, "slots", f"{where}.slots")
            if len(slots) != max_objects:
                raise ValueError(f"{where}.slots has {len(slots)} slot(s), expected max_objects = {max_objects}")
            if not all(s is None or is_whole(s) for s in slots):
                raise ValueError(f"{where}.slots {slots!r} are not all object ids or None")
            if all(s is None for s in slots):
                raise ValueError(f"{where}.slots hold no object (a pass without objects is dropped)")
            in_slots.extend(s for s in slots if s is not None)
            retired = list_field(stored, "retired", f"{where}.retired")
            if not all(is_whole(r) and 0 <= r < max_objects for r in retired) or len(set(retired)) != len(retired):
                raise ValueError(f"{where}.retired {retired!r} are not distinct slot indices 0..{max_objects - 1}")
            if any(slots[r] is not None for r in retired):
                raise ValueError(f"{where}.retired {retired} names a slot that holds an object ({slots})")
            used = sum(s is not None for s in slots) + len(retired)
            if used > config.pass_capacity:  # packed by a model (or version) that shares passes more
                raise ValueError(f"{where} has used {used} slots (objects and retired), expected at most "
                                 f"objects_per_pass = {config.pass_capacity}")
            _check_memory(stored.get("memory"), f"{where}.memory", config, grid_hw, max_frames, dtypes)
        if sorted(in_slots) != sorted(object_ids):
            raise ValueError(f"the passes' slots hold objects {sorted(in_slots)}, object_ids {sorted(object_ids)}")

    def live_slots(self, device: torch.device | None = None) -> torch.Tensor:
        """``(P, 1 + max_objects)`` bool: which decoder channels of each pass belong to a tracked object (or bg)."""
        live_PK = torch.zeros(len(self.passes), 1 + self.max_objects, dtype=torch.bool, device=device)
        live_PK[:, 0] = True
        for pass_index, pass_ in enumerate(self.passes):
            for slot, obj in enumerate(pass_.slots):
                live_PK[pass_index, 1 + slot] = obj is not None
        return live_PK

    def kept_channels(self) -> tuple[list[list[int]], list[int]]:
        """The decoder channels a frame's probabilities need, and where each object lands among them.

        ``kept``: per pass, background and then the slots that hold an object (in slot order), padded to one length
        ``C`` with slots that hold none (masked: they add nothing to a softmax). ``merged``: the channel of
        background and of each object in ``object_ids`` order among the ``1 + P * (C - 1)`` channels that
        :func:`soft_aggregate` makes of ``kept``. Only these are upsampled to the frame size: with one object per
        pass, 10 of a pass's 11 channels are empty, and upsampling them cost about a fifth of a frame's time.
        """
        live = [[0] + [1 + slot for slot, obj in enumerate(p.slots) if obj is not None] for p in self.passes]
        width = max(map(len, live), default=1)
        kept = [channels + [1 + slot for slot, obj in enumerate(p.slots) if obj is None][: width - len(channels)]
                for p, channels in zip(self.passes, live)]
        merged = [0]
        for object_id in self.object_ids:
            pass_index, slot = self.locate(object_id)
            merged.append(pass_index * (width - 1) + kept[pass_index].index(1 + slot))
        return kept, merged

    def slot_tables(self, device: torch.device | None = None) -> torch.Tensor:
        """``(P, 1 + N)``: for each pass, the slot label of each global label (0 = background, i =
        ``object_ids[i - 1]``); ``table[p][labels_HW]`` is pass ``p``'s label map. Objects of other passes are
        background for a pass, as in the official engine's mask separation."""
        table_PL = torch.zeros(len(self.passes), 1 + len(self.object_ids), dtype=torch.long, device=device)
        for index, object_id in enumerate(self.object_ids):
            pass_index, slot = self.locate(object_id)
            table_PL[pass_index, 1 + index] = 1 + slot
        return table_PL


# -- snapshot checks of the AOT family's own fields (the generic ones are in longvos.models.snapshot_checks) -----

def _dtypes(dtype: torch.dtype | None) -> tuple[torch.dtype, ...]:
    """The dtypes a memory tensor may have: float32 (the state's), and under autocast the compute dtype, in which
    the layers' projections come out."""
    return (torch.float32,) if dtype in (None, torch.float32) else (torch.float32, dtype)


def _check_memory(memory: Any, where: str, config: Any, grid_hw: list[int] | None, max_frames: int | None,
                  dtypes: tuple[torch.dtype, ...]) -> None:
    """One pass's memory (see :meth:`AOTState.check_snapshot`)."""
    if not isinstance(memory, dict):
        raise ValueError(f"{where} is of type {type(memory).__name__}, expected a dict (every pass has a memory)")
    if memory.get("grid_hw") != grid_hw:
        raise ValueError(f"{where}.grid_hw is {memory.get('grid_hw')!r}, expected {grid_hw} (the stride-"
                         f"{config.max_stride} grid of the network size)")
    frame_step = whole_field(memory, "frame_step", f"{where}.frame_step")
    last_update_step = whole_field(memory, "last_update_step", f"{where}.last_update_step")
    if not 0 <= last_update_step <= frame_step:
        raise ValueError(f"{where}.last_update_step is {last_update_step}, expected 0..frame_step ({frame_step})")
    tokens = grid_hw[0] * grid_hw[1]
    channels = (config.qk_dim, 2 * config.value_dim)

    def layers(name: str) -> list:
        stored = list_field(memory, name, f"{where}.{name}")
        if len(stored) != config.num_layers:
            raise ValueError(f"{where}.{name} has {len(stored)} layer(s), expected num_layers = {config.num_layers}")
        for index, pair in enumerate(stored):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"{where}.{name}[{index}] is not a [key, value] pair")
        return stored

    long_term, short_term = layers("long_term"), layers("short_term")
    # The long-term frames, read from the first layer's key, which every other layer must then agree with.
    first, first_where = long_term[0][0], f"{where}.long_term[0].key"
    expected = (f"(1, frames * {tokens}, {config.qk_dim}) with "
                f"{'1 or more' if max_frames is None else f'1 to {max_frames}'} long-term frame(s) of {tokens} tokens")
    if not isinstance(first, torch.Tensor):
        raise ValueError(f"{first_where} is of type {type(first).__name__}, expected a tensor of shape {expected}")
    found = first.shape[1] if first.ndim == 3 else 0
    frames = found // tokens if found % tokens == 0 else 0
    if not 1 <= frames <= (max_frames or frames):
        raise ValueError(f"{first_where} has shape {tuple(first.shape)}, expected {expected}")
    # Every long-term update adds a frame until the design's bound, and the first one is the second frame.
    if (frames == 1) != (last_update_step == 0):
        raise ValueError(f"{where}.long_term holds {frames} frame(s) but last_update_step is {last_update_step} "
                         f"(one frame exactly until the first long-term update, at a step after 0)")
    for name, stored, count in (("long_term", long_term, frames), ("short_term", short_term, 1)):
        for index, pair in enumerate(stored):
            for part, tensor, width in zip(("key", "value"), pair, channels):
                check_tensor(tensor, f"{where}.{name}[{index}].{part}", (1, count * tokens, width), dtypes)


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


def _design_name(memory: str | None) -> str:
    """A long-term memory setting as a message names it (``None`` is the model's own design)."""
    return "the model's own design" if memory is None else repr(memory)
