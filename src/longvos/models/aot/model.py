"""The AOT-family model (DeAOT, MAVOS): stateless verbs for training, and the engine contract on top of them.

Training-facing verbs (all differentiable; dropout and DropPath follow ``train()``/``eval()``)::

    features = model.encode_image(image_B3HW)                 # RGB in [0, 1] -> ImageFeatures
    id_emb = model.encode_mask(one_hot_BKHW)                  # one-hot or soft probs, K = 1 + max_objects
    ref = model.propagate(features, id_emb_BNC=id_emb)        # reference frame: reads its own memory
    memory = model.start_memory(ref)
    for each later frame:
        features = model.encode_image(image_B3HW)
        prop = model.propagate(features, memory)              # reads long- and short-term memory
        logits_BKhw = model.decode(features, prop.output_BNC)  # stride-4 logits for background + every slot
        memory = model.write_memory(memory, prop, one_hot_BKHW)  # short-term always, long-term every mem_gap

``write_memory`` and ``add_reference`` return a new :class:`AOTMemory` (no tensor is modified in place). The
engine-facing :meth:`AOTModel.step` runs these verbs over the passes of an :class:`AOTState`.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from longvos.models.aot.config import AOTConfig
from longvos.models.aot.decoder import FPNDecoder
from longvos.models.aot.identity import IdentityEmbedding, labels_to_one_hot
from longvos.models.aot.memory import (AOTMemory, LayerMemory, LongTermMemory, MemoryFusion, long_term_update_due,
                                       make_long_term_memory)
from longvos.models.aot.propagation import GatedPropagationStack, Propagation
from longvos.models.aot.state import AOTState, mask_empty_slots, soft_aggregate
from longvos.models.base import VOSModel, check_frame, check_masks
from longvos.models.encoders import build_encoder
from longvos.models.layers import onednn
from longvos.models.layers.attention import map_to_tokens, tokens_to_map

_MASK_THRESHOLD = 0.5  # a user mask claims a pixel where it is above this


def network_input_size(config: AOTConfig, height: int, width: int) -> tuple[int, int]:
    """Official size policy: with align_corners ``(H - 1) % 16 == 0``, otherwise ``H % 16 == 0``; nearest, ties to
    even like numpy's ``around`` (Python's ``round`` does the same); never below one token."""
    stride = config.max_stride
    offset = 1 if config.align_corners else 0
    return tuple(max(round((int(size) - offset) / stride), 1) * stride + offset  # type: ignore[return-value]
                 for size in (height, width))


def winning_channel(probs_KHW: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` index of the largest channel, the first one on ties (as ``argmax``). ``max(dim=0).indices``
    rather than ``argmax(dim=0)``: on CPU the latter reduces over the outer dimension ~10x slower (80 ms instead of
    8 ms for background + one object at 480p on one thread)."""
    return probs_KHW.max(dim=0).indices


@dataclass
class ImageFeatures:
    """Encoder output of a frame: decoder shortcuts at strides 4, 8, 16, and the projected stride-16 embedding."""

    s4_BCHW: torch.Tensor
    s8_BCHW: torch.Tensor
    s16_BCHW: torch.Tensor
    embedding_BCHW: torch.Tensor  # (B, d_model, H/16, W/16): the E-LSTT input

    @property
    def grid_hw(self) -> tuple[int, int]:
        return tuple(self.embedding_BCHW.shape[-2:])  # type: ignore[return-value]


