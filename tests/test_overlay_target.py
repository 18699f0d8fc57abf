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


# -- one overlay, one writer: a second run naming the same overlay is refused while the first writes it -------------

needs_locks = pytest.mark.skipif(__import__("longvos.io.locks", fromlist=["fcntl"]).fcntl is None,
                                 reason="files cannot be locked here (no fcntl): overlays go unguarded")


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


@needs_locks
def test_a_second_writer_of_the_same_overlay_is_refused_until_the_first_closes(tmp_path):
    from longvos.engine.outputs import is_temporary
    from longvos.io.errors import InputError
    from longvos.io.overlay import OverlayWriter

    target = tmp_path / "shared.mp4"
    first = OverlayWriter(target, 24)
    (tmp_path / "alias").symlink_to(tmp_path, target_is_directory=True)  # the same file, spelt otherwise
    with pytest.raises(InputError) as refusal:  # refused at once, before any frame
        OverlayWriter(tmp_path / "alias" / "shared.mp4", 24)
    message = str(refusal.value)
    assert message.startswith("overlay ") and "shared.mp4 is being written by another longvos run; give another " \
        "path" in message and "\n" not in message, message
    image, ids = np.zeros((6, 8, 3), np.uint8), np.zeros((6, 8), np.uint8)
    first.write(image, ids)  # the held temporary is the file being encoded: still refused mid-way
    with pytest.raises(InputError, match="being written by another longvos run"):
        OverlayWriter(target, 24)
    assert [name for name in _leftovers(tmp_path) if is_temporary(name)] == [".shared.partial.mp4"]
    first.close()
    assert target.is_file() and _leftovers(tmp_path) == []
    second = OverlayWriter(tmp_path / "other.mp4", 24)
    second.discard()  # discarded before any frame: nothing left, the name free again
    assert _leftovers(tmp_path) == []
    third = OverlayWriter(tmp_path / "other.mp4", 24)
    third.close()  # closed with no frame: nothing written, nothing left
    assert _leftovers(tmp_path) == [] and not (tmp_path / "other.mp4").exists()
    OverlayWriter(tmp_path / "other.mp4", 24).discard()


@needs_locks
def test_a_discarded_or_dropped_writer_lets_the_overlay_go(tmp_path):
    from longvos.io.errors import InputError
    from longvos.io.overlay import OverlayWriter

    target = tmp_path / "shared.mp4"
    writer = OverlayWriter(target, 24)
    writer.write(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), np.uint8))
    with pytest.raises(InputError, match="being written by another longvos run"):
        OverlayWriter(target, 24)
    writer.discard()
    assert _leftovers(tmp_path) == [] and not target.exists()
    dropped = OverlayWriter(target, 24)  # a run refused after making it, which never closes nor discards it
    with pytest.raises(InputError, match="being written by another longvos run"):
        OverlayWriter(target, 24)
    del dropped  # released, and its empty temporary removed, when it is collected
    assert _leftovers(tmp_path) == []
    OverlayWriter(target, 24).close()
    assert _leftovers(tmp_path) == []


@needs_locks
def test_a_killed_runs_temporary_does_not_block_the_overlay(tmp_path):
    from longvos.io.errors import InputError
    from longvos.io.overlay import OverlayWriter
    from longvos.io.video import open_video

    target = tmp_path / "shared.mp4"
    (tmp_path / ".shared.partial.mp4").write_bytes(b"half a video from a killed run" * 100)  # locked by no one
    writer = OverlayWriter(target, 24)  # takes it over, and holds it
    with pytest.raises(InputError, match="being written by another longvos run"):
        OverlayWriter(target, 24)
    for _ in range(2):
        writer.write(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), np.uint8))
    writer.close()
    assert len(open_video(target)) == 2 and _leftovers(tmp_path) == []


@needs_locks
def test_a_run_naming_an_overlay_another_run_writes_is_refused_in_one_line(clip, tmp_path, capsys):
    from longvos.io.overlay import OverlayWriter

    video, mask = clip
    shared = tmp_path / "shared.mp4"
    other = OverlayWriter(shared, 24)  # another run, writing into its own output folder, draws this overlay
    message = refused([video, "--mask", mask, "--out", tmp_path / "o", "--overlay", shared], capsys)
    assert f"overlay {shared} is being written by another longvos run; give another path" in message, message
    assert not (tmp_path / "o").exists() and not shared.exists()  # refused before anything was written
    other.discard()
    assert segment(video, "--mask", mask, "--out", tmp_path / "o", "--overlay", shared) == 0
    assert shared.is_file() and _leftovers(tmp_path) == []


def test_a_run_refused_after_its_overlay_is_checked_leaves_nothing_behind(clip, tmp_path, capsys):
    """Refused once its overlay writer holds the overlay (here: weights that cannot be read), a run lets it go
    before it lets its folder go: no output folder, no temporary, and the next run may use both."""
    video, mask = clip
    out = tmp_path / "new" / "o"
    overlay = out / "ov.mp4"  # its temporary is made in the run's folder
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    code = main(["segment", str(video), "--mask", str(mask), "--out", str(out), "--overlay", str(overlay),
                 "--checkpoint", str(bad), *FAST])
    assert code == 1 and "bad.pt" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    assert segment(video, "--mask", mask, "--out", out, "--overlay", overlay) == 0 and overlay.is_file()
