"""Outputs that cannot be written are refused with one line naming them before the model loads (or runs): an
unusable overlay path, object ids a mask PNG cannot hold, an output folder that is a file. No model runs here: loading
one fails the test."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from longvos.cli.main import main
from longvos.engine.options import SegmentOptions
from longvos.engine.outputs import check_output_folder, prepare_output_folder
from longvos.engine.pipeline import segment_video
from longvos.io.errors import InputError, MaskError
from longvos.io.masks import write_index_png
from longvos.io.overlay import OverlayWriter, check_overlay_path


class ModelLoaded(Exception):
    """Raised where a test's run got as far as loading the model."""


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    def refuse(self):
        raise ModelLoaded("the model was loaded")

    monkeypatch.setattr(SegmentOptions, "load_segmenter", refuse)


@pytest.fixture
def clip(tmp_path) -> tuple[Path, Path, np.ndarray]:
    """Three 32x24 frames and a first-frame mask with objects 1 and 2."""
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(frames / f"f{index:03d}.png")
    ids = np.zeros((24, 32), dtype=np.int64)
    ids[4:10, 4:12], ids[14:20, 18:28] = 1, 2
    write_index_png(tmp_path / "mask.png", ids)
    return frames, tmp_path / "mask.png", ids


def segment_cli(capsys, *args: object) -> tuple[int, list[str]]:
    code = main(["segment", "--device", "cpu", "--max-size", "64", "--threads", "1", "--quiet", *map(str, args)])
    stderr = capsys.readouterr().err
    return code, [line for line in stderr.splitlines() if "warning:" not in line]


def options() -> SegmentOptions:
    return SegmentOptions(device="cpu", max_size=64, threads=1, progress=False)


# ------------------------------------------------------------------------------------------------ --overlay
@pytest.mark.parametrize("where, message", [
    ("sub/ov.mp4", "folder {tmp}/sub does not exist"),
    ("/nonexistent-longvos-dir/x/ov.mp4", "folder /nonexistent-longvos-dir/x does not exist"),
    ("afile/ov.mp4", "{tmp}/afile is a file, not a folder"),
    ("adir", "overlay {tmp}/adir is a folder"),
    ("ov.gif", "overlay must be one of"),
])
def test_cli_refuses_an_unusable_overlay_before_the_model_loads(clip, tmp_path, capsys, where, message):
    frames, mask, _ = clip
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    overlay = tmp_path / where
    code, lines = segment_cli(capsys, frames, "--mask", mask, "--out", tmp_path / "out", "--overlay", overlay)
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("longvos segment: error: ") and message.format(tmp=tmp_path) in lines[0], lines[0]
    assert str(overlay) in lines[0]
    assert not (tmp_path / "out").exists()  # nothing was made


@pytest.mark.parametrize("where", ["ov.mp4", "out/ov.mp4", "new/ov.mp4"])
def test_cli_accepts_an_overlay_in_a_folder_the_run_makes(clip, tmp_path, capsys, where):
    """An overlay beside or inside a --out that does not exist yet (the run creates it) passes the checks."""
    frames, mask, _ = clip
    out = tmp_path / "new" / "masks" if where.startswith("new") else tmp_path / "out"
    code, lines = segment_cli(capsys, frames, "--mask", mask, "--out", out, "--overlay", tmp_path / where)
    assert code == 1 and lines == ["longvos segment: error: ModelLoaded: the model was loaded"], lines


def test_overlay_writer_checks_its_destination_when_made(tmp_path):
    with pytest.raises(InputError, match=r"folder .*sub does not exist"):
        OverlayWriter(tmp_path / "sub" / "o.mp4", 24.0, out_dir=tmp_path / "elsewhere")
    with pytest.raises(InputError, match="is a folder"):
        OverlayWriter(tmp_path, 24.0)
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match=r"f is a file, not a folder"):
        OverlayWriter(tmp_path / "f" / "o.mp4", 24.0)
    # The output folder (or one above it) may not exist yet: the run makes it before the first frame.
    assert check_overlay_path(tmp_path / "out" / "o.mp4", tmp_path / "out") == tmp_path / "out" / "o.mp4"
    assert OverlayWriter(tmp_path / "a" / "o.mp4", 24.0, out_dir=tmp_path / "a" / "masks").path.name == "o.mp4"


def test_overlay_open_failure_names_the_file(tmp_path, monkeypatch):
    image, ids = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.int64)
    late = OverlayWriter(tmp_path / "later" / "o.mp4", 24.0)  # out_dir unknown: a missing folder is checked lazily
    with pytest.raises(InputError, match=r"overlay .*later/o\.mp4: folder .*later does not exist"):
        late.write(image, ids)

    def fail(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(av, "open", fail)
    writer = OverlayWriter(tmp_path / "o.mp4", 24.0)
    with pytest.raises(InputError) as caught:
        writer.write(image, ids)
    assert str(tmp_path / "o.mp4") in str(caught.value) and "No such file or directory" in str(caught.value)


# ------------------------------------------------------------------------------------------------ object ids
def test_api_refuses_ids_a_png_cannot_hold_before_the_model_loads(clip, tmp_path):
    frames, _, ids = clip
    huge = np.where(ids == 2, 70000, ids)
    with pytest.raises(MaskError) as caught:
        segment_video(frames, huge, tmp_path / "o4", options())
    message = str(caught.value)
    assert "object id 70000" in message and "mask array (24, 32) for frame 0" in message and "65535" in message
    assert ".partial" not in message and "\n" not in message
    assert not (tmp_path / "o4").exists()
    # A later frame's mask is checked too, and the largest id a 16-bit PNG holds passes (up to the model load).
    with pytest.raises(MaskError, match="for frame 2 of .*object id 65536"):
        segment_video(frames, {0: ids, 2: np.where(ids == 1, 65536, 0)}, tmp_path / "o5", options())
    with pytest.raises(ModelLoaded):
        segment_video(frames, np.where(ids == 2, 65535, ids), tmp_path / "o6", options())


# ------------------------------------------------------------------------------------------------ --out
def test_cli_out_that_is_a_file_is_one_line(clip, tmp_path, capsys):
    frames, mask, _ = clip
    (tmp_path / "afile").write_text("mine")
    code, lines = segment_cli(capsys, frames, "--mask", mask, "--out", tmp_path / "afile")
    assert code == 1 and lines == [f"longvos segment: error: --out {tmp_path / 'afile'} is a file, not a folder"]
    code, lines = segment_cli(capsys, frames, "--mask", mask, "--out", tmp_path / "afile" / "masks")
    assert code == 1 and lines == [f"longvos segment: error: --out {tmp_path / 'afile' / 'masks'}: "
                                   f"{tmp_path / 'afile'} is a file, not a folder"]
    assert (tmp_path / "afile").read_text() == "mine"


def test_output_folder_check(tmp_path):
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(InputError, match="out_dir .*afile is a file, not a folder"):
        prepare_output_folder(tmp_path / "afile", overwrite=True)
    assert check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
