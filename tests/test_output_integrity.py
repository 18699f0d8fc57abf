"""Nothing lost, nothing mixed (issue 15, items 1, 2 and 4), on small synthetic clips with the bundled mavos-lite:
a truncated mp4 is segmented up to its last decodable frame with one warning and an honest frame count (segment and
batch); a used output folder is refused without --resume/--overwrite, and --overwrite deletes only what longvos
wrote (segment, batch, demo); overlays are renamed into place only when complete, and an interrupted batch leaves no
stale summary."""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import optional_import, write_mp4
from longvos.batch import BatchOptions, run_batch
from longvos.batch.items import VideoStarted
from longvos.cli.main import main
from longvos.engine.pipeline import SegmentationError, segment_video
from longvos.io.errors import InputError
from longvos.io.masks import read_index_mask, write_index_png
from longvos.io.overlay import OverlayWriter, render_overlay
from longvos.io.video import open_video

pytestmark = pytest.mark.usefixtures("one_thread_module")

HEIGHT, WIDTH, FRAMES = 64, 96, 20
FAST = ["--max-size", "64", "--device", "cpu", "--quiet"]


def synthetic_frames(count: int = FRAMES) -> list[np.ndarray]:
    """A bright square moving right over a noisy background."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(count):
        image = rng.integers(0, 60, (HEIGHT, WIDTH, 3)).astype(np.uint8)
        x = 10 + (2 * i) % 60
        image[20:44, x:x + 24] = (230, 200, 40)
        frames.append(image)
    return frames


def first_mask() -> np.ndarray:
    ids = np.zeros((HEIGHT, WIDTH), np.uint8)
    ids[20:44, 10:34] = 1
    return ids


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, Path]:
    """A whole 20-frame mp4 and its first-frame mask."""
    folder = tmp_path_factory.mktemp("clip")
    write_index_png(folder / "mask.png", first_mask())
    return write_mp4(synthetic_frames(), folder / "clip.mp4", faststart=True), folder / "mask.png"


@pytest.fixture(scope="module")
def truncated(clip) -> tuple[Path, Path]:
    """The same mp4 cut to half its bytes: the container still lists more frames than the stream decodes."""
    video, mask = clip
    cut = video.with_name("cut.mp4")
    data = video.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    return cut, mask


def frame_pngs(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.glob("[0-9]*.png"))


# ------------------------------------------------------------------------------------------ 1. truncated videos
def test_truncated_mp4_counts_the_frames_that_decode_and_warns_once(truncated):
    source = open_video(truncated[0])
    listed = source.num_frames
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decoded = [frame.index for frame in source.frames()]
        again = [frame.index for frame in source.frames()]  # known now: no second warning
    assert decoded == again == list(range(len(decoded)))
    assert 0 < len(decoded) < listed
    assert source.num_frames == len(decoded)  # the count is what decoded, not the packets the container lists
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert (f"frame {len(decoded) - 1} ({len(decoded) - 1:05d})" in messages[0]
            and f"{len(decoded)} frames" in messages[0] and "\n" not in messages[0])


def test_segment_of_a_truncated_mp4_reports_the_true_frame_count(truncated, tmp_path, capsys):
    video, mask = truncated
    out = tmp_path / "out"
    code = main(["segment", str(video), "--mask", str(mask), "--out", str(out), *FAST])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    written = frame_pngs(out)
    assert 0 < len(written) < open_video(video).num_frames  # a fresh source lists the container's count
    assert f"segmented {len(written)} frames" in stdout
    warning_lines = [line for line in stderr.splitlines() if "warning" in line]
    assert len(warning_lines) == 1 and "ends early" in warning_lines[0], stderr
    assert f"frame {len(written) - 1} " in warning_lines[0] and f"{len(written)} frames" in warning_lines[0]
    record = json.loads((out / ".longvos-progress.json").read_text())
    assert record["completed"] == len(written)


def test_batch_of_a_truncated_mp4_reports_the_true_frame_count(truncated, clip, tmp_path):
    manifest = tmp_path / "videos.csv"
    manifest.write_text(f"video,mask,name\n{truncated[0]},{truncated[1]},cut\n{clip[0]},{clip[1]},whole\n")
    out = tmp_path / "out"
    summary = run_batch(manifest, out, BatchOptions(max_size=64, threads=1), devices=["cpu"], workers=1,
                        progress=False)
    results = {result.name: result for result in summary.results}
    assert [result.status for result in summary.results] == ["done", "done"]
    assert results["cut"].frames == len(frame_pngs(out / "cut")) < FRAMES
    assert "ends early" in results["cut"].reason
    assert results["whole"].frames == len(frame_pngs(out / "whole")) == FRAMES and not results["whole"].reason
    with open(summary.csv_path, newline="") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert int(rows["cut"]["frames"]) == len(frame_pngs(out / "cut"))


def test_reverse_on_a_truncated_mp4_starts_from_its_last_decodable_frame(truncated, tmp_path, capsys):
    video, mask = truncated
    decodable = len(list(open_video(video).frames()))
    out = tmp_path / "out"
    code = main(["segment", str(video), "--mask", str(mask), "--out", str(out), "--reverse", *FAST])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert frame_pngs(out) == [f"{i:05d}.png" for i in range(decodable)]
    assert f"segmented {decodable} frames" in stdout
    warning_lines = [line for line in stderr.splitlines() if "warning" in line]
    assert len(warning_lines) == 1 and "ends early" in warning_lines[0], stderr
    assert f"frame {decodable - 1} " in warning_lines[0]


# ------------------------------------------------------------------------------------ 2. reused output folders
def frame_folder(folder: Path, count: int) -> Path:
    """Frames named take_000.png, ... (other names than an mp4's), so two runs' masks are told apart."""
    from PIL import Image

    folder.mkdir()
    for i, image in enumerate(synthetic_frames(count)):
        Image.fromarray(image).save(folder / f"take_{i:03d}.png")
    return folder


def test_segment_refuses_a_used_folder_and_overwrite_deletes_only_longvos_files(clip, tmp_path, capsys):
    video, mask = clip
    frames = frame_folder(tmp_path / "frames", 4)
    out = tmp_path / "out"
    first = ["segment", str(frames), "--mask", str(mask), "--out", str(out), "--per-object", "--probs",
             "--overlay", str(out / "overlay.mp4"), *FAST]
    assert main(first) == 0
    (out / "notes.txt").write_text("mine")  # a file of the user's
    capsys.readouterr()

    second = ["segment", str(video), "--mask", str(mask), "--out", str(out), "--end", "3", *FAST]
    assert main(second) == 1
    stderr = capsys.readouterr().err
    assert len(stderr.strip().splitlines()) == 1 and "--resume" in stderr and "--overwrite" in stderr, stderr
    assert "Traceback" not in stderr
    assert frame_pngs(out) == [] and len(list(out.glob("take_*.png"))) == 4  # nothing was written or deleted

    # --overwrite deletes what longvos wrote, and refuses to write next to a file it did not write.
    assert main([*second, "--overwrite"]) == 1
    stderr = capsys.readouterr().err
    assert len(stderr.strip().splitlines()) == 1 and "notes.txt" in stderr and "Traceback" not in stderr, stderr
    assert sorted(path.name for path in out.iterdir() if not path.name.startswith(".")) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").rename(tmp_path / "notes.txt")

    assert main([*second, "--overwrite"]) == 0
    assert "segmented 3 frames" in capsys.readouterr().out
    assert sorted(path.name for path in out.iterdir() if not path.name.startswith(".")) == [
        "00000.png", "00001.png", "00002.png"]
    assert not (out / "objects").exists() and not (out / "probs").exists()

    # --resume still continues (here: finds the run complete) instead of being refused.
    assert main([*second, "--resume"]) == 0
    assert "segmented" not in capsys.readouterr().out.replace("segmented 0 frames", "")
    assert frame_pngs(out) == ["00000.png", "00001.png", "00002.png"]


def test_segment_video_refuses_a_used_folder(clip, tmp_path):
    video, mask = clip
    out = tmp_path / "out"
    out.mkdir()
    (out / "00000.png").write_bytes(b"an old mask")
    with pytest.raises(InputError, match="--overwrite"):
        segment_video(video, mask, out, max_size=64, end=2, device="cpu", progress=False)
    assert (out / "00000.png").read_bytes() == b"an old mask" and not (out / ".longvos-progress.json").exists()


def test_batch_refuses_a_used_folder_and_overwrite_replaces_its_results(clip, tmp_path, capsys):
    video, mask = clip
    frames = frame_folder(tmp_path / "frames", 3)
    out = tmp_path / "out"
    (tmp_path / "a.csv").write_text(f"video,mask,name\n{frames},{mask},v\n")
    (tmp_path / "b.csv").write_text(f"video,mask,name\n{video},{mask},v\n")
    flags = ["--out", str(out), "--devices", "cpu", "--workers", "1", "--threads", "1", "--max-size", "64",
             "--quiet", "--overlay", "mp4"]
    assert main(["batch", str(tmp_path / "a.csv"), *flags]) == 0
    (out / "v" / "notes.txt").write_text("mine")
    capsys.readouterr()

    assert main(["batch", str(tmp_path / "b.csv"), *flags]) == 1
    stderr = capsys.readouterr().err
    assert len(stderr.strip().splitlines()) == 1 and "--resume" in stderr and "--overwrite" in stderr, stderr
    assert len(list((out / "v").glob("take_*.png"))) == 3

    # --overwrite deletes what longvos wrote; the video whose folder still holds a file of the user's is refused.
    assert main(["batch", str(tmp_path / "b.csv"), *flags, "--overwrite"]) == 1
    assert "1 failed" in capsys.readouterr().out
    with open(out / "batch-summary.csv", newline="") as handle:
        (row,) = csv.DictReader(handle)
    assert row["status"] == "failed" and "notes.txt" in row["reason"] and "\n" not in row["reason"], row
    assert [path.name for path in (out / "v").iterdir()] == ["notes.txt"]
    assert (out / "v" / "notes.txt").read_text() == "mine"
    (out / "v" / "notes.txt").unlink()

    assert main(["batch", str(tmp_path / "b.csv"), *flags, "--overwrite"]) == 0
    assert "1 done" in capsys.readouterr().out
    assert not list((out / "v").glob("take_*.png"))
    assert frame_pngs(out / "v") == [f"{i:05d}.png" for i in range(FRAMES)]
    assert len(open_video(out / "v" / "overlay.mp4")) == FRAMES


def test_demo_refuses_a_used_folder_and_overwrite_leaves_only_the_new_masks(tmp_path, capsys):
    optional_import("skvideo", 'pip install "longvos[demo]"')
    out = tmp_path / "demo"
    flags = ["demo", "--out", str(out), "--max-size", "64", "--device", "cpu", "--quiet"]
    assert main([*flags, "--frames", "3"]) == 0
    capsys.readouterr()
    assert main([*flags, "--frames", "2"]) == 1
    stderr = capsys.readouterr().err
    assert len(stderr.strip().splitlines()) == 1 and "--overwrite" in stderr, stderr
    assert len(frame_pngs(out / "masks")) == 3

    assert main([*flags, "--frames", "2", "--overwrite"]) == 0
    assert frame_pngs(out / "masks") == ["00000.png", "00001.png"]
    assert len(open_video(out / "overlay.mp4")) == 2


def test_batch_overwrite_never_writes_into_a_folder_longvos_did_not_make(clip, tmp_path):
    """results/ holds the user's own blackswan/ (no longvos record): batch --overwrite refuses that video in one
    line and writes nothing there; the other videos run."""
    video, mask = clip
    out = tmp_path / "results"
    mine = out / "blackswan"
    mine.mkdir(parents=True)
    (mine / "00000.png").write_bytes(b"my own drawing")
    manifest = tmp_path / "videos.csv"
    manifest.write_text(f"video,mask,name\n{video},{mask},blackswan\n{video},{mask},other\n")
    summary = run_batch(manifest, out, BatchOptions(max_size=64, threads=1), devices=["cpu"], workers=1,
                        overwrite=True, progress=False)
    results = {result.name: result for result in summary.results}
    assert results["other"].status == "done" and len(frame_pngs(out / "other")) == FRAMES
    assert results["blackswan"].status == "failed", results["blackswan"]
    assert "00000.png" in results["blackswan"].reason and "\n" not in results["blackswan"].reason
    assert [path.name for path in mine.iterdir()] == ["00000.png"]  # no record, no mask written
    assert (mine / "00000.png").read_bytes() == b"my own drawing"


def test_overwrite_never_writes_over_files_longvos_did_not_write(clip, tmp_path, capsys):
    """`segment frames/ --out frames/ --overwrite` on PNG frames named like its masks: refused, frames intact."""
    from PIL import Image

    video, mask = clip
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, image in enumerate(synthetic_frames(4)):
        Image.fromarray(image).save(frames / f"{i:05d}.png")
    before = {path.name: path.read_bytes() for path in frames.iterdir()}
    code = main(["segment", str(frames), "--mask", str(mask), "--out", str(frames), "--overwrite", *FAST])
    stderr = capsys.readouterr().err
    assert code == 1 and len(stderr.strip().splitlines()) == 1 and "00000.png" in stderr, stderr
    assert "Traceback" not in stderr
    assert {path.name: path.read_bytes() for path in frames.iterdir()} == before  # nothing written or deleted

    out = tmp_path / "out"  # the library: a folder with a file of the user's beside longvos's outputs
    segment_video(video, mask, out, max_size=64, end=2, device="cpu", progress=False)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="notes.txt") as refused:
        segment_video(video, mask, out, max_size=64, end=2, device="cpu", progress=False, overwrite=True)
    assert "\n" not in str(refused.value)
    assert (out / "notes.txt").read_text() == "mine" and frame_pngs(out) == []


def test_batch_overwrite_keeps_an_overlay_longvos_did_not_log(clip, tmp_path):
    video, mask = clip
    manifest = tmp_path / "videos.csv"
    manifest.write_text(f"video,mask,name\n{video},{mask},v\n")
    out = tmp_path / "out"
    options = BatchOptions(max_size=64, threads=1)
    assert run_batch(manifest, out, options, devices=["cpu"], workers=1, progress=False).ok
    (out / "v" / "overlay.mp4").write_bytes(b"my own video")  # no overlay was asked for: not longvos's
    summary = run_batch(manifest, out, options, devices=["cpu"], workers=1, overwrite=True, progress=False)
    assert (out / "v" / "overlay.mp4").read_bytes() == b"my own video"
    assert summary.results[0].status == "failed" and "overlay.mp4" in summary.results[0].reason
    assert frame_pngs(out / "v") == []  # the earlier run's masks were deleted


def test_clear_outputs_removes_partial_files_in_per_object_folders(clip, tmp_path):
    from longvos.engine.outputs import clear_outputs

    video, mask = clip
    out = tmp_path / "out"
    segment_video(video, mask, out, max_size=64, end=3, device="cpu", progress=False, per_object=True,
                  save_probs=True)
    # What a run killed while writing leaves: temporary files beside the per-object masks and probabilities.
    (out / "objects" / "1" / ".00003.partial.png").write_bytes(b"half a mask")
    (out / "probs" / ".00003.partial.npz").write_bytes(b"half an array")
    clear_outputs(out)
    assert not (out / "objects").exists() and not (out / "probs").exists()
    assert [path.name for path in out.iterdir()] == []
    segment_video(video, mask, out, max_size=64, end=2, device="cpu", progress=False)  # not refused
    assert frame_pngs(out) == ["00000.png", "00001.png"]


def test_only_longvos_own_temporary_names_are_not_foreign(clip, tmp_path):
    """A user's file whose name merely holds ".partial" is the user's: the folder is refused (with --overwrite too)
    and nothing is deleted; the names longvos writes under before renaming (``.<stem>.partial<suffix>``,
    ``.<name>.partial``) are still its own, ignored by the refusal and deleted by the next run."""
    from longvos.engine.outputs import is_temporary
    from longvos.io.writer import partial_folder, partial_path

    video, mask = clip
    out = tmp_path / "out"
    out.mkdir()
    users = {"thesis.partial.docx": b"a chapter", "00003.partial.png": b"a drawing",
             ".notes.partial-old.txt": b"old notes"}  # hidden, but not a name longvos writes under
    for name, data in users.items():
        (out / name).write_bytes(data)
    for overwrite in (False, True):
        with pytest.raises(InputError) as refused:
            segment_video(video, mask, out, max_size=64, end=2, device="cpu", progress=False, overwrite=overwrite)
        assert all(name in str(refused.value) for name in users) and "\n" not in str(refused.value), refused.value
        assert {path.name: path.read_bytes() for path in out.iterdir()} == users  # nothing written, nothing deleted

    for name in users:
        (out / name).unlink()
    own = [partial_path(out / "00004.png"), partial_path(out / "overlay.mp4"), partial_path(out / "a.b.png")]
    for path in own:
        path.write_bytes(b"left by a killed run")
    assert all(is_temporary(path.name) for path in own) and is_temporary(partial_folder(tmp_path / "bear").name)
    segment_video(video, mask, out, max_size=64, end=2, device="cpu", progress=False)  # not refused
    assert sorted(path.name for path in out.iterdir() if not path.name.startswith(".longvos-")) == [
        "00000.png", "00001.png"]  # the temporaries were deleted


def test_demo_names_what_it_refuses_and_overwrite_never_writes_beside_foreign_files(tmp_path, capsys):
    """The demo shares the refusal of segment and batch: the message names the files; --overwrite refuses a
    folder that holds anything but an earlier demo's masks/ and overlay.mp4."""
    optional_import("skvideo", 'pip install "longvos[demo]"')
    out = tmp_path / "demo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    flags = ["demo", "--out", str(out), "--max-size", "64", "--device", "cpu", "--quiet", "--frames", "2"]
    for extra in ([], ["--overwrite"]):
        assert main([*flags, *extra]) == 1
        stderr = capsys.readouterr().err
        assert len(stderr.strip().splitlines()) == 1 and "(notes.txt)" in stderr, stderr
        assert [path.name for path in out.iterdir()] == ["notes.txt"]


def test_demo_overwrite_never_replaces_another_videos_masks(clip, tmp_path, capsys):
    """A `segment` run of another video in OUT/masks was deleted by `demo --overwrite` (the folder holds only masks/
    and overlay.mp4, as a demo's does): its record names the video, and it is refused and kept."""
    optional_import("skvideo", 'pip install "longvos[demo]"')
    video, mask = clip
    out = tmp_path / "demo"
    segment_video(video, mask, out / "masks", max_size=64, device="cpu", progress=False)
    before = sorted(path.name for path in (out / "masks").iterdir())
    flags = ["demo", "--out", str(out), "--max-size", "64", "--device", "cpu", "--quiet", "--frames", "2"]
    assert main([*flags, "--overwrite"]) == 1
    stderr = capsys.readouterr().err
    assert len(stderr.strip().splitlines()) == 1 and "not an earlier demo" in stderr, stderr
    assert sorted(path.name for path in (out / "masks").iterdir()) == before


# --------------------------------------------------------------------------- 4. atomic overlays, no stale summary
def test_overlay_appears_only_when_complete(tmp_path):
    path = tmp_path / "overlay.mp4"
    writer = OverlayWriter(path, 24.0)
    for image in synthetic_frames(3):
        writer.write(image, first_mask())
    assert not path.exists()  # an unfinished overlay never sits under the real name
    writer.close()
    assert len(open_video(path)) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.mp4"]

    unfinished = OverlayWriter(tmp_path / "other.mp4", 24.0)
    unfinished.write(synthetic_frames(1)[0], first_mask())
    unfinished.discard()
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.mp4"]


def test_an_interrupted_run_leaves_no_overlay(clip, tmp_path):
    # Long enough for the encoder to have written packets (x264 looks 40 frames ahead) when the run stops.
    video, mask = write_mp4(synthetic_frames(60), tmp_path / "long.mp4", faststart=True), clip[1]

    def interrupt(frame, _result):
        if frame.index == 55:
            raise KeyboardInterrupt

    with pytest.raises(SegmentationError):
        segment_video(video, mask, tmp_path / "out", max_size=64, device="cpu", progress=False,
                      overlay=tmp_path / "out" / "overlay.mp4", on_frame=interrupt)
    assert not (tmp_path / "out" / "overlay.mp4").exists()
    assert not list((tmp_path / "out").glob(".*partial*"))


def test_a_failed_write_names_its_file_and_the_last_frame_written(clip, tmp_path, monkeypatch, capsys):
    """A full disk fails a write on the writer thread, frames behind the model: the error names the file that could
    not be written and the last frame that was, not the frame the model had reached; a resume then completes."""
    import errno

    import longvos.engine.pipeline as pipeline

    video, mask = clip
    out = tmp_path / "out"
    real_write = pipeline.write_index_png
    writes = []

    def disk_full_at_the_fourth(path, ids, palette=None):
        writes.append(path)
        if len(writes) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, ids, palette)

    monkeypatch.setattr(pipeline, "write_index_png", disk_full_at_the_fourth)
    assert main(["segment", str(video), "--mask", str(mask), "--out", str(out), *FAST]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error, error
    assert "stopped writing, after frame 2 (00002): OSError: [Errno 28] No space left on device: " in error, error
    assert f"{out / '00003.png'}" in error and "3 frame(s) complete" in error, error
    assert frame_pngs(out) == ["00000.png", "00001.png", "00002.png"]
    monkeypatch.setattr(pipeline, "write_index_png", real_write)
    assert main(["segment", str(video), "--mask", str(mask), "--out", str(out), "--resume", *FAST]) == 0
    assert len(frame_pngs(out)) == FRAMES


def test_an_interrupted_batch_leaves_no_stale_summary(clip, tmp_path):
    video, mask = clip
    manifest = tmp_path / "videos.csv"
    manifest.write_text(f"video,mask,name\n{video},{mask},v\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "batch-summary.csv").write_text("name,status,frames,seconds,fps,worker,reason\nv,done,58,1.0,58,cpu#0,\n")

    def interrupt(event):
        if isinstance(event, VideoStarted):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch(manifest, out, BatchOptions(max_size=64, threads=1), devices=["cpu"], workers=1, resume=True,
                  progress=False, on_event=interrupt)
    assert not (out / "batch-summary.csv").exists()  # no summary that contradicts the folders


# ------------------------------------------------------------ 5. resume edge cases: records, overlays, lost masks
def decoded(path: Path) -> list[np.ndarray]:
    return [frame.image.astype(int) for frame in open_video(path).frames()]


def test_resume_of_a_complete_run_with_an_overlay_draws_it_from_the_saved_masks(clip, truncated, tmp_path, capsys):
    """The overlay drawn on the resume of a complete run shows what the run's own overlay showed; of a truncated
    mp4 (fewer frames than its container lists), it has the frames written."""
    for (video, mask), name in ((clip, "whole"), (truncated, "cut")):
        out = tmp_path / name
        args = ["segment", str(video), "--mask", str(mask), "--out", str(out), "--end", "8", *FAST]
        assert main([*args, "--overlay", str(tmp_path / f"{name}-during.mp4")]) == 0
        written = frame_pngs(out)
        capsys.readouterr()
        record = json.loads((out / ".longvos-progress.json").read_text())

        assert main([*args, "--resume", "--overlay", str(out / "after.mp4")]) == 0
        stdout, stderr = capsys.readouterr()
        assert "already complete" in stdout and "after.mp4" in stdout and f"{len(written)} saved mask(s)" in stdout
        assert "segmented" not in stdout and "Traceback" not in stderr
        after, during = decoded(out / "after.mp4"), decoded(tmp_path / f"{name}-during.mp4")
        assert len(after) == len(written) == len(during)
        # The record is the run's as it was, but for naming the overlay just drawn (a later resume may replace it).
        record["overlays"].append(str((out / "after.mp4").resolve()))
        assert frame_pngs(out) == written and json.loads((out / ".longvos-progress.json").read_text()) == record
        assert "after.mp4" in (out / ".longvos-outputs").read_text()  # --overwrite deletes it with the masks
        assert not list(out.glob(".*partial*"))
        if name == "whole":  # (the last frames of the cut file may decode differently each time: damaged data)
            # Encoding is lossy (and not bit-repeatable): each overlay is compared with the overlay drawn exactly
            # from the source frames and the saved masks.
            for image, png, a, b in zip(decoded(video), written, after, during):
                saved = read_index_mask(out / png, (HEIGHT, WIDTH), allow_empty=True)
                exact = render_overlay(image.astype(np.uint8), saved.ids, saved.palette).astype(int)
                assert np.abs(a - exact).mean() < np.abs(b - exact).mean() + 1.0, png
                inside = saved.ids != 0
                if inside.any():  # the masks are drawn: far closer to the exact overlay than to the bare frame
                    assert np.abs(a - exact)[inside].mean() < np.abs(a - image.astype(int))[inside].mean() / 2, png
    assert len(written) < 8  # the cut file decodes fewer frames than --end asks for


def test_resume_with_an_unreadable_progress_record_names_it(clip, tmp_path, capsys):
    video, mask = clip
    out = tmp_path / "out"
    args = ["segment", str(video), "--mask", str(mask), "--out", str(out), "--end", "3", *FAST]
    assert main(args) == 0
    record = out / ".longvos-progress.json"
    text = record.read_text()
    capsys.readouterr()
    completed = json.loads(text)["completed"]
    for damaged in (text[: len(text) // 2], "", "[1, 2]", text.replace('"version": 1', '"version": 0'),
                    text.replace(f'"completed": {completed}', '"completed": 1e400'), "[" * 100_000):
        record.write_text(damaged)
        assert main([*args, "--resume"]) == 1
        stderr = capsys.readouterr().err
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in stderr, stderr
        assert str(record) in lines[0] and "cannot be read" in lines[0] and "--overwrite" in lines[0], stderr
        assert "use --resume" not in lines[0], stderr
        with pytest.raises(InputError, match="progress record of the run there cannot be read"):
            segment_video(video, mask, out, max_size=64, end=3, device="cpu", progress=False, resume=True)
    assert frame_pngs(out) == ["00000.png", "00001.png", "00002.png"]  # nothing deleted
    assert main([*args, "--overwrite"]) == 0  # what the line advises works

    foreign = tmp_path / "foreign"  # --resume into a folder that holds no run: not told to use --resume
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["segment", str(video), "--mask", str(mask), "--out", str(foreign), "--resume", *FAST]) == 1
    stderr = capsys.readouterr().err
    assert len(stderr.strip().splitlines()) == 1 and "no longvos run to resume" in stderr, stderr
    assert "use --resume" not in stderr and (foreign / "notes.txt").read_text() == "mine"


def test_a_mask_for_a_listed_frame_that_does_not_decode_is_reported_unused(truncated, tmp_path, capsys):
    video, mask = truncated
    listed, decodable = open_video(video).num_frames, len(list(open_video(video).frames()))
    assert decodable < listed
    late = tmp_path / "late.png"
    ids = np.zeros((HEIGHT, WIDTH), np.uint8)
    ids[5:15, 70:90] = 2  # an object that only this mask has
    write_index_png(late, ids)
    out = tmp_path / "out"
    code = main(["segment", str(video), "--mask", str(mask), "--mask", f"{late}@{decodable}", "--out", str(out),
                 *FAST])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    warning_lines = [line for line in stderr.splitlines() if "warning" in line]
    assert len(warning_lines) == 2 and "ends early" in warning_lines[0], stderr
    unused = warning_lines[1]
    assert f"frame {decodable} ({late.resolve()})" in unused and "never used" in unused, unused
    assert f"ends at frame {decodable - 1} " in unused and "object(s) 2 were never segmented" in unused, unused
    assert f"segmented {decodable} frames" in stdout and "1 object(s)" in stdout, stdout

    with warnings.catch_warnings(record=True) as caught:  # the library says the same, and its summary agrees
        warnings.simplefilter("always")
        summary = segment_video(video, {None: mask, decodable: late}, tmp_path / "lib", max_size=64, device="cpu",
                                progress=False)
    assert summary.frames == decodable and summary.object_ids == [1]
    assert sum("never used" in str(w.message) for w in caught) == 1, [str(w.message) for w in caught]


def test_overwrite_deletes_a_file_whose_name_holds_a_line_break_and_nothing_it_seems_to_name(tmp_path):
    """A frame named ``x<newline>keep.txt`` gives an output of that name; the output list must not read it as two
    names (``x`` and ``keep.txt``), or ``--overwrite`` would delete the user's ``keep.txt``."""
    from longvos.engine.outputs import clear_outputs, log_outputs
    out = tmp_path / "out"
    out.mkdir()
    odd = "x\nkeep.txt"
    log_outputs(out, odd, "00001.png")
    (out / odd).write_bytes(b"mask")
    (out / "00001.png").write_bytes(b"mask")
    (out / "keep.txt").write_text("the user's")
    (out / "x").write_text("the user's too")
    removed = {path.name for path in clear_outputs(out)}
    assert removed == {odd, "00001.png", ".longvos-outputs"}
    assert (out / "keep.txt").read_text() == "the user's" and (out / "x").is_file()


def test_an_output_list_of_plain_lines_is_still_read(tmp_path):
    """Lists written before names were JSON-quoted (one plain name per line) still name their files."""
    from longvos.engine.outputs import clear_outputs
    out = tmp_path / "out"
    out.mkdir()
    (out / ".longvos-outputs").write_text("00000.png\nobjects/1/00000.png\n")
    (out / "00000.png").write_bytes(b"mask")
    (out / "objects" / "1").mkdir(parents=True)
    (out / "objects" / "1" / "00000.png").write_bytes(b"mask")
    (out / "mine.png").write_bytes(b"user")
    clear_outputs(out)
    assert sorted(path.name for path in out.rglob("*")) == ["mine.png"]


def test_resume_of_a_truncated_video_stopped_after_its_last_decodable_frame_completes(truncated, tmp_path):
    """The snapshot lies where the stream ends early (the container lists more frames): checking it reads past the
    end, which shortens the video; the resume must then find no frame left and finish, not ask for frames that do
    not decode. Its masks equal an uninterrupted run's."""
    video, mask = truncated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decodable = len(list(open_video(video).frames()))
    options = dict(max_size=64, device="cpu", progress=False, snapshot_every=decodable)

    def stop_at_the_last(frame, result):
        if frame.index == decodable - 1:
            raise KeyboardInterrupt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segment_video(video, mask, tmp_path / "whole", **options)
        with pytest.raises(SegmentationError):
            segment_video(video, mask, tmp_path / "resumed", on_frame=stop_at_the_last, **options)
        summary = segment_video(video, mask, tmp_path / "resumed", resume=True, **options)
    assert summary.restored_from == decodable and summary.frames == 0
    assert json.loads((tmp_path / "resumed" / ".longvos-progress.json").read_text())["done"] is True
    names = frame_pngs(tmp_path / "whole")
    assert len(names) == decodable and frame_pngs(tmp_path / "resumed") == names
    for name in names:
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
