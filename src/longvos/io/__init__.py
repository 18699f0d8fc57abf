"""Video and mask input/output: streamed frame sources, validated masks, the DAVIS layout, an atomic background
writer, overlays. (Box and click prompts live in :mod:`longvos.prompts`.)"""
from longvos.io.errors import InputError, MaskError, VideoReadError
from longvos.io.masks import (
    IndexMask, read_index_mask, read_object_masks, read_probs_npz, write_index_png, write_object_png, write_probs_npz,
)
from longvos.io.palette import DAVIS_PALETTE
from longvos.io.video import Frame, FrameSource, open_video

__all__ = [
    "DAVIS_PALETTE", "Frame", "FrameSource", "IndexMask", "InputError", "MaskError", "VideoReadError",
    "open_video", "read_index_mask", "read_object_masks", "read_probs_npz",
    "write_index_png", "write_object_png", "write_probs_npz",
]

