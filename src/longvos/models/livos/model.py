"""LiVOS: Cutie's architecture with its softmax memory replaced by gated linear matching.

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

import torch
import torch.nn.functional as F
from torch import nn

from longvos.models.base import VOSModel, check_frame, check_masks
from longvos.models.encoders import build_encoder
from longvos.models.livos import linear_matching
from longvos.models.livos.config import LiVOSConfig
from longvos.models.livos.decoder import MaskDecoder
from longvos.models.livos.given_masks import merge_given_masks
from longvos.models.livos.linear_matching import GateProjection, KeyProjection
from longvos.models.livos.mask_encoder import EncodedMask, MaskEncoder
from longvos.models.livos.object_summarizer import ObjectSummarizer
from longvos.models.livos.object_transformer import ObjectTransformer
from longvos.models.livos.padding import Padding, pad, stride_padding, unpad
from longvos.models.livos.pixel_fusion import PixelFuser
from longvos.models.livos.soft_aggregation import soft_aggregate_logits
from longvos.models.livos.state import LiVOSState


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

    def init_state(self, mem_gap: int | None = None, memory: str | None = None) -> LiVOSState:
        if mem_gap not in (None, 1):
            raise ValueError(f"LiVOS writes its memory on every frame; mem_gap={mem_gap} does not apply")
        if memory not in (None, "linear"):  # its one design (longvos.models.livos.zoo.MEMORY_DESIGN)
            raise ValueError(f"LiVOS has one memory design, the gated linear state ('linear'); memory={memory!r} "
                             f"does not apply")
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
            phi_key_BKhw=linear_matching.key_feature_map(self.key_proj(features_16)),
            gate_BV=self.gate_proj(features_16),
            padding=padding,
        )

    def read_memory(self, state: LiVOSState, frame: FrameFeatures) -> torch.Tensor:
        """The normalised linear-matching read-out ``(1, N, V, h, w)`` for the frame's key."""
        return linear_matching.read_memory(frame.phi_key_BKhw, state.matching_BNKV, state.key_sum_BNKhw)

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
        state.matching_BNKV, state.key_sum_BNKhw = linear_matching.write_memory(
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
