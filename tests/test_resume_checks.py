"""A resume checks its state snapshot by the tensors' types, dtypes and shapes, derived from the model's config and
the session's network size, without a trial model step: the family's ``from_snapshot`` refuses a wrong one with
one line naming the field and the expected and found shapes, a valid one is restored as it is (the same tensors,
strides included), and a resume steps each frame after the snapshot exactly once. And the two messages of a
``--resume --overlay`` on a complete run: no frames to draw, and a saved mask the redraw cannot read. And a frame
folder is the same video for a resume whatever other files appear in it (an overlay's temporary file, .DS_Store).

Small random-weight models (mavos-lite's architecture, LiVOS at 64x96) and the bundled mavos-lite, one torch thread.
"""
from __future__ import annotations

import copy
import io
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from longvos.engine.pipeline import SegmentationError, segment_video
from longvos.engine.progress import STATE_FILE, RunProgress, video_fingerprint
from longvos.engine.segmenter import Segmenter, load_segmenter
from longvos.io.video import open_video
from longvos.models.aot.state import AOTState
from longvos.models.livos.memory import LiVOSState
from longvos.models.registry import create_model

from conftest import moving_square_clip, stop_after_frames

pytestmark = pytest.mark.usefixtures("one_thread_module")

HEIGHT, WIDTH = 64, 96


def frames_and_masks(count: int = 5) -> tuple[list[np.ndarray], dict[int, np.ndarray]]:
    rng = np.random.default_rng(0)
    frames = [(rng.random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8) for _ in range(count)]
    first, later = np.zeros((HEIGHT, WIDTH), np.uint8), np.zeros((HEIGHT, WIDTH), np.uint8)
    first[10:30, 10:40] = 1
    later[35:60, 50:90] = 5
    return frames, {0: first, 2: later}


def stepped_session(segmenter: Segmenter, frames: int = 5):
    """A session of ``segmenter`` after ``frames`` frames (two objects), and its snapshot through torch.save/load."""
    images, masks = frames_and_masks(frames)
    session = segmenter.session(HEIGHT)
    for index, image in enumerate(images):
        session.step(image, masks.get(index))
    buffer = io.BytesIO()
    torch.save(session.snapshot(), buffer)
    return session, torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)


@pytest.fixture(scope="module")
def aot():
    """mavos-lite's architecture with random weights, ``mca`` memory every 2 frames: after 5 frames the long-term
    memory holds its reference and dynamic frames."""
    torch.manual_seed(0)
    segmenter = Segmenter(create_model("mavos-lite", mem_gap=2), "cpu", dtype=None)
    session, snapshot = stepped_session(segmenter)
    return segmenter, session, snapshot


@pytest.fixture(scope="module")
def livos():
    torch.manual_seed(0)
    segmenter = Segmenter(create_model("livos-r50"), "cpu", dtype=None)
    session, snapshot = stepped_session(segmenter, frames=3)
    return segmenter, session, snapshot


def restore_error(segmenter: Segmenter, snapshot: dict) -> str:
    """The one-line ``ValueError`` a fresh session's restore of ``snapshot`` raises; the session stays untouched."""
    fresh = segmenter.session(HEIGHT)
    with pytest.raises(ValueError) as caught:
        fresh.restore(snapshot)
    assert fresh.frames_processed == 0 and fresh.object_ids == [] and fresh.network_size is None
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- AOT family --------------------------------------------------------------------------------------------------

