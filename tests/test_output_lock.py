"""Nothing mixed, for runs at the same time: a run holds its output folder from before it judges what the folder
holds until its last file is written, and a second run into the same folder meanwhile (segment, the API, a batch
video) is refused at once with one line naming the running process, whatever ``--resume``/``--overwrite`` say.
The lock is the operating system's: a run killed outright leaves a lock file that blocks nothing, and a run that
ends leaves none.

The running run is a real ``segment_video`` in a subprocess, paused (on a file the test creates) at the moment that
matters: while its model loads (its folder still empty: the moment two runs started together both used to pass the
checks) or after its first frame.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longvos.batch import BatchOptions, run_batch
from longvos.cli.main import main
from longvos.engine.options import SegmentOptions
from longvos.engine.outputs import LOCK_FILE, OUTPUTS_FILE, hold_output_folder
from longvos.engine.pipeline import segment_video
from longvos.io.errors import InputError
from longvos.io.masks import write_index_png

pytestmark = [pytest.mark.usefixtures("one_thread_module"),
              pytest.mark.skipif(sys.platform == "win32", reason="Windows has no flock: runs go unguarded there")]

HEIGHT, WIDTH, FRAMES = 48, 64, 4
SETTINGS = {"max_size": 64, "device": "cpu", "threads": 1, "progress": False}
FAST = ["--max-size", "64", "--device", "cpu", "--threads", "1", "--quiet"]

#: A run of ``segment_video`` that pauses where argv says ("model": before its model loads; "frame": once its first
#: mask is on disk) until the file ``<flag>`` exists, after creating ``<flag>.paused``.
HOLDER = """
import sys, time
from pathlib import Path
from longvos.engine.options import SegmentOptions
from longvos.engine.pipeline import segment_video

video, mask, out, pause_at, flag = sys.argv[1:6]
out, flag = Path(out), Path(flag)

def pause(wait_for=None):
    deadline = time.monotonic() + 120
    while wait_for is not None and not wait_for.exists():
        time.sleep(0.005)
    flag.with_name(flag.name + ".paused").touch()
    while not flag.exists():
        if time.monotonic() > deadline:
            sys.exit("never let go on")
        time.sleep(0.01)

if pause_at == "model":
    load = SegmentOptions.load_segmenter
    SegmentOptions.load_segmenter = lambda self: (pause(), load(self))[1]
seen = []
def on_frame(frame, result):
    if pause_at == "frame" and not seen:
        seen.append(frame.name)
        pause(out / f"{frame.name}.png")
