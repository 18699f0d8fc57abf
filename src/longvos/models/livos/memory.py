"""Everything LiVOS remembers about a video, and how it reads and writes it: three memories per object, all of a
fixed size, none growing with video length.

**Gated linear matching** (the memory LiVOS is about). Each object keeps one matrix ``S`` (key dim x value dim)
instead of a bank of past frames. With the per-pixel feature map ``phi`` (a softmax over the key channels, so every
pixel's key is a distribution over them):

    read:   readout_n(p) = S_n^T phi(q_p) / z_n,    z_n = sum_{c,p} phi(q)[c, p] * keysum_n[c, p]
    write:  S_n <- S_n * diag(g) + sum_p phi(k_p)^T v_n(p),    keysum_n <- keysum_n + phi(k)

``g`` (the gate, one value per value channel, shared by all objects) comes from the frame being written.
``z`` is the official *scalar* normaliser: one number per object and frame, position-aligned with the running
per-pixel key sum, which the gate does not decay. Each object keeps its own key sum, started on the frame it
appeared, which is what the official code computes for late objects by subtracting a key-sum snapshot.
All matching maths runs in float32 with autocast off: the sums grow with the video, and reduced precision there
would drift on long videos whatever the compute dtype of the networks around it.

**Sensory memory**: a per-object hidden map at stride 16, updated GRU-style twice per frame: in the mask decoder
from its multi-scale features (``MultiscaleSensoryUpdate``), while segmenting; in the mask encoder from the new
mask value (``DeepSensoryUpdate``), while memorising. Both share the gated update
``h' = f * h * (1 - u) + u * tanh(c)`` (forget gate ``f``, update gate ``u``, candidate ``c``), where ``f, u, c``
are the three thirds of one conv's output channels.

**Object memory**: per-object summaries (Cutie's object summarizer) summed over all memorised frames. Each object
gets ``Q`` summaries of width ``C + 1``: a weighted sum of projected value features plus the total weight
("area"). Half of the summaries may only pool inside the object's mask, half only outside it. Storing sums (not
means) lets the object memory be a running sum; the object transformer divides by the area when reading.

:class:`LiVOSState` holds the three for one video.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from longvos.models.livos.layers import SinePositionalEncoding2d
from longvos.models.snapshot_checks import check_kind, check_object_ids, check_tensor

if TYPE_CHECKING:
    from longvos.models.livos.model import LiVOS

#: The dtype of every tensor of a video's state (the matching maths and the sums run in float32 under any autocast).
_STATE_DTYPE = torch.float32


# -- gated linear matching --------------------------------------------------------------------------------------

class KeyProjection(nn.Module):
    """Stride-16 image features -> matching keys: a 1x1 reduction then a 3x3 conv, no activation between."""

    def __init__(self, in_dim: int, hidden_dim: int, key_dim: int):
        super().__init__()
        self.reduce = nn.Conv2d(in_dim, hidden_dim, kernel_size=1)
        self.project = nn.Conv2d(hidden_dim, key_dim, kernel_size=3, padding=1)

    def forward(self, features_BCHW: torch.Tensor) -> torch.Tensor:
        return self.project(self.reduce(features_BCHW))


class GateProjection(nn.Module):
    """Stride-16 image features -> the gate ``g`` in (0, 1)^value_dim: per-pixel sigmoid of a 1x1 conv,
    averaged over the image (so one gate vector per frame)."""

    def __init__(self, in_dim: int, value_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, value_dim, kernel_size=1)

    def forward(self, features_BCHW: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(features_BCHW)).mean(dim=(2, 3))


def _fp32(device: torch.device) -> torch.autocast:
    """A context with autocast off on ``device``: the matching maths always runs in float32."""
    return torch.autocast(device_type=device.type, enabled=False)


def key_feature_map(key_BKHW: torch.Tensor) -> torch.Tensor:
    """``phi``: softmax over the key channels at each pixel, in float32."""
    with _fp32(key_BKHW.device):
        return torch.softmax(key_BKHW.float(), dim=1)


def read_memory(
    phi_query_BKHW: torch.Tensor, state_BNKV: torch.Tensor, key_sum_BNKHW: torch.Tensor
) -> torch.Tensor:
    """Normalised read-out ``(B, N, V, H, W)``: ``S_n^T phi(q) / z_n`` with the scalar normaliser ``z_n``."""
    with _fp32(phi_query_BKHW.device):
        phi_BKHW = phi_query_BKHW.float()
        readout_BNVHW = torch.einsum("bkhw,bnkv->bnvhw", phi_BKHW, state_BNKV)
        # Not einsum("bkhw,bnkhw->bn"): it reduces the K*H*W products (103,680 at 480p) with an error of ~1e-4
        # relative (CPU, fp32), which moved every read-out by that much and made a 480p free run drift from the
        # official one (max |p - p_official| 0.2 by frame 7); torch.sum's pairwise reduction stays at ~1e-7.
        normaliser_BN = (phi_BKHW.unsqueeze(1) * key_sum_BNKHW).sum(dim=(2, 3, 4))
        return readout_BNVHW / normaliser_BN[:, :, None, None, None]


def write_memory(
    state_BNKV: torch.Tensor,
    key_sum_BNKHW: torch.Tensor,
    phi_key_BKHW: torch.Tensor,
    value_BNVHW: torch.Tensor,
    gate_BV: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One memory write: returns the new ``(S, key sum)``. ``S`` is gated along its value axis, then the
    frame's outer products ``sum_p phi(k_p) v(p)^T`` are added; the key sum is not gated."""
    with _fp32(phi_key_BKHW.device):
        phi_BKHW = phi_key_BKHW.float()
        new_BNKV = torch.einsum("bkhw,bnvhw->bnkv", phi_BKHW, value_BNVHW.float())
        state_BNKV = state_BNKV * gate_BV.float()[:, None, None, :] + new_BNKV
        key_sum_BNKHW = key_sum_BNKHW + phi_BKHW.unsqueeze(1)
        return state_BNKV, key_sum_BNKHW


