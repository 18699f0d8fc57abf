"""The result of scoring: per-object per-frame J and F with their statistics, and the global numbers."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np

from longvos.eval.statistics import DecayMode, SeriesStats, global_summary

#: Which objects are scored: the official DAVIS rule (ids of the first annotated frame) or every annotated id.
ObjectPolicy = Literal["first-frame", "all"]
OBJECT_POLICIES: tuple[str, ...] = ("first-frame", "all")


@dataclass(frozen=True)
class ObjectScores:
    """Per-frame J and F of one object and their statistics."""

    sequence: str
    object_id: int
    frame_names: tuple[str, ...]
    j: np.ndarray
    f: np.ndarray
    j_stats: SeriesStats
    f_stats: SeriesStats

    @property
    def name(self) -> str:
        """``<sequence>_<id>``, the official per-object row name."""
        return f"{self.sequence}_{self.object_id}"


@dataclass(frozen=True)
class EvalResult:
    """Scores of every object of every evaluated sequence, and the settings that produced them."""

    objects: tuple[ObjectScores, ...]
    sequences: tuple[str, ...]
    object_policy: ObjectPolicy
    decay_mode: DecayMode
    #: ``<sequence>_<id>`` of objects that appear too late to have any scored frame (``objects="all"`` only).
    unscored_objects: tuple[str, ...] = field(default=())

    @cached_property
    def summary(self) -> dict[str, float]:
        """The official seven global numbers (``J&F-Mean``, ``J-Mean``, ...)."""
        return global_summary([o.j_stats for o in self.objects], [o.f_stats for o in self.objects])

    def object(self, name: str) -> ObjectScores:
        """One object by its ``<sequence>_<id>`` name."""
        for scores in self.objects:
            if scores.name == name:
                return scores
        raise KeyError(f"no scored object named {name!r}")
