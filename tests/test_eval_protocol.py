"""Scoring protocol beyond the golden fixture: sparse ground truth, objects that enter later, and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longvos.eval.metrics import boundary_f_measure, region_similarity
from longvos.eval.report import write_reports
from longvos.eval.scoring import evaluate
from longvos.io.errors import InputError, MaskError

HEIGHT, WIDTH = 60, 80


def save(path: Path, ids_HW: np.ndarray, mode: str = "P") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids_HW.astype(np.uint8), mode="L")
    if mode == "P":
        image = image.convert("P")
    elif mode == "RGB":
        image = image.convert("RGB")
    image.save(path)


def box(y0: int, x0: int, size: int = 12, object_id: int = 1, ids_HW: np.ndarray | None = None) -> np.ndarray:
    ids_HW = np.zeros((HEIGHT, WIDTH), np.uint8) if ids_HW is None else ids_HW.copy()
    ids_HW[y0:y0 + size, x0:x0 + size] = object_id
    return ids_HW


def sparse_sequence(root: Path) -> tuple[Path, Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """6 annotated frames out of 26 (every 5th); object 2 enters on 00010; predictions for every frame."""
    gt, pred = {}, {}
    for t in range(26):
        ids_HW = box(5, 2 * t)
        if t >= 10:
            ids_HW = box(35, 30, object_id=2, ids_HW=ids_HW)
        guess_HW = box(5, 2 * t + 3)  # object 1 predicted 3 px to the right
        if t >= 10:
            guess_HW = box(35 if t != 15 else 45, 30, object_id=2, ids_HW=guess_HW)  # off by 10 px on frame 15
        pred[f"{t:05d}"] = guess_HW
        save(root / "pred" / "seq" / f"{t:05d}.png", guess_HW)
        if t % 5 == 0:
            gt[f"{t:05d}"] = ids_HW
            save(root / "gt" / "seq" / f"{t:05d}.png", ids_HW)
    return root / "gt", root / "pred", gt, pred


def test_sparse_ground_truth_scores_annotated_frames_only(tmp_path):
    gt_root, pred_root, gt, pred = sparse_sequence(tmp_path)
    with pytest.raises(MaskError, match=r"00010\.png.*object id\(s\) \[2\].*objects 1\.\.1"):
        evaluate(gt_root, pred_root, workers=1)  # official rule: a prediction id above K is an error

    result = evaluate(gt_root, pred_root, objects="all", workers=1)
    first, late = result.object("seq_1"), result.object("seq_2")
    assert first.frame_names == ("00005", "00010", "00015", "00020")  # annotated, minus the first and the last
    assert late.frame_names == ("00015", "00020")  # after the frame where it entered (its reference)
    for scores in (first, late):
        for name, j, f in zip(scores.frame_names, scores.j, scores.f):
            pred_HW, gt_HW = pred[name] == scores.object_id, gt[name] == scores.object_id
            assert j == region_similarity(pred_HW, gt_HW)
            assert f == boundary_f_measure(pred_HW, gt_HW)
    assert late.j[0] < 0.3 < 0.99 < late.j[1]  # the 10 px miss on frame 15, then exact
    assert result.summary["J-Mean"] == pytest.approx((first.j.mean() + late.j.mean()) / 2)


def test_late_object_is_ignored_by_the_official_rule(tmp_path):
    gt_root, pred_root, gt, _ = sparse_sequence(tmp_path)
    for name, ids_HW in gt.items():  # predictions = ground truth without object 2 (an id above K is an error)
        save(pred_root / "seq" / f"{name}.png", np.where(ids_HW == 1, 1, 0))
    result = evaluate(gt_root, pred_root, objects="first-frame", workers=1)
    assert [o.name for o in result.objects] == ["seq_1"]
    assert result.summary["J&F-Mean"] == 1.0


def test_object_entering_on_the_last_scored_frame_has_no_score(tmp_path):
    for t in range(4):
        ids_HW = box(5, 5)
        if t >= 2:
            ids_HW = box(30, 30, object_id=3, ids_HW=ids_HW)
        save(tmp_path / "gt" / "s" / f"{t}.png", ids_HW)
        save(tmp_path / "pred" / "s" / f"{t}.png", ids_HW)
    result = evaluate(tmp_path / "gt", tmp_path / "pred", objects="all", workers=1)
    assert [o.name for o in result.objects] == ["s_1"]
    assert result.unscored_objects == ("s_3",)
    last = box(50, 60, size=6, object_id=2, ids_HW=box(30, 30, object_id=3, ids_HW=box(5, 5)))
    save(tmp_path / "gt" / "s" / "3.png", last)  # object 2 shows only on the last annotated frame
    result = evaluate(tmp_path / "gt", tmp_path / "pred", objects="all", workers=1)
    assert result.unscored_objects == ("s_2", "s_3")  # it was in neither list


def test_ground_truth_saved_as_0_and_255_is_named_as_such(tmp_path):
    """DAVIS-2016's binary masks hold 255 for the object, which DAVIS-2017's reader takes for void: the error said
    the frame had no object and advised objects='all', which then failed too."""
    for t in range(3):
        save(tmp_path / "gt" / "s" / f"{t}.png", box(5, 5, object_id=255), mode="L")
        save(tmp_path / "pred" / "s" / f"{t}.png", box(5, 5))
    with pytest.raises(InputError, match="is 255, which DAVIS reads as void.*hold 0 and 1"):
        evaluate(tmp_path / "gt", tmp_path / "pred", workers=1)


def test_frames_are_ordered_naturally(tmp_path):
    for t in (1, 2, 10):  # lexicographic order would put 10 before 2
        save(tmp_path / "gt" / "s" / f"{t}.png", box(5, 5 + t))
        save(tmp_path / "pred" / "s" / f"{t}.png", box(5, 5 + t))
    assert evaluate(tmp_path / "gt", tmp_path / "pred", workers=1).objects[0].frame_names == ("2",)


def make_dense(root: Path, frames: int = 4) -> None:
    for t in range(frames):
        save(root / "gt" / "s" / f"{t:05d}.png", box(5, 5 + t))
        save(root / "pred" / "s" / f"{t:05d}.png", box(5, 5 + t))


@pytest.mark.parametrize("damage,error,message", [
    (lambda r: (r / "pred" / "s" / "00001.png").unlink(), MaskError, r"pred/s/00001\.png: prediction file is missing"),
    (lambda r: save(r / "pred" / "s" / "00002.png", np.zeros((30, 80))), MaskError,
     r"00002\.png: prediction is 80x30 but its ground truth .*gt/s/00002\.png is 80x60"),
    (lambda r: save(r / "pred" / "s" / "00001.png", box(5, 5), mode="RGB"), MaskError,
     r"00001\.png: prediction must be a single-channel index PNG.*mode is RGB"),
    (lambda r: save(r / "pred" / "s" / "00002.png", box(5, 5, object_id=255)), MaskError,
     r"00002\.png: prediction contains object id\(s\) \[255\]"),
    (lambda r: (r / "pred" / "s" / "00001.png").write_bytes(b"not a png"), MaskError,
     r"00001\.png: cannot read prediction"),
    (lambda r: save(r / "gt" / "s" / "00000.png", np.zeros((HEIGHT, WIDTH))), InputError,
     r"00000\.png: the first annotated frame of sequence s has no object"),
    (lambda r: [p.unlink() for p in sorted((r / "gt" / "s").iterdir())[:2]], InputError,
     r"sequence s has 2 annotated frame\(s\); at least 3"),
])
def test_bad_input_names_the_problem(tmp_path, damage, error, message):
    make_dense(tmp_path)
    damage(tmp_path)
    with pytest.raises(error, match=message):
        evaluate(tmp_path / "gt", tmp_path / "pred", workers=1)


def test_missing_sequences_are_named(tmp_path):
    make_dense(tmp_path)
    with pytest.raises(InputError, match=r"no ground truth for sequence\(s\) nope"):
        evaluate(tmp_path / "gt", tmp_path / "pred", ["s", "nope"], workers=1)
    save(tmp_path / "gt" / "t" / "00000.png", box(5, 5))
    with pytest.raises(InputError, match=r"pred/t: predictions for sequence t are missing"):
        evaluate(tmp_path / "gt", tmp_path / "pred", workers=1)


def test_worker_errors_reach_the_caller(tmp_path):
    make_dense(tmp_path, frames=12)
    (tmp_path / "pred" / "s" / "00007.png").unlink()
    with pytest.raises(MaskError, match=r"00007\.png: prediction file is missing"):
        evaluate(tmp_path / "gt", tmp_path / "pred", workers=2)


def test_void_in_ground_truth_is_background(tmp_path):
    for t in range(3):
        gt_HW = box(5, 5)
        gt_HW[30:40, 30:40] = 255
        save(tmp_path / "gt" / "s" / f"{t}.png", gt_HW)
        save(tmp_path / "pred" / "s" / f"{t}.png", box(30, 30, size=10, ids_HW=box(5, 5)))  # predicts the void
    scores = evaluate(tmp_path / "gt", tmp_path / "pred", workers=1).objects[0]
    assert scores.j[0] == pytest.approx(144 / (144 + 100))


def test_reports_round_trip(tmp_path):
    gt_root, pred_root, _, _ = sparse_sequence(tmp_path)
    result = evaluate(gt_root, pred_root, objects="all", decay="official-uint8", workers=1)
    paths = write_reports(result, tmp_path / "out", {"run": {"fps": 1.5}})
    summary = json.loads(paths["summary"].read_text())
    assert summary["global"]["J&F-Mean"] == pytest.approx(result.summary["J&F-Mean"])
    assert summary["protocol"]["objects"] == "all" and summary["protocol"]["decay_bin_edges"] == "official-uint8"
    assert [row["Sequence"] for row in summary["per_object"]] == ["seq_1", "seq_2"]
    assert summary["run"] == {"fps": 1.5}
    rows = paths["per_sequence"].read_text().splitlines()
    assert rows[0].startswith("Sequence,J-Mean,F-Mean") and len(rows) == 3
    assert paths["global"].read_text().splitlines()[0] == "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"
