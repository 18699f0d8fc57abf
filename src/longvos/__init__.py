"""longvos: semi-supervised video object segmentation on long videos in constant memory.

Public API (imported on first use, so that ``import longvos`` and ``longvos --help`` stay fast)::

    segmenter = longvos.load_segmenter("mavos-lite", device="auto")
    with segmenter.session() as session:  # frames shrunk to the model's size (max_size="auto")
        for frame in longvos.open_video("clip.mp4"):
            result = session.step(frame.image, first_mask if frame.index == 0 else None)

    longvos.segment_video("clip.mp4", "first_mask.png", "out/")   # the whole video to PNGs, resumable
    longvos.segment_video("clip.mp4", "first_mask.png", "out/", longvos.SegmentOptions(max_size=320, device="cpu"))
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "load_segmenter": "longvos.engine.segmenter",
    "Segmenter": "longvos.engine.segmenter",
    "Session": "longvos.engine.session",
    "StepResult": "longvos.engine.session",
    "VideoState": "longvos.engine.segmenter",
    "segment_video": "longvos.engine.pipeline",
    "SegmentOptions": "longvos.engine.options",
    "SegmentSummary": "longvos.engine.pipeline",
    "SegmentationError": "longvos.engine.pipeline",
    "open_video": "longvos.io.video",
    "Frame": "longvos.io.video",
    "FrameSource": "longvos.io.video",
    "read_index_mask": "longvos.io.masks",
    "write_index_png": "longvos.io.masks",
    "LongvosError": "longvos.io.errors",
    "InputError": "longvos.io.errors",
    "MaskError": "longvos.io.errors",
    "VideoReadError": "longvos.io.errors",
    "SessionError": "longvos.io.errors",
    "list_models": "longvos.models.registry",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'longvos' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
