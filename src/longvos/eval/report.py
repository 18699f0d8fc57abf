"""Presenting an :class:`~longvos.eval.scoring.EvalResult`: a text table, CSV files and a JSON summary.

File names and the global CSV format follow the official DAVIS evaluator (``global_results.csv`` with three
decimals, ``per-sequence_results.csv`` with one row per object named ``<sequence>_<id>``), so existing scripts that
read those files keep working; the per-object CSV and the JSON carry full precision.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from longvos.eval.results import EvalResult
from longvos.eval.statistics import GLOBAL_COLUMNS

GLOBAL_CSV = "global_results.csv"
PER_SEQUENCE_CSV = "per-sequence_results.csv"
SUMMARY_JSON = "summary.json"
PER_OBJECT_COLUMNS = ("Sequence", "J-Mean", "F-Mean", "J-Recall", "J-Decay", "F-Recall", "F-Decay", "Frames")


def _object_row(scores) -> list[Any]:
    j, f = scores.j_stats, scores.f_stats
    return [scores.name, j.mean, f.mean, j.recall, j.decay, f.recall, f.decay, len(scores.j)]


def global_csv_lines(summary: dict[str, float]) -> list[str]:
    """The two lines of the official ``global_results.csv`` (three decimals, NaN as an empty field)."""
    values = ["" if math.isnan(summary[c]) else f"{summary[c]:.3f}" for c in GLOBAL_COLUMNS]
    return [",".join(GLOBAL_COLUMNS), ",".join(values)]


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN: write it as null (the official decay can be NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def summary_dict(result: EvalResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything a reader needs to trust the numbers: protocol, global values, per-object statistics."""
    per_object = [dict(zip(PER_OBJECT_COLUMNS, _object_row(scores)), object_id=scores.object_id,
                       sequence=scores.sequence) for scores in result.objects]
    summary = {
        "protocol": {
            "task": "semi-supervised (DAVIS-2017 definitions)",
            "objects": result.object_policy,
            "decay_bin_edges": result.decay_mode,
            "scored_frames": "annotated frames except the first and last of each sequence"
                             + ("; late objects from the annotated frame after their first appearance"
                                if result.object_policy == "all" else ""),
        },
        "global": result.summary,
        "n_sequences": len(result.sequences),
        "n_objects": len(result.objects),
        "unscored_objects": list(result.unscored_objects),
        "per_object": per_object,
    }
    summary.update(extra or {})
    return _finite_or_none(summary)


def write_reports(result: EvalResult, out_dir: Path, extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write the global CSV, the per-object CSV and the JSON summary into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"global": out_dir / GLOBAL_CSV, "per_sequence": out_dir / PER_SEQUENCE_CSV,
             "summary": out_dir / SUMMARY_JSON}
    paths["global"].write_text("\n".join(global_csv_lines(result.summary)) + "\n")
    with paths["per_sequence"].open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(PER_OBJECT_COLUMNS)
        writer.writerows(_object_row(scores) for scores in result.objects)
    paths["summary"].write_text(json.dumps(summary_dict(result, extra), indent=2) + "\n")
    return paths


def format_table(result: EvalResult, per_object: bool = True) -> str:
    """A fixed-width text table: one row per object (optional), then the global row."""
    headers = ["Sequence", "J&F", "J-Mean", "J-Rec", "J-Decay", "F-Mean", "F-Rec", "F-Decay", "Frames"]
    rows = []
    if per_object:
        for scores in result.objects:
            j, f = scores.j_stats, scores.f_stats
            rows.append([scores.name, (j.mean + f.mean) / 2, j.mean, j.recall, j.decay, f.mean, f.recall, f.decay,
                         len(scores.j)])
    g = result.summary
    total_frames = sum(len(scores.j) for scores in result.objects)
    global_row = [f"Global ({len(result.objects)} objects)", g["J&F-Mean"], g["J-Mean"], g["J-Recall"],
                  g["J-Decay"], g["F-Mean"], g["F-Recall"], g["F-Decay"], total_frames]
    cells = [[_cell(v) for v in row] for row in rows + [global_row]]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    separator = "  ".join("-" * w for w in widths)
    body = [line(headers), separator] + [line(row) for row in cells[:-1]]
    if rows:
        body.append(separator)
    body.append(line(cells[-1]))
    return "\n".join(body)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)