# -- sensory memory ---------------------------------------------------------------------------------------------

def gated_sensory_update(hidden_BNCHW: torch.Tensor, gates_BNCHW: torch.Tensor) -> torch.Tensor:
    """Apply the GRU-like update to ``hidden`` (C channels) from ``gates`` (3C channels: forget, update, candidate)."""
    dim = gates_BNCHW.shape[2] // 3
    forget_BNCHW = torch.sigmoid(gates_BNCHW[:, :, :dim])
    update_BNCHW = torch.sigmoid(gates_BNCHW[:, :, dim:2 * dim])
    candidate_BNCHW = torch.tanh(gates_BNCHW[:, :, 2 * dim:])
    return forget_BNCHW * hidden_BNCHW * (1.0 - update_BNCHW) + update_BNCHW * candidate_BNCHW


class DeepSensoryUpdate(nn.Module):
    """Update from the mask encoder's per-object value (the "deep update" done at every memory write)."""

    def __init__(self, value_dim: int, sensory_dim: int):
        super().__init__()
        self.gates = nn.Conv2d(value_dim + sensory_dim, 3 * sensory_dim, kernel_size=3, padding=1)

    def forward(self, value_BNCHW: torch.Tensor, sensory_BNCHW: torch.Tensor) -> torch.Tensor:
        batch, num_objects = value_BNCHW.shape[:2]
        inputs_DCHW = torch.cat([value_BNCHW, sensory_BNCHW], dim=2).flatten(0, 1)
        gates_DCHW = self.gates(inputs_DCHW)
        return gated_sensory_update(sensory_BNCHW, gates_DCHW.view(batch, num_objects, *gates_DCHW.shape[1:]))


