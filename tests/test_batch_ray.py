"""`longvos batch --backend ray` on a local Ray instance: the same manifest through Ray actors and through local
worker processes gives byte-identical masks, and a failing video fails alone there too."""
from __future__ import annotations

import os

import pytest

from longvos.batch import BatchOptions, run_batch

from conftest import optional_import
from test_batch_local import annotation, copy_clip, seeded_checkpoint

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
