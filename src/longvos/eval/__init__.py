"""Evaluation: DAVIS-exact J&F (:func:`evaluate`), running a model over a dataset, and the speed/memory benchmark.

Only the scoring API is re-exported here; it needs numpy and OpenCV but not torch, so that the scoring worker
processes start quickly. The model runner (:mod:`longvos.eval.runner`) and the benchmark (:mod:`longvos.eval.bench`)
are imported from their modules.
"""
from longvos.eval.metrics import boundary_f_measure, boundary_map, region_similarity, tolerance_radius
from longvos.eval.results import EvalResult, ObjectScores
from longvos.eval.scoring import evaluate, evaluate_sequences
from longvos.eval.statistics import SeriesStats, decay, decay_official_uint8, global_summary

__all__ = [
    "EvalResult", "ObjectScores", "SeriesStats", "boundary_f_measure", "boundary_map", "decay",
    "decay_official_uint8", "evaluate", "evaluate_sequences", "global_summary", "region_similarity",
    "tolerance_radius",
]
