"""The streaming engine: sessions over any model that follows :mod:`longvos.models.base`, SAM2-style offline verbs,
and ``segment_video``, the one-call runner shared by the CLI, the batch tool, the web app and the evaluation."""
from longvos.engine.options import SegmentOptions
from longvos.engine.pipeline import DEFAULT_MODEL, SegmentationError, SegmentSummary, segment_video
from longvos.engine.segmenter import Segmenter, VideoState, load_segmenter
from longvos.engine.session import Session, StepResult

__all__ = [
    "DEFAULT_MODEL", "SegmentOptions", "SegmentSummary", "SegmentationError", "Segmenter", "Session", "StepResult",
    "VideoState", "load_segmenter", "segment_video",
]
