"""Official-layout compatibility for LiVOS (``uncbiag/LiVOS``, ``LIVOS(model_type='base')``).

Everything that exists only so that the authors' checkpoints load lives here:

1. The key mapping from official ``state_dict`` names onto ours (our modules use names that say what they do).
2. The official keys that are deliberately dropped, each with its reason.

Both are registered with :mod:`longvos.checkpoints` (family ``"livos"``), which applies them and checks the result
strictly against the model.

Numerical quirks the official code has and that we reproduce on purpose are documented where they live: the
scalar read-out normaliser (``memory.py``), the float32 clamp of soft aggregation and padding before normalisation
(``layers.py``).
"""
from __future__ import annotations

import re

from longvos.checkpoints import register_official_keys

# ---------------------------------------------------------------------------------------------------------------------
# Key renames, applied in order to every official key (each rule sees the output of the previous ones).
# The ResNet trunks keep the torchvision layout, so the image encoder needs no rename at all.
# ---------------------------------------------------------------------------------------------------------------------
_RENAMES: tuple[tuple[str, str], ...] = (
    # mask encoder: the 5-channel ResNet-18 lives in a `backbone` submodule of ours
    (r"^mask_encoder\.(conv1|bn1|layer1|layer2|layer3)\.", r"mask_encoder.backbone.\1."),
    (r"^mask_encoder\.sensory_updater\.transform\.", "mask_encoder.sensory_update.gates."),
    # matching heads
    (r"^key_projector\.layer1\.", "key_proj.reduce."),
    (r"^key_projector\.layer2\.", "key_proj.project."),
    (r"^pix_projector\.layer\.", "pixel_proj."),
    (r"^gate_projector\.layer\.", "gate_proj.conv."),
    # pixel fusion: the 1x1 conv over [sensory, mask, others]
    (r"^pixel_fuser\.conv\.", "pixel_fuser.memory_proj."),
    # FeatureFuser (mask encoder and pixel fuser)
    (r"\.fuser\.x_transform\.", ".fuser.pixel_proj."),
    (r"\.fuser\.y_transform\.", ".fuser.object_proj."),
    (r"\.fuser\.layer(\d)\.", r".fuser.block\1."),
    # object transformer
    (r"^object_transformer\.query_emb\.", "object_transformer.query_pe."),
    (r"^object_transformer\.summary_to_query_emb\.", "object_transformer.summary_to_query_pe."),
    (r"^object_transformer\.pixel_emb_proj\.", "object_transformer.pixel_pe_proj."),
    (r"^object_transformer\.spatial_pe\.", "object_transformer.pos_encoding."),
    (r"\.self_attn\.self_attn\.", ".self_attention.attention."),
    (r"\.self_attn\.norm\.", ".self_attention.norm."),
    (r"\.(read_from_pixel|read_from_query)\.cross_attn\.", r".\1.attention."),
    (r"\.pixel_ffn\.conv\.", ".pixel_ffn.block."),
    (r"^object_transformer\.mask_pred\.", "object_transformer.mask_heads."),
    # channel-attention residual blocks: the 1-D conv is the channel attention
    (r"\.(block\d|pixel_ffn\.block)\.conv\.weight$", r".\1.channel_attention.weight"),
    # object summarizer
    (r"^object_summarizer\.pos_enc\.", "object_summarizer.pos_encoding."),
    (r"^object_summarizer\.feature_pred\.", "object_summarizer.feature_mlp."),
    (r"^object_summarizer\.weights_pred\.", "object_summarizer.weight_mlp."),
    # mask decoder
    (r"^mask_decoder\.linear_proj_f(8|4)\.", r"mask_decoder.skip_proj_\1."),
    (r"^mask_decoder\.upsample_(16_to_8|8_to_4)\.linear_proj\.", r"mask_decoder.up_\1.shortcut."),
    (r"^mask_decoder\.upsample_(16_to_8|8_to_4)\.", r"mask_decoder.up_\1."),
    (r"^mask_decoder\.pred\.", "mask_decoder.logit_head."),
    (r"^mask_decoder\.sensory_updater\.g(16|8|4)_conv\.", r"mask_decoder.sensory_update.proj_\1."),
    (r"^mask_decoder\.sensory_updater\.transform\.", "mask_decoder.sensory_update.gates."),
)

# ---------------------------------------------------------------------------------------------------------------------
# Official keys with no counterpart here, and why.
# ---------------------------------------------------------------------------------------------------------------------
_DROPPED: tuple[tuple[str, str], ...] = (
    (r"^aux_computer\.", "training-only auxiliary head (never used by inference)"),
    (r"\.num_batches_tracked$", "BatchNorm batch counter (our encoders use frozen BN, which has none)"),
)

_COMPILED_RENAMES = tuple((re.compile(pattern), replacement) for pattern, replacement in _RENAMES)
_COMPILED_DROPPED = tuple((re.compile(pattern), reason) for pattern, reason in _DROPPED)


def livos_key_from_official(official_key: str) -> str:
    """Our parameter name for an official LiVOS key. Keys this mapping does not know come back renamed only as
    far as the rules apply, so the strict key check reports them as unexpected."""
    key = official_key
    for pattern, replacement in _COMPILED_RENAMES:
        key = pattern.sub(replacement, key)
    return key


def livos_drop_reason(official_key: str) -> str | None:
    """Why an official key is deliberately not converted, or ``None`` if it is converted."""
    for pattern, reason in _COMPILED_DROPPED:
        if pattern.search(official_key):
            return reason
    return None


register_official_keys("livos", livos_key_from_official, livos_drop_reason)
