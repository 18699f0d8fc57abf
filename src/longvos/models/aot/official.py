"""Official-layout compatibility for the AOT family (DeAOT and MAVOS).

Everything that exists only so that the authors' checkpoints load and reproduce their numbers lives here, in marked
sections, so that the modules themselves can stay clean:

1. Attention blocks (MCA and local attention): the MCA value-layout quirk and the block-level key names.
2. Checkpoint key mapping of the whole model (added by the AOT-model work).
"""
from __future__ import annotations

import re

import torch

from longvos.checkpoints import register_official_keys

# =====================================================================================================================
# Section 1: attention blocks (mca.py, local_attention.py)
# =====================================================================================================================

# ---------------------------------------------------------------------------------------------------------------------
# OFFICIAL-LAYOUT QUIRK: MCA values are the NCHW modulator reinterpreted as tokens, without a permute.
#
# The official MAVOS block (``JointFocalAttention`` in ``networks/layers/externel_utils.py``) computes its focal
# modulator as an image, shape (B, C, H, W), and then *reshapes* it straight to (B, N, heads, C / heads). Because no
# permute to token order happens first, "token" n of the values is the slice [n * C, (n + 1) * C) of the flattened
# (C, H, W) buffer: it mixes spatial positions and channels. The official checkpoints were trained with this layout,
# so loading them requires reproducing it exactly; the "correct" permute moves MAVOS logits by up to ~0.8.
# ---------------------------------------------------------------------------------------------------------------------


def mca_modulator_as_values(modulator_BCHW: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Official MCA value layout: reinterpret the row-major (B, C, H, W) modulator as (B, heads, N, C / heads).

    ``reshape`` works on the logical row-major order, so the result is the same whether or not the modulator is
    contiguous in memory (e.g. channels-last convolution output on a GPU).
    """
    batch, channels, height, width = modulator_BCHW.shape
    values_BNhd = modulator_BCHW.reshape(batch, height * width, num_heads, channels // num_heads)
    return values_BNhd.transpose(1, 2)


#: Official parameter-name prefix inside one MCA block: ``long_term_memory_attention.<layer>.<slot>.joint_modulation.``
#: wraps the block. Below that prefix our ``ModulatedCrossAttention`` uses the official names unchanged:
#: ``norm_l``, ``norm_c``, ``attn.{q, k, proj, f_context, h, focal_layers.0.0, focal_layers.1.0}``, ``norm2``,
#: ``mlp.{fc1, fc2}``.
MCA_OFFICIAL_PREFIX = "joint_modulation."


def mca_key_from_official(official_suffix: str) -> str:
    """Our ``ModulatedCrossAttention`` parameter name for an official key suffix below ``<layer>.<slot>.``.

    ``"joint_modulation.attn.focal_layers.0.0.weight"`` -> ``"attn.focal_layers.0.0.weight"``.
    """
    if not official_suffix.startswith(MCA_OFFICIAL_PREFIX):
        raise KeyError(f"not an official MCA key (expected the prefix {MCA_OFFICIAL_PREFIX!r}): {official_suffix!r}")
    return official_suffix[len(MCA_OFFICIAL_PREFIX):]


# ``LocalGatedPropagation`` (local_attention.py) uses the official names below ``LSTT.layers.<i>.short_term_attn.``
# unchanged (``relative_emb_k``, ``dw_conv.conv``, ``projection``), so it needs no rename.


# =====================================================================================================================
# Section 2: checkpoint key mapping (AOT model)
# =====================================================================================================================

# Official checkpoints (aot-benchmark DeAOT, MAVOS) name parameters after the official modules; ours are named after
# what they do. Each rule maps an official key prefix to ours; the first matching rule wins and the rest of the key
# is kept. A key that matches no rule is "unexpected" (the converter reports it; nothing is dropped silently).
#
# Swin's ``relative_position_index`` buffers and frozen-BN buffers are plain encoder keys and map 1:1 under
# ``encoder.``.

_LAYER_RENAMES: tuple[tuple[str, str], ...] = (
    ("norm1.", "visual_norm."),
    ("linear_QV.", "query_value."),
    ("linear_U.", "visual_gate."),
    ("id_norm1.", "id_norm."),
    ("linear_ID_V.", "id_value."),
    ("linear_ID_U.", "id_gate."),
    ("long_term_attn.", "long_term."),
    ("short_term_attn.", "short_term."),  # LocalGatedPropagation keeps the official names below this prefix
    ("norm2.", "self_visual_norm."),
    ("id_norm2.", "self_id_norm."),
    ("self_attn.linear_QK.", "self_propagation.query_key."),
    ("self_attn.linear_V1.", "self_propagation.value_visual."),
    ("self_attn.linear_V2.", "self_propagation.value_id."),
    ("self_attn.linear_U1.", "self_propagation.gate_visual."),
    ("self_attn.linear_U2.", "self_propagation.gate_id."),
    ("self_attn.", "self_propagation."),  # dw_conv.conv, projection
)

_TOP_LEVEL_RENAMES: tuple[tuple[str, str], ...] = (
    ("encoder.", "encoder."),
    ("encoder_projector.", "encoder_projection."),
    ("patch_wise_id_bank.", "identity.bank."),
    ("id_norm.", "identity.norm."),
    ("LSTT.decoder_norms.0.gn.", "propagation.output_norm."),
    ("decoder.conv_in.", "decoder.input_conv."),
    ("decoder.conv_16x.", "decoder.fuse_s16."),
    ("decoder.conv_8x.", "decoder.fuse_s8."),
    ("decoder.conv_4x.", "decoder.fuse_s4."),
    ("decoder.adapter_16x.", "decoder.adapter_s16."),
    ("decoder.adapter_8x.", "decoder.adapter_s8."),
    ("decoder.adapter_4x.", "decoder.adapter_s4."),
    ("decoder.conv_out.", "decoder.classifier."),
)

#: Official MCA slot index in ``long_term_memory_attention.<layer>.<slot>`` -> ours. Slot 2 (an "ID key") is None in
#: the official model and has no weights.
_MCA_SLOTS = {"0": "key", "1": "value", "3": "id_value"}

_LAYER_KEY = re.compile(r"LSTT\.layers\.(\d+)\.(.+)")
_MCA_KEY = re.compile(r"long_term_memory_attention\.(\d+)\.(\d+)\.(.+)")


def aot_key_from_official(official_key: str) -> str | None:
    """Our parameter name for an official DeAOT/MAVOS key, or ``None`` if the key has no counterpart."""
    for official_prefix, ours in _TOP_LEVEL_RENAMES:
        if official_key.startswith(official_prefix):
            return ours + official_key[len(official_prefix):]
    layer = _LAYER_KEY.fullmatch(official_key)
    if layer:
        index, rest = layer.groups()
        for official_prefix, ours in _LAYER_RENAMES:
            if rest.startswith(official_prefix):
                return f"propagation.layers.{index}.{ours}{rest[len(official_prefix):]}"
        return None
    mca = _MCA_KEY.fullmatch(official_key)
    if mca:
        index, slot, rest = mca.groups()
        if slot not in _MCA_SLOTS or not rest.startswith(MCA_OFFICIAL_PREFIX):
            return None
        return f"memory_fusion.layers.{index}.{_MCA_SLOTS[slot]}.{mca_key_from_official(rest)}"
    return None


register_official_keys("aot", aot_key_from_official)
