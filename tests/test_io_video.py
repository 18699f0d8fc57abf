"""Frame sources on real footage: frame folders, globs and an mp4 made from them (streamed, seekable, reversible)."""
from __future__ import annotations

import fractions
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longvos.io.errors import VideoReadError
from longvos.io.video import (REVERSE_CHUNK_FRAMES, VideoFileSource, VideoTooLong, VideoTruncatedWarning,
                               header_frame_count, natural_sort_key, open_video)

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


# -- truncated videos: measured against their header -------------------------------------------------------------

def noise_frames(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (32, 48, 3), dtype=np.uint8) for _ in range(count)]


def cut(video: Path, fraction: float) -> Path:
    """The first ``fraction`` of the bytes of ``video``, as a file beside it."""
    data = video.read_bytes()
    short = video.with_name(f"cut-{video.name}")
    short.write_bytes(data[: int(len(data) * fraction)])
    return short


def read_all(video: Path, reverse: bool = False) -> tuple[VideoFileSource, list[int], list[str]]:
    """The indices read forwards (or backwards) and the truncation warnings said, from a fresh source."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = VideoFileSource(video)
        indices = [frame.index for frame in source.frames(reverse=reverse)]
    return source, indices, [str(w.message) for w in caught if issubclass(w.category, VideoTruncatedWarning)]


@pytest.mark.parametrize("reverse", [False, True])
def test_a_truncated_mkv_is_read_to_its_end_and_said_short_of_its_header_duration(tmp_path, reverse):
    """An mkv lists no frame count, only a duration (48 frames at 24 fps: 2 s), written whole at the front: cut
    to 60% of its bytes, every packet left decodes, and one line says the file is short of what its header lists."""
    video = cut(write_mp4(noise_frames(48), tmp_path / "clip.mkv"), 0.6)
    source, indices, messages = read_all(video, reverse)
    found = source.num_frames
    assert 0 < found < 40 and sorted(indices) == list(range(found))
    assert messages == [f"{video}: the video stream ends early (truncated or damaged file): the last frame that "
                        f"decodes is frame {found - 1} ({found - 1:05d}), so the video has {found} frames, not the "
                        f"48 its header lists (2 s at 24 fps)"]


def test_a_truncated_faststart_mp4_is_said_short_of_the_count_its_header_lists(tmp_path):
    """A faststart mp4 lists its 40 frames at the front: the count to report is that one, not the packets left."""
    video = cut(write_mp4(noise_frames(40), tmp_path / "clip.mp4", faststart=True), 0.5)
    source, indices, messages = read_all(video)
    found = source.num_frames
    assert 0 < found < 30 and indices == list(range(found))
    assert len(messages) == 1 and f"so the video has {found} frames, not the 40 its header lists" in messages[0]
    assert messages[0].startswith(f"{video}: ") and "\n" not in messages[0]


def variable_rate_mkv(path: Path, gaps_ms: list[int], audio_seconds: float = 0.0) -> Path:
    """An mkv whose frames are ``gaps_ms`` apart (declared 30 fps), with B-frames, and silent audio as long as
    ``audio_seconds`` beside it."""
    import av

    millisecond = fractions.Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 48, 32, "yuv420p"
        video.time_base = video.codec_context.time_base = millisecond
        video.options = {"bf": "2", "g": "6"}
        audio = container.add_stream("pcm_s16le", rate=8000, layout="mono") if audio_seconds else None
        pts = 0
        for image, gap in zip(noise_frames(len(gaps_ms)), gaps_ms):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, millisecond
            pts += gap
            container.mux(video.encode(frame))
        container.mux(video.encode())
        for index in range(int(audio_seconds * 10)):
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
            samples.sample_rate, samples.pts = 8000, index * 800
            container.mux(audio.encode(samples))
        if audio is not None:
            container.mux(audio.encode())
    return path


@pytest.mark.parametrize("make, frames", [
    (lambda d: write_mp4(noise_frames(30), d / "b-frames.mp4"), 30),
    (lambda d: write_mp4(noise_frames(30), d / "b-frames.mkv"), 30),
    # 30 frames at 30 fps, then 30 at 5 fps: 6.8 s, which "times 30 fps" would take for 205 frames
    (lambda d: variable_rate_mkv(d / "variable.mkv", [33] * 30 + [200] * 30), 60),
    # 48 frames 41 ms apart under a declared 30 fps, beside 6 s of audio (the container's duration)
    (lambda d: variable_rate_mkv(d / "long-audio.mkv", [41] * 48, audio_seconds=6.0), 48),
], ids=["b-frames mp4", "b-frames mkv", "variable frame rate", "audio outlasts video"])
def test_whole_videos_are_never_said_to_be_short(tmp_path, make, frames):
    """No false alarm where a header's duration x frame rate is only an estimate of the frames (the stream's span
    is compared with the duration instead), nor for B-frames (decoded out of packet order)."""
    video = make(tmp_path)
    for reverse in (False, True):
        source, indices, messages = read_all(video, reverse)
        assert source.num_frames == frames and sorted(indices) == list(range(frames)) and messages == []



def test_a_truncated_avi_is_said_short_of_the_count_its_header_lists(tmp_path):
    """An avi cut short loses its index: FFmpeg estimates its duration from the bytes left, which the rule for mp4
    edit lists took for the truth, so 20 % of the frames went without a word. Its header's count stands."""
    video = cut(dropped_frames_avi(tmp_path / "clip.avi", list(range(96))), 0.7)
    source, indices, messages = read_all(video)
    found = source.num_frames
    assert 0 < found < 80 and indices == list(range(found))
    assert len(messages) == 1 and messages[0].endswith(f"so the video has {found} frames, not the 96 its header "
                                                       f"lists"), messages


