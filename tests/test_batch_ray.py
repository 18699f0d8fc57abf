"""`longvos batch --backend ray` on a local Ray instance: the same manifest through Ray actors and through local
worker processes gives byte-identical masks, and a failing video fails alone there too."""
from __future__ import annotations

import os

import numpy as np
import pytest

from longvos.batch import BatchOptions, run_batch
from longvos.io.masks import read_probs_npz

from conftest import annotation, copy_clip, optional_import, seeded_checkpoint

ray = optional_import("ray", "pip install 'longvos[ray]'")

pytestmark = pytest.mark.slow  # starting Ray takes 10-20 s on a busy 2-core machine


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_and_local_backends_give_identical_masks(local_ray, dev_dir, tmp_path, tmp_path_factory):
    clips = tmp_path / "clips"
    copy_clip(dev_dir, "blackswan", 4, clips)
    copy_clip(dev_dir, "car-shadow", 5, clips)
    manifest = tmp_path / "videos.csv"
    manifest.write_text(f"{clips}/blackswan,{annotation(dev_dir, 'blackswan', 0)}\n"
                        f"{clips}/car-shadow,{annotation(dev_dir, 'car-shadow', 2)},2\n"
                        f"{clips}/car-shadow,{clips}/no-mask.png,,wrong-mask\n"
                        f"{clips}/nothing.mp4,{annotation(dev_dir, 'blackswan', 0)}\n")
    options = BatchOptions(model="mavos-lite", checkpoint=str(seeded_checkpoint(tmp_path_factory)), max_size=64,
                           threads=1)
    on_ray = run_batch(manifest, tmp_path / "ray", options, backend="ray", workers=2, progress=False)
    on_local = run_batch(manifest, tmp_path / "local", options, devices=["cpu"], workers=1, progress=False)

    for summary in (on_ray, on_local):
        assert [(r.name, r.status) for r in summary.results] == [
            ("blackswan", "done"), ("car-shadow", "done"), ("wrong-mask", "failed"), ("nothing", "failed")]
        assert summary.results[1].frames == 3
    assert {r.worker for r in on_ray.results[:2]} <= {"ray:cpu#0", "ray:cpu#1"}
    assert on_ray.results[3].reason == on_local.results[3].reason == f"{clips}/nothing.mp4: no such file or folder"
    assert on_ray.results[2].reason == on_local.results[2].reason
    assert on_ray.results[2].reason.startswith(f"{clips}/no-mask.png: cannot read mask")

    for name, count in [("blackswan", 4), ("car-shadow", 3)]:
        ray_files = sorted((tmp_path / "ray" / name).glob("[0-9]*.png"))
        local_files = sorted((tmp_path / "local" / name).glob("[0-9]*.png"))
        assert [p.name for p in ray_files] == [p.name for p in local_files] and len(ray_files) == count
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(ray_files, local_files)), name


def test_backends_run_workers_with_the_same_thread_settings(local_ray, dev_dir, tmp_path, tmp_path_factory,
                                                            monkeypatch):
    """With no --threads, the count is decided once in the driver (here: 2 free cores) and every backend's workers
    run with it (and one inter-op thread): before, local workers took every core and Ray actors one thread, and
    the same videos came out different in a few pixels (DAVIS libby, dog, car-roundabout at 240 px)."""
    import longvos.engine.threads as threads

    monkeypatch.setattr(threads, "default_threads", lambda: 2)
    clips = tmp_path / "clips"
    copy_clip(dev_dir, "blackswan", 3, clips)
    manifest = tmp_path / "videos.csv"
    manifest.write_text(f"{clips}/blackswan,{annotation(dev_dir, 'blackswan', 0)}\n")
    options = BatchOptions(model="mavos-lite", checkpoint=str(seeded_checkpoint(tmp_path_factory)), max_size=64,
                           save_probs=True)  # probabilities show a thread-count difference that masks may hide
    on_ray = run_batch(manifest, tmp_path / "ray", options, backend="ray", progress=False)
    on_local = run_batch(manifest, tmp_path / "local", options, devices=["cpu"], progress=False)

    assert [r.status for r in on_ray.results] == [r.status for r in on_local.results] == ["done"]
    assert on_ray.results[0].worker.startswith("ray:") and on_local.results[0].worker == "cpu#0"
    assert on_ray.results[0].threads == on_local.results[0].threads == 2
    ray_files = sorted((tmp_path / "ray" / "blackswan").glob("[0-9]*.png"))
    local_files = sorted((tmp_path / "local" / "blackswan").glob("[0-9]*.png"))
    assert len(ray_files) == len(local_files) == 3
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(ray_files, local_files))
    for frame in ("00001", "00002"):  # 1 and 2 threads give float16 probabilities that differ here
        ray_probs, ray_ids = read_probs_npz(tmp_path / "ray" / "blackswan" / "probs" / f"{frame}.npz")
        local_probs, local_ids = read_probs_npz(tmp_path / "local" / "blackswan" / "probs" / f"{frame}.npz")
        assert ray_ids == local_ids and np.array_equal(ray_probs, local_probs), frame