def _aot_expectations(segmenter: Segmenter) -> dict:
    """What the snapshot of the ``aot`` fixture must hold, from the model's config alone."""
    config = segmenter.model.config
    network_hw = segmenter.model.input_size(HEIGHT, WIDTH)
    grid = [-(-n // config.max_stride) for n in network_hw]
    return dict(tokens=grid[0] * grid[1], grid=grid, qk=config.qk_dim, value=2 * config.value_dim,
                layers=config.num_layers, max_objects=config.max_objects)


def _memory(snapshot: dict, which: str = "long_term") -> list:
    return snapshot["state"]["passes"][0]["memory"][which]


AOT_DAMAGE = {
    # name: (damage to the snapshot, field the message names, what it expects: a function of the expectations)
    "long-term key channels": (
        lambda s: _memory(s)[1].__setitem__(0, _memory(s)[1][0][..., :-8]), "passes[0].memory.long_term[1].key",
        lambda e: f"expected {(1, 2 * e['tokens'], e['qk'])}"),
    "long-term value of another frame count": (
        lambda s: _memory(s)[2].__setitem__(1, _memory(s)[2][1][:, : _memory(s)[2][1].shape[1] // 2]),
        "passes[0].memory.long_term[2].value", lambda e: f"expected {(1, 2 * e['tokens'], e['value'])}"),
    "three long-term frames in a two-frame design": (
        lambda s: [pair.__setitem__(part, torch.cat([pair[part], pair[part][:, :pair[part].shape[1] // 2]], 1))
                   for pair in _memory(s) for part in (0, 1)],
        "passes[0].memory.long_term[0].key", lambda e: "with 1 to 2 long-term frame(s)"),
    "short-term value with batch 2": (lambda s: _memory(s, "short_term")[0].__setitem__(
        1, torch.cat([_memory(s, "short_term")[0][1]] * 2)), "passes[0].memory.short_term[0].value",
        lambda e: f"expected {(1, e['tokens'], e['value'])}"),
    "short-term key of another dtype": (lambda s: _memory(s, "short_term")[1].__setitem__(
        0, _memory(s, "short_term")[1][0].double()), "passes[0].memory.short_term[1].key",
        lambda e: "dtype torch.float64, expected torch.float32"),
    "a key that is a list": (lambda s: _memory(s)[0].__setitem__(0, [1.0]), "passes[0].memory.long_term[0].key",
                             lambda e: "is of type list"),
    "a layer missing": (lambda s: _memory(s, "short_term").pop(), "passes[0].memory.short_term",
                        lambda e: f"expected num_layers = {e['layers']}"),
    "another grid": (lambda s: s["state"]["passes"][0]["memory"].update(grid_hw=[3, 10]),
                     "passes[0].memory.grid_hw", lambda e: f"expected {e['grid']}"),
    "slots shorter than max_objects": (lambda s: s["state"]["passes"][0]["slots"].pop(), "passes[0].slots",
                                       lambda e: f"expected max_objects = {e['max_objects']}"),
    "a retired slot that holds an object": (lambda s: s["state"]["passes"][0].update(retired=[0]),
                                            "passes[0].retired", lambda e: "holds an object"),
    "object_ids not those of the slots": (lambda s: s["state"].update(object_ids=[1, 7]), "object_ids",
                                          lambda e: "[1, 5]"),
    "another max_objects": (lambda s: s["state"].update(max_objects=3), "max_objects",
                            lambda e: f"the model's is {e['max_objects']}"),
    "another mem_gap": (lambda s: s["state"].update(mem_gap=9), "mem_gap", lambda e: "this session's is 2"),
    "two objects in a one-object pass": (
        lambda s: [s["state"]["passes"][0]["slots"].__setitem__(1, s["state"]["passes"][1]["slots"][0]),
                   s["state"]["passes"].pop(1)], "passes[0]", lambda e: "expected at most objects_per_pass = 1"),
    "long-term frames and schedule disagree": (
        lambda s: s["state"]["passes"][0]["memory"].update(last_update_step=0), "passes[0].memory.long_term",
        lambda e: "last_update_step is 0"),
}


@pytest.mark.parametrize("damage, field, expected", AOT_DAMAGE.values(), ids=AOT_DAMAGE.keys())
def test_aot_snapshot_with_a_wrong_tensor_or_field_is_refused_naming_it(aot, damage, field, expected):
    segmenter, _, snapshot = aot
    damaged = copy.deepcopy(snapshot)
    damage(damaged)
    message = restore_error(segmenter, damaged)
    assert message.startswith(field + " ") or message.startswith(field + ".") or f" {field} " in message, message
    assert expected(_aot_expectations(segmenter)) in message, message
    # The check alone says the same, before any state is built.
    with pytest.raises(ValueError, match=re.escape(message)):
        AOTState.check_snapshot(damaged["state"], segmenter.model, segmenter.model.input_size(HEIGHT, WIDTH),
                                like=segmenter.session(HEIGHT)._new_state())


def test_aot_shapes_come_from_the_models_config(aot):
    """A snapshot of a 3-layer model does not fit the same model built with 2 layers or another attention width."""
    _, _, snapshot = aot
    for overrides, expected in (({"num_layers": 2}, "long_term has 3 layer(s), expected num_layers = 2"),
                                ({"attention_dim": 32}, "long_term[0].key has shape")):
        other = Segmenter(create_model("mavos-lite", mem_gap=2, **overrides), "cpu", dtype=None)
        assert expected in restore_error(other, copy.deepcopy(snapshot))


def test_aot_valid_snapshot_is_restored_as_it_is(aot):
    """The very tensors of the snapshot (not copies, not made contiguous), which continue bit for bit."""
    segmenter, session, snapshot = aot
    snapshot = copy.deepcopy(snapshot)  # the fixture's stays as it was
    restored = segmenter.session(HEIGHT)
    restored.restore(snapshot)
    stored = [t for which in ("long_term", "short_term") for pair in _memory(snapshot, which) for t in pair]
    memory = restored.state.passes[0].memory
    assert len(memory.tensors()) == len(stored) and all(a is b for a, b in zip(memory.tensors(), stored))
    images, _ = frames_and_masks(7)
    for image in images[5:]:  # (the fixture's session is not used by any other test)
        assert np.array_equal(restored.step(image, return_probs=True).probs,
                              session.step(image, return_probs=True).probs)


def test_aot_snapshot_before_any_object_is_accepted():
    segmenter = Segmenter(create_model("mavos-lite"), "cpu", dtype=None)
    session = segmenter.session(HEIGHT)
    images, _ = frames_and_masks(1)
    session.step(images[0])  # no object yet: no pass, but the input size is known
    restored = segmenter.session(HEIGHT)
    restored.restore(session.snapshot())
    assert restored.frames_processed == 1 and restored.state.input_hw == session.state.input_hw


# -- LiVOS -------------------------------------------------------------------------------------------------------

def _livos_expectations(segmenter: Segmenter) -> dict:
    config = segmenter.model.config
    h, w = (-(-n // config.stride) for n in (HEIGHT, WIDTH))
    return dict(h=h, w=w, key=config.key_dim, value=config.value_dim, sensory=config.sensory_dim,
                queries=config.num_queries, summary=config.summary_dim)


def _tensors(snapshot: dict) -> dict:
    return snapshot["state"]["tensors"]


LIVOS_DAMAGE = {
    "key sum of another grid": (lambda s: _tensors(s).update(key_sum_BNKhw=_tensors(s)["key_sum_BNKhw"][..., :-1]),
                                "tensors.key_sum_BNKhw", lambda e: f"expected {(1, 2, e['key'], e['h'], e['w'])}"),
    "matching state of other width": (lambda s: _tensors(s).update(
        matching_BNKV=_tensors(s)["matching_BNKV"][..., :-4]), "tensors.matching_BNKV",
        lambda e: f"expected {(1, 2, e['key'], e['value'])}"),
    "an object id without its slot": (lambda s: s["state"]["object_ids"].append(9), "tensors.matching_BNKV",
                                      lambda e: f"expected {(1, 3, e['key'], e['value'])} (N = 3 objects)"),
    "sensory memory of another dtype": (lambda s: _tensors(s).update(
        sensory_BNChw=_tensors(s)["sensory_BNChw"].half()), "tensors.sensory_BNChw",
        lambda e: "dtype torch.float16, expected torch.float32"),
    "object memory missing": (lambda s: _tensors(s).pop("object_memory_BNQC"), "tensors.object_memory_BNQC",
                              lambda e: f"expected a tensor of shape {(1, 2, e['queries'], e['summary'])}"),
    "last masks that are a list": (lambda s: _tensors(s).update(last_masks_BNhw=[0.0]), "tensors.last_masks_BNhw",
                                   lambda e: f"is of type list, expected a tensor of shape {(1, 2, e['h'], e['w'])}"),
    "another grid size": (lambda s: s["state"].update(grid_size=[2, 2]), "grid_size",
                          lambda e: f"expected {[e['h'], e['w']]}"),
    "an unknown tensor": (lambda s: _tensors(s).update(extra=torch.zeros(1)), "tensors", lambda e: "['extra']"),
    "repeated object ids": (lambda s: s["state"].update(object_ids=[1, 1]), "object_ids", lambda e: "repeat"),
}


@pytest.mark.parametrize("damage, field, expected", LIVOS_DAMAGE.values(), ids=LIVOS_DAMAGE.keys())
def test_livos_snapshot_with_a_wrong_tensor_or_field_is_refused_naming_it(livos, damage, field, expected):
    segmenter, _, snapshot = livos
    damaged = copy.deepcopy(snapshot)
    damage(damaged)
    message = restore_error(segmenter, damaged)
    assert message.startswith(field + " "), message
    assert expected(_livos_expectations(segmenter)) in message, message
    with pytest.raises(ValueError, match=re.escape(message)):
        LiVOSState.check_snapshot(damaged["state"], segmenter.model, (HEIGHT, WIDTH))


def test_livos_valid_snapshot_is_restored_as_it_is(livos):
    segmenter, session, snapshot = livos
    snapshot = copy.deepcopy(snapshot)
    restored = segmenter.session(HEIGHT)
    restored.restore(snapshot)
    assert restored.object_ids == [1, 5] and len(restored.state.tensors()) == 5
    for name, tensor in restored.state.tensors().items():
        assert tensor is _tensors(snapshot)[name], name
    images, _ = frames_and_masks(5)
    for image in images[3:]:
        assert np.array_equal(restored.step(image, return_probs=True).probs,
                              session.step(image, return_probs=True).probs)


# -- a resume steps each frame after the snapshot once ---------------------------------------------------------

def make_clip(folder: Path, frames: int) -> Path:
    return moving_square_clip(folder, frames, seed=1, height=HEIGHT, width=WIDTH)


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    root = tmp_path_factory.mktemp("steps")
    mask = make_clip(root / "clip", frames=7)
    run = dict(model=load_segmenter("mavos-lite", device="cpu"), max_size=HEIGHT, progress=False, snapshot_every=2,
               threads=1)
    segment_video(root / "clip", mask, root / "clean", **run)
    return root, mask, run


def counting_steps(monkeypatch, model) -> list[int]:
    calls: list[int] = []
    step = model.step

    def counted(*args, **kwargs):
        calls.append(1)
        return step(*args, **kwargs)

    monkeypatch.setattr(model, "step", counted)
    return calls


@pytest.mark.parametrize("stopped, snapshot", [(4, 4), (5, 4), (3, 2)])
def test_resume_steps_each_frame_after_the_snapshot_once(bundled, tmp_path, monkeypatch, stopped, snapshot):
    """Stopped after ``stopped`` of 7 frames with a snapshot of ``snapshot``: the resume runs the model on the
    7 - snapshot frames after it, once each (no trial step), and writes the clean run's bytes."""
    root, mask, run = bundled
    out = tmp_path / "out"
    with pytest.raises(SegmentationError):
        segment_video(root / "clip", mask, out, on_frame=stop_after_frames(stopped), **run)
    record = RunProgress.load(out)
    assert (record.completed, record.snapshot) == (stopped, snapshot), record
    calls = counting_steps(monkeypatch, run["model"].model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = segment_video(root / "clip", mask, out, resume=True, **run)
    messages = [str(w.message) for w in caught if "snapshot" in str(w.message) or "differs" in str(w.message)]
    assert not messages, messages
    assert summary.restored_from == snapshot and summary.frames == 7 - stopped
    assert len(calls) == 7 - snapshot
    assert not (out / STATE_FILE).exists()
    for path in sorted((root / "clean").glob("[0-9]*.png")):
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name


def test_resume_with_a_wrong_shape_recomputes_from_the_first_frame_with_one_warning(bundled, tmp_path, monkeypatch):
    root, mask, run = bundled
    out = tmp_path / "out"
    with pytest.raises(SegmentationError):
        segment_video(root / "clip", mask, out, on_frame=stop_after_frames(4), **run)
    data = torch.load(out / STATE_FILE, weights_only=True)
    pair = data["session"]["state"]["passes"][0]["memory"]["short_term"][0]
    pair[0] = pair[0][..., :-1]
    torch.save(data, out / STATE_FILE)
    calls = counting_steps(monkeypatch, run["model"].model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = segment_video(root / "clip", mask, out, resume=True, **run)
    messages = [str(w.message) for w in caught if "snapshot" in str(w.message) or "differs" in str(w.message)]
    assert len(messages) == 1 and "snapshot cannot be restored" in messages[0], messages
    assert "passes[0].memory.short_term[0].key has shape" in messages[0] and "expected (1, " in messages[0]
    assert summary.restored_from == 0 and len(calls) == 7  # recomputed from the first frame, no extra step


# -- --resume --overlay on a complete run ---------------------------------------------------------------------

def test_overlay_of_a_complete_run_of_no_frames_says_there_is_nothing_to_draw(tmp_path):
    """A range that starts past the end of a stream that ends early: a complete run of 0 frames, whose overlay is
    neither written nor said to be drawn."""
    from conftest import write_mp4

    rng = np.random.default_rng(0)
    frames = []
    for index in range(20):
        image = rng.integers(0, 60, (HEIGHT, WIDTH, 3)).astype(np.uint8)
        image[20:44, 10 + 2 * index:34 + 2 * index] = (230, 200, 40)
        frames.append(image)
    video = write_mp4(frames, tmp_path / "clip.mp4", faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video.read_bytes()[: len(video.read_bytes()) // 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stream ends early
        source = open_video(cut)
        listed, start = source.num_frames, sum(1 for _ in source.frames())
    assert start < listed  # the first frame that does not decode is one the container lists
    mask = make_clip(tmp_path / "frames", frames=1)
    run = dict(model="mavos-lite", device="cpu", max_size=HEIGHT, progress=False)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stream ends early; the mask was never used
        assert segment_video(cut, mask, out, start=start, **run).frames == 0
        summary = segment_video(cut, mask, out, start=start, resume=True, overlay=out / "overlay.mp4", **run)
    notes = "; ".join(summary.notes)
    assert "already complete" in notes and "no frames to draw" in notes and "saved mask" not in notes, notes
    assert not (out / "overlay.mp4").exists() and not list(out.glob(".*partial*"))


def test_overlay_redraw_with_a_missing_saved_mask_segments_that_frame_again(bundled, tmp_path):
    """A complete run that lost a mask file is no longer complete: the resume (here one that draws the overlay)
    segments again from that frame, as after an interruption, and writes the same bytes."""
    root, mask, run = bundled
    out = tmp_path / "out"
    segment_video(root / "clip", mask, out, **run)
    written = (out / "00003.png").read_bytes()
    (out / "00003.png").unlink()
    with pytest.warns(UserWarning, match="the mask files of frame 00003, which this run wrote, are missing"):
        summary = segment_video(root / "clip", mask, out, resume=True, overlay=out / "overlay.mp4", **run)
    assert "already complete" not in summary.notes
    assert (out / "00003.png").read_bytes() == written
    assert (out / "overlay.mp4").is_file() and not list(out.glob(".*partial*"))
    assert RunProgress.load(out).done


# -- a frame folder's other files ----------------------------------------------------------------------------------

def test_a_frame_folders_fingerprint_covers_exactly_the_frames_its_reader_reads(tmp_path):
    folder = tmp_path / "clip"
    make_clip(folder, frames=3)
    fingerprint = video_fingerprint(folder)
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "README.txt").write_text("shot on a Tuesday")
    (folder / ".ov.partial.mp4").write_bytes(b"what a killed run's overlay left")
    (folder / "ov.mp4").write_bytes(b"an overlay")
    (folder / ".hidden.png").write_bytes((folder / "00000.png").read_bytes())  # hidden: the reader skips it
    (folder / "notes").mkdir()
    assert video_fingerprint(folder) == fingerprint
    (folder / "00002.png").rename(folder / "00003.png")  # a frame renamed, removed, added: another video
    assert video_fingerprint(folder) != fingerprint
    (folder / "00003.png").unlink()
    assert video_fingerprint(folder) not in (fingerprint, None)
    (folder / "00002.png").write_bytes((folder / "00000.png").read_bytes())
    assert video_fingerprint(folder) == fingerprint  # names only: a frame repaired after a failure may change


def test_a_frame_folder_read_in_another_order_than_earlier_versions_read_it_has_another_fingerprint(tmp_path):
    """Earlier versions sorted frames by whole name (1.5.png before 1.png), this one by name without extension: a
    folder whose order changed must not resume an earlier version's run (it would continue on other frames), while
    a folder whose order did not change keeps its fingerprint (its earlier runs resume)."""
    import hashlib

    from PIL import Image

    def earlier_fingerprint(folder: Path) -> str:  # as earlier versions computed it, for a folder of frames only
        digest = hashlib.sha256()
        for entry in sorted(folder.iterdir()):
            digest.update(f"{entry.name}\n".encode())
        return digest.hexdigest()

    for names, order_changed in ((["1", "2", "10"], False), (["1", "1.5", "2"], True),
                                 (["0.04", "0.2", "0.24"], True)):  # 0.2 came before 0.04
        folder = tmp_path / "-".join(names)
        folder.mkdir()
        for name in names:
            Image.new("RGB", (8, 8)).save(folder / f"{name}.png")
        assert (video_fingerprint(folder) != earlier_fingerprint(folder)) is order_changed, names


def test_a_glob_has_the_fingerprint_of_the_frames_it_matches(tmp_path, monkeypatch):
    """A glob had none: a resume after frames were deleted and others added continued on other frames."""
    from PIL import Image

    for index in range(4):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{index:05d}.png")
    pattern = str(tmp_path / "*.png")
    before = video_fingerprint(pattern)
    assert before is not None and video_fingerprint(pattern) == before
    monkeypatch.chdir(tmp_path)
    assert video_fingerprint("*.png") == before  # the same frames, however the glob is written
    (tmp_path / "00001.png").unlink()
    Image.new("RGB", (8, 8)).save(tmp_path / "00999.png")
    assert video_fingerprint(pattern) != before


def test_resume_after_a_kill_with_an_overlay_in_the_frames_folder(bundled, tmp_path):
    """A run killed while it drew its overlay inside the frames folder leaves the overlay's temporary file there;
    the resume continues (with .DS_Store and a README beside the frames too) and writes the uninterrupted run's
    bytes."""
    root, mask, run = bundled
    clip, out = tmp_path / "clip", tmp_path / "out"
    shutil.copytree(root / "clip", clip)
    with pytest.raises(SegmentationError):
        segment_video(clip, mask, out, overlay=clip / "ov.mp4", on_frame=stop_after_frames(4), **run)
    # What kill -9 leaves (an exception deletes the temporary file), and what a file browser or a user add.
    (clip / ".ov.partial.mp4").write_bytes(b"\0\0\0\x18ftypisom")
    (clip / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (clip / "README.txt").write_text("the frames of the clip")
    summary = segment_video(clip, mask, out, resume=True, overlay=clip / "ov.mp4", **run)
    assert summary.resumed_after == 4 and summary.frames == 3
    clean = sorted(path.name for path in (root / "clean").glob("*.png"))
    assert len(clean) == 7 and sorted(path.name for path in out.glob("*.png")) == clean
    assert all((out / name).read_bytes() == (root / "clean" / name).read_bytes() for name in clean)
    assert len(open_video(clip / "ov.mp4")) == 7
