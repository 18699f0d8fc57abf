"""Training clips: shapes, object ids, alignment of masks with frames under the augmentations, held-out data."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from longvos.train import files
from longvos.train.augment import (crop_homography, motion_step, random_object_point, relight_clip, warp_image,
                                   warp_label)
from longvos.train.clips import TrainingClip, paste, select_objects
from longvos.train.config import AugmentConfig, DataConfig
from longvos.train.data import TrainingClips
from longvos.train.data_video import clip_positions
from longvos.train.files import TrainingDataError

RED, BLUE = (230, 20, 20), (20, 40, 220)
NO_PHOTOMETRY = AugmentConfig(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)


def write_pair(image_path: Path, mask_path: Path, label: np.ndarray) -> None:
    """An image that is red exactly where ``label`` has an object and blue elsewhere: any misalignment between the
    warped image and the warped mask shows up as blue object pixels or red background pixels."""
    image = np.where((label > 0)[..., None], np.array(RED, np.uint8), np.array(BLUE, np.uint8))
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    # Full-resolution chroma: 4:2:0 subsampling would smear the red/blue edge by itself.
    cv2.imwrite(str(image_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 100, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    Image.fromarray(label, mode="L").save(mask_path)


def blob_label(height: int, width: int, centre: tuple[int, int], radius: int, ident: int = 1) -> np.ndarray:
    label = np.zeros((height, width), np.uint8)
    cv2.circle(label, centre, radius, ident, thickness=-1)
    return label


@pytest.fixture
def tiny_root(tmp_path) -> Path:
    """A static set of 3 photos and a video set of 2 sequences (one sparsely annotated), colour-coded."""
    root = tmp_path / "train"
    for i, (cx, cy) in enumerate([(40, 50), (90, 60), (60, 30)]):
        label = blob_label(100, 140, (cx, cy), 22)
        label[cy - 3:cy + 3, cx - 30:cx - 22] = 255  # a void rim, like the pets' trimaps
        write_pair(root / f"photos/images/p{i}.jpg", root / f"photos/masks/p{i}.png", label)
    for seq, frames in (("walk", range(12)), ("sparse", range(0, 12, 3))):
        for t in range(12):
            label = blob_label(90, 160, (20 + 10 * t, 45), 16, ident=1)
            label |= blob_label(90, 160, (140 - 8 * t, 30), 10, ident=2) * (label == 0)
            jpg = root / f"vids/JPEGImages/{seq}/{t:05d}.jpg"
            png = root / f"vids/Annotations/{seq}/{t:05d}.png"
            write_pair(jpg, png, label)
            if t not in frames:
                png.unlink()
    return root


def tiny_config(root: Path, **changes) -> DataConfig:
    values = dict(root=str(root), static_sets=("photos",), video_sets=("vids",), size=65, clip_len=6,
                  min_object_pixels=20, workers=0, augment=NO_PHOTOMETRY)
    values.update(changes)
    return DataConfig(**values)


def eroded(mask: np.ndarray, pixels: int = 2) -> np.ndarray:
    return cv2.erode(mask.astype(np.uint8), np.ones((2 * pixels + 1,) * 2, np.uint8)).astype(bool)


@pytest.mark.parametrize("static_fraction", [1.0, 0.0], ids=["static", "video"])
def test_masks_stay_aligned_with_frames(tiny_root, static_fraction):
    """Through the whole pipeline (crop, flip, motion, compositing), every object pixel is red in the image.
    (Red background pixels are legitimate here: objects absent from the reference frame become background.)"""
    clips = TrainingClips(tiny_config(tiny_root, static_fraction=static_fraction))
    checked = 0
    for index in range(12):
        sample = clips[index]
        images = (sample["images"].permute(0, 2, 3, 1).numpy() * 255).astype(np.int32)
        for image, label in zip(images, sample["labels"].numpy()):
            # Interiors only: bilinear resampling blends colours along every boundary, including object/object ones.
            is_object = np.any([eroded(label == i) for i in range(1, 255)], axis=0)
            red = (image[..., 0] > 150) & (image[..., 2] < 100)
            assert red[is_object].all(), f"sample {index}: object pixels that are not red"
            checked += int(is_object.sum())
    assert checked > 1000


def test_one_warp_moves_image_and_label_together():
    """Both directions on the geometric core: object interiors red, background interiors not red."""
    rng = np.random.default_rng(1)
    label = blob_label(120, 90, (45, 60), 25)
    image = np.where((label > 0)[..., None], np.array(RED, np.uint8), np.array(BLUE, np.uint8))
    cfg = AugmentConfig(rotate_degrees=30, translate=0.2, zoom=0.3, shear_degrees=15, perspective=0.1)
    for trial in range(20):
        matrix = crop_homography(label.shape, 81, rng, (0.6, 1.5), random_object_point(label, rng),
                                 hflip=trial % 2 == 1)
        for _ in range(3):
            matrix = motion_step(81, rng, cfg) @ matrix
            warped, warped_label = warp_image(image, matrix, 81), warp_label(label, matrix, 81)
            red = (warped[..., 0] > 150) & (warped[..., 2] < 100)
            assert red[eroded(warped_label == 1)].all()
            assert not red[eroded(warped_label == 0)].any()


def test_samples_have_contiguous_visible_objects_and_fixed_shapes(tiny_root):
    config = tiny_config(tiny_root, static_fraction=0.5, max_objects=2)
    clips = TrainingClips(config)
    counts = set()
    for index in range(16):
        sample = clips[index]
        assert sample["images"].shape == (6, 3, 65, 65) and sample["labels"].shape == (6, 65, 65)
        assert 0.0 <= float(sample["images"].min()) and float(sample["images"].max()) <= 1.0
        n = int(sample["num_objects"])
        counts.add(n)
        labels = sample["labels"]
        assert set(labels.unique().tolist()) <= {*range(n + 1), 255}
        for ident in range(1, n + 1):  # every object is visible on the reference frame
            assert int((labels[0] == ident).sum()) >= config.min_object_pixels
    assert counts == {1, 2}  # compositing makes multi-object clips; max_objects caps them


def test_single_target_clips_keep_one_object_at_the_given_rate(tiny_root):
    def object_counts(**changes) -> list[int]:
        clips = TrainingClips(tiny_config(tiny_root, static_fraction=1.0, max_objects=3, **changes))
        return [int(clips[index]["num_objects"]) for index in range(24)]

    assert max(object_counts()) > 1  # compositing gives several objects ...
    assert object_counts(single_target_prob=1.0) == [1] * 24  # ... of which one stays the target
    mixed = object_counts(single_target_prob=0.5)
    assert 1 in mixed and max(mixed) > 1


def test_stream_is_deterministic_per_index_and_rank(tiny_root):
    config = tiny_config(tiny_root)
    first, again, other_rank = TrainingClips(config), TrainingClips(config), TrainingClips(config, rank=1)
    assert (first[7]["images"] == again[7]["images"]).all()
    assert not (first[7]["images"] == other_rank[7]["images"]).all()


def test_sparse_annotations_use_only_annotated_frames(tiny_root):
    clips = TrainingClips(tiny_config(tiny_root, static_sets=()))
    sparse = next(s for s in clips.video.sequences if s.name == "sparse")
    assert [p.stem for p in sparse.frames] == ["00000", "00003", "00006", "00009"]


def test_clip_positions_walk_forward_with_bounded_gaps_and_reflect():
    rng = np.random.default_rng(0)
    for _ in range(200):
        length, start = int(rng.integers(2, 30)), 0
        start = int(rng.integers(length))
        positions = clip_positions(start, length, 8, 4, rng)
        assert positions[0] == start and all(0 <= p < length for p in positions)
        steps = np.abs(np.diff(positions))
        assert (steps <= 4).all()
    assert clip_positions(0, 1, 5, 3, rng) == [0] * 5
    assert clip_positions(3, 5, 4, 1, np.random.default_rng(0)) == [3, 4, 3, 2]  # gap 1: bounces off the end


def test_paste_gives_overlay_objects_fresh_ids_and_occludes():
    base = TrainingClip([np.zeros((4, 4, 3), np.uint8)], [np.array([[1, 1, 0, 0]] * 4, np.uint8)])
    top_label = np.array([[0, 1, 1, 255]] * 4, np.uint8)
    overlay = TrainingClip([np.full((4, 4, 3), 9, np.uint8)], [top_label])
    merged = paste(base, overlay)
    assert merged.labels[0][0].tolist() == [1, 2, 2, 0]  # overlay's void rim does not overwrite the base
    assert merged.frames[0][0, :, 0].tolist() == [0, 9, 9, 0]


def test_paste_as_background_occludes_without_adding_objects():
    base = TrainingClip([np.zeros((4, 4, 3), np.uint8)], [np.array([[1, 1, 0, 0]] * 4, np.uint8)])
    overlay = TrainingClip([np.full((4, 4, 3), 9, np.uint8)], [np.array([[0, 1, 1, 255]] * 4, np.uint8)])
    merged = paste(base, overlay, as_background=True)
    assert merged.labels[0][0].tolist() == [1, 0, 0, 0]  # the look-alike covers object 1 and is background
    assert merged.frames[0][0, :, 0].tolist() == [0, 9, 9, 0]


@pytest.mark.parametrize("distractor_prob", [0.0, 1.0])
def test_distractors_are_red_object_pixels_labelled_background(tiny_root, distractor_prob):
    """The photos are red exactly on their object: a look-alike copy shows as red pixels labelled background."""
    clips = TrainingClips(tiny_config(tiny_root, static_fraction=1.0, static_merge_prob=0.0,
                                      distractor_prob=distractor_prob), seed=3)
    with_lookalike = 0
    for index in range(6):
        sample = clips[index]
        image = sample["images"][0].permute(1, 2, 0).numpy()
        red = (image[..., 0] > 0.6) & (image[..., 2] < 0.4)
        with_lookalike += int((eroded(red) & (sample["labels"][0].numpy() == 0)).sum() >= 20)
        assert (sample["labels"][0].numpy() == 1).any()  # the target itself is still given
    assert with_lookalike == 0 if distractor_prob == 0.0 else with_lookalike >= 4


def test_an_entering_distractor_is_absent_from_the_reference_frame(tiny_root):
    clips = TrainingClips(tiny_config(tiny_root, static_fraction=1.0, static_merge_prob=0.0, distractor_prob=1.0,
                                      distractor_enters=True), seed=3)
    later = 0
    for index in range(6):
        sample = clips[index]
        lookalike = []
        for image, label in zip(sample["images"], sample["labels"]):
            image = image.permute(1, 2, 0).numpy()
            red = (image[..., 0] > 0.6) & (image[..., 2] < 0.4)
            lookalike.append(int((eroded(red) & (label.numpy() == 0)).sum()))
        assert lookalike[0] < 20  # the reference frame shows the target alone
        later += max(lookalike[1:]) >= 20
    assert later >= 4


def test_select_objects_drops_invisible_and_excess_objects():
    reference = np.array([[1, 1, 1, 2], [3, 3, 3, 255]], np.uint8)  # object 2 has one pixel
    later = np.array([[4, 2, 1, 3], [0, 0, 0, 255]], np.uint8)       # object 4 appears only later
    clip, n = select_objects(TrainingClip([None, None], [reference, later]), np.random.default_rng(0), 10, min_pixels=2)
    assert n == 2
    kept_1, kept_3 = clip.labels[0][0, 0], clip.labels[0][1, 0]
    assert {int(kept_1), int(kept_3)} == {1, 2}
    assert clip.labels[1].tolist() == [[0, 0, kept_1, kept_3], [0, 0, 0, 255]]
    _, capped = select_objects(TrainingClip([None], [reference]), np.random.default_rng(0), 1, min_pixels=2)
    assert capped == 1


def test_held_out_dev_data_is_refused(dev_dir):
    with pytest.raises(TrainingDataError, match="held-out"):
        TrainingClips(DataConfig(root=str(dev_dir.parent), video_sets=(dev_dir.name,), static_sets=()))
    with pytest.raises(TrainingDataError, match="held-out"):
        files.read_image(next(dev_dir.glob("JPEGImages/*/*.jpg")))


def test_missing_root_and_bad_layout_are_clear_errors(tmp_path):
    with pytest.raises(TrainingDataError, match="not found"):
        TrainingClips(DataConfig(root=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingDataError, match="JPEGImages"):
        TrainingClips(DataConfig(root=str(tmp_path), video_sets=("empty",), static_sets=()))


def test_real_training_data_never_touches_dev(shared_dir, monkeypatch):
    opened: list[str] = []
    real_imread, real_open = cv2.imread, Image.open
    monkeypatch.setattr(files.cv2, "imread", lambda p, *a: opened.append(str(p)) or real_imread(p, *a))
    monkeypatch.setattr(files.Image, "open", lambda p, *a: opened.append(str(p)) or real_open(p, *a))
    config = DataConfig(root=str(shared_dir / "data" / "train"), size=129, clip_len=4, workers=0)
    clips = TrainingClips(config)
    assert len(clips.static) > 500 and len(clips.video) >= 30
    for index in range(6):
        sample = clips[index]
        n = int(sample["num_objects"])
        assert 1 <= n <= config.max_objects
        assert sample["labels"].shape == (4, 129, 129)
    assert opened and all("/data/train/" in p for p in opened)


def test_holdout_sequences_are_never_drawn(tiny_root):
    """The validation split: a held-out sequence never appears in a training clip; a name matching nothing fails."""
    clips = TrainingClips(tiny_config(tiny_root, static_fraction=0.0, holdout=("vids/walk",)))
    assert [s.name for s in clips.video.sequences] == ["sparse"]
    with pytest.raises(TrainingDataError, match="vids/typo"):
        TrainingClips(tiny_config(tiny_root, holdout=("vids/typo",)))
    # A set listed twice trained on the held-out sequence from its second copy: refused.
    with pytest.raises(TrainingDataError, match="data.video_sets names the set 'vids' twice"):
        TrainingClips(tiny_config(tiny_root, static_fraction=0.0, video_sets=("vids", "vids"), holdout=("vids/walk",)))


def test_resolution_curriculum_sizes_follow_the_step(tiny_root):
    """Sample i belongs to step i // batch_size; the crop grows at each curriculum step, the same for a whole batch."""
    config = tiny_config(tiny_root, size=33, curriculum_steps=(2, 4), curriculum_sizes=(49, 65))
    clips = TrainingClips(config, batch_size=3)
    assert [clips.size_at(i) for i in (0, 5, 6, 11, 12, 30)] == [33, 33, 49, 49, 65, 65]
    assert clips[0]["images"].shape[-1] == 33 and clips[13]["images"].shape[-1] == 65
    with pytest.raises(TrainingDataError, match="curriculum"):
        TrainingClips(tiny_config(tiny_root, curriculum_steps=(2,), curriculum_sizes=()))


def test_relighting_changes_light_smoothly_over_space_and_time():
    """Relit frames: gains within the drawn range, smooth over space (no seams), different between the first and last
    frame and halfway between them in the middle; off (the same arrays) when the preset leaves it at 0."""
    frames = [np.full((60, 90, 3), 100, np.uint8) for _ in range(5)]
    rng = np.random.default_rng(3)
    assert relight_clip(frames, rng, AugmentConfig()) is frames
    cfg = AugmentConfig(relight_prob=1.0, relight_strength=0.7)
    relit = [frame.astype(np.float32) for frame in relight_clip(frames, rng, cfg)]
    for frame in relit:
        assert frame.min() >= 100 * np.exp(-0.7) - 1 and frame.max() <= 100 * np.exp(0.7) + 1
        assert np.abs(np.diff(frame, axis=1)).max() < 12 and np.abs(np.diff(frame, axis=0)).max() < 12
    assert np.abs(relit[0] - relit[-1]).mean() > 5
    np.testing.assert_allclose(relit[2], (relit[0] + relit[-1]) / 2, atol=1.0)