segment_video(video, mask, out, max_size=64, device="cpu", threads=1, progress=False, on_frame=on_frame)
"""


def make_frames(folder: Path, prefix: str, seed: int) -> Path:
    """``FRAMES`` frames named ``<prefix>_000.png``, ... (the names tell two runs' masks apart); returns the mask."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for index in range(FRAMES):
        image = rng.integers(0, 60, (HEIGHT, WIDTH, 3)).astype(np.uint8)
        image[10:30, 8 + 3 * index:28 + 3 * index] = (230, 200, 40)
        Image.fromarray(image).save(folder / f"{prefix}_{index:03d}.png")
    ids = np.zeros((HEIGHT, WIDTH), np.uint8)
    ids[10:30, 8:28] = 1
    write_index_png(folder.parent / f"{prefix}_mask.png", ids)
    return folder.parent / f"{prefix}_mask.png"


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Two clips whose masks have other names: ``a`` (a_000.png, ...) and ``b`` (b_000.png, ...)."""
    root = tmp_path_factory.mktemp("clips")
    return {name: (root / name, make_frames(root / name, name, seed)) for seed, name in enumerate("ab")}


@pytest.fixture(scope="module")
def reference(clips, tmp_path_factory) -> dict[str, bytes]:
    """The masks of an uninterrupted run of clip ``a`` that had its folder to itself."""
    out = tmp_path_factory.mktemp("reference") / "out"
    segment_video(*clips["a"], out, **SETTINGS)
    return masks(out)


def masks(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.glob("*.png"))}


class Holder:
    """A ``segment_video`` of clip ``a`` into ``out`` in another process, paused at ``pause_at``."""

    def __init__(self, clip: tuple[Path, Path], out: Path, pause_at: str, tmp_path: Path):
        self.flag = tmp_path / f"go-{pause_at}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.process = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, clip), str(out), pause_at,
                                         str(self.flag)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        paused = self.flag.with_name(self.flag.name + ".paused")
        deadline = time.monotonic() + 120
        while not paused.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"the holding run did not pause: {self.process.communicate()[1].decode()[-2000:]}")
            time.sleep(0.01)

    def finish(self) -> None:
        self.flag.touch()
        _, stderr = self.process.communicate(timeout=120)
        assert self.process.returncode == 0, stderr.decode()[-2000:]

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.communicate(timeout=60)


def refusal_line(capsys, out: Path, pid: int) -> str:
    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0] == (f"longvos segment: error: {out} is being written by another longvos run (pid {pid}); wait "
                        f"for it or use another folder"), lines[0]
    return lines[0]


def test_two_runs_started_together_into_one_folder_the_second_is_refused_at_once(clips, reference, tmp_path,
                                                                                   capsys, monkeypatch):
    """The first run holds the folder while its model loads, the folder still empty: the second run is refused
    before its own model loads, and the first one's masks are those of a run that had the folder to itself."""
    out = tmp_path / "shared"
    first = Holder(clips["a"], out, "model", tmp_path)
    try:
        def never(self):
            raise AssertionError("the second run loaded its model")

        monkeypatch.setattr(SegmentOptions, "load_segmenter", never)
        video, mask = clips["b"]
        assert main(["segment", str(video), "--mask", str(mask), "--out", str(out), *FAST]) == 1
        refusal_line(capsys, out, first.process.pid)
        with pytest.raises(InputError, match=f"being written by another longvos run \\(pid {first.process.pid}\\)"):
            segment_video(video, mask, out, **SETTINGS)  # the API alike
    finally:
        first.finish()
    assert masks(out) == reference  # nothing of clip b's (b_000.png, ...) mixed in
    assert not (out / LOCK_FILE).exists()  # a run that ended leaves no lock behind


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_resume_or_overwrite_of_a_folder_a_run_is_writing_is_refused(clips, reference, tmp_path, capsys, flag):
    """A resume would write beside the running run, an overwrite delete its masks: both are refused, nothing of
    the running run's is touched, and it ends as if alone."""
    out = tmp_path / "shared"
    first = Holder(clips["a"], out, "frame", tmp_path)
    try:
        before = masks(out)
        assert list(before) == ["a_000.png"]
        video, mask = clips["a"]
        assert main(["segment", str(video), "--mask", str(mask), "--out", str(out), *FAST, flag]) == 1
        refusal_line(capsys, out, first.process.pid)
        assert masks(out) == before
    finally:
        first.finish()
    assert masks(out) == reference and not (out / LOCK_FILE).exists()


def test_the_lock_file_of_a_killed_run_blocks_nothing(clips, reference, tmp_path, capsys):
    """SIGKILL cleans nothing up: the lock file stays, but the operating system has let its lock go, so that
    ``--resume`` continues the run (to the same masks) and removes the file when it ends."""
    out = tmp_path / "out"
    Holder(clips["a"], out, "frame", tmp_path).kill()
    assert (out / LOCK_FILE).exists() and (out / "a_000.png").exists()
    video, mask = clips["a"]
    resume = ["segment", str(video), "--mask", str(mask), "--out", str(out), *FAST, "--resume"]
    # A run refused for its input leaves the folder as it found it, the killed run's lock file included.
    before = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in out.iterdir()}
    assert main([*resume, "--max-size", "32"]) == 1 and "other settings" in capsys.readouterr().err
    assert {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in out.iterdir()} == before
    assert main(resume) == 0, capsys.readouterr().err
    assert masks(out) == reference and not (out / LOCK_FILE).exists()


def test_a_folder_held_in_this_process_is_refused_too(clips, tmp_path):
    """The lock belongs to the run, not to the process: two runs in one process (the app's threads) exclude each
    other as well; once the first lets go, the folder is free and holds no lock file."""
    out = tmp_path / "out"
    with hold_output_folder(out):
        with pytest.raises(InputError, match=f"being written by another longvos run \\(pid {os.getpid()}\\)"):
            segment_video(*clips["b"], out, **SETTINGS)
        assert [path.name for path in out.iterdir()] == [LOCK_FILE]  # the refused run wrote nothing
    assert list(out.iterdir()) == []
    segment_video(*clips["b"], out, **SETTINGS)
    assert sorted(masks(out)) == [f"b_{index:03d}.png" for index in range(FRAMES)]
    assert not (out / LOCK_FILE).exists()