class MultiscaleSensoryUpdate(nn.Module):
    """Update from the mask decoder's features at strides 16, 8 and 4 (the stride-4 map carries the object's
    logit as one extra channel); the finer maps are area-pooled down to stride 16 and the three projections
    summed before the gated update."""

    def __init__(self, decoder_dims: tuple[int, int, int], sensory_dim: int):
        super().__init__()
        dim_16, dim_8, dim_4 = decoder_dims
        self.proj_16 = nn.Conv2d(dim_16, sensory_dim, kernel_size=1)
        self.proj_8 = nn.Conv2d(dim_8, sensory_dim, kernel_size=1)
        self.proj_4 = nn.Conv2d(dim_4 + 1, sensory_dim, kernel_size=1)
        self.gates = nn.Conv2d(2 * sensory_dim, 3 * sensory_dim, kernel_size=3, padding=1)

    def forward(
        self,
        features_16_BNCHW: torch.Tensor,
        features_8_BNCHW: torch.Tensor,
        features_4_BNCHW: torch.Tensor,
        sensory_BNCHW: torch.Tensor,
    ) -> torch.Tensor:
        batch, num_objects = sensory_BNCHW.shape[:2]
        pooled_8_DCHW = F.interpolate(features_8_BNCHW.flatten(0, 1), scale_factor=1 / 2, mode="area")
        pooled_4_DCHW = F.interpolate(features_4_BNCHW.flatten(0, 1), scale_factor=1 / 4, mode="area")
        summed_DCHW = (
            self.proj_16(features_16_BNCHW.flatten(0, 1)) + self.proj_8(pooled_8_DCHW) + self.proj_4(pooled_4_DCHW)
        )
        gates_DCHW = self.gates(torch.cat([summed_DCHW, sensory_BNCHW.flatten(0, 1)], dim=1))
        return gated_sensory_update(sensory_BNCHW, gates_DCHW.view(batch, num_objects, *gates_DCHW.shape[1:]))


# -- object memory ----------------------------------------------------------------------------------------------

class ObjectSummarizer(nn.Module):
    def __init__(self, value_dim: int, embed_dim: int, num_summaries: int, pe_scale: float, pe_temperature: float):
        super().__init__()
        self.num_summaries = num_summaries
        self.pos_encoding = SinePositionalEncoding2d(embed_dim, pe_scale, pe_temperature)
        self.input_proj = nn.Linear(value_dim, embed_dim)
        self.feature_mlp = nn.Sequential(
            nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, embed_dim)
        )
        self.weight_mlp = nn.Sequential(
            nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, num_summaries)
        )

    def forward(self, masks_BNhw: torch.Tensor, value_BNChw: torch.Tensor) -> torch.Tensor:
        """Summaries ``(B, N, Q, C + 1)`` (float32) of the values under masks already pooled to the value grid."""
        height, width = value_BNChw.shape[-2:]
        half = self.num_summaries // 2
        inside_BNhw1 = masks_BNhw.unsqueeze(-1).float()
        allowed_BNhwQ = torch.cat(
            [inside_BNhw1.expand(-1, -1, -1, -1, half), (1 - inside_BNhw1).expand(-1, -1, -1, -1, half)], dim=-1
        )

        tokens_BNhwC = self.input_proj(value_BNChw.permute(0, 1, 3, 4, 2))
        tokens_BNhwC = tokens_BNhwC + self.pos_encoding(height, width, value_BNChw.device)

        # The pooled sums are accumulated over the whole video: compute them in float32.
        with torch.autocast(device_type=value_BNChw.device.type, enabled=False):
            tokens_BNhwC = tokens_BNhwC.float()
            features_BNhwC = self.feature_mlp(tokens_BNhwC)
            weights_BNhwQ = self.weight_mlp(tokens_BNhwC).sigmoid() * allowed_BNhwQ
            sums_BNQC = torch.einsum("bnhwq,bnhwc->bnqc", weights_BNhwQ, features_BNhwC)
            area_BNQ1 = weights_BNhwQ.flatten(2, 3).sum(2).unsqueeze(-1)
        return torch.cat([sums_BNQC, area_BNQ1], dim=-1)


# -- the per-video state ---------------------------------------------------------------------------------------

