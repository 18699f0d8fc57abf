"""`longvos batch` never mixes, never escapes, never drops a row in silence: a batch folder holding a `segment` run's
files or a user's files is refused with one line whatever --resume / --overwrite say (and nothing there is deleted);
a video named like the batch's own files (batch-summary.csv, .longvos*) or with a name that leads out of --out (from a
manifest or through the Python API) fails alone; a quoted `#` video is a video, an unquoted `#` line a comment that is
reported; a path that cannot be resolved (a NUL byte) fails its row with its line number while the good rows run.
Synthetic frame folders, mavos-lite with random weights at 32 px: the refusals need no model at all."""
from __future__ import annotations

import csv
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longvos.batch import BatchOptions, WorkItem, read_manifest, run_batch
from longvos.batch.items import output_folder
from longvos.cli.main import main
from longvos.io.errors import InputError

FAST = ["--model", "mavos-lite", "--allow-random-weights", "--max-size", "32", "--devices", "cpu", "--workers", "1",
        "--threads", "1", "--quiet"]


def options() -> BatchOptions:
    return BatchOptions(model="mavos-lite", allow_random_weights=True, max_size=32, threads=1)


def make_clip(folder: Path, frames: int = 3) -> Path:
    """A frame folder of ``frames`` noise images (48x64)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(len(folder.name))
    for index in range(frames):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"{index:05d}.png")
    return folder


def make_mask(path: Path) -> Path:
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 10:40] = 1
    Image.fromarray(mask).save(path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    make_clip(root / "s1" / "vid")
    make_mask(root / "s1" / "mask.png")
    (root / "one.csv").write_text("video,mask\ns1/vid,s1/mask.png\n")
    return root


@pytest.fixture(scope="module")
def segment_run(inputs, tmp_path_factory) -> Path:
    """What `longvos segment s1/vid --mask s1/mask.png --out segout` leaves: frames and its progress record."""
    out = tmp_path_factory.mktemp("segment") / "segout"
    code = main(["segment", str(inputs / "s1" / "vid"), "--mask", str(inputs / "s1" / "mask.png"), "--out", str(out),
                 "--model", "mavos-lite", "--allow-random-weights", "--max-size", "32", "--device", "cpu", "--quiet"])
    assert code == 0
    assert (out / ".longvos-progress.json").is_file() and (out / "00002.png").is_file()
    return out


def snapshot(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in sorted(folder.rglob("*"))}


def batch(manifest: Path, out: Path, *flags: str) -> int:
    return main(["batch", str(manifest), "--out", str(out), *FAST, *flags])


# -- A: a batch folder holding another run's files, or a user's --------------------------------------------------

@pytest.mark.parametrize("flags", [(), ("--resume",), ("--overwrite",)], ids=["new", "resume", "overwrite"])
def test_a_folder_holding_a_segment_run_is_refused_whatever_the_flags(inputs, segment_run, tmp_path, capsys, flags):
    out = tmp_path / "segout"
    shutil.copytree(segment_run, out)
    before = snapshot(out)
    code = batch(inputs / "one.csv", out, *flags)
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and err.startswith("longvos batch: error: ")
    assert str(out) in err and ".longvos-progress.json" in err and "segment" in err
    assert snapshot(out) == before  # nothing deleted, nothing written beside it (no v1/, no batch-summary.csv)


@pytest.mark.parametrize("resume", [False, True], ids=["overwrite", "resume"])
def test_user_files_in_the_batch_folder_are_refused_and_never_deleted(inputs, tmp_path, resume):
    """An earlier batch's video folder (its output list and a frame) beside a user's file: --overwrite used to clear
    the video folder and write beside the file, --resume wrote beside it unchecked. A folder named like the summary
    (what an older longvos left for a video named batch-summary.csv) is refused by name, not with `Is a directory`."""
    out = tmp_path / "out"
    (out / "vid").mkdir(parents=True)
    (out / "vid" / ".longvos-outputs").write_text('"00000.png"\n')
    (out / "vid" / "00000.png").write_bytes(b"png")
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(InputError, match=r"is not empty \(notes\.txt\)") as caught:
        run_batch(inputs / "one.csv", out, options(), devices=["cpu"], workers=1, resume=resume,
                  overwrite=not resume, progress=False)
    assert str(out) in str(caught.value) and "\n" not in str(caught.value)
    assert snapshot(out) == before

    (out / "notes.txt").unlink()
    (out / "batch-summary.csv").mkdir()
    (out / "batch-summary.csv" / ".longvos-progress.json").write_text("{}")
    before = snapshot(out)
    with pytest.raises(InputError, match=r"is not empty \(batch-summary\.csv\)"):
        run_batch(inputs / "one.csv", out, options(), devices=["cpu"], workers=1, resume=resume,
                  overwrite=not resume, progress=False)
    assert snapshot(out) == before


def test_overwrite_still_replaces_an_earlier_batch(inputs, tmp_path):
    """The batch's own files (video folders, the summary) and folders (empty, or a user's: their videos' concern)
    are no reason to refuse: --overwrite replaces what the earlier batch wrote, --resume skips it."""
    out = tmp_path / "out"
    first = run_batch(inputs / "one.csv", out, options(), devices=["cpu"], workers=1, progress=False)
    assert [r.status for r in first.results] == ["done"]
    (out / "empty").mkdir()  # a folder left by a video stopped before its record: holds nothing
    (out / "photos").mkdir()  # a folder of the user's: a video folder's name, left alone (as its video would be)
    (out / "photos" / "cat.jpg").write_bytes(b"jpg")
    again = run_batch(inputs / "one.csv", out, options(), devices=["cpu"], workers=1, overwrite=True, progress=False)
    assert [r.status for r in again.results] == ["done"]
    resumed = run_batch(inputs / "one.csv", out, options(), devices=["cpu"], workers=1, resume=True, progress=False)
    assert [r.status for r in resumed.results] == ["skipped"]
    assert sorted(p.name for p in out.iterdir()) == ["batch-summary.csv", "empty", "photos", "vid"]
    assert (out / "photos" / "cat.jpg").read_bytes() == b"jpg"


def test_overwrite_never_deletes_a_run_that_is_not_a_video_of_the_batch(inputs, segment_run, tmp_path):
    """A `segment` result put inside a batch folder looks like a video folder (its record, its frames): --overwrite
    deleted it; now the batch is refused and the run is kept."""
    out = tmp_path / "out"
    assert run_batch(inputs / "one.csv", out, options(), devices=["cpu"], workers=1, progress=False).ok
    shutil.copytree(segment_run, out / "myseg")
    before = snapshot(out)
    with pytest.raises(InputError, match="holds myseg: the output of a longvos run that is not a video of this batch"):
        run_batch(inputs / "one.csv", out, options(), devices=["cpu"], workers=1, overwrite=True, progress=False)
    assert snapshot(out) == before


# -- B: names taken by the batch's own files ----------------------------------------------------------------------

def test_names_of_the_batch_s_own_files_fail_their_row(tmp_path):
    (tmp_path / "m.csv").write_text("video,mask,name\n"
                                    "a.mp4,a.png,batch-summary.csv\n"
                                    "batch-summary.csv.mp4,b.png,\n"  # default name: the file name less .mp4
                                    "c.mp4,c.png,Batch-Summary.CSV\n"
                                    "d.mp4,d.png,.batch-summary.partial.csv\n"
                                    "e.mp4,e.png,.longvos-progress.json\n"
                                    "f.mp4,f.png,fine\n")
    items = read_manifest(tmp_path / "m.csv")
    assert [item.problem is None for item in items] == [False] * 5 + [True]
    assert all("taken by the batch's own files" in item.problem for item in items[:5])
    assert items[1].name == "batch-summary.csv"
    with pytest.raises(InputError, match="taken by the batch's own files"):
        output_folder(tmp_path, WorkItem("batch-summary.csv", "a.mp4", "a.png"))


# -- C: names that lead out of --out, through the API ------------------------------------------------------------

def test_api_items_cannot_write_outside_the_output_folder(inputs, tmp_path):
    video, mask = str(inputs / "s1" / "vid"), str(inputs / "s1" / "mask.png")
    items = [WorkItem("../escaped", video, mask), WorkItem(str(tmp_path / "absolute"), video, mask),
             WorkItem("", video, mask), WorkItem("..", video, mask), WorkItem("batch-summary.csv", video, mask)]
    summary = run_batch(items, tmp_path / "apiout", options(), devices=["cpu"], workers=1, progress=False)
    assert [r.status for r in summary.results] == ["failed"] * 5
    assert summary.results[0].reason == "item 1: name '../escaped' must be a plain folder name"
    assert all("\n" not in r.reason and r.reason.startswith(f"item {i}: name ") for i, r in
               enumerate(summary.results, 1))
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "absolute").exists()
    assert sorted(p.name for p in (tmp_path / "apiout").iterdir()) == ["batch-summary.csv"]
    assert (tmp_path / "apiout" / "batch-summary.csv").is_file()
    with pytest.raises(InputError, match="plain folder name"):
        output_folder(tmp_path, WorkItem("../escaped", video, mask))  # the workers' own guard


def test_api_item_with_an_unresolvable_path_fails_alone(inputs, tmp_path):
    items = [WorkItem("bad", "clip\0.mp4", str(inputs / "s1" / "mask.png"))]
    summary = run_batch(items, tmp_path / "out", options(), devices=["cpu"], workers=1, progress=False)
    (result,) = summary.results
    assert result.status == "failed" and result.reason == "item 1: path cannot be used: embedded null byte"


# -- D: comment lines, and paths that cannot be resolved -----------------------------------------------------------

def test_only_an_unquoted_hash_starts_a_comment_and_skipped_comments_are_reported(tmp_path):
    from longvos.batch import ManifestWarning

    (tmp_path / "m.csv").write_text('video,mask\n'
                                    '"#take2",s1/mask.png\n'
                                    '#take3,s1/mask.png\n'
                                    '  # an indented comment\n'
                                    'plain,s1/mask.png\n')
    with pytest.warns(ManifestWarning, match=r"m\.csv: skipped 2 comment lines \(starting with #\): lines 3, 4"):
        items = read_manifest(tmp_path / "m.csv")
    assert [(item.name, item.origin, item.problem) for item in items] == [
        ("#take2", "m.csv line 2", None), ("plain", "m.csv line 5", None)]
    assert items[0].video == str(tmp_path / "#take2")
    (tmp_path / "none.csv").write_text("video,mask\na.mp4,a.png\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no comment: nothing to report
        assert len(read_manifest(tmp_path / "none.csv")) == 1


def test_manifest_read_gives_the_skipped_comment_lines_as_data_without_a_warning(tmp_path):
    """``run_batch``'s reader: the note travels as data, so a caller shows it without catching warnings."""
    from longvos.batch import Manifest, ManifestError

    (tmp_path / "m.csv").write_text("video,mask\n" + "#old,a.png\n" * 12 + "plain,a.png\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the data is the report: no warning besides it
        manifest = Manifest.read(tmp_path / "m.csv")
    assert [item.name for item in manifest.items] == ["plain"]
    assert manifest.skipped_comment_lines == tuple(range(2, 14))
    assert manifest.note == ("m.csv: skipped 12 comment lines (starting with #): lines 2, 3, 4, 5, 6, 7, 8, 9, 10, "
                             "11 and 2 more; write a video path that starts with # in quotes")
    (tmp_path / "none.csv").write_text("video,mask\na.mp4,a.png\n")
    assert Manifest.read(tmp_path / "none.csv").note is None
    (tmp_path / "only.csv").write_text("video,mask\n#a.mp4,a.png\n")
    with pytest.raises(ManifestError, match=r"only\.csv: the manifest lists no videos \(only comment lines, which "
                                            r"start with #\)$"):
        Manifest.read(tmp_path / "only.csv")


def test_unresolvable_paths_and_unparsable_csv_rows_fail_their_row_with_its_line(tmp_path):
    (tmp_path / "m.csv").write_text("video,mask,name\n"
                                    "a\0b.mp4,a.png,\n"
                                    "c.mp4,c\0.png,see\n"
                                    '"' + "x" * 200_000 + '",big.png,\n'
                                    "good.mp4,good.png,\n")
    items = read_manifest(tmp_path / "m.csv")
    problems = {item.origin: item.problem for item in items}
    assert problems["m.csv line 2"] == "video path 'a\\x00b.mp4' cannot be used: embedded null byte"
    assert problems["m.csv line 3"] == "mask path 'c\\x00.png' cannot be used: embedded null byte"
    assert problems["m.csv line 4"].startswith("not a valid CSV row (field larger than field limit")
    assert problems["m.csv line 5"] is None
    (tmp_path / "m.jsonl").write_text('{"video": "a\\u0000.mp4", "mask": "a.png"}\n'
                                      '{"video": "g.mp4", "mask": "g.png"}\n')
    first, second = read_manifest(tmp_path / "m.jsonl")
    assert first.origin == "m.jsonl line 1" and "embedded null byte" in first.problem and second.problem is None


def test_bad_rows_fail_alone_and_the_good_ones_run(inputs, tmp_path, capsys):
    """One batch over good rows (one a quoted `#` video) and bad ones (a NUL byte, the summary's name, a video file
    named batch-summary.csv.mp4) beside a comment line: the good rows are done, each bad one fails with its line,
    the comment is reported, and the summary is written as a file (a rerun is not blocked)."""
    shutil.copytree(inputs / "s1" / "vid", tmp_path / "#take2")
    (tmp_path / "batch-summary.csv.mp4").write_bytes(b"")
    manifest = tmp_path / "m.csv"
    manifest.write_text("video,mask,name\n"
                        f"{inputs}/s1/vid,{inputs}/s1/mask.png,\n"
                        f'"#take2",{inputs}/s1/mask.png,\n'
                        f"#{inputs}/s1/vid,{inputs}/s1/mask.png,commented\n"
                        f"{inputs}/s1/v\0id,{inputs}/s1/mask.png,nul\n"
                        f"{inputs}/s1/vid,{inputs}/s1/mask.png,batch-summary.csv\n"
                        f"batch-summary.csv.mp4,{inputs}/s1/mask.png,\n")
    out = tmp_path / "out"
    code = batch(manifest, out)
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert "note: m.csv: skipped 1 comment line (starting with #): line 4" in captured.err
    with open(out / "batch-summary.csv") as file:
        rows = list(csv.DictReader(file))
    assert [(row["name"], row["status"]) for row in rows] == [
        ("vid", "done"), ("#take2", "done"), ("<m.csv line 5>", "failed"), ("batch-summary.csv", "failed"),
        ("batch-summary.csv", "failed")]
    assert rows[2]["reason"] == "m.csv line 5: video path " + repr(f"{inputs}/s1/v\0id") + \
        " cannot be used: embedded null byte"
    assert rows[3]["reason"].startswith("m.csv line 6: name 'batch-summary.csv' is taken by the batch's own files")
    assert rows[4]["reason"].startswith("m.csv line 7: name 'batch-summary.csv' is taken")
    assert sorted(p.name for p in out.iterdir()) == ["#take2", "batch-summary.csv", "vid"]
    assert (out / "batch-summary.csv").is_file()
    assert batch(manifest, out, "--resume") == 1  # the rerun runs: done rows skipped, bad rows fail again
    assert "2 skipped, 3 failed" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--mem-gap", "0"], "mem_gap must be >= 1 frame, got 0"),
    (["--memory", "bogus"], "unknown memory design 'bogus'"),
    (["--dtype", "bogus"], "unknown dtype 'bogus'"),
    (["--checkpoint", "MASK"], "MASK"),
], ids=["mem-gap", "memory", "dtype", "checkpoint"])
def test_options_that_fail_every_video_are_one_line_before_any_runs(inputs, tmp_path, capsys, flags, message):
    """They spawned the workers and failed each video with the same reason (a table of failures, exit 1)."""
    mask = str(inputs / "s1" / "mask.png")
    flags = [mask if flag == "MASK" else flag for flag in flags]
    out = tmp_path / "out"
    assert batch(inputs / "one.csv", out, *flags) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("longvos batch: error:"), err
    assert message.replace("MASK", mask) in lines[0], err
    assert not out.exists()  # refused before the folder was made


def test_a_video_given_through_a_link_is_named_after_the_link(inputs, tmp_path):
    """cam1 and cam2, two links to one folder, were both named after the target (the second then failed as a
    duplicate): the default name is the file or folder name as the manifest writes it."""
    links = tmp_path / "links"
    links.mkdir()
    for name in ("cam1", "cam2"):
        (links / name).symlink_to(inputs / "s1" / "vid", target_is_directory=True)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video,mask\nlinks/cam1,{inputs}/s1/mask.png\nlinks/cam2/,{inputs}/s1/mask.png\n"
                        f"{inputs}/s1/vid/.,{inputs}/s1/mask.png\n")
    assert [item.name for item in read_manifest(manifest)] == ["cam1", "cam2", "vid"]