def dropped_frames_avi(path: Path, slots: list[int]) -> Path:
    """An avi (MPEG-4 part 2) at 30 fps holding frames only at the frame ``slots`` listed: for each slot skipped
    the avi muxer writes a zero-length chunk (a dropped, repeated frame, as a variable frame rate is stored in avi),
    which its header's frame count includes but the demuxer does not yield."""
    import av

    slot = fractions.Fraction(1, 30)
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=30)
        video.width, video.height, video.pix_fmt = 48, 32, "yuv420p"
        video.codec_context.time_base = slot
        for image, pts in zip(noise_frames(len(slots)), slots):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, slot
            container.mux(video.encode(frame))
        container.mux(video.encode())
    return path


def late_start_mkv(path: Path, frames: int, start_seconds: int, audio: bool = False) -> Path:
    """An mkv of ``frames`` frames at 24 fps whose first is at ``start_seconds`` (its ``DURATION`` tag is the end
    time: ``start_seconds`` + frames / 24), with silent audio from 0 s to past the video's end beside it."""
    import av

    tick = fractions.Fraction(1, 24)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = 48, 32, "yuv420p"
        video.codec_context.time_base = tick
        video.options = {"bf": "2", "g": "6"}
        sound = container.add_stream("pcm_s16le", rate=8000, layout="mono") if audio else None
        for index, image in enumerate(noise_frames(frames)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = start_seconds * 24 + index, tick
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if sound is not None:
            for index in range(int((start_seconds + frames / 24 + 1) * 10)):
                samples = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
                samples.sample_rate, samples.pts = 8000, index * 800
                container.mux(sound.encode(samples))
            container.mux(sound.encode())
    return path


@pytest.mark.parametrize("make, frames, listed", [
    # 60 slots (2 s at 30 fps), every fifth frame dropped: 48 frames, 12 zero-length chunks; the header lists 60
    (lambda d: dropped_frames_avi(d / "dropped.avi", [i for i in range(60) if i % 5 != 2]), 48, 60),
    # the first three slots dropped too
    (lambda d: dropped_frames_avi(d / "late-first.avi", [i for i in range(3, 60) if i % 5 != 2]), 46, 60),
    # 48 frames from 3 s to 5 s: the DURATION tag says 5 s, the end, not the 2 s they last
    (lambda d: late_start_mkv(d / "late.mkv", 48, 3), 48, 48),
    (lambda d: late_start_mkv(d / "late-audio.mkv", 48, 3, audio=True), 48, 48),
], ids=["avi with dropped frames", "avi with its first frames dropped", "mkv starting at 3 s",
        "mkv starting at 3 s beside audio from 0 s"])
def test_whole_videos_whose_header_counts_more_than_their_frames_are_not_said_short(tmp_path, make, frames, listed):
    """An avi's header counts the slots of the frames a variable frame rate drops; matroska's DURATION tag is the
    track's end time, not its length: measured like that, the frames found fill the header, and all of them are
    read (forwards, backwards, by seeking), numbered 0 .. frames - 1 (the frames that decode)."""
    import av

    video = make(tmp_path)
    with av.open(str(video)) as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(decoded) == frames
    for reverse in (False, True):
        source, indices, messages = read_all(video, reverse)
        assert messages == [] and source.num_frames == frames and sorted(indices) == list(range(frames))
    with av.open(str(video)) as container:
        assert header_frame_count(container).count == listed
    with warnings.catch_warnings():
        warnings.simplefilter("error", VideoTruncatedWarning)
        source = VideoFileSource(video)
        for index in (0, 7, frames // 2, frames - 1):
            assert np.array_equal(source.read(index).image, decoded[index])


@pytest.mark.parametrize("make, listed", [
    # (a cut avi's duration is taken from the chunks left, so its count is not asserted)
    (lambda d: dropped_frames_avi(d / "dropped.avi", [i for i in range(60) if i % 5 != 2]), ""),
    (lambda d: late_start_mkv(d / "late.mkv", 48, 3), "48 its header lists (2 s at 24 fps)"),
    (lambda d: late_start_mkv(d / "late-audio.mkv", 48, 3, audio=True), "48 its header lists (2 s at 24 fps)"),
], ids=["avi with dropped frames", "mkv starting at 3 s", "mkv starting at 3 s beside audio from 0 s"])
def test_such_videos_cut_short_are_still_said_short(tmp_path, make, listed):
    """The same files cut to half their bytes still warn, against the frames the whole file has (the late mkv's
    48, not 5 s x 24 fps)."""
    video = cut(make(tmp_path), 0.5)
    source, indices, messages = read_all(video)
    found = source.num_frames
    assert 0 < found < 40 and indices == list(range(found))
    assert len(messages) == 1 and f"so the video has {found} frames, not the {listed}" in messages[0]
    assert messages[0].endswith(listed)

# -- frame folders: a frame that cannot be listed as a file ------------------------------------------------------

def test_a_broken_link_among_the_frames_is_refused_in_one_line(tmp_path):
    """Skipping it would shift every later frame (and its mask) one index down: the folder and a glob of it are
    refused, naming the link and where it leads."""
    rng = np.random.default_rng(0)
    for index in (0, 1, 2, 4):
        Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(tmp_path / f"{index:05d}.jpg")
    os.symlink(tmp_path / "gone" / "00003.jpg", tmp_path / "00003.jpg")
    os.symlink(tmp_path / "gone" / "notes.txt", tmp_path / "notes.txt")  # not a frame: ignored in a folder
    expected = (f"{tmp_path / '00003.jpg'}: a frame file that cannot be read (a broken link to "
                f"{tmp_path / 'gone' / '00003.jpg'})")
    for source in (tmp_path, str(tmp_path / "*.jpg")):
        with pytest.raises(VideoReadError) as refused:
            open_video(source)
        assert str(refused.value) == expected


# -- an edit list that starts after the first frames (a clip trimmed with stream copy) ----------------------------

def trimmed_mp4(source: Path, path: Path, skip: int) -> Path:
    """``source``'s packets with their timestamps moved ``skip`` frames earlier: the mp4 muxer writes an edit list
    that starts at the old first frame, as ``ffmpeg -ss ... -c copy`` does when the cut falls inside a GOP. The
    samples before it stay (the decoder needs them) and are decoded but never shown."""
    import av

    with av.open(str(source)) as original, av.open(str(path), "w") as container:
        stream = original.streams.video[0]
        copy = container.add_stream_from_template(stream)
        step = int(round(1 / (stream.average_rate * stream.time_base)))  # one frame, in time_base units
        for packet in original.demux(stream):
            if packet.dts is None:  # the flush packet
                continue
            packet.pts -= skip * step
            packet.dts -= skip * step
            packet.stream = copy
            container.mux(packet)
    return path


def shortened_edit(video: Path, shown: int, listed: int) -> Path:
    """``video`` with its edit list (one entry, as the muxer writes) ending after ``shown`` of its ``listed``
    frames, as ``ffmpeg -t ... -c copy`` leaves it: the samples after the end stay in the file."""
    import struct

    data = bytearray(video.read_bytes())
    box = data.index(b"elst")
    version, entries = data[box + 4], struct.unpack(">I", data[box + 8:box + 12])[0]
    assert entries == 1
    layout, size = (">I", 4) if version == 0 else (">Q", 8)
    duration = struct.unpack(layout, data[box + 12:box + 12 + size])[0]
    data[box + 12:box + 12 + size] = struct.pack(layout, duration * shown // listed)
    short = video.with_name(f"short-{video.name}")
    short.write_bytes(bytes(data))
    return short


@pytest.mark.parametrize("skip, shown", [(3, 37), (6, 34), (7, 33), (3, 20)],
                         ids=["starts inside the first GOP", "starts on a keyframe", "starts past the first GOP",
                              "ends early too"])
def test_frames_an_edit_list_hides_are_not_frames(tmp_path, skip, shown):
    """Frame ``i`` is the ``i``-th frame that decodes: samples the edit list hides are neither counted (no false
    "ends early") nor put in the seek index (``read(20)`` would be frame ``20 - skip``: masks on the wrong frames)."""
    import av

    original = write_mp4(noise_frames(40), tmp_path / "whole.mp4")
    video = trimmed_mp4(original, tmp_path / "trimmed.mp4", skip)
    if shown < 40 - skip:
        video = shortened_edit(video, shown, 40 - skip)
    with av.open(str(original)) as container:
        whole = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    with av.open(str(video)) as container:
        assert container.streams.video[0].frames == 40  # every sample is still in the file
        plain = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    # The decoder honours the edit list: it shows the original's frames from the edit's first one on.
    assert len(plain) == shown and all(np.array_equal(a, b) for a, b in zip(plain, whole[skip:]))

    def same(frames) -> bool:
        frames = list(frames)
        return bool(frames) and all(np.array_equal(frame.image, plain[frame.index]) for frame in frames)

    with warnings.catch_warnings():
        warnings.simplefilter("error", VideoTruncatedWarning)
        source = VideoFileSource(video)
        assert source.num_frames == shown  # before anything decodes
        forward = list(source.frames())
        assert [frame.index for frame in forward] == list(range(shown)) and same(forward)
        assert source.num_frames == shown
        for index in (1, skip, 17, shown - 1):
            assert source.read(index).index == index and same([source.read(index)])
        backward = list(VideoFileSource(video).frames(5, shown, reverse=True))
        assert [frame.index for frame in backward] == list(range(shown - 1, 4, -1)) and same(backward)
        # The hidden samples count against no frame limit: the clip fits one of exactly its length.
        assert VideoFileSource(video, max_frames=shown).num_frames == shown
    with pytest.raises(VideoTooLong):
        VideoFileSource(video, max_frames=shown - 1).num_frames


def test_a_truncated_trimmed_mp4_is_said_short_of_the_frames_it_shows(tmp_path):
    """Cut short, a trimmed faststart mp4 is measured against the frames its edit list shows (37 of 40 samples)."""
    original = write_mp4(noise_frames(40), tmp_path / "whole.mp4")
    trimmed = trimmed_mp4(original, tmp_path / "trimmed.mp4", 3)
    import av

    with av.open(str(trimmed)) as container, av.open(str(tmp_path / "fast.mp4"), "w",
                                                     options={"movflags": "faststart"}) as out:
        copy = out.add_stream_from_template(container.streams.video[0])
        for packet in container.demux(video=0):
            if packet.dts is not None:
                packet.stream = copy
                out.mux(packet)
    video = cut(tmp_path / "fast.mp4", 0.5)
    source, indices, messages = read_all(video)
    found = source.num_frames
    assert 0 < found < 30 and indices == list(range(found))
    assert len(messages) == 1 and f"so the video has {found} frames, not the 37 its header lists" in messages[0]


def _write_mpegts(path: Path, codec: str, count: int = 60) -> Path:
    """An MPEG-TS file (no seek index: its seeks land after their target) of noise with a square moving right."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.codec_context.gop_size = 12
        for i in range(count):
            image = rng.integers(0, 60, (64, 96, 3), dtype=np.uint8)
            image[10:30, i:i + 20] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("codec", ["mpeg2video", "libx264"])
def test_mpegts_seeks_and_reverse_reads_are_exact(tmp_path, codec):
    """A .ts file's seeks land after their target: reading must seek further back (or decode from the start)
    rather than miss the frame (a StopIteration from ``read``) or shift it."""
    import av

    if codec not in av.codecs_available:
        pytest.skip(f"{codec} is not available")
    video = _write_mpegts(tmp_path / "clip.ts", codec)
    sequential = [f.image for f in VideoFileSource(video).frames()]
    assert len(sequential) == 60
    for index in (0, 1, 2, 5, 13, 24, 30, 31, 47, 58, 59):
        assert np.array_equal(VideoFileSource(video).read(index).image, sequential[index]), index
    backwards = list(VideoFileSource(video).frames(10, 40, reverse=True))
    assert [f.index for f in backwards] == list(range(39, 9, -1))
    assert all(np.array_equal(f.image, sequential[f.index]) for f in backwards)
    forwards = list(VideoFileSource(video).frames(33, 45))
    assert [f.index for f in forwards] == list(range(33, 45))
    assert all(np.array_equal(f.image, sequential[f.index]) for f in forwards)


def test_16_bit_grey_frames_are_scaled_and_float_frames_refused(tmp_path):
    """PIL's convert("RGB") clips 16-bit grey to 0/255 (a clip stored so read as white pictures) and float images
    to 0 or 255: 16 bits are scaled to 8, a float image (0..1 or 0..255: not written in it) is refused."""
    from PIL import Image

    ramp = np.tile((np.arange(64, dtype=np.uint32) * 65535 // 63).astype(np.uint16), (8, 1))
    folder = tmp_path / "grey16"
    folder.mkdir()
    for index in range(2):
        Image.fromarray(ramp).save(folder / f"{index:05d}.png")
    image = open_video(folder).read(1).image
    assert image.dtype == np.uint8 and np.array_equal(image[..., 0], (ramp >> 8).astype(np.uint8))
    assert np.array_equal(image[..., 0], image[..., 2])
    floats = tmp_path / "float"
    floats.mkdir()
    for index in range(2):
        Image.fromarray(ramp.astype(np.float32) / 65535).save(floats / f"{index:05d}.tiff")
    with pytest.raises(VideoReadError, match=r"00000\.tiff: frame 0 is a floating-point image"):
        open_video(floats).read(0)


def test_frames_named_by_timestamp_are_in_time_order():
    """0.04 came after 0.2 (the digits after the point compared as a whole number: 4 > 2)."""
    names = ["0.0", "0.04", "0.08", "0.2", "0.24", "1.25", "1.5", "10", "1690000000123456789", "1690000000123456790"]
    assert sorted(reversed(names), key=natural_sort_key) == names
    assert sorted(["f10", "f2", "f1.5"], key=natural_sort_key) == ["f1.5", "f2", "f10"]
    assert sorted(["img1", "img", "frame_2", "frame_", "a1b2", "a1b"], key=natural_sort_key) == [
        "a1b", "a1b2", "frame_", "frame_2", "img", "img1"]  # a name and its extension never compare text to a number


def test_a_cut_mp4_reads_its_last_frames_from_the_last_frame_that_decodes(tmp_path, small_frames):
    """A seek into the damaged tail of a cut faststart mp4 raised instead of landing past the end, so a reverse run
    (which reads the last listed frame first) or one starting near the end failed on a file that reads forwards
    with a warning. The last frames are found, and a reverse read gives every frame that decodes."""
    whole = write_mp4(small_frames, tmp_path / "clip.mp4", gop=12, faststart=True)
    for percent in range(30, 100, 5):
        video = cut(whole, percent / 100).rename(tmp_path / f"cut{percent}.mp4")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VideoTruncatedWarning)
            source = VideoFileSource(video)
            listed = source.num_frames
            assert [frame.index for frame in source.frames(listed - 1, listed)] in ([], [listed - 1])  # no error
        found = source.num_frames
        assert 0 < found < 40 and [frame.index for frame in source.frames(reverse=True)] == list(range(found))[::-1]


def test_a_video_with_a_display_rotation_is_read_as_players_show_it(tmp_path, small_frames):
    """A phone's portrait video is stored landscape with a display matrix (here: turn 90 degrees clockwise); it
    was read landscape, so a mask drawn on the picture as shown was refused for its size."""
    import struct

    import av

    video = write_mp4(small_frames[:6], tmp_path / "clip.mp4")
    data = bytearray(video.read_bytes())
    identity = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    at = data.find(identity, data.find(b"tkhd"))
    assert at > 0
    data[at:at + 36] = struct.pack(">9I", 0, 0x10000, 0, 0xFFFF0000, 0, 0, 0, 0, 0x40000000)
    turned = tmp_path / "portrait.mp4"
    turned.write_bytes(bytes(data))
    with av.open(str(turned)) as container:
        first = next(container.decode(video=0))
        assert first.rotation == -90  # clockwise, as FFmpeg reads the matrix
        stored = first.to_ndarray(format="rgb24")
    source = open_video(turned)
    assert source.coded_size == (120, 214) and source._turns is None  # nothing decoded to open it
    assert source.frame_size == (214, 120)  # (height, width): portrait
    assert np.array_equal(source.read(0).image, np.rot90(stored, -1))
    assert [frame.image.shape for frame in source.frames(reverse=True)] == [(214, 120, 3)] * 6


def test_jpeg_frames_with_an_exif_orientation_are_read_as_viewers_show_them(tmp_path):
    from PIL import Image

    stored = noise_frames(1)[0]  # 32 x 48, stored on its side
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(2):
        image = Image.fromarray(stored)
        exif = image.getexif()
        exif[0x0112] = 6  # "turn 90 degrees clockwise to view"
        image.save(folder / f"{index:05d}.png", exif=exif)
    source = open_video(folder)
    assert source.frame_size == (48, 32)
    assert np.array_equal(source.read(1).image, np.rot90(stored, -1))
