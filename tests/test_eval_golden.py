"""J&F against the official DAVIS-2017 evaluator's numbers in ../shared/golden/davis_eval (README there).

Every set, sequence, object, per-frame value, statistic and global number of ``expected.json`` is compared, within
1e-6; integer quantities (radius, boundary pixel counts, scored frames) must match exactly. Decays are checked both
as intended (int64 bin edges) and as the official code prints them (uint8 edges, our "official-uint8" mode).
"""
from __future__ import annotations

import json
import math
from functools import lru_cache

import numpy as np
import pytest
from conftest import GOLDEN

from longvos.eval.masks import ground_truth_ids, read_index_mask
from longvos.eval.metrics import boundary_match, disk, tolerance_radius
from longvos.eval.report import global_csv_lines
from longvos.eval.scoring import evaluate
from longvos.eval.statistics import (
    SeriesStats, decay, decay_bin_edges, decay_official_uint8, global_summary, official_uint8_bin_edges,
)

FIXTURE = GOLDEN / "davis_eval"
TOL = 1e-6


@lru_cache(maxsize=1)
def expected() -> dict:
    with open(FIXTURE / "expected.json") as file:
        return json.load(file)


def _set_names() -> list[str]:
    try:
        return list(expected()["sets"])
    except FileNotFoundError:
        return ["<golden fixture missing>"]  # the test then fails loudly instead of silently collecting nothing


@lru_cache(maxsize=None)
def scored(set_name: str):
    spec = expected()["sets"][set_name]
    return evaluate(FIXTURE / spec["gt_dir"], FIXTURE / spec["pred_dir"], spec["sequences"], workers=1)


def assert_close(actual: float, wanted: float | None, what: str) -> None:
    if wanted is None:  # JSON null = NaN
        assert math.isnan(actual), f"{what}: expected NaN, got {actual}"
    else:
        assert abs(actual - wanted) <= TOL, f"{what}: {actual} != {wanted}"


def test_constants():
    constants = expected()["constants"]
    for size, radius in constants["tolerance_radius_examples"].items():
        width, height = map(int, size.split("x"))
        assert tolerance_radius(height, width) == radius, size
    assert np.array_equal(disk(8), np.array(constants["disk_8"], dtype=np.uint8))
    assert int(disk(8).sum()) == 197


def test_decay_unit_cases():
    cases = expected()["decay_unit_tests"]["cases"]
    assert len(cases) == 23
    for case in cases:
        n = case["N"]
        i = np.arange(n)
        values = ((7 * i) % 11) / 10 * 0.5 + (n - i) / n * 0.5
        assert decay_bin_edges(n).tolist() == case["bin_edges_int64"], n
        assert official_uint8_bin_edges(n).tolist() == case["bin_edges_official_uint8_x86_64"], n
        assert_close(decay(values), case["decay_int64"], f"N={n} int64 decay")
        assert_close(decay_official_uint8(values), case["decay_official_numpy2"], f"N={n} official decay")


def test_official_decay_breaks_where_the_scan_says():
    """The uint8 decay is correct below 256 frames, then alternates NaN / wrong exactly as scanned (numpy 2)."""
    for first, last, status in expected()["decay_unit_tests"]["official_behaviour_by_N"]["numpy2"]:
        for n in range(first, last + 1):
            i = np.arange(n)
            values = ((7 * i) % 11) / 10 * 0.5 + (n - i) / n * 0.5
            official, intended = decay_official_uint8(values), decay(values)
            got = "nan" if math.isnan(official) else ("ok" if abs(official - intended) < 1e-12 else "wrong")
            assert got == status, f"N={n}: {got}, scan says {status}"


