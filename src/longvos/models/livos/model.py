"""LiVOS: Cutie's architecture with its softmax memory replaced by gated linear matching; its configuration, the
model, and its registration as ``livos-r50`` (the official ``LIVOS(model_type='base')``, ResNet-50 image encoder).

The model holds weights only and exposes stateless verbs; :class:`LiVOSState` holds one video. One frame:

1. :meth:`encode_frame`: pad to a multiple of 16, normalise, ResNet-50 -> features at strides 16/8/4, and from
   the stride-16 map the pixel features, the matching key ``phi(k)`` and the gate ``g``.
2. :meth:`predict` = :meth:`read_memory` (``S^T phi(q) / z``) + :meth:`segment` (pixel fusion with the sensory
   memory and previous masks, object transformer reading the object memory, mask decoder, soft aggregation).
   The decoder updates the sensory memory.
3. Given masks are merged in (new objects get empty slots), then :meth:`memorise` writes the merged masks: the
   mask encoder's value (and deep sensory update), the gated state update, the key sums, the object summaries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from longvos.models.base import ModelConfig, VOSModel, check_frame, check_masks
from longvos.models.encoders import build_encoder
from longvos.models.livos import official as _official  # noqa: F401  (registers the checkpoint key map)
from longvos.models.livos.layers import Padding, pad, soft_aggregate_logits, stride_padding, unpad
from longvos.models.livos.memory import (GateProjection, KeyProjection, LiVOSState, ObjectSummarizer,
                                         key_feature_map, read_memory, write_memory)
from longvos.models.livos.network import EncodedMask, MaskDecoder, MaskEncoder, ObjectTransformer, PixelFuser
from longvos.models.registry import register_model

#: LiVOS's only memory design, under the name other tools (``bench --memory``) label it with.
MEMORY_DESIGN = "linear"


def check_memory_choice(memory: str | None, mem_gap: int | None) -> None:
    """LiVOS has one memory design and writes it on every frame: any other ``memory`` or ``mem_gap`` is a
    ``ValueError`` (at build and when a video's state is made)."""
    if memory not in (None, MEMORY_DESIGN):
        raise ValueError(f"LiVOS has one memory design, the gated linear state ({MEMORY_DESIGN!r}); "
                         f"memory={memory!r} does not apply")
    if mem_gap not in (None, 1):
        raise ValueError(f"LiVOS writes its memory on every frame; mem_gap={mem_gap} does not apply")


@dataclass(frozen=True)
class LiVOSConfig(ModelConfig):
    """Typed configuration of a LiVOS model; the defaults are the official ``LIVOS(model_type='base')``."""

    family: ClassVar[str] = "LiVOS"

    image_encoder: str = "resnet50"  # to layer3: features at strides 4, 8, 16
    mask_encoder: str = "resnet18"  # 5-channel input (RGB, this object, the other objects)
    key_dim: int = 64  # matching keys: the rows of each object's state S
    value_dim: int = 256  # mask values (the columns of S), read-out and object-transformer width
    pixel_dim: int = 256  # pixel-feature projection (also the key projection's hidden width)
    sensory_dim: int = 256
    num_queries: int = 16  # object queries / summaries per object (half foreground, half background)
    num_blocks: int = 3  # object-transformer blocks
    num_heads: int = 8
    ff_dim: int = 2048
    decoder_dims: tuple[int, int] = (128, 128)  # mask-decoder widths at strides 8 and 4
    pe_scale: float = 32.0  # positional encoding: coordinates span [0, pe_scale]
    pe_temperature: float = 128.0
    stride: int = 16  # frames are zero-padded to a multiple of this

    def __post_init__(self) -> None:
        if self.value_dim % self.num_heads:
            raise ValueError(f"value_dim ({self.value_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.value_dim % 4:
            raise ValueError(f"value_dim must be a multiple of 4 (2-D sine encoding), got {self.value_dim}")
        if self.num_queries < 2 or self.num_queries % 2:
            raise ValueError(f"num_queries must be even and >= 2 (fg/bg halves), got {self.num_queries}")

    @property
    def summary_dim(self) -> int:
        """Width of one object-memory summary: ``value_dim`` weighted sums plus the area."""
        return self.value_dim + 1


def merge_given_masks(
    prob_BKHW: torch.Tensor, object_ids: list[int], given: dict[int, torch.Tensor]
) -> tuple[torch.Tensor, list[int]]:
    """Let the given masks win where they are set; the prediction fills in the rest.

    ``prob_BKHW``: ``(1, 1 + N, H, W)`` probabilities, channel 0 background then ``object_ids``.
    ``given``: object id -> ``(H, W)`` mask in [0, 1]. A given id already in ``object_ids`` is *re-anchored*
    (its channel becomes the given mask); any other id is new and gets a channel appended, in ``given`` order.

    The channels that were not given share ``1 - union(given)`` in proportion to their predicted probabilities.
    With only new objects this is a plain scaling by ``1 - union``, which for binary masks is exactly the official
    LiVOS rule for objects added mid-video (zero every channel under the new mask, then append it). Re-anchored
    objects first give their predicted mass back to the others (renormalised). The channels sum to one when the
    given masks do not overlap.

    Returns the merged ``(1, 1 + N', H, W)`` map and the ids that were new, in channel order.
    """
    masks_MHW = torch.stack([mask.to(prob_BKHW) for mask in given.values()])
    keep_HW = 1 - masks_MHW.sum(dim=0).clamp(0, 1)
    reanchored = [1 + object_ids.index(object_id) for object_id in given if object_id in object_ids]
    if reanchored:
        rest_BKHW = prob_BKHW.clone()
        rest_BKHW[:, reanchored] = 0
        total_B1HW = rest_BKHW.sum(dim=1, keepdim=True)
        # Where the re-anchored objects held all the mass, what remains goes to the background.
        background_BKHW = torch.zeros_like(rest_BKHW)
        background_BKHW[:, 0] = 1
        prob_BKHW = torch.where(total_B1HW > 0, rest_BKHW / total_B1HW.clamp_min(1e-12), background_BKHW)
    merged_BKHW = prob_BKHW * keep_HW
    appended, new_ids = [], []
    for object_id, mask_HW in zip(given, masks_MHW):
        if object_id in object_ids:
            merged_BKHW[:, 1 + object_ids.index(object_id)] = mask_HW
        else:
            appended.append(mask_HW[None, None])
            new_ids.append(object_id)
    return torch.cat([merged_BKHW, *appended], dim=1), new_ids


@dataclass
class FrameFeatures:
    """Everything computed from one frame's pixels alone (no memory involved)."""

    image_norm_B3HW: torch.Tensor  #: padded, then mean/std-normalised frame
    features_16_BCHW: torch.Tensor
    features_8_BCHW: torch.Tensor
    features_4_BCHW: torch.Tensor
    pixels_BChw: torch.Tensor  #: pixel-feature projection of the stride-16 map
    phi_key_BKhw: torch.Tensor  #: float32 ``phi`` of the matching key (query now, memory key once written)
    gate_BV: torch.Tensor  #: the gate this frame applies to S when it is written
    padding: Padding

    @property
    def grid_size(self) -> tuple[int, int]:
        """``(h, w)`` of the stride-16 grid."""
        height, width = self.phi_key_BKhw.shape[-2:]
        return height, width


@dataclass
class Segmentation:
    """One frame's prediction, with the intermediates that equivalence tests compare."""

    prob_BKHW: torch.Tensor  #: float32 probabilities at the padded size, channel 0 = background
    readout_BNChw: torch.Tensor
    fused_BNChw: torch.Tensor  #: pixel-fusion output (object-transformer input)
    transformed_BNChw: torch.Tensor  #: object-transformer output (decoder input)
    aux_logits_BNLhw: torch.Tensor  #: the object transformer's auxiliary mask logits
    logits_BNHW: torch.Tensor  #: per-object decoder logits at stride 4
    sensory_BNChw: torch.Tensor  #: sensory memory after the decoder's update (float32)


class LiVOS(VOSModel):
    def __init__(self, config: LiVOSConfig = LiVOSConfig(), **declared):  # name, default_max_size: see VOSModel
        super().__init__(**declared)
        self.config = config
        # Frozen BN: the official eval-mode BatchNorm2d numerics, and `.train()` cannot corrupt the statistics.
        self.image_encoder = build_encoder(config.image_encoder, frozen_bn=True)
        dim_4, dim_8, dim_16 = self.image_encoder.channels[:3]
        self.key_proj = KeyProjection(dim_16, config.pixel_dim, config.key_dim)
        self.pixel_proj = nn.Conv2d(dim_16, config.pixel_dim, kernel_size=1)
        self.gate_proj = GateProjection(dim_16, config.value_dim)
        self.mask_encoder = MaskEncoder(config.mask_encoder, config.pixel_dim, config.value_dim, config.sensory_dim)
        self.pixel_fuser = PixelFuser(config.pixel_dim, config.value_dim, config.sensory_dim)
        self.object_transformer = ObjectTransformer(
            config.value_dim, config.ff_dim, config.num_blocks, config.num_heads, config.num_queries,
            config.pe_scale, config.pe_temperature,
        )
        self.object_summarizer = ObjectSummarizer(
            config.value_dim, config.value_dim, config.num_queries, config.pe_scale, config.pe_temperature
        )
        self.mask_decoder = MaskDecoder(
            (dim_16, dim_8, dim_4), (config.value_dim, *config.decoder_dims), config.sensory_dim
        )
        # Not persistent: constants of the encoder, not weights (official checkpoints do not store them either).
        self.register_buffer("pixel_mean", torch.tensor(self.image_encoder.pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(self.image_encoder.pixel_std).view(1, 3, 1, 1), False)

    # ----------------------------------------------------------------------------------------------- contract
    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Any size: LiVOS zero-pads internally to a multiple of 16 and crops its output back, exactly as the
        official pipeline does, so the frame is used as given."""
        return height, width

    def new_state(self, mem_gap: int | None = None, memory: str | None = None) -> LiVOSState:
        check_memory_choice(memory, mem_gap)
        return LiVOSState()

    def step(
        self, state: LiVOSState, image_B3HW: torch.Tensor, masks: dict[int, torch.Tensor] | None = None
    ) -> torch.Tensor:
        height, width = check_frame(image_B3HW, self.name or "LiVOS")
        given = check_masks(masks, (height, width), image_B3HW.device)
        if not state.object_ids and not given:
            return image_B3HW.new_ones(1, height, width, dtype=torch.float32)

        frame = self.encode_frame(image_B3HW)
        self._prepare_state(state, frame)
        if state.object_ids:
            prob_BKHW = self.predict(state, frame).prob_BKHW
        else:  # nothing tracked yet: the "prediction" is all background
            prob_BKHW = frame.image_norm_B3HW.new_ones(1, 1, *frame.image_norm_B3HW.shape[-2:], dtype=torch.float32)
        if given:
            padded = {object_id: pad(mask, frame.padding) for object_id, mask in given.items()}
            prob_BKHW, new_ids = merge_given_masks(prob_BKHW, state.object_ids, padded)
            state.append_objects(new_ids)
        self.memorise(state, frame, prob_BKHW[:, 1:])
        return unpad(prob_BKHW, frame.padding)[0]

    def remove_objects(self, state: LiVOSState, object_ids: list[int]) -> None:
        """Drop the objects' slots (state, key sum, sensory and object memory, last mask). The official LiVOS
        code cannot do this; here the remaining objects simply carry on."""
        state.remove_objects(list(object_ids))

    # --------------------------------------------------------------------------------------------------- verbs
    def encode_frame(self, image_B3HW: torch.Tensor) -> FrameFeatures:
        """Pad, normalise and encode a ``[0, 1]`` RGB frame; computes the frame's key, gate and pixel features."""
        padding = stride_padding(*image_B3HW.shape[-2:], self.config.stride)
        image_norm_B3HW = (pad(image_B3HW.float(), padding) - self.pixel_mean) / self.pixel_std
        features_4, features_8, features_16 = self.image_encoder(image_norm_B3HW)[:3]
        return FrameFeatures(
            image_norm_B3HW=image_norm_B3HW,
            features_16_BCHW=features_16,
            features_8_BCHW=features_8,
            features_4_BCHW=features_4,
            pixels_BChw=self.pixel_proj(features_16),
            phi_key_BKhw=key_feature_map(self.key_proj(features_16)),
            gate_BV=self.gate_proj(features_16),
            padding=padding,
        )

    def read_memory(self, state: LiVOSState, frame: FrameFeatures) -> torch.Tensor:
        """The normalised linear-matching read-out ``(1, N, V, h, w)`` for the frame's key."""
        return read_memory(frame.phi_key_BKhw, state.matching_BNKV, state.key_sum_BNKhw)

    def segment(self, state: LiVOSState, frame: FrameFeatures, readout_BNChw: torch.Tensor) -> Segmentation:
        """Decode a read-out into probabilities; does not change ``state``."""
        fused_BNChw = self.pixel_fuser(frame.pixels_BChw, readout_BNChw, state.sensory_BNChw, state.last_masks_BNhw)
        transformed = self.object_transformer(fused_BNChw, state.object_memory_BNQC)
        decoded = self.mask_decoder(
            transformed.pixels_BNCHW, frame.features_8_BCHW, frame.features_4_BCHW, state.sensory_BNChw
        )
        logits_BKHW = soft_aggregate_logits(torch.sigmoid(decoded.logits_BNHW))
        logits_BKHW = F.interpolate(logits_BKHW, scale_factor=4, mode="bilinear", align_corners=False)
        return Segmentation(
            prob_BKHW=torch.softmax(logits_BKHW, dim=1),
            readout_BNChw=readout_BNChw,
            fused_BNChw=fused_BNChw,
            transformed_BNChw=transformed.pixels_BNCHW,
            aux_logits_BNLhw=transformed.aux_logits_BNLHW,
            logits_BNHW=decoded.logits_BNHW,
            sensory_BNChw=decoded.sensory_BNCHW.float(),
        )

    def predict(self, state: LiVOSState, frame: FrameFeatures) -> Segmentation:
        """Read the memory and segment the frame; keeps the decoder's sensory update in ``state``."""
        segmentation = self.segment(state, frame, self.read_memory(state, frame))
        state.sensory_BNChw = segmentation.sensory_BNChw
        return segmentation

    def encode_mask(self, state: LiVOSState, frame: FrameFeatures, masks_BNHW: torch.Tensor) -> EncodedMask:
        """The mask encoder's values for ``masks_BNHW`` (padded size, no background) and the deep sensory update."""
        return self.mask_encoder(frame.image_norm_B3HW, frame.pixels_BChw, masks_BNHW, state.sensory_BNChw)

    def memorise(self, state: LiVOSState, frame: FrameFeatures, masks_BNHW: torch.Tensor) -> None:
        """Write the frame with ``masks_BNHW`` (one per tracked object, padded size) into every memory."""
        encoded = self.encode_mask(state, frame, masks_BNHW)
        masks_BNhw = F.interpolate(masks_BNHW.float(), size=frame.grid_size, mode="area")
        state.sensory_BNChw = encoded.sensory_BNCHW.float()
        state.matching_BNKV, state.key_sum_BNKhw = write_memory(
            state.matching_BNKV, state.key_sum_BNKhw, frame.phi_key_BKhw, encoded.value_BNCHW, frame.gate_BV
        )
        state.object_memory_BNQC = state.object_memory_BNQC + self.object_summarizer(masks_BNhw, encoded.value_BNCHW)
        state.last_masks_BNhw = masks_BNhw

    # --------------------------------------------------------------------------------------------- validation
    def _prepare_state(self, state: LiVOSState, frame: FrameFeatures) -> None:
        """Allocate the state on the first frame with objects; refuse a frame size change afterwards."""
        if state.grid_size is None:
            c = self.config
            state.allocate(frame.grid_size, c.key_dim, c.value_dim, c.sensory_dim, c.num_queries, c.summary_dim,
                           frame.phi_key_BKhw.device)
        elif state.grid_size != frame.grid_size:
            raise ValueError(
                f"frame size changed mid-video: the state was built for a {state.grid_size} feature grid "
                f"(stride {self.config.stride}), this frame gives {frame.grid_size}; resize all frames alike"
            )


# -- the named models -------------------------------------------------------------------------------------------

@register_model("livos-r50", family="livos",
                description="LiVOS, ResNet-50 image / ResNet-18 mask encoder (official `livos-*-480p` weights)")
def build_livos_r50(memory: str | None = None, mem_gap: int | None = None, **overrides: Any) -> LiVOS:
    check_memory_choice(memory, mem_gap)
    return LiVOS(LiVOSConfig().replace(**overrides), name="livos-r50")