class AOTModel(VOSModel):
    """DeAOT / MAVOS with a pluggable long-term memory; see the module docstring for the verbs."""

    def __init__(self, config: AOTConfig, pretrained_encoder: bool = False, *, name: str | None = None,
                 default_max_size: int | None = None, default_max_part_distance: float | None = None):
        super().__init__(name=name, default_max_size=default_max_size,
                         default_max_part_distance=default_max_part_distance)
        self.config = config
        d_model = config.d_model
        self.encoder = build_encoder(config.encoder, pretrained=pretrained_encoder)
        s4_channels, s8_channels, s16_channels, embedding_channels = self.encoder.channels
        self.encoder_projection = onednn.PointwiseConv2d(embedding_channels, d_model)
        nn.init.xavier_uniform_(self.encoder_projection.weight)
        self.identity = IdentityEmbedding(config.num_classes, d_model, config.align_corners, config.max_stride)
        self.propagation = GatedPropagationStack(config)
        self.decoder = FPNDecoder(2 * d_model, d_model, (s4_channels, s8_channels, s16_channels),
                                  config.num_classes, config.align_corners)
        self.memory_fusion = (MemoryFusion(config.num_layers, config.qk_dim, config.value_dim, config.mca_heads,
                                           config.mca_droppath) if config.mca_blocks else None)
        self.long_term_memory: LongTermMemory = make_long_term_memory(config.memory, self.memory_fusion)
        self._designs: dict[str, LongTermMemory] = {config.memory: self.long_term_memory}  # per-video choices
        # The input statistics belong to the encoder's weights (ImageNet mean/std for the official encoders).
        self.register_buffer("pixel_mean", torch.tensor(self.encoder.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.encoder.pixel_std).view(1, 3, 1, 1), persistent=False)

    # ---------------------------------------------------------------------------------------------------------------
    # Verbs
    # ---------------------------------------------------------------------------------------------------------------

    @property
    def align_corners(self) -> bool:
        return self.config.align_corners

    @property
    def default_memory(self) -> str:
        return self.config.memory

    @property
    def default_mem_gap(self) -> int:
        return self.config.mem_gap

    @property
    def objects_per_pass(self) -> int | None:
        capacity = self.config.pass_capacity
        return None if capacity == self.config.max_objects else capacity  # max_objects: the official packing

    @property
    def state_is_fixed_size(self) -> bool:
        """``ref+prev`` and ``mca`` keep a constant-size memory; ``growing`` (DeAOT) adds a frame per update."""
        return self.long_term_memory.constant_size

    def fixed_size(self, state: AOTState) -> bool:
        return self.long_term_design(state.memory).constant_size

    def long_term_design(self, name: str | None = None) -> LongTermMemory:
        """The long-term memory design ``name`` (None: the config's), which a video may choose (``new_state``);
        ``ValueError`` for an unknown design or ``mca`` on a model without MCA blocks."""
        if name is None:
            return self.long_term_memory
        if name not in self._designs:
            self._designs[name] = make_long_term_memory(name, self.memory_fusion)
        return self._designs[name]

    def encode_image(self, image_B3HW: torch.Tensor) -> ImageFeatures:
        """RGB in [0, 1] at the network input size -> encoder features. Normalised here with the encoder's
        statistics, in the official float32 op order ``(x - mean) / std`` (the caller has done ``x / 255``)."""
        # Channels-last: oneDNN's depthwise convolutions run ~3x faster on NHWC maps than on NCHW ones, and the
        # mobile encoders are mostly depthwise and 1x1 convolutions: MobileNetV2 and EfficientNet-Lite at 480p on
        # one CPU thread are 1.2-1.4x faster (ResNet-50 and Swin about the same). The decoder then gets channels-last
        # shortcuts, which it runs as fast, and the 1x1 convolutions read the maps as token matrices (layers/onednn).
        # Results only differ by float rounding.
        # (A frame made as ``hwc.permute(2, 0, 1)[None]`` has batch stride 3, which the convolutions do not take for
        # channels-last: they then ran channels-first, and the MobileNetV2 encoder took 2x as long at 480p.)
        normalised_B3HW = onednn.channels_last(self.normalise(image_B3HW))
        s4_BCHW, s8_BCHW, s16_BCHW, deep_BCHW = self.encoder(normalised_B3HW)
        return ImageFeatures(s4_BCHW, s8_BCHW, s16_BCHW, self.encoder_projection(deep_BCHW))

    def normalise(self, image_B3HW: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> the encoder's input: ``(x - mean) / std`` with the encoder's statistics."""
        return (image_B3HW - self.pixel_mean) / self.pixel_std

    def encode_mask(self, masks_BKHW: torch.Tensor) -> torch.Tensor:
        """One-hot masks or soft probabilities ``(B, 1 + max_objects, H, W)`` -> identity tokens ``(B, N, d)``."""
        return self.identity(masks_BKHW)

    def propagate(self, features: ImageFeatures, memory: AOTMemory | None = None,
                  id_emb_BNC: torch.Tensor | None = None) -> Propagation:
        """Run the E-LSTT on a frame: against ``memory``, or (reference frame) against itself with ``id_emb_BNC``."""
        tokens_BNC = map_to_tokens(features.embedding_BCHW)
        if id_emb_BNC is not None:
            return self.propagation(tokens_BNC, features.grid_hw, id_emb_BNC=id_emb_BNC)
        if memory is None:
            raise ValueError("propagate needs a memory, or an identity embedding for a reference frame")
        if memory.grid_hw != features.grid_hw:
            raise ValueError(f"frame token grid {features.grid_hw} differs from the memory's {memory.grid_hw}: "
                             "all frames of a video must have the same input size")
        return self.propagation(tokens_BNC, features.grid_hw, memory.long_term, memory.short_term)

    def decode(self, features: ImageFeatures, lstt_BNC: torch.Tensor) -> torch.Tensor:
        """Stride-4 logits ``(B, 1 + max_objects, H/4, W/4)`` (unmasked). ``features`` may have batch 1 while
        ``lstt_BNC`` has one row per pass: the shortcuts are then shared."""
        lstt_BCHW = tokens_to_map(lstt_BNC, features.grid_hw)
        return self.decoder(lstt_BCHW, features.s4_BCHW, features.s8_BCHW, features.s16_BCHW)

    def start_memory(self, reference: Propagation) -> AOTMemory:
        """The memory of a video whose first reference frame is ``reference`` (a :meth:`propagate` with id_emb)."""
        frame_memory = self._reference_memory(reference)
        return AOTMemory(long_term=frame_memory, short_term=frame_memory, grid_hw=reference.grid_hw)

    def add_reference(self, memory: AOTMemory, reference: Propagation, design: str | None = None) -> AOTMemory:
        """Memorise a later reference frame (objects added or re-anchored): it goes through the long-term update
        now, whatever the schedule, and becomes the short-term memory (the official engine's behaviour).
        ``design``: the video's long-term memory design (None: the config's)."""
        frame_memory = self._reference_memory(reference)
        step = memory.frame_step + 1
        long_term = self.long_term_design(design).update(memory.long_term, frame_memory, reference.grid_hw)
        return memory.replace(long_term=long_term, short_term=frame_memory, frame_step=step, last_update_step=step)

    def write_memory(self, memory: AOTMemory, propagation: Propagation, masks_BKHW: torch.Tensor,
                     mem_gap: int | None = None, design: str | None = None) -> AOTMemory:
        """Memorise a propagated frame with its mask (one-hot labels or soft probabilities, ``(B, 1 + slots, H, W)``):
        it becomes the short-term memory, and enters the long-term memory when ``mem_gap`` frames (default: the
        config's) have passed since the last update, by the long-term memory ``design`` (default: the config's)."""
        frame_memory = self.propagation.memory_from(propagation.parts, self.encode_mask(masks_BKHW))
        step = memory.frame_step + 1
        gap = self.config.mem_gap if mem_gap is None else mem_gap
        if long_term_update_due(step, memory.last_update_step, gap):
            long_term = self.long_term_design(design).update(memory.long_term, frame_memory, propagation.grid_hw)
            return memory.replace(long_term=long_term, short_term=frame_memory, frame_step=step,
                                  last_update_step=step)
        return memory.replace(short_term=frame_memory, frame_step=step)

    @staticmethod
    def _reference_memory(reference: Propagation) -> list[LayerMemory]:
        if reference.reference_memory is None:
            raise ValueError("not a reference propagation: call propagate(features, id_emb_BNC=...)")
        return reference.reference_memory

    # ---------------------------------------------------------------------------------------------------------------
    # Engine contract (longvos.models.base.VOSModel)
    # ---------------------------------------------------------------------------------------------------------------

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        return network_input_size(self.config, height, width)

    def new_state(self, mem_gap: int | None = None, memory: str | None = None) -> AOTState:
        mem_gap = self.config.mem_gap if mem_gap is None else int(mem_gap)
        if mem_gap < 1:
            raise ValueError(f"mem_gap must be >= 1 frame, got {mem_gap}")
        if memory == self.config.memory:
            memory = None  # the model's own design: a state like one that named none
        self.long_term_design(memory)  # an unknown or impossible design fails here, before any frame
        return AOTState(max_objects=self.config.max_objects, mem_gap=mem_gap, memory=memory)

    def step(self, state: AOTState, image_B3HW: torch.Tensor,
             masks: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        frame_hw = self._check_frame(state, image_B3HW)
        masks = check_masks(masks, frame_hw, image_B3HW.device)
        state.input_hw = frame_hw  # fixed for the rest of the video
        if not state.passes and not masks:
            return image_B3HW.new_ones(1, *frame_hw)

        features = self.encode_image(image_B3HW)
        probs_KHW = None
        propagations = []
        if state.passes:
            propagations = [self.propagate(features, pass_.memory) for pass_ in state.passes]
            probs_KHW = self._probabilities(state, features, propagations, frame_hw)
        if masks:
            return self._memorise_references(state, features, probs_KHW, masks, frame_hw)

        pass_one_hots = self._pass_one_hots(state, winning_channel(probs_KHW))
        for pass_, propagation, one_hot_KHW in zip(state.passes, propagations, pass_one_hots):
            pass_.memory = self.write_memory(pass_.memory, propagation, one_hot_KHW.unsqueeze(0), state.mem_gap,
                                             state.memory)
        return probs_KHW

    def remove_objects(self, state: AOTState, object_ids: list[int]) -> None:
        state.remove_objects(list(object_ids))

    # ---------------------------------------------------------------------------------------------------------------
    # step() helpers
    # ---------------------------------------------------------------------------------------------------------------

    def _probabilities(self, state: AOTState, features: ImageFeatures, propagations: list[Propagation],
                       frame_hw: tuple[int, int]) -> torch.Tensor:
        """``(1 + N, H, W)`` probabilities of background and ``state.object_ids``, as the official engine computes
        them: stride-4 logits with empty slots masked, bilinear upsampling, soft aggregation over passes."""
        lstt_BNC = torch.cat([p.output_BNC for p in propagations], dim=0)
        logits_PKhw = mask_empty_slots(self.decode(features, lstt_BNC), state.live_slots(lstt_BNC.device))
        kept, merged = state.kept_channels()
        # Only live channels are kept, so the probabilities sum to one over background + tracked objects. With one
        # pass this is exactly the official softmax (empty slots have weight 0); with several, the official softmax
        # also gives the clamped empty slots about 1e-5 each, which we leave out. Bilinear upsampling works channel
        # by channel, so the channels are picked at stride 4 rather than after upsampling all 1 + max_objects.
        if len(propagations) == 1:  # no aggregation: the objects' channels in object_ids order, as they are
            channels = torch.tensor([kept[0][m] for m in merged], device=logits_PKhw.device)
            return torch.softmax(self._upsample(logits_PKhw[:, channels], frame_hw)[0].float(), dim=0)
        passes_P1 = torch.arange(len(kept), device=logits_PKhw.device)[:, None]
        kept_PChw = logits_PKhw[passes_P1, torch.tensor(kept, device=logits_PKhw.device)]
        merged_1CHW = soft_aggregate(self._upsample(kept_PChw, frame_hw))
        return torch.softmax(merged_1CHW[0, torch.tensor(merged, device=logits_PKhw.device)].float(), dim=0)

    def _upsample(self, logits_PKhw: torch.Tensor, frame_hw: tuple[int, int]) -> torch.Tensor:
        """Stride-4 logits -> the input size, bilinearly (the official engine's order: upsample, then softmax)."""
        return F.interpolate(logits_PKhw, size=frame_hw, mode="bilinear", align_corners=self.config.align_corners)

    def _pass_one_hots(self, state: AOTState, labels_HW: torch.Tensor) -> Iterator[torch.Tensor]:
        """Each pass's ``(1 + max_objects, H, W)`` one-hot memory mask from global labels, one pass at a time: with
        one object per pass there are as many passes as objects, and all masks at once would be ``P x 11`` float
        maps of the frame (about 2 GB for 250 objects at 320 x 576)."""
        labels_HW = labels_HW.long()
        for table_L in state.slot_tables(labels_HW.device):
            yield labels_to_one_hot(table_L[labels_HW][None], self.config.num_classes)[0]

    def _memorise_references(self, state: AOTState, features: ImageFeatures, probs_KHW: torch.Tensor | None,
                             masks: dict[int, torch.Tensor], frame_hw: tuple[int, int]) -> torch.Tensor:
        """A frame with user masks: merge them with the prediction, then memorise the frame as a reference in every
        pass (the official new-object path). Returns the merged probabilities."""
        reanchored = [obj for obj in masks if obj in state.object_ids]
        state.add_objects([obj for obj in masks if obj not in state.object_ids], self.config.pass_capacity)
        num_channels = 1 + len(state.object_ids)
        merged_KHW = torch.zeros(num_channels, *frame_hw, device=features.embedding_BCHW.device)
        if probs_KHW is None:
            merged_KHW[0] = 1.0
        else:
            merged_KHW[: probs_KHW.shape[0]] = probs_KHW
        for object_id in reanchored:  # the user's mask replaces the prediction of a re-anchored object
            channel = 1 + state.object_ids.index(object_id)
            merged_KHW[0] += merged_KHW[channel]
            merged_KHW[channel] = 0.0

        given_ids = list(masks)
        given_GHW = torch.stack([masks[obj].to(merged_KHW) for obj in given_ids])
        strongest_HW, which_HW = given_GHW.max(dim=0)
        claimed_HW = strongest_HW > _MASK_THRESHOLD
        given_channels_G = torch.tensor([1 + state.object_ids.index(obj) for obj in given_ids],
                                        device=merged_KHW.device)
        labels_HW = torch.where(claimed_HW, given_channels_G[which_HW], winning_channel(merged_KHW))
        merged_KHW = torch.where(claimed_HW, labels_to_one_hot(labels_HW[None], num_channels)[0], merged_KHW)

        for pass_, one_hot_KHW in zip(state.passes, self._pass_one_hots(state, labels_HW)):
            reference = self.propagate(features, id_emb_BNC=self.encode_mask(one_hot_KHW.unsqueeze(0)))
            pass_.memory = (self.start_memory(reference) if pass_.memory is None
                            else self.add_reference(pass_.memory, reference, state.memory))
        return merged_KHW

    def _check_frame(self, state: AOTState, image_B3HW: torch.Tensor) -> tuple[int, int]:
        frame_hw = check_frame(image_B3HW, self.name or "this model")
        if self.input_size(*frame_hw) != frame_hw:
            raise ValueError(f"frame size {frame_hw[0]}x{frame_hw[1]} is not a network input size for "
                             f"{self.name or 'this model'}; resize to model.input_size(H, W) = "
                             f"{self.input_size(*frame_hw)} first")
        if state.input_hw is not None and state.input_hw != frame_hw:
            raise ValueError(f"frame size changed mid-video: {frame_hw} after {state.input_hw}")
        return frame_hw
