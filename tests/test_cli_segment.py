"""`longvos segment` end to end with mavos-mnv2 (random weights, 64 px short side) on real DAVIS footage:
frame folders, a glob and an mp4 made from them; 1 and 3 objects; masks for later frames; boxes; overlays;
resume after a failure mid-video; and a clear one-line error with a non-zero exit code for every bad input."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longvos.cli.main import main
from longvos.io.masks import read_index_mask, read_probs_npz, write_index_png
from longvos.io.palette import DAVIS_PALETTE
from longvos.io.video import open_video

from conftest import write_mp4

FAST = ["--model", "mavos-mnv2", "--allow-random-weights", "--max-size", "64", "--device", "cpu", "--dtype", "fp32",
        "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def clip(dev_dir, tmp_path_factory) -> Path:
    """The first 8 frames of car-shadow as a frame folder (a copy, so tests can damage it)."""
    folder = tmp_path_factory.mktemp("clip") / "car-shadow"
    folder.mkdir()
    for path in sorted((dev_dir / "JPEGImages" / "car-shadow").glob("*.jpg"))[:8]:
        shutil.copy(path, folder / path.name)
    return folder


def annotation(dev_dir: Path, index: int, sequence: str = "car-shadow") -> Path:
    return dev_dir / "Annotations" / sequence / f"{index:05d}.png"


def segment(*args: object, capsys=None) -> tuple[int, str, str]:
    code = main(["segment", *FAST, *map(str, args)])  # later options win, so tests can override FAST
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return code, out, err


def test_frame_folder_with_overlay_per_object_and_probs(clip, dev_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = segment(clip, "--mask", annotation(dev_dir, 0), "--out", out, "--overlay",
                                   tmp_path / "overlay.mp4", "--per-object", "--probs", capsys=capsys)
    assert code == 0, stderr
    assert "segmented 8 frames, 1 object(s)" in stdout and "fps" in stdout and "peak memory" in stdout
    assert "random" in stderr  # random weights are announced, on one line
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [f"{i:05d}.png" for i in range(8)]
    first = read_index_mask(out / "00000.png")
    assert np.array_equal(first.ids, read_index_mask(annotation(dev_dir, 0)).ids)
    assert np.array_equal(first.palette, DAVIS_PALETTE)
    assert sorted(p.name for p in (out / "objects" / "1").iterdir()) == names
    probs, ids = read_probs_npz(out / "probs" / "00005.npz")
    assert ids == [1] and probs.shape == (1, 480, 854)
    overlay = open_video(tmp_path / "overlay.mp4")
    assert len(overlay) == 8 and overlay.frame_size == (480, 854)
    assert json.loads((out / ".longvos-progress.json").read_text())["done"] is True
    assert not list(out.glob(".*partial*"))


def test_mp4_three_objects_and_an_object_that_appears_later(dev_dir, tmp_path, capsys):
    frames = [np.asarray(Image.open(p).convert("RGB").resize((214, 120)))
              for p in sorted((dev_dir / "JPEGImages" / "bmx-trees").glob("*.jpg"))[:6]]
    video = write_mp4(frames, tmp_path / "bmx.mp4")

    def small_mask(index: int) -> np.ndarray:
        ids = read_index_mask(annotation(dev_dir, index, "bmx-trees")).ids
        return np.asarray(Image.fromarray(ids).resize((214, 120), Image.NEAREST))

    first = small_mask(0)
    three = np.zeros_like(first)
    columns = np.nonzero(first.any(axis=0))[0]
    for object_id, part in zip((1, 2, 3), np.array_split(columns, 3)):
        three[:, part] = first[:, part] * object_id
    palette = DAVIS_PALETTE.copy()
    palette[1:4] = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    write_index_png(tmp_path / "m0.png", three, palette)
    write_index_png(tmp_path / "m3.png", small_mask(3) * 7)
    out = tmp_path / "out"
    code, stdout, stderr = segment(video, "--mask", tmp_path / "m0.png", "--mask", f"{tmp_path / 'm3.png'}@3",
                                   "--out", out, capsys=capsys)
    assert code == 0, stderr
    assert "6 frames, 4 object(s)" in stdout
    masks = [read_index_mask(out / f"{i:05d}.png", allow_empty=True) for i in range(6)]
    assert all(m.ids.shape == (120, 214) for m in masks)
    assert np.array_equal(masks[0].ids, three) and tuple(masks[0].palette[2]) == (0, 255, 0)  # palette kept
    assert all(7 not in m.ids for m in masks[:3]) and (masks[3].ids == 7).any()


def test_glob_reverse_with_start_and_end(clip, dev_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, stderr = segment(f"{clip}/*.jpg", "--mask", annotation(dev_dir, 6), "--start", 2, "--end", 7,
                              "--reverse", "--out", out, capsys=capsys)
    assert code == 0, stderr
    assert sorted(p.stem for p in out.glob("*.png")) == ["00002", "00003", "00004", "00005", "00006"]
    assert np.array_equal(read_index_mask(out / "00006.png").ids, read_index_mask(annotation(dev_dir, 6)).ids)


def test_box_prompt_uses_grabcut(clip, dev_dir, tmp_path, capsys):
    truth = read_index_mask(annotation(dev_dir, 0)).ids
    ys, xs = np.nonzero(truth)
    box = f"{xs.min() - 8},{ys.min() - 8},{xs.max() + 8},{ys.max() + 8}"
    out = tmp_path / "out"
    code, _, stderr = segment(clip, "--box", box, "--end", 2, "--out", out, capsys=capsys)
    assert code == 0, stderr
    first = read_index_mask(out / "00000.png").ids
    iou = ((first == 1) & (truth == 1)).sum() / ((first == 1) | (truth == 1)).sum()
    assert iou > 0.5


def test_failure_mid_video_keeps_written_frames_and_resume_finishes(clip, dev_dir, tmp_path, capsys):
    damaged = tmp_path / "clip"
    shutil.copytree(clip, damaged)
    good = (damaged / "00005.jpg").read_bytes()
    (damaged / "00005.jpg").write_bytes(good[:200])
    out = tmp_path / "out"
    code, _, stderr = segment(damaged, "--mask", annotation(dev_dir, 0), "--out", out, capsys=capsys)
    assert code == 1
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("longvos segment: error: stopped at frame 5 (00005)") and "00005.jpg" in line
    assert "5 frame(s) complete" in line
    written = sorted(out.glob("*.png"))
    assert [p.stem for p in written] == [f"{i:05d}" for i in range(5)]
    assert all(read_index_mask(p, allow_empty=True).ids.shape == (480, 854) for p in written)  # all complete
    before = {p.name: p.stat().st_mtime_ns for p in written}

    (damaged / "00005.jpg").write_bytes(good)
    (out / ".00005.partial.png").write_bytes(b"half a png")  # what a kill during a write would leave
    code, stdout, stderr = segment(damaged, "--mask", annotation(dev_dir, 0), "--out", out, "--resume",
                                   capsys=capsys)
    assert code == 0, stderr
    assert "3 frames (resumed after 5)" in stdout
    assert sorted(p.stem for p in out.glob("[0-9]*.png")) == [f"{i:05d}" for i in range(8)]
    assert {p.name: p.stat().st_mtime_ns for p in written} == before  # finished frames are not redone

    code, stdout, _ = segment(damaged, "--mask", annotation(dev_dir, 0), "--out", out, "--resume", capsys=capsys)
    assert code == 0 and "already complete" in stdout
    code, _, stderr = segment(damaged, "--mask", annotation(dev_dir, 0), "--out", out, "--resume", "--dtype", "bf16",
                              capsys=capsys)
    assert code == 1 and "other settings (dtype: 'torch.float32' -> 'torch.bfloat16')" in stderr


def bad_inputs(dev_dir: Path, clip: Path, tmp: Path) -> list[tuple[list[object], str]]:
    truth = read_index_mask(annotation(dev_dir, 0)).ids
    Image.fromarray(truth[::2, ::2]).save(tmp / "small.png")
    Image.fromarray(DAVIS_PALETTE[truth] + 3).save(tmp / "rgb.png")  # near, but not, palette colours
    Image.fromarray((np.asarray(Image.fromarray(truth * 255).resize((427, 240), Image.BILINEAR)))).resize(
        (854, 480)).save(tmp / "aa.png")
    write_index_png(tmp / "empty.png", np.zeros_like(truth))
    (tmp / "notvideo.mp4").write_bytes(b"nope")
    mask = annotation(dev_dir, 0)
    return [
        ([tmp / "missing.mp4", "--mask", mask], "missing.mp4: no such file"),
        ([tmp / "notvideo.mp4", "--mask", mask], "cannot open video"),
        ([clip, "--mask", tmp / "nomask.png"], "nomask.png: cannot read mask"),
        ([clip, "--mask", tmp / "small.png"], "mask is 427x240 but frame 0"),
        ([clip, "--mask", tmp / "rgb.png"], "not DAVIS palette colours"),
        ([clip, "--mask", tmp / "aa.png"], "anti-aliased"),
        ([clip, "--mask", tmp / "empty.png"], "has no object"),
        ([clip, "--mask", f"{mask}@20"], "frame 20, outside the frames processed [0, 8)"),
        ([clip], "nothing to segment"),
        ([clip, "--mask", mask, "--box", "1,1,50,50"], "both a mask and boxes"),
        ([clip, "--box", "1,1,50"], "four numbers"),
        ([clip, "--mask", mask, "--mask", mask], "two masks for the first frame"),
        ([clip, "--mask", mask, "--start", 9], "frame range [9, 8) is empty"),
        ([clip, "--mask", mask, "--overlay", tmp / "o.gif"], "overlay must be one of"),
        ([clip, "--mask", mask, "--checkpoint", tmp / "none.pt"], "none.pt: checkpoint file not found"),
        ([clip, "--mask", mask, "--model", "mavos-mnv3"], "unknown model 'mavos-mnv3'"),
        ([clip, "--mask", mask, "--memory", "growing", "--mem-gap", 0], "mem_gap must be >= 1"),
        ([clip, "--mask", mask, "--device", "tpu9"], "unknown device 'tpu9'"),
        ([clip, "--mask", mask, "--dtype", "fp8"], "unknown dtype 'fp8'"),
    ]


def test_every_bad_input_is_one_clear_line(clip, dev_dir, tmp_path, capsys):
    for args, message in bad_inputs(dev_dir, clip, tmp_path):
        code, _, stderr = segment(*args, "--out", tmp_path / "out", capsys=capsys)
        lines = [line for line in stderr.splitlines() if "warning:" not in line]
        assert code == 1 and len(lines) == 1, (args, stderr)
        assert lines[0].startswith("longvos segment: error: ") and message in lines[0], (message, lines[0])


def test_exit_code_and_message_from_a_real_process(clip, tmp_path):
    result = subprocess.run([sys.executable, "-m", "longvos", "segment", str(clip), "--mask", "nope.png", "--out",
                             str(tmp_path)], capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": ""})
    assert result.returncode == 1
    assert result.stderr.strip() == "longvos segment: error: nope.png: cannot read mask: [Errno 2] No such file or " \
                                    "directory: 'nope.png'"
