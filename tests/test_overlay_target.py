"""Where ``--overlay`` may write: never over the run's input video or masks, never over a file of the user's (one
line, before the model loads, nothing written); the progress record names the overlays its run drew, which are the
files a resume or ``--overwrite`` of that run may replace."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from longvos.cli.main import main
from longvos.engine.progress import PROGRESS_FILE, RunProgress

from conftest import moving_square_clip, write_mp4

FAST = ["--model", "mavos-lite", "--max-size", "64", "--device", "cpu", "--threads", "1", "--quiet"]


@pytest.fixture
def clip(tmp_path) -> tuple[Path, Path]:
    """A 4-frame mp4 of a moving square and its first frame's mask."""
    from longvos.io.video import open_video

    mask = moving_square_clip(tmp_path / "frames", frames=4, seed=3)
    frames = [frame.image for frame in open_video(tmp_path / "frames").frames()]
    return write_mp4(frames, tmp_path / "victim.mp4"), mask


def refused(args: list[object], capsys) -> str:
    """The one error line of a refused ``longvos segment``."""
    code = main(["segment", *map(str, args), *FAST])
    stderr = capsys.readouterr().err
    assert code == 1 and len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
    assert stderr.startswith("longvos segment: error: "), stderr
    return stderr.strip()


def test_the_overlay_never_replaces_the_input_video_or_a_mask(clip, tmp_path, capsys):
    video, mask = clip
    before = video.read_bytes()
    assert f"overlay {video} " in refused([video, "--mask", mask, "--out", tmp_path / "o", "--overlay", video],
                                          capsys)
    # A mask is read by content, whatever its name: one named like a video is an input all the same.
    odd_mask = tmp_path / "mask.mkv"
    odd_mask.write_bytes(mask.read_bytes())
    assert f"overlay {odd_mask} " in refused([video, "--mask", odd_mask, "--out", tmp_path / "o", "--overlay",
                                              odd_mask], capsys)
    assert video.read_bytes() == before and odd_mask.read_bytes() == mask.read_bytes()
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_the_overlay_never_replaces_a_users_file(clip, tmp_path, capsys):
    video, mask = clip
    mine = tmp_path / "mine.mp4"
    mine.write_bytes(b"the user's own video")
    message = refused([video, "--mask", mask, "--out", tmp_path / "o", "--overlay", mine], capsys)
    assert f"overlay {mine} already exists" in message, message
    assert mine.read_bytes() == b"the user's own video" and not (tmp_path / "o").exists()


def test_the_record_names_the_overlays_of_its_run(tmp_path):
    record = RunProgress({"video": "v"})
    assert record.note_overlay(tmp_path / "a" / ".." / "o.mp4") and not record.note_overlay(tmp_path / "o.mp4")
    assert record.note_overlay(tmp_path / "p.mp4")
    record.save(tmp_path)
    assert RunProgress.read(tmp_path).overlays == [str(tmp_path.resolve() / "o.mp4"), str(tmp_path.resolve() / "p.mp4")]

    saved = json.loads((tmp_path / PROGRESS_FILE).read_text())
    del saved["overlays"]  # a record of an older longvos: no overlay is its run's
    (tmp_path / PROGRESS_FILE).write_text(json.dumps(saved))
    assert RunProgress.read(tmp_path).overlays == []
    for wrong in ("o.mp4", [1], {"o.mp4": 1}):
        (tmp_path / PROGRESS_FILE).write_text(json.dumps({**saved, "overlays": wrong}))
        with pytest.raises(ValueError, match="overlays is not a list of paths"):
            RunProgress.read(tmp_path)
        assert RunProgress.load(tmp_path) is None


# -- with the pipeline: a resume or --overwrite replaces the overlay its run drew ------------------------------------

def segment(*args: object) -> int:
    return main(["segment", *map(str, args), *FAST])


def test_the_overlay_that_the_run_drew_is_replaced_by_its_resume_and_overwrite(clip, tmp_path, capsys):
    video, mask = clip
    out, overlay = tmp_path / "o", tmp_path / "ov.mp4"  # outside the output folder: only the record names it
    args = [video, "--mask", mask, "--out", out, "--overlay", overlay]
    assert segment(*args) == 0
    assert RunProgress.read(out).overlays == [str(overlay.resolve())]
    for again in (["--resume"], ["--overwrite"], ["--overwrite", "--end", "2"]):
        overlay.write_bytes(b"stale")
        assert segment(*args, *again) == 0, capsys.readouterr().err
        assert overlay.read_bytes() != b"stale"
    from longvos.io.video import open_video

    assert len(open_video(overlay)) == 2
    capsys.readouterr()
    # Another folder's run, and the run's own overlay used as its video, are refused.
    message = refused([video, "--mask", mask, "--out", tmp_path / "o2", "--overlay", overlay], capsys)
    assert "already exists" in message, message
    assert segment(overlay, "--mask", mask, "--out", out, "--overwrite", "--overlay", tmp_path / "x.mp4") == 0
    before = overlay.read_bytes()
    message = refused([overlay, "--mask", mask, "--out", out, "--overwrite", "--overlay", overlay], capsys)
    assert f"overlay {overlay} would replace {overlay}, an input of this run" in message, message
    assert overlay.read_bytes() == before


def test_the_resume_of_a_complete_run_names_the_overlay_it_draws(clip, tmp_path, capsys):
    video, mask = clip
    out, first, second = tmp_path / "o", tmp_path / "a.mp4", tmp_path / "b.mp4"
    assert segment(video, "--mask", mask, "--out", out, "--overlay", first) == 0
    assert segment(video, "--mask", mask, "--out", out, "--resume", "--overlay", second) == 0
    assert RunProgress.read(out).overlays == [str(first.resolve()), str(second.resolve())]
    assert segment(video, "--mask", mask, "--out", out, "--resume", "--overlay", first) == 0
    assert "drawn from its 4 saved mask(s)" in capsys.readouterr().out


def test_an_overlay_onto_the_input_video_or_a_mask_is_refused_naming_it(clip, tmp_path, capsys):
    video, mask = clip
    message = refused([video, "--mask", mask, "--out", tmp_path / "o", "--overlay", video], capsys)
    assert f"overlay {video} would replace {video}, an input of this run" in message, message
    odd_mask = tmp_path / "mask.mkv"
    odd_mask.write_bytes(mask.read_bytes())
    message = refused([video, "--mask", odd_mask, "--out", tmp_path / "o", "--overlay", odd_mask], capsys)
    assert f"would replace {odd_mask.resolve()}, an input" in message, message
