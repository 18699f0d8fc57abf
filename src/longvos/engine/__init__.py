"""The streaming engine: sessions over any model that follows :mod:`longvos.models.base`, SAM2-style offline verbs,
and ``segment_video``, the one-call runner shared by the CLI, batch tool and web app."""
from longvos.engine.offline import VideoState
from longvos.engine.options import SegmentOptions
from longvos.engine.pipeline import DEFAULT_MODEL, SegmentationError, SegmentSummary, segment_video
from longvos.engine.segmenter import Segmenter, load_model
from longvos.engine.session import Session, StepResult

__all__ = [
    "DEFAULT_MODEL", "SegmentOptions", "SegmentSummary", "SegmentationError", "Segmenter", "Session", "StepResult", "VideoState",
    "load_model", "segment_video",
]
