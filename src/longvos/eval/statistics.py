"""Per-object statistics of a per-frame score series (mean, recall, decay) and their pooling into global numbers.

The decay splits the N scored frames into four bins whose edges are ``round_half_up(k * (N - 1) / 4)``; neighbouring
bins share their edge frame. The official DAVIS code converts these edges to uint8, which silently breaks the decay of
any object with 256 or more scored frames (long videos, exactly what this library is for). We compute the edges in
int64 by default; :func:`decay_official_uint8` reproduces the official behaviour for comparison with published numbers.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

DecayMode = Literal["int64", "official-uint8"]
DECAY_MODES: tuple[str, ...] = ("int64", "official-uint8")
N_DECAY_BINS = 4
#: Per-frame score above which a frame counts for the recall (strict: 0.5 itself does not count).
RECALL_THRESHOLD = 0.5


def decay_bin_edges(n_frames: int) -> np.ndarray:
    """The five int64 bin edges ``floor(k * (N - 1) / 4 + 1/2)``, k = 0..4, in exact integer arithmetic."""
    k = np.arange(N_DECAY_BINS + 1, dtype=np.int64)
    return (2 * k * (n_frames - 1) + 4) // 8


def _decay_from_bins(values: np.ndarray, lower: np.ndarray, upper_exclusive: np.ndarray) -> float:
    first = values[int(lower[0]):int(upper_exclusive[0])]
    last = values[int(lower[-1]):int(upper_exclusive[-1])]
    if first.size == 0 or last.size == 0:
        return math.nan  # what the official nan-mean of an empty slice gives
    return float(np.mean(first) - np.mean(last))


def decay(values: np.ndarray) -> float:
    """Mean of the first bin minus mean of the last bin (both inclusive of their edges), with int64 edges."""
    edges = decay_bin_edges(len(values))
    return _decay_from_bins(np.asarray(values, dtype=np.float64), edges[:-1], edges[1:] + 1)


def official_uint8_bin_edges(n_frames: int) -> np.ndarray:
    """The bin edges as the official code holds them: wrapped into uint8 (as x86-64 does for out-of-range values)."""
    return (decay_bin_edges(n_frames) % 256).astype(np.uint8)


def decay_official_uint8(values: np.ndarray) -> float:
    """The decay the official DAVIS evaluator prints (numpy >= 2, x86-64), wrong or NaN from 256 scored frames on.

    Its edges wrap modulo 256 and the exclusive upper bound ``edge + 1`` is computed in uint8, so 255 + 1 becomes 0.
    Provided only to reproduce published numbers; :func:`decay` is the intended definition.
    """
    edges = official_uint8_bin_edges(len(values)).astype(np.int64)
    return _decay_from_bins(np.asarray(values, dtype=np.float64), edges[:-1], (edges[1:] + 1) % 256)


def recall(values: np.ndarray) -> float:
    """Fraction of frames scoring strictly above 0.5."""
    return float(np.mean(np.asarray(values) > RECALL_THRESHOLD))


@dataclass(frozen=True)
class SeriesStats:
    """Mean, recall and decay of one per-frame series (J or F) of one object."""

    mean: float
    recall: float
    decay: float

    @classmethod
    def of(cls, values: np.ndarray, decay_mode: DecayMode = "int64") -> SeriesStats:
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            raise ValueError("cannot summarise an empty score series (the object has no scored frame)")
        decay_fn = decay if decay_mode == "int64" else decay_official_uint8
        return cls(float(np.mean(values)), recall(values), decay_fn(values))


#: Column names of the global summary, in the order the official evaluator prints them.
GLOBAL_COLUMNS: tuple[str, ...] = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


def global_summary(j_stats: list[SeriesStats], f_stats: list[SeriesStats]) -> dict[str, float]:
    """Plain averages over all objects of all sequences (objects are pooled, not sequences).

    Like the official code this is not NaN-ignoring, so a NaN official-uint8 decay makes the global decay NaN.
    """
    if not j_stats or len(j_stats) != len(f_stats):
        raise ValueError("global summary needs the same, non-zero number of J and F object statistics")

    def average(stats: list[SeriesStats], field: str) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(np.mean([getattr(s, field) for s in stats]))

    j_mean, f_mean = average(j_stats, "mean"), average(f_stats, "mean")
    return {
        "J&F-Mean": (j_mean + f_mean) / 2,
        "J-Mean": j_mean,
        "J-Recall": average(j_stats, "recall"),
        "J-Decay": average(j_stats, "decay"),
        "F-Mean": f_mean,
        "F-Recall": average(f_stats, "recall"),
        "F-Decay": average(f_stats, "decay"),
    }
