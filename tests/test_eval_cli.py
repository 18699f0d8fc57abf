"""`longvos eval`: scoring a prediction folder, and the end-to-end run of a model over the dev set."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import DEV, GOLDEN
from PIL import Image

from longvos.cli.main import main
from longvos.eval.masks import ground_truth_ids, read_raw_ids
from longvos.eval.scoring import evaluate

FIXTURE = GOLDEN / "davis_eval"


def davis_layout(root: Path, source: Path, sequences: list[str], frames: int | None = None) -> Path:
    """A DAVIS-layout view (symlinks) of ``source`` restricted to some sequences and their first frames."""
    for sequence in sequences:
        for kind, pattern in (("JPEGImages", "*.jpg"), ("Annotations", "*.png")):
            folder = source / kind / sequence
            if not folder.is_dir():
                continue
            target = root / kind / sequence
            target.mkdir(parents=True)
            for path in sorted(folder.glob(pattern))[:frames]:
                (target / path.name).symlink_to(path)
    return root


def test_eval_pred_matches_the_official_numbers(tmp_path, capsys):
    spec = json.loads((FIXTURE / "expected.json").read_text())["sets"]["osvos"]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "Annotations").symlink_to(FIXTURE / "gt")
    code = main(["eval", str(tmp_path / "data"), "--pred", str(FIXTURE / "pred" / "osvos"), "--sequences",
                 ",".join(spec["sequences"]), "--out", str(tmp_path / "out"), "-j", "2", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Global (3 objects)" in printed and "bmx-trees_1" in printed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for column in ("J&F-Mean", "J-Mean", "J-Recall", "F-Mean", "F-Recall"):
        assert summary["global"][column] == pytest.approx(spec["global"][column], abs=1e-12)
    assert summary["global"]["J-Decay"] == pytest.approx(spec["global_decay_int64"]["J-Decay_int64"], abs=1e-12)
    assert (tmp_path / "out" / "global_results.csv").read_text().splitlines() == spec["official_cli_global_csv"]
    assert len((tmp_path / "out" / "per-sequence_results.csv").read_text().splitlines()) == 4


def test_eval_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--pred", str(tmp_path), "--quiet"]) == 1
    assert "not a DAVIS-layout dataset" in capsys.readouterr().err
    assert main(["eval", str(DEV), "--pred", str(tmp_path / "missing"), "--quiet"]) == 1
    assert "prediction folder does not exist" in capsys.readouterr().err
    assert main(["eval", str(DEV), "--pred", str(tmp_path), "--quiet"]) == 1
    assert "predictions for sequence blackswan are missing" in capsys.readouterr().err
    assert main(["eval", str(DEV), "--pred", str(tmp_path), "--checkpoint", "x.pth"]) == 1
    assert "--checkpoint only applies with --model" in capsys.readouterr().err
    for option, value in (("--max-part-distance", "0.5"), ("--max-size", "320")):
        assert main(["eval", str(DEV), "--pred", str(tmp_path), option, value]) == 1
        assert f"{option} only applies with --model" in capsys.readouterr().err
    assert main(["eval", str(DEV), "--pred", str(tmp_path), "--sequences", "nope", "--quiet"]) == 1
    assert "no ground truth for sequence(s) nope" in capsys.readouterr().err


def test_eval_finds_the_one_dataset_inside_a_folder(tmp_path, capsys):
    # `longvos eval data/dev` with data/dev/davis2016-dev inside: the dataset is found (then its predictions are
    # missing here); with two datasets inside, the error names them.
    assert main(["eval", str(DEV.parent), "--pred", str(tmp_path), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert f"dataset: {DEV}" in captured.out and "predictions for sequence blackswan are missing" in captured.err
    for name in ("set-a", "set-b"):
        (tmp_path / "data" / name / "Annotations").mkdir(parents=True)
    assert main(["eval", str(tmp_path / "data"), "--pred", str(tmp_path), "--quiet"]) == 1
    assert "holds 2 DAVIS-layout datasets (set-a, set-b); pass one of them" in capsys.readouterr().err


def test_eval_model_end_to_end_on_dev(tmp_path, capsys, one_thread):
    """Run a model over the 3 dev sequences (first 4 frames each, to stay fast), write masks, score, report speed."""
    data = davis_layout(tmp_path / "data", DEV, ["blackswan", "bmx-trees", "car-shadow"], frames=4)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no trained weights on a fresh checkout: random ones
        # --threads 1: without it eval takes the free cores (2 on an idle machine), whatever the test's torch count.
        code = main(["eval", str(data), "--model", "mavos-lite", "--max-size", "48", "--out", str(out), "-j", "1",
                     "--dtype", "fp32", "--threads", "1", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Global (3 objects)" in printed and "FPS over 9 non-reference frames" in printed and "fp32" in printed
    for sequence in ("blackswan", "bmx-trees", "car-shadow"):
        written = sorted(p.name for p in (out / "predictions" / sequence).iterdir())
        assert written == [f"0000{i}.png" for i in range(4)]
        first_pred = read_raw_ids(out / "predictions" / sequence / "00000.png")
        assert np.array_equal(first_pred, ground_truth_ids(DEV / "Annotations" / sequence / "00000.png"))
    summary = json.loads((out / "summary.json").read_text())
    run = summary["run"]
    assert run["model"] == "mavos-lite" and run["dtype"] == "fp32" and run["torch_threads"] == 1
    assert run["timed_frames"] == 9 and run["fps"] > 0 and run["device"].startswith("cpu")
    assert run["memory"]["peak_rss_bytes"] > 0 and run["memory"]["peak_state_bytes"] > 0
    assert [s["frames"] for s in run["per_sequence"]] == [4, 4, 4]
    rescored = evaluate(data / "Annotations", out / "predictions", workers=1)
    assert summary["global"]["J&F-Mean"] == pytest.approx(rescored.summary["J&F-Mean"], abs=1e-12)


def _save(path: Path, array: np.ndarray, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert("P") if mode == "P" else image).save(path)


def sparse_late_object_dataset(data: Path) -> Path:
    """8 frames annotated on 0, 2, 3, 5, 7; object 2 enters on frame 3."""
    rng = np.random.default_rng(0)
    for t in range(8):
        _save(data / "JPEGImages" / "s" / f"{t:05d}.jpg", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), "RGB")
        if t in (0, 2, 3, 5, 7):
            ids = np.zeros((48, 64), np.uint8)
            ids[5:20, 5 + t:20 + t] = 1
            if t >= 3:
                ids[30:44, 40:56] = 2
            _save(data / "Annotations" / "s" / f"{t:05d}.png", ids, "P")
    return data


@pytest.mark.parametrize("objects", ["all", "first-frame"])
def test_eval_model_with_sparse_annotations_and_a_late_object(tmp_path, capsys, one_thread, objects):
    """--objects all gives the late object to the model when it appears and scores it afterwards; the DAVIS rule
    (first-frame) neither gives nor scores it."""
    data = sparse_late_object_dataset(tmp_path / "data")
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        code = main(["eval", str(data), "--model", "mavos-lite", "--max-size", "0", "--objects", objects,
                     "--out", str(out), "-j", "1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    predictions = sorted((out / "predictions" / "s").iterdir())
    assert len(predictions) == 8  # every frame is predicted, not only the annotated ones
    entered = read_raw_ids(out / "predictions" / "s" / "00003.png")
    frames_scored = {row["Sequence"]: row["Frames"] for row in json.loads((out / "summary.json").read_text())[
        "per_object"]}
    if objects == "all":
        assert np.array_equal(entered == 2, ground_truth_ids(data / "Annotations" / "s" / "00003.png") == 2)
        assert frames_scored == {"s_1": 3, "s_2": 1}  # object 1: frames 2, 3, 5; object 2: frame 5 (after entering)
    else:
        assert all(2 not in read_raw_ids(path) for path in predictions)
        assert frames_scored == {"s_1": 3}


def test_eval_model_predictions_never_mix_two_runs(tmp_path, capsys, one_thread, monkeypatch):
    """runs/eval/<model>/predictions is shared by every run of a model: a sequence folder holding an earlier run's
    frames (here more of them, with other content) ends up holding exactly this run's frames, and a run that stops
    part-way leaves the earlier folder as it was, with no partial folder beside it."""
    import longvos.eval.runner as runner

    data = sparse_late_object_dataset(tmp_path / "data")
    clean, out = tmp_path / "clean", tmp_path / "out"
    args = ["eval", str(data), "--model", "mavos-lite", "--max-size", "0", "-j", "1", "--quiet"]
    assert main([*args, "--out", str(clean)]) == 0, capsys.readouterr().err
    earlier = out / "predictions" / "s"
    earlier.mkdir(parents=True)
    (out / "summary.json").write_text('{"run": {"model": "mavos-lite"}}')  # the earlier run's, which kept no list
    stale = np.zeros((48, 64), np.uint8)
    stale[:, :32] = 1
    for t in range(12):  # an earlier run over a longer version of the sequence
        Image.fromarray(stale).save(earlier / f"{t:05d}.png")
    stale_files = {path.name: path.read_bytes() for path in earlier.iterdir()}

    real = runner.segment_video

    def interrupted(*call, on_frame, **options):
        def stop(frame, result):
            on_frame(frame, result)
            if frame.index == 4:
                raise KeyboardInterrupt
        return real(*call, on_frame=stop, **options)

    monkeypatch.setattr(runner, "segment_video", interrupted)
    assert main([*args, "--out", str(out)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in earlier.iterdir()} == stale_files  # untouched
    assert sorted(path.name for path in earlier.parent.iterdir()) == ["s"]  # no partial folder left

    monkeypatch.setattr(runner, "segment_video", real)
    assert main([*args, "--out", str(out)]) == 0, capsys.readouterr().err
    written = {path.name: path.read_bytes() for path in earlier.iterdir()}
    expected = {path.name: path.read_bytes() for path in (clean / "predictions" / "s").iterdir()}
    assert sorted(written) == [f"{t:05d}.png" for t in range(8)] and written == expected
    assert sorted(path.name for path in earlier.parent.iterdir()) == ["s"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global"] == json.loads((clean / "summary.json").read_text())["global"]
