"""`longvos eval --model` never deletes or writes beside files longvos did not write: a prediction folder (or an --out
folder) holding other files is refused in one line and left as it was; a rerun into its own output still works."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longvos.cli.main import main
from longvos.engine.outputs import OUTPUTS_FILE

from conftest import tiny_davis_sequence


def tiny_dataset(data: Path) -> Path:
    return tiny_davis_sequence(data, frames=4)


def run_eval(data: Path, out: Path) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights
        return main(["eval", str(data), "--model", "mavos-lite", "--max-size", "0", "--out", str(out), "-j", "1",
                     "--quiet"])


def contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def data(tmp_path) -> Path:
    return tiny_dataset(tmp_path / "data")


def test_a_prediction_folder_with_foreign_files_is_refused_and_kept(data, tmp_path, capsys, one_thread):
    out = tmp_path / "out"
    assert run_eval(data, out) == 0, capsys.readouterr().err
    capsys.readouterr()
    folder = out / "predictions" / "seq"
    assert sorted(contents(folder)) == [f"{t:05d}.png" for t in range(4)]  # masks only, the list is beside
    (folder / "notes.txt").write_text("mine")
    (folder / "other-method-00001.png").write_bytes(b"another method's mask")
    before = contents(folder)
    assert run_eval(data, out) == 1
    line = one_line(capsys.readouterr().err)
    assert str(folder) in line and "other-method-00001.png" in line and "longvos did not write" in line, line
    assert contents(folder) == before  # nothing deleted, nothing written
    assert sorted(path.name for path in folder.parent.iterdir()) == ["seq"]  # no partial folder left


def test_a_rerun_into_its_own_output_replaces_its_masks_and_lists_each_once(data, tmp_path, capsys, one_thread):
    out = tmp_path / "out"
    assert run_eval(data, out) == 0, capsys.readouterr().err
    listed = (out / OUTPUTS_FILE).read_text()
    assert '"predictions/seq/00003.png"' in listed and '"summary.json"' in listed
    first = contents(out / "predictions" / "seq")
    assert run_eval(data, out) == 0, capsys.readouterr().err
    assert contents(out / "predictions" / "seq") == first
    assert (out / OUTPUTS_FILE).read_text() == listed  # the list does not grow with every run


def test_a_folder_of_an_earlier_longvos_without_a_list(data, tmp_path, capsys, one_thread):
    """An output folder from before the list (its summary.json names the run): numbered PNGs are its masks
    (replaced), anything else is refused."""
    out = tmp_path / "out"
    folder = out / "predictions" / "seq"
    folder.mkdir(parents=True)
    (out / "summary.json").write_text('{"J&F-Mean": 0.5, "run": {"model": "mavos-lite"}}')
    for t in range(6):  # an earlier run over a longer version of the sequence
        Image.fromarray(np.zeros((48, 64), np.uint8)).save(folder / f"{t:05d}.png")
    (folder / "readme.md").write_text("mine")
    before = contents(folder)
    assert run_eval(data, out) == 1
    line = one_line(capsys.readouterr().err)
    assert str(folder) in line and "readme.md" in line and "00005.png" not in line, line
    assert contents(folder) == before
    (folder / "readme.md").unlink()
    assert run_eval(data, out) == 0, capsys.readouterr().err
    assert sorted(contents(folder)) == [f"{t:05d}.png" for t in range(4)]


def test_an_out_folder_holding_other_files_is_refused_before_the_model_runs(data, tmp_path, capsys, monkeypatch):
    import longvos.eval.runner as runner

    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    (out / "summary.json").write_text("{}")  # a report from an earlier eval (no list): eval's own name

    def never(*args, **kwargs):
        raise AssertionError("the model must not run")

    monkeypatch.setattr(runner, "segment_video", never)
    assert run_eval(data, out) == 1
    line = one_line(capsys.readouterr().err)
    assert str(out) in line and "thesis.tex" in line and "summary.json" not in line, line
    assert sorted(contents(out)) == ["summary.json", "thesis.tex"]


def test_a_file_or_link_in_place_of_a_sequence_folder_is_refused(data, tmp_path, capsys, monkeypatch):
    import longvos.eval.runner as runner

    monkeypatch.setattr(runner, "segment_video", lambda *args, **kwargs: pytest.fail("the model must not run"))
    out = tmp_path / "out"
    (out / "predictions").mkdir(parents=True)
    (out / "predictions" / "seq").write_text("mine")
    assert run_eval(data, out) == 1
    assert "predictions/seq is not a folder longvos made (a file)" in one_line(capsys.readouterr().err)
    assert (out / "predictions" / "seq").read_text() == "mine"
    (out / "predictions" / "seq").unlink()
    (tmp_path / "elsewhere").mkdir()
    (out / "predictions" / "seq").symlink_to(tmp_path / "elsewhere")
    assert run_eval(data, out) == 1
    assert "(a link)" in one_line(capsys.readouterr().err)
    assert (out / "predictions" / "seq").is_symlink()


def test_files_put_into_the_folder_during_the_run_are_never_deleted(data, tmp_path, capsys, one_thread,
                                                                    monkeypatch):
    """The folders are checked again just before they are replaced: a file added while the model ran survives."""
    import longvos.eval.runner as runner

    out = tmp_path / "out"
    assert run_eval(data, out) == 0, capsys.readouterr().err
    folder = out / "predictions" / "seq"
    real = runner.segment_video

    def meanwhile(*args, **kwargs):
        summary = real(*args, **kwargs)
        (folder / "added-meanwhile.txt").write_text("mine")
        return summary

    monkeypatch.setattr(runner, "segment_video", meanwhile)
    before = contents(folder)
    assert run_eval(data, out) == 1
    line = one_line(capsys.readouterr().err)
    assert str(folder) in line and "added-meanwhile.txt" in line, line
    assert contents(folder) == {**before, "added-meanwhile.txt": b"mine"}
    assert sorted(path.name for path in folder.parent.iterdir()) == ["seq"]  # the partial folder is removed


def test_reports_of_scored_predictions_never_replace_or_mix_with_other_files(data, tmp_path, capsys):
    """`eval --pred`: an --out holding a file longvos did not write (a user's summary.json, a segment run's masks) is
    refused in one line and left as it was; beside the predictions (no --out), only a report file longvos did not
    write there is refused; eval's own reports are replaced on a rerun."""
    pred = tmp_path / "pred"
    (pred / "seq").mkdir(parents=True)
    for frame in sorted((data / "Annotations" / "seq").glob("*.png")):  # every frame annotated: scores of 1
        (pred / "seq" / frame.name).write_bytes(frame.read_bytes())
    base = ["eval", str(data), "--pred", str(pred), "--quiet"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.json").write_text("mine")
    assert main(base + ["--out", str(mine)]) == 1
    assert "is not empty (summary.json)" in one_line(capsys.readouterr().err)
    assert contents(mine) == {"summary.json": b"mine"}
    (pred / "summary.json").write_text("mine")
    assert main(base) == 1
    assert "holds summary.json, which longvos did not write there" in one_line(capsys.readouterr().err)
    assert (pred / "summary.json").read_text() == "mine"
    (pred / "summary.json").unlink()
    scored = tmp_path / "scored"  # where eval --model would have written them: re-scored into its folder
    (scored / "predictions").mkdir(parents=True)
    (pred / "seq").rename(scored / "predictions" / "seq")
    pred = scored / "predictions"
    base = ["eval", str(data), "--pred", str(pred), "--quiet"]
    for out in ([], ["--out", str(tmp_path / "reports")], ["--out", str(scored)]):
        for _ in range(2):  # a rerun replaces its own reports
            assert main(base + out) == 0, capsys.readouterr().err
            folder = Path(out[1]) if out else pred
            assert '"J&F-Mean": 1.0' in (folder / "summary.json").read_text()
    capsys.readouterr()


def test_masks_named_like_frames_without_an_earlier_run_are_the_users(data, tmp_path, capsys, one_thread):
    """A user's own predictions copied into --out/predictions/<seq> are named like frames, as an earlier run's
    would be; without that run's summary they are refused and kept, never replaced."""
    out = tmp_path / "out"
    folder = out / "predictions" / "seq"
    folder.mkdir(parents=True)
    for frame in sorted((data / "Annotations" / "seq").glob("*.png")):
        (folder / frame.name).write_bytes(frame.read_bytes())
    before = contents(folder)
    assert run_eval(data, out) == 1
    line = one_line(capsys.readouterr().err)
    assert str(folder) in line and "00000.png" in line, line
    assert contents(folder) == before
    # Nor where an earlier run of this longvos (its output list, its summary) scored other sequences there.
    other = tiny_dataset(tmp_path / "other")
    assert run_eval(other, out.with_name("first")) == 0, capsys.readouterr().err
    shutil.copytree(folder, out.with_name("first") / "predictions" / "seq2")
    (other / "Annotations" / "seq").rename(other / "Annotations" / "seq2")
    (other / "JPEGImages" / "seq").rename(other / "JPEGImages" / "seq2")
    assert run_eval(other, out.with_name("first")) == 1
    assert "seq2" in one_line(capsys.readouterr().err)


def test_a_sequence_name_is_never_a_path(data, tmp_path, capsys):
    """`--sequences /data/Annotations/seq` joined onto the prediction root made eval write over the ground truth."""
    ground_truth = data / "Annotations" / "seq"
    before = contents(ground_truth)
    for name in (str(ground_truth), "../Annotations/seq", ".."):
        assert main(["eval", str(data), "--model", "mavos-lite", "--out", str(tmp_path / "out"), "--sequences",
                     name, "--quiet"]) == 1
        assert "sequence names must be plain folder names" in one_line(capsys.readouterr().err)
        assert main(["eval", str(data), "--pred", str(data / "Annotations"), "--sequences", name, "--quiet"]) == 1
        assert "sequence names must be plain folder names" in one_line(capsys.readouterr().err)
    assert contents(ground_truth) == before


def test_scoring_a_batch_folder_needs_its_own_out(data, tmp_path, capsys):
    """Reports written beside a batch's video folders made the batch refuse --resume and --overwrite after."""
    pred = tmp_path / "batch"
    (pred / "seq").mkdir(parents=True)
    for frame in sorted((data / "Annotations" / "seq").glob("*.png")):
        (pred / "seq" / frame.name).write_bytes(frame.read_bytes())
    (pred / "batch-summary.csv").write_text("name,status\nseq,done\n")
    assert main(["eval", str(data), "--pred", str(pred), "--quiet"]) == 1
    assert "give --out a folder for eval's reports" in one_line(capsys.readouterr().err)
    assert sorted(path.name for path in pred.iterdir()) == ["batch-summary.csv", "seq"]
    assert main(["eval", str(data), "--pred", str(pred), "--out", str(tmp_path / "reports"), "--quiet"]) == 0
    (pred / "batch-summary.csv").unlink()  # a batch cut short has no summary yet, only its videos' records
    (pred / "seq" / ".longvos-progress.json").write_text("{}")
    assert main(["eval", str(data), "--pred", str(pred), "--quiet"]) == 1
    assert "(it holds seq/.longvos-progress.json)" in one_line(capsys.readouterr().err)


def test_a_second_eval_into_a_held_folder_is_refused_at_once(data, tmp_path, capsys):
    from longvos.engine.outputs import hold_output_folder

    out = tmp_path / "out"
    with hold_output_folder(out):  # another run (here: this process) holds it
        assert run_eval(data, out) == 1
        line = one_line(capsys.readouterr().err)
    assert "is being written by another longvos run" in line, line
    assert not (out / "predictions").exists()