@dataclass
class LiVOSState:
    """One video's LiVOS memories: fixed-size float32 tensors per object slot. Per object ``n`` (axis 1 of every
    tensor; the batch axis 0 is always 1 for a video):

    - ``matching_BNKV``: the gated linear-matching state ``S_n`` (key dim x value dim);
    - ``key_sum_BNKhw``: ``sum phi(K_t)`` over the frames memorised since the object appeared (read normaliser);
    - ``sensory_BNChw``: the sensory memory;
    - ``object_memory_BNQC``: the running sum of object summaries (``C = embed dim + 1``, the last is the area);
    - ``last_masks_BNhw``: the last memorised masks, area-pooled to the stride-16 grid (for pixel fusion).

    ``h x w`` is the stride-16 grid of the padded frame; it is fixed by the first frame that has an object.
    """

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
        """The state :meth:`to_snapshot` described, its tensors on ``device`` (stored as they are: a tensor already
        there is neither copied nor made contiguous). It is not checked against a model here: a session's restore
        calls :meth:`check_snapshot` first."""
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

    @classmethod
    def check_snapshot(cls, data: Any, model: LiVOS, input_hw: tuple[int, int] | None, *,
                       like: LiVOSState | None = None, dtype: torch.dtype | None = None) -> None:
        """Refuse a snapshot that ``model`` could not continue in a session that sees its frames at ``input_hw``
        (``None``: no frame seen yet): a ``ValueError`` whose one line names the field and what was expected.
        ``like`` (the session's fresh state) and ``dtype`` are taken as every family's hook takes them, and not
        needed here: a LiVOS state has no per-video settings, and its tensors are float32 under any autocast.

        ``object_ids`` are distinct whole numbers. Before the first object (``grid_size`` None) there are neither
        objects nor tensors; from then on ``grid_size`` is the stride-``stride`` grid of the padded frame
        (``h x w``) and each of the five tensors is float32 with the shape :meth:`tensor_shapes` gives for
        ``N = len(object_ids)`` and the model's widths (the shapes :meth:`allocate` creates them in).
        """
        config = model.config
        check_kind(data, cls.SNAPSHOT_KIND, "a LiVOS state snapshot")
        object_ids = check_object_ids(data.get("object_ids"), "is not a list of whole numbers")
        tensors = data.get("tensors")
        if not isinstance(tensors, dict):
            raise ValueError(f"tensors is of type {type(tensors).__name__}, expected a dict of tensors by name")
        grid_size = data.get("grid_size")
        expected_grid = None if input_hw is None else [-(-int(n) // config.stride) for n in input_hw]
        if grid_size is None:
            if object_ids or tensors:
                raise ValueError(f"grid_size is None (no object seen yet), but the state holds object_ids "
                                 f"{list(object_ids)} and tensors {sorted(tensors)}")
            return
        if grid_size != expected_grid:
            raise ValueError(f"grid_size is {grid_size!r}, expected {expected_grid} (the stride-{config.stride} "
                             f"grid of the network size {None if input_hw is None else list(input_hw)})")
        shapes = cls.tensor_shapes(tuple(grid_size), len(object_ids), config.key_dim, config.value_dim,
                                   config.sensory_dim, config.num_queries, config.summary_dim)
        unknown = sorted(set(tensors) - set(shapes), key=str)
        if unknown:
            raise ValueError(f"tensors has unknown entries {unknown}, expected {sorted(shapes)}")
        for name, shape in shapes.items():
            check_tensor(tensors.get(name), f"tensors.{name}", shape, (_STATE_DTYPE,),
                         note=f"N = {len(object_ids)} objects")

    @staticmethod
    def tensor_shapes(grid_size: tuple[int, int], num_objects: int, key_dim: int, value_dim: int, sensory_dim: int,
                      num_queries: int, summary_dim: int) -> dict[str, tuple[int, ...]]:
        """The shape of each of the state's tensors, by field name, for ``num_objects`` objects on a stride-16 grid
        of ``grid_size``."""
        height, width = grid_size
        return {"matching_BNKV": (1, num_objects, key_dim, value_dim),
                "key_sum_BNKhw": (1, num_objects, key_dim, height, width),
                "sensory_BNChw": (1, num_objects, sensory_dim, height, width),
                "object_memory_BNQC": (1, num_objects, num_queries, summary_dim),
                "last_masks_BNhw": (1, num_objects, height, width)}

    @property
    def num_objects(self) -> int:
        return len(self.object_ids)

    def allocate(
        self, grid_size: tuple[int, int], key_dim: int, value_dim: int, sensory_dim: int,
        num_queries: int, summary_dim: int, device: torch.device,
    ) -> None:
        """Create empty (zero-object) tensors for a stride-16 grid of ``grid_size``."""
        self.grid_size = grid_size
        shapes = self.tensor_shapes(grid_size, 0, key_dim, value_dim, sensory_dim, num_queries, summary_dim)
        for name, shape in shapes.items():
            setattr(self, name, torch.zeros(shape, dtype=_STATE_DTYPE, device=device))

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
