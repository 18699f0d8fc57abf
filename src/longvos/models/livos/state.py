"""Per-video LiVOS state: fixed-size tensors per object slot, all float32, none growing with video length.

Per object ``n`` (axis 1 of every tensor; the batch axis 0 is always 1 for a video):
- ``matching_BNKV``: the gated linear-matching state ``S_n`` (key dim x value dim);
- ``key_sum_BNKhw``: ``sum phi(K_t)`` over the frames memorised since the object appeared (read normaliser);
- ``sensory_BNChw``: the sensory memory;
- ``object_memory_BNQC``: the running sum of object summaries (``C = embed dim + 1``, the last is the area);
- ``last_masks_BNhw``: the last memorised masks, area-pooled to the stride-16 grid (for pixel fusion).

``h x w`` is the stride-16 grid of the padded frame; it is fixed by the first frame that has an object.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch


@dataclass
class LiVOSState:
    object_ids: list[int] = field(default_factory=list)
    matching_BNKV: torch.Tensor | None = None
    key_sum_BNKhw: torch.Tensor | None = None
    sensory_BNChw: torch.Tensor | None = None
    object_memory_BNQC: torch.Tensor | None = None
    last_masks_BNhw: torch.Tensor | None = None
    #: ``(h, w)`` of the stride-16 grid the tensors were allocated for; ``None`` before the first object.
    grid_size: tuple[int, int] | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The state's tensors by field name (empty before the first object)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    # -- snapshots (``segment --resume``): plain tensors, ints, strings and lists, for torch.load(weights_only) --

    SNAPSHOT_KIND = "livos"

    def to_snapshot(self) -> dict:
        """The whole state as plain data (tensors stored as they are: the restored state computes the same bits)."""
        return {"kind": self.SNAPSHOT_KIND, "object_ids": list(self.object_ids), "tensors": self.tensors(),
                "grid_size": None if self.grid_size is None else list(self.grid_size)}

    @classmethod
    def from_snapshot(cls, data: dict, device: torch.device | None = None) -> LiVOSState:
        """The state :meth:`to_snapshot` described, its tensors on ``device``."""
        if data.get("kind") != cls.SNAPSHOT_KIND:
            raise ValueError(f"not a LiVOS state snapshot (kind {data.get('kind')!r})")
        names = {f.name for f in fields(cls)}
        unknown = set(data["tensors"]) - names
        if unknown:
            raise ValueError(f"LiVOS state snapshot has unknown tensors {sorted(unknown)}")
        state = cls(object_ids=[int(i) for i in data["object_ids"]],
                    grid_size=None if data["grid_size"] is None else tuple(data["grid_size"]))
        for name, tensor in data["tensors"].items():
            setattr(state, name, tensor.to(device))
        return state

    @property
    def num_objects(self) -> int:
        return len(self.object_ids)

    def allocate(
        self, grid_size: tuple[int, int], key_dim: int, value_dim: int, sensory_dim: int,
        num_queries: int, summary_dim: int, device: torch.device,
    ) -> None:
        """Create empty (zero-object) tensors for a stride-16 grid of ``grid_size``."""
        height, width = grid_size
        zeros = dict(dtype=torch.float32, device=device)
        self.grid_size = grid_size
        self.matching_BNKV = torch.zeros(1, 0, key_dim, value_dim, **zeros)
        self.key_sum_BNKhw = torch.zeros(1, 0, key_dim, height, width, **zeros)
        self.sensory_BNChw = torch.zeros(1, 0, sensory_dim, height, width, **zeros)
        self.object_memory_BNQC = torch.zeros(1, 0, num_queries, summary_dim, **zeros)
        self.last_masks_BNhw = torch.zeros(1, 0, height, width, **zeros)

    def append_objects(self, object_ids: list[int]) -> None:
        """Add empty (all-zero) slots for new objects: they start with no memory and a zero key sum, so their
        read-out is normalised only over frames from their first memorised one on."""
        self.object_ids.extend(object_ids)
        for name, tensor in self.tensors().items():
            extra = tensor.new_zeros(tensor.shape[0], len(object_ids), *tensor.shape[2:])
            setattr(self, name, torch.cat([tensor, extra], dim=1))

    def remove_objects(self, object_ids: list[int]) -> None:
        """Drop the slots of ``object_ids`` (all must be tracked)."""
        unknown = [i for i in object_ids if i not in self.object_ids]
        if unknown:
            raise ValueError(f"cannot remove object id(s) {unknown}: not tracked (tracked ids: {self.object_ids})")
        removed = set(object_ids)
        keep = [index for index, object_id in enumerate(self.object_ids) if object_id not in removed]
        self.object_ids = [self.object_ids[index] for index in keep]
        for name, tensor in self.tensors().items():
            setattr(self, name, tensor[:, keep].contiguous())