@pytest.mark.parametrize("set_name", _set_names())
def test_golden_set(set_name):
    spec = expected()["sets"][set_name]
    result = scored(set_name)
    assert result.sequences == tuple(spec["sequences"])
    assert sorted(o.name for o in result.objects) == sorted(spec["objects"])
    objects_per_sequence = {name: sum(o.sequence == name for o in result.objects) for name in result.sequences}
    for scores in result.objects:
        want = spec["objects"][scores.name]
        what = f"{set_name}/{scores.name}"
        assert objects_per_sequence[scores.sequence] == want["n_objects_in_sequence"], what
        assert len(scores.j) == len(scores.f) == want["n_scored_frames"], what
        assert scores.frame_names[0] == want["first_scored_frame"], what
        assert scores.frame_names[-1] == want["last_scored_frame"], what
        np.testing.assert_allclose(scores.j, want["J"], rtol=0, atol=TOL, err_msg=f"{what} J")
        np.testing.assert_allclose(scores.f, want["F"], rtol=0, atol=TOL, err_msg=f"{what} F")
        assert decay_bin_edges(len(scores.j)).tolist() == want["decay_bin_edges_int64"], what
        assert official_uint8_bin_edges(len(scores.j)).tolist() == want["decay_bin_edges_official_uint8"], what
        for stats, metric in ((scores.j_stats, "J"), (scores.f_stats, "F")):
            assert_close(stats.mean, want[f"{metric}-Mean"], f"{what} {metric}-Mean")
            assert_close(stats.recall, want[f"{metric}-Recall"], f"{what} {metric}-Recall")
            assert_close(stats.decay, want[f"{metric}-Decay_int64"], f"{what} {metric}-Decay_int64")
        assert_close(SeriesStats.of(scores.j, "official-uint8").decay, want["J-Decay"], f"{what} J-Decay")
        assert_close(SeriesStats.of(scores.f, "official-uint8").decay, want["F-Decay"], f"{what} F-Decay")

    intended = result.summary
    official = global_summary([SeriesStats.of(o.j, "official-uint8") for o in result.objects],
                              [SeriesStats.of(o.f, "official-uint8") for o in result.objects])
    for column, value in spec["global"].items():
        assert_close(official[column], value, f"{set_name} global {column}")
        if "Decay" not in column:
            assert_close(intended[column], value, f"{set_name} global {column}")
    for column in ("J-Decay", "F-Decay"):
        assert_close(intended[column], spec["global_decay_int64"][f"{column}_int64"], f"{set_name} {column} int64")
    assert global_csv_lines(official) == spec["official_cli_global_csv"]


def test_official_uint8_mode_end_to_end():
    """``decay="official-uint8"`` reproduces the official (broken) long-video decay through the public API."""
    spec = expected()["sets"]["long"]
    result = evaluate(FIXTURE / spec["gt_dir"], FIXTURE / spec["pred_dir"], spec["sequences"],
                      decay="official-uint8", workers=1)
    for column, value in spec["global"].items():
        assert_close(result.summary[column], value, f"long global {column}")


def test_multiprocess_scoring_matches_in_process():
    spec = expected()["sets"]["multiobj_swap"]
    parallel = evaluate(FIXTURE / spec["gt_dir"], FIXTURE / spec["pred_dir"], spec["sequences"], workers=2)
    serial = scored("multiobj_swap")
    assert [o.name for o in parallel.objects] == [o.name for o in serial.objects]
    for a, b in zip(parallel.objects, serial.objects):
        assert np.array_equal(a.j, b.j) and np.array_equal(a.f, b.f) and a.frame_names == b.frame_names
    assert parallel.summary == serial.summary


def _debug_cases() -> list[tuple[str, str]]:
    try:
        return [(set_name, name) for set_name, spec in expected()["sets"].items()
                for name, obj in spec["objects"].items() if "debug_per_frame" in obj]
    except FileNotFoundError:
        return [("<golden fixture missing>", "")]


@pytest.mark.parametrize("set_name,object_name", _debug_cases())
def test_boundary_counts_are_exact(set_name, object_name):
    """Radius, boundary pixel counts, matches, intersection and union: integers, compared exactly."""
    spec = expected()["sets"][set_name]
    want = spec["objects"][object_name]
    sequence = want["sequence"]
    object_id = want["object_id"]
    gt_dir, pred_dir = FIXTURE / spec["gt_dir"] / sequence, FIXTURE / spec["pred_dir"] / sequence
    frames = sorted(p.name for p in gt_dir.glob("*.png"))[1:-1]
    assert len(frames) == len(want["debug_per_frame"])
    for frame, debug in zip(frames, want["debug_per_frame"]):
        gt_HW = ground_truth_ids(gt_dir / frame) == object_id
        pred_HW = read_index_mask(pred_dir / frame) == object_id
        match = boundary_match(pred_HW, gt_HW)
        got = {"bound_pix": match.radius, "n_pred_boundary": match.n_pred, "n_gt_boundary": match.n_gt,
               "n_pred_boundary_matched": match.n_pred_matched, "n_gt_boundary_matched": match.n_gt_matched,
               "intersection": int((pred_HW & gt_HW).sum()), "union": int((pred_HW | gt_HW).sum())}
        assert got == debug, f"{set_name}/{object_name} frame {frame}"
