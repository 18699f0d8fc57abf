"""Frame sources on real footage: frame folders, globs and an mp4 made from them (streamed, seekable, reversible)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longvos.io.errors import VideoReadError
from longvos.io.video import REVERSE_CHUNK_FRAMES, VideoFileSource, VideoTooLong, natural_sort_key, open_video

from conftest import write_mp4


@pytest.fixture(scope="module")
def small_frames(dev_dir) -> list[np.ndarray]:
    """40 real car-shadow frames at 214x120 (even sizes for yuv420p), to keep decoding fast."""
    folder = dev_dir / "JPEGImages" / "car-shadow"
    return [np.asarray(Image.open(p).convert("RGB").resize((214, 120))) for p in sorted(folder.glob("*.jpg"))]


@pytest.fixture(scope="module")
def mp4(small_frames, tmp_path_factory) -> Path:
    return write_mp4(small_frames, tmp_path_factory.mktemp("video") / "car.mp4")


def test_frame_folder_streams_rgb_named_after_files(dev_dir):
    folder = dev_dir / "JPEGImages" / "blackswan"
    source = open_video(folder)
    assert len(source) == 50 and source.frame_size == (480, 854)
    frames = list(source.frames(3, 6))
    assert [f.index for f in frames] == [3, 4, 5] and [f.name for f in frames] == ["00003", "00004", "00005"]
    expected = np.asarray(Image.open(folder / "00004.jpg").convert("RGB"))
    assert frames[1].image.dtype == np.uint8 and np.array_equal(frames[1].image, expected)
    assert [f.index for f in source.frames(0, 3, reverse=True)] == [2, 1, 0]


def test_glob_and_natural_sort(tmp_path, dev_dir):
    source_frames = sorted((dev_dir / "JPEGImages" / "car-shadow").glob("*.jpg"))[:3]
    for number, path in zip((2, 10, 1), source_frames):
        shutil.copy(path, tmp_path / f"f{number}.jpg")
    (tmp_path / "notes.txt").write_text("not a frame")
    assert [f.name for f in open_video(tmp_path)] == ["f1", "f2", "f10"]
    assert [f.name for f in open_video(str(tmp_path / "f1*.jpg"))] == ["f1", "f10"]
    assert sorted(["a10", "a9", "b1"], key=natural_sort_key) == ["a9", "a10", "b1"]


def test_mp4_decodes_every_frame_in_order(mp4, small_frames):
    source = open_video(mp4)
    assert len(source) == 40 and source.frame_size == (120, 214)
    frames = list(source)
    assert [f.index for f in frames] == list(range(40)) and frames[7].name == "00007"
    # Lossy, but close to the source frames: checks RGB channel order and frame alignment.
    errors = [np.abs(f.image.astype(int) - small_frames[f.index]).mean() for f in frames]
    assert max(errors) < 4.0
    shifted = np.abs(frames[10].image.astype(int) - small_frames[11]).mean()
    assert shifted > 2 * errors[10]


def test_mp4_seek_and_reverse_match_sequential_decode(mp4):
    source = open_video(mp4)
    sequential = {f.index: f.image for f in source}
    seeked = list(source.frames(13, 21))
    assert [f.index for f in seeked] == list(range(13, 21))
    assert all(np.array_equal(f.image, sequential[f.index]) for f in seeked)
    backwards = list(source.frames(2, 2 + REVERSE_CHUNK_FRAMES + 5, reverse=True))
    assert [f.index for f in backwards] == list(range(1 + REVERSE_CHUNK_FRAMES + 5, 1, -1))
    assert all(np.array_equal(f.image, sequential[f.index]) for f in backwards)
    assert np.array_equal(source.read(39).image, sequential[39])


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.mp4", "no such file"),
    (lambda d: (d / "junk.mp4").write_bytes(b"this is not a video") and d / "junk.mp4", "cannot open video"),
    (lambda d: d, "no image frames"),
])
def test_unreadable_sources_name_the_file(tmp_path, make, message):
    with pytest.raises(VideoReadError, match=message):
        source = open_video(make(tmp_path))
        len(source)


def test_single_image_is_refused(dev_dir):
    with pytest.raises(VideoReadError, match="single image"):
        open_video(dev_dir / "JPEGImages" / "blackswan" / "00000.jpg")


def test_corrupt_frame_in_folder_names_file_and_frame(tmp_path, dev_dir):
    for path in sorted((dev_dir / "JPEGImages" / "car-shadow").glob("*.jpg"))[:4]:
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "00002.jpg").write_bytes((tmp_path / "00002.jpg").read_bytes()[:300])
    frames = open_video(tmp_path).frames()
    assert next(frames).index == 0 and next(frames).index == 1
    with pytest.raises(VideoReadError, match=r"00002\.jpg: cannot decode frame 2"):
        next(frames)


def test_frame_of_another_size_names_the_frame(tmp_path, small_frames):
    Image.fromarray(small_frames[0]).save(tmp_path / "a0.png")
    Image.fromarray(small_frames[1][:100]).save(tmp_path / "a1.png")
    with pytest.raises(VideoReadError, match=r"a1\.png: frame 1 is 214x100 but the first frame is 214x120"):
        list(open_video(tmp_path))


def test_two_frames_with_one_name_are_refused(tmp_path, small_frames):
    Image.fromarray(small_frames[0]).save(tmp_path / "x.png")
    Image.fromarray(small_frames[0]).save(tmp_path / "x.jpg")
    with pytest.raises(VideoReadError, match="share the name 'x'"):
        open_video(tmp_path)


def test_other_streams_packets_are_bounded_with_a_frame_limit(tmp_path):
    """Demuxing reads every stream's packets: with ``max_frames``, an audio stream of far more packets than such a
    video has is refused (one line) rather than walked whole; ordinary audio beside the frames changes nothing."""
    import av

    def with_audio(path: Path, frames: int, audio_packets: int) -> Path:
        rng = np.random.default_rng(1)
        with av.open(str(path), "w") as container:
            video = container.add_stream("mpeg4", rate=24)
            video.width, video.height, video.pix_fmt = 48, 32, "yuv420p"
            audio = container.add_stream("pcm_s16le", rate=8000, layout="mono")
            for index in range(audio_packets):
                samples = av.AudioFrame.from_ndarray(np.zeros((1, 16), np.int16), format="s16", layout="mono")
                samples.sample_rate, samples.pts = 8000, index * 16
                container.mux(audio.encode(samples))
            for index in range(frames):
                image = rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)
                container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(video.encode())
            container.mux(audio.encode())
        return path

    ordinary = with_audio(tmp_path / "ordinary.mkv", 12, 24)
    assert VideoFileSource(ordinary, max_frames=12).num_frames == 12
    flooded = with_audio(tmp_path / "flooded.mkv", 2, 3000)
    assert VideoFileSource(flooded).num_frames == 2  # no limit: every packet is walked
    with pytest.raises(VideoTooLong, match=r"flooded\.mkv: the file's other streams \(audio, subtitles, data\) hold "
                                           r"more than 1056 packets, more than a video of 2 frames has"):
        VideoFileSource(flooded, max_frames=2).num_frames  # noqa: B018


def test_out_of_range_frames_are_refused(mp4):
    source = open_video(mp4)
    with pytest.raises(VideoReadError, match="frame 40 does not exist"):
        source.read(40)
    with pytest.raises(VideoReadError, match="empty or outside"):
        list(source.frames(30, 50))


def test_a_frame_limit_stops_the_count_past_it_and_changes_nothing_within_it(tmp_path):
    """``max_frames`` (for untrusted uploads) refuses a longer video after reading ``max_frames + 1`` packets; a
    video at the limit indexes, seeks and reads backwards exactly as without one."""
    rng = np.random.default_rng(0)
    video = write_mp4([rng.integers(0, 255, (32, 48, 3), dtype=np.uint8) for _ in range(12)], tmp_path / "v.mp4")
    free = VideoFileSource(video)
    assert free.max_frames is None and free.num_frames == 12
    with pytest.raises(VideoTooLong, match=r"v\.mp4: the video is longer than 11 frames") as refused:
        VideoFileSource(video, max_frames=11).num_frames  # noqa: B018
    assert isinstance(refused.value, VideoReadError) and refused.value.limit == 11
    bounded = VideoFileSource(video, max_frames=12)
    assert bounded.num_frames == 12 and np.array_equal(bounded._timestamps, free._timestamps)
    expected = [frame.image for frame in free.frames()]
    assert [f.index for f in bounded.frames(3, 9, reverse=True)] == list(range(8, 2, -1))
    assert all(np.array_equal(f.image, expected[f.index]) for f in bounded.frames(5, 12))
