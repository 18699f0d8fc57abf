"""``segment_video`` as a Python call: array masks for later frames, the per-frame hook, and an interruption that
leaves complete frames behind and is resumed. Uses the exact fake model of test_session_engine.py (fast)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from longvos.engine import SegmentationError, Segmenter, segment_video
from longvos.io.masks import read_index_mask

from conftest import RepeatLastMask


@pytest.fixture
def masks(dev_dir) -> list[np.ndarray]:
    return [read_index_mask(dev_dir / "Annotations" / "car-shadow" / f"{i:05d}.png").ids for i in range(6)]


def test_array_masks_for_later_frames_and_the_frame_hook(dev_dir, tmp_path, masks):
    later = np.zeros_like(masks[0])
    later[10:60, 10:90] = 1
    seen = []
    summary = segment_video(dev_dir / "JPEGImages" / "car-shadow", {0: masks[0] * 3, 2: later.astype(np.int32) * 1000}, tmp_path,
                            model=Segmenter(RepeatLastMask(), "cpu"), max_size=120, end=6, progress=False,
                            on_frame=lambda frame, result: seen.append((frame.name, result.object_ids)))
    assert seen == [("00000", [3]), ("00001", [3]), ("00002", [3, 1000]), ("00003", [3, 1000]),
                    ("00004", [3, 1000]), ("00005", [3, 1000])]
    assert summary.frames == 6 and summary.object_ids == [3, 1000] and summary.fps > 0 and summary.state_bytes > 0
    assert summary.network_size == (120, 208) and "at network size 208x120" in str(summary)  # 854x480 shrunk, /8
    written = read_index_mask(tmp_path / "00002.png").ids  # ids above 255: 16-bit PNG
    assert written.dtype == np.int32 and np.array_equal(written == 1000, later == 1)


def test_interruption_keeps_complete_frames_and_resume_continues(dev_dir, tmp_path, masks):
    segmenter = Segmenter(RepeatLastMask(), "cpu")

    def stop_at_frame_3(frame, result):
        if frame.index == 3:
            raise KeyboardInterrupt

    video = dev_dir / "JPEGImages" / "car-shadow"
    with pytest.raises(SegmentationError, match=r"stopped at frame 3 \(00003\): interrupted; 4 frame") as caught:
        segment_video(video, masks[0], tmp_path, model=segmenter, max_size=120, end=6, progress=False,
                      on_frame=stop_at_frame_3)
    assert caught.value.interrupted and caught.value.frames_complete == 4
    assert sorted(p.stem for p in tmp_path.glob("*.png")) == ["00000", "00001", "00002", "00003"]
    summary = segment_video(video, masks[0], tmp_path, model=segmenter, max_size=120, end=6, progress=False,
                            resume=True, overlay=tmp_path / "overlay.mp4")
    assert summary.frames == 2 and summary.resumed_after == 4
    assert sorted(p.stem for p in tmp_path.glob("*.png")) == [f"{i:05d}" for i in range(6)]
    # The memory was rebuilt from the last complete frame's mask, so the fake model carries that mask on.
    last_complete = read_index_mask(tmp_path / "00003.png").ids
    assert (read_index_mask(tmp_path / "00005.png").ids == last_complete).mean() > 0.995
    from longvos.io.video import open_video
    assert len(open_video(tmp_path / "overlay.mp4")) == 6  # the overlay covers the frames before the resume too


@pytest.mark.parametrize("call, message", [
    (dict(resume=True, overwrite=True), "--resume and --overwrite exclude each other"),
    (dict(resume=True, records=False), "resume needs the records that records=False leaves out"),
    (dict(threads=0), "threads must be at least 1, got 0"),
    (dict(max_size=-5), "max_size must be 0 (native) or a positive number of pixels, got -5"),
    (dict(snapshot_every=-1), "snapshot_every must be >= 0 frames"),
])
def test_bad_options_are_refused_before_the_model_or_the_video_is_opened(tmp_path, monkeypatch, call, message):
    """Option errors need neither the model (seconds to load) nor the video: they come first, as one line."""
    from longvos.engine.options import SegmentOptions
    from longvos.io.errors import InputError

    def no_loading(*_args, **_kwargs):
        raise AssertionError("loaded before the options were checked")

    monkeypatch.setattr(SegmentOptions, "load_segmenter", no_loading)
    monkeypatch.setattr("longvos.engine.pipeline.open_video", no_loading)
    with pytest.raises(InputError) as caught:
        segment_video(tmp_path / "no-video", None, tmp_path / "out", progress=False, **call)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_a_frame_the_input_cannot_give_is_not_advised_to_resume(tmp_path):
    """A resume reads the same input again: "run again with resume to continue" sent the user round in circles."""
    from PIL import Image

    segmenter = Segmenter(RepeatLastMask(), "cpu")
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(4):
        size = (40, 32) if index != 2 else (48, 32)  # frame 2 has another size
        Image.fromarray(np.full((size[1], size[0], 3), 40 * index, np.uint8)).save(frames / f"{index:05d}.png")
    mask = np.zeros((32, 40), np.uint8)
    mask[8:20, 8:20] = 1
    refusal = r"a resume stops at the same frame until the input is repaired\)$"
    with pytest.raises(SegmentationError, match=refusal) as caught:
        segment_video(frames, mask, tmp_path / "out", model=segmenter, progress=False)
    assert "00002.png: frame 2 is 48x32" in str(caught.value) and "to continue" not in str(caught.value)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are Python >= 3.11")
def test_a_write_that_fails_while_the_run_stops_is_named_in_its_error(tmp_path, monkeypatch):
    """The run's error was one line without the disk-full of the frame being written as it stopped."""
    from pathlib import Path

    from PIL import Image

    import longvos.engine.pipeline as pipeline

    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(6):
        Image.fromarray(np.full((32, 40, 3), 20 * index, np.uint8)).save(frames / f"{index:05d}.png")
    mask = np.zeros((32, 40), np.uint8)
    mask[5:15, 5:15] = 1
    real = pipeline.write_index_png

    def disk_full_at_frame_3(path, ids, palette=None):
        if "00003" in Path(path).name:
            raise OSError(28, "No space left on device")
        return real(path, ids, palette)

    def stop_at_frame_3(frame, result):
        if frame.index == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "write_index_png", disk_full_at_frame_3)
    with pytest.raises(SegmentationError) as caught:
        segment_video(frames, mask, tmp_path / "out", model=Segmenter(RepeatLastMask(), "cpu"), progress=False,
                      on_frame=stop_at_frame_3)
    message = str(caught.value)
    assert "interrupted; and writing the frames computed before it failed too" in message, message
    assert "No space left on device" in message and "3 frame(s) complete" in message and "\n" not in message