def test_a_run_holding_a_killed_runs_lock_file_is_named_without_the_killed_runs_id(clips, tmp_path):
    """A run that holds a lock file a killed run left does not rewrite it: the process id in it (the killed run's)
    is not named as the holder's."""
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text("999999999\n")  # no process has this id (above Linux's and macOS's largest)
    with hold_output_folder(out):
        with pytest.raises(InputError) as refused:
            segment_video(*clips["b"], out, **SETTINGS)
    assert str(refused.value) == f"{out} is being written by another longvos run; wait for it or use another folder"


def test_a_batch_video_whose_folder_a_run_holds_fails_with_the_reason(clips, tmp_path):
    """Batch workers (other processes) run segment_video: a video whose folder another run holds fails with the
    one-line reason, and the batch writes nothing into it."""
    manifest = tmp_path / "videos.csv"
    manifest.write_text(f"video,mask,name\n{clips['a'][0]},{clips['a'][1]},v\n")
    out = tmp_path / "batch"
    with hold_output_folder(out / "v"):
        summary = run_batch(manifest, out, BatchOptions(max_size=64, threads=1), devices=["cpu"], workers=1,
                            resume=True, progress=False)
        assert [path.name for path in (out / "v").iterdir()] == [LOCK_FILE]
    (result,) = summary.results
    assert result.status == "failed" and "is being written by another longvos run (pid" in result.reason, result


def test_a_batch_holds_its_folder_and_overwrite_clears_no_video_folder_a_run_holds(clips, tmp_path):
    """A second batch into a batch folder being written is refused at once; `batch --overwrite` deletes nothing in
    a video folder that a run holds (it would pull the files from under that run), and says why in one line."""
    manifest = tmp_path / "videos.csv"
    manifest.write_text(f"video,mask,name\n{clips['a'][0]},{clips['a'][1]},v\n{clips['b'][0]},{clips['b'][1]},w\n")
    out = tmp_path / "batch"
    run = dict(devices=["cpu"], workers=1, progress=False)
    with hold_output_folder(out):
        with pytest.raises(InputError, match="being written by another longvos run"):
            run_batch(manifest, out, BatchOptions(max_size=64, threads=1), **run)
    assert list(out.iterdir()) == []
    summary = run_batch(manifest, out, BatchOptions(max_size=64, threads=1), **run)
    assert [result.status for result in summary.results] == ["done", "done"]
    assert not (out / LOCK_FILE).exists()
    written = {name: sorted(masks(out / name)) for name in ("v", "w")}
    with hold_output_folder(out / "w"):  # held: nothing is cleared, in it or in the folder before it
        with pytest.raises(InputError, match="being written by another longvos run"):
            run_batch(manifest, out, BatchOptions(max_size=64, threads=1), overwrite=True, **run)
    assert {name: sorted(masks(out / name)) for name in ("v", "w")} == written
    assert not (out / LOCK_FILE).exists() and not (out / "v" / LOCK_FILE).exists()


@pytest.mark.skipif(os.name != "posix", reason="resource limits are POSIX")
def test_batch_overwrite_of_more_video_folders_than_open_files_allowed(tmp_path):
    """Each folder is held while it is checked and while it is cleared, one at a time (a lock is an open file): a
    batch of more videos than the process may open files is cleared whole."""
    import subprocess
    import sys

    out = tmp_path / "batch"
    for index in range(80):
        folder = out / f"v{index:03d}"
        folder.mkdir(parents=True)
        (folder / "00000.png").write_bytes(b"a mask")
        (folder / OUTPUTS_FILE).write_text('"00000.png"\n')
    script = ("import resource, sys; from pathlib import Path; "
              "resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1])); "
              "from longvos.batch.runner import _prepare_folder; "
              "_prepare_folder(Path(sys.argv[1]), True, {f'v{index:03d}' for index in range(80)})")
    done = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert list(out.iterdir()) == []
